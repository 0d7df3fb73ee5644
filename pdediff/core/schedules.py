"""Noise-level schedules: decreasing 1-D tensors ``sigmas`` of length ``n + 1`` ending in 0.

A sampler takes ``n`` steps, from ``sigmas[0]`` (the initial state is
``sigmas[0] * randn``) down to ``sigmas[n] = 0`` (the clean sample).  Schedules are plain
tensors, separate from the samplers, as in k-diffusion.  They are computed in float64 and
returned in ``dtype`` (float64 unless asked otherwise; samplers cast to the state's dtype).
"""

from __future__ import annotations

import math

import torch

__all__ = ["karras_sigmas", "loglinear_sigmas", "vp_sigmas"]


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of steps n must be an integer >= 1, got {n!r}")


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not (0 < sigma_min < sigma_max) or not math.isfinite(sigma_max):
        raise ValueError(
            "noise levels must satisfy 0 < sigma_min < sigma_max < inf, "
            f"got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}"
        )


def _ramp(n: int) -> torch.Tensor:
    """``i / (n - 1)`` for ``i = 0..n-1`` (a single step sits at ``sigma_max``)."""
    return torch.linspace(0.0, 1.0, n, dtype=torch.float64)


def _finish(sigmas: torch.Tensor, dtype: torch.dtype, device) -> torch.Tensor:
    zero = sigmas.new_zeros(1)
    return torch.cat([sigmas, zero]).to(dtype=dtype, device=device)


def karras_sigmas(
    n: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The EDM schedule (Karras et al. 2022, eq. 5):

    .. math::

        \\sigma_i = \\Big(\\sigma_\\max^{1/\\rho} + \\tfrac{i}{n-1}
            \\big(\\sigma_\\min^{1/\\rho} - \\sigma_\\max^{1/\\rho}\\big)\\Big)^\\rho,
        \\quad i = 0, \\dots, n-1, \\qquad \\sigma_n = 0.

    ``rho = 7`` concentrates the steps at small ``sigma``, where the ODE's truncation
    error matters most for the final sample.

    Parameters
    ----------
    n
        Number of sampler steps (>= 1).
    sigma_min, sigma_max
        Smallest and largest nonzero noise level.
    rho
        Warping exponent (> 0); ``rho = 1`` is a linear schedule in ``sigma``.

    Returns
    -------
    torch.Tensor
        Shape ``(n + 1,)``, decreasing, ``sigmas[0] = sigma_max``, ``sigmas[n - 1] =
        sigma_min`` (for ``n >= 2``), ``sigmas[n] = 0``.
    """
    _check_n(n)
    _check_range(sigma_min, sigma_max)
    if not rho > 0:
        raise ValueError(f"rho must be positive, got {rho!r}")
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + _ramp(n) * (lo - hi)) ** rho
    return _finish(sigmas, dtype, device)


def loglinear_sigmas(
    n: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Noise levels evenly spaced in ``log sigma`` (geometric), as in NCSN / the VE SDE
    (Song & Ermon 2019; Song et al. 2021):

    .. math::

        \\sigma_i = \\sigma_\\max\\,(\\sigma_\\min / \\sigma_\\max)^{i/(n-1)},
        \\quad i = 0, \\dots, n-1, \\qquad \\sigma_n = 0.

    Parameters and return value as in :func:`karras_sigmas`.
    """
    _check_n(n)
    _check_range(sigma_min, sigma_max)
    log_sigmas = math.log(sigma_max) + _ramp(n) * (math.log(sigma_min) - math.log(sigma_max))
    return _finish(log_sigmas.exp(), dtype, device)


def vp_sigmas(
    n: int,
    beta_d: float = 19.9,
    beta_min: float = 0.1,
    eps_s: float = 1e-3,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The VP SDE's uniform time steps mapped to noise levels (Song et al. 2021; Karras et
    al. 2022, Table 1, "VP" column):

    .. math::

        t_i = 1 + \\tfrac{i}{n-1}(\\epsilon_s - 1),\\qquad
        \\sigma_i = \\sqrt{\\exp\\big(\\tfrac12 \\beta_d t_i^2 + \\beta_\\min t_i\\big) - 1},
        \\qquad \\sigma_n = 0.

    Parameters
    ----------
    n
        Number of sampler steps (>= 1).
    beta_d, beta_min
        ``beta(t) = beta_min + beta_d t`` (both >= 0, not both 0).
    eps_s
        Last time step, in ``(0, 1)``.

    Returns
    -------
    torch.Tensor
        Shape ``(n + 1,)``, decreasing, ending in 0.
    """
    _check_n(n)
    if beta_d < 0 or beta_min < 0 or beta_d + beta_min == 0:
        raise ValueError(
            f"need beta_d >= 0, beta_min >= 0, not both 0; got beta_d={beta_d!r}, "
            f"beta_min={beta_min!r}"
        )
    if not 0 < eps_s < 1:
        raise ValueError(f"eps_s must be in (0, 1), got {eps_s!r}")
    t = 1 + _ramp(n) * (eps_s - 1)
    sigmas = torch.expm1(0.5 * beta_d * t**2 + beta_min * t).sqrt()
    return _finish(sigmas, dtype, device)
