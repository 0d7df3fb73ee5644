"""Scalar conditions of a conditioned model: per-sample parameters mapped to [-1, 1].

A model conditioned on parameters ``c_1..c_D`` (e.g. Helmholtz ``k``, Burgers ``nu``) gets
``cond["vector"]`` of shape ``(N, D)`` with

.. math::  \\tilde c_j = 2\\,\\frac{c_j - \\mathrm{low}_j}{\\mathrm{high}_j - \\mathrm{low}_j} - 1,

``[low_j, high_j]`` the range of ``c_j`` in the training data (the ``param_range_<name>``
attribute written by ``pdediff generate --param-range``, else the minimum and maximum of the
values).  The ranges are part of the :class:`~pdediff.io.FieldSpec` (``conditions``), so
they travel with the checkpoint and sampling takes physical values.  Ranges are stored as
plain dicts ``name -> {"low", "high", "long_name", "units"}`` in the model's order.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import xarray as xr

from pdediff.errors import DataError, PdediffError, PdediffWarning
from pdediff.io.conventions import (
    PARAM_PREFIX,
    SAMPLE_DIM,
    attrs_param_ranges,
    field_variables,
    plain_value,
)

__all__ = [
    "LABEL_ATTRS",
    "condition_ranges",
    "dataset_conditions",
    "dataset_labels",
    "encode_conditions",
    "encode_label",
    "format_ranges",
    "label_classes",
    "label_datasets",
    "label_parts",
    "sample_variable",
]

Ranges = Mapping[str, Mapping]


def format_ranges(ranges: Ranges) -> str:
    """``"k in [1, 4]"`` for each condition, comma separated."""
    return ", ".join(f"{n} in [{r['low']:g}, {r['high']:g}]" for n, r in ranges.items())


def condition_ranges(ds: xr.Dataset, names: Sequence[str], where: str = "data") -> dict:
    """The ranges of the per-sample variables ``names`` of ``ds`` (see the module docstring).

    Raises
    ------
    DataError
        A name that is not a per-sample variable of ``ds``, or one that does not vary.
    """
    stored = attrs_param_ranges(ds.attrs)
    out = {}
    for name in names:
        var = sample_variable(ds, name, where)
        values = np.asarray(var.values, dtype=np.float64)
        low, high = stored.get(name, (float(values.min()), float(values.max())))
        if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
            raise DataError(
                f"{where}: condition {name!r} does not vary (range [{low:g}, {high:g}]); a "
                f"model cannot learn to follow it: generate data with --param-range "
                f"{name}=LOW:HIGH"
            )
        out[name] = {
            "low": float(low),
            "high": float(high),
            "long_name": str(var.attrs.get("long_name", name)),
            "units": str(var.attrs.get("units", "1")),
        }
    return out


def sample_variable(ds: xr.Dataset, name: str, where: str) -> xr.DataArray:
    """The per-sample scalar variable ``name``, or a :class:`DataError` saying how to get one."""
    if name not in ds.data_vars:
        fixed = (
            f" (it is fixed for the whole dataset: {PARAM_PREFIX}{name})"
            if PARAM_PREFIX + name in ds.attrs
            else ""
        )
        raise DataError(
            f"{where} has no per-sample variable {name!r} to condition on{fixed}; it has "
            f"{list(ds.data_vars)}; generate data with --param-range {name}=LOW:HIGH"
        )
    var = ds[name]
    if var.dims != (SAMPLE_DIM,):
        raise DataError(
            f"{where}: condition {name!r} must be one number per sample (dims ('{SAMPLE_DIM}',)), "
            f"it has dims {var.dims}"
        )
    return var


def dataset_conditions(
    ds: xr.Dataset, ranges: Ranges, where: str = "data", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``cond["vector"]`` of every sample of ``ds``: ``(N, D)``, each value mapped to
    [-1, 1] by its range."""
    columns = []
    for name, r in ranges.items():
        values = np.asarray(sample_variable(ds, name, where).values, dtype=np.float64)
        if not np.isfinite(values).all():
            raise DataError(f"{where}: condition {name!r} has NaN/inf values")
        columns.append(_scale(values, r))
    return torch.from_numpy(np.stack(columns, axis=1)).to(dtype)


def _scale(values: np.ndarray, r: Mapping) -> np.ndarray:
    return 2.0 * (values - r["low"]) / (r["high"] - r["low"]) - 1.0


def encode_conditions(
    ranges: Ranges, values: Mapping[str, float], model: str = "the model"
) -> torch.Tensor:
    """The normalised condition vector ``(D,)`` of physical ``values`` (one per name).

    Warns (:class:`~pdediff.errors.PdediffWarning`) for a value outside the training range:
    the model extrapolates there.

    Raises
    ------
    PdediffError
        ``values`` for a model without conditions, an unknown or missing name, a value that
        is not a finite number.
    """
    values = dict(values)
    if not ranges:
        raise PdediffError(
            f"{model} is not conditioned (trained without --condition); remove the "
            f"condition {values}"
        )
    unknown = sorted(set(values) - set(ranges))
    missing = [n for n in ranges if n not in values]
    if unknown or missing:
        what = f"unknown condition(s) {unknown}" if unknown else f"missing condition(s) {missing}"
        raise PdediffError(
            f"{what}: {model} is conditioned on {list(ranges)} ({format_ranges(ranges)}); "
            "give a value for each, e.g. " + ", ".join(f"{n}=VALUE" for n in ranges)
        )
    out = []
    for name, r in ranges.items():
        try:
            v = float(values[name])
        except (TypeError, ValueError):
            raise PdediffError(f"condition {name} must be a number, got {values[name]!r}") from None
        if not math.isfinite(v):
            raise PdediffError(f"condition {name} must be finite, got {v}")
        if not r["low"] <= v <= r["high"]:
            warnings.warn(
                f"condition {name}={v:g} is outside the training range [{r['low']:g}, "
                f"{r['high']:g}] of {model}: the model extrapolates",
                PdediffWarning,
                stacklevel=3,
            )
        out.append(float(_scale(np.float64(v), r)))
    return torch.tensor(out)


# ----------------------------------------------------------------------------- labels
#: The dataset attribute of :func:`label_datasets` holding each class's own attributes.
LABEL_ATTRS = "label_attrs"


def label_classes(ds: xr.Dataset, name: str, where: str = "data") -> dict:
    """The label condition of the per-sample variable ``name`` of ``ds``: ``{"name",
    "classes", "long_name", "attrs"}``, the classes the sorted distinct values as strings
    and ``attrs`` each class's own attributes (from :func:`label_datasets`; else empty).

    Raises
    ------
    DataError
        A name that is not a per-sample variable of ``ds``, or one with a single value.
    """
    var = sample_variable(ds, name, where)
    classes = sorted({_label_str(v) for v in np.asarray(var.values).ravel()})
    if len(classes) < 2:
        raise DataError(
            f"{where}: label {name!r} has the single value {classes}; a model cannot learn to "
            "follow it: combine datasets of several classes (pdediff merge --label)"
        )
    stored = json.loads(ds.attrs.get(LABEL_ATTRS, "{}"))
    attrs = {c: dict(stored.get(c, {})) for c in classes}
    return {
        "name": name,
        "classes": classes,
        "long_name": str(var.attrs.get("long_name", name)),
        "attrs": attrs,
    }


def _label_str(value) -> str:
    return str(plain_value(value))


def dataset_labels(ds: xr.Dataset, label: Mapping, where: str = "data") -> torch.Tensor:
    """``cond["label"]`` of every sample of ``ds``: ``(N,)`` class indices of ``label``
    (:func:`label_classes`); a value outside its classes is a :class:`DataError`."""
    index = {c: i for i, c in enumerate(label["classes"])}
    values = [_label_str(v) for v in sample_variable(ds, label["name"], where).values]
    unknown = sorted(set(values) - set(index))
    if unknown:
        raise DataError(
            f"{where}: label {label['name']!r} has value(s) {unknown} the model was not "
            f"trained on; its classes are {label['classes']}"
        )
    return torch.tensor([index[v] for v in values], dtype=torch.long)


def encode_label(label: Mapping, value, model: str = "the model") -> torch.Tensor:
    """The class index ``()`` of ``value`` of the label condition ``label``.

    Raises
    ------
    PdediffError
        A value that is not one of the model's classes.
    """
    text = _label_str(value)
    if text not in label["classes"]:
        raise PdediffError(
            f"{model}: {label['name']}={text!r} is not one of its classes {label['classes']}"
        )
    return torch.tensor(label["classes"].index(text), dtype=torch.long)


def label_datasets(datasets: Mapping[str, xr.Dataset], name: str = "pde") -> xr.Dataset:
    """One dataset of several, each sample labelled with its dataset's key in the
    per-sample variable ``name`` (e.g. the PDE family, for one model across families).

    The datasets must have the same field variables on the same grid.  Attributes equal in
    all are kept; the others (the family, its parameters) are stored per class in the
    ``label_attrs`` attribute (JSON), so a model trained with ``label = name`` knows the
    PDE of each class.  A label named ``pde`` whose classes are family names selects the
    family of the PDE guidance and the reference solver at sampling time.

    Raises
    ------
    DataError
        Fewer than two datasets, an empty key, different variables or grids, or a
        variable ``name`` already in a dataset.
    """
    if len(datasets) < 2:
        raise DataError(f"label_datasets needs two or more datasets, got {len(datasets)}")
    items = list(datasets.items())
    first_key, first = items[0]
    variables = field_variables(first)
    for key, ds in items:
        if not str(key).strip():
            raise DataError("label_datasets: a label value is empty")
        if name in ds.variables:
            raise DataError(f"dataset {key!r} already has a variable {name!r}; pick another label")
        if field_variables(ds) != variables:
            raise DataError(
                f"dataset {key!r} has fields {field_variables(ds)}, dataset {first_key!r} "
                f"has {variables}: a labelled model needs the same fields in each"
            )
    common = {
        k: v
        for k, v in first.attrs.items()
        if all(k in ds.attrs and _same(ds.attrs[k], v) for _, ds in items)
    }
    own = {
        str(key): {k: plain_value(v) for k, v in ds.attrs.items() if k not in common}
        for key, ds in items
    }
    parts = []
    for key, ds in items:
        part = ds.copy()
        part.attrs = {}  # the fields' and coordinates' own attributes stay
        labels = np.full(ds.sizes[SAMPLE_DIM], str(key), dtype=object)
        parts.append(part.assign({name: ((SAMPLE_DIM,), labels)}))
    try:
        out = xr.concat(parts, dim=SAMPLE_DIM, join="exact", combine_attrs="override")
    except ValueError as e:
        raise DataError(f"label_datasets: the datasets' grids differ ({e})") from None
    out[name].attrs["long_name"] = "label" if name != "pde" else "PDE family"
    out.attrs = {**common, LABEL_ATTRS: json.dumps(own)}
    return out


def label_parts(ds: xr.Dataset, name: str = "pde") -> dict[str, xr.Dataset]:
    """The inverse of :func:`label_datasets`: ``class -> its samples``, the label variable
    dropped and the class's own attributes (``label_attrs``) over the shared ones."""
    values = np.asarray(sample_variable(ds, name, "dataset").values).astype(str)
    own = json.loads(ds.attrs.get(LABEL_ATTRS, "{}"))
    common = {k: v for k, v in ds.attrs.items() if k != LABEL_ATTRS}
    parts = {}
    for c in sorted(set(values.tolist())):
        part = ds.isel({SAMPLE_DIM: np.flatnonzero(values == c)}).drop_vars(name)
        parts[c] = part.assign_attrs({**common, **own.get(c, {})})
    return parts


def _same(a, b) -> bool:
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))
