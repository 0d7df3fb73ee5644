"""Burgers family: reference solver against Cole-Hopf, residual orders, gradients, errors."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
import torch

from pdediff.pde import _periodic
from pdediff.pde.base import Grid, PDEError
from pdediff.pde.burgers import FAMILY

# Cole-Hopf: u = -2 nu phi_x / phi with phi = a + sum_k c_k exp(-nu (2 pi k)^2 t) cos(2 pi k x)
# solves u_t + u u_x = nu u_xx exactly (phi solves the heat equation and stays positive).
MILD = (0.01, 1.0, ((1, 0.5), (2, 0.2)))  # the default nu; analytic, |u| ~ 0.09
STEEP = (0.05, 1.0, ((1, 0.8),))  # |u| ~ 0.84, Reynolds number ~ 17


def cole_hopf(grid: Grid, nu: float, a: float, modes: tuple) -> np.ndarray:
    t = grid.coords["t"][:, None]
    x = grid.coords["x"][None, :]
    phi, phi_x = np.full((t.size, x.size), a), np.zeros((t.size, x.size))
    for k, c in modes:
        amp = c * np.exp(-nu * (2 * np.pi * k) ** 2 * t)
        phi = phi + amp * np.cos(2 * np.pi * k * x)
        phi_x = phi_x - amp * 2 * np.pi * k * np.sin(2 * np.pi * k * x)
    return -2.0 * nu * phi_x / phi


def relative_residual(u: np.ndarray, grid: Grid, params: dict) -> float:
    return FAMILY.relative_residual({"u": torch.from_numpy(u)[None]}, grid, params).item()


@pytest.mark.parametrize(("case", "tol"), [(MILD, 1e-12), (STEEP, 1e-8)])
def test_solver_matches_cole_hopf(case, tol):
    nu, a, modes = case
    params = FAMILY.params({"nu": nu})
    grid = FAMILY.grid(64, params)
    exact = cole_hopf(grid, nu, a, modes)
    u = FAMILY.solve({"u0": exact[0]}, grid, params)["u"]
    assert u.shape == (64, 64)
    assert np.array_equal(u[0], exact[0])
    assert np.abs(u - exact).max() / np.abs(exact).max() < tol


def test_solver_time_order_is_four():
    nu, a, modes = STEEP
    grid = FAMILY.grid(64, {"nu": nu})
    exact = cole_hopf(grid, nu, a, modes)
    errors = []
    for dt in (0.02, 0.01, 0.005):
        # cfl large: the time step is set by dt alone (stable here thanks to viscosity).
        params = FAMILY.params({"nu": nu, "dt": dt, "cfl": 100.0})
        errors.append(np.abs(FAMILY.solve({"u0": exact[0]}, grid, params)["u"] - exact).max())
    orders = [math.log2(a / b) for a, b in pairwise(errors)]
    # Measured: 3.58, 3.77 (ETDRK4).
    assert min(orders) > 3.3, orders


@pytest.mark.parametrize("case", [MILD, STEEP])
def test_residual_of_exact_solution_is_second_order(case):
    nu, a, modes = case
    params = FAMILY.params({"nu": nu})
    levels = []
    for n in (32, 64, 128, 256):
        grid = FAMILY.grid(n, params)
        levels.append(relative_residual(cole_hopf(grid, nu, a, modes), grid, params))
    orders = [math.log2(a / b) for a, b in pairwise(levels)]
    # Measured: MILD 1.99, 2.00, 2.00; STEEP 1.80, 1.92, 1.96 (levels 1.6e-2 .. 3.1e-4).
    assert 1.9 < orders[-1] < 2.1, orders
    assert min(orders) > 1.7, orders


def test_residual_of_reference_solution_converges():
    # One band-limited initial condition drawn at 32 points, refined exactly to 64 and 128,
    # so that the three grids discretise the same continuous problem.
    params = FAMILY.params()
    u0 = FAMILY.sample(np.random.default_rng(1), FAMILY.grid(32, params), params)["u0"]
    levels = []
    for n in (32, 64, 128):
        grid = FAMILY.grid(n, params)
        u0_n = _periodic.fourier_refine(torch.from_numpy(u0), n // 32).numpy()
        levels.append(
            relative_residual(FAMILY.solve({"u0": u0_n}, grid, params)["u"], grid, params)
        )
    ratios = [a / b for a, b in pairwise(levels)]
    # Measured (seed 1, sigma / sqrt(2) amplitude): 0.147, 0.041, 0.010 (ratios 3.6, 3.9).
    assert levels[-1] < 0.03, levels
    assert min(ratios) > 2.8 and ratios[-1] > 3.5, ratios


def test_draw_is_reproducible_and_starts_at_the_sample():
    params = FAMILY.params()
    grid = FAMILY.grid(32, params)
    u0 = FAMILY.sample(np.random.default_rng(3), grid, params)["u0"]
    u = FAMILY.draw(np.random.default_rng(3), grid, params)["u"]
    assert u.shape == grid.shape and u.dtype == np.float64
    assert np.array_equal(u[0], u0)
    assert np.array_equal(u, FAMILY.draw(np.random.default_rng(3), grid, params)["u"])
    assert np.isclose(grid.spacing("t"), 1.0 / 31) and np.isclose(grid.spacing("x"), 1.0 / 32)


def test_terms_shapes_and_batching():
    params = FAMILY.params()
    grid = FAMILY.grid(16, params)
    u = torch.stack(
        [
            torch.from_numpy(FAMILY.draw(np.random.default_rng(i), grid, params)["u"])
            for i in range(3)
        ]
    )
    terms = FAMILY.terms({"u": u}, grid, params)
    assert list(terms) == ["u_t", "(u^2/2)_x", "-nu u_xx"]
    assert all(t.shape == (3, 14, 16) for t in terms.values())
    batched = FAMILY.residual({"u": u}, grid, params)
    singles = torch.cat([FAMILY.residual({"u": u[i : i + 1]}, grid, params) for i in range(3)])
    torch.testing.assert_close(batched, singles, rtol=0, atol=1e-14)


def test_residual_gradcheck():
    params = FAMILY.params()
    grid = FAMILY.grid(8, params)
    u = torch.randn(2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: FAMILY.residual({"u": v}, grid, params), (u,))


def test_bad_inputs_raise_pde_error():
    params = FAMILY.params()
    grid = FAMILY.grid(16, params)
    u0 = np.zeros(16)
    with pytest.raises(PDEError, match="viscosity"):
        FAMILY.params({"viscosity": 0.1})
    with pytest.raises(PDEError, match="unknown parameter"):
        FAMILY.solve({"u0": u0}, grid, {**params, "viscosity": 0.1})
    with pytest.raises(PDEError, match="'u0'"):
        FAMILY.solve({"u0": np.zeros(15)}, grid, params)
    with pytest.raises(PDEError, match="'u0'"):
        FAMILY.solve({"u0": np.where(np.arange(16) == 3, np.nan, 0.0)}, grid, params)
    with pytest.raises(PDEError, match="'u0'"):
        FAMILY.solve({"a": u0}, grid, params)
    with pytest.raises(PDEError, match="'nu'"):
        FAMILY.solve({"u0": u0}, grid, {**params, "nu": -1.0})
    with pytest.raises(PDEError, match="'u'"):
        FAMILY.terms({"u": torch.zeros(1, 16, 15)}, grid, params)
    with pytest.raises(PDEError, match="'u'"):
        FAMILY.terms({"u": torch.zeros(16, 16)}, grid, params)
    with pytest.raises(PDEError, match="too small"):
        FAMILY.grid(4)
    with pytest.raises(PDEError, match="periodic"):
        FAMILY.solve({"u0": u0}, Grid(dict(grid.coords)), params)
    with pytest.raises(PDEError, match="dims"):
        FAMILY.solve({"u0": u0}, Grid({"x": grid.coords["x"], "t": grid.coords["t"]}), params)


def test_periodic_kernels():
    n, length = 24, 2.0
    x = torch.arange(n, dtype=torch.float64) * (length / n)
    k = 2 * math.pi / length * 3
    u = torch.sin(k * x)
    h = length / n
    torch.testing.assert_close(_periodic.spectral_derivative(u, h), k * torch.cos(k * x))
    torch.testing.assert_close(_periodic.spectral_derivative(u, h, order=2), -(k**2) * u)
    # Central differences: the symbols sin(k h) / h and -(2 sin(k h / 2) / h)^2.
    torch.testing.assert_close(
        _periodic.central_difference(u, h, dim=-1), math.sin(k * h) / h * torch.cos(k * x)
    )
    torch.testing.assert_close(
        _periodic.central_difference(u, h, dim=-1, order=2),
        -((2 * math.sin(k * h / 2) / h) ** 2) * u,
    )
    v = torch.randn(3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fine = _periodic.fourier_refine(v, 4)
    torch.testing.assert_close(fine[:, ::4], v)
    # The refined field is the same trigonometric polynomial: its spectrum holds no mode
    # above n / 2.
    assert torch.fft.rfft(fine)[:, n // 2 + 1 :].abs().max() < 1e-12
    assert _periodic.dealias_mask(n).sum() == 15  # |m| <= 7 < 8 = n / 3
    torch.testing.assert_close(
        _periodic.wavenumbers(n, h, real=True)[:4],
        2 * math.pi / length * torch.arange(4.0).double(),
    )
