"""The field data model: conventions, FieldSpec round trips, NetCDF/zarr store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from pdediff.errors import DataError
from pdediff.io import (
    FieldSpec,
    check_finite,
    dataset_params,
    detect_format,
    grid_from_dataset,
    make_dataset,
    open_fields,
    write_fields,
)
from pdediff.io.store import atomic_path
from pdediff.pde.base import FieldInfo, node_grid, periodic_grid


def _dataset(n=3, shape=(6, 8), periodic=False, seed=0):
    rng = np.random.default_rng(seed)
    grid = (periodic_grid if periodic else node_grid)(shape[0], ("y", "x"), 2.0)
    if shape[1] != shape[0]:
        from pdediff.pde.base import Grid

        grid = Grid(
            {"y": grid.coords["y"], "x": np.linspace(0, 3, shape[1])},
            periodic=grid.periodic & {"y"},
        )
    fields = {"a": rng.normal(3, 2, (n, *shape)), "u": rng.normal(-1, 0.1, (n, *shape))}
    info = {"a": FieldInfo("permeability", "m2", "coefficient"), "u": FieldInfo("pressure", "Pa")}
    return make_dataset(fields, grid, pde="darcy", params={"alpha": 2, "tau": 3}, info=info)


def test_convention_attributes():
    ds = _dataset()
    assert ds.attrs["Conventions"].startswith("CF-")
    assert ds.attrs["pde"] == "darcy" and "history" in ds.attrs and "source" in ds.attrs
    assert dataset_params(ds) == {"alpha": 2.0, "tau": 3.0}
    assert ds["a"].dims == ("sample", "y", "x")
    assert ds["a"].attrs["long_name"] == "permeability" and ds["a"].attrs["units"] == "m2"
    assert ds["x"].attrs["axis"] == "X" and ds["y"].attrs["units"] == "1"


def test_grid_from_dataset_spacing_and_periodicity():
    ds = _dataset(periodic=True, shape=(8, 8))
    grid = grid_from_dataset(ds)
    assert grid.periodic == {"y", "x"}
    assert grid.spacing("x") == pytest.approx(2.0 / 8)
    ds = _dataset(shape=(6, 8))
    grid = grid_from_dataset(ds)
    assert grid.spacing("y") == pytest.approx(2.0 / 5) and grid.spacing("x") == pytest.approx(3 / 7)


def test_fieldspec_tensor_round_trip_keeps_coords_and_attrs():
    ds = _dataset(shape=(6, 8))
    spec = FieldSpec.from_json(FieldSpec.from_dataset(ds, ["u", "a"]).to_json())
    x = spec.to_tensor(ds)
    assert x.shape == (3, 2, 6, 8) and x.dtype == torch.float32
    # normalised channels have mean 0 and std 1
    assert x.double().mean(dim=(0, 2, 3)).abs().max() < 1e-5
    assert (x.double().std(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-5
    back = spec.to_dataset(x)
    xr.testing.assert_allclose(back, ds[["u", "a"]], rtol=1e-5, atol=1e-5)
    assert back.attrs == ds.attrs
    assert back["a"].attrs == ds["a"].attrs and back["x"].attrs == ds["x"].attrs


def test_fieldspec_json_is_plain_json():
    spec = FieldSpec.from_dataset(_dataset())
    d = json.loads(spec.to_json())
    assert d["variables"] == ["a", "u"] and len(d["mean"]) == 2
    assert FieldSpec.from_dict(d) == spec


def test_fieldspec_refuses_other_grid_and_missing_variables():
    spec = FieldSpec.from_dataset(_dataset(shape=(6, 6)))
    with pytest.raises(DataError, match="coordinate 'y'"):
        spec.to_tensor(_dataset(shape=(8, 8)))
    with pytest.raises(DataError, match=r"lacks variable\(s\) \['u'\]"):
        spec.to_tensor(_dataset(shape=(6, 6))[["a"]])
    other_units = _dataset(shape=(6, 6))
    other_units["x"].attrs["units"] = "km"
    with pytest.raises(DataError, match="units"):
        spec.to_tensor(other_units)
    with pytest.raises(DataError, match="does not match the spec"):
        spec.to_dataset(torch.zeros(2, 3, 6, 6))
    with pytest.raises(DataError, match="lacks key"):
        FieldSpec.from_dict({"variables": ["a"]})
    with pytest.raises(DataError, match="not valid JSON"):
        FieldSpec.from_json("{")


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_store_round_trip(tmp_path, suffix):
    ds = _dataset(periodic=True, shape=(8, 8))
    path = write_fields(ds, tmp_path / f"f{suffix}")
    assert detect_format(path) == ("zarr" if suffix == ".zarr" else "netcdf4")
    back = open_fields(path)
    xr.testing.assert_identical(back[["a", "u"]], ds[["a", "u"]])
    assert back.attrs == ds.attrs
    assert [p.name for p in tmp_path.iterdir()] == [f"f{suffix}"]  # no temporary left


def test_zarr_chunk_is_one_sample(tmp_path):
    import zarr

    write_fields(_dataset(n=4), tmp_path / "f.zarr")
    assert zarr.open_group(tmp_path / "f.zarr", mode="r")["a"].chunks == (1, 6, 8)


def test_netcdf_is_netcdf4(tmp_path):
    write_fields(_dataset(), tmp_path / "f.nc")
    assert (tmp_path / "f.nc").read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"


def test_existing_output_is_refused_and_kept(tmp_path):
    path = tmp_path / "f.nc"
    path.write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite"):
        write_fields(_dataset(), path)
    assert path.read_text() == "keep me"
    write_fields(_dataset(), path, overwrite=True)
    assert open_fields(path)["a"].shape == (3, 6, 8)


def test_crash_during_write_leaves_nothing(tmp_path):
    path = tmp_path / "f.zarr"
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.mkdir()
            (tmp / "partial").write_text("x")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_bad_paths(tmp_path):
    with pytest.raises(DataError, match="output format"):
        write_fields(_dataset(), tmp_path / "f.txt")
    with pytest.raises(FileNotFoundError, match="nope.nc"):
        open_fields(tmp_path / "nope.nc")
    (tmp_path / "junk.nc").write_bytes(b"not a netcdf file")
    with pytest.raises(DataError, match="neither NetCDF"):
        open_fields(tmp_path / "junk.nc")
    truncated = tmp_path / "trunc.nc"
    write_fields(_dataset(), tmp_path / "good.nc")
    truncated.write_bytes((tmp_path / "good.nc").read_bytes()[:600])
    with pytest.raises(DataError, match="cannot read"):
        open_fields(truncated)


def test_check_finite_names_variable_and_index():
    ds = _dataset()
    ds["u"][1, 2, 3] = np.nan
    with pytest.raises(DataError, match=r"'u' has 1 NaN/inf .*'sample': 1, 'y': 2, 'x': 3"):
        check_finite(ds)


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 3),
    h=st.integers(2, 9),
    w=st.integers(2, 9),
    scale=st.floats(1e-3, 1e3),
    periodic=st.booleans(),
)
def test_fieldspec_round_trip_property(n, h, w, scale, periodic):
    rng = np.random.default_rng(h * 10 + w)
    grid = (periodic_grid if periodic else node_grid)(h, ("y",), 1.0)
    from pdediff.pde.base import Grid

    grid = Grid({"y": grid.coords["y"], "x": np.linspace(0, 1, w)}, periodic=grid.periodic)
    ds = make_dataset({"a": scale * rng.normal(size=(n, h, w))}, grid, pde="unknown")
    spec = FieldSpec.from_dataset(ds)
    back = spec.to_dataset(spec.to_tensor(ds))
    np.testing.assert_allclose(back["a"].values, ds["a"].values, rtol=1e-5, atol=1e-5 * scale)
    assert grid_from_dataset(back).periodic == grid.periodic
