"""pdediff's xarray convention for gridded fields (documented in docs/data-format.md).

A dataset holds one data variable per field (``a``, ``u``, ...) with dims
``(sample, *grid_dims)``; every grid dim has a 1-D coordinate variable in physical units
with ``units`` and ``axis`` attributes (and ``periodic = 1`` on periodic dims); data
variables carry ``long_name`` and ``units``; global attributes give ``Conventions``, ``pde``
(the family name), the PDE parameters as ``param_<name>``, ``source`` and ``history``.

A parameter that varies from sample to sample (``pdediff generate --param-range``) is a data
variable ``<name>`` with the single dim ``sample`` (attribute ``role = "parameter"``), and
the range it was drawn from is the global attribute ``param_range_<name> = [low, high]``;
it then has no ``param_<name>`` attribute.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping

import numpy as np
import xarray as xr

from pdediff import __version__
from pdediff.errors import DataError
from pdediff.pde.base import FieldInfo, Grid

CONVENTIONS = "CF-1.10 pdediff-1"
SAMPLE_DIM = "sample"
PARAM_PREFIX = "param_"
PARAM_RANGE_PREFIX = "param_range_"
AXES = {"x": "X", "y": "Y", "z": "Z", "t": "T"}
COORD_NAMES = {"x": "x coordinate", "y": "y coordinate", "z": "z coordinate", "t": "time"}


def plain_value(value):
    """JSON-friendly copy of an attribute value (numpy scalars and arrays to Python)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def history_line(action: str) -> str:
    """One ``history`` entry: UTC time stamp, pdediff version and what was done."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{now} pdediff {__version__}: {action}"


def coord_attrs(dim: str, periodic: bool, units: str = "1") -> dict:
    """Attributes of the coordinate variable ``dim`` (``units`` "1": nondimensional)."""
    attrs = {"units": units, "long_name": COORD_NAMES.get(dim, dim)}
    if dim in AXES:
        attrs["axis"] = AXES[dim]
    if periodic:
        attrs["periodic"] = 1
    return attrs


def make_dataset(
    fields: Mapping[str, np.ndarray],
    grid: Grid,
    *,
    pde: str,
    params: Mapping[str, float] | None = None,
    info: Mapping[str, FieldInfo] | None = None,
    source: str = "pdediff",
    history: str = "created",
    dtype: type = np.float32,
) -> xr.Dataset:
    """Assemble arrays ``(sample, *grid.shape)`` into a Dataset following the convention.

    Parameters
    ----------
    fields
        ``name -> array`` with shape ``(N, *grid.shape)``.
    grid
        Coordinates (physical units) and which dims are periodic.
    pde
        Family name (``"darcy"``, ...), or ``"unknown"`` for imported data of no family.
    params
        PDE parameters, written as ``param_<name>`` global attributes.
    info
        Per-field metadata; fields without it get ``long_name = name``, ``units = "1"``.
    """
    coords = {
        d: xr.Variable(d, c, coord_attrs(d, d in grid.periodic)) for d, c in grid.coords.items()
    }
    data_vars = {}
    sizes = {name: np.shape(arr)[0] if np.ndim(arr) else 0 for name, arr in fields.items()}
    if len(set(sizes.values())) > 1:
        raise DataError(f"fields have different numbers of samples: {sizes}")
    for name, arr in fields.items():
        arr = np.asarray(arr)
        if name in grid.dims or name == SAMPLE_DIM:
            raise DataError(f"field name {name!r} clashes with a dim name; rename the field")
        if arr.shape[1:] != grid.shape:
            raise DataError(
                f"field {name!r} has grid shape {arr.shape[1:]}, expected {grid.shape} "
                f"for dims {grid.dims}"
            )
        fi = (info or {}).get(name, FieldInfo(long_name=name))
        attrs = {"long_name": fi.long_name, "units": fi.units, "role": fi.role}
        data_vars[name] = xr.Variable((SAMPLE_DIM, *grid.dims), arr.astype(dtype), attrs)
    attrs = {
        "Conventions": CONVENTIONS,
        "pde": pde,
        "source": source,
        "history": history_line(history),
    }
    attrs.update({PARAM_PREFIX + k: float(v) for k, v in (params or {}).items()})
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def dataset_params(ds: xr.Dataset) -> dict[str, float]:
    """The PDE parameters stored in ``param_<name>`` attributes."""
    return attrs_params(ds.attrs)


def attrs_params(attrs: Mapping, known: Iterable[str] | None = None) -> dict[str, float]:
    """The ``param_<name>`` entries of ``attrs`` (a Dataset's or a ``FieldSpec``'s) as
    ``{name: float}``; only the names in ``known`` (e.g. a family's defaults) if given."""
    found = {
        k[len(PARAM_PREFIX) :]: v
        for k, v in attrs.items()
        if k.startswith(PARAM_PREFIX) and not k.startswith(PARAM_RANGE_PREFIX)
    }
    return {k: float(v) for k, v in found.items() if known is None or k in known}


def attrs_param_ranges(attrs: Mapping) -> dict[str, tuple[float, float]]:
    """The ``param_range_<name> = [low, high]`` entries of ``attrs`` as ``{name: (low,
    high)}``: the ranges of the parameters that vary per sample."""
    out = {}
    for key, value in attrs.items():
        if key.startswith(PARAM_RANGE_PREFIX):
            low, high = np.asarray(value, dtype=np.float64).reshape(-1)[:2]
            out[key[len(PARAM_RANGE_PREFIX) :]] = (float(low), float(high))
    return out


def field_variables(ds: xr.Dataset) -> tuple[str, ...]:
    """The gridded data variables of ``ds`` (those with a dim besides ``sample``)."""
    return tuple(str(v) for v, var in ds.data_vars.items() if set(var.dims) - {SAMPLE_DIM})


def sample_variables(ds: xr.Dataset) -> tuple[str, ...]:
    """The per-sample scalar data variables of ``ds`` (dims exactly ``(sample,)``), e.g.
    the parameter values of ``pdediff generate --param-range``."""
    return tuple(str(v) for v, var in ds.data_vars.items() if var.dims == (SAMPLE_DIM,))


def add_sample_params(
    ds: xr.Dataset,
    values: Mapping[str, np.ndarray],
    ranges: Mapping[str, tuple[float, float]],
    units: Mapping[str, str] | None = None,
) -> xr.Dataset:
    """``ds`` with per-sample parameter values as variables ``<name>`` on dim ``sample`` and
    their ranges as ``param_range_<name>`` attributes (any ``param_<name>`` removed)."""
    out = ds.copy()
    for name, v in values.items():
        if name in out.variables:
            raise DataError(f"parameter {name!r} clashes with a variable or dim of the same name")
        attrs = {
            "long_name": f"PDE parameter {name} (per sample)",
            "units": (units or {}).get(name, "1"),
            "role": "parameter",
        }
        out[name] = xr.Variable(SAMPLE_DIM, np.asarray(v, dtype=np.float64), attrs)
        out.attrs.pop(PARAM_PREFIX + name, None)
        out.attrs[PARAM_RANGE_PREFIX + name] = np.asarray(ranges[name], dtype=np.float64)
    return out


def field_dims(ds: xr.Dataset, variables: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Grid dims shared by ``variables`` (by default every gridded data variable, see
    :func:`field_variables`), sample dim removed."""
    variables = tuple(variables or field_variables(ds))
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise DataError(f"variable(s) {missing} not in dataset; it has {list(ds.data_vars)}")
    dims = {tuple(d for d in ds[v].dims if d != SAMPLE_DIM) for v in variables}
    if len(dims) != 1:
        raise DataError(f"variables {variables} do not share grid dims: {sorted(dims)}")
    return dims.pop()


def grid_from_dataset(ds: xr.Dataset, dims: tuple[str, ...] | None = None) -> Grid:
    """The :class:`~pdediff.pde.base.Grid` of ``ds`` (periodic dims from coord attrs)."""
    dims = dims or field_dims(ds)
    missing = [d for d in dims if d not in ds.coords]
    if missing:
        raise DataError(
            f"dims {missing} have no coordinate variable; pdediff needs the grid "
            "coordinates in physical units to compute finite differences"
        )
    periodic = frozenset(d for d in dims if int(ds[d].attrs.get("periodic", 0)))
    return Grid({d: ds[d].values for d in dims}, periodic=periodic)


def is_label(var: xr.DataArray) -> bool:
    """Whether a variable holds class names (a label), not numbers."""
    return not (np.issubdtype(var.dtype, np.number) or var.dtype == bool)


def check_finite(ds: xr.Dataset, where: str = "dataset") -> None:
    """Raise :class:`DataError` naming the variable and sample of the first NaN/inf."""
    for name, var in ds.data_vars.items():
        if is_label(var):
            continue
        bad = ~np.isfinite(np.asarray(var.values))
        if bad.any():
            idx = np.argwhere(bad)[0]
            raise DataError(
                f"{where}: variable {name!r} has {int(bad.sum())} NaN/inf value(s), the first "
                f"at index {dict(zip(var.dims, idx.tolist(), strict=True))}"
            )
