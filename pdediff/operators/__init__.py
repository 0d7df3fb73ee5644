"""Observation operators: linear maps from fields ``(N, C, *grid)`` to observations
``(N, M)``, each with its adjoint (torch only)."""

from pdediff.operators.observation import (
    DIFFUSIONPDE_POINTS,
    LinearObservation,
    MaskObservation,
    PointObservation,
    StackedObservation,
    column_mask,
    random_points,
    sensor_columns,
)

__all__ = [
    "DIFFUSIONPDE_POINTS",
    "LinearObservation",
    "MaskObservation",
    "PointObservation",
    "StackedObservation",
    "column_mask",
    "random_points",
    "sensor_columns",
]
