"""Steady Darcy flow on a box: ``-div(a grad u) = f`` on ``[0, L]^2``, ``u = 0`` on the boundary.

The DiffusionPDE Darcy benchmark (Huang et al. 2024, "DiffusionPDE: Generative PDE-Solving
Under Partial Observation", arXiv 2406.17763) reuses the FNO data (Li et al. 2021, "Fourier
Neural Operator for Parametric Partial Differential Equations", arXiv 2010.08895): the
permeability ``a`` is a Gaussian random field ``N(0, sigma^2 (-Delta + tau^2)^{-alpha})``
(``sigma = tau^(alpha - 1)``) with ``alpha = 2``, ``tau = 3``, thresholded to ``a_high =
12`` where it is ``>= 0`` and ``a_low = 3`` elsewhere; the source is ``f = 1``.

The reference solver is the conservative five-point scheme with face coefficients by
arithmetic mean, solved by a sparse LU; :func:`terms` is the same stencil in torch, so the
residual of a reference solution is at round-off.
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
    """Draw a piecewise-constant permeability, as the FNO / DiffusionPDE Darcy data.

    ``a = a_high`` where ``g >= 0`` and ``a_low`` elsewhere, with
    ``g ~ N(0, (-Delta + tau^2)^{-alpha})`` in the cosine (Neumann) basis
    (:func:`pdediff.pde.grf.grf_neumann`).

    Returns
    -------
    dict
        ``{"a": float64 array of grid.shape}``.
    """
    p = FAMILY.params(params)
    g = _dirichlet.gaussian_field(rng, grid, p["alpha"], p["tau"], MIN_RESOLUTION)
    return {"a": np.where(g >= 0.0, p["a_high"], p["a_low"])}


def _solve(a: Array, f: float | Array, grid: Grid) -> Array:
    """``u`` with ``-div(a grad u) = f`` inside and ``u = 0`` on the boundary.

    ``f`` is a constant or an array of the grid's shape (a manufactured source in tests);
    only its interior values are used.
    """
    hy, hx = _dirichlet.spacing(grid, MIN_RESOLUTION)
    if np.any(a <= 0.0):
        raise PDEError(f"permeability 'a' must be positive everywhere, min is {a.min():.6g}")
    rhs = np.broadcast_to(np.asarray(f, dtype=np.float64), grid.shape)
    return _dirichlet.solve_factored(_dirichlet.neg_div_c_grad_factor(a, hy, hx), rhs)


def solve(inputs: Mapping[str, Array], grid: Grid, params: Params) -> dict[str, Array]:
    """Reference solution of ``-div(a grad u) = f``, ``u = 0`` on the boundary.

    Parameters
    ----------
    inputs
        ``{"a": permeability, shape grid.shape, positive}``.
    grid
        Node grid with dims ``("y", "x")``; the spacing is read from its coordinates.
    params
        Family parameters (``f`` is used).

    Returns
    -------
    dict
        ``{"a": a, "u": u}``, float64 arrays of ``grid.shape``.
    """
    p = FAMILY.params(params)
    a = _checks.check_array(inputs, "a", grid.shape)
    return {"a": a, "u": _solve(a, p["f"], grid)}


def terms(
    fields: Mapping[str, torch.Tensor], grid: Grid, params: Params
) -> dict[str, torch.Tensor]:
    """Terms of the interior residual ``r = -div(a grad u) - f``.

    ``-div(a grad u)`` uses the conservative five-point stencil with face coefficients by
    arithmetic mean (that of the reference solver).  The Dirichlet condition ``u = 0`` is
    not part of these terms: it concerns the boundary nodes, see :func:`boundary_residual`.

    Parameters
    ----------
    fields
        ``{"a": (N, ny, nx), "u": (N, ny, nx)}`` tensors on the node grid.
    grid, params
        The grid (spacing from its coordinates) and family parameters.

    Returns
    -------
    dict
        ``{"-div(a grad u)": ..., "-f": ...}``, each ``(N, ny - 2, nx - 2)``.
    """
    p = FAMILY.params(params)
    hy, hx = _dirichlet.spacing(grid, MIN_RESOLUTION)
    a, u = _checks.check_tensors(fields, ("a", "u"), grid.shape)
    flux_term = -_dirichlet.div_c_grad(a, u, hy, hx)
    return {"-div(a grad u)": flux_term, "-f": torch.full_like(flux_term, -p["f"])}


FAMILY = PDEFamily(
    name="darcy",
    equation="-div(a grad u) = f on [0, L]^2",
    boundary=_dirichlet.BOUNDARY,
    fields={
        "a": FieldInfo("permeability (diffusion coefficient)", role="coefficient"),
        "u": FieldInfo("pressure (solution)", role="solution"),
    },
    dims=_dirichlet.DIMS,
    defaults={"alpha": 2.0, "tau": 3.0, "a_high": 12.0, "a_low": 3.0, "f": 1.0, "length": 1.0},
    make_grid=make_grid,
    sample=sample,
    solve=solve,
    terms=terms,
    min_resolution=MIN_RESOLUTION,
    solution_map=_dirichlet.solution_map("darcy"),
)
