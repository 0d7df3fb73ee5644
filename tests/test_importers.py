"""Tests of pdediff.io.importers: each layout is written here, imported and checked."""

from __future__ import annotations

import datetime
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch
import xarray as xr
from conftest import neuraloperator_samples
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pdediff.errors import DataError
from pdediff.io.conventions import grid_from_dataset
from pdediff.io.importers import IMPORTERS, import_dataset, import_file
from pdediff.io.store import open_fields

NEURALOP = neuraloperator_samples()
RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- writers


def centres(n: int, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """Cell centres as PDEBench stores them (float32)."""
    dx = (hi - lo) / n
    return (lo + dx / 2 + dx * np.arange(n)).astype(np.float32)


def write_pdebench_darcy(path, nu, beta=1.0):
    """PDEBench Darcy: nu[n, ix, iy] and tensor (N, 1, nx, ny), x first."""
    n, nx, ny = nu.shape
    u = (nu * 2.0 + 1.0).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["nu"] = nu
        f["tensor"] = u[:, None]
        f["x-coordinate"] = centres(nx)
        f["y-coordinate"] = centres(ny)
        f.attrs["beta"] = beta
    return u


def write_pdebench_burgers(path, u, nu=0.001):
    n, nt, nx = u.shape
    with h5py.File(path, "w") as f:
        f["tensor"] = u
        f["x-coordinate"] = centres(nx, -1.0, 1.0)
        f["t-coordinate"] = (0.01 * np.arange(nt + 1)).astype(np.float32)
        f.attrs["Nu"] = nu
    return path


def write_pdebench_groups(path, data, t=None):
    """Per-sample layout: data (N, T, ny, nx, C) as groups 0000, 0001, ..."""
    _, nt, ny, nx, _ = data.shape
    with h5py.File(path, "w") as f:
        for i, sample in enumerate(data):
            g = f.create_group(f"{i:04d}")
            g["data"] = sample
            g["grid/x"] = centres(nx, -1.0, 1.0)
            g["grid/y"] = centres(ny, -1.0, 1.0)
            g["grid/t"] = np.linspace(0, 5, nt, dtype=np.float32) if t is None else t
            g.attrs["config"] = "sim: {Du: 0.001}"
    return path


def write_mat73(path, arrays):
    """MATLAB v7.3: HDF5 after a 512-byte header; arrays stored column-major (transposed)."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for key, value in arrays.items():
            f[key] = np.asarray(value).T
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, written by pdediff tests".ljust(128))
    return path


def write_mat5(path, arrays):
    scipy.io.savemat(path, arrays)
    return path


def without_volatile(ds: xr.Dataset) -> xr.Dataset:
    """Drop the attributes that name the file or the time of import."""
    ds = ds.copy()
    for key in ("history", "source"):
        ds.attrs.pop(key, None)
    return ds


# ----------------------------------------------------------------------------- PDEBench


def test_pdebench_darcy(tmp_path):
    nu = RNG.uniform(0.1, 1.0, (3, 8, 8)).astype(np.float32)
    path = tmp_path / "2D_DarcyFlow_beta1.0_Train.hdf5"
    u = write_pdebench_darcy(path, nu, beta=1.0)
    ds = import_dataset("pdebench", path)
    assert ds.a.dims == ("sample", "y", "x") and ds.u.dims == ("sample", "y", "x")
    # PDEBench indexes nu[n, ix, iy]; pdediff's arrays are [n, iy, ix]
    np.testing.assert_array_equal(ds.a.values, nu.transpose(0, 2, 1))
    np.testing.assert_array_equal(ds.u.values, u.transpose(0, 2, 1))
    np.testing.assert_allclose(ds.x.values, centres(8), rtol=1e-6)
    assert ds.attrs["pde"] == "darcy"
    assert ds.attrs["param_beta"] == 1.0
    assert ds.attrs["source"] == "pdebench: 2D_DarcyFlow_beta1.0_Train.hdf5"
    assert ds.a.attrs["role"] == "coefficient" and ds.u.attrs["role"] == "solution"
    assert "periodic" not in ds.x.attrs
    grid_from_dataset(ds)  # the float32 coordinates pass Grid's uniformity check


def test_pdebench_non_square_axis_order(tmp_path):
    nu = RNG.normal(size=(2, 6, 4)).astype(np.float32)  # (N, nx=6, ny=4)
    path = tmp_path / "darcy.h5"
    write_pdebench_darcy(path, nu)
    ds = import_dataset("pdebench", path)
    assert dict(ds.sizes) == {"sample": 2, "y": 4, "x": 6}
    np.testing.assert_array_equal(ds.a.values, nu.transpose(0, 2, 1))
    # a file written (N, ny, nx) instead is recognised from the coordinate lengths
    with h5py.File(path, "r+") as f:
        del f["nu"], f["tensor"]
        f["nu"] = nu.transpose(0, 2, 1)
    np.testing.assert_array_equal(import_dataset("pdebench", path).a.values, nu.transpose(0, 2, 1))


def test_pdebench_burgers_time_edges(tmp_path):
    u = RNG.normal(size=(2, 5, 16)).astype(np.float32)
    path = write_pdebench_burgers(tmp_path / "1D_Burgers_Sols_Nu0.001.hdf5", u)
    ds = import_dataset("pdebench", path)
    assert ds.u.dims == ("sample", "t", "x")
    np.testing.assert_array_equal(ds.u.values, u)
    np.testing.assert_allclose(ds.t.values, 0.01 * np.arange(5), atol=1e-7)  # T+1 stored
    assert ds.x.attrs["periodic"] == 1 and "periodic" not in ds.t.attrs
    assert ds.attrs["pde"] == "burgers"
    assert ds.attrs["param_Nu"] == pytest.approx(0.001)


def test_pdebench_cfd_several_arrays(tmp_path):
    n, nt, nx, ny = 2, 3, 5, 4
    arrays = {
        k: RNG.normal(size=(n, nt, nx, ny)).astype(np.float32)
        for k in ("density", "pressure", "Vx", "Vy")
    }
    path = tmp_path / "2D_CFD_Rand_M0.1_Eta0.01_Zeta0.01_periodic_128_Train.hdf5"
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f[k] = v
        f["x-coordinate"], f["y-coordinate"] = centres(nx), centres(ny)
        f["t-coordinate"] = np.linspace(0, 1, nt + 1, dtype=np.float32)
        f.attrs.update({"eta": 0.01, "zeta": 0.01, "M": 0.1, "label": "not a number"})
    ds = import_dataset("pdebench", path)
    assert set(ds.data_vars) == set(arrays)
    for k, v in arrays.items():
        assert ds[k].dims == ("sample", "t", "y", "x")
        np.testing.assert_array_equal(ds[k].values, v.transpose(0, 1, 3, 2))
    assert ds.x.attrs["periodic"] == 1 and ds.y.attrs["periodic"] == 1
    assert ds.attrs["param_M"] == pytest.approx(0.1) and "param_label" not in ds.attrs
    assert ds.attrs["pde"] == "unknown"


def test_pdebench_sample_groups(tmp_path):
    data = RNG.normal(size=(3, 4, 6, 5, 2)).astype(np.float32)  # (N, T, ny, nx, C)
    path = write_pdebench_groups(tmp_path / "2D_diff-react_NA_NA.h5", data)
    ds = import_dataset("pdebench", path)
    assert list(ds.data_vars) == ["u0", "u1"]
    assert ds.u0.dims == ("sample", "t", "y", "x")
    np.testing.assert_array_equal(ds.u1.values, data[..., 1])
    np.testing.assert_allclose(ds.t.values, np.linspace(0, 5, 4), rtol=1e-6)
    np.testing.assert_allclose(ds.y.values, centres(6, -1.0, 1.0), rtol=1e-6)
    renamed = import_dataset("pdebench", path, variables={"0": "u", "1": "v"})
    assert list(renamed.data_vars) == ["u", "v"]
    np.testing.assert_array_equal(renamed.u.values, data[..., 0])


# ----------------------------------------------------------------------------- FNO .mat


@pytest.mark.parametrize("writer", [write_mat5, write_mat73])
def test_fno_darcy(tmp_path, writer):
    coeff, sol = RNG.normal(size=(2, 3, 9, 9))
    path = writer(tmp_path / "piececonst_r9_N3.mat", {"coeff": coeff, "sol": sol, "Kcoeff": coeff})
    ds = import_dataset("fno-mat", path, length=2.0)
    np.testing.assert_allclose(ds.a.values, coeff, rtol=1e-6)
    np.testing.assert_allclose(ds.u.values, sol, rtol=1e-6)
    np.testing.assert_allclose(ds.x.values, np.linspace(0, 2, 9))
    assert ds.attrs["pde"] == "darcy" and "periodic" not in ds.x.attrs
    assert ds.attrs["source"] == "fno-mat: piececonst_r9_N3.mat"


@pytest.mark.parametrize("writer", [write_mat5, write_mat73])
def test_fno_navier_stokes(tmp_path, writer):
    a = RNG.normal(size=(2, 8, 8))
    u = RNG.normal(size=(2, 8, 8, 3))  # time last, as FNO stores it
    path = writer(tmp_path / "ns_V1e-3_N2_T3.mat", {"a": a, "u": u, "t": [[1.0, 2.0, 3.0]]})
    ds = import_dataset("fno-mat", path)
    assert ds.w0.dims == ("sample", "y", "x") and ds.w.dims == ("sample", "t", "y", "x")
    np.testing.assert_allclose(ds.w.values, np.moveaxis(u, -1, 1), rtol=1e-6)
    np.testing.assert_allclose(ds.w0.values, a, rtol=1e-6)
    np.testing.assert_allclose(ds.t.values, [1, 2, 3])
    np.testing.assert_allclose(ds.x.values, np.arange(8) / 8)
    assert ds.x.attrs["periodic"] == 1 and ds.attrs["pde"] == "navier_stokes"
    assert ds.w0.attrs["role"] == "coefficient"


def test_fno_navier_stokes_default_times(tmp_path):
    path = write_mat5(tmp_path / "ns.mat", {"a": np.ones((1, 4, 4)), "u": np.ones((1, 4, 4, 5))})
    np.testing.assert_allclose(import_dataset("fno-mat", path).t.values, np.arange(1, 6))


@pytest.mark.parametrize("time_axis", [False, True])
def test_fno_burgers(tmp_path, time_axis):
    a = RNG.normal(size=(3, 16))
    u = RNG.normal(size=(3, 4, 16) if time_axis else (3, 16))
    path = write_mat5(tmp_path / "burgers_data_R10.mat", {"a": a, "u": u, "visc": 0.1})
    ds = import_dataset("fno-mat", path, length=2 * np.pi)
    assert ds.u.dims == (("sample", "t", "x") if time_axis else ("sample", "x"))
    np.testing.assert_allclose(ds.u0.values, a, rtol=1e-6)
    np.testing.assert_allclose(ds.u.values, u, rtol=1e-6)
    np.testing.assert_allclose(ds.x.values, np.arange(16) * 2 * np.pi / 16)
    assert ds.attrs["pde"] == "burgers" and ds.attrs["param_nu"] == pytest.approx(0.1)
    if time_axis:
        np.testing.assert_allclose(ds.t.values, np.linspace(0, 1, 4))


def test_mat73_without_userblock(tmp_path):
    path = tmp_path / "plain.mat"
    with h5py.File(path, "w") as f:
        f["coeff"] = np.ones((4, 5, 2))  # MATLAB (2, 5, 4) would read as (4, 5, 2) here
        f["sol"] = np.zeros((4, 5, 2))
    assert import_dataset("fno-mat", path).a.shape == (2, 5, 4)


# ----------------------------------------------------------------------------- neuraloperator


def test_neuraloperator_darcy_real_file():
    path = NEURALOP / "darcy_test_16.pt"
    ref = torch.load(path, weights_only=True)
    ds = import_dataset("neuraloperator", path)
    np.testing.assert_array_equal(ds.a.values, ref["x"].numpy().astype(np.float32))
    np.testing.assert_array_equal(ds.u.values, ref["y"].numpy())
    assert ds.a.dtype == np.float32 and set(np.unique(ds.a.values)) <= {0.0, 1.0}
    np.testing.assert_allclose(ds.x.values, np.linspace(0, 1, 16))
    assert ds.attrs["pde"] == "darcy" and "periodic" not in ds.x.attrs


def test_neuraloperator_burgers_real_file():
    path = NEURALOP / "burgers_test_16.pt"
    ref = torch.load(path, weights_only=True)
    ds = import_dataset("neuraloperator", path)
    assert ds.u0.dims == ("sample", "x") and ds.u.dims == ("sample", "t", "x")
    np.testing.assert_allclose(ds.u0.values, ref["x"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(ds.u.values, ref["y"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(ds.t.values, np.linspace(0, 1, 17))
    np.testing.assert_allclose(ds.x.values, np.arange(16) / 16)
    assert ds.x.attrs["periodic"] == 1 and "periodic" not in ds.t.attrs
    assert ds.attrs["param_nu"] == pytest.approx(0.01) and ds.attrs["pde"] == "burgers"


def test_neuraloperator_navier_stokes_by_pde(tmp_path):
    path = tmp_path / "nsforcing_test_8.pt"
    x, y = torch.randn(2, 3, 8, 8)
    torch.save({"x": x, "y": y}, path)
    ds = import_dataset("neuraloperator", path)
    assert list(ds.data_vars) == ["w0", "w"] and ds.attrs["pde"] == "navier_stokes"
    assert ds.x.attrs["periodic"] == 1
    ds = import_dataset("neuraloperator", path, pde="poisson", periodic=False)
    assert list(ds.data_vars) == ["a", "u"] and ds.attrs["pde"] == "poisson"


# ----------------------------------------------------------------------------- DiffusionPDE


def write_npy_dir(folder: Path, data: np.ndarray) -> Path:
    folder.mkdir()
    for i, sample in enumerate(data):
        np.save(folder / f"{i}.npy", sample)
    return folder


def test_diffusionpde_npy_directory(tmp_path):
    data = RNG.normal(size=(12, 6, 6, 2)).astype(np.float32)  # 12 files: 10.npy after 9.npy
    folder = write_npy_dir(tmp_path / "darcy", data)
    ds = import_dataset("diffusionpde-npy", folder, pde="darcy")
    np.testing.assert_array_equal(ds.a.values, data[..., 0])
    np.testing.assert_array_equal(ds.u.values, data[..., 1])
    np.testing.assert_allclose(ds.y.values, np.linspace(0, 1, 6))
    assert ds.attrs["pde"] == "darcy" and "12 file(s)" in ds.attrs["source"]
    ns = import_dataset("diffusionpde-npy", str(folder / "*.npy"), pde="navier_stokes")
    assert list(ns.data_vars) == ["w0", "w"] and ns.x.attrs["periodic"] == 1
    np.testing.assert_allclose(ns.x.values, np.arange(6) / 6)
    assert import_dataset("diffusionpde-npy", folder).attrs["pde"] == "unknown"


# ----------------------------------------------------------------------------- options, files


def test_variables_dims_and_pde_overrides(tmp_path):
    u = RNG.normal(size=(2, 3, 8)).astype(np.float32)
    path = write_pdebench_burgers(tmp_path / "1D_Burgers.hdf5", u)
    ds = import_dataset(
        "pdebench",
        path,
        variables={"tensor": "v"},
        dims=("time", "s"),
        pde="my_family",
        periodic=False,
    )
    assert ds.v.dims == ("sample", "time", "s") and ds.attrs["pde"] == "my_family"
    assert "periodic" not in ds.s.attrs


def test_import_file_round_trip(tmp_path):
    out = tmp_path / "darcy.nc"
    written = import_file("neuraloperator", NEURALOP / "darcy_test_16.pt", out)
    assert written == out
    back = open_fields(out)
    ds = import_dataset("neuraloperator", NEURALOP / "darcy_test_16.pt")
    xr.testing.assert_identical(without_volatile(back), without_volatile(ds))
    assert "import neuraloperator " in back.attrs["history"]
    assert str(NEURALOP / "darcy_test_16.pt") in back.attrs["history"]
    with pytest.raises(FileExistsError, match="overwrite"):
        import_file("neuraloperator", NEURALOP / "darcy_test_16.pt", out)
    import_file("neuraloperator", NEURALOP / "burgers_test_16.pt", out, overwrite=True)
    assert list(open_fields(out).data_vars) == ["u0", "u"]


def test_import_file_mixed_dims_to_zarr(tmp_path):
    out = tmp_path / "burgers.zarr"
    import_file("neuraloperator", NEURALOP / "burgers_test_16.pt", out)
    back = open_fields(out)
    assert back.u.dims == ("sample", "t", "x") and back.x.attrs["periodic"] == 1


def test_registry_is_plain_dict():
    assert type(IMPORTERS) is dict
    assert set(IMPORTERS) == {"pdebench", "fno-mat", "neuraloperator", "diffusionpde-npy"}


# ----------------------------------------------------------------------------- properties


small = st.integers(min_value=2, max_value=5)
values32 = st.floats(-1e3, 1e3, width=32, allow_subnormal=False)


@settings(max_examples=15, deadline=None)
@given(st.data(), st.integers(1, 3), small, small)
def test_mat_v5_and_v73_agree(data, n, h, w):
    coeff = data.draw(hnp.arrays(np.float64, (n, h, w), elements=values32))
    sol = data.draw(hnp.arrays(np.float64, (n, h, w), elements=values32))
    with tempfile.TemporaryDirectory() as tmp:
        v5 = write_mat5(Path(tmp) / "a.mat", {"coeff": coeff, "sol": sol})
        v73 = write_mat73(Path(tmp) / "b.mat", {"coeff": coeff, "sol": sol})
        ds5, ds73 = import_dataset("fno-mat", v5), import_dataset("fno-mat", v73)
    xr.testing.assert_identical(without_volatile(ds5), without_volatile(ds73))
    np.testing.assert_array_equal(ds5.a.values, coeff.astype(np.float32))


@settings(max_examples=15, deadline=None)
@given(st.data(), st.integers(1, 3), st.integers(1, 4), small, small, st.integers(1, 3))
def test_pdebench_groups_round_trip(data, n, nt, ny, nx, nc):
    arr = data.draw(hnp.arrays(np.float32, (n, nt, ny, nx, nc), elements=values32))
    with tempfile.TemporaryDirectory() as tmp:
        ds = import_dataset("pdebench", write_pdebench_groups(Path(tmp) / "g.h5", arr))
    for c in range(nc):
        expected = arr[..., c] if nt > 1 else arr[:, 0, ..., c]  # one level: no t dim
        np.testing.assert_array_equal(ds[f"u{c}"].values, expected)
    assert ("t" in ds.dims) == (nt > 1)


@settings(max_examples=15, deadline=None)
@given(st.data(), st.integers(1, 3), small, small)
def test_pdebench_darcy_round_trip(data, n, nx, ny):
    nu = data.draw(hnp.arrays(np.float32, (n, nx, ny), elements=values32))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "darcy.hdf5"
        write_pdebench_darcy(path, nu)
        ds = import_dataset("pdebench", path)
    np.testing.assert_array_equal(ds.a.values, nu.transpose(0, 2, 1))
    assert dict(ds.sizes) == {"sample": n, "y": ny, "x": nx}


# ----------------------------------------------------------------------------- bad input


def test_unknown_format_lists_known(tmp_path):
    with pytest.raises(DataError, match="unknown import format 'netcdf'.*fno-mat"):
        import_dataset("netcdf", tmp_path / "x")


@pytest.mark.parametrize("fmt", sorted(IMPORTERS))
def test_missing_file(tmp_path, fmt):
    with pytest.raises(FileNotFoundError, match="nothere"):
        import_dataset(fmt, tmp_path / "nothere.dat")


def test_missing_npy_glob_and_empty_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="no files match"):
        import_dataset("diffusionpde-npy", str(tmp_path / "*.npy"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .npy files"):
        import_dataset("diffusionpde-npy", tmp_path / "empty")


def test_not_hdf5_and_truncated(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not an HDF5 file")
    with pytest.raises(DataError, match=r"cannot read .*notes.h5 as HDF5"):
        import_dataset("pdebench", text)
    full = tmp_path / "full.h5"
    write_pdebench_darcy(full, np.ones((50, 16, 16), np.float32))
    cut = tmp_path / "cut.h5"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cannot read .*cut.h5 as HDF5"):
        import_dataset("pdebench", cut)


def test_pdebench_missing_coordinates_lists_keys(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["tensor"] = np.ones((2, 4, 4))
    with pytest.raises(DataError, match=r"no 'x-coordinate'.*keys \['tensor'\]"):
        import_dataset("pdebench", path)


def test_pdebench_wrong_shape(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["tensor"] = np.ones((2, 4, 5))
        f["x-coordinate"] = centres(8)
    with pytest.raises(DataError, match=r"'tensor' has shape \(2, 4, 5\).*\(8,\) for \(x\)"):
        import_dataset("pdebench", path)


def test_pdebench_time_without_coordinate_and_bad_length(tmp_path):
    path = write_pdebench_burgers(tmp_path / "b.h5", np.ones((2, 3, 8), np.float32))
    with h5py.File(path, "r+") as f:
        del f["t-coordinate"]
        f["t-coordinate"] = np.arange(7.0)
    with pytest.raises(DataError, match=r"'t-coordinate' has 7 values; expected 3 \(or 4\)"):
        import_dataset("pdebench", path)
    with h5py.File(path, "r+") as f:
        del f["t-coordinate"]
    with pytest.raises(DataError, match="3 time levels but the file has no time coordinate"):
        import_dataset("pdebench", path)


def test_pdebench_non_uniform_coordinate(tmp_path):
    path = tmp_path / "b.h5"
    write_pdebench_darcy(path, np.ones((1, 4, 4), np.float32))
    with h5py.File(path, "r+") as f:
        f["x-coordinate"][...] = [0.0, 0.1, 0.5, 0.6]
    with pytest.raises(DataError, match="'x-coordinate' is not uniform"):
        import_dataset("pdebench", path)


def test_pdebench_groups_mismatch(tmp_path):
    path = write_pdebench_groups(tmp_path / "g.h5", np.ones((2, 3, 4, 4, 1), np.float32))
    with h5py.File(path, "r+") as f:
        del f["0001/data"]
        f["0001/data"] = np.ones((3, 4, 5, 1))
    with pytest.raises(
        DataError,
        match=r"group '0001': 'data' has shape \(3, 4, 5, 1\), "
        r"expected \(3, 4, 4, 1\)",
    ):
        import_dataset("pdebench", path)
    with h5py.File(path, "r+") as f:
        del f["0001/data"]
    with pytest.raises(DataError, match="group '0001' has no 'data' dataset"):
        import_dataset("pdebench", path)


def test_mat_bad_file_and_missing_keys(tmp_path):
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"definitely not a MATLAB file" * 10)
    with pytest.raises(DataError, match=r"cannot read .*junk.mat as a MATLAB"):
        import_dataset("fno-mat", junk)
    path = write_mat5(tmp_path / "other.mat", {"foo": np.ones((2, 2))})
    with pytest.raises(DataError, match=r"'coeff' and 'sol'.*has keys \['foo'\]"):
        import_dataset("fno-mat", path)


def test_mat_wrong_shape_and_mismatched_n(tmp_path):
    path = write_mat5(tmp_path / "d.mat", {"coeff": np.ones((2, 4, 4)), "sol": np.ones((2, 4, 5))})
    with pytest.raises(DataError, match=r"'sol' has shape \(2, 4, 5\); expected \(N, 4, 4\)"):
        import_dataset("fno-mat", path)
    path = write_mat5(tmp_path / "n.mat", {"coeff": np.ones((2, 4, 4)), "sol": np.ones((3, 4, 4))})
    with pytest.raises(DataError, match=r"different numbers of samples.*'coeff': 2, 'sol': 3"):
        import_dataset("fno-mat", path)
    path = write_mat5(tmp_path / "c.mat", {"coeff": np.ones((4, 4)), "sol": np.ones((4, 4))})
    with pytest.raises(DataError, match=r"'coeff' has shape \(4, 4\); expected \(N, H, W\)"):
        import_dataset("fno-mat", path)


def test_mat_navier_stokes_wrong_shape_names_file_order(tmp_path):
    path = write_mat5(tmp_path / "ns.mat", {"a": np.ones((2, 4, 4)), "u": np.ones((2, 4, 5, 3))})
    with pytest.raises(DataError, match=r"'u' has shape \(2, 4, 5, 3\); expected \(N, 4, 4, T\)"):
        import_dataset("fno-mat", path)


def test_pt_missing_key_and_mismatched_n(tmp_path):
    path = tmp_path / "d.pt"
    torch.save({"x": torch.ones(2, 4, 4)}, path)
    with pytest.raises(DataError, match=r"missing key\(s\) \['y'\]; it has keys \['x'\]"):
        import_dataset("neuraloperator", path)
    torch.save({"x": torch.ones(2, 4, 4), "y": torch.ones(3, 4, 4)}, path)
    with pytest.raises(DataError, match="different numbers of samples"):
        import_dataset("neuraloperator", path)


def test_pt_pickle_only_and_junk(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"x": datetime.date(2020, 1, 1)}, path)  # an object weights_only refuses
    with pytest.raises(DataError, match=r"refused it \(it holds a datetime.date object\)"):
        import_dataset("neuraloperator", path)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"hello, not a torch file")
    with pytest.raises(DataError, match=r"cannot read .*junk.pt as a torch .pt file"):
        import_dataset("neuraloperator", junk)
    torch.save([torch.ones(2)], path)
    with pytest.raises(DataError, match="expected a dict of tensors.*got list"):
        import_dataset("neuraloperator", path)


def test_npy_wrong_shapes(tmp_path):
    folder = write_npy_dir(tmp_path / "d", np.ones((2, 4, 4, 2)))
    np.save(folder / "2.npy", np.ones((4, 5, 2)))
    with pytest.raises(DataError, match=r"2.npy has shape \(4, 5, 2\), expected \(4, 4, 2\)"):
        import_dataset("diffusionpde-npy", folder)
    with pytest.raises(DataError, match=r"expected \(H, W, C\)"):
        np.save(tmp_path / "flat.npy", np.ones((4, 4)))
        import_dataset("diffusionpde-npy", tmp_path / "flat.npy")


def test_bad_options():
    path = NEURALOP / "darcy_test_16.pt"
    with pytest.raises(DataError, match=r"variable\(s\) \['coeff'\] not in the file.*\['x', 'y'\]"):
        import_dataset("neuraloperator", path, variables={"coeff": "a"})
    with pytest.raises(DataError, match="duplicate names"):
        import_dataset("neuraloperator", path, variables={"x": "u"})
    with pytest.raises(DataError, match=r"must be 2 distinct names.*\('y', 'x'\)"):
        import_dataset("neuraloperator", path, dims=("t", "y", "x"))
    with pytest.raises(DataError, match="clash with grid dims"):
        import_dataset("neuraloperator", path, variables={"x": "y"})


def test_import_file_rejects_nan_and_leaves_nothing(tmp_path):
    coeff = np.ones((2, 4, 4))
    coeff[1, 2, 3] = np.nan
    src = write_mat5(tmp_path / "nan.mat", {"coeff": coeff, "sol": np.ones((2, 4, 4))})
    out = tmp_path / "out.nc"
    with pytest.raises(DataError, match=r"nan.mat.*variable 'a' has 1 NaN/inf.*'sample': 1"):
        import_file("fno-mat", src, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.mat"]


def test_import_file_rejects_bad_output_suffix(tmp_path):
    with pytest.raises(DataError, match="cannot tell the output format"):
        import_file("neuraloperator", NEURALOP / "darcy_test_16.pt", tmp_path / "out.txt")


def test_real_files_untouched():
    # the shared sample files are read-only inputs: importing must not write beside them
    before = sorted(p.name for p in NEURALOP.iterdir())
    import_dataset("neuraloperator", NEURALOP / "darcy_test_16.pt")
    assert sorted(p.name for p in NEURALOP.iterdir()) == before
