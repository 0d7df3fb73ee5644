"""Observation files: reading, writing, drawing from a truth sample, and building the
observation operator a solver needs (format documented in docs/observations.md).

Three file layouts are read into one :class:`Observations` object:

(a) NetCDF or zarr with a dimension ``obs`` (CF ``featureType = "point"``): coordinate
    variables ``x``, ``y`` (or ``t``, ``x``) along ``obs`` in physical units, one data
    variable per observed field and an optional ``<field>_std`` noise level; NaN (the
    fill value) marks a field not observed at that point;
(b) a gridded Dataset on the fields' dims (optionally with a ``sample`` dim of size 1),
    NaN where unobserved;
(c) CSV with the same columns as (a), e.g. ``x,y,a,u,u_std``; an empty cell means not
    observed.

:func:`build_operator` checks the observations against a model's
:class:`~pdediff.io.FieldSpec` and returns the stacked interpolation operator with the
observation vector and noise levels, by default in the spec's normalised units.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import xarray as xr

from pdediff.errors import DataError
from pdediff.io.conventions import CONVENTIONS, SAMPLE_DIM, coord_attrs, history_line
from pdediff.io.fieldspec import FieldSpec
from pdediff.io.store import atomic_path, open_fields, output_format
from pdediff.operators import (
    DIFFUSIONPDE_POINTS,
    PointObservation,
    StackedObservation,
    random_points,
    sensor_columns,
)

__all__ = [
    "OBS_DIM",
    "STD_SUFFIX",
    "FieldObservations",
    "Observations",
    "ObservationModel",
    "read_observations",
    "write_observations",
    "observations_from_dataset",
    "observations_to_dataset",
    "observations_from_truth",
    "build_operator",
]

OBS_DIM = "obs"
STD_SUFFIX = "_std"
#: Names recognised as position coordinates when a file does not mark them otherwise.
POSITION_NAMES = ("t", "z", "y", "x")
# A CSV header cell: a name and optional units in brackets, e.g. "x [m]".
_HEADER = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*(?:\[([^\]]*)\])?\s*$")


# ----------------------------------------------------------------------------------------
# The in-memory form


@dataclass
class FieldObservations:
    """Observations of one field: ``M`` positions, values and optional noise levels.

    Attributes
    ----------
    positions
        ``dim -> (M,)`` physical coordinates of the observed points.
    values
        ``(M,)`` observed values, in the field's physical units.
    std
        ``(M,)`` noise standard deviations, or ``None`` when none is given.
    """

    positions: dict[str, np.ndarray]
    values: np.ndarray
    std: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.positions = {
            d: np.asarray(p, dtype=np.float64).reshape(-1) for d, p in self.positions.items()
        }
        self.values = np.asarray(self.values, dtype=np.float64).reshape(-1)
        if self.std is not None:
            std = np.asarray(self.std, dtype=np.float64)
            if std.size not in (1, self.values.size):
                raise DataError(f"{std.size} noise levels for {self.values.size} values")
            self.std = np.broadcast_to(std.reshape(-1), self.values.shape).copy()
        sizes = {d: p.size for d, p in self.positions.items()}
        if any(s != self.values.size for s in sizes.values()):
            raise DataError(
                f"{self.values.size} values but positions of sizes {sizes}: each observation "
                "needs one position per dim"
            )

    @property
    def size(self) -> int:
        return int(self.values.size)


@dataclass
class Observations:
    """Point observations of several fields.

    Attributes
    ----------
    fields
        ``field name -> FieldObservations``.
    units
        Known units of coordinates and fields (``name -> units``), checked against the
        model's by :func:`build_operator`; names without an entry are not checked.
    source
        The file read, or a description of how the observations were made.
    grid
        For gridded input, ``dim -> coordinates`` of that grid (it must be the model's).
    """

    fields: dict[str, FieldObservations]
    units: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    grid: dict[str, np.ndarray] | None = None

    @property
    def num_observations(self) -> int:
        return sum(f.size for f in self.fields.values())

    @property
    def dims(self) -> tuple[str, ...]:
        """Position dims (shared by every field), in the order of the first field."""
        first = next(iter(self.fields.values()), None)
        return tuple(first.positions) if first is not None else ()

    def _where(self) -> str:
        return f" in {self.source}" if self.source else ""

    def check(self) -> None:
        """Raise :class:`DataError` for no observations, fields on different dims, NaN/inf
        positions, values or noise levels, and negative noise levels."""
        if self.num_observations == 0:
            raise DataError(f"no observations{self._where()}: nothing to condition on")
        dims = {name: tuple(sorted(f.positions)) for name, f in self.fields.items()}
        if len(set(dims.values())) > 1:
            raise DataError(f"fields are observed on different dims{self._where()}: {dims}")
        for name, obs in self.fields.items():
            arrays = {f"position {d}": p for d, p in obs.positions.items()}
            arrays["value"] = obs.values
            if obs.std is not None:
                arrays["noise level"] = obs.std
            for what, arr in arrays.items():
                bad = ~np.isfinite(arr)
                if bad.any():
                    k = int(np.argmax(bad))
                    raise DataError(
                        f"field {name!r}{self._where()}: {what} of observation {k} is "
                        f"{arr[k]} ({int(bad.sum())} NaN/inf in all); observations must be "
                        "finite (leave unobserved points out)"
                    )
            if obs.std is not None and (obs.std < 0).any():
                k = int(np.argmax(obs.std < 0))
                raise DataError(
                    f"field {name!r}{self._where()}: noise level {name}{STD_SUFFIX} of "
                    f"observation {k} is negative ({obs.std[k]}); it is a standard deviation"
                )


# ----------------------------------------------------------------------------------------
# Reading


def read_observations(
    path: str | os.PathLike, position_names: Sequence[str] = POSITION_NAMES
) -> Observations:
    """Read observations from NetCDF/zarr (point or gridded layout) or CSV.

    Parameters
    ----------
    path
        A ``.csv`` file, or anything :func:`~pdediff.io.open_fields` reads.
    position_names
        Names taken as position coordinates where the file does not mark them (CSV
        columns; NetCDF data variables along ``obs`` without an ``axis`` attribute).

    Raises
    ------
    DataError
        Unreadable layout, NaN/inf, negative noise levels, no observations.
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        obs = _read_csv(path, tuple(position_names))
    else:
        obs = observations_from_dataset(open_fields(path), str(path), position_names)
    obs.check()
    return obs


def observations_from_dataset(
    ds: xr.Dataset, source: str | None = None, position_names: Sequence[str] = POSITION_NAMES
) -> Observations:
    """:class:`Observations` from an in-memory Dataset, point (dim ``obs``) or gridded."""
    if OBS_DIM in ds.dims:
        return _from_point_dataset(ds, source, tuple(position_names))
    return _from_gridded_dataset(ds, source)


def _units(var: xr.DataArray) -> str | None:
    units = var.attrs.get("units")
    return None if units is None else str(units)


def _split_std(names: Sequence[str], where: str) -> tuple[list[str], list[str]]:
    """Field names and noise-level names; a ``<f>_std`` without its field is an error."""
    stds = [n for n in names if n.endswith(STD_SUFFIX) and n[: -len(STD_SUFFIX)] in names]
    orphans = [n for n in names if n.endswith(STD_SUFFIX) and n not in stds]
    if orphans:
        raise DataError(
            f"noise level(s) {orphans}{where} have no observed field "
            f"{[n[: -len(STD_SUFFIX)] for n in orphans]}"
        )
    return [n for n in names if n not in stds], stds


def _from_point_dataset(
    ds: xr.Dataset, source: str | None, position_names: tuple[str, ...]
) -> Observations:
    where = f" in {source}" if source else ""
    along = {n: v for n, v in ds.variables.items() if v.dims == (OBS_DIM,) and n != OBS_DIM}
    positions = [
        n for n, v in along.items() if n in ds.coords or n in position_names or "axis" in v.attrs
    ]
    if not positions:
        raise DataError(
            f"no position coordinates along {OBS_DIM!r}{where}: give coordinate variables "
            f"such as {', '.join(position_names)} with dim {OBS_DIM!r}"
        )
    for n, v in ds.data_vars.items():
        if v.ndim > 0 and v.dims != (OBS_DIM,):
            raise DataError(f"variable {n!r}{where} has dims {v.dims}; expected ({OBS_DIM!r},)")
    # 0-d variables are metadata (CF grid mappings) unless they are a scalar noise level.
    names = [
        n for n in ds.data_vars if n not in positions and (n in along or n.endswith(STD_SUFFIX))
    ]
    fields, _ = _split_std(names, where)
    pos = {d: np.asarray(ds[d].values, dtype=np.float64) for d in positions}
    out = {}
    for name in fields:
        values = np.asarray(ds[name].values, dtype=np.float64)
        std = _std_values(ds, name, values.shape)
        seen = ~np.isnan(values)  # NaN is the netCDF fill value: not observed here
        if seen.any():
            out[name] = FieldObservations(
                {d: p[seen] for d, p in pos.items()},
                values[seen],
                None if std is None else std[seen],
            )
    units = {n: u for n in (*positions, *fields) if (u := _units(ds[n])) is not None}
    return Observations(out, units, source)


def _std_values(ds: xr.Dataset, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """``<name>_std`` broadcast to the field's shape (a 0-d noise level is allowed)."""
    std_name = name + STD_SUFFIX
    if std_name not in ds.data_vars:
        return None
    std = ds[std_name]
    if std.ndim and std.dims != ds[name].dims:
        raise DataError(
            f"noise level {std_name!r} has dims {std.dims}, its field {name!r} has {ds[name].dims}"
        )
    return np.broadcast_to(np.asarray(std.values, dtype=np.float64), shape)


def _from_gridded_dataset(ds: xr.Dataset, source: str | None) -> Observations:
    where = f" in {source}" if source else ""
    fields, _ = _split_std(list(ds.data_vars), where)
    if not fields:
        raise DataError(f"no observed variables{where}")
    if SAMPLE_DIM in ds.dims:
        if ds.sizes[SAMPLE_DIM] != 1:
            raise DataError(
                f"gridded observations{where} have {ds.sizes[SAMPLE_DIM]} samples; "
                "give one (a sample dim of size 1)"
            )
        ds = ds.isel({SAMPLE_DIM: 0})
    dims = {n: ds[n].dims for n in fields}
    if len(set(dims.values())) != 1:
        raise DataError(f"gridded observed variables{where} have different dims: {dims}")
    grid_dims = dims[fields[0]]
    missing = [d for d in grid_dims if d not in ds.coords]
    if missing:
        raise DataError(
            f"gridded observations{where}: dims {missing} have no coordinate variable "
            "(positions must be in physical units)"
        )
    grid = {d: np.asarray(ds[d].values, dtype=np.float64) for d in grid_dims}
    mesh = np.meshgrid(*grid.values(), indexing="ij")
    out = {}
    for name in fields:
        values = np.asarray(ds[name].values, dtype=np.float64)
        std = _std_values(ds, name, values.shape)
        seen = ~np.isnan(values)
        if seen.any():
            out[name] = FieldObservations(
                {d: m[seen] for d, m in zip(grid_dims, mesh, strict=True)},
                values[seen],
                None if std is None else std[seen],
            )
    units = {n: u for n in (*grid_dims, *fields) if (u := _units(ds[n])) is not None}
    return Observations(out, units, source, grid)


def _parse_header(row: list[str], path: Path) -> tuple[list[str], dict[str, str]]:
    names, units = [], {}
    for k, cell in enumerate(row):
        m = _HEADER.match(cell)
        if not m:
            raise DataError(f"{path}: header column {k + 1} {cell!r} is not a name")
        names.append(m.group(1))
        if m.group(2) is not None:
            units[m.group(1)] = m.group(2).strip()
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{path}: duplicate column(s) {dup}")
    return names, units


def _parse_cell(text: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(
            f"{path}, line {line}, column {column!r}: {text!r} is not a number"
        ) from None
    if not np.isfinite(value):
        raise DataError(
            f"{path}, line {line}, column {column!r}: {text!r} is NaN/inf; leave the cell "
            "empty where a field is not observed"
        )
    return value


def _csv_rows(path: Path):
    """``(line number, cells)`` of the non-blank lines that are not ``#`` comments."""
    with open(path, newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if row and any(c.strip() for c in row) and not row[0].lstrip().startswith("#"):
                yield line, [c.strip() for c in row]


def _read_csv(path: Path, position_names: tuple[str, ...]) -> Observations:
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    rows = _csv_rows(path)
    header = next(rows, None)
    if header is None:
        raise DataError(f"{path} is empty: expected a header such as x,y,a,u,u_std")
    names, units = _parse_header(header[1], path)
    positions = [n for n in names if n in position_names]
    if not positions:
        raise DataError(
            f"{path}: no position column; the header {names} has none of {list(position_names)}"
        )
    fields, _ = _split_std([n for n in names if n not in positions], f" in {path}")
    columns: dict[str, list[float]] = {n: [] for n in names}
    for line, cells in rows:
        if len(cells) != len(names):
            raise DataError(f"{path}, line {line}: {len(cells)} cells, the header has {len(names)}")
        for name, text in zip(names, cells, strict=True):
            if not text and name in positions:
                raise DataError(f"{path}, line {line}: position {name!r} is empty")
            columns[name].append(_parse_cell(text, path, line, name) if text else np.nan)
    return _observations_from_columns(columns, positions, fields, units, path)


def _observations_from_columns(columns, positions, fields, units, path: Path) -> Observations:
    pos = {d: np.asarray(columns[d]) for d in positions}
    out = {}
    for name in fields:
        values = np.asarray(columns[name])
        seen = ~np.isnan(values)
        std = None
        if name + STD_SUFFIX in columns:
            std = np.asarray(columns[name + STD_SUFFIX])
            gap = seen & np.isnan(std)
            if gap.any():
                raise DataError(
                    f"{path}: {name}{STD_SUFFIX} is empty on data row {int(np.argmax(gap)) + 1} "
                    f"where {name!r} is observed; give a noise level for every observation"
                )
            std = std[seen]
        if seen.any():
            out[name] = FieldObservations({d: p[seen] for d, p in pos.items()}, values[seen], std)
    return Observations(out, units, str(path))


# ----------------------------------------------------------------------------------------
# Writing


def _shared_positions(obs: Observations) -> bool:
    """Whether every field is observed at the same points, in the same order."""
    fields = list(obs.fields.values())
    first = fields[0]
    return all(
        f.size == first.size
        and all(np.array_equal(f.positions[d], first.positions[d]) for d in first.positions)
        for f in fields[1:]
    )


def _columns(obs: Observations) -> tuple[dict[str, np.ndarray], int]:
    """Flat columns over one ``obs`` axis: positions, values and ``_std`` (NaN where a field
    is not observed).  Fields at different points get consecutive blocks of rows."""
    dims = obs.dims
    items = list(obs.fields.items())
    if _shared_positions(obs):
        first = items[0][1]
        cols = {d: first.positions[d] for d in dims}
        blocks = {name: slice(0, first.size) for name, _ in items}
        total = first.size
    else:
        cols = {d: np.concatenate([f.positions[d] for _, f in items]) for d in dims}
        starts = np.cumsum([0] + [f.size for _, f in items])
        blocks = {name: slice(s, s + f.size) for (name, f), s in zip(items, starts, strict=False)}
        total = int(starts[-1])
    for name, f in items:
        cols[name] = np.full(total, np.nan)
        cols[name][blocks[name]] = f.values
        if f.std is not None:
            cols[name + STD_SUFFIX] = np.full(total, np.nan)
            cols[name + STD_SUFFIX][blocks[name]] = f.std
    return cols, total


def observations_to_dataset(obs: Observations) -> xr.Dataset:
    """The point layout: dim ``obs``, position coordinates, one variable per field."""
    obs.check()
    cols, _ = _columns(obs)
    coords = {}
    for d in obs.dims:
        attrs = coord_attrs(d, False, obs.units.get(d, ""))
        if d not in obs.units:
            del attrs["units"]  # unknown stays unknown: "1" would be checked as a unit
        coords[d] = xr.Variable(OBS_DIM, cols.pop(d), attrs)
    data_vars = {}
    for name, values in cols.items():
        base = name[: -len(STD_SUFFIX)] if name not in obs.fields else name
        attrs = {"units": obs.units[base]} if base in obs.units else {}
        if name != base:
            attrs["long_name"] = f"observation noise standard deviation of {base}"
        data_vars[name] = xr.Variable(OBS_DIM, values, attrs)
    attrs = {
        "Conventions": CONVENTIONS,
        "featureType": "point",
        "source": obs.source or "pdediff",
        "history": history_line("observations written"),
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _write_csv(obs: Observations, tmp: Path) -> None:
    obs.check()
    cols, total = _columns(obs)
    names = list(cols)
    header = [f"{n} [{obs.units[n]}]" if n in obs.units else n for n in names]
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for k in range(total):
            # repr-exact floats so that positions on grid nodes stay on them
            writer.writerow(
                ["" if np.isnan(cols[n][k]) else repr(float(cols[n][k])) for n in names]
            )


def write_observations(obs: Observations, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``obs`` atomically as NetCDF (``.nc``), zarr (``.zarr``) or CSV (``.csv``).

    Units of fields and coordinates are written where known (CSV: ``x [m]`` in the
    header); float64 throughout, so a read gives back the same numbers.
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        with atomic_path(path, overwrite) as tmp:
            _write_csv(obs, tmp)
        return path
    fmt = output_format(path)
    ds = observations_to_dataset(obs)
    with atomic_path(path, overwrite) as tmp:
        if fmt == "zarr":
            ds.to_zarr(tmp, mode="w", consolidated=False)
        else:
            ds.to_netcdf(tmp, engine="h5netcdf")
    return path


# ----------------------------------------------------------------------------------------
# Synthetic observations (the DiffusionPDE protocol)


def _noise_levels(noise_std: float | Mapping[str, float], fields: Sequence[str]) -> dict:
    levels = (
        {f: float(noise_std.get(f, 0.0)) for f in fields}
        if isinstance(noise_std, Mapping)
        else dict.fromkeys(fields, float(noise_std))
    )
    bad = {f: s for f, s in levels.items() if not np.isfinite(s) or s < 0}
    if bad:
        raise DataError(f"noise_std must be finite and >= 0, got {bad}")
    return levels


def _truth_grid(ds: xr.Dataset, fields: Sequence[str], sample: int):
    missing = [f for f in fields if f not in ds.data_vars]
    if missing:
        raise DataError(f"truth has no variable(s) {missing}; it has {list(ds.data_vars)}")
    if SAMPLE_DIM in ds.dims:
        if not 0 <= sample < ds.sizes[SAMPLE_DIM]:
            raise DataError(f"sample {sample} out of range (0..{ds.sizes[SAMPLE_DIM] - 1})")
        ds = ds.isel({SAMPLE_DIM: sample})
    dims = {f: ds[f].dims for f in fields}
    if len(set(dims.values())) != 1:
        raise DataError(f"truth fields {list(fields)} are on different dims: {dims}")
    grid_dims = dims[fields[0]]
    missing = [d for d in grid_dims if d not in ds.coords]
    if missing:
        raise DataError(f"truth dims {missing} have no coordinate variable")
    return ds, grid_dims


def observations_from_truth(
    ds: xr.Dataset,
    fields: Sequence[str],
    count: int | None = DIFFUSIONPDE_POINTS,
    *,
    fraction: float | None = None,
    seed: int = 0,
    noise_std: float | Mapping[str, float] = 0.0,
    layout: str = "points",
    column_dim: str = "x",
    sample: int = 0,
) -> tuple[Observations, dict[str, np.ndarray]]:
    """Observe a truth sample at random grid points (DiffusionPDE's protocol).

    Each field gets its own ``count`` distinct random grid points (500 in DiffusionPDE),
    or ``round(fraction * size)`` of them; with ``layout="columns"`` every field is
    observed at all points of ``count`` evenly spaced indices of ``column_dim`` (Burgers'
    sensors: the whole time history at a few ``x``).  Values get independent Gaussian
    noise, :math:`y = u(p) + \\eta\\,\\varepsilon`, :math:`\\varepsilon \\sim N(0, 1)`.

    Parameters
    ----------
    ds
        Truth fields ``(sample, *grid)`` or ``(*grid)``; ``sample`` picks one.
    fields
        Variables to observe.
    count, fraction
        Points (or columns) per field; give one of the two.
    seed
        Seeds a torch generator for the points and the noise: same seed, same draw.
    noise_std
        :math:`\\eta` in physical units, one for all fields or ``field -> level``;
        recorded as the ``std`` of the observations when positive.

    Returns
    -------
    observations, clean
        The observations, and ``field -> (M,)`` noiseless values at the same points.
    """
    fields = list(fields)
    levels = _noise_levels(noise_std, fields)
    ds, dims = _truth_grid(ds, fields, sample)
    shape = tuple(ds.sizes[d] for d in dims)
    generator = torch.Generator().manual_seed(int(seed))
    count = _count(count, fraction, shape, dims, layout, column_dim)
    coords = {d: np.asarray(ds[d].values, dtype=np.float64) for d in dims}
    out, clean = {}, {}
    for name in fields:
        if layout == "points":
            index = random_points(shape, count, generator).numpy()
        else:
            index = _column_points(shape, dims.index(column_dim), count)
        values = np.asarray(ds[name].transpose(*dims).values, dtype=np.float64)[tuple(index.T)]
        noise = torch.randn(values.size, generator=generator, dtype=torch.float64).numpy()
        eta = levels[name]
        out[name] = FieldObservations(
            {d: coords[d][index[:, k]] for k, d in enumerate(dims)},
            values + eta * noise,
            np.full(values.size, eta) if eta > 0 else None,
        )
        clean[name] = values
    units = {n: u for n in (*dims, *fields) if (u := _units(ds[n])) is not None}
    source = f"truth sample {sample}: {count} {layout} per field, seed {seed}"
    return Observations(out, units, source), clean


def _count(count, fraction, shape, dims, layout, column_dim) -> int:
    if layout not in ("points", "columns"):
        raise DataError(f"layout must be 'points' or 'columns', got {layout!r}")
    if layout == "columns" and column_dim not in dims:
        raise DataError(f"column_dim {column_dim!r} is not a dim of the fields {dims}")
    size = shape[dims.index(column_dim)] if layout == "columns" else int(np.prod(shape))
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise DataError(f"fraction must be in (0, 1], got {fraction}")
        count = max(1, round(fraction * size))
    if count is None or not 1 <= int(count) <= size:
        raise DataError(f"count must be between 1 and {size} ({layout}), got {count}")
    return int(count)


def _column_points(shape: tuple[int, ...], axis: int, count: int) -> np.ndarray:
    """Grid indices ``(K, d)`` of every point on ``count`` evenly spaced slices of ``axis``."""
    cols = sensor_columns(shape[axis], count).numpy()
    ranges = [np.arange(n) for n in shape]
    ranges[axis] = cols
    mesh = np.meshgrid(*ranges, indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], axis=1)


# ----------------------------------------------------------------------------------------
# Operator for a model


class ObservationModel(NamedTuple):
    """What :func:`build_operator` returns: ``y ≈ operator(x)`` with noise ``std``.

    ``std`` is 0 for fields given without a noise level.  ``operator.slices()`` gives
    each field's block of ``y``.
    """

    operator: StackedObservation
    y: torch.Tensor
    std: torch.Tensor


def _check_against_spec(obs: Observations, spec: FieldSpec) -> None:
    where = obs._where()
    unknown = [f for f in obs.fields if f not in spec.variables]
    if unknown:
        raise DataError(
            f"observed variable(s) {unknown}{where} are not fields of the model; "
            f"the model has {list(spec.variables)}"
        )
    if set(obs.dims) != set(spec.dims):
        raise DataError(
            f"observations{where} are positioned in {list(obs.dims)} but the model's grid "
            f"dims are {list(spec.dims)}: grid mismatch"
        )
    _check_units(obs, spec)
    if obs.grid is not None:
        for d in spec.dims:
            c, ref = obs.grid[d], np.asarray(spec.coords[d])
            if c.shape != ref.shape or not np.allclose(c, ref, rtol=1e-6, atol=1e-12):
                raise DataError(
                    f"gridded observations{where}: coordinate {d!r} ({c.size} points, "
                    f"{c.min():.6g}..{c.max():.6g}) differs from the model's ({ref.size} "
                    f"points, {ref.min():.6g}..{ref.max():.6g}): grid mismatch"
                )


def _check_units(obs: Observations, spec: FieldSpec) -> None:
    model_units = {d: spec.coord_attrs.get(d, {}).get("units") for d in spec.dims}
    model_units.update({v: spec.variable_attrs.get(v, {}).get("units") for v in spec.variables})
    for name, units in obs.units.items():
        expected = model_units.get(name)
        if expected is not None and str(expected) != units:
            kind = "coordinate" if name in spec.dims else "variable"
            raise DataError(
                f"{kind} {name!r} of the observations{obs._where()} has units {units!r}, "
                f"the model's has {str(expected)!r}: units mismatch"
            )


def build_operator(
    obs: Observations,
    spec: FieldSpec,
    normalised: bool = True,
    tol: float = 1e-4,
    dtype: torch.dtype = torch.float64,
) -> ObservationModel:
    """Observation operator, observations and noise levels for a model's fields.

    Each observed field ``f`` (channel ``c`` of ``spec``) becomes a
    :class:`~pdediff.operators.PointObservation` (multilinear interpolation, exact at grid
    nodes); the blocks are stacked in the order of ``obs.fields``.

    With ``normalised`` (default) the operator applies to the model's normalised tensors
    :math:`x_n = (x - \\mu_c)/s_c`: since the interpolation weights sum to one,
    :math:`A x = \\mu_c + s_c A x_n`, so the observations are moved instead,

    .. math::  y_n = (y - \\mu_c) / s_c, \\qquad \\eta_n = \\eta / s_c .

    Without it ``y`` and ``std`` stay physical and the solver must apply the operator to
    ``spec.denormalise(x)``.

    Raises
    ------
    DataError
        No observations, a variable the model does not have, positions on other dims or
        a gridded file on another grid, units that differ from the model's, NaN/inf,
        negative noise levels, positions outside the domain.
    """
    obs.check()
    _check_against_spec(obs, spec)
    grid = spec.grid()
    coords = {d: torch.as_tensor(spec.coords[d], dtype=torch.float64) for d in spec.dims}
    ops, ys, stds = [], [], []
    for name, f in obs.fields.items():
        if f.size == 0:
            continue
        c = spec.variables.index(name)
        try:
            op = PointObservation(
                coords, f.positions, c, len(spec.variables), grid.periodic, tol=tol
            )
        except DataError as e:
            raise DataError(f"field {name!r}{obs._where()}: {e}") from None
        std = f.std if f.std is not None else np.zeros(f.size)
        if normalised:
            ys.append((f.values - spec.mean[c]) / spec.std[c])
            stds.append(std / spec.std[c])
        else:
            ys.append(f.values)
            stds.append(std)
        ops.append((name, op))
    operator = StackedObservation([op for _, op in ops], [n for n, _ in ops])
    y = torch.as_tensor(np.concatenate(ys), dtype=dtype)
    std = torch.as_tensor(np.concatenate(stds), dtype=dtype)
    return ObservationModel(operator, y, std)
