"""Gridded fields at the edges of pdediff: the xarray convention, ``FieldSpec``, readers,
writers and importers.  Everything inside the package works on tensors and arrays."""

from pdediff.io.conventions import (
    check_finite,
    dataset_params,
    field_dims,
    grid_from_dataset,
    make_dataset,
)
from pdediff.io.fieldspec import FieldSpec
from pdediff.io.store import atomic_path, detect_format, open_fields, write_fields

__all__ = [
    "FieldSpec",
    "atomic_path",
    "check_finite",
    "dataset_params",
    "detect_format",
    "field_dims",
    "grid_from_dataset",
    "make_dataset",
    "open_fields",
    "write_fields",
]
