"""Shared pieces of the Dirichlet problems on a box (Darcy, Poisson, Helmholtz).

All three families live on a node grid of ``[0, L_y] x [0, L_x]`` that includes the
boundary nodes, where ``u = 0``; the unknowns are the interior nodes.  This module holds

* the sparse matrix of ``-div(c grad .)`` on the interior nodes (the conservative
  five-point scheme, face coefficients by arithmetic mean) and the direct solve that
  returns the full grid with its zero boundary;
* the torch stencils of the same operators, so that the residual of a reference solution
  is at round-off;
* input checks shared by the three families.

The face-coefficient choice follows the FNO Darcy data (Li et al. 2021, "Fourier Neural
Operator for Parametric Partial Differential Equations", arXiv 2010.08895), which
DiffusionPDE (Huang et al. 2024, arXiv 2406.17763) trains on.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg
import torch
from threadpoolctl import ThreadpoolController

from pdediff.pde._checks import check_grid
from pdediff.pde.base import Array, Grid, PDEError, node_grid
from pdediff.pde.grf import grf_neumann

DIMS = ("y", "x")
BOUNDARY = (
    "Dirichlet: u = 0 on the four sides of the box; the boundary nodes are part of the "
    "grid and hold u = 0, the residual covers the interior nodes only"
)

#: Factors of an interior operator: SuperLU or :class:`BandedCholesky` (both ``solve(b, trans)``).
Factor = Any


def solution_map(name: str):
    """The differentiable solution map ``{"a": a} -> {"u": u(a)}`` of the Dirichlet family
    ``name``: the reference direct solve per member, gradients by the adjoint method
    (:func:`pdediff.pde.adjoint.solve_torch`)."""

    def mapped(fields, grid: Grid, params) -> dict[str, torch.Tensor]:
        # imported here: the adjoint module imports the families
        from pdediff.pde.adjoint import solve_torch
        from pdediff.pde.registry import get_family

        return {"u": solve_torch(get_family(name), fields["a"], grid, params)}

    return mapped


def box_grid(resolution: int, length: float) -> Grid:
    """Node grid of ``resolution^2`` points on ``[0, length]^2``, boundaries included."""
    return node_grid(resolution, DIMS, length)


def gaussian_field(
    rng: np.random.Generator, grid: Grid, alpha: float, tau: float, min_points: int
) -> Array:
    """``N(0, sigma^2 (-Delta + tau^2)^{-alpha})`` on the box, cosine basis (as FNO's data),
    with FNO's ``sigma = tau^(alpha - 1)``: see :func:`pdediff.pde.grf.grf_neumann`."""
    spacing(grid, min_points)
    return grf_neumann(rng, grid.shape, alpha, tau, lengths=grid.lengths)


def solve_screened_poisson(a: Array, hy: float, hx: float, k2: float = 0.0) -> Array:
    """``u`` with ``lap u + k2 u = a`` inside (five-point Laplacian), ``u = 0`` on the boundary.

    The matrix is ``-lap`` shifted by ``-k2`` (indefinite once ``k2`` exceeds the smallest
    eigenvalue of ``-lap``, which the sparse LU handles), hence the right-hand side ``-a``.
    Its factors come from :func:`shifted_laplacian` (computed once per grid and ``k2``).
    """
    return solve_factored(shifted_laplacian(a.shape, hy, hx, k2)[1], -a)


@functools.lru_cache(maxsize=16)
def shifted_laplacian(
    shape: tuple[int, int], hy: float, hx: float, k2: float = 0.0
) -> tuple[scipy.sparse.csc_array, scipy.sparse.linalg.SuperLU]:
    """``-lap - k2`` on the interior nodes and its LU factors (:func:`factor`), cached per
    grid and ``k2``: the Poisson and Helmholtz matrices do not depend on the source, so
    every solve after the first costs two triangular solves.  Treat both as read-only."""
    matrix = neg_div_c_grad_matrix(np.ones(shape), hy, hx)
    if k2:
        matrix = matrix - k2 * scipy.sparse.eye_array(matrix.shape[0], format="csc")
    return matrix, factor(matrix)


def spacing(grid: Grid, min_points: int) -> tuple[float, float]:
    """``(hy, hx)`` of a non-periodic ``("y", "x")`` node grid with enough points.

    Raises
    ------
    PDEError
        If the grid has other dims, a periodic dim, too few points or is not uniform.
    """
    check_grid(grid, DIMS, (), min_points)
    if grid.periodic:
        raise PDEError(
            f"grid has periodic dim(s) {sorted(grid.periodic)}, but this problem has a "
            "Dirichlet boundary: use a node grid (pdediff.pde.node_grid)"
        )
    return grid.spacing("y"), grid.spacing("x")


def _face_weights(c: Array, hy: float, hx: float) -> tuple[Array, Array, Array, Array]:
    """``c_face / h^2`` on the four faces of every interior node, each ``(ny - 2, nx - 2)``:
    south ``(i-1/2, j)``, north ``(i+1/2, j)``, west ``(i, j-1/2)``, east ``(i, j+1/2)``,
    with arithmetic-mean face coefficients (see :func:`neg_div_c_grad_matrix`)."""
    cy = 0.5 * (c[1:, :] + c[:-1, :])  # face (i+1/2, j), shape (ny-1, nx)
    cx = 0.5 * (c[:, 1:] + c[:, :-1])  # face (i, j+1/2), shape (ny, nx-1)
    south = cy[:-1, 1:-1] / hy**2
    north = cy[1:, 1:-1] / hy**2
    west = cx[1:-1, :-1] / hx**2
    east = cx[1:-1, 1:] / hx**2
    return south, north, west, east


def neg_div_c_grad_matrix(c: Array, hy: float, hx: float) -> scipy.sparse.csc_array:
    """Sparse matrix of ``-div(c grad u)`` on the interior nodes, ``u = 0`` on the boundary.

    Conservative five-point scheme: with face coefficients
    ``c_{i+1/2,j} = (c_{i,j} + c_{i+1,j}) / 2`` (likewise in ``x``),

        (A u)_{ij} = -[c_{i+1/2,j} (u_{i+1,j} - u_{ij}) - c_{i-1/2,j} (u_{ij} - u_{i-1,j})] / hy^2
                     - [c_{i,j+1/2} (u_{i,j+1} - u_{ij}) - c_{i,j-1/2} (u_{ij} - u_{i,j-1})] / hx^2.

    Parameters
    ----------
    c
        Coefficient on the full node grid, shape ``(ny, nx)``; positive for an SPD matrix.
    hy, hx
        Grid spacings.

    Returns
    -------
    scipy.sparse.csc_array
        Symmetric ``(m, m)`` matrix, ``m = (ny - 2)(nx - 2)``, unknowns in C order.
    """
    south, north, west, east = _face_weights(c, hy, hx)
    idx = np.arange(south.size).reshape(south.shape)
    # Couplings only between interior nodes: a neighbour on the boundary holds u = 0, so
    # its column drops out (a nonzero boundary value would move to the right-hand side).
    rows = [idx, idx[:-1, :], idx[1:, :], idx[:, :-1], idx[:, 1:]]
    cols = [idx, idx[1:, :], idx[:-1, :], idx[:, 1:], idx[:, :-1]]
    vals = [
        south + north + west + east,
        -north[:-1, :],
        -south[1:, :],
        -east[:, :-1],
        -west[:, 1:],
    ]
    data = np.concatenate([v.ravel() for v in vals])
    ij = (np.concatenate([r.ravel() for r in rows]), np.concatenate([k.ravel() for k in cols]))
    return scipy.sparse.csc_array((data, ij), shape=(idx.size, idx.size))


def solve_interior(matrix: scipy.sparse.sparray, rhs: Array) -> Array:
    """Solve ``matrix u = rhs`` on the interior nodes; return the full grid, zero boundary.

    Parameters
    ----------
    matrix
        Interior operator from :func:`neg_div_c_grad_matrix` (possibly shifted).
    rhs
        Right-hand side on the full node grid, shape ``(ny, nx)``; its boundary is ignored.
    """
    return solve_factored(factor(matrix), rhs)


def solve_factored(lu: Factor, rhs: Array, trans: str = "N") -> Array:
    """``A^{-1} rhs`` (``A^{-T}`` with ``trans="T"``) on the interior nodes from the factors
    ``lu`` of ``A``; the full grid with a zero boundary (the boundary of ``rhs`` is ignored)."""
    u = np.zeros(rhs.shape, dtype=np.float64)
    u[1:-1, 1:-1] = lu.solve(rhs[1:-1, 1:-1].ravel(), trans=trans).reshape(u[1:-1, 1:-1].shape)
    return u


class BandedCholesky:
    """``A = U^T U`` of a symmetric positive definite interior operator in LAPACK band storage.

    With the interior nodes in C order, the five-point matrix has half bandwidth
    ``kd = nx - 2``; the band Cholesky (``dpbtrf``) costs ``n kd^2`` flops and no fill-reducing
    ordering, which beats the sparse LU of :func:`factor` on the grids of the shipped models
    (2-4x at 64^2, see :data:`BAND_MAX`).  Same ``solve(rhs, trans)`` as SuperLU; ``A`` is
    symmetric, so ``trans`` changes nothing.

    Parameters
    ----------
    band
        ``(kd + 1, n)`` upper band: ``band[kd + i - j, j] = A[i, j]`` for ``i <= j``.

    Raises
    ------
    PDEError
        If ``A`` is not positive definite.
    """

    def __init__(self, band: Array) -> None:
        with _one_blas_thread():
            upper, info = scipy.linalg.lapack.dpbtrf(band, lower=0)
        if info > 0:
            raise PDEError(
                f"the discrete operator is not positive definite (leading minor {info} of "
                f"{band.shape[1]}); a Darcy coefficient must be positive"
            )
        self.upper = upper

    def solve(self, rhs: Array, trans: str = "N") -> Array:
        with _one_blas_thread():
            x, _ = scipy.linalg.lapack.dpbtrs(self.upper, rhs, lower=0)
        return x


@functools.cache
def _blas() -> ThreadpoolController:
    """The BLAS libraries loaded with scipy (found once, on first use)."""
    return ThreadpoolController()


def _one_blas_thread():
    """Run the band factorisation on one BLAS thread.  Its blocks are too small for threaded
    BLAS, whose threads then wait on torch's and other jobs' threads: with the default two
    OpenBLAS threads and one core busy a 64^2 factorisation took 13 ms, on one thread 2.4 ms
    (11 us for the switch)."""
    return _blas().limit(limits=1, user_api="blas")


#: Widest interior row (``nx - 2``) factored by :class:`BandedCholesky`.  On one core
#: (``benchmarks/factor_speed.py``, two other jobs sharing the two cores) the band took
#: 4.7 against 10.8 ms at 64^2, 33 against 54 ms at 128^2, and lost from 192^2 on (154
#: against 145 ms); its storage ``(kd + 1) n`` (16 MB a member at 128^2, kept for the
#: adjoint solve) also grows as the cube of the side.
BAND_MAX = 128


def neg_div_c_grad_factor(c: Array, hy: float, hx: float) -> Factor:
    """The factors of :func:`neg_div_c_grad_matrix` ``(c, hy, hx)`` (``c > 0``): the band
    Cholesky (:func:`neg_div_c_grad_band`) up to :data:`BAND_MAX` interior columns, the
    sparse LU above."""
    if c.shape[1] - 2 > BAND_MAX:
        return factor(neg_div_c_grad_matrix(c, hy, hx))
    return neg_div_c_grad_band(c, hy, hx)


def neg_div_c_grad_band(c: Array, hy: float, hx: float) -> BandedCholesky:
    """The band Cholesky of :func:`neg_div_c_grad_matrix` ``(c, hy, hx)``, built straight
    from the face weights (no sparse matrix)."""
    south, north, west, east = _face_weights(c, hy, hx)
    my, mx = south.shape
    band = np.zeros((mx + 1, my * mx))
    band[mx] = (south + north + west + east).ravel()
    band[mx - 1].reshape(my, mx)[:, 1:] = -west[:, 1:]  # A[i - 1, i]: west neighbour
    band[0, mx:] = -south[1:, :].ravel()  # A[i - mx, i]: south neighbour
    return BandedCholesky(band)


def factor(matrix: scipy.sparse.sparray) -> scipy.sparse.linalg.SuperLU:
    """The sparse LU (SuperLU) of an interior operator.

    The five-point matrices are structurally symmetric, so the fill-reducing ordering is a
    minimum degree one on ``A^T + A`` (40 % fewer fill-ins than SuperLU's default COLAMD at
    64^2, and a third faster); partial pivoting is kept for the indefinite Helmholtz matrix.
    A sparse LU rather than ``spsolve``: a singular matrix raises instead of returning NaNs
    with a warning.

    Raises
    ------
    PDEError
        If the matrix is singular.
    """
    try:
        return scipy.sparse.linalg.splu(matrix.tocsc(), permc_spec="MMD_AT_PLUS_A")
    except RuntimeError as err:
        raise PDEError(f"the discrete operator is singular: {err}") from err


def div_c_grad(c: torch.Tensor, u: torch.Tensor, hy: float, hx: float) -> torch.Tensor:
    """``div(c grad u)`` on the interior nodes, the stencil of :func:`neg_div_c_grad_matrix`.

    Parameters
    ----------
    c, u
        Tensors ``(..., ny, nx)`` on the node grid.
    hy, hx
        Grid spacings.

    Returns
    -------
    torch.Tensor
        ``(..., ny - 2, nx - 2)``; equals ``-(A u)`` of the sparse matrix up to round-off.
    """
    flux_y = 0.5 * (c[..., 1:, :] + c[..., :-1, :]) * (u[..., 1:, :] - u[..., :-1, :])
    flux_x = 0.5 * (c[..., :, 1:] + c[..., :, :-1]) * (u[..., :, 1:] - u[..., :, :-1])
    return (flux_y[..., 1:, 1:-1] - flux_y[..., :-1, 1:-1]) / hy**2 + (
        flux_x[..., 1:-1, 1:] - flux_x[..., 1:-1, :-1]
    ) / hx**2


def laplacian(u: torch.Tensor, hy: float, hx: float) -> torch.Tensor:
    """Five-point Laplacian of ``u`` (``(..., ny, nx)``) on the interior nodes."""
    centre = u[..., 1:-1, 1:-1]
    d2y = (u[..., 2:, 1:-1] - 2.0 * centre + u[..., :-2, 1:-1]) / hy**2
    d2x = (u[..., 1:-1, 2:] - 2.0 * centre + u[..., 1:-1, :-2]) / hx**2
    return d2y + d2x


def interior(t: torch.Tensor) -> torch.Tensor:
    """The interior nodes ``(..., ny - 2, nx - 2)`` of a node-grid tensor."""
    return t[..., 1:-1, 1:-1]


def boundary_residual(u: torch.Tensor) -> torch.Tensor:
    """Residual of the Dirichlet condition ``u = 0``: the boundary values of ``u``.

    The interior residual (``PDEFamily.terms``) does not see the boundary nodes; add a
    penalty on this one where the boundary values are not imposed by construction.

    Parameters
    ----------
    u
        ``(..., ny, nx)`` on the node grid.

    Returns
    -------
    torch.Tensor
        ``(..., 2 nx + 2 (ny - 2))``: bottom row, top row, then left and right columns
        without the corners.
    """
    sides = [u[..., 0, :], u[..., -1, :], u[..., 1:-1, 0], u[..., 1:-1, -1]]
    return torch.cat(sides, dim=-1)
