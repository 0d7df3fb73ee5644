"""The differentiable reference solve ``a -> u(a)``: values and adjoint gradients."""

import numpy as np
import pytest
import torch

from pdediff.pde import PDEError
from pdediff.pde.adjoint import solve_torch
from pdediff.pde.registry import get_family


def _coefficient(name: str, grid, seed: int = 0) -> torch.Tensor:
    fam = get_family(name)
    rng = np.random.default_rng(seed)
    a = np.stack([fam.sample(rng, grid, {})["a"] for _ in range(2)])
    if name == "darcy":  # a smooth positive field keeps the finite differences meaningful
        a = 3.0 + 9.0 * rng.random(a.shape)
    return torch.tensor(a, dtype=torch.float64)


@pytest.mark.parametrize("name", ["darcy", "poisson", "helmholtz"])
def test_solve_torch_is_the_reference_solver(name):
    fam = get_family(name)
    grid = fam.make_grid(9, {})
    a = _coefficient(name, grid)
    u = solve_torch(fam, a, grid)
    for i in range(len(a)):
        ref = fam.solve({"a": a[i].numpy()}, grid, {})["u"]
        np.testing.assert_allclose(u[i].numpy(), ref, rtol=1e-12, atol=1e-14)


def test_cached_factors_follow_the_grid_and_k():
    """Poisson's and Helmholtz's LU is computed once per grid and k: a second grid or k
    must not reuse the first one's factors."""
    fam = get_family("helmholtz")
    for n, k in [(9, 3.0), (9, 5.0), (11, 3.0), (9, 3.0)]:
        grid = fam.make_grid(n, {"k": k})
        a = _coefficient("helmholtz", grid)
        u = solve_torch(fam, a, grid, {"k": k})
        ref = fam.solve({"a": a[1].numpy()}, grid, {"k": k})["u"]
        np.testing.assert_allclose(u[1].numpy(), ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["darcy", "poisson", "helmholtz"])
def test_solve_torch_gradient_matches_finite_differences(name):
    fam = get_family(name)
    grid = fam.make_grid(7, {})
    a = _coefficient(name, grid, seed=1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: solve_torch(fam, t, grid), (a,), eps=1e-6, atol=1e-6)


def test_solve_torch_keeps_dtype_and_unbatched_shape():
    fam = get_family("poisson")
    grid = fam.make_grid(8, {})
    a = torch.ones(8, 8, dtype=torch.float32)
    u = solve_torch(fam, a, grid)
    assert u.shape == (8, 8) and u.dtype == torch.float32
    assert torch.all(u[0] == 0) and torch.all(u[:, -1] == 0)


def test_solve_torch_bad_input():
    grid = get_family("darcy").make_grid(8, {})
    with pytest.raises(PDEError, match="no differentiable solver for 'burgers'"):
        solve_torch(get_family("burgers"), torch.ones(1, 8, 8), grid)
    with pytest.raises(PDEError, match="grid shape"):
        solve_torch(get_family("darcy"), torch.ones(1, 9, 9), grid)
    with pytest.raises(PDEError, match="must be positive"):
        solve_torch(get_family("darcy"), -torch.ones(1, 8, 8), grid)


def test_solve_torch_refuses_non_finite_input():
    fam = get_family("poisson")
    grid = fam.make_grid(8, {})
    with pytest.raises(FloatingPointError, match="non-finite coefficient reached the poisson"):
        solve_torch(fam, torch.full((1, 8, 8), float("nan")), grid)
