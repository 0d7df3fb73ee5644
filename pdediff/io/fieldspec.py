"""``FieldSpec``: how a Dataset's fields become a network's channels, and back.

The spec records which variables are stacked into channels (in order), their grid dims and
coordinates, per-channel normalisation ``x_norm = (x - mean) / std``, and the attributes
needed to rebuild the Dataset.  It round-trips through JSON so it can travel with a
checkpoint; the normalisation therefore lives in one place, never as constants in code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import xarray as xr

from pdediff.errors import DataError
from pdediff.io.conditions import condition_ranges, label_classes, sample_variable
from pdediff.io.conventions import SAMPLE_DIM, field_dims, field_variables, plain_value
from pdediff.pde.base import Grid


def _plain_attrs(attrs: dict) -> dict:
    return {str(k): plain_value(v) for k, v in attrs.items()}


@dataclass
class FieldSpec:
    """Channels, grid and normalisation of a set of fields.

    Attributes
    ----------
    variables
        Data variables stacked as channels, in order.
    dims
        Grid dims of every variable (without the sample dim).
    coords
        ``dim -> coordinate values`` (physical units).
    mean, std
        Per-channel normalisation statistics.
    attrs, variable_attrs, coord_attrs
        Global, per-variable and per-coordinate attributes restored by :meth:`to_dataset`.
    conditions
        Per-sample scalars the model is conditioned on, in order: ``name -> {"low",
        "high", "long_name", "units"}`` (see :mod:`pdediff.io.conditions`); empty for an
        unconditioned model.
    label
        The label condition (one per-sample variable of class names, e.g. the PDE family):
        ``{"name", "classes", "long_name", "attrs"}`` (see
        :func:`pdediff.io.conditions.label_classes`); empty for a model without one.
    """

    variables: tuple[str, ...]
    dims: tuple[str, ...]
    coords: dict[str, list[float]]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    attrs: dict = field(default_factory=dict)
    variable_attrs: dict[str, dict] = field(default_factory=dict)
    coord_attrs: dict[str, dict] = field(default_factory=dict)
    conditions: dict[str, dict] = field(default_factory=dict)
    label: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.variables = tuple(self.variables)
        self.dims = tuple(self.dims)
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        n = len(self.variables)
        if len(self.mean) != n or len(self.std) != n:
            raise DataError(
                f"FieldSpec: {n} variables but {len(self.mean)} means and {len(self.std)} stds"
            )
        if any(not np.isfinite(s) or s <= 0 for s in self.std):
            raise DataError(f"FieldSpec: std must be positive and finite, got {self.std}")

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_dataset(
        cls,
        ds: xr.Dataset,
        variables: Sequence[str] | None = None,
        normalise: bool = True,
        conditions: Sequence[str] = (),
        label: str | None = None,
    ) -> FieldSpec:
        """Spec of ``ds``; with ``normalise`` the mean/std of each variable over all samples
        and grid points (a constant field gets std 1), else mean 0 and std 1.

        ``variables`` defaults to every gridded variable; ``conditions`` names per-sample
        variables to condition on (their ranges are recorded), ``label`` a per-sample
        variable of class names (its classes are recorded)."""
        variables = tuple(variables or field_variables(ds))
        dims = field_dims(ds, variables)
        mean, std = [], []
        for v in variables:
            values = np.asarray(ds[v].values, dtype=np.float64)
            m, s = (float(values.mean()), float(values.std())) if normalise else (0.0, 1.0)
            mean.append(m)
            std.append(s if s > 0 and np.isfinite(s) else 1.0)
        return cls(
            variables=variables,
            dims=dims,
            coords={d: np.asarray(ds[d].values, dtype=np.float64).tolist() for d in dims},
            mean=tuple(mean),
            std=tuple(std),
            attrs=_plain_attrs(ds.attrs),
            variable_attrs={v: _plain_attrs(ds[v].attrs) for v in variables},
            coord_attrs={d: _plain_attrs(ds[d].attrs) for d in dims},
            conditions=condition_ranges(ds, conditions),
            label=label_classes(ds, label) if label else {},
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["variables"], d["dims"] = list(self.variables), list(self.dims)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FieldSpec:
        known = {
            "variables",
            "dims",
            "coords",
            "mean",
            "std",
            "attrs",
            "variable_attrs",
            "coord_attrs",
            "conditions",
            "label",
        }
        missing = {"variables", "dims", "coords", "mean", "std"} - set(d)
        if missing:
            raise DataError(f"FieldSpec JSON lacks key(s) {sorted(missing)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> FieldSpec:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise DataError(f"FieldSpec: not valid JSON ({e})") from None

    @property
    def condition_names(self) -> tuple[str, ...]:
        """The names of every condition of the model: the scalars, then the label."""
        return (*self.conditions, *([self.label["name"]] if self.label else []))

    # -- grid -----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(self.coords[d]) for d in self.dims)

    def grid(self) -> Grid:
        periodic = frozenset(d for d in self.dims if self.coord_attrs.get(d, {}).get("periodic"))
        return Grid({d: np.asarray(self.coords[d]) for d in self.dims}, periodic=periodic)

    def check_compatible(self, ds: xr.Dataset) -> None:
        """Raise :class:`DataError` unless ``ds`` has the spec's variables on its grid."""
        missing = [v for v in self.variables if v not in ds.data_vars]
        if missing:
            raise DataError(
                f"dataset lacks variable(s) {missing} of the spec "
                f"{list(self.variables)}; it has {list(ds.data_vars)}"
            )
        for name in self.condition_names:
            sample_variable(ds, name, "dataset")
        dims = field_dims(ds, self.variables)
        if dims != self.dims:
            raise DataError(f"dataset dims {dims} differ from the spec's {self.dims}")
        for d in self.dims:
            c = np.asarray(ds[d].values, dtype=np.float64)
            ref = np.asarray(self.coords[d])
            if c.shape != ref.shape or not np.allclose(c, ref, rtol=1e-6, atol=1e-12):
                raise DataError(
                    f"coordinate {d!r} of the dataset ({c.size} points, {c.min():.6g}.."
                    f"{c.max():.6g}) differs from the spec's ({ref.size} points, "
                    f"{ref.min():.6g}..{ref.max():.6g}): grid or units mismatch"
                )
            units = self.coord_attrs.get(d, {}).get("units")
            if units is not None and ds[d].attrs.get("units", units) != units:
                raise DataError(
                    f"coordinate {d!r} has units {ds[d].attrs['units']!r}, the spec has {units!r}"
                )

    # -- conversion -----------------------------------------------------------------------
    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1) + (1,) * len(self.dims)
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device).view(shape)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device).view(shape)
        return mean, std

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(x)
        return (x - mean) / std

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(x)
        return x * std + mean

    def to_tensor(
        self, ds: xr.Dataset, normalise: bool = True, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Stack the spec's variables of ``ds`` into ``(N, C, *dims)``."""
        self.check_compatible(ds)
        arrays = [
            np.asarray(ds[v].transpose(SAMPLE_DIM, *self.dims).values, dtype=np.float64)
            for v in self.variables
        ]
        x = torch.from_numpy(np.stack(arrays, axis=1)).to(dtype)
        return self.normalise(x) if normalise else x

    def to_dataset(self, x: torch.Tensor, normalised: bool = True) -> xr.Dataset:
        """Inverse of :meth:`to_tensor`: a Dataset with the spec's coords and attrs."""
        expected = (len(self.variables), *self.shape)
        if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected:
            raise DataError(
                f"tensor of shape {tuple(x.shape)} does not match the spec: "
                f"expected (N, {', '.join(map(str, expected))})"
            )
        x = x.detach()
        if normalised:
            x = self.denormalise(x.double())
        values = x.cpu().double().numpy().astype(np.float32)
        coords = {
            d: xr.Variable(d, np.asarray(self.coords[d]), self.coord_attrs.get(d, {}))
            for d in self.dims
        }
        data_vars = {
            v: xr.Variable((SAMPLE_DIM, *self.dims), values[:, i], self.variable_attrs.get(v, {}))
            for i, v in enumerate(self.variables)
        }
        return xr.Dataset(data_vars, coords=coords, attrs=dict(self.attrs))
