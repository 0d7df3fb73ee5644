"""Linear observation operators on gridded fields, each with its adjoint.

An operator :math:`A` maps fields ``x`` of shape ``(N, C, *grid)`` (``C`` channels, the
variables of a :class:`~pdediff.io.FieldSpec`) to observations ``(N, M)``; its adjoint
:math:`A^\\top` maps ``(N, M)`` back to ``(N, C, *grid)``, so that for every ``x`` and
``y``

.. math::  \\langle A x, y \\rangle = \\langle x, A^\\top y \\rangle .

Three operators cover the observation layouts of DiffusionPDE (Huang et al. 2024,
arXiv:2406.17763) and of user data:

* :class:`PointObservation`: multilinear interpolation of one channel at arbitrary
  physical positions (bilinear in 2-D), exact at grid points, periodic dims wrapped;
* :class:`MaskObservation`: the values at the grid points of a boolean mask (gridded data
  with NaN where unobserved, sensor columns);
* :class:`StackedObservation`: several operators' observations concatenated.

All are plain torch code: ``forward`` is differentiable in ``x`` (guidance takes its
gradient) and ``adjoint`` in ``y``.  Every operator's weights sum to one in each row
(interpolation or selection), so for per-channel affine maps ``x = mean + std x_n``

.. math::  A(\\mu + s\\,x_n) = \\mu + s\\,A(x_n),

which lets observations be moved to normalised units instead of de-normalising the
fields (see :func:`pdediff.io.observations.build_operator`).
"""

from __future__ import annotations

import abc
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence

import torch

from pdediff.errors import DataError

__all__ = [
    "DIFFUSIONPDE_POINTS",
    "LinearObservation",
    "PointObservation",
    "MaskObservation",
    "StackedObservation",
    "random_points",
    "sensor_columns",
    "column_mask",
]

#: Observed grid points per field in DiffusionPDE's sparse-observation experiments.
DIFFUSIONPDE_POINTS = 500
# Largest input size (C * prod(grid)) for which ``matrix()`` builds a dense matrix.
_MAX_DENSE = 1 << 16


def _generator(generator: torch.Generator | int | None) -> torch.Generator | None:
    """A torch generator from a seed (``int``), a generator, or ``None`` (global RNG)."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    return torch.Generator().manual_seed(int(generator))


class LinearObservation(abc.ABC):
    """Base class: a linear map from fields ``(N, C, *grid)`` to observations ``(N, M)``.

    Subclasses set :attr:`input_shape` (``(C, *grid)``) and :attr:`num_observations`
    (``M``) and implement :meth:`forward` and :meth:`adjoint`.  Index and weight tensors
    are kept on the CPU in float64 and copied once per (device, dtype) they are used with.
    """

    input_shape: tuple[int, ...]
    num_observations: int

    def __init__(self) -> None:
        self._cache: dict[tuple, tuple[torch.Tensor, ...]] = {}

    # -- interface ------------------------------------------------------------------------
    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Observations ``A x``: ``(N, C, *grid) -> (N, M)``."""

    @abc.abstractmethod
    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Adjoint ``A^T y``: ``(N, M) -> (N, C, *grid)``."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def matrix(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Dense matrix ``(M, C * prod(grid))`` acting on C-order flattened fields (tests)."""
        size = math.prod(self.input_shape)
        if size > _MAX_DENSE:
            raise ValueError(f"matrix() is for small grids: input size {size} exceeds {_MAX_DENSE}")
        basis = torch.eye(size, dtype=dtype).reshape(size, *self.input_shape)
        return self.forward(basis).T.contiguous()

    # -- helpers for subclasses -----------------------------------------------------------
    def _buffers(self, like: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``tensors`` on ``like``'s device; floating ones in ``like``'s dtype (cached)."""
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = tuple(
                t.to(device=like.device, dtype=like.dtype if t.is_floating_point() else t.dtype)
                for t in tensors
            )
        return self._cache[key]

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{type(self).__name__}: fields of shape {tuple(x.shape)}, expected "
                f"(N, {', '.join(map(str, self.input_shape))})"
            )

    def _check_observations(self, y: torch.Tensor) -> None:
        if y.ndim != 2 or y.shape[1] != self.num_observations:
            raise ValueError(
                f"{type(self).__name__}: observations of shape {tuple(y.shape)}, expected "
                f"(N, {self.num_observations})"
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(input_shape={self.input_shape}, "
            f"num_observations={self.num_observations})"
        )


# ----------------------------------------------------------------------------------------
# Points at physical positions


def _domain_text(coords: Sequence[torch.Tensor], dims: Sequence[str], periodic) -> str:
    parts = []
    for d, c in zip(dims, coords, strict=True):
        kind = "periodic" if d in periodic else "closed"
        parts.append(f"{d} in [{c[0].item():.6g}, {c[-1].item():.6g}] ({kind})")
    return ", ".join(parts)


def _locate_bounded(
    c: torch.Tensor, p: torch.Tensor, slack: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cell ``[c_i, c_{i+1}]`` holding each ``p`` and the weight ``w`` of ``c_{i+1}``.

    Returns ``(i, i + 1, w, outside)``.  Positions within ``slack`` outside the end points
    (rounding, float32 storage) are clamped onto them; farther ones are flagged.
    """
    outside = (p < c[0] - slack) | (p > c[-1] + slack)
    p = p.clamp(c[0], c[-1])
    # right=True puts a node exactly on c_i in cell i, so its weight w is exactly 0.
    i = (torch.searchsorted(c, p, right=True) - 1).clamp(0, c.numel() - 2)
    w = (p - c[i]) / (c[i + 1] - c[i])
    return i, i + 1, w, outside


def _locate_periodic(
    c: torch.Tensor, p: torch.Tensor, dim: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """As :func:`_locate_bounded` on a periodic dim of period ``L = n h``: positions wrap
    into ``[c_0, c_0 + L)`` and the cell after the last node ends at ``c_0 + L``."""
    n = c.numel()
    h = (c[-1] - c[0]) / (n - 1)
    if not torch.allclose(torch.diff(c), h.expand(n - 1), rtol=1e-4, atol=0.0):
        raise DataError(f"periodic coordinate {dim!r} must be uniformly spaced")
    period = n * h
    inside = (p >= c[0]) & (p < c[0] + period)
    # Positions already in the base period are left untouched so grid nodes stay exact.
    q = torch.where(inside, p, c[0] + torch.remainder(p - c[0], period))
    ext = torch.cat([c, (c[0] + period).reshape(1)])
    i = (torch.searchsorted(ext, q, right=True) - 1).clamp(0, n - 1)
    w = (q - ext[i]) / (ext[i + 1] - ext[i])
    return i, (i + 1) % n, w


class PointObservation(LinearObservation):
    """Multilinear interpolation of one channel at arbitrary physical positions.

    For a position :math:`p` in the cell :math:`[c_{i_k}, c_{i_k+1}]` of every dim ``k``,
    with :math:`w_k = (p_k - c_{i_k}) / (c_{i_k+1} - c_{i_k}) \\in [0, 1]`,

    .. math::  (A x)(p) = \\sum_{b \\in \\{0,1\\}^d} \\Big(\\prod_k w_k^{b_k}
               (1 - w_k)^{1 - b_k}\\Big)\\, x_{c}[i_1 + b_1, \\dots, i_d + b_d],

    bilinear in 2-D, linear in 1-D.  At a grid node every weight but one is exactly 0,
    so observations at grid points are exact; the interpolant is exact for every function
    that is linear in each coordinate separately (e.g. :math:`1 + 2x + 3y + 4xy`).  On a
    periodic dim of ``n`` points and period :math:`L = n h` positions wrap modulo ``L``
    and the last cell joins node ``n - 1`` to node ``0``.

    The operator is stored as ``(M, 2^d)`` node indices and weights, so ``forward`` is a
    gather and ``adjoint`` a scatter-add, fast for many thousands of points.

    Parameters
    ----------
    grid_coords
        Ordered ``dim -> 1-D increasing coordinates`` in the order of the grid axes.
    points
        ``dim -> (M,)`` positions in the same physical units, one entry per grid dim.
    channel
        Channel of ``x`` that is observed.
    num_channels
        ``C``, the number of channels of ``x`` (the adjoint's output has all of them).
    periodic
        Names of the periodic dims.
    tol
        Positions at most ``tol`` grid spacings outside a non-periodic dim's end points are
        moved onto them (coordinates that went through float32); farther ones are an error.

    Raises
    ------
    DataError
        A position is outside the domain or not finite; the message names the first such
        point and the domain.
    """

    def __init__(
        self,
        grid_coords: Mapping[str, Sequence[float] | torch.Tensor],
        points: Mapping[str, Sequence[float] | torch.Tensor],
        channel: int = 0,
        num_channels: int = 1,
        periodic: Iterable[str] = (),
        tol: float = 1e-4,
    ) -> None:
        super().__init__()
        self.dims = tuple(grid_coords)
        self.periodic = frozenset(periodic)
        coords = [torch.as_tensor(grid_coords[d], dtype=torch.float64) for d in self.dims]
        self._check_coords(coords, num_channels, channel)
        pos = self._positions(points)
        self.channel, self.num_channels = int(channel), int(num_channels)
        self.grid_shape = tuple(c.numel() for c in coords)
        self.input_shape = (self.num_channels, *self.grid_shape)
        self.num_observations = pos[0].numel()
        self.index, self.weight = self._interpolation(coords, pos, tol)

    def _check_coords(self, coords: list[torch.Tensor], num_channels: int, channel: int):
        for d, c in zip(self.dims, coords, strict=True):
            if c.ndim != 1 or c.numel() < 2 or not bool((torch.diff(c) > 0).all()):
                raise DataError(f"coordinate {d!r} must be 1-D, increasing, with >= 2 points")
        unknown = sorted(self.periodic - set(self.dims))
        if unknown:
            raise DataError(f"periodic dim(s) {unknown} are not grid dims {self.dims}")
        if not 0 <= channel < num_channels:
            raise ValueError(f"channel {channel} out of range for {num_channels} channel(s)")

    def _positions(self, points: Mapping) -> list[torch.Tensor]:
        if set(points) != set(self.dims):
            raise DataError(
                f"observation positions are given in {sorted(points)} but the grid dims are "
                f"{list(self.dims)}: grid mismatch"
            )
        pos = [torch.as_tensor(points[d], dtype=torch.float64).reshape(-1) for d in self.dims]
        sizes = {p.numel() for p in pos}
        if len(sizes) != 1:
            raise DataError(f"position arrays have different lengths {sorted(sizes)}")
        for d, p in zip(self.dims, pos, strict=True):
            bad = ~torch.isfinite(p)
            if bad.any():
                k = int(bad.nonzero()[0])
                raise DataError(f"observation {k}: position {d} = {p[k].item()} is not finite")
        return pos

    def _interpolation(
        self, coords: list[torch.Tensor], pos: list[torch.Tensor], tol: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Node indices ``(M, 2^d)`` (C-order flat) and weights ``(M, 2^d)``."""
        cells, outside = [], torch.zeros(self.num_observations, dtype=torch.bool)
        for d, c, p in zip(self.dims, coords, pos, strict=True):
            if d in self.periodic:
                cells.append(_locate_periodic(c, p, d))
            else:
                slack = tol * torch.diff(c).min()
                i, j, w, out = _locate_bounded(c, p, slack)
                cells.append((i, j, w))
                outside |= out
        if outside.any():
            k = int(outside.nonzero()[0])
            where = ", ".join(f"{d}={p[k].item():.6g}" for d, p in zip(self.dims, pos, strict=True))
            raise DataError(
                f"observation {k} at ({where}) is outside the domain "
                f"{_domain_text(coords, self.dims, self.periodic)}; "
                f"{int(outside.sum())} of {self.num_observations} point(s) are outside"
            )
        strides = [math.prod(self.grid_shape[k + 1 :]) for k in range(len(self.dims))]
        index, weight = [], []
        for corner in itertools.product((0, 1), repeat=len(self.dims)):
            flat = torch.zeros(self.num_observations, dtype=torch.long)
            wt = torch.ones(self.num_observations, dtype=torch.float64)
            for (i, j, w), b, s in zip(cells, corner, strides, strict=True):
                flat = flat + (j if b else i) * s
                wt = wt * (w if b else 1.0 - w)
            index.append(flat)
            weight.append(wt)
        return torch.stack(index, dim=1), torch.stack(weight, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        index, weight = self._buffers(x, self.index, self.weight)
        field = x[:, self.channel].reshape(x.shape[0], -1)
        return (field[:, index] * weight).sum(dim=-1)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self._check_observations(y)
        index, weight = self._buffers(y, self.index, self.weight)
        n, size = y.shape[0], math.prod(self.grid_shape)
        contrib = (y[:, :, None] * weight).reshape(n, -1)
        field = y.new_zeros(n, size).index_add(1, index.reshape(-1), contrib)
        return _place_channel(field, self.channel, self.input_shape)


def _place_channel(field: torch.Tensor, channel: int, input_shape: tuple[int, ...]):
    """``(N, P)`` field -> ``(N, C, *grid)`` zero except in ``channel`` (out of place, so
    the adjoint stays differentiable)."""
    channels = [field if c == channel else torch.zeros_like(field) for c in range(input_shape[0])]
    return torch.stack(channels, dim=1).reshape(field.shape[0], *input_shape)


# ----------------------------------------------------------------------------------------
# Masks on the grid


class MaskObservation(LinearObservation):
    """The values of ``x`` at the grid points of a boolean mask.

    .. math::  (A x)_m = x[c_m, g_m], \\qquad (A^\\top y)[c, g] = \\sum_{m: (c_m, g_m)
               = (c, g)} y_m ,

    with the observed (channel, grid point) pairs taken in C order of ``mask``.  This is
    the operator of gridded observations with NaN where unobserved and of DiffusionPDE's
    sensor layouts (random points, Burgers' sensor columns).

    Parameters
    ----------
    mask
        Boolean ``(K, *grid)``: ``mask[k]`` selects the observed points of channel
        ``channels[k]``.
    channels
        The channel of each mask row: an ``int`` when ``K = 1``, else a sequence of ``K``
        distinct channels (default ``0 .. K-1``).
    num_channels
        ``C``; default ``max(channels) + 1``.
    """

    def __init__(
        self,
        mask: torch.Tensor,
        channels: int | Sequence[int] | None = None,
        num_channels: int | None = None,
    ) -> None:
        super().__init__()
        mask = torch.as_tensor(mask).to(torch.bool).cpu()
        if mask.ndim < 2:
            raise ValueError(f"mask must have shape (K, *grid), got {tuple(mask.shape)}")
        k = mask.shape[0]
        if channels is None:
            channels = list(range(k))
        elif isinstance(channels, int):
            channels = [channels]
        channels = [int(c) for c in channels]
        num_channels = int(num_channels if num_channels is not None else max(channels) + 1)
        if len(channels) != k or len(set(channels)) != k:
            raise ValueError(f"need {k} distinct channel(s) for the mask rows, got {channels}")
        if min(channels) < 0 or max(channels) >= num_channels:
            raise ValueError(f"channels {channels} out of range for {num_channels} channel(s)")
        self.channels = tuple(channels)
        self.grid_shape = tuple(mask.shape[1:])
        self.input_shape = (num_channels, *self.grid_shape)
        size = math.prod(self.grid_shape)
        row, point = mask.reshape(k, size).nonzero(as_tuple=True)
        self.index = torch.tensor(channels, dtype=torch.long)[row] * size + point
        self.num_observations = int(self.index.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        (index,) = self._buffers(x, self.index)
        return x.reshape(x.shape[0], -1)[:, index]

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self._check_observations(y)
        (index,) = self._buffers(y, self.index)
        out = y.new_zeros(y.shape[0], math.prod(self.input_shape)).index_add(1, index, y)
        return out.reshape(y.shape[0], *self.input_shape)


# ----------------------------------------------------------------------------------------
# Several operators


class StackedObservation(LinearObservation):
    """Observations of several operators on the same fields, concatenated.

    .. math::  A = \\begin{pmatrix} A_1 \\\\ \\vdots \\\\ A_k \\end{pmatrix}, \\qquad
               A^\\top y = \\sum_j A_j^\\top y_j .

    Parameters
    ----------
    operators
        Operators sharing one ``input_shape``.
    names
        Optional label of each block (e.g. the observed field), see :meth:`slices`.
    """

    def __init__(
        self, operators: Sequence[LinearObservation], names: Sequence[str] | None = None
    ) -> None:
        super().__init__()
        self.operators = list(operators)
        if not self.operators:
            raise ValueError("StackedObservation needs at least one operator")
        shapes = {op.input_shape for op in self.operators}
        if len(shapes) != 1:
            raise ValueError(f"stacked operators act on different fields: {sorted(shapes)}")
        self.names = tuple(names) if names is not None else tuple(map(str, range(len(operators))))
        if len(self.names) != len(self.operators):
            raise ValueError(f"{len(self.names)} names for {len(self.operators)} operators")
        self.input_shape = shapes.pop()
        self.sizes = [op.num_observations for op in self.operators]
        self.num_observations = sum(self.sizes)

    def slices(self) -> dict[str, slice]:
        """``name -> slice`` of that block in the stacked observation vector."""
        out, start = {}, 0
        for name, size in zip(self.names, self.sizes, strict=True):
            out[name] = slice(start, start + size)
            start += size
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return torch.cat([op.forward(x) for op in self.operators], dim=1)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self._check_observations(y)
        parts = torch.split(y, self.sizes, dim=1)
        return sum(op.adjoint(p) for op, p in zip(self.operators, parts, strict=True))


# ----------------------------------------------------------------------------------------
# Layouts of the DiffusionPDE experiments


def _unravel(flat: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """C-order multi-indices ``(K, d)`` of flat indices (torch < 2.2 has no unravel)."""
    out = []
    for n in reversed(shape):
        out.append(flat % n)
        flat = flat // n
    return torch.stack(out[::-1], dim=1)


def random_points(
    shape: Sequence[int], count: int, generator: torch.Generator | int | None = None
) -> torch.Tensor:
    """``count`` distinct grid points drawn uniformly without replacement.

    DiffusionPDE observes :data:`DIFFUSIONPDE_POINTS` (500) random points of each field.

    Parameters
    ----------
    shape
        Grid shape.
    count
        Number of points, ``1 <= count <= prod(shape)``.
    generator
        A ``torch.Generator`` or an integer seed (reproducible draws).

    Returns
    -------
    torch.Tensor
        ``(count, len(shape))`` long tensor of grid indices, sorted in C order.
    """
    size = math.prod(shape)
    if not 1 <= count <= size:
        raise ValueError(f"cannot draw {count} distinct points from a grid of {size} points")
    flat = torch.randperm(size, generator=_generator(generator))[: int(count)]
    return _unravel(flat.sort().values, shape)


def sensor_columns(
    nx: int, count: int, generator: torch.Generator | int | None = None
) -> torch.Tensor:
    """Indices of ``count`` sensor positions along a dim of ``nx`` points.

    Burgers' sensors observe the whole time history at a few ``x``: the columns
    ``u[:, i]`` for the returned ``i``.  Without a generator they are evenly spaced,
    :math:`i_k = \\lfloor k\\, n_x / \\mathrm{count} \\rfloor`; with one, drawn at random
    (distinct, sorted).
    """
    if not 1 <= count <= nx:
        raise ValueError(f"cannot place {count} sensors on {nx} points")
    if generator is None:
        return torch.arange(count) * nx // count
    return torch.randperm(nx, generator=_generator(generator))[:count].sort().values


def column_mask(shape: Sequence[int], columns: torch.Tensor | Sequence[int], dim: int = -1):
    """Boolean mask of ``shape`` true on the given indices of ``dim`` (all other indices)."""
    mask = torch.zeros(tuple(shape), dtype=torch.bool)
    index = [slice(None)] * len(shape)
    index[dim] = torch.as_tensor(columns, dtype=torch.long)
    mask[tuple(index)] = True
    return mask
