"""Navier-Stokes family: flow map against exact solutions, time orders, gradients, errors."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
import torch

from pdediff.pde.base import Grid, PDEError, node_grid
from pdediff.pde.navier_stokes import FAMILY, _Operators, flow_map, forcing


def as_batch(w: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(w)[None]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_advection_term_against_analytic():
    # w = A cos(2 pi x) + B cos(4 pi y): psi, u = psi_y, v = -psi_x by hand give
    # u . grad w = -1.5 A B sin(2 pi x) sin(4 pi y); the sign checks the velocity convention.
    params = FAMILY.params()
    grid = FAMILY.grid(16, params)
    y, x = grid.mesh()
    a, b = 0.7, -1.3
    w = a * np.cos(2 * np.pi * x) + b * np.cos(4 * np.pi * y)
    ops = _Operators.build(grid, params, torch.device("cpu"))
    advection = ops.forcing_hat - ops.nonlinear(torch.fft.rfft2(as_batch(w)))
    expected = -1.5 * a * b * np.sin(2 * np.pi * x) * np.sin(4 * np.pi * y)
    np.testing.assert_allclose(torch.fft.irfft2(advection, s=grid.shape)[0], expected, atol=1e-13)
    np.testing.assert_allclose(
        forcing(grid, 0.1), 0.1 * (np.sin(2 * np.pi * (x + y)) + np.cos(2 * np.pi * (x + y)))
    )


@pytest.mark.parametrize(
    ("modes", "overrides"),
    [
        # The forcing's shell |k| = 2 pi sqrt(2): w stays in it, so u . grad w = 0 and
        # w(t) = exp(-lam t) w0 + (1 - exp(-lam t)) f / lam, lam = nu |k|^2.
        (((1, 1), (1, -1)), {}),
        # A larger shell |k| = 10 pi (modes (3, 4), (4, 3), (5, 0), (0, 5)), no forcing.
        (((3, 4), (4, -3), (5, 0), (0, 5)), {"forcing": 0.0}),
    ],
)
def test_flow_map_matches_exact_single_shell_solution(modes, overrides):
    params = FAMILY.params(overrides)
    grid = FAMILY.grid(32, params)
    y, x = grid.mesh()
    rng = np.random.default_rng(0)
    w0 = sum(
        rng.normal() * np.cos(2 * np.pi * (kx * x + ky * y))
        + rng.normal() * np.sin(2 * np.pi * (kx * x + ky * y))
        for ky, kx in modes
    )
    lam = params["nu"] * 4 * np.pi**2 * (modes[0][0] ** 2 + modes[0][1] ** 2)
    decay = np.exp(-lam * params["t_final"])
    steady = forcing(grid, params["forcing"]).numpy() / lam
    exact = decay * w0 + (1 - decay) * steady
    w = FAMILY.solve({"w0": w0}, grid, params)["w"]
    # Crank-Nicolson keeps the steady state exactly; its error on the decaying part
    # w0 - steady is T lam^3 dt^2 / 12 relative (5e-11 for the first case, 8e-8 for the
    # second).  Allow twice that plus round-off.
    tol = params["t_final"] * lam**3 * params["dt"] ** 2 / 6 + 1e-13
    np.testing.assert_allclose(w, exact, rtol=0, atol=tol * np.abs(w0 - steady).max())


def nonlinear_initial_condition(n: int = 32, amplitude: float = 5.0) -> tuple[Grid, torch.Tensor]:
    # Five times the data's amplitude: advection changes w(T) by order one here.
    grid = FAMILY.grid(n)
    w0 = FAMILY.sample(np.random.default_rng(0), grid, FAMILY.params())["w0"]
    return grid, amplitude * as_batch(w0)


def test_flow_map_is_second_order_in_time():
    grid, w0 = nonlinear_initial_condition()
    params = FAMILY.params()
    fine = flow_map(w0, grid, params, 1.0 / 3200)
    errors = [rel(flow_map(w0, grid, params, 1.0 / n), fine) for n in (50, 100, 200, 400)]
    orders = [math.log2(a / b) for a, b in pairwise(errors)]
    # Measured: errors 3.6e-4, 9.0e-5, 2.2e-5, 5.5e-6; orders 2.00, 2.00, 2.02.
    assert all(1.9 < o < 2.1 for o in orders), (errors, orders)


def test_residual_of_reference_solution_is_second_order_in_residual_dt():
    params = FAMILY.params()
    grid = FAMILY.grid(32, params)
    w0 = FAMILY.sample(np.random.default_rng(1), grid, params)["w0"]
    w = FAMILY.solve({"w0": w0}, grid, {**params, "dt": 1.0 / 3200})["w"]
    fields = {"w0": as_batch(w0), "w": as_batch(w)}
    levels = [
        FAMILY.relative_residual(fields, grid, {**params, "residual_dt": rdt}).item()
        for rdt in (0.1, 0.05, 0.025, 0.0125)
    ]
    orders = [math.log2(a / b) for a, b in pairwise(levels)]
    # Measured: 2.2e-4, 5.5e-5, 1.4e-5, 3.4e-6; orders 1.99, 1.99, 2.00.
    assert all(1.9 < o < 2.1 for o in orders), (levels, orders)
    default = FAMILY.relative_residual(fields, grid, params).item()
    assert default < 1e-5  # measured 2.2e-6 at residual_dt = 1e-2
    same_step = FAMILY.relative_residual(fields, grid, {**params, "residual_dt": 1.0 / 3200})
    assert same_step.item() < 1e-13


def test_residual_gradcheck_and_batching():
    params = FAMILY.params({"t_final": 0.1, "residual_dt": 0.05})
    grid = FAMILY.grid(8, params)
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(2, 8, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(2, 8, 8, dtype=torch.float64, generator=gen, requires_grad=True)

    def residual(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return FAMILY.residual({"w0": a, "w": b}, grid, params)

    assert torch.autograd.gradcheck(residual, (w0, w))
    batched = residual(w0, w)
    singles = torch.cat([residual(w0[i : i + 1], w[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(batched, singles, rtol=0, atol=1e-14)


def test_terms_names_shapes_and_dtype():
    params = FAMILY.params()
    grid = FAMILY.grid(16, params)
    fields = {"w0": torch.zeros(3, 16, 16), "w": torch.zeros(3, 16, 16)}
    terms = FAMILY.terms(fields, grid, params)
    assert list(terms) == ["w", "-Phi_T(w0)"]
    assert all(t.shape == (3, 16, 16) and t.dtype == torch.float32 for t in terms.values())


def test_draw_keeps_the_initial_condition():
    params = FAMILY.params({"dt": 1e-2})
    grid = FAMILY.grid(16, params)
    w0 = FAMILY.sample(np.random.default_rng(5), grid, params)["w0"]
    out = FAMILY.draw(np.random.default_rng(5), grid, params)
    assert set(out) == {"w0", "w"}
    assert np.array_equal(out["w0"], w0)
    assert out["w"].shape == (16, 16) and out["w"].dtype == np.float64
    assert FAMILY.fields["w0"].role == "coefficient" and FAMILY.fields["w"].role == "solution"


def test_cfl_guard_keeps_a_large_field_stable():
    # Ten times the data's amplitude at 64^2 makes the plain step unstable at dt = 0.05
    # (Courant number ~ 8); the guard refines the step instead.
    grid, w0 = nonlinear_initial_condition(64, amplitude=10.0)
    params = FAMILY.params()
    guarded = flow_map(w0, grid, params, 0.05)
    assert torch.isfinite(guarded).all()
    assert rel(guarded, flow_map(w0, grid, params, 2e-3)) < 1e-3


def test_bad_inputs_raise_pde_error():
    params = FAMILY.params()
    grid = FAMILY.grid(16, params)
    w0 = np.zeros((16, 16))
    with pytest.raises(PDEError, match="reynolds"):
        FAMILY.params({"reynolds": 1e3})
    with pytest.raises(PDEError, match="unknown parameter"):
        FAMILY.solve({"w0": w0}, grid, {**params, "reynolds": 1e3})
    with pytest.raises(PDEError, match="'w0'"):
        FAMILY.solve({"w0": np.zeros((16, 15))}, grid, params)
    with pytest.raises(PDEError, match="'w0'"):
        FAMILY.solve({"w0": np.full((16, 16), np.nan)}, grid, params)
    with pytest.raises(PDEError, match="'dt'"):
        FAMILY.solve({"w0": w0}, grid, {**params, "dt": 0.0})
    good = torch.zeros(1, 16, 16)
    with pytest.raises(PDEError, match="'w'"):
        FAMILY.terms({"w0": good, "w": torch.zeros(1, 16, 8)}, grid, params)
    with pytest.raises(PDEError, match="'w'"):
        FAMILY.terms({"w0": good}, grid, params)
    with pytest.raises(PDEError, match="'w'"):
        FAMILY.terms({"w0": good, "w": torch.zeros(2, 16, 16)}, grid, params)
    with pytest.raises(PDEError, match="too small"):
        FAMILY.grid(4)
    with pytest.raises(PDEError, match="periodic"):
        FAMILY.solve({"w0": w0}, node_grid(16), params)
