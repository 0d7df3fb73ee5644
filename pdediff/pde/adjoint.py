"""The reference solvers of the Dirichlet families as differentiable maps ``a -> u(a)``.

Darcy, Poisson and Helmholtz are all a linear system on the interior nodes ``I`` of the box
(``u = 0`` on the boundary):

* Darcy: ``A(a) u_I = f`` with ``A(a) = -div(a grad .)`` (five-point, arithmetic-mean faces);
* Poisson: ``A u_I = -a_I`` with ``A = -lap``;
* Helmholtz: ``A u_I = -a_I`` with ``A = -lap - k^2``.

:func:`solve_torch` runs the reference direct solve (band Cholesky of Darcy's SPD matrix,
the cached sparse LU of Poisson / Helmholtz) on each batch member in float64 and gives the
exact gradient of the *discrete* solution by the adjoint method.  For a loss ``J(u)``
with ``r = dJ/du``, differentiating ``A du = db - dA u`` gives

    dJ = r^T du = p^T (db - dA u),        where   A^T p = r          (one adjoint solve).

Darcy: ``db = 0`` and ``p^T A(a) u = sum_faces c_face (u_+ - u_-)(p_+ - p_-) / h^2``
(summation by parts with ``p = 0`` on the boundary, ``+``/``-`` the two nodes of a face);
the face coefficient ``(a_+ + a_-) / 2`` is linear in ``a``, so

    dJ/da_k = -1/2 sum_{faces touching k} (u_+ - u_-)(p_+ - p_-) / h^2,

the discrete ``-grad u . grad p``.  Poisson / Helmholtz: ``dA = 0`` and ``db = -da_I``, so
``dJ/da_I = -p`` and zero on the boundary nodes (which do not enter ``u``).

This is how the posterior solver keeps the physics exact when a solver exists (the issue's
"guide through the differentiable solver"), and what the classical PDE-constrained fit
(:mod:`pdediff.baselines.classical`) differentiates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse
import torch

from pdediff.pde import _dirichlet, helmholtz
from pdediff.pde.base import Array, Grid, PDEError, PDEFamily

__all__ = ["SOLVER_FAMILIES", "adjoint_gradient", "linear_system", "solve_torch", "state"]

#: Families whose solution is ``u(a)`` of one linear system, differentiable here.
SOLVER_FAMILIES = ("darcy", "poisson", "helmholtz")


def _check_family(fam: PDEFamily) -> None:
    if fam.name not in SOLVER_FAMILIES:
        raise PDEError(
            f"no differentiable solver for {fam.name!r}; available: {', '.join(SOLVER_FAMILIES)}"
        )


def linear_system(
    fam: PDEFamily, a: Array, grid: Grid, p: Mapping[str, float]
) -> tuple[scipy.sparse.csc_array, Array]:
    """``(A, b)`` of the discrete problem ``A u_I = b_I`` on the interior nodes.

    ``A`` is the sparse matrix of the family's reference solver, ``b`` a full-grid array
    whose interior is the right-hand side.  ``p`` are the family's full parameters.
    """
    hy, hx = _setup(fam, a, grid, p)
    if fam.name == "darcy":
        return _dirichlet.neg_div_c_grad_matrix(a, hy, hx), np.full(grid.shape, p["f"])
    return _shifted(fam, grid, hy, hx, p)[0], -a


def state(fam: PDEFamily, a: Array, grid: Grid, p: Mapping[str, float]) -> tuple[Array, Any]:
    """``u(a)`` on the full grid and the factors of ``A`` (reused by the adjoint solve).

    Poisson's and Helmholtz's ``A`` does not depend on ``a``: its LU factors are computed
    once per grid and ``k`` and shared by every later call, so a solve costs two triangular
    solves; Darcy's ``A(a)`` (symmetric positive definite) is factored for every ``a``
    (:func:`pdediff.pde._dirichlet.neg_div_c_grad_factor`).
    """
    hy, hx = _setup(fam, a, grid, p)
    if fam.name == "darcy":
        lu, rhs = _dirichlet.neg_div_c_grad_factor(a, hy, hx), np.full(grid.shape, p["f"])
    else:
        lu, rhs = _shifted(fam, grid, hy, hx, p)[1], -a
    return _dirichlet.solve_factored(lu, rhs), lu


def _setup(fam: PDEFamily, a: Array, grid: Grid, p: Mapping[str, float]) -> tuple[float, float]:
    """``(hy, hx)`` after the checks of the family, grid and coefficient."""
    _check_family(fam)
    hy, hx = _dirichlet.spacing(grid, fam.min_resolution)
    if fam.name == "darcy" and np.any(a <= 0.0):
        raise PDEError(f"permeability must be positive, min is {a.min():.6g}")
    if fam.name == "helmholtz":
        helmholtz._check_not_resonant(p["k"], grid, hy, hx)
    return hy, hx


def _shifted(fam: PDEFamily, grid: Grid, hy: float, hx: float, p: Mapping[str, float]):
    """The cached ``-lap - k^2`` (``k = 0`` for Poisson) and its LU factors."""
    k = p["k"] if fam.name == "helmholtz" else 0.0
    return _dirichlet.shifted_laplacian(grid.shape, hy, hx, k**2)


def adjoint_gradient(fam: PDEFamily, u: Array, lu: Any, r: Array, hy: float, hx: float) -> Array:
    """``(du/da)^T r`` by the adjoint method (equations in the module docstring).

    ``r`` is ``dJ/du`` on the full grid; only its interior enters (``u`` is fixed on the
    boundary).
    """
    p = _dirichlet.solve_factored(lu, r, trans="T")
    if fam.name != "darcy":
        return -p  # db/da = -I on the interior, zero on the boundary (p = 0 there)
    # Each face contributes (du dp / h^2) / 2 to both of its nodes: the derivative of the
    # arithmetic-mean face coefficient (a_+ + a_-) / 2.
    face_y = 0.5 * np.diff(u, axis=0) * np.diff(p, axis=0) / hy**2
    face_x = 0.5 * np.diff(u, axis=1) * np.diff(p, axis=1) / hx**2
    g = np.zeros_like(u)
    g[:-1, :] += face_y
    g[1:, :] += face_y
    g[:, :-1] += face_x
    g[:, 1:] += face_x
    return -g


class _Solve(torch.autograd.Function):
    """``a (N, ny, nx) -> u (N, ny, nx)``, the reference solve per member, adjoint backward."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, fam: PDEFamily, grid: Grid, p: Mapping[str, float]):
        arrays = a.detach().to("cpu", torch.float64).numpy()
        if not np.isfinite(arrays).all():
            # FloatingPointError, as a sampler that blew up: the caller says what to lower
            raise FloatingPointError(f"non-finite coefficient reached the {fam.name} solver")
        states = [state(fam, ai, grid, p) for ai in arrays]
        ctx.fam, ctx.grid, ctx.states = fam, grid, states
        u = np.stack([s[0] for s in states])
        return torch.from_numpy(u).to(a)

    @staticmethod
    def backward(ctx, grad_u: torch.Tensor):
        r = grad_u.detach().to("cpu", torch.float64).numpy()
        hy, hx = ctx.grid.spacing("y"), ctx.grid.spacing("x")
        g = np.stack(
            [
                adjoint_gradient(ctx.fam, u, lu, ri, hy, hx)
                for (u, lu), ri in zip(ctx.states, r, strict=True)
            ]
        )
        return torch.from_numpy(g).to(grad_u), None, None, None


def solve_torch(
    family: PDEFamily, a: torch.Tensor, grid: Grid, params: Mapping[str, float] | None = None
) -> torch.Tensor:
    """The family's reference solution ``u(a)`` of a batch, differentiable in ``a``.

    Parameters
    ----------
    family
        Darcy, Poisson or Helmholtz (:data:`SOLVER_FAMILIES`).
    a
        Coefficient (Darcy permeability, positive) or source, ``(N, ny, nx)`` or
        ``(ny, nx)`` on the family's node grid; any float dtype and device.
    grid, params
        The grid and parameter overrides.

    Returns
    -------
    torch.Tensor
        ``u`` of ``a``'s shape, dtype and device (zero on the boundary).  Each member costs
        one factorisation (Darcy; Poisson and Helmholtz reuse cached factors); its backward
        one more triangular solve with the same factors.
    """
    _check_family(family)
    p = family.params(params or {})
    if a.shape[-2:] != grid.shape:
        raise PDEError(f"a has grid shape {tuple(a.shape[-2:])}, the grid is {grid.shape}")
    if a.ndim == 2:
        return _Solve.apply(a[None], family, grid, p)[0]
    if a.ndim != 3:
        raise PDEError(f"a must be (N, ny, nx) or (ny, nx), got shape {tuple(a.shape)}")
    return _Solve.apply(a, family, grid, p)
