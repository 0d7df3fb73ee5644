"""Viscous Burgers' equation on a periodic interval, as a space-time field.

    u_t + (u^2 / 2)_x = nu u_xx,   x in [0, L) periodic,   t in [0, T],

with ``nu = 0.01``, ``L = 1``, ``T = 1`` (DiffusionPDE's setting) and an initial condition
``u(0, x) = u0(x)`` drawn from the periodic Gaussian random field
``N(0, sigma^2 (-Delta + tau^2)^{-alpha})`` with ``alpha = 2.5``, ``tau = 7``,
``sigma = 7^2``, the initial-condition law of the Burgers benchmark of the Fourier Neural
Operator (Li et al. 2021, "Fourier Neural Operator for Parametric Partial Differential
Equations", arXiv 2010.08895).  Note on the amplitude: :func:`~pdediff.pde.grf.grf_periodic`
follows FNO's Python ``GaussianRF`` (complex noise on every mode ``k`` and ``-k``), whose
pointwise variance is twice that of FNO's MATLAB ``GRF1`` that drew the Burgers data for
the same ``sigma``; :func:`sample` passes ``sigma / sqrt(2)`` so that ``sigma = 49`` gives
``GRF1``'s law (pointwise std about 0.27).  DiffusionPDE
(Huang et al. 2024, "DiffusionPDE: Generative PDE-Solving Under Partial Observation",
arXiv 2406.17763) models the problem as one space-time field ``u(t, x)`` whose first time
row is the initial condition.

The data field is ``u`` with dims ``("t", "x")``: at resolution ``R`` there are ``R`` time
levels ``t_j = j T / (R - 1)`` (both ends included) and ``R`` periodic points
``x_i = i L / R``.  Row ``u[0]`` is the initial condition (the "coefficient" of the
problem in DiffusionPDE's sense; it is part of the solution field, so the field's role is
``"solution"``).  :func:`sample` draws ``{"u0": (R,)}``; :func:`solve` returns
``{"u": (R, R)}``.

Reference solver (:func:`solve_space_time`): Fourier pseudo-spectral in ``x`` with the 2/3
rule and exponential time differencing RK4 (ETDRK4; Cox & Matthews 2002, "Exponential
time differencing for stiff systems", J. Comput. Phys. 176; coefficients by the contour
integrals of Kassam & Trefethen 2005, "Fourth-order time-stepping for stiff PDEs", SIAM J.
Sci. Comput. 26).  The ``R`` sampled values define the initial condition through their
trigonometric interpolant, integrated on a grid ``p >= 2`` times finer (at least
``solver_nx`` points, doubled until the spectrum is resolved to ``1e-10``) so that the
viscous fronts (width ``~ nu / |u|``) are resolved, and sampled back at the output
points; ``u[0]`` is exactly ``u0``.  The internal step is at most ``dt`` and
``cfl h_fine / max|u0|`` (the maximum principle bounds ``|u|`` by ``max|u0|``).  With the
defaults the solver error is ``~1e-9`` relative (against Cole-Hopf solutions; fourth
order in the step; see ``tests/test_pde_burgers.py``), far below the finite-difference
residual.

Residual (:func:`terms`): second-order central differences at the interior time levels
``j = 1 .. R - 2`` and every ``x`` (periodic, ``torch.roll``).  For the reference solution
it is at the truncation level ``O(dt^2 + h^2)``: for one initial condition refined from
32 to 64 to 128 points it falls ``~3.5x`` per doubling (to ``~1e-2`` relative at 128).
A field drawn at ``R`` points carries modes up to ``R / 2`` whose viscous decay
(rate ``nu (pi R / L)^2``) is not resolved by ``dt = T / (R - 1)``, so the residual of
such draws is largest on the first time rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from pdediff.pde import _checks, _periodic
from pdediff.pde.base import Array, FieldInfo, Grid, Params, PDEError, PDEFamily
from pdediff.pde.grf import grf_periodic

__all__ = ["FAMILY", "make_grid", "sample", "solve", "solve_space_time", "terms"]

DIMS = ("t", "x")
# Three time levels for the central difference in t, three points for the x stencils.
MIN_RESOLUTION = 8
BOUNDARY = (
    "periodic in x (u(t, x + L) = u(t, x)); initial condition u(0, x) = u0(x) is the first "
    "time row of the field; no condition at t = T.  The residual covers the interior time "
    "levels 1..R-2 and every x"
)
# Contour points of the Kassam-Trefethen evaluation of the ETDRK4 coefficients; 32 points
# on the upper half circle give round-off accuracy for real (diffusive) linear parts.
_CONTOUR_POINTS = 32
# Resolution check of the reference solver: relative size of the top of the kept spectrum.
_TAIL_TOL = 1e-10
_MAX_POINTS = 8192


def make_grid(resolution: int, params: Params) -> Grid:
    """``R`` time levels on ``[0, T]`` (both ends) times ``R`` periodic points on ``[0, L)``."""
    p = FAMILY.params(params)
    _checks.positive(p, ("t_final", "length"))
    t = np.linspace(0.0, p["t_final"], resolution)
    x = np.arange(resolution) * (p["length"] / resolution)
    return Grid({"t": t, "x": x}, periodic=frozenset({"x"}))


def sample(rng: np.random.Generator, grid: Grid, params: Params) -> dict[str, Array]:
    """Draw an initial condition ``u0 ~ N(0, sigma^2 (-Delta + tau^2)^{-alpha})`` on ``x``.

    Returns
    -------
    dict
        ``{"u0": float64 array (nx,)}``.
    """
    p = FAMILY.params(params)
    _checks.check_grid(grid, DIMS, ("x",), MIN_RESOLUTION)
    nx = grid.shape[1]
    # sigma / sqrt(2): FNO's Burgers data come from its MATLAB GRF1, half GaussianRF's variance
    sigma = p["sigma"] / np.sqrt(2.0)
    u0 = grf_periodic(rng, (nx,), p["alpha"], p["tau"], sigma, lengths=(grid.length("x"),))
    return {"u0": u0}


def solve(inputs: Mapping[str, Array], grid: Grid, params: Params) -> dict[str, Array]:
    """Reference space-time solution from the initial condition.

    Parameters
    ----------
    inputs
        ``{"u0": initial condition, shape (nx,)}`` on the grid's ``x`` points.
    grid
        Grid with dims ``("t", "x")``, ``x`` periodic; output times are its ``t``
        coordinates (``u0`` is imposed at ``t[0]``).
    params
        Family parameters (``nu``, ``solver_nx``, ``dt``, ``cfl`` are used).

    Returns
    -------
    dict
        ``{"u": float64 array (nt, nx)}`` with ``u[0] == u0``.
    """
    p = FAMILY.params(params)
    _checks.check_grid(grid, DIMS, ("x",), MIN_RESOLUTION)
    u0 = _checks.check_array(inputs, "u0", (grid.shape[1],))
    _checks.positive(p, ("nu", "solver_nx", "dt", "cfl"))
    u = solve_space_time(
        torch.from_numpy(u0),
        grid.coords["t"],
        grid.length("x"),
        p["nu"],
        min_points=int(p["solver_nx"]),
        dt=p["dt"],
        cfl=p["cfl"],
    )
    out = u.numpy()
    out[0] = u0  # the first row is the initial condition by definition, not up to round-off
    return {"u": out}


def solve_space_time(
    u0: torch.Tensor,
    times: Array,
    length: float,
    nu: float,
    *,
    min_points: int = 256,
    dt: float = 1e-3,
    cfl: float = 0.5,
) -> torch.Tensor:
    """Integrate Burgers' equation from ``u0`` and return snapshots at ``times``.

    The internal grid has ``p nx >= min_points`` points, ``p >= 2``; ``p`` doubles until the
    top of the resolved spectrum (integer wavenumbers in ``[0.8, 1) x M / 3`` on an
    ``M``-point grid) stays below ``1e-10`` of the largest mode at every output time, up
    to 8192 points.

    Parameters
    ----------
    u0
        Initial condition ``(nx,)`` on ``x_i = i L / nx``.
    times
        Increasing, uniformly spaced output times; ``u0`` is the state at ``times[0]``.
    length, nu
        Period ``L`` and viscosity.
    min_points
        Least number of points of the internal grid.
    dt
        Largest internal time step (ETDRK4 is fourth order: ``1e-3`` gives about
        ``1e-9`` relative error for the default initial conditions).
    cfl
        Stability cap ``dt max|u0| / h_fine <= cfl``.  Each output interval is split into
        equal steps no longer than both limits.

    Returns
    -------
    torch.Tensor
        Float64 ``(len(times), nx)``.

    Raises
    ------
    PDEError
        If 8192 points do not resolve the fronts (``nu`` too small for the amplitude).
    """
    u0 = u0.to(torch.float64)
    nx = u0.shape[-1]
    times = np.asarray(times, dtype=np.float64)
    # p >= 2 keeps all modes of the nx-point interpolant (|m| <= nx/2) inside the 2/3 band
    # of the fine grid (|m| < 2 nx / 3), so the initial condition is not truncated.
    factor = max(2, math.ceil(min_points / nx))
    while True:
        frames, tail = _integrate(u0, times, length, nu, factor, dt, cfl)
        if tail <= _TAIL_TOL:
            return frames
        if 2 * factor * nx > _MAX_POINTS:
            raise PDEError(
                f"Burgers reference solver: {factor * nx} points do not resolve the solution "
                f"(spectral tail {tail:.1e} > {_TAIL_TOL:.0e}); nu = {nu:g} is too small for "
                f"max|u0| = {float(u0.abs().max()):.3g}"
            )
        factor *= 2


def _integrate(
    u0: torch.Tensor,
    times: Array,
    length: float,
    nu: float,
    factor: int,
    dt: float,
    cfl: float,
) -> tuple[torch.Tensor, float]:
    """Snapshots at ``times`` from the ``factor``-times refined grid, and the largest
    relative spectral tail seen (the resolution check of :func:`solve_space_time`)."""
    nx = u0.shape[-1]
    n_fine = factor * nx
    h_fine = length / n_fine
    dt_out = float(times[1] - times[0]) if times.size > 1 else 0.0
    umax = float(u0.abs().max())
    dt_max = min(dt, cfl * h_fine / umax) if umax > 0 else dt
    n_sub = max(1, math.ceil(dt_out / dt_max - 1e-9))
    step = _Etdrk4(n_fine, h_fine, nu, dt_out / n_sub)
    m = torch.fft.rfftfreq(n_fine, d=1.0 / n_fine)
    top = (m >= 0.8 * n_fine / 3.0) & step.mask
    v_hat = torch.fft.rfft(_periodic.fourier_refine(u0, factor))
    frames, tail = [u0.clone()], 0.0
    for _ in range(1, times.size):
        for _ in range(n_sub):
            v_hat = step(v_hat)
        scale = float(v_hat.abs().max())
        if not math.isfinite(scale):
            return torch.stack(frames), math.inf  # blew up: treat as unresolved
        if scale > 0:
            tail = max(tail, float(v_hat[top].abs().max()) / scale)
        frames.append(torch.fft.irfft(v_hat, n=n_fine)[::factor])
    return torch.stack(frames), tail


class _Etdrk4:
    """One ETDRK4 step of ``v_t = L v + N(v)`` in Fourier space, ``L = -nu k^2``,
    ``N(v) = -(i k / 2) P[(P v)^2]`` with ``P`` the 2/3-rule projection."""

    def __init__(self, n: int, spacing: float, nu: float, dt: float) -> None:
        self.k = _periodic.wavenumbers(n, spacing, real=True)
        self.mask = _periodic.dealias_mask(n, real=True)
        self.n = n
        lin = -nu * self.k**2
        self.e = torch.exp(dt * lin)
        self.e2 = torch.exp(0.5 * dt * lin)
        self.q, self.f1, self.f2, self.f3 = _etdrk4_coefficients(lin, dt)
        self.grad = torch.where(self.mask, -0.5j * self.k, 0.0)

    def nonlinear(self, v_hat: torch.Tensor) -> torch.Tensor:
        v = torch.fft.irfft(v_hat * self.mask, n=self.n)
        return self.grad * torch.fft.rfft(v * v)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        nv = self.nonlinear(v)
        a = self.e2 * v + self.q * nv
        na = self.nonlinear(a)
        b = self.e2 * v + self.q * na
        nb = self.nonlinear(b)
        c = self.e2 * a + self.q * (2.0 * nb - nv)
        nc = self.nonlinear(c)
        return self.e * v + self.f1 * nv + 2.0 * self.f2 * (na + nb) + self.f3 * nc


def _etdrk4_coefficients(lin: torch.Tensor, dt: float) -> tuple[torch.Tensor, ...]:
    """``Q, f1, f2, f3`` of ETDRK4 for the diagonal linear part ``lin`` (real, <= 0).

    The closed forms cancel catastrophically for ``|dt L| << 1``; Kassam & Trefethen
    average them over a circle of radius 1 around ``dt L`` instead (Cauchy's integral
    formula), which is accurate for every ``L`` including 0.
    """
    theta = math.pi * (torch.arange(_CONTOUR_POINTS, dtype=torch.float64) + 0.5) / _CONTOUR_POINTS
    z = (dt * lin).unsqueeze(-1) + torch.exp(1j * theta)
    ez = torch.exp(z)
    z3 = z**3

    def mean(values: torch.Tensor) -> torch.Tensor:
        return dt * values.mean(dim=-1).real

    q = mean((torch.exp(0.5 * z) - 1.0) / z)
    f1 = mean((-4.0 - z + ez * (4.0 - 3.0 * z + z**2)) / z3)
    f2 = mean((2.0 + z + ez * (z - 2.0)) / z3)
    f3 = mean((-4.0 - 3.0 * z - z**2 + ez * (4.0 - z)) / z3)
    return q, f1, f2, f3


def terms(
    fields: Mapping[str, torch.Tensor], grid: Grid, params: Params
) -> dict[str, torch.Tensor]:
    """Terms of the finite-difference residual ``r = u_t + (u^2/2)_x - nu u_xx``.

    At the interior time levels ``j = 1 .. nt - 2`` and every ``x_i`` (periodic):

        u_t        = (u_{j+1,i} - u_{j-1,i}) / (2 dt)
        (u^2/2)_x  = (u_{j,i+1}^2 - u_{j,i-1}^2) / (4 h)
        -nu u_xx   = -nu (u_{j,i+1} - 2 u_{j,i} + u_{j,i-1}) / h^2

    all second order in ``dt`` and ``h`` (conservative flux form of ``u u_x``).

    Parameters
    ----------
    fields
        ``{"u": (N, nt, nx)}``, ``u[:, 0]`` the initial condition.
    grid, params
        The grid (``dt``, ``h`` from its coordinates) and family parameters (``nu``).

    Returns
    -------
    dict
        ``{"u_t": ..., "(u^2/2)_x": ..., "-nu u_xx": ...}``, each ``(N, nt - 2, nx)``.
    """
    p = FAMILY.params(params)
    _checks.check_grid(grid, DIMS, ("x",), 3)
    (u,) = _checks.check_tensors(fields, ("u",), grid.shape)
    dt, h = grid.spacing("t"), grid.spacing("x")
    mid = u[:, 1:-1]
    return {
        "u_t": (u[:, 2:] - u[:, :-2]) / (2.0 * dt),
        "(u^2/2)_x": _periodic.central_difference(0.5 * mid * mid, h, dim=-1),
        "-nu u_xx": -p["nu"] * _periodic.central_difference(mid, h, dim=-1, order=2),
    }


FAMILY = PDEFamily(
    name="burgers",
    equation="u_t + u u_x = nu u_xx on [0, L) periodic x [0, T]; u(0, x) = u0(x)",
    boundary=BOUNDARY,
    fields={"u": FieldInfo("velocity u(t, x); the first time row is the initial condition")},
    dims=DIMS,
    defaults={
        "nu": 0.01,  # viscosity
        "alpha": 2.5,  # GRF of u0: smoothness,
        "tau": 7.0,  # inverse length scale,
        "sigma": 49.0,  # and amplitude (FNO: tau^2)
        "t_final": 1.0,  # T
        "length": 1.0,  # period L
        "solver_nx": 256.0,  # least number of points of the solver's internal grid
        "dt": 1e-3,  # largest internal ETDRK4 step
        "cfl": 0.5,  # stability cap dt max|u0| / h_fine
    },
    make_grid=make_grid,
    sample=sample,
    solve=solve,
    terms=terms,
    min_resolution=MIN_RESOLUTION,
)
