"""Classical baselines: the Dirichlet problems on a box (Darcy, Poisson, Helmholtz) and
Navier-Stokes.

A learned solver has to beat what a numerical analyst would do with the same sparse data:

* **forward** (:func:`interpolate_then_solve`): fill the coefficient ``a`` from its sensors
  by nearest-neighbour (or linear) interpolation, optionally snap it to the two Darcy
  levels, then run the family's reference solver;
* **inverse** (:func:`pde_constrained_fit`): find ``a`` minimising

      J(a) = 1/(2M) ||P u(a) - y||^2 + lam R(a),

  where ``u(a)`` solves the discrete PDE exactly (the reference five-point scheme), ``P``
  picks the ``M`` sensor nodes and ``R`` is Tikhonov or smoothed total variation; the
  gradient comes from the adjoint method (one extra sparse solve per evaluation), the
  minimiser is L-BFGS-B (with the bounds ``a_low <= a <= a_high`` for Darcy).

Navier-Stokes has both: its coefficient is the initial vorticity ``w0`` and its solution
``w(T)``; the forward baseline interpolates ``w0`` and runs the reference solver, the inverse
fit differentiates the pseudo-spectral flow map by autograd (``PDEFamily.solution_map``).

The published figures of these baselines on the DiffusionPDE Darcy setting are in
``ANCHORS.md`` ("Classical baselines"); ``benchmarks/classical_baselines.py`` reproduces them.

The adjoint gradient of ``u(a)`` is :mod:`pdediff.pde.adjoint` (its docstring has the
equations); the fit adds the regulariser's gradient.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import scipy.optimize
import scipy.sparse
import scipy.sparse.linalg
import torch
from scipy.interpolate import griddata
from scipy.spatial import QhullError, cKDTree

from pdediff.errors import PdediffError
from pdediff.pde import _dirichlet
from pdediff.pde.adjoint import adjoint_gradient, linear_system, state
from pdediff.pde.base import Array, Grid, PDEFamily
from pdediff.pde.registry import get_family

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_LAM",
    "FORWARD_SUPPORTED",
    "SUPPORTED",
    "fill_field",
    "fit_objective",
    "interpolate_then_solve",
    "observations",
    "pde_constrained_fit",
    "regulariser",
    "snap_to_levels",
]

SUPPORTED = ("darcy", "poisson", "helmholtz")
#: Families of the forward baseline (a coefficient field and a reference solver) and of
#: the inverse fit (a differentiable solver: the adjoint one of the Dirichlet systems, or
#: autograd through ``PDEFamily.solution_map``).
FORWARD_SUPPORTED = INVERSE_SUPPORTED = (*SUPPORTED, "navier_stokes")
METHODS = ("nearest", "linear")
REGULARISERS = ("tv", "tikhonov")

# Chosen by the validation sweep of benchmarks/classical_baselines.py (validation samples,
# never the test ones; benchmarks/results/classical_baselines.json) at 32^2 with 500 sensors
# of u, the family's default parameters.  lam weighs R against a misfit in units of u^2, so
# it depends on the data: with 3 % sensors (31 at 32^2) the Darcy TV sweep chose 1e-10, and
# Darcy Tikhonov took the smallest weight tried.
# Navier-Stokes (w0 from sensors of w(T)): chosen by the same sweep at 32^2, 500 sensors.
NS_LAM_TV, NS_LAM_TIK, NS_EPS = 1e-7, 1e-8, 10.0
DEFAULT_LAM: dict[tuple[str, str], float] = {
    ("darcy", "tv"): 1e-11,
    ("darcy", "tikhonov"): 1e-13,
    ("poisson", "tv"): 1e-10,
    ("poisson", "tikhonov"): 1e-10,
    ("helmholtz", "tv"): 1e-10,
    ("helmholtz", "tikhonov"): 1e-10,
    ("navier_stokes", "tv"): NS_LAM_TV,
    ("navier_stokes", "tikhonov"): NS_LAM_TIK,
}
# TV smoothing, in units of |grad a| (a per unit length; a Darcy jump is ~9 / h).
DEFAULT_EPS: dict[str, float] = {
    "darcy": 100.0,
    "poisson": 3.0,
    "helmholtz": 3.0,
    "navier_stokes": NS_EPS,
}


# --------------------------------------------------------------------------- input checks


def _family(family: str | PDEFamily, supported: tuple[str, ...] = SUPPORTED) -> PDEFamily:
    """The family, if it has a classical baseline here; a clear error otherwise."""
    fam = family if isinstance(family, PDEFamily) else get_family(family)
    if fam.name not in supported:
        raise PdediffError(
            f"no classical baseline for PDE family {fam.name!r}; supported: {', '.join(supported)}"
        )
    return fam


def observations(
    obs_idx: Array, obs_values: Array, shape: tuple[int, ...], name: str = "a"
) -> tuple[Array, Array]:
    """Validated sensor positions (flat C-order indices) and values.

    Parameters
    ----------
    obs_idx
        Either ``(M,)`` distinct integer indices into the flattened grid (C order), or a
        boolean mask of ``shape`` (``M`` true entries).
    obs_values
        ``(M,)`` values (for a mask: in the C order of its true entries), or, with a mask,
        a full array of ``shape`` read at the mask.
    shape
        Grid shape.
    name
        Field name, for the error messages.

    Returns
    -------
    idx, values
        ``(M,)`` int64 and float64 arrays.

    Raises
    ------
    PdediffError
        Empty, out of range, repeated or non-integer indices; a mask of the wrong shape;
        values of the wrong length or not finite.
    """
    idx = np.asarray(obs_idx)
    values = np.asarray(obs_values, dtype=np.float64)
    size = int(np.prod(shape))
    if idx.dtype == bool:
        if idx.shape != tuple(shape):
            raise PdediffError(f"mask of {name!r} has shape {idx.shape}, the grid {tuple(shape)}")
        flat = np.flatnonzero(idx)
        if values.shape == tuple(shape):
            values = values[idx]
    else:
        if idx.ndim != 1 or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
            raise PdediffError(
                f"sensor indices of {name!r} must be a 1-D integer array of flat grid indices "
                f"or a boolean mask of shape {tuple(shape)}; got dtype {idx.dtype}, "
                f"shape {idx.shape}"
            )
        flat = idx.astype(np.int64)
        bad = flat[(flat < 0) | (flat >= size)]
        if bad.size:
            raise PdediffError(
                f"sensor indices of {name!r} out of range [0, {size}) for grid "
                f"{tuple(shape)}: {bad[:5].tolist()}"
            )
        if np.unique(flat).size != flat.size:
            raise PdediffError(f"sensor indices of {name!r} contain duplicates")
    if flat.size == 0:
        raise PdediffError(f"no sensors of {name!r}: at least one observation is needed")
    if values.shape != (flat.size,):
        raise PdediffError(
            f"{flat.size} sensors of {name!r} but observed values of shape {values.shape}"
        )
    if not np.all(np.isfinite(values)):
        raise PdediffError(f"observed values of {name!r} contain NaN or inf")
    return flat, values


# ------------------------------------------------------------------------ forward baseline


def fill_field(grid: Grid, idx: Array, values: Array, method: str = "nearest") -> Array:
    """Interpolate sensor values to every node of ``grid``, in physical coordinates.

    Parameters
    ----------
    grid
        The grid (its coordinates give the distances, so anisotropic spacing is respected).
    idx, values
        Flat sensor indices and values (see :func:`observations`).
    method
        ``"nearest"`` (value of the closest sensor) or ``"linear"`` (piecewise linear on
        the Delaunay triangulation of the sensors, nearest outside their convex hull).

    Returns
    -------
    numpy.ndarray
        float64 array of ``grid.shape``.
    """
    if method not in METHODS:
        raise PdediffError(f"unknown interpolation method {method!r}; known: {METHODS}")
    points = np.stack([m.ravel() for m in grid.mesh()], axis=1)
    _, nearest = cKDTree(points[idx]).query(points)
    filled = values[nearest]
    if method == "linear":
        try:
            linear = griddata(points[idx], values, points, method="linear")
        except QhullError as err:
            raise PdediffError(
                f"linear interpolation needs >= 3 sensors not on one line ({idx.size} given): "
                f"use method='nearest' ({str(err).splitlines()[0]})"
            ) from None
        filled = np.where(np.isnan(linear), filled, linear)  # NaN = outside the hull
    return filled.reshape(grid.shape)


def snap_to_levels(a: Array, low: float, high: float) -> Array:
    """Each value replaced by the nearer of ``low`` and ``high`` (ties go to ``high``)."""
    return np.where(a >= 0.5 * (low + high), high, low)


def _solve_pinned(
    fam: PDEFamily, a: Array, grid: Grid, p: Mapping[str, float], u_idx: Array, u_vals: Array
) -> Array:
    """Solve the PDE with ``u`` held at its observed values on the observed interior nodes.

    The equations of the observed nodes are replaced by ``u_k = y_k`` (data insertion), so
    the solution matches the sensors and satisfies the PDE everywhere else.  Sensors on the
    boundary are ignored: there ``u = 0`` by the boundary condition.
    """
    matrix, rhs = linear_system(fam, a, grid, p)
    ny, nx = grid.shape
    iy, ix = np.unravel_index(u_idx, grid.shape)
    inside = (iy > 0) & (iy < ny - 1) & (ix > 0) & (ix < nx - 1)
    rows = (iy[inside] - 1) * (nx - 2) + (ix[inside] - 1)
    pinned = np.zeros(matrix.shape[0])
    pinned[rows] = 1.0
    matrix = scipy.sparse.diags_array(1.0 - pinned) @ matrix + scipy.sparse.diags_array(pinned)
    rhs = np.array(rhs, dtype=np.float64)
    rhs[iy[inside], ix[inside]] = u_vals[inside]
    return _dirichlet.solve_interior(matrix.tocsc(), rhs)


def interpolate_then_solve(
    family: str | PDEFamily,
    grid: Grid,
    params: Mapping[str, float] | None,
    obs_idx: Array,
    obs_values: Array,
    method: str | None = None,
    snap: bool | None = None,
    *,
    u_idx: Array | None = None,
    u_values: Array | None = None,
) -> dict[str, Array]:
    """Forward baseline: interpolate the coefficient from its sensors, then solve the PDE.

    Parameters
    ----------
    family
        ``"darcy"``, ``"poisson"`` or ``"helmholtz"`` (or the family object); for Poisson
        and Helmholtz ``a`` is the source.  ``"navier_stokes"``: the coefficient is the
        initial vorticity ``w0``, the solution ``w(T)`` (the distances of the interpolation
        do not wrap around the periodic box).
    grid, params
        The family's grid and parameter overrides (``None``: the defaults).
    obs_idx, obs_values
        Sensors of the coefficient: flat indices ``(M,)`` or a boolean mask, and their
        values (see :func:`observations`).
    method
        ``"nearest"`` or ``"linear"`` (see :func:`fill_field`); default ``"nearest"`` for
        Darcy (two levels: the nearest sensor's level, then snapped) and ``"linear"`` for
        the smooth Gaussian-random-field coefficients of the other families.
    snap
        Replace the interpolated ``a`` by the nearer of the Darcy levels ``a_low`` /
        ``a_high`` (default: ``True`` for Darcy; an error for the other families).
    u_idx, u_values
        Optional sensors of ``u``.  With them the solve holds ``u`` at the observed
        interior nodes (their equations replaced by ``u_k = y_k``), so the result matches
        the data and satisfies the PDE elsewhere (Darcy, Poisson, Helmholtz); without them
        the family's reference solver (``FAMILY.solve``) is used.

    Returns
    -------
    dict
        The filled coefficient and the solution (``{"a", "u"}``; ``{"w0", "w"}`` for
        Navier-Stokes), float64 arrays of ``grid.shape``.
    """
    fam = _family(family, FORWARD_SUPPORTED)
    p = fam.params(params)
    name = fam.coefficient_solution()[0]
    idx, vals = observations(obs_idx, obs_values, grid.shape, name)
    if method is None:
        method = "nearest" if fam.name == "darcy" else "linear"
    a = fill_field(grid, idx, vals, method)
    snap = fam.name == "darcy" if snap is None else snap
    if snap:
        if fam.name != "darcy":
            raise PdediffError(f"snap=True needs two coefficient levels (darcy), not {fam.name!r}")
        a = snap_to_levels(a, p["a_low"], p["a_high"])
    if u_idx is None and u_values is None:
        return fam.solve({name: a}, grid, p)
    if u_idx is None or u_values is None:
        raise PdediffError("give both u_idx and u_values, or neither")
    if fam.name not in SUPPORTED:
        raise PdediffError(
            f"holding the solution at its sensors needs a Dirichlet family "
            f"({', '.join(SUPPORTED)}), not {fam.name!r}: give the coefficient's sensors only"
        )
    ui, uv = observations(u_idx, u_values, grid.shape, "u")
    return {"a": a, "u": _solve_pinned(fam, a, grid, p, ui, uv)}


# ------------------------------------------------------------------ inverse: the objective


def _gradient(a: Array, hy: float, hx: float) -> tuple[Array, Array]:
    """Forward differences ``(d_y a, d_x a)`` on the grid, zero past the last node."""
    gy = np.zeros_like(a)
    gx = np.zeros_like(a)
    gy[:-1, :] = np.diff(a, axis=0) / hy
    gx[:, :-1] = np.diff(a, axis=1) / hx
    return gy, gx


def _gradient_adjoint(vy: Array, vx: Array, hy: float, hx: float) -> Array:
    """Transpose of :func:`_gradient`: ``D^T (vy, vx)`` (a discrete ``-div``)."""
    out = np.zeros_like(vy)
    out[1:, :] += vy[:-1, :] / hy
    out[:-1, :] -= vy[:-1, :] / hy
    out[:, 1:] += vx[:, :-1] / hx
    out[:, :-1] -= vx[:, :-1] / hx
    return out


def regulariser(a: Array, grid: Grid, reg: str, eps: float) -> tuple[float, Array]:
    """Value and gradient of the regulariser ``R(a)`` (integrals by the node rule).

    With forward differences ``D a = (d_y a, d_x a)`` and cell area ``h_y h_x``:

    * ``"tikhonov"``: ``R = 1/2 sum h_y h_x |D a|^2`` (``~ 1/2 int |grad a|^2``),
      ``dR/da = h_y h_x D^T D a``;
    * ``"tv"``: ``R = sum h_y h_x (sqrt(|D a|^2 + eps^2) - eps)`` (``~ int |grad a|`` for
      small ``eps``; zero for a constant), ``dR/da = h_y h_x D^T (D a / sqrt(|D a|^2 + eps^2))``.

    Returns
    -------
    value, gradient
        ``R(a)`` and ``dR/da`` (array of ``a``'s shape).
    """
    hy, hx = grid.spacing("y"), grid.spacing("x")
    gy, gx = _gradient(a, hy, hx)
    area = hy * hx
    if reg == "tikhonov":
        return 0.5 * area * float(np.sum(gy**2 + gx**2)), area * _gradient_adjoint(gy, gx, hy, hx)
    if reg == "tv":
        if not eps > 0.0:
            raise PdediffError(f"TV smoothing eps must be positive, got {eps}")
        norm = np.sqrt(gy**2 + gx**2 + eps**2)
        value = area * float(np.sum(norm - eps))
        return value, area * _gradient_adjoint(gy / norm, gx / norm, hy, hx)
    raise PdediffError(f"unknown regulariser {reg!r}; known: {REGULARISERS}")


Misfit = Callable[[Array], tuple[float, Array, Array]]


def _dirichlet_misfit(fam: PDEFamily, grid: Grid, p: Mapping[str, float], idx: Array, y: Array):
    def misfit(a: Array) -> tuple[float, Array, Array]:
        u, lu = state(fam, a, grid, p)
        diff = u.ravel()[idx] - y
        r = np.zeros(u.size)
        r[idx] = diff / idx.size
        g = adjoint_gradient(fam, u, lu, r.reshape(u.shape), grid.spacing("y"), grid.spacing("x"))
        return 0.5 * float(diff @ diff) / idx.size, g, u

    return misfit


def _autograd_misfit(fam: PDEFamily, grid: Grid, p: Mapping[str, float], idx: Array, y: Array):
    coef, sol = fam.coefficient_solution()
    index, target = torch.from_numpy(idx), torch.from_numpy(y)

    def misfit(a: Array) -> tuple[float, Array, Array]:
        at = torch.from_numpy(np.array(a, dtype=np.float64))[None].requires_grad_(True)
        u = fam.solution_map({coef: at}, grid, p)[sol][0]
        diff = u.reshape(-1)[index] - target
        value = 0.5 * diff.dot(diff) / idx.size
        (g,) = torch.autograd.grad(value, at)
        return float(value.detach()), g[0].numpy(), u.detach().numpy()

    return misfit


def _misfit(fam: PDEFamily, grid: Grid, p: Mapping[str, float], idx: Array, y: Array) -> Misfit:
    """``a -> (1/(2M) ||P u(a) - y||^2, its gradient in a, u(a))``: the adjoint gradient of
    the sparse LU for the Dirichlet families, autograd through the family's
    ``solution_map`` otherwise (Navier-Stokes: the flow map)."""
    if fam.name in SUPPORTED:
        return _dirichlet_misfit(fam, grid, p, idx, y)
    return _autograd_misfit(fam, grid, p, idx, y)


def fit_objective(
    family: str | PDEFamily,
    grid: Grid,
    params: Mapping[str, float] | None,
    a: Array,
    obs_idx: Array,
    obs_u: Array,
    reg: str = "tv",
    lam: float | None = None,
    eps: float | None = None,
) -> tuple[float, Array]:
    """``J(a) = 1/(2M) ||P u(a) - y||^2 + lam R(a)`` and its gradient ``dJ/da``.

    ``u(a)`` is the exact discrete solution; the misfit gradient is the adjoint one (module
    docstring), ``R`` is :func:`regulariser`.  This is what :func:`pde_constrained_fit`
    minimises (up to a constant factor); it is public so the gradient can be checked.

    Returns
    -------
    value, gradient
        ``J(a)`` and ``dJ/da``, an array of ``grid.shape``.
    """
    fam = _family(family, INVERSE_SUPPORTED)
    p = fam.params(params)
    idx, y = observations(obs_idx, obs_u, grid.shape, "u")
    lam, eps = _reg_settings(fam, reg, lam, eps)
    a = np.asarray(a, dtype=np.float64)
    if a.shape != grid.shape or not np.all(np.isfinite(a)):
        raise PdediffError(f"a must be a finite array of shape {grid.shape}, got {a.shape}")
    misfit, g_misfit, _ = _misfit(fam, grid, p, idx, y)(a)
    r_value, g_reg = regulariser(a, grid, reg, eps)
    return misfit + lam * r_value, g_misfit + lam * g_reg


# -------------------------------------------------------------------- inverse: the solver


def _reg_settings(
    fam: PDEFamily, reg: str, lam: float | None, eps: float | None
) -> tuple[float, float]:
    if reg not in REGULARISERS:
        raise PdediffError(f"unknown regulariser {reg!r}; known: {REGULARISERS}")
    lam = DEFAULT_LAM[(fam.name, reg)] if lam is None else float(lam)
    eps = DEFAULT_EPS[fam.name] if eps is None else float(eps)
    if not (np.isfinite(lam) and lam >= 0.0):
        raise PdediffError(f"regularisation weight lam must be finite and >= 0, got {lam}")
    return lam, eps


def _default_bounds(fam: PDEFamily, p: Mapping[str, float]) -> tuple[float, float] | None:
    return (p["a_low"], p["a_high"]) if fam.name == "darcy" else None


def _best_constant(
    fam: PDEFamily,
    grid: Grid,
    p: Mapping[str, float],
    idx: Array,
    y: Array,
    bounds: tuple[float, float] | None,
) -> Array:
    """The constant ``a = c`` that fits the data best (a closed form: ``u`` is ``u(1) / c``
    for Darcy and ``c u(1)`` for Poisson / Helmholtz), clipped to the bounds."""
    u1 = state(fam, np.ones(grid.shape), grid, p)[0].ravel()[idx]
    cross, norm2 = float(u1 @ y), float(u1 @ u1)
    if fam.name == "darcy":
        c = norm2 / cross if cross > 0.0 else 0.5 * (p["a_low"] + p["a_high"])
    else:
        c = cross / norm2
    if bounds is not None:
        c = float(np.clip(c, *bounds))
    return np.full(grid.shape, c)


def pde_constrained_fit(
    family: str | PDEFamily,
    grid: Grid,
    params: Mapping[str, float] | None,
    obs_idx: Array,
    obs_u: Array,
    reg: str = "tv",
    lam: float | None = None,
    max_iter: int = 500,
    a0: Array | None = None,
    *,
    eps: float | None = None,
    bounds: tuple[float, float] | None | str = "auto",
) -> dict[str, Any]:
    """Inverse baseline: the coefficient that best explains sparse observations of ``u``.

    Minimises ``J(a) = 1/(2M) ||P u(a) - y||^2 + lam R(a)`` (:func:`fit_objective`) with
    L-BFGS-B, the gradient by the adjoint method (one extra sparse solve per evaluation;
    Navier-Stokes: autograd through the flow map).
    The objective is divided by its data term at ``u = 0``, ``mean(y^2) / 2``, before it
    goes to the optimiser: the minimiser is the same, and L-BFGS-B's relative stopping
    test then sees values of order one (``u`` is ~1e-2 for Darcy).

    Parameters
    ----------
    family
        ``"darcy"`` (``a`` is the permeability), ``"poisson"`` or ``"helmholtz"`` (``a`` is
        the source; there ``u`` is linear in ``a`` and ``J`` is convex), or
        ``"navier_stokes"`` (``a`` is ``w0``, ``u`` is ``w(T)``).
    grid, params
        The family's grid and parameter overrides.
    obs_idx, obs_u
        Sensors of the solution (flat indices or a mask, see :func:`observations`) and
        values.
    reg
        ``"tv"`` (smoothed total variation) or ``"tikhonov"`` (see :func:`regulariser`).
    lam, eps
        Regularisation weight and TV smoothing; default :data:`DEFAULT_LAM` /
        :data:`DEFAULT_EPS` (chosen on validation samples at the default parameters).
    max_iter
        L-BFGS-B iterations at most.
    a0
        Initial guess; default the best constant coefficient (closed form; zero, the prior
        mean, for Navier-Stokes).
    bounds
        ``(low, high)`` box for ``a``; ``"auto"``: ``(a_low, a_high)`` for Darcy (which
        also keeps the permeability positive), none for Poisson / Helmholtz.

    Returns
    -------
    dict
        ``a`` (the fit), ``u`` (``u(a)``) under the family's field names (``w0``, ``w``),
        for Darcy ``a_thresholded`` (``a`` snapped at
        ``(a_low + a_high) / 2``, the field scored by error rate), and ``info``: ``lam``,
        ``eps``, ``reg``, ``objective`` (and ``objective_initial``, at ``a0``), ``misfit``,
        ``regulariser``, ``n_iter``, ``n_eval``, ``converged``, ``message``, ``seconds``.
    """
    t0 = time.perf_counter()
    fam = _family(family, INVERSE_SUPPORTED)
    p = fam.params(params)
    coef, sol = fam.coefficient_solution()
    idx, y = observations(obs_idx, obs_u, grid.shape, sol)
    if fam.name in SUPPORTED:
        _check_interior_sensors(idx, grid.shape)
    lam, eps = _reg_settings(fam, reg, lam, eps)
    if int(max_iter) != max_iter or max_iter < 1:
        raise PdediffError(f"max_iter must be a positive integer, got {max_iter}")
    bounds = _default_bounds(fam, p) if bounds == "auto" else bounds
    a0 = _initial_guess(fam, grid, p, idx, y, bounds, a0)
    scale = 0.5 * float(np.mean(y**2)) or 1.0  # y = 0 everywhere: no rescaling
    data_misfit = _misfit(fam, grid, p, idx, y)

    def fun(x: Array) -> tuple[float, Array]:
        a = x.reshape(grid.shape)
        misfit, g_misfit, _ = data_misfit(a)
        r_value, g_reg = regulariser(a, grid, reg, eps)
        return (misfit + lam * r_value) / scale, (g_misfit + lam * g_reg).ravel() / scale

    objective_initial = fun(a0.ravel())[0] * scale
    res = scipy.optimize.minimize(
        fun,
        a0.ravel(),
        jac=True,
        method="L-BFGS-B",
        bounds=None if bounds is None else [tuple(bounds)] * a0.size,
        # gtol 0: per-node gradients are O(h^2) small; stop on the relative decrease.
        options={"maxiter": int(max_iter), "maxfun": 2 * int(max_iter), "gtol": 0.0},
    )
    a = res.x.reshape(grid.shape)
    misfit, _, u = data_misfit(a)
    r_value = regulariser(a, grid, reg, eps)[0]
    out: dict[str, Any] = {coef: a, sol: u}
    if fam.name == "darcy":
        out["a_thresholded"] = snap_to_levels(a, p["a_low"], p["a_high"])
    out["info"] = {
        "reg": reg,
        "lam": lam,
        "eps": eps,
        "objective": misfit + lam * r_value,
        "objective_initial": objective_initial,
        "misfit": misfit,
        "regulariser": r_value,
        "n_iter": int(res.nit),
        "n_eval": int(res.nfev),
        "converged": bool(res.success),
        "message": str(res.message),
        "seconds": time.perf_counter() - t0,
    }
    return out


def _check_interior_sensors(idx: Array, shape: tuple[int, ...]) -> None:
    """Sensors of ``u`` on the boundary see ``u = 0`` whatever ``a`` is: need one inside."""
    iy, ix = np.unravel_index(idx, shape)
    if not np.any((iy > 0) & (iy < shape[0] - 1) & (ix > 0) & (ix < shape[1] - 1)):
        raise PdediffError(
            "all sensors of u are on the boundary, where u = 0 whatever a is: "
            "the data say nothing about a"
        )


def _initial_guess(
    fam: PDEFamily,
    grid: Grid,
    p: Mapping[str, float],
    idx: Array,
    y: Array,
    bounds: tuple[float, float] | None,
    a0: Array | None,
) -> Array:
    if a0 is None and fam.name not in SUPPORTED:
        return np.zeros(grid.shape)  # the prior mean of the Navier-Stokes w0
    if a0 is None:
        return _best_constant(fam, grid, p, idx, y, bounds)
    a0 = np.asarray(a0, dtype=np.float64)
    if a0.shape != grid.shape or not np.all(np.isfinite(a0)):
        raise PdediffError(f"a0 must be a finite array of shape {grid.shape}, got {a0.shape}")
    return a0 if bounds is None else np.clip(a0, *bounds)
