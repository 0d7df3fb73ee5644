"""Shared pieces of the periodic problems (Burgers, Navier-Stokes): torch spectral kernels.

* angular wavenumbers from the grid spacing (physical units, never a hard-coded period),
* the 2/3 dealiasing mask (Orszag 1971),
* spectral derivatives and Fourier (trigonometric) interpolation to a finer grid,
* periodic central finite differences by ``torch.roll`` (the residual stencils),
* input checks shared by the periodic families.

All kernels act on real tensors along one dim and are differentiable and batched.
"""

from __future__ import annotations

import math

import torch


def wavenumbers(
    n: int,
    spacing: float,
    *,
    real: bool = False,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Angular wavenumbers ``k_m = 2 pi m / (n h)`` of an ``n``-point periodic grid.

    Parameters
    ----------
    n
        Number of grid points (one period, end point not stored).
    spacing
        Grid spacing ``h``; the period is ``n h``.
    real
        ``True``: the ``n // 2 + 1`` non-negative wavenumbers of ``torch.fft.rfft``;
        ``False``: all ``n`` in ``torch.fft.fft`` order.
    """
    freq = torch.fft.rfftfreq if real else torch.fft.fftfreq
    return 2.0 * math.pi * freq(n, d=spacing, dtype=dtype, device=device)


def dealias_mask(
    n: int, *, real: bool = False, device: torch.device | str | None = None
) -> torch.Tensor:
    """Boolean mask of the modes kept by the 2/3 rule: integer wavenumbers ``|m| < n / 3``.

    A product of two fields whose modes satisfy ``|m| < n / 3`` has modes ``|m| < 2 n / 3``;
    its aliases land on ``|m| > n / 3`` and are removed by the same mask, so a quadratic
    nonlinearity computed on the grid is exact on the kept modes.  The strict inequality
    matters when ``3`` divides ``n``.
    """
    m = torch.fft.rfftfreq(n, d=1.0 / n) if real else torch.fft.fftfreq(n, d=1.0 / n)
    return (3.0 * m.abs() < n).to(device)


def spectral_derivative(
    u: torch.Tensor, spacing: float, dim: int = -1, order: int = 1
) -> torch.Tensor:
    """``d^order u / dx^order`` of a real periodic tensor along ``dim``, by FFT.

    The Nyquist mode of an even-length grid is dropped for odd orders: its derivative is
    not a real trigonometric polynomial on the grid (the usual convention).
    """
    n = u.shape[dim]
    k = wavenumbers(n, spacing, real=True, dtype=_real_dtype(u), device=u.device)
    mult = (1j * k) ** order
    if order % 2 == 1 and n % 2 == 0:
        mult[-1] = 0.0
    shape = [1] * u.ndim
    shape[dim] = k.numel()
    u_hat = torch.fft.rfft(u, dim=dim)
    return torch.fft.irfft(u_hat * mult.reshape(shape), n=n, dim=dim)


def fourier_refine(u: torch.Tensor, factor: int, dim: int = -1) -> torch.Tensor:
    """Trigonometric interpolant of ``u`` sampled on ``factor`` times as many points.

    Every ``factor``-th point of the result equals ``u`` (up to round-off): the Nyquist mode
    of an even-length input is split evenly between ``+n/2`` and ``-n/2``, which keeps the
    interpolant real and interpolating.
    """
    if factor == 1:
        return u.clone()
    n = u.shape[dim]
    m = factor * n
    u_hat = torch.fft.rfft(u, dim=dim)
    if n % 2 == 0:
        nyq = torch.ones(u_hat.shape[dim], dtype=u_hat.dtype, device=u.device)
        nyq[-1] = 0.5
        shape = [1] * u.ndim
        shape[dim] = nyq.numel()
        u_hat = u_hat * nyq.reshape(shape)
    # irfft zero-pads the spectrum to m // 2 + 1 modes; the factor keeps the amplitudes.
    return torch.fft.irfft(u_hat, n=m, dim=dim) * factor


def central_difference(u: torch.Tensor, spacing: float, dim: int, order: int = 1) -> torch.Tensor:
    """Second-order periodic central difference of ``u`` along ``dim`` (``torch.roll``).

    ``order=1``: ``(u_{j+1} - u_{j-1}) / (2h)``; ``order=2``:
    ``(u_{j+1} - 2 u_j + u_{j-1}) / h^2``.  Both are exact for the periodic extension, so
    there is no boundary row to drop.
    """
    forward = torch.roll(u, shifts=-1, dims=dim)  # u_{j+1} at index j
    backward = torch.roll(u, shifts=1, dims=dim)  # u_{j-1} at index j
    if order == 1:
        return (forward - backward) / (2.0 * spacing)
    if order == 2:
        return (forward - 2.0 * u + backward) / spacing**2
    raise ValueError(f"central_difference supports order 1 or 2, got {order}")


def _real_dtype(u: torch.Tensor) -> torch.dtype:
    return u.dtype if u.dtype.is_floating_point else torch.float64
