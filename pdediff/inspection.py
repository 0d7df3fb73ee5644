"""``pdediff inspect``: what is in a field file, and whether it satisfies its PDE under
pdediff's discretisation (so a user can check imported data before training on it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from pdediff.errors import DataError
from pdediff.io.conditions import LABEL_ATTRS, label_parts
from pdediff.io.conventions import (
    SAMPLE_DIM,
    attrs_param_ranges,
    dataset_params,
    grid_from_dataset,
    is_label,
    sample_variables,
)
from pdediff.pde.registry import FAMILIES


@dataclass
class VariableSummary:
    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    units: str
    minimum: float
    maximum: float
    mean: float
    nonfinite: int


def summarise(ds: xr.Dataset) -> list[VariableSummary]:
    """Dims, shape, units, range, mean and the number of NaN/inf of each data variable."""
    out = []
    for name, var in ds.data_vars.items():
        if is_label(var):
            continue  # class names: see format_report
        values = np.asarray(var.values, dtype=np.float64)
        finite = values[np.isfinite(values)]
        stats = (finite.min(), finite.max(), finite.mean()) if finite.size else (np.nan,) * 3
        out.append(
            VariableSummary(
                str(name),
                tuple(map(str, var.dims)),
                var.shape,
                str(var.attrs.get("units", "?")),
                *map(float, stats),
                int(values.size - finite.size),
            )
        )
    return out


def pde_residuals(
    ds: xr.Dataset, max_samples: int | None = None, batch: int = 16
) -> np.ndarray | None:
    """Relative PDE residual ``||r|| / max_k ||term_k||`` of each sample, or None when the
    dataset names no known family (attribute ``pde``).

    Raises :class:`DataError` when the family's fields are missing.
    """
    fam = FAMILIES.get(str(ds.attrs.get("pde", "")))
    if fam is None:
        return None
    missing = [f for f in fam.fields if f not in ds.data_vars]
    if missing:
        raise DataError(
            f"dataset says pde={fam.name!r} but lacks field(s) {missing}; it has "
            f"{list(ds.data_vars)}"
        )
    for f in fam.fields:
        if ds[f].dims != (SAMPLE_DIM, *fam.dims):
            raise DataError(
                f"field {f!r} has dims {ds[f].dims}, but the {fam.name} residual needs "
                f"{(SAMPLE_DIM, *fam.dims)}; select or rename dims first (e.g. ds.isel(t=-1))"
            )
    grid = grid_from_dataset(ds, fam.dims)
    stored = dataset_params(ds)
    params = fam.params({k: v for k, v in stored.items() if k in fam.defaults})
    varying = [v for v in sample_variables(ds) if v in fam.defaults]
    n = ds.sizes[SAMPLE_DIM] if max_samples is None else min(max_samples, ds.sizes[SAMPLE_DIM])
    if varying:  # one sample at a time, each with its own parameters
        batch = 1
    out = []
    with torch.no_grad():
        for start in range(0, n, batch):
            sel = ds.isel({SAMPLE_DIM: slice(start, min(start + batch, n))})
            if varying:
                params = fam.params({**params, **{v: float(sel[v].values[0]) for v in varying}})
            fields = {
                f: torch.from_numpy(
                    np.asarray(sel[f].transpose(SAMPLE_DIM, *fam.dims).values, dtype=np.float64)
                )
                for f in fam.fields
            }
            out.append(fam.relative_residual(fields, grid, params).numpy())
    return np.concatenate(out)


def format_report(ds: xr.Dataset, path: str, max_samples: int | None = 16) -> str:
    """The text ``pdediff inspect`` prints."""
    lines = [f"{path}", f"  dims: {dict(ds.sizes)}"]
    for k in ("pde", "Conventions", "source"):
        if k in ds.attrs:
            lines.append(f"  {k}: {ds.attrs[k]}")
    params = dataset_params(ds)
    if params:
        lines.append("  parameters: " + ", ".join(f"{k}={v:g}" for k, v in params.items()))
    ranges = attrs_param_ranges(ds.attrs)
    if ranges:
        lines.append(
            "  parameters per sample: "
            + ", ".join(f"{k} in [{lo:g}, {hi:g}]" for k, (lo, hi) in ranges.items())
        )
    lines.append("  coordinates:")
    for d in ds.coords:
        c = np.asarray(ds[d].values)
        if c.ndim == 1 and c.size:
            lines.append(
                f"    {d:<8} {c.size:>6} points  {c.min():.6g} .. {c.max():.6g}  "
                f"[{ds[d].attrs.get('units', '?')}]"
                + ("  periodic" if ds[d].attrs.get("periodic") else "")
            )
    lines.append("  variables:")
    for s in summarise(ds):
        lines.append(
            f"    {s.name:<8} {str(s.dims):<24} [{s.units}]  min {s.minimum:.4g}  "
            f"max {s.maximum:.4g}  mean {s.mean:.4g}  NaN/inf {s.nonfinite}"
        )
    labels = [n for n, v in ds.data_vars.items() if is_label(v)]
    for name in labels:
        classes, counts = np.unique(ds[name].values.astype(str), return_counts=True)
        listed = ", ".join(f"{c} {n}" for c, n in zip(classes, counts, strict=True))
        lines.append(f"  label {name}: {listed}")
    if len(labels) == 1 and LABEL_ATTRS in ds.attrs:  # merged families: each class's residual
        for c, part in label_parts(ds, labels[0]).items():
            lines += _residual_lines(part, max_samples, f" of {labels[0]} = {c}")
    else:
        lines += _residual_lines(ds, max_samples, "")
    return "\n".join(lines)


def _residual_lines(ds: xr.Dataset, max_samples: int | None, which: str) -> list[str]:
    res = pde_residuals(ds, max_samples)
    if res is None:
        return [
            f"  PDE residual{which}: no known family in attribute 'pde' "
            f"(known: {', '.join(sorted(FAMILIES))})"
        ]
    fam = FAMILIES[ds.attrs["pde"]]
    return [
        f"  PDE residual{which} ({fam.equation}; {fam.boundary}), relative to the largest "
        f"term, first {res.size} sample(s):",
        f"    median {np.median(res):.3e}  max {res.max():.3e}",
        "    " + "  ".join(f"{i}:{r:.2e}" for i, r in enumerate(res)),
    ]
