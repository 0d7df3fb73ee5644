"""Helmholtz equation on a box: ``lap u + k^2 u = a`` on ``[0, L]^2``, ``u = 0`` on the boundary.

The DiffusionPDE Helmholtz benchmark (Huang et al. 2024, "DiffusionPDE: Generative
PDE-Solving Under Partial Observation", arXiv 2406.17763), with ``k = 1``: the source ``a``
is a Gaussian random field ``N(0, sigma^2 (-Delta + tau^2)^{-alpha})`` (``sigma = tau^(alpha
- 1)``) with ``alpha = 2``, ``tau = 3``, drawn in the cosine basis as the FNO data (Li et
al. 2021, arXiv 2010.08895).

The reference solver is the five-point Laplacian shifted by ``k^2`` on the interior nodes,
solved by a sparse LU; :func:`terms` is the same stencil in torch.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from pdediff.pde import _checks, _dirichlet
from pdediff.pde._dirichlet import boundary_residual
from pdediff.pde.base import Array, FieldInfo, Grid, Params, PDEError, PDEFamily

__all__ = ["FAMILY", "boundary_residual", "make_grid", "sample", "solve", "terms"]

MIN_RESOLUTION = 5


def make_grid(resolution: int, params: Params) -> Grid:
    """Node grid of ``resolution^2`` points on ``[0, length]^2``, boundaries included."""
    return _dirichlet.box_grid(resolution, FAMILY.params(params)["length"])


def sample(rng: np.random.Generator, grid: Grid, params: Params) -> dict[str, Array]:
    """Draw the source ``a ~ N(0, (-Delta + tau^2)^{-alpha})`` (cosine basis).

    Returns
    -------
    dict
        ``{"a": float64 array of grid.shape}``.
    """
    p = FAMILY.params(params)
    return {"a": _dirichlet.gaussian_field(rng, grid, p["alpha"], p["tau"], MIN_RESOLUTION)}


def _check_not_resonant(k: float, grid: Grid, hy: float, hx: float) -> None:
    """Refuse ``k^2`` at a Dirichlet eigenvalue of the discrete Laplacian (no unique ``u``).

    The eigenvalues of ``-lap`` (five-point, zero boundary) are
    ``4/hy^2 sin^2(pi m / (2 (ny-1))) + 4/hx^2 sin^2(pi n / (2 (nx-1)))``.
    """
    ny, nx = grid.shape
    ly = 4.0 / hy**2 * np.sin(np.pi * np.arange(1, ny - 1) / (2 * (ny - 1))) ** 2
    lx = 4.0 / hx**2 * np.sin(np.pi * np.arange(1, nx - 1) / (2 * (nx - 1))) ** 2
    gap = np.abs(ly[:, None] + lx[None, :] - k**2).min()
    # Near a resonance the LU may not fail, but u would be dominated by round-off.
    if gap <= 1e-9 * max(k**2, 1.0):
        raise PDEError(
            f"k^2 = {k**2:.6g} is a Dirichlet eigenvalue of the discrete Laplacian on this "
            "grid: the Helmholtz problem has no unique solution"
        )


def solve(inputs: Mapping[str, Array], grid: Grid, params: Params) -> dict[str, Array]:
    """Reference solution of ``lap u + k^2 u = a``, ``u = 0`` on the boundary.

    Parameters
    ----------
    inputs
        ``{"a": source, shape grid.shape}``; its boundary values do not enter.
    grid
        Node grid with dims ``("y", "x")``; the spacing is read from its coordinates.
    params
        Family parameters (``k`` is used).

    Returns
    -------
    dict
        ``{"a": a, "u": u}``, float64 arrays of ``grid.shape``.
    """
    k = FAMILY.params(params)["k"]
    hy, hx = _dirichlet.spacing(grid, MIN_RESOLUTION)
    a = _checks.check_array(inputs, "a", grid.shape)
    _check_not_resonant(k, grid, hy, hx)
    return {"a": a, "u": _dirichlet.solve_screened_poisson(a, hy, hx, k**2)}


def terms(
    fields: Mapping[str, torch.Tensor], grid: Grid, params: Params
) -> dict[str, torch.Tensor]:
    """Terms of the interior residual ``r = lap u + k^2 u - a`` (five-point Laplacian).

    The Dirichlet condition ``u = 0`` is not part of these terms: it concerns the boundary
    nodes, see :func:`boundary_residual`.

    Parameters
    ----------
    fields
        ``{"a": (N, ny, nx), "u": (N, ny, nx)}`` tensors on the node grid.
    grid, params
        The grid (spacing from its coordinates) and family parameters.

    Returns
    -------
    dict
        ``{"lap u": ..., "k^2 u": ..., "-a": ...}``, each ``(N, ny - 2, nx - 2)``.
    """
    k = FAMILY.params(params)["k"]
    hy, hx = _dirichlet.spacing(grid, MIN_RESOLUTION)
    a, u = _checks.check_tensors(fields, ("a", "u"), grid.shape)
    return {
        "lap u": _dirichlet.laplacian(u, hy, hx),
        "k^2 u": k**2 * _dirichlet.interior(u),
        "-a": -_dirichlet.interior(a),
    }


FAMILY = PDEFamily(
    name="helmholtz",
    equation="lap u + k^2 u = a on [0, L]^2",
    boundary=_dirichlet.BOUNDARY,
    fields={
        "a": FieldInfo("source", role="coefficient"),
        "u": FieldInfo("solution", role="solution"),
    },
    dims=_dirichlet.DIMS,
    defaults={"k": 1.0, "alpha": 2.0, "tau": 3.0, "length": 1.0},
    make_grid=make_grid,
    sample=sample,
    solve=solve,
    terms=terms,
    min_resolution=MIN_RESOLUTION,
    solution_map=_dirichlet.solution_map("helmholtz"),
)
