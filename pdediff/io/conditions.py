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

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import xarray as xr

from pdediff.errors import DataError, PdediffError, PdediffWarning
from pdediff.io.conventions import PARAM_PREFIX, SAMPLE_DIM, attrs_param_ranges

__all__ = [
    "condition_ranges",
    "dataset_conditions",
    "encode_conditions",
    "format_ranges",
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
