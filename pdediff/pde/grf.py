"""Gaussian random fields, as used to draw the inputs of the DiffusionPDE / FNO datasets.

Both samplers draw from the Gaussian measure ``N(0, sigma^2 (-Delta + tau^2 I)^{-alpha})``
(Li et al. 2021, "Fourier Neural Operator", Appendix A; DiffusionPDE, Huang et al. 2024,
reuses those generators), in one of two eigenbases of the Laplacian:

* :func:`grf_periodic` - Fourier modes ``exp(2 pi i k.x / L)``, for periodic problems
  (Navier-Stokes, Burgers);
* :func:`grf_neumann` - cosine modes ``cos(pi k x)``, for problems on a box with a boundary
  (Darcy, Poisson, Helmholtz), as the FNO Darcy data were drawn (MATLAB ``GRF.m``).

The constant mode is removed (zero mean).  The amplitude does not depend on the
resolution, so a field drawn at 64^2 and at 128^2 has the same pointwise variance.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.fft


def _default_sigma(alpha: float, tau: float, ndim: int) -> float:
    # FNO's choice sigma = tau^(alpha - d/2) makes the field O(1) for any tau.
    return tau ** (0.5 * (2.0 * alpha - ndim))


def grf_periodic(
    rng: np.random.Generator,
    shape: Sequence[int],
    alpha: float,
    tau: float,
    sigma: float | None = None,
    lengths: Sequence[float] | None = None,
) -> np.ndarray:
    """Periodic GRF with covariance ``sigma^2 (-Delta + tau^2)^{-alpha}`` on a torus.

    Parameters
    ----------
    rng
        Source of randomness (one generator per sample keeps datasets reproducible).
    shape
        Grid points per dim.
    alpha, tau
        Smoothness and inverse length scale.
    sigma
        Amplitude; default ``tau^(alpha - d/2)`` as in FNO.
    lengths
        Period along each dim (default 1).

    Returns
    -------
    numpy.ndarray
        Real float64 field of ``shape``.
    """
    shape = tuple(int(s) for s in shape)
    lengths = tuple(lengths) if lengths is not None else (1.0,) * len(shape)
    sigma = _default_sigma(alpha, tau, len(shape)) if sigma is None else sigma
    ks = np.meshgrid(
        *[np.fft.fftfreq(n, d=1.0 / n) / L for n, L in zip(shape, lengths, strict=True)],
        indexing="ij",
    )
    k2 = sum(k**2 for k in ks)
    # FNO's GaussianRF: complex white noise on every mode (k and -k drawn independently),
    # weights sqrt(2) sigma (4 pi^2 |k|^2 + tau^2)^(-alpha/2), real part of the synthesis.
    # ifftn divides by prod(shape); multiplying back makes the amplitude grid-independent.
    sqrt_eig = np.sqrt(2.0) * sigma * (4.0 * np.pi**2 * k2 + tau**2) ** (-alpha / 2.0)
    sqrt_eig.flat[0] = 0.0
    xi = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    return np.fft.ifftn(xi * sqrt_eig).real * np.prod(shape)


def grf_neumann(
    rng: np.random.Generator,
    shape: Sequence[int],
    alpha: float,
    tau: float,
    sigma: float | None = None,
    lengths: Sequence[float] | None = None,
) -> np.ndarray:
    """GRF in the cosine basis on ``[0, L_1] x ... x [0, L_d]`` (Neumann eigenfunctions).

    The coefficient of mode ``k`` is ``sigma (pi^2 sum_i k_i^2 / L_i^2 + tau^2)^{-alpha/2}
    xi_k`` with ``xi_k ~ N(0, 1)`` (default ``sigma = tau^(alpha - 1)`` and unit lengths, as
    in FNO's ``GRF.m``), synthesised by an orthonormal inverse DCT-II and scaled by the square
    root of the number of points (``GRF.m`` multiplies by ``s`` on an ``s x s`` grid).  The
    DCT-II samples the modes at cell centres, as ``GRF.m`` does; on a node grid that is a
    half-cell shift of a stationary field and does not change its law.
    """
    weights = neumann_weights(shape, alpha, tau, sigma, lengths)
    return scipy.fft.idctn(weights * rng.standard_normal(weights.shape), type=2, norm="ortho")


def neumann_weights(
    shape: Sequence[int],
    alpha: float,
    tau: float,
    sigma: float | None = None,
    lengths: Sequence[float] | None = None,
) -> np.ndarray:
    """The weights ``w`` of :func:`grf_neumann`: its field is ``idctn(w * xi)`` (orthonormal
    DCT-II, ``xi ~ N(0, I)``), so its covariance is ``Phi diag(w^2) Phi^T`` with ``Phi``
    the orthonormal inverse DCT (used by :mod:`pdediff.baselines.exact_prior`)."""
    shape = tuple(int(s) for s in shape)
    sigma = tau ** (alpha - 1.0) if sigma is None else sigma
    lengths = tuple(lengths) if lengths is not None else (1.0,) * len(shape)
    ks = np.meshgrid(
        *[np.arange(n, dtype=np.float64) / L for n, L in zip(shape, lengths, strict=True)],
        indexing="ij",
    )
    k2 = sum(k**2 for k in ks)
    coef = sigma * (np.pi**2 * k2 + tau**2) ** (-alpha / 2.0)
    coef.flat[0] = 0.0
    # The orthonormal DCT carries prod(sqrt(2 / n_i)); sqrt(prod n_i) cancels it (FNO: s).
    return np.sqrt(np.prod(shape)) * coef
