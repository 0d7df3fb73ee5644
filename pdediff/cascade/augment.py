"""Grid transfer and conditioning augmentation for cascaded diffusion (Ho et al. 2021).

pdediff's fields are point values at grid nodes (:func:`pdediff.pde.base.node_grid`: ``n``
nodes on ``[0, L]`` *including both ends*, spacing ``L / (n - 1)``; or
:func:`~pdediff.pde.base.periodic_grid`: ``x_j = j L / n``, the end point not stored).  Both
grid transfers are therefore *linear interpolation between nodes*, separable over the
dims, written as one matrix per dim:

.. math::  x' = W_y\\, x\\, W_x^\\top, \\qquad
           (W)_{ij} = (1 - \\lambda_i)\\,[j = j_i] + \\lambda_i\\,[j = j_i + 1],

with ``t_i = i (n - 1) / (m - 1) = j_i + lambda_i`` the position of new node ``i`` in old
grid steps on a node dim (PyTorch's bilinear interpolation with ``align_corners=True``,
which keeps the boundary nodes where they are) and ``t_i = i n / m`` with wrap-around on a
periodic dim.  Consequences:

* :func:`upsample` is exact on fields linear in each coordinate.
* :func:`downsample` is *node subsampling*: where the grids nest (a node grid of ``2n - 1``
  points onto ``n``, e.g. 65 -> 33; a periodic grid of ``2n`` onto ``n``) it is exactly
  ``x[::2]``; where they do not (node grids 64 -> 32, the sizes pdediff's UNet needs, which
  halves the grid at every level) each coarse node takes the linear interpolant of the
  fine field at its position.  This matches how the base stage's data are made (a solver
  run on the coarse grid returns point values at the coarse nodes) and keeps Dirichlet
  boundary values exact; area averaging would give cell means instead, smearing the
  boundary.  It does not low-pass filter: scales finer than the coarse grid alias, as in
  the coarse simulation itself.

Conditioning augmentation (Ho et al. 2021, "Cascaded Diffusion Models for High Fidelity
Image Generation", arXiv:2106.15282, Sec. 4): a super-resolution stage is trained on a
corrupted copy of its low-resolution conditioning,

.. math::  \\tilde z = G_b * \\mathrm{up}(\\mathrm{down}(x)) + s\\,\\varepsilon,
           \\qquad \\varepsilon \\sim \\mathcal N(0, I),

with Gaussian blur ``G_b`` of standard deviation ``b`` grid steps (training only) and noise
of level ``s`` (in the units of the normalised fields, the variance-exploding form of the
paper's ``q(z_s | z_0)``), and is told ``s``; at sampling time the low-resolution sample is
noised to a fixed ``s`` and the stage is told that ``s``, so the stage does not trust the
low-resolution details the base model may have got wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr

from pdediff.errors import DataError
from pdediff.io.conventions import field_dims, grid_from_dataset, history_line

__all__ = [
    "augment",
    "coarse_coords",
    "downsample",
    "gaussian_blur",
    "interpolation_matrix",
    "resample",
    "upsample",
]

Periodic = bool | Sequence[bool]


def interpolation_matrix(n_in: int, n_out: int, periodic: bool = False) -> torch.Tensor:
    """``(n_out, n_in)`` float64 matrix of linear interpolation between the grids.

    Node grids (both ends included): new node ``i`` sits at ``t = i (n_in - 1) / (n_out - 1)``
    old steps; periodic grids: at ``t = i n_in / n_out`` with wrap-around.  The position is
    computed in integers, so where the grids nest the weights are exactly 0 and 1.
    """
    if n_in < 2 or n_out < 2:
        raise DataError(f"grids need >= 2 points per dim, got {n_in} -> {n_out}")
    num, den = (n_in, n_out) if periodic else (n_in - 1, n_out - 1)
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        j, rem = divmod(i * num, den)
        if not periodic and j == n_in - 1:  # the last node: weight 1 on it, none beyond
            j, rem = n_in - 2, den
        lam = rem / den
        w[i, j] += 1.0 - lam
        w[i, (j + 1) % n_in] += lam
    return w


def _per_dim(periodic: Periodic, ndim: int) -> tuple[bool, ...]:
    if isinstance(periodic, bool):
        return (periodic,) * ndim
    flags = tuple(bool(p) for p in periodic)
    if len(flags) != ndim:
        raise DataError(f"periodic gives {len(flags)} flags for {ndim} grid dims")
    return flags


def _sizes(size: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    sizes = (int(size),) * ndim if isinstance(size, int | np.integer) else tuple(map(int, size))
    if len(sizes) != ndim:
        raise DataError(f"size {size} does not give one number per grid dim ({ndim})")
    if any(s < 2 for s in sizes):
        raise DataError(f"grids need >= 2 points per dim, got size {size}")
    return sizes


def resample(
    x: torch.Tensor, size: int | Sequence[int], periodic: Periodic = False
) -> torch.Tensor:
    """Linear interpolation of ``x`` ``(..., H, W)`` onto a grid of ``size`` nodes per
    dim covering the same domain (see the module docstring); differentiable.

    Parameters
    ----------
    x
        Fields whose last two axes are the grid.
    size
        New number of points per dim (one int for both).
    periodic
        Whether each grid dim is periodic (one flag for both).
    """
    if x.ndim < 2:
        raise DataError(f"resample needs (..., H, W) fields, got shape {tuple(x.shape)}")
    sizes, flags = _sizes(size, 2), _per_dim(periodic, 2)
    wy, wx = (
        interpolation_matrix(n, m, p).to(dtype=x.dtype, device=x.device)
        for n, m, p in zip(x.shape[-2:], sizes, flags, strict=True)
    )
    return torch.einsum("ih,...hw,jw->...ij", wy, x, wx)


def upsample(
    x: torch.Tensor, size: int | Sequence[int], periodic: Periodic = False
) -> torch.Tensor:
    """``x`` ``(..., H, W)`` interpolated onto a finer grid of ``size`` points per dim.

    On node grids this is bilinear interpolation with ``align_corners=True`` (both boundary
    nodes stay in place): exact on fields linear in ``x`` and ``y``.  Periodic dims wrap.
    """
    sizes = _sizes(size, 2)
    if any(m < n for m, n in zip(sizes, x.shape[-2:], strict=True)):
        raise DataError(f"upsample to {sizes} is smaller than the input grid {tuple(x.shape)}")
    return resample(x, sizes, periodic)


def coarse_coords(coords: np.ndarray, size: int, periodic: bool = False) -> np.ndarray:
    """Coordinates of the ``size``-point grid on the domain of ``coords``."""
    c = np.asarray(coords, dtype=np.float64)
    if periodic:
        length = (c[-1] - c[0]) * c.size / (c.size - 1)
        return c[0] + np.arange(size) * (length / size)
    return np.linspace(c[0], c[-1], size)


def _downsample_dataset(ds: xr.Dataset, size: int | Sequence[int]) -> xr.Dataset:
    """Every gridded variable of ``ds`` on the coarse grid (others unchanged)."""
    dims = field_dims(ds)
    grid = grid_from_dataset(ds, dims)
    sizes = _sizes(size, len(dims))
    matrices, coords = {}, {}
    for dim, m in zip(dims, sizes, strict=True):
        n, periodic = ds.sizes[dim], dim in grid.periodic
        if m > n:
            raise DataError(f"downsample to {m} points is finer than {dim!r} ({n} points)")
        matrices[dim] = interpolation_matrix(n, m, periodic).numpy()
        coords[dim] = xr.Variable(dim, coarse_coords(ds[dim].values, m, periodic), ds[dim].attrs)
    data_vars = {}
    for name, var in ds.data_vars.items():
        values = np.asarray(var.values)
        for dim in dims:
            if dim in var.dims:
                axis = var.dims.index(dim)
                moved = np.tensordot(matrices[dim], values.astype(np.float64), ([1], [axis]))
                values = np.moveaxis(moved, 0, axis)
        data_vars[name] = xr.Variable(var.dims, values.astype(var.dtype), var.attrs)
    others = {k: v.variable for k, v in ds.coords.items() if not set(v.dims) & set(dims)}
    action = history_line(f"downsample to {'x'.join(map(str, sizes))} (node subsampling)")
    history = "\n".join(h for h in (ds.attrs.get("history"), action) if h)
    attrs = {**ds.attrs, "history": history}
    return xr.Dataset(data_vars, coords={**others, **coords}, attrs=attrs)


def downsample(
    x: torch.Tensor | xr.Dataset, size: int | Sequence[int], periodic: Periodic = False
) -> torch.Tensor | xr.Dataset:
    """Fields on the coarser grid of ``size`` points per dim, by node subsampling.

    Exactly ``x[..., ::k, ::k]`` where the grids nest (node grids ``k (n - 1) + 1 -> n``,
    periodic ``k n -> n``), linear interpolation at the coarse nodes otherwise (node grids
    64 -> 32): see the module docstring for why not area averaging.

    Parameters
    ----------
    x
        A tensor ``(..., H, W)`` or a Dataset in pdediff's convention (its periodic dims
        are read from the coordinates' ``periodic`` attribute; per-sample variables are
        kept).
    size
        Points per dim of the coarse grid (one int for every dim).
    periodic
        For a tensor: whether each grid dim is periodic.
    """
    if isinstance(x, xr.Dataset):
        return _downsample_dataset(x, size)
    sizes = _sizes(size, 2)
    if any(m > n for m, n in zip(sizes, x.shape[-2:], strict=True)):
        raise DataError(f"downsample to {sizes} is finer than the input grid {tuple(x.shape)}")
    return resample(x, sizes, periodic)


def _reflect_index(n: int, r: int, periodic: bool, device) -> torch.Tensor:
    """Indices of a grid axis padded by ``r`` on each side: mirrored about the boundary
    nodes, or wrapped around on a periodic axis."""
    j = torch.arange(-r, n + r, device=device)
    if periodic:
        return j % n
    j = j.abs()
    return torch.where(j > n - 1, 2 * (n - 1) - j, j)


def _blur_axis(x: torch.Tensor, kernel: torch.Tensor, axis: int, periodic: bool) -> torch.Tensor:
    r = (kernel.shape[1] - 1) // 2
    moved = x.movedim(axis, -1)
    padded = moved.index_select(-1, _reflect_index(moved.shape[-1], r, periodic, x.device))
    windows = padded.unfold(-1, 2 * r + 1, 1)  # (N, ..., n, 2r + 1)
    k = kernel.reshape(kernel.shape[0], *([1] * (windows.ndim - 2)), kernel.shape[1])
    return (windows * k).sum(-1).movedim(-1, axis)


def gaussian_blur(
    x: torch.Tensor, sigma: float | torch.Tensor, periodic: Periodic = False
) -> torch.Tensor:
    """Gaussian blur of ``x`` ``(N, C, H, W)`` with standard deviation ``sigma`` grid
    steps, per sample (``sigma`` a float or ``(N,)``); separable, truncated at ``3 sigma``
    (and at the grid size), boundaries mirrored about the boundary nodes, periodic dims
    wrapped.  ``sigma = 0`` leaves a sample unchanged exactly."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
    sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
    if sigma.shape[0] != x.shape[0] or bool((sigma < 0).any()):
        raise DataError(f"blur sigma must be >= 0, one per sample; got {tuple(sigma.shape)}")
    flags = _per_dim(periodic, 2)
    for axis, p in zip((-2, -1), flags, strict=True):
        n = x.shape[axis]
        r = min(math.ceil(3 * float(sigma.max())), n - 1 if not p else n // 2)
        if r == 0:
            continue
        offsets = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
        safe = sigma.clamp_min(torch.finfo(x.dtype).tiny)[:, None]
        kernel = torch.exp(-0.5 * (offsets[None] / safe) ** 2)
        kernel = torch.where(sigma[:, None] > 0, kernel, (offsets == 0).to(x.dtype)[None])
        x = _blur_axis(x, kernel / kernel.sum(1, keepdim=True), axis, p)
    return x


def augment(
    low: torch.Tensor,
    s: float | torch.Tensor,
    blur_sigma: float | torch.Tensor = 0.0,
    generator: torch.Generator | None = None,
    periodic: Periodic = False,
) -> torch.Tensor:
    """Conditioning augmentation ``G_b * low + s eps`` (Ho et al. 2021, Sec. 4.2-4.3).

    Parameters
    ----------
    low
        The upsampled low-resolution conditioning ``(N, C, H, W)`` (normalised fields).
    s
        Noise level, a float or one per sample ``(N,)``, >= 0.
    blur_sigma
        Gaussian blur in grid steps of ``low``'s grid, a float or ``(N,)``, >= 0.
    generator
        Source of ``eps``.
    periodic
        Whether each grid dim is periodic (for the blur).

    Returns
    -------
    torch.Tensor
        The augmented conditioning; ``low`` itself where ``s = 0`` and ``blur_sigma = 0``
        (no random number is then drawn).
    """
    s = torch.as_tensor(s, dtype=low.dtype, device=low.device).reshape(-1)
    if bool((s < 0).any()) or not bool(torch.isfinite(s).all()):
        raise DataError(f"augmentation level s must be finite and >= 0, got {s.tolist()}")
    if bool((torch.as_tensor(blur_sigma) > 0).any()):
        low = gaussian_blur(low, blur_sigma, periodic)
    if not bool((s > 0).any()):
        return low
    eps = torch.randn(low.shape, generator=generator, dtype=low.dtype, device=low.device)
    return low + s.reshape(-1, *([1] * (low.ndim - 1))) * eps
