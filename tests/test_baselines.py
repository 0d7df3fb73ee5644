"""Classical baselines: the adjoint gradient against finite differences, the forward
baseline against the reference solver, recovery by the inverse fit, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from pdediff.baselines import (
    fit_objective,
    interpolate_then_solve,
    observations,
    pde_constrained_fit,
)
from pdediff.baselines.classical import snap_to_levels
from pdediff.errors import PdediffError
from pdediff.generate import sample_rng
from pdediff.pde.base import PDEError
from pdediff.pde.registry import get_family

DIRICHLET = ["darcy", "poisson", "helmholtz"]


def _sample(name: str, resolution: int, index: int = 0):
    fam = get_family(name)
    grid = fam.grid(resolution)
    return grid, fam.draw(sample_rng(123, index), grid, fam.params())


def _sensors(resolution: int, m: int, index: int = 0) -> np.ndarray:
    return sample_rng(7, index).choice(resolution**2, m, replace=False)


def _rel(x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def _central_difference(fun, a: np.ndarray, d: np.ndarray, h: float) -> float:
    return (fun(a + h * d)[0] - fun(a - h * d)[0]) / (2.0 * h)


# ----------------------------------------------------------------------- adjoint gradient


@pytest.mark.parametrize(("reg", "lam"), [("tv", 0.0), ("tv", 1e-6), ("tikhonov", 1e-6)])
def test_darcy_adjoint_gradient_matches_central_difference(reg, lam):
    grid, s = _sample("darcy", 12)
    idx = _sensors(12, 40)
    rng = np.random.default_rng(0)
    a = 3.0 + 9.0 * rng.random(grid.shape)  # a rough, positive coefficient

    def fun(x):
        return fit_objective("darcy", grid, None, x, idx, s["u"].ravel()[idx], reg, lam, 1.0)

    grad = fun(a)[1]
    for _ in range(3):
        d = rng.standard_normal(grid.shape)
        fd = _central_difference(fun, a, d, 1e-3)
        assert abs(np.sum(grad * d) - fd) <= 1e-5 * abs(fd)


@pytest.mark.parametrize("name", ["poisson", "helmholtz"])
def test_linear_families_adjoint_gradient(name):
    grid, s = _sample(name, 12)
    idx = _sensors(12, 40)
    rng = np.random.default_rng(1)
    a = rng.standard_normal(grid.shape)

    def fun(x):
        return fit_objective(name, grid, None, x, idx, s["u"].ravel()[idx], "tv", 1e-6, 0.1)

    grad = fun(a)[1]
    d = rng.standard_normal(grid.shape)
    fd = _central_difference(fun, a, d, 1e-3)
    assert abs(np.sum(grad * d) - fd) <= 1e-5 * abs(fd)
    # the boundary values of a source do not enter u: only R moves them
    data_only = fit_objective(name, grid, None, a, idx, s["u"].ravel()[idx], "tv", 0.0)[1]
    assert np.all(data_only[0, :] == 0.0) and np.all(data_only[:, -1] == 0.0)


# ----------------------------------------------------------------------- forward baseline


@pytest.mark.parametrize("name", DIRICHLET)
def test_forward_with_every_point_observed_is_the_reference(name):
    grid, s = _sample(name, 16)
    everywhere = np.ones(grid.shape, dtype=bool)
    out = interpolate_then_solve(name, grid, None, everywhere, s["a"])
    np.testing.assert_array_equal(out["a"], s["a"])
    np.testing.assert_array_equal(out["u"], s["u"])
    lin = interpolate_then_solve(name, grid, None, np.arange(s["a"].size), s["a"].ravel(), "linear")
    np.testing.assert_allclose(lin["u"], s["u"], rtol=1e-12, atol=1e-14 * np.abs(s["u"]).max())


@pytest.mark.parametrize("name", DIRICHLET)
@pytest.mark.parametrize("method", ["nearest", "linear"])
def test_forward_with_half_the_points_is_close(name, method):
    grid, s = _sample(name, 32)
    idx = _sensors(32, 512)
    out = interpolate_then_solve(name, grid, None, idx, s["a"].ravel()[idx], method)
    assert _rel(out["u"], s["u"]) < 0.08  # measured 3.4-5.1 %


def test_forward_navier_stokes_interpolates_w0_and_runs_the_flow():
    """Navier-Stokes: the coefficient is w0; every node observed gives the reference w(T),
    half of them a close one (w0 is smooth), and u sensors are for the Dirichlet families."""
    grid, s = _sample("navier_stokes", 16)
    everywhere = np.ones(grid.shape, dtype=bool)
    out = interpolate_then_solve("navier_stokes", grid, None, everywhere, s["w0"])
    np.testing.assert_array_equal(out["w"], s["w"])
    idx = _sensors(16, 128)
    half = interpolate_then_solve("navier_stokes", grid, None, idx, s["w0"].ravel()[idx], "linear")
    assert _rel(half["w"], s["w"]) < 0.15  # measured 8.1 %
    with pytest.raises(PdediffError, match="solution at its sensors needs a Dirichlet"):
        interpolate_then_solve(
            "navier_stokes", grid, None, idx, s["w0"].ravel()[idx], u_idx=idx, u_values=idx
        )


def test_forward_snaps_darcy_to_its_levels():
    grid, s = _sample("darcy", 16)
    idx = _sensors(16, 60)
    out = interpolate_then_solve("darcy", grid, None, idx, s["a"].ravel()[idx], "linear")
    assert set(np.unique(out["a"])) <= {3.0, 12.0}
    np.testing.assert_array_equal(snap_to_levels(np.array([7.4, 7.5, 7.6]), 3, 12), [3, 12, 12])


@pytest.mark.parametrize("name", DIRICHLET)
def test_forward_with_u_sensors_holds_them_and_agrees_with_the_reference(name):
    grid, s = _sample(name, 16)
    everywhere = np.ones(grid.shape, dtype=bool)
    idx = _sensors(16, 50)
    # exact a and exact u at the sensors: the pinned solve is the reference solution
    out = interpolate_then_solve(
        name, grid, None, everywhere, s["a"], u_idx=idx, u_values=s["u"].ravel()[idx]
    )
    np.testing.assert_allclose(out["u"], s["u"], atol=1e-12 * np.abs(s["u"]).max())
    # wrong a: the sensors of u are still matched (boundary sensors hold u = 0)
    out = interpolate_then_solve(
        name,
        grid,
        None,
        idx[:20],
        s["a"].ravel()[idx[:20]],
        u_idx=idx,
        u_values=s["u"].ravel()[idx],
    )
    np.testing.assert_allclose(out["u"].ravel()[idx], s["u"].ravel()[idx], atol=1e-12)


# ----------------------------------------------------------------------- inverse baseline


def test_inverse_recovers_a_smooth_coefficient_from_dense_data():
    fam = get_family("darcy")
    grid = fam.grid(16)
    y, x = grid.mesh()
    a = 6.0 + 3.0 * np.sin(np.pi * x) * np.sin(np.pi * y) + 1.5 * np.cos(2.0 * np.pi * x)
    u = fam.solve({"a": a}, grid, fam.params())["u"]
    out = pde_constrained_fit("darcy", grid, None, np.ones(grid.shape, bool), u, "tikhonov", 1e-12)
    assert _rel(out["a"], a) < 0.02
    assert out["info"]["converged"]


@pytest.mark.parametrize("name", ["poisson", "helmholtz"])
def test_inverse_linear_family_recovers_the_source_from_dense_data(name):
    grid, s = _sample(name, 16)
    out = pde_constrained_fit(name, grid, None, np.ones(grid.shape, bool), s["u"], "tikhonov", 0)
    # the boundary values of the source do not enter u: score the interior
    assert _rel(out["a"][1:-1, 1:-1], s["a"][1:-1, 1:-1]) < 0.02


def test_inverse_improves_on_the_initial_guess_with_sparse_data():
    grid, s = _sample("darcy", 16, index=2)
    idx = _sensors(16, 40)
    y = s["u"].ravel()[idx]
    out = pde_constrained_fit("darcy", grid, None, idx, y, "tv", lam=1e-9, eps=3.0)
    assert out["info"]["objective"] < 0.1 * out["info"]["objective_initial"]
    # the initial guess is a constant: its error rate is at least the minority fraction
    error = np.mean(out["a_thresholded"] != s["a"])
    constant_error = min(np.mean(s["a"] == 3.0), np.mean(s["a"] == 12.0))
    assert error < 0.5 * constant_error
    assert np.all((out["a"] >= 3.0) & (out["a"] <= 12.0))


# ----------------------------------------------------------------------------- bad input


def test_navier_stokes_fit_gradient_and_recovery():
    """The inverse fit of w0 differentiates the flow map by autograd: its gradient agrees
    with central differences, and dense data give back w0."""
    grid, s = _sample("navier_stokes", 16)
    idx = _sensors(16, 128)
    y = s["w"].ravel()[idx]

    def fun(a):
        return fit_objective("navier_stokes", grid, None, a, idx, y, "tikhonov", 1e-6)

    rng = np.random.default_rng(0)
    a, d = s["w0"] + 0.3 * rng.standard_normal(grid.shape), rng.standard_normal(grid.shape)
    slope = float(fun(a)[1].ravel() @ d.ravel())
    assert slope == pytest.approx(_central_difference(fun, a, d, 1e-4), rel=1e-6)
    everywhere = np.arange(s["w"].size)
    fit = pde_constrained_fit(
        "navier_stokes", grid, None, everywhere, s["w"].ravel(), "tikhonov", 1e-9, 300
    )
    assert set(fit) == {"w0", "w", "info"}
    assert _rel(fit["w0"], s["w0"]) < 0.02  # measured 0.73 %
    assert _rel(fit["w"], s["w"]) < 1e-3


def test_observation_checks():
    shape = (8, 8)
    with pytest.raises(PdediffError, match="out of range"):
        observations(np.array([0, 64]), np.zeros(2), shape)
    with pytest.raises(PdediffError, match="2 sensors"):
        observations(np.array([0, 1]), np.zeros(3), shape)
    with pytest.raises(PdediffError, match="NaN"):
        observations(np.array([0, 1]), np.array([0.0, np.nan]), shape)
    with pytest.raises(PdediffError, match="duplicates"):
        observations(np.array([3, 3]), np.zeros(2), shape)
    with pytest.raises(PdediffError, match="integer"):
        observations(np.array([0.5, 1.0]), np.zeros(2), shape)
    with pytest.raises(PdediffError, match="mask"):
        observations(np.ones((4, 4), bool), np.zeros(16), shape)
    with pytest.raises(PdediffError, match="no sensors"):
        observations(np.zeros(shape, bool), np.zeros(shape), shape)
    mask = np.zeros(shape, bool)
    mask[2, 3] = mask[5, 1] = True
    full = np.arange(64.0).reshape(shape)
    idx, vals = observations(mask, full, shape)
    np.testing.assert_array_equal(idx, [19, 41])
    np.testing.assert_array_equal(vals, [19.0, 41.0])


def test_baseline_errors_name_the_problem():
    grid, s = _sample("darcy", 12)
    idx = _sensors(12, 20)
    a_obs, u_obs = s["a"].ravel()[idx], s["u"].ravel()[idx]
    with pytest.raises(PdediffError, match="no classical baseline"):
        interpolate_then_solve("burgers", grid, None, idx, a_obs)
    with pytest.raises(PDEError, match="unknown PDE family"):
        pde_constrained_fit("heat", grid, None, idx, u_obs)
    with pytest.raises(PdediffError, match="interpolation method"):
        interpolate_then_solve("darcy", grid, None, idx, a_obs, method="cubic")
    with pytest.raises(PdediffError, match="snap"):
        interpolate_then_solve("poisson", grid, None, idx, a_obs, snap=True)
    with pytest.raises(PdediffError, match="both u_idx and u_values"):
        interpolate_then_solve("darcy", grid, None, idx, a_obs, u_idx=idx)
    with pytest.raises(PdediffError, match="line"):
        interpolate_then_solve("darcy", grid, None, np.array([0, 1]), a_obs[:2], "linear")
    with pytest.raises(PdediffError, match="regulariser"):
        pde_constrained_fit("darcy", grid, None, idx, u_obs, reg="l1")
    with pytest.raises(PdediffError, match="lam"):
        pde_constrained_fit("darcy", grid, None, idx, u_obs, lam=np.nan)
    with pytest.raises(PdediffError, match="a0"):
        pde_constrained_fit("darcy", grid, None, idx, u_obs, a0=np.ones((3, 3)))
    with pytest.raises(PdediffError, match="boundary"):
        pde_constrained_fit("darcy", grid, None, np.arange(12), np.zeros(12))
    with pytest.raises(PdediffError, match="NaN"):
        pde_constrained_fit("darcy", grid, None, idx, np.full(idx.size, np.nan))
    with pytest.raises(PDEError, match="unknown parameter"):
        interpolate_then_solve("darcy", grid, {"kappa": 1.0}, idx, a_obs)
