"""Input checks shared by the PDE families: each raises :class:`PDEError` naming the field,
parameter or grid property at fault and what was expected."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from pdediff.pde.base import Array, Grid, PDEError


def check_grid(grid: Grid, dims: tuple[str, ...], periodic: Sequence[str], min_points: int) -> None:
    """Check that ``grid`` has ``dims`` in order, ``periodic`` among its periodic dims and at
    least ``min_points`` points per dim."""
    if grid.dims != tuple(dims):
        raise PDEError(f"grid dims must be {tuple(dims)}, got {grid.dims}")
    missing = sorted(set(periodic) - set(grid.periodic))
    if missing:
        raise PDEError(
            f"dim(s) {missing} must be periodic for this problem (a periodic boundary, not a "
            "zero pad); build the grid with FAMILY.grid or pass periodic="
        )
    if min(grid.shape) < min_points:
        raise PDEError(
            f"grid shape {grid.shape} is too small: at least {min_points} points per dim"
        )


def check_array(inputs: Mapping[str, Array], name: str, shape: tuple[int, ...]) -> Array:
    """Input field ``name`` as a finite float64 array of ``shape``."""
    if name not in inputs:
        raise PDEError(f"missing input field {name!r}; got {sorted(inputs)}")
    arr = np.asarray(inputs[name], dtype=np.float64)
    if arr.shape != shape:
        raise PDEError(f"field {name!r} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise PDEError(f"field {name!r} has non-finite values")
    return arr


def check_tensors(
    fields: Mapping[str, torch.Tensor], names: Sequence[str], shape: tuple[int, ...]
) -> tuple[torch.Tensor, ...]:
    """The tensors ``fields[name]`` for ``names``, each ``(N, *shape)`` with one common ``N``."""
    out: list[torch.Tensor] = []
    for name in names:
        if name not in fields:
            raise PDEError(f"missing field {name!r}; expected {list(names)}, got {sorted(fields)}")
        t = fields[name]
        if not isinstance(t, torch.Tensor):
            raise PDEError(f"field {name!r} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != len(shape) + 1 or tuple(t.shape[1:]) != shape:
            raise PDEError(f"field {name!r} must have shape {('N', *shape)}, got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise PDEError(f"field {name!r} must be a floating-point tensor, got {t.dtype}")
        if out and t.shape[0] != out[0].shape[0]:
            raise PDEError(
                f"field {name!r} has batch size {t.shape[0]}, but field {names[0]!r} has "
                f"{out[0].shape[0]}"
            )
        out.append(t)
    return tuple(out)


def positive(params: Mapping[str, float], names: Sequence[str]) -> None:
    """Check that the parameters ``names`` are finite and positive."""
    for name in names:
        value = params[name]
        if not (math.isfinite(value) and value > 0.0):
            raise PDEError(f"parameter {name!r} must be finite and positive, got {value}")
