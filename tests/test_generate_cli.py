"""Dataset generation (reproducibility across workers), recipes, inspect, plot and the CLI's
handling of bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import neuraloperator_samples

from pdediff.cli import main
from pdediff.errors import PdediffError
from pdediff.generate import generate, read_recipe
from pdediff.inspection import pde_residuals
from pdediff.io import open_fields
from pdediff.pde.base import PDEError

REPO = Path(__file__).resolve().parents[1]


def test_same_seed_same_data_for_any_chunking():
    a = generate("darcy", 5, 16, seed=3, chunk=5, progress=False)
    b = generate("darcy", 5, 16, seed=3, chunk=2, progress=False)
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    c = generate("darcy", 5, 16, seed=4, progress=False)
    assert not np.array_equal(a["a"].values, c["a"].values)
    # prefix property: the first samples do not depend on n
    d = generate("darcy", 2, 16, seed=3, progress=False)
    np.testing.assert_array_equal(d["u"].values, a["u"].values[:2])


@pytest.mark.slow
def test_same_seed_same_data_with_dask_workers():
    serial = generate("poisson", 4, 16, seed=1, progress=False)
    parallel = generate("poisson", 4, 16, seed=1, workers=2, chunk=1, progress=False)
    np.testing.assert_array_equal(serial["u"].values, parallel["u"].values)
    np.testing.assert_array_equal(serial["a"].values, parallel["a"].values)


@pytest.mark.slow
def test_generate_on_an_existing_scheduler():
    from dask.distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        remote = generate(
            "helmholtz", 3, 12, seed=5, scheduler=cluster.scheduler_address, chunk=1, progress=False
        )
    local = generate("helmholtz", 3, 12, seed=5, progress=False)
    np.testing.assert_array_equal(remote["u"].values, local["u"].values)


def test_generated_dataset_follows_convention_and_solves_its_pde():
    ds = generate("darcy", 3, 24, seed=0, params={"tau": 4.0}, progress=False)
    assert ds.attrs["pde"] == "darcy" and ds.attrs["param_tau"] == 4.0
    assert set(np.unique(ds["a"].values)) <= {3.0, 12.0}
    res = pde_residuals(ds)
    assert res.shape == (3,) and res.max() < 1e-5  # float32 storage of an exact solve


# Relative residual of stored (float32) reference solutions at 16 points: round-off for the
# Dirichlet families and NS (whose residual uses the flow map at residual_dt), the O(h^2)
# space-time discretisation error for Burgers at this coarse grid.
RESIDUAL_BOUND_16 = {
    "darcy": 1e-4,
    "poisson": 1e-4,
    "helmholtz": 1e-4,
    "burgers": 0.5,
    "navier_stokes": 1e-4,
}


@pytest.mark.parametrize("family", sorted(RESIDUAL_BOUND_16))
def test_every_family_generates_data_that_satisfy_its_residual(family):
    from pdediff.pde.registry import FAMILIES

    ds = generate(family, 2, 16, seed=0, progress=False)
    assert list(ds.data_vars) == list(FAMILIES[family].fields)
    assert ds.attrs["pde"] == family and np.isfinite(ds.to_array().values).all()
    assert pde_residuals(ds).max() < RESIDUAL_BOUND_16[family]


@pytest.mark.parametrize("recipe", sorted((REPO / "datasets").glob("*.toml")), ids=lambda p: p.stem)
def test_recipes_are_readable_and_valid(recipe):
    from pdediff.pde.registry import get_family

    r = read_recipe(recipe)
    fam = get_family(r["family"])
    fam.params(r.get("params", {}))
    assert r["n"] > 0 and r["resolution"] >= fam.min_resolution


def test_recipes_cover_every_family():
    from pdediff.pde.registry import FAMILIES

    names = {read_recipe(p)["family"] for p in (REPO / "datasets").glob("*.toml")}
    assert names == set(FAMILIES)


def test_generate_bad_input():
    with pytest.raises(PDEError, match="unknown PDE family 'darcyy'"):
        generate("darcyy", 2, 16)
    with pytest.raises(PdediffError, match="positive integer, got 0"):
        generate("darcy", 0, 16)
    with pytest.raises(PDEError, match="resolution 2 is too small"):
        generate("darcy", 2, 2)
    with pytest.raises(PDEError, match=r"unknown parameter\(s\) \['tua'\]"):
        generate("darcy", 2, 16, params={"tua": 1})


def test_cli_generate_inspect_plot(tmp_path, capsys):
    out = tmp_path / "d.zarr"
    assert (
        main(
            [
                "generate",
                "darcy",
                "--n",
                "3",
                "--resolution",
                "16",
                "--seed",
                "2",
                "-o",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    ds = open_fields(out)
    assert ds.sizes["sample"] == 3
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "PDE residual" in text and "a " in text and "NaN/inf 0" in text
    fig = tmp_path / "d.png"
    assert main(["plot", str(out), "-o", str(fig)]) == 0
    assert fig.read_bytes()[:4] == b"\x89PNG"


def test_cli_generate_recipe_with_overrides(tmp_path):
    out = tmp_path / "h.nc"
    assert (
        main(
            [
                "generate",
                "--recipe",
                str(REPO / "datasets" / "helmholtz.toml"),
                "--n",
                "2",
                "--resolution",
                "16",
                "--param",
                "k=2",
                "-o",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    ds = open_fields(out)
    assert ds.attrs["pde"] == "helmholtz" and ds.attrs["param_k"] == 2.0 and ds.sizes["x"] == 16


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "nope", "--n", "2", "-o", "{tmp}/x.nc"], "unknown PDE family 'nope'"),
        (["generate", "darcy", "--n", "-1", "-o", "{tmp}/x.nc"], "positive integer"),
        (["generate", "darcy", "--n", "2", "--resolution", "3", "-o", "{tmp}/x.nc"], "too small"),
        (["generate", "darcy", "--n", "2", "--param", "k", "-o", "{tmp}/x.nc"], "NAME=NUMBER"),
        (["generate", "darcy", "--n", "2", "-o", "{tmp}/x.txt"], "output format"),
        (["generate", "darcy", "--n", "2", "-o", "{tmp}/exists.nc"], "--overwrite"),
        (["generate", "--recipe", "{tmp}/none.toml", "-o", "{tmp}/x.nc"], "none.toml"),
        (["inspect", "{tmp}/missing.nc"], "missing.nc"),
        (["import", "nope", "{tmp}/exists.nc", "-o", "{tmp}/y.nc"], "nope"),
    ],
)
def test_cli_bad_input_one_line_nonzero_no_output(tmp_path, capsys, argv, message):
    (tmp_path / "exists.nc").write_text("old")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.nc"]
    assert (tmp_path / "exists.nc").read_text() == "old"


def test_inspect_refuses_fields_on_other_dims():
    from pdediff.errors import DataError

    ds = generate("darcy", 2, 8, progress=False)
    ds["u"] = ds["u"].expand_dims(t=[0.0, 1.0], axis=1)
    with pytest.raises(DataError, match=r"field 'u' has dims .*'t'.* needs"):
        pde_residuals(ds)


def test_cli_import_periodic_flag(tmp_path):
    src = neuraloperator_samples() / "darcy_test_16.pt"
    assert (
        main(["import", "neuraloperator", str(src), "--periodic", "-o", str(tmp_path / "p.nc")])
        == 0
    )
    assert main(["import", "neuraloperator", str(src), "-o", str(tmp_path / "b.nc")]) == 0
    periodic, bounded = open_fields(tmp_path / "p.nc"), open_fields(tmp_path / "b.nc")
    assert periodic["x"].attrs.get("periodic") == 1 and "periodic" not in bounded["x"].attrs
    assert periodic["x"].values[-1] < bounded["x"].values[-1] == 1.0
