"""Importers: the files users already have, as Datasets in pdediff's convention.

Each reader turns one file layout into a :class:`RawImport` (arrays already in pdediff's
axis order ``(sample, [t,] [z,] [y,] x)``, the grid coordinates, the guessed PDE family and
its parameters); :func:`import_dataset` applies the user's renames and assembles the Dataset
with :func:`~pdediff.io.conventions.make_dataset`; :func:`import_file` is what the CLI
calls (import, check for NaN/inf, write atomically).

Formats (keys of :data:`IMPORTERS`) and where their coordinates come from:

``"pdebench"``
    PDEBench HDF5.  Coordinates from the file (``x-coordinate``, ... or ``grid/x``, ...).
    Single-array files store spatial axes as ``(x, y, z)`` (the PDEBench generators index
    ``nu[n, ix, iy]``); they are transposed to pdediff's ``(z, y, x)``.  Per-sample group
    files (``0000/data`` of shape ``(T, H, W, C)``) are written ``(t, y, x)`` by the
    diff-react generator and read as such.  Where the grid is not square the axis order is
    taken from the coordinate lengths instead.  A time axis of length one is dropped.
``"fno-mat"``
    The FNO ``.mat`` files (MATLAB v5 or v7.3/HDF5).  No coordinates in the files: Darcy on
    a node grid ``[0, length]^2``, Navier-Stokes and Burgers on a periodic grid
    ``x_j = j length / n``; NS times from the ``t`` key (default ``1..T``), Burgers times
    (if any) from ``t`` (default ``T`` levels on ``[0, 1]``).
``"neuraloperator"``
    A dict of tensors saved with ``torch.save`` (read with ``weights_only=True`` only).
    2-D ``x``/``y`` pairs on a node grid ``[0, length]^2`` (periodic for Navier-Stokes);
    1-D Burgers on a periodic ``x`` grid and ``T`` time levels on ``[0, 1]``.
``"diffusionpde-npy"``
    A directory (or glob) of per-sample ``(H, W, 2)`` arrays, channel 0 the coefficient and
    channel 1 the solution; node grid ``[0, length]^2``, periodic for Navier-Stokes.
"""

from __future__ import annotations

import glob
import os
import pickle
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np
import scipy.io
import torch
import xarray as xr

from pdediff.errors import DataError
from pdediff.io.conventions import check_finite, history_line, make_dataset
from pdediff.io.store import HDF5_SIGNATURE, output_format, write_fields
from pdediff.pde.base import FieldInfo, Grid, PDEError, node_grid, periodic_grid

PathLike = str | os.PathLike
SPATIAL = ("z", "y", "x")  # pdediff's order of spatial dims (the last axis is x)

# (coefficient name, solution name, periodic by default) of the two fields of a family;
# a family not listed gets DEFAULT_PAIR.
FAMILY_PAIRS: dict[str, tuple[str, str, bool]] = {
    "darcy": ("a", "u", False),
    "poisson": ("a", "u", False),
    "helmholtz": ("a", "u", False),
    "navier_stokes": ("w0", "w", True),
    "burgers": ("u0", "u", True),
}
DEFAULT_PAIR = ("a", "u", False)
LONG_NAMES = {
    "a": "coefficient",
    "u": "solution",
    "w0": "initial vorticity",
    "w": "vorticity",
    "u0": "initial condition",
}

# Fragments of file names that say which family a file holds (checked in order).
NAME_HINTS = (
    ("darcy", "darcy"),
    ("burgers", "burgers"),
    ("navier", "navier_stokes"),
    ("nsforcing", "navier_stokes"),
    ("poisson", "poisson"),
    ("helmholtz", "helmholtz"),
)
PERIODIC_HINTS = ("periodic", "burgers", "advection")  # PDEBench names of periodic data
PARAM_ALIASES = {"visc": "nu"}  # neuraloperator/FNO key -> pdediff parameter name


@dataclass(frozen=True)
class RawField:
    """One field read from a file, before the user's renames.

    Attributes
    ----------
    key
        Its name in the file (what the ``variables`` option refers to).
    name
        Default pdediff variable name.
    data
        Array ``(N, *grid shape)`` in the axis order of ``dims``.
    dims
        Grid dims of ``data`` (without the sample dim).
    role, long_name
        Metadata written to the variable's attributes.
    """

    key: str
    name: str
    data: np.ndarray
    dims: tuple[str, ...]
    role: str = "solution"
    long_name: str = ""


@dataclass(frozen=True)
class RawImport:
    """What a reader found in a file: fields, the coordinates of all their dims, which dims
    are periodic, the PDE family, its parameters and a ``source`` description."""

    fields: tuple[RawField, ...]
    coords: Mapping[str, np.ndarray]
    periodic: frozenset[str]
    pde: str
    params: Mapping[str, float]
    source: str


Importer = Callable[..., RawImport]


# ----------------------------------------------------------------------------- helpers


def _existing_file(src: PathLike) -> Path:
    path = Path(src)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a directory; expected a file")
    return path


def _natural_key(text: str) -> list:
    """Sort key comparing runs of digits as numbers, so ``2.npy`` sorts before ``10.npy``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _keys_text(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys, key=_natural_key)
    more = f", ... ({len(keys)} in all)" if len(keys) > limit else ""
    return "[" + ", ".join(repr(k) for k in keys[:limit]) + more + "]"


def _guess_pde(name: str) -> str | None:
    low = name.lower()
    return next((family for hint, family in NAME_HINTS if hint in low), None)


def _numeric(arr: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{what} has dtype {arr.dtype}; expected numbers")
    return arr


def _scalar_params(values: Mapping[str, object]) -> dict[str, float]:
    """Numeric one-element values as PDE parameters (``visc`` becomes ``nu``)."""
    params = {}
    for key, value in values.items():
        arr = np.asarray(value)
        if arr.dtype.kind in "biuf" and arr.size == 1:
            params[PARAM_ALIASES.get(key, key)] = float(arr.reshape(()))
    return params


def _uniform(values: np.ndarray, what: str) -> np.ndarray:
    """Coordinates checked to be uniform and increasing, snapped to an exact uniform grid.

    Files often store coordinates in float32, whose rounding alone exceeds the tolerance
    with which :class:`~pdediff.pde.base.Grid` checks uniformity (relative 1e-4 of the
    spacing); values within float32 rounding of a uniform grid are replaced by it.
    """
    c = np.asarray(values, dtype=np.float64).ravel()
    if c.size < 2:
        raise DataError(f"{what} has {c.size} value(s); a grid dim needs at least 2")
    h = (c[-1] - c[0]) / (c.size - 1)
    fit = c[0] + h * np.arange(c.size)
    tol = 1e-6 * abs(h) + 8 * np.finfo(np.float32).eps * np.abs(c).max()
    if not h > 0 or np.abs(c - fit).max() > tol:
        d = np.diff(c)
        raise DataError(
            f"{what} is not uniform and increasing (spacings from {d.min():.6g} to "
            f"{d.max():.6g}); pdediff's finite differences need a uniform grid"
        )
    return fit


def _default_axis(n: int, periodic: bool, length: float) -> np.ndarray:
    """Node points on ``[0, length]`` or periodic points ``j length / n``."""
    make = periodic_grid if periodic else node_grid
    return make(n, ("x",), length).coords["x"]


def _spatial_dims(ndim: int, what: str) -> tuple[str, ...]:
    if not 1 <= ndim <= len(SPATIAL):
        raise DataError(f"{what} has {ndim} grid axes; expected 1 to {len(SPATIAL)}")
    return SPATIAL[len(SPATIAL) - ndim :]


def _ordered(dims: Iterable[str]) -> tuple[str, ...]:
    """Dims in pdediff's order: ``t`` first, then ``z, y, x``; unknown names last."""
    rank = {d: i for i, d in enumerate(("t", *SPATIAL))}
    return tuple(sorted(set(dims), key=lambda d: rank.get(d, len(rank))))


def _time_coord(t: np.ndarray, levels: int, what: str) -> np.ndarray:
    """The time coordinate of ``levels`` stored levels.

    PDEBench stores ``T + 1`` times for ``T`` levels (its generators save state ``k`` at
    ``t[k]`` and keep one time too many), so the first ``T`` are used then.
    """
    t = np.asarray(t, dtype=np.float64).ravel()
    if t.size == levels + 1:
        t = t[:levels]
    elif t.size != levels:
        raise DataError(
            f"{what} has {t.size} values; expected {levels} (or {levels + 1}) for the "
            f"{levels} time levels of the data"
        )
    return _uniform(t, what)


def _split_time(arr: np.ndarray, n_spatial: int, t: np.ndarray | None, what: str):
    """``(N, [T,] *spatial)`` -> ``(array, time coordinate or None)``.

    A single time level is dropped: it cannot carry a grid dim (a steady field, such as
    PDEBench Darcy's ``tensor`` of shape ``(N, 1, H, W)``).
    """
    lead = arr.shape[1 : arr.ndim - n_spatial]
    if not lead:
        return arr, None
    if len(lead) != 1:
        raise DataError(
            f"{what} has shape {arr.shape}; expected (N, [T,] {arr.shape[-n_spatial:]})"
        )
    if lead[0] == 1:
        return arr[:, 0], None
    if t is None:
        raise DataError(f"{what} has {lead[0]} time levels but the file has no time coordinate")
    return arr, t


def _match_axes(shape: tuple, sizes: Mapping[str, int], candidates: Sequence[tuple], what: str):
    """Which order of the spatial dims the trailing axes of ``shape`` are in."""
    n = len(candidates[0])
    tail = tuple(shape[-n:]) if len(shape) > n else None
    for order in candidates:
        if tail == tuple(sizes[d] for d in order):
            return order
    expected = " or ".join(
        f"{tuple(sizes[d] for d in o)} for ({', '.join(o)})" for o in dict.fromkeys(candidates)
    )
    raise DataError(f"{what} has shape {shape}; expected (N, [T,] ...) ending in {expected}")


def _to_pdediff_order(arr: np.ndarray, order: tuple[str, ...]) -> np.ndarray:
    """Permute the trailing spatial axes from ``order`` to ``(z, y, x)``."""
    lead = arr.ndim - len(order)
    out = [d for d in SPATIAL if d in order]
    return np.transpose(arr, (*range(lead), *(lead + order.index(d) for d in out)))


def _pair(pde: str | None, layout: str | None) -> tuple[str, str, bool]:
    return FAMILY_PAIRS.get(pde or "") or FAMILY_PAIRS.get(layout or "") or DEFAULT_PAIR


def _field(key: str, name: str, data: np.ndarray, dims: tuple[str, ...], coefficient=False):
    role = "coefficient" if coefficient else "solution"
    return RawField(key, name, data, dims, role, LONG_NAMES.get(name, name))


def _same_samples(arrays: Mapping[str, np.ndarray], where: str) -> None:
    counts = {k: a.shape[0] if a.ndim else 0 for k, a in arrays.items()}
    if len(set(counts.values())) > 1:
        raise DataError(
            f"{where}: variables have different numbers of samples N (first axis): {counts}; "
            "expected the same N for all"
        )


def _coef_solution(
    keys: tuple[str, str],
    coef: np.ndarray,
    sol: np.ndarray,
    *,
    where: str,
    layout: str | None,
    pde: str | None,
    length: float,
    periodic: bool | None,
    time: Callable[[int], np.ndarray] | None = None,
    params: Mapping[str, float] | None = None,
) -> RawImport:
    """Two fields on a default grid: ``coef (N, *S)`` and ``sol (N, *S)`` or ``(N, T, *S)``.

    ``time(T)`` gives the time coordinate when ``sol`` has a time axis.
    """
    kc, ks = keys
    coef = _numeric(coef, f"{where}: {kc!r}")
    sol = _numeric(sol, f"{where}: {ks!r}")
    _same_samples({kc: coef, ks: sol}, where)
    space = _spatial_dims(coef.ndim - 1, f"{where}: {kc!r} of shape {coef.shape}")
    grid_shape = coef.shape[1:]
    if sol.shape[1:] == grid_shape:
        sol_dims = space
    elif time is not None and sol.ndim == coef.ndim + 1 and sol.shape[2:] == grid_shape:
        sol_dims = ("t", *space)
    else:
        expected = f"(N, {', '.join(map(str, grid_shape))})"
        if time is not None:
            expected += f" or (N, T, {', '.join(map(str, grid_shape))})"
        raise DataError(
            f"{where}: {ks!r} has shape {sol.shape}; expected {expected} to "
            f"match {kc!r} of shape {coef.shape}"
        )
    cname, sname, per_default = _pair(pde, layout)
    per = per_default if periodic is None else bool(periodic)
    coords = {d: _default_axis(n, per, length) for d, n in zip(space, grid_shape, strict=True)}
    if sol_dims[0] == "t":
        coords = {"t": time(sol.shape[1]), **coords}
    fields = (_field(kc, cname, coef, space, True), _field(ks, sname, sol, sol_dims))
    family = pde or layout or "unknown"
    return RawImport(
        fields, coords, frozenset(space) if per else frozenset(), family, dict(params or {}), where
    )


def _unit_interval(levels: int) -> np.ndarray:
    """Default times: ``levels`` points on ``[0, 1]`` (first level the initial state)."""
    return np.linspace(0.0, 1.0, levels)


# ----------------------------------------------------------------------------- PDEBench


def _numeric_attrs(attrs: h5py.AttributeManager) -> dict[str, float]:
    return _scalar_params({k: attrs[k] for k in attrs})


def _pdebench_arrays(f: h5py.File, path: Path) -> tuple[list[RawField], dict]:
    """Single-array layout: ``tensor``/``nu``/``density``, ... with ``x-coordinate``, ..."""
    space = [d for d in ("x", "y", "z") if f"{d}-coordinate" in f]
    if not space:
        raise DataError(
            f"{path}: not a PDEBench layout: no 'x-coordinate' dataset and no sample groups; "
            f"it has keys {_keys_text(f)}; expected 'tensor' (or 'nu', 'density', ...) with "
            "'x-coordinate' (and 'y-coordinate', 't-coordinate'), or groups '0000', ... "
            "holding 'data' and 'grid/x'"
        )
    coords = {d: _uniform(f[f"{d}-coordinate"][()], f"{path}: '{d}-coordinate'") for d in space}
    t_raw = f["t-coordinate"][()] if "t-coordinate" in f else None
    keys = [
        k
        for k in f
        if isinstance(f[k], h5py.Dataset) and not k.endswith("-coordinate") and f[k].ndim >= 2
    ]
    if not keys:
        raise DataError(f"{path}: no data arrays besides coordinates; it has keys {_keys_text(f)}")
    sizes = {d: c.size for d, c in coords.items()}
    # PDEBench writes (x, y, z); the reversed order is accepted where the sizes say so
    candidates = [tuple(space), tuple(reversed(space))]
    fields, t = [], None
    for key in keys:
        what = f"{path}: dataset {key!r}"
        arr = _numeric(f[key][()], what)
        arr = _to_pdediff_order(arr, _match_axes(arr.shape, sizes, candidates, what))
        arr, t_key = _split_time(arr, len(space), t_raw, what)
        if t_key is not None:
            t = _time_coord(t_key, arr.shape[1], f"{path}: 't-coordinate'")
        dims = _ordered(space) if t_key is None else ("t", *_ordered(space))
        name = {"tensor": "u", "nu": "a"}.get(key, key)
        fields.append(_field(key, name, arr, dims, coefficient=key == "nu"))
    return fields, ({"t": t} if t is not None else {}) | {d: coords[d] for d in _ordered(space)}


def _group_grid(group: h5py.Group, where: str) -> dict[str, np.ndarray]:
    if "grid" not in group or not isinstance(group["grid"], h5py.Group):
        raise DataError(f"{where} has no 'grid' group; it has keys {_keys_text(group)}")
    grid = group["grid"]
    if "x" not in grid:
        raise DataError(f"{where}/grid has no 'x'; it has keys {_keys_text(grid)}")
    return {d: grid[d][()] for d in ("x", "y", "z", "t") if d in grid}


def _read_groups(f: h5py.File, names: list[str], path: Path) -> np.ndarray:
    """Stack ``<group>/data`` of every group into one ``(N, ...)`` array."""
    out = None
    first_grid = _group_grid(f[names[0]], f"{path}: group {names[0]!r}")
    for i, name in enumerate(names):
        group, where = f[name], f"{path}: group {name!r}"
        if "data" not in group:
            raise DataError(f"{where} has no 'data' dataset; it has keys {_keys_text(group)}")
        data = group["data"]
        if out is None:
            out = np.empty((len(names), *data.shape), dtype=data.dtype)
        if data.shape != out.shape[1:]:
            raise DataError(
                f"{where}: 'data' has shape {data.shape}, expected "
                f"{out.shape[1:]} as in group {names[0]!r}"
            )
        grid = _group_grid(group, where)
        if grid.keys() != first_grid.keys() or not all(
            np.array_equal(grid[d], first_grid[d]) for d in grid
        ):
            raise DataError(
                f"{where}: 'grid' differs from that of group {names[0]!r}; "
                "pdediff needs one grid for all samples"
            )
        out[i] = _numeric(data[()], f"{where}: 'data'")
    return out


def _pdebench_groups(f: h5py.File, path: Path) -> tuple[list[RawField], dict]:
    """Per-sample layout: groups ``0000``, ... each with ``data (T, *spatial, C)`` and
    ``grid/x``, ``grid/y``, ``grid/t``; channel ``c`` becomes variable ``u<c>``."""
    names = sorted((k for k in f if isinstance(f[k], h5py.Group)), key=_natural_key)
    grid = _group_grid(f[names[0]], f"{path}: group {names[0]!r}")
    space = [d for d in ("x", "y", "z") if d in grid]
    coords = {d: _uniform(grid[d], f"{path}: 'grid/{d}'") for d in space}
    data = _read_groups(f, names, path)
    what = f"{path}: 'data' of group {names[0]!r}"
    if data.ndim != len(space) + 3:
        raise DataError(
            f"{what} has shape {data.shape[1:]}; expected (T, "
            f"{', '.join(str(coords[d].size) for d in reversed(space))}, C)"
        )
    # diff-react writes (t, y, x, c); the reversed order is accepted where the sizes say so
    candidates = [tuple(reversed(space)), tuple(space)]
    sizes = {d: c.size for d, c in coords.items()}
    order = _match_axes(data.shape[:-1], sizes, candidates, what)
    fields, t = [], None
    for c in range(data.shape[-1]):
        arr = _to_pdediff_order(data[..., c], order)
        arr, t_raw = _split_time(arr, len(space), grid.get("t"), what)
        if t_raw is not None:
            t = _time_coord(t_raw, arr.shape[1], f"{path}: 'grid/t'")
        dims = _ordered(space) if t_raw is None else ("t", *_ordered(space))
        fields.append(_field(str(c), f"u{c}", arr, dims))
    return fields, ({"t": t} if t is not None else {}) | {d: coords[d] for d in _ordered(space)}


def read_pdebench(
    src: PathLike, *, pde: str | None = None, length: float = 1.0, periodic: bool | None = None
) -> RawImport:
    """Read a PDEBench HDF5 file (single-array or per-sample group layout).

    Coordinates come from the file, so ``length`` is not used.  ``periodic`` defaults to
    true when the file name says ``periodic``, ``Burgers`` or ``Advection``.  The PDE family
    is guessed from the file name (``DarcyFlow`` -> ``darcy``, ``Burgers`` -> ``burgers``).
    Numeric root attributes (``beta``, ``Nu``, ...) become parameters.
    """
    path = _existing_file(src)
    try:
        with h5py.File(path, "r") as f:
            groups = [k for k in f if isinstance(f[k], h5py.Group)]
            if groups and "x-coordinate" not in f:
                fields, coords = _pdebench_groups(f, path)
            else:
                fields, coords = _pdebench_arrays(f, path)
            params = _numeric_attrs(f.attrs)
    except OSError as e:
        raise DataError(f"cannot read {path} as HDF5 (PDEBench layout): {e}") from None
    if periodic is None:
        periodic = any(h in path.name.lower() for h in PERIODIC_HINTS)
    space = frozenset(d for d in coords if d in SPATIAL)
    return RawImport(
        tuple(fields),
        coords,
        space if periodic else frozenset(),
        pde or _guess_pde(path.name) or "unknown",
        params,
        f"pdebench: {path.name}",
    )


# ----------------------------------------------------------------------------- FNO .mat


def _has_hdf5_signature(path: Path) -> bool:
    """MATLAB v7.3 files are HDF5 with a 512-byte header: the signature may sit at 0 or at
    512 times a power of two."""
    with open(path, "rb") as f:
        for offset in (0, 512, 1024, 2048):
            f.seek(offset)
            if f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return True
    return False


def _load_mat73(path: Path) -> dict[str, np.ndarray]:
    """MATLAB v7.3 through h5py: MATLAB is column-major, so every array comes out with its
    axes reversed and is transposed back."""
    try:
        with h5py.File(path, "r") as f:
            return {
                k: np.transpose(f[k][()])
                for k in f
                if isinstance(f[k], h5py.Dataset) and not k.startswith("#")
            }
    except OSError as e:
        raise DataError(f"cannot read {path} as a MATLAB v7.3 (HDF5) file: {e}") from None


def _load_mat5(path: Path) -> dict[str, np.ndarray]:
    try:
        content = scipy.io.loadmat(path)
    except (ValueError, OSError, scipy.io.matlab.MatReadError) as e:
        raise DataError(f"cannot read {path} as a MATLAB .mat file: {e}") from None
    return {k: np.asarray(v) for k, v in content.items() if not k.startswith("__")}


def load_mat(src: PathLike) -> dict[str, np.ndarray]:
    """The arrays of a ``.mat`` file (v4-v7 through scipy, v7.3 through h5py), in MATLAB's
    axis order."""
    path = _existing_file(src)
    return _load_mat73(path) if _has_hdf5_signature(path) else _load_mat5(path)


def read_fno_mat(
    src: PathLike, *, pde: str | None = None, length: float = 1.0, periodic: bool | None = None
) -> RawImport:
    """Read an FNO ``.mat`` file; the layout is recognised from its keys and shapes.

    - Darcy: ``coeff``, ``sol`` ``(N, H, W)`` -> ``a``, ``u`` on a node grid
      ``[0, length]^2``.
    - Navier-Stokes: ``a (N, H, W)`` initial vorticity, ``u (N, H, W, T)`` and ``t`` ->
      ``w0 (sample, y, x)``, ``w (sample, t, y, x)`` on a periodic grid; without ``t`` the
      times are ``1, ..., T`` (FNO records one unit of time apart).
    - Burgers: ``a (N, X)``, ``u (N, X)`` or ``(N, T, X)`` -> ``u0``, ``u`` on a periodic
      grid; times from ``t``, else ``T`` levels on ``[0, 1]``.

    One-element numeric entries (``visc``, ...) become parameters (``visc`` as ``nu``).
    """
    path = _existing_file(src)
    arrays = load_mat(path)
    where, keys = f"{path}", arrays.keys()
    common = dict(
        where=where, pde=pde, length=length, periodic=periodic, params=_scalar_params(arrays)
    )
    if {"coeff", "sol"} <= keys:
        return _named(_mat_darcy(arrays, common), path)
    if {"a", "u"} <= keys:
        a = _numeric(arrays["a"], f"{where}: 'a'")
        if a.ndim == 3:
            return _named(_mat_navier_stokes(arrays, common), path)
        if a.ndim == 2:
            return _named(_mat_burgers(arrays, common), path)
        raise DataError(
            f"{where}: 'a' has shape {a.shape}; expected (N, H, W) "
            "(Navier-Stokes) or (N, X) (Burgers)"
        )
    raise DataError(
        f"{where}: not an FNO .mat layout: expected keys 'coeff' and 'sol' (Darcy) or 'a' "
        f"and 'u' (Navier-Stokes, Burgers); it has keys {_keys_text(keys)}"
    )


def _named(raw: RawImport, path: Path) -> RawImport:
    return replace(raw, source=f"fno-mat: {path.name}")


def _mat_darcy(arrays: Mapping[str, np.ndarray], common: dict) -> RawImport:
    coef = _numeric(arrays["coeff"], f"{common['where']}: 'coeff'")
    if coef.ndim != 3:
        raise DataError(f"{common['where']}: 'coeff' has shape {coef.shape}; expected (N, H, W)")
    return _coef_solution(("coeff", "sol"), coef, arrays["sol"], layout="darcy", **common)


def _mat_times(arrays: Mapping[str, np.ndarray], where: str, default: Callable):
    """Time coordinate from the ``t`` key when present, else ``default(T)``."""
    if "t" not in arrays:
        return default
    return lambda levels: _time_coord(arrays["t"], levels, f"{where}: 't'")


def _mat_navier_stokes(arrays: Mapping[str, np.ndarray], common: dict) -> RawImport:
    where = common["where"]
    a = _numeric(arrays["a"], f"{where}: 'a'")
    u = _numeric(arrays["u"], f"{where}: 'u'")
    if u.ndim == 4:
        if u.shape[1:3] != a.shape[1:]:
            raise DataError(
                f"{where}: 'u' has shape {u.shape}; expected (N, {a.shape[1]}, "
                f"{a.shape[2]}, T) to match 'a' of shape {a.shape}"
            )
        u = np.moveaxis(u, -1, 1)  # FNO stores time last: (N, H, W, T)
    times = _mat_times(arrays, where, lambda levels: np.arange(1.0, levels + 1.0))
    return _coef_solution(("a", "u"), a, u, layout="navier_stokes", time=times, **common)


def _mat_burgers(arrays: Mapping[str, np.ndarray], common: dict) -> RawImport:
    times = _mat_times(arrays, common["where"], _unit_interval)
    return _coef_solution(
        ("a", "u"), arrays["a"], arrays["u"], layout="burgers", time=times, **common
    )


# ----------------------------------------------------------------------------- neuraloperator


def _refusal_reason(error: Exception) -> str:
    """The short reason in torch's long weights-only refusal (it names the refused global)."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    if found:
        return f"it holds a {found.group(1)} object"
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _torch_load(path: Path) -> dict[str, np.ndarray]:
    """A ``torch.save``'d dict of tensors as numpy arrays; never unpickles other objects."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise DataError(
            f"{path}: torch.load(weights_only=True) refused it ({_refusal_reason(e)}); pdediff "
            "does not unpickle arbitrary objects from files: re-save the data as a plain dict "
            "of tensors, e.g. torch.save({'x': x, 'y': y}, path)"
        ) from None
    except Exception as e:  # torch raises KeyError, RuntimeError, EOFError, ... on junk
        raise DataError(
            f"cannot read {path} as a torch .pt file: {type(e).__name__}: {e}"
        ) from None
    if not isinstance(obj, Mapping):
        raise DataError(
            f"{path}: expected a dict of tensors (keys 'x', 'y'), got {type(obj).__name__}"
        )
    out = {}
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            out[str(key)] = value.detach().cpu().numpy()
        elif isinstance(value, int | float):
            out[str(key)] = np.asarray(value)
    return out


def read_neuraloperator(
    src: PathLike, *, pde: str | None = None, length: float = 1.0, periodic: bool | None = None
) -> RawImport:
    """Read a neuraloperator ``.pt`` file: a dict with ``x``, ``y`` (and ``visc``, ...).

    - 2-D: ``x (N, H, W)`` coefficient, ``y (N, H, W)`` solution -> ``a``, ``u`` on a node
      grid ``[0, length]^2`` (``w0``, ``w`` on a periodic grid for Navier-Stokes).  A
      boolean coefficient becomes 0.0/1.0.
    - 1-D: ``x (N, X)`` initial condition, ``y (N, T, X)`` or ``(N, X)`` -> ``u0``, ``u`` on
      a periodic ``x`` grid of length ``length`` and ``T`` time levels on ``[0, 1]`` (the
      first level is the initial condition).

    The family is guessed from the file name, else ``"burgers"`` for the 1-D layout.
    """
    path = _existing_file(src)
    arrays = _torch_load(path)
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(
            f"{path}: missing key(s) {missing}; it has keys "
            f"{_keys_text(arrays)}; expected 'x' (input) and 'y' (output)"
        )
    x = _numeric(arrays["x"], f"{path}: 'x'")
    layout = "burgers" if x.ndim == 2 else None
    pde = pde or _guess_pde(path.name)
    params = _scalar_params({k: v for k, v in arrays.items() if k not in ("x", "y")})
    raw = _coef_solution(
        ("x", "y"),
        x,
        arrays["y"],
        where=str(path),
        layout=layout,
        pde=pde,
        length=length,
        periodic=periodic,
        params=params,
        time=_unit_interval if x.ndim == 2 else None,
    )
    return replace(raw, source=f"neuraloperator: {path.name}")


# ----------------------------------------------------------------------------- DiffusionPDE


def _npy_files(src: PathLike) -> list[Path]:
    """The ``.npy`` files of a directory, a glob pattern or a single file, sorted by name."""
    text = os.fspath(src)
    if glob.has_magic(text):
        files = [Path(p) for p in glob.glob(text)]
        if not files:
            raise FileNotFoundError(f"no files match {text!r}")
    elif Path(text).is_dir():
        files = list(Path(text).glob("*.npy"))
        if not files:
            raise FileNotFoundError(f"no .npy files in directory {text}")
    else:
        files = [_existing_file(text)]
    return sorted(files, key=lambda p: _natural_key(str(p)))


def _load_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"cannot read {path} as a .npy array: {e}") from None
    return _numeric(arr, str(path))


def _stack_npy(files: list[Path]) -> np.ndarray:
    first = _load_npy(files[0])
    if first.ndim != 3:
        raise DataError(
            f"{files[0]} has shape {first.shape}; expected (H, W, C), channels "
            "last (DiffusionPDE: channel 0 coefficient, channel 1 solution)"
        )
    out = np.empty((len(files), *first.shape), dtype=first.dtype)
    out[0] = first
    for i, path in enumerate(files[1:], start=1):
        arr = _load_npy(path)
        if arr.shape != first.shape:
            raise DataError(
                f"{path} has shape {arr.shape}, expected {first.shape} as in {files[0].name}"
            )
        out[i] = arr
    return out


def read_diffusionpde_npy(
    src: PathLike, *, pde: str | None = None, length: float = 1.0, periodic: bool | None = None
) -> RawImport:
    """Read DiffusionPDE per-sample ``.npy`` files, each ``(H, W, C)``.

    ``src`` is a directory (all ``*.npy`` in it), a glob pattern or one file; samples are in
    name order (digit runs compared as numbers).  With two channels they are the family's
    coefficient and solution (``a``, ``u``; ``w0``, ``w`` for ``navier_stokes``), keys
    ``"0"``, ``"1"`` for ``variables``; other channel counts give ``u0``, ``u1``, ...  Grid:
    node grid ``[0, length]^2``, periodic for ``navier_stokes``.  Family: ``pde`` (the
    files do not say), else ``"unknown"``.
    """
    files = _npy_files(src)
    data = _stack_npy(files)
    where = f"{files[0].parent}"
    if data.shape[-1] == 2:
        raw = _coef_solution(
            ("0", "1"),
            data[..., 0],
            data[..., 1],
            where=where,
            layout=None,
            pde=pde,
            length=length,
            periodic=periodic,
        )
    else:
        raw = _channels(data, where, pde, length, periodic)
    span = files[0].name if len(files) == 1 else f"{files[0].name} ... {files[-1].name}"
    return replace(raw, source=f"diffusionpde-npy: {len(files)} file(s) {span} in {where}")


def _channels(data: np.ndarray, where: str, pde, length, periodic) -> RawImport:
    """Channels ``u0, u1, ...`` of ``(N, H, W, C)`` data on one default grid."""
    per = _pair(pde, None)[2] if periodic is None else bool(periodic)
    space = ("y", "x")
    coords = {d: _default_axis(n, per, length) for d, n in zip(space, data.shape[1:3], strict=True)}
    fields = tuple(_field(str(c), f"u{c}", data[..., c], space) for c in range(data.shape[-1]))
    return RawImport(
        fields, coords, frozenset(space) if per else frozenset(), pde or "unknown", {}, where
    )


# ----------------------------------------------------------------------------- front


IMPORTERS: dict[str, Importer] = {
    "pdebench": read_pdebench,
    "fno-mat": read_fno_mat,
    "neuraloperator": read_neuraloperator,
    "diffusionpde-npy": read_diffusionpde_npy,
}


def _rename_variables(raw: RawImport, variables: Mapping | None) -> RawImport:
    if not variables:
        return raw
    mapping = {str(k): str(v) for k, v in variables.items()}
    keys = [f.key for f in raw.fields]
    unknown = [k for k in mapping if k not in keys]
    if unknown:
        raise DataError(
            f"{raw.source}: variable(s) {unknown} not in the file; its variables "
            f"are {keys} (default names {[f.name for f in raw.fields]})"
        )
    fields = tuple(replace(f, name=mapping.get(f.key, f.name)) for f in raw.fields)
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise DataError(f"{raw.source}: variables {variables} give duplicate names {names}")
    return replace(raw, fields=fields)


def _rename_dims(raw: RawImport, dims: Sequence[str] | None) -> RawImport:
    if dims is None:
        return raw
    old, new = tuple(raw.coords), tuple(dims)
    if len(new) != len(old) or len(set(new)) != len(new):
        raise DataError(
            f"{raw.source}: dims {new} must be {len(old)} distinct names, one per "
            f"grid dim {old} (in that order)"
        )
    rename = dict(zip(old, new, strict=True))
    fields = tuple(replace(f, dims=tuple(rename[d] for d in f.dims)) for f in raw.fields)
    return replace(
        raw,
        fields=fields,
        coords={rename[d]: c for d, c in raw.coords.items()},
        periodic=frozenset(rename[d] for d in raw.periodic),
    )


def _grid(raw: RawImport, dims: tuple[str, ...]) -> Grid:
    try:
        return Grid({d: raw.coords[d] for d in dims}, periodic=raw.periodic & set(dims))
    except PDEError as e:
        raise DataError(f"{raw.source}: {e}") from None


def _assemble(raw: RawImport, history: str) -> xr.Dataset:
    """One :func:`make_dataset` per distinct set of grid dims, merged into one Dataset."""
    _same_samples({f.key: f.data for f in raw.fields}, raw.source)
    clash = [f.name for f in raw.fields if f.name in raw.coords]
    if clash:
        raise DataError(
            f"{raw.source}: variable name(s) {clash} clash with grid dims "
            f"{tuple(raw.coords)}; rename them with `variables`"
        )
    parts = []
    for dims in dict.fromkeys(f.dims for f in raw.fields):
        fields = [f for f in raw.fields if f.dims == dims]
        info = {f.name: FieldInfo(f.long_name or f.name, role=f.role) for f in fields}
        parts.append(
            make_dataset(
                {f.name: f.data for f in fields},
                _grid(raw, dims),
                pde=raw.pde,
                params=raw.params,
                info=info,
                source=raw.source,
                history=history,
            )
        )
    ds = parts[0]
    for part in parts[1:]:
        ds = ds.assign(part.data_vars)
    return ds


def import_dataset(
    fmt: str,
    src: PathLike,
    *,
    variables: Mapping[str, str] | None = None,
    dims: Sequence[str] | None = None,
    pde: str | None = None,
    length: float = 1.0,
    periodic: bool | None = None,
) -> xr.Dataset:
    """Read ``src`` in format ``fmt`` into a Dataset following pdediff's convention.

    Parameters
    ----------
    fmt
        One of :data:`IMPORTERS`: ``"pdebench"``, ``"fno-mat"``, ``"neuraloperator"``,
        ``"diffusionpde-npy"``.
    src
        The file (for ``"diffusionpde-npy"``: a directory, a glob pattern or one file).
    variables
        ``{name in file -> pdediff variable name}`` overriding the default names, e.g.
        ``{"coeff": "a", "sol": "u"}``; channels are named ``"0"``, ``"1"``, ...
    dims
        New names of the grid dims, one per dim in the default order (``t`` first, then
        ``z, y, x``), e.g. ``("t", "x")``.
    pde
        Family name written to the ``pde`` attribute; by default what the layout or file
        name says, else ``"unknown"``.  It also picks the default variable names and grid
        for two-field files (``navier_stokes``: ``w0``, ``w``, periodic).
    length
        Domain length of the default grids of formats without coordinates.
    periodic
        Whether the spatial dims are periodic; default per format (see module docstring).

    Returns
    -------
    xarray.Dataset
        Variables ``(sample, *grid dims)`` (float32), coordinates in physical units,
        attributes ``pde``, ``param_<name>``, ``source`` and ``history``.  Not checked for
        NaN/inf: :func:`import_file` does that.
    """
    if fmt not in IMPORTERS:
        raise DataError(
            f"unknown import format {fmt!r}; known formats: {', '.join(sorted(IMPORTERS))}"
        )
    raw = IMPORTERS[fmt](src, pde=pde, length=length, periodic=periodic)
    raw = _rename_dims(_rename_variables(raw, variables), dims)
    return _assemble(raw, history=f"imported {os.fspath(src)} ({fmt})")


def import_file(
    fmt: str, src: PathLike, out: PathLike, *, overwrite: bool = False, **options
) -> Path:
    """Import ``src`` (see :func:`import_dataset`, which takes ``options``), check it for
    NaN/inf and write it atomically to ``out`` (``.nc`` or ``.zarr``).  Returns ``out``."""
    out = Path(out)
    output_format(out)  # a bad suffix or an existing output fails before a long read
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    ds = import_dataset(fmt, src, **options)
    check_finite(ds, where=f"{os.fspath(src)} ({fmt})")
    ds.attrs["history"] = history_line(f"import {fmt} {os.fspath(src)} -o {out}")
    return write_fields(ds, out, overwrite=overwrite)
