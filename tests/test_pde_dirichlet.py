"""Darcy, Poisson and Helmholtz on a box with u = 0 on the boundary: reference solvers,
residual stencils, samplers and input checks.

Run with ``pytest -s`` to see the measured convergence orders and residual levels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pdediff.pde import _dirichlet, darcy, helmholtz, poisson
from pdediff.pde.base import Grid, PDEError, node_grid, periodic_grid

FAMILIES = {"darcy": darcy, "poisson": poisson, "helmholtz": helmholtz}
RESOLUTIONS = (17, 33, 65)
# (Ly, Lx) of the domains: the unit square, another length, and a box with hy != hx.
DOMAINS = {"unit": (1.0, 1.0), "L=2.5": (2.5, 2.5), "rect 0.5x2": (0.5, 2.0)}
# Parameters away from the defaults, so that the residual tests see them enter.
NON_DEFAULT = {"darcy": {"f": 2.0}, "poisson": {}, "helmholtz": {"k": 3.0}}


def box_grid(n: int, ly: float, lx: float) -> Grid:
    return Grid({"y": np.linspace(0.0, ly, n), "x": np.linspace(0.0, lx, n)})


def manufactured(grid: Grid) -> dict[str, np.ndarray]:
    """Smooth ``u`` (zero on the boundary), coefficient ``c`` and the sources they imply.

    ``u = sin(p x) sin(q y)``, ``c = 1 + 0.5 sin(r x) cos(s y)``; returns ``u``, ``c``,
    ``lap u`` and ``-div(c grad u)`` in closed form.
    """
    y, x = grid.mesh()
    ly, lx = grid.length("y"), grid.length("x")
    p, q, r, s = np.pi / lx, 2 * np.pi / ly, 2 * np.pi / lx, np.pi / ly
    u = np.sin(p * x) * np.sin(q * y)
    u_x = p * np.cos(p * x) * np.sin(q * y)
    u_y = q * np.sin(p * x) * np.cos(q * y)
    lap_u = -(p**2 + q**2) * u
    c = 1.0 + 0.5 * np.sin(r * x) * np.cos(s * y)
    c_x = 0.5 * r * np.cos(r * x) * np.cos(s * y)
    c_y = -0.5 * s * np.sin(r * x) * np.sin(s * y)
    neg_div = -(c * lap_u + c_x * u_x + c_y * u_y)
    return {"u": u, "c": c, "lap_u": lap_u, "neg_div_c_grad_u": neg_div}


def darcy_ridge(grid: Grid, f: float) -> dict[str, np.ndarray]:
    """Exact smooth ``(a, u)`` with ``-div(a grad u) = f`` (constant), varying along
    ``s = 3 x / Lx + 2 y / Ly``: ``a = 1 / (1 + cos(s) / 2)``, ``(a u')' = -f / |grad s|^2``.
    Not zero on the boundary: it checks the interior equation only."""
    y, x = grid.mesh()
    gx, gy = 3.0 / grid.length("x"), 2.0 / grid.length("y")
    s = gx * x + gy * y
    big_f = f / (gx**2 + gy**2)
    a = 1.0 / (1.0 + 0.5 * np.cos(s))
    u = -big_f * (0.5 * s**2 + 0.5 * (s * np.sin(s) + np.cos(s)))
    return {"a": a, "u": u}


def reference_solve(name: str, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """``(numerical u, exact u)`` of the manufactured problem of family ``name``."""
    m = manufactured(grid)
    if name == "darcy":
        return darcy._solve(m["c"], m["neg_div_c_grad_u"], grid), m["u"]
    module = FAMILIES[name]
    params = module.FAMILY.params()
    source = m["lap_u"] + (params["k"] ** 2 * m["u"] if name == "helmholtz" else 0.0)
    return module.FAMILY.solve({"a": source}, grid, params)["u"], m["u"]


def orders(errors: list[float]) -> np.ndarray:
    """Observed orders between successive grids that halve h."""
    e = np.asarray(errors)
    return np.log2(e[:-1] / e[1:])


def as_tensors(fields: dict[str, np.ndarray], dtype=torch.float64) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v, dtype=dtype)[None] for k, v in fields.items()}


@pytest.mark.parametrize("domain", list(DOMAINS))
@pytest.mark.parametrize("name", list(FAMILIES))
def test_solver_converges_at_second_order(name: str, domain: str) -> None:
    ly, lx = DOMAINS[domain]
    max_err, l2_err = [], []
    for n in RESOLUTIONS:
        u_h, u = reference_solve(name, box_grid(n, ly, lx))
        max_err.append(np.abs(u_h - u).max())
        l2_err.append(np.sqrt(np.mean((u_h - u) ** 2)))
    o_max, o_l2 = orders(max_err), orders(l2_err)
    print(f"\n{name} {domain}: solver order max {np.round(o_max, 3)}, L2 {np.round(o_l2, 3)}")
    np.testing.assert_allclose(o_max, 2.0, atol=0.2)
    np.testing.assert_allclose(o_l2, 2.0, atol=0.2)


def exact_fields(name: str, grid: Grid, params: dict[str, float]) -> dict[str, np.ndarray]:
    """Exact smooth ``(a, u)`` satisfying the family's equation."""
    if name == "darcy":
        return darcy_ridge(grid, params["f"])
    m = manufactured(grid)
    a = m["lap_u"] + (params["k"] ** 2 * m["u"] if name == "helmholtz" else 0.0)
    return {"a": a, "u": m["u"]}


@pytest.mark.parametrize("domain", list(DOMAINS))
@pytest.mark.parametrize("name", list(FAMILIES))
def test_residual_of_exact_solution_converges_at_second_order(name: str, domain: str) -> None:
    family = FAMILIES[name].FAMILY
    params = family.params(NON_DEFAULT[name])
    ly, lx = DOMAINS[domain]
    rel = []
    for n in RESOLUTIONS:
        grid = box_grid(n, ly, lx)
        fields = as_tensors(exact_fields(name, grid, params))
        rel.append(family.relative_residual(fields, grid, params).item())
    o = orders(rel)
    print(f"\n{name} {domain}: relative residual {np.array(rel)}, order {np.round(o, 3)}")
    np.testing.assert_allclose(o, 2.0, atol=0.2)


def test_div_c_grad_stencil_converges_on_a_general_coefficient() -> None:
    ly, lx = DOMAINS["rect 0.5x2"]
    rel = []
    for n in RESOLUTIONS:
        grid = box_grid(n, ly, lx)
        m = {k: torch.from_numpy(v) for k, v in manufactured(grid).items()}
        stencil = -_dirichlet.div_c_grad(m["c"], m["u"], grid.spacing("y"), grid.spacing("x"))
        exact = _dirichlet.interior(m["neg_div_c_grad_u"])
        rel.append(((stencil - exact).norm() / exact.norm()).item())
    np.testing.assert_allclose(orders(rel), 2.0, atol=0.2)


def test_stencil_matches_sparse_matrix() -> None:
    grid = box_grid(9, 0.7, 1.3)
    rng = np.random.default_rng(1)
    c = rng.uniform(1.0, 3.0, grid.shape)
    u = np.zeros(grid.shape)
    u[1:-1, 1:-1] = rng.standard_normal((7, 7))
    matrix = _dirichlet.neg_div_c_grad_matrix(c, grid.spacing("y"), grid.spacing("x"))
    via_matrix = (matrix @ u[1:-1, 1:-1].ravel()).reshape(7, 7)
    via_torch = -_dirichlet.div_c_grad(
        torch.from_numpy(c), torch.from_numpy(u), grid.spacing("y"), grid.spacing("x")
    )
    np.testing.assert_allclose(via_torch.numpy(), via_matrix, rtol=1e-12, atol=1e-9)
    assert abs(matrix - matrix.T).max() == 0.0


@pytest.mark.parametrize("shape", [(9, 9), (7, 12), (13, 6)])
def test_band_cholesky_is_the_sparse_lu_solve(shape, monkeypatch) -> None:
    """Darcy's band Cholesky solves the same system as the sparse LU (both transposes), on
    square and non-square grids, and the size switch falls back to the sparse LU."""
    grid = Grid({"y": np.linspace(0.0, 0.8, shape[0]), "x": np.linspace(0.0, 1.1, shape[1])})
    hy, hx = grid.spacing("y"), grid.spacing("x")
    rng = np.random.default_rng(2)
    c = np.where(rng.random(grid.shape) > 0.5, 12.0, 3.0) * rng.uniform(0.5, 2.0, grid.shape)
    rhs = rng.standard_normal(grid.shape)
    lu = _dirichlet.factor(_dirichlet.neg_div_c_grad_matrix(c, hy, hx))
    band = _dirichlet.neg_div_c_grad_factor(c, hy, hx)
    assert isinstance(band, _dirichlet.BandedCholesky)
    for trans in ("N", "T"):
        want = _dirichlet.solve_factored(lu, rhs, trans)
        got = _dirichlet.solve_factored(band, rhs, trans)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14 * np.abs(want).max())
        assert not got[[0, -1], :].any() and not got[:, [0, -1]].any()
    monkeypatch.setattr(_dirichlet, "BAND_MAX", min(shape) - 3)
    assert not isinstance(_dirichlet.neg_div_c_grad_factor(c, hy, hx), _dirichlet.BandedCholesky)


def test_band_cholesky_refuses_an_indefinite_operator() -> None:
    c = np.ones((8, 8))
    c[3:5, 3:5] = -5.0
    with pytest.raises(PDEError, match="not positive definite"):
        _dirichlet.neg_div_c_grad_factor(c, 0.1, 0.1)


@pytest.mark.parametrize("n", [64, 128])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_residual_of_reference_solution_is_round_off(name: str, n: int) -> None:
    family = FAMILIES[name].FAMILY
    params = family.params()
    grid = family.grid(n)
    fields = family.draw(np.random.default_rng(2024), grid, params)
    assert fields["u"].dtype == np.float64 and fields["u"].shape == grid.shape
    tensors = as_tensors(fields)
    rel = family.relative_residual(tensors, grid, params).item()
    print(f"\n{name}: relative residual of the reference solution at {n}^2: {rel:.3e}")
    assert rel < 1e-8
    assert torch.all(FAMILIES[name].boundary_residual(tensors["u"]) == 0.0)
    if name == "darcy":  # maximum principle: f = 1 > 0 and u = 0 on the boundary
        assert fields["u"][1:-1, 1:-1].min() > 0.0
    # float32 fields give float32 terms, and a residual at float32 round-off.
    rel32 = family.relative_residual(as_tensors(fields, torch.float32), grid, params)
    assert rel32.dtype == torch.float32 and rel32.item() < 1e-3


@pytest.mark.parametrize("name", list(FAMILIES))
def test_residual_is_differentiable(name: str) -> None:
    family = FAMILIES[name].FAMILY
    params = family.params()
    grid = box_grid(6, 0.8, 1.1)
    gen = torch.Generator().manual_seed(0)
    a = (1.0 + torch.rand(2, 6, 6, generator=gen, dtype=torch.float64)).requires_grad_()
    u = torch.randn(2, 6, 6, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, u: family.residual({"a": a, "u": u}, grid, params), (a, u)
    )


@pytest.mark.parametrize("name", list(FAMILIES))
def test_residual_is_batched(name: str) -> None:
    family = FAMILIES[name].FAMILY
    params = family.params()
    grid = family.grid(16)
    rng = np.random.default_rng(3)
    draws = [family.draw(rng, grid, params) for _ in range(3)]
    batch = {k: torch.from_numpy(np.stack([d[k] for d in draws])) for k in ("a", "u")}
    batched = family.terms(batch, grid, params)
    for i, d in enumerate(draws):
        single = family.terms(as_tensors(d), grid, params)
        for key, term in single.items():
            assert term.shape == (1, 14, 14)
            torch.testing.assert_close(batched[key][i : i + 1], term, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_sampling_is_reproducible(name: str) -> None:
    family = FAMILIES[name].FAMILY
    params, grid = family.params(), family.grid(33)
    first = family.sample(np.random.default_rng(7), grid, params)["a"]
    again = family.sample(np.random.default_rng(7), grid, params)["a"]
    other = family.sample(np.random.default_rng(8), grid, params)["a"]
    assert first.shape == grid.shape
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_darcy_coefficient_is_thresholded_near_half_and_half() -> None:
    family = darcy.FAMILY
    params, grid = family.params(), family.grid(33)
    rng = np.random.default_rng(11)
    samples = np.stack([family.sample(rng, grid, params)["a"] for _ in range(40)])
    assert set(np.unique(samples)) == {3.0, 12.0}
    fraction = float(np.mean(samples == 12.0))
    print(f"\ndarcy: fraction of a_high over 40 samples at 33^2: {fraction:.3f}")
    assert 0.4 < fraction < 0.6
    custom = family.sample(rng, grid, family.params({"a_high": 5.0, "a_low": 0.5}))["a"]
    assert set(np.unique(custom)) <= {0.5, 5.0}


def test_helmholtz_refuses_a_resonant_wavenumber() -> None:
    grid = node_grid(9)
    h = grid.spacing("x")
    # Smallest Dirichlet eigenvalue of the five-point -lap on this grid.
    lam = 2 * 4.0 / h**2 * np.sin(np.pi / 16) ** 2
    with pytest.raises(PDEError, match="eigenvalue"):
        helmholtz.FAMILY.solve({"a": np.ones(grid.shape)}, grid, {"k": np.sqrt(lam)})


@pytest.mark.parametrize("name", list(FAMILIES))
def test_bad_input_is_a_clear_error(name: str) -> None:
    family = FAMILIES[name].FAMILY
    params, grid = family.params(), family.grid(9)
    a = np.ones(grid.shape)
    good = {"a": torch.ones(2, 9, 9), "u": torch.zeros(2, 9, 9)}
    with pytest.raises(PDEError, match="bogus"):
        family.solve({"a": a}, grid, {"bogus": 1.0})
    with pytest.raises(PDEError, match="bogus"):
        family.terms(good, grid, {"bogus": 1.0})
    with pytest.raises(PDEError, match=r"'a' must have shape \(9, 9\).*got \(8, 9\)"):
        family.solve({"a": a[1:]}, grid, params)
    with pytest.raises(PDEError, match="missing input field 'a'"):
        family.solve({"u": a}, grid, params)
    with pytest.raises(PDEError, match=r"'u' must have shape \('N', 9, 9\), got \(9, 9\)"):
        family.terms({"a": good["a"], "u": torch.zeros(9, 9)}, grid, params)
    with pytest.raises(PDEError, match="'u' has batch size 3"):
        family.terms({"a": good["a"], "u": torch.zeros(3, 9, 9)}, grid, params)
    with pytest.raises(PDEError, match="missing field 'u'"):
        family.terms({"a": good["a"]}, grid, params)
    with pytest.raises(PDEError, match="resolution 4 is too small"):
        family.grid(4)
    with pytest.raises(PDEError, match="too small"):
        family.solve({"a": np.ones((4, 4))}, node_grid(4), params)
    with pytest.raises(PDEError, match="periodic"):
        family.solve({"a": a}, periodic_grid(9), params)
    with pytest.raises(PDEError, match="dims"):
        family.solve({"a": a}, node_grid(9, ("t", "x")), params)
    with pytest.raises(PDEError, match="'y' is not uniform"):
        Grid({"y": np.linspace(0.0, 1.0, 9) ** 2, "x": np.linspace(0.0, 1.0, 9)})


def test_darcy_refuses_a_non_positive_permeability() -> None:
    grid = darcy.FAMILY.grid(9)
    a = np.ones(grid.shape)
    a[4, 4] = -1.0
    with pytest.raises(PDEError, match="positive"):
        darcy.FAMILY.solve({"a": a}, grid, darcy.FAMILY.params())


def test_family_metadata() -> None:
    for name, module in FAMILIES.items():
        family = module.FAMILY
        assert family.name == name
        assert family.dims == ("y", "x")
        assert list(family.fields) == ["a", "u"]
        assert family.fields["a"].role == "coefficient"
        assert "u = 0" in family.boundary
        grid = family.grid(17, {"length": 2.0})
        assert grid.shape == (17, 17) and grid.length("x") == pytest.approx(2.0)
    assert darcy.FAMILY.defaults == {
        "alpha": 2.0,
        "tau": 3.0,
        "a_high": 12.0,
        "a_low": 3.0,
        "f": 1.0,
        "length": 1.0,
    }
    assert helmholtz.FAMILY.defaults["k"] == 1.0
