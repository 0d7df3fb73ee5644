"""2-D incompressible Navier-Stokes in vorticity form on a periodic box.

    dw/dt + u . grad w = nu Lap w + f,   u = (d psi/dy, -d psi/dx),   -Lap psi = w,

on ``[0, L)^2`` (periodic), ``t in [0, T]``, with the forcing
``f(x, y) = A (sin(2 pi (x/L + y/L)) + cos(2 pi (x/L + y/L)))``.  The defaults are the
Navier-Stokes benchmark of the Fourier Neural Operator (Li et al. 2021, "Fourier Neural
Operator for Parametric Partial Differential Equations", arXiv 2010.08895) as used by
DiffusionPDE (Huang et al. 2024, "DiffusionPDE: Generative PDE-Solving Under Partial
Observation", arXiv 2406.17763): ``nu = 1e-3``, ``A = 0.1``, ``L = 1``, ``T = 1`` and an
initial vorticity ``w0 ~ N(0, sigma^2 (-Delta + tau^2)^{-alpha})`` with ``alpha = 2.5``,
``tau = 7``, ``sigma = tau^(alpha - 1)``.  The fields are ``w0`` (coefficient) and
``w = w(T)`` (solution) on the same periodic grid, dims ``("y", "x")``.

One time integrator serves both the reference solver and the residual: :func:`flow_map`,
written once in torch (float64, batched, differentiable).  It is Fourier pseudo-spectral
with the 2/3 rule; in time, Crank-Nicolson for the viscous term and Heun's method for
advection and forcing (an IMEX scheme of second order; FNO's generator pairs
Crank-Nicolson with a first-order explicit Euler step for advection).  With the defaults the
flow is resolved at 64^2 already: it differs from the 128^2 solution of the same
band-limited ``w0`` by ~6e-9 relative.

* :func:`solve` returns ``w = Phi_T(w0)`` with the small step ``dt`` (default ``1e-3``).
* :func:`terms` states the vorticity equation as ``r = w - Phi_T(w0)`` with the coarser step
  ``residual_dt`` (default ``1/100``).  This is not DiffusionPDE's released residual
  ``dw/dx + dw/dy`` (ANCHORS.md).  The time error of the flow map is ``O(dt^2)``, so the
  residual of a reference solution is ``O(residual_dt^2)`` relative to ``||w||`` (about
  ``2e-6`` with the defaults; see ``tests/test_pde_navier_stokes.py``) and ~0 for
  ``residual_dt = dt``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from pdediff.pde import _checks, _periodic
from pdediff.pde.base import Array, FieldInfo, Grid, Params, PDEError, PDEFamily, periodic_grid
from pdediff.pde.grf import grf_periodic

__all__ = [
    "FAMILY",
    "flow_map",
    "forcing",
    "make_grid",
    "sample",
    "solution_map",
    "solve",
    "terms",
]

DIMS = ("y", "x")
# The 2/3 rule must keep at least the forcing modes |m| = 1 (|m| < n/3), and a grid this
# small is only for tests; DiffusionPDE uses 128^2.
MIN_RESOLUTION = 8
BOUNDARY = "periodic in x and y (the unit torus by default); the residual covers every point"


def make_grid(resolution: int, params: Params) -> Grid:
    """Periodic grid ``x_j = j L / n`` (same in ``y``) of ``resolution^2`` points."""
    p = FAMILY.params(params)
    _checks.positive(p, ("length",))
    return periodic_grid(resolution, DIMS, p["length"])


def sample(rng: np.random.Generator, grid: Grid, params: Params) -> dict[str, Array]:
    """Draw an initial vorticity ``w0 ~ N(0, sigma^2 (-Delta + tau^2)^{-alpha})``.

    ``sigma = tau^(alpha - 1)`` (FNO's default in two dimensions).

    Returns
    -------
    dict
        ``{"w0": float64 array of grid.shape}``.
    """
    p = FAMILY.params(params)
    _checks.check_grid(grid, DIMS, DIMS, MIN_RESOLUTION)
    lengths = (grid.length("y"), grid.length("x"))
    return {"w0": grf_periodic(rng, grid.shape, p["alpha"], p["tau"], lengths=lengths)}


def solve(inputs: Mapping[str, Array], grid: Grid, params: Params) -> dict[str, Array]:
    """Reference solution ``w(T) = Phi_T(w0)`` with the time step ``params["dt"]``.

    Parameters
    ----------
    inputs
        ``{"w0": initial vorticity of grid.shape}``.
    grid
        Periodic grid with dims ``("y", "x")``; spacings from its coordinates.
    params
        Family parameters (``nu``, ``forcing``, ``t_final``, ``dt``).

    Returns
    -------
    dict
        ``{"w0": w0, "w": w(T)}``, float64 arrays of ``grid.shape``.
    """
    p = FAMILY.params(params)
    _checks.check_grid(grid, DIMS, DIMS, MIN_RESOLUTION)
    w0 = _checks.check_array(inputs, "w0", grid.shape)
    w = flow_map(torch.from_numpy(w0)[None], grid, p, p["dt"])[0].numpy()
    if not np.all(np.isfinite(w)):
        raise PDEError(
            "the Navier-Stokes flow map blew up from this 'w0' (under-resolved or too large "
            f"a field); lower 'dt' ({p['dt']:g}) or 'cfl' ({p['cfl']:g})"
        )
    return {"w0": w0, "w": w}


def flow_map(w0: torch.Tensor, grid: Grid, params: Params, dt: float) -> torch.Tensor:
    """The discrete flow map ``w0 -> w(T)`` of the vorticity equation.

    Fourier pseudo-spectral in space: velocity from the stream function
    (``psi_hat = w_hat / |k|^2``), advection ``u . grad w`` formed on the grid from the
    2/3-truncated vorticity and truncated again (alias-free for the quadratic term; the
    modes above the 2/3 band only diffuse).  In time, ``n`` equal steps of the IMEX
    Crank-Nicolson / Heun scheme, with ``L = -nu |k|^2`` and ``N(w) = f - P(u . grad w)``:

        (1 - dt L / 2) w*      = (1 + dt L / 2) w^n + dt N(w^n)
        (1 - dt L / 2) w^{n+1} = (1 + dt L / 2) w^n + dt (N(w^n) + N(w*)) / 2,

    second order in ``dt`` and unconditionally stable for the viscous term.  Heun's step
    is only conditionally stable for advection (it blows up near
    ``dt max|u| (max|k_x| + max|k_y|) ~ 3``), so ``n = ceil(T / dt)`` is raised where
    needed to keep that Courant number below ``params["cfl"]`` for the initial velocity
    (largest over the batch; the data's fields are far below it with the defaults).

    Parameters
    ----------
    w0
        Initial vorticity ``(N, ny, nx)``, any float dtype (computed in float64).
    grid
        Periodic grid with dims ``("y", "x")``.
    params
        Family parameters (``nu``, ``forcing``, ``t_final``, ``cfl``; missing ones from
        the defaults).
    dt
        Largest time step.

    Returns
    -------
    torch.Tensor
        ``w(T)``, float64 ``(N, ny, nx)``; differentiable with respect to ``w0``.
    """
    p = FAMILY.params(params)
    _checks.check_grid(grid, DIMS, DIMS, MIN_RESOLUTION)
    _checks.positive({**p, "dt": dt}, ("nu", "t_final", "cfl", "dt"))
    (w0,) = _checks.check_tensors({"w0": w0}, ("w0",), grid.shape)
    ops = _Operators.build(grid, p, w0.device)
    w_hat = torch.fft.rfft2(w0.to(torch.float64))
    # The step count is not differentiated: it only picks the discretisation.
    courant_per_time = ops.courant(w_hat.detach())
    n_steps = max(
        1,
        math.ceil(p["t_final"] / dt - 1e-9),
        math.ceil(p["t_final"] * courant_per_time / p["cfl"] - 1e-9),
    )
    explicit, implicit_inv = ops.crank_nicolson(p["t_final"] / n_steps)
    for _ in range(n_steps):
        w_hat = ops.step(w_hat, p["t_final"] / n_steps, explicit, implicit_inv)
    return torch.fft.irfft2(w_hat, s=grid.shape)


@dataclass(frozen=True)
class _Operators:
    """Spectral multipliers of one grid and parameter set (``rfft2`` layout)."""

    shape: tuple[int, int]
    ky: torch.Tensor  # (ny, 1), angular wavenumbers in y
    kx: torch.Tensor  # (1, nx // 2 + 1), angular wavenumbers in x
    inv_k2: torch.Tensor  # 1 / |k|^2, 0 for the mean mode (psi has zero mean)
    mask: torch.Tensor  # 2/3 rule, as a float multiplier
    forcing_hat: torch.Tensor
    lin: torch.Tensor  # -nu |k|^2

    @classmethod
    def build(cls, grid: Grid, p: Params, device: torch.device) -> _Operators:
        (ny, nx), (hy, hx) = grid.shape, (grid.spacing("y"), grid.spacing("x"))
        ky = _periodic.wavenumbers(ny, hy, device=device)[:, None]
        kx = _periodic.wavenumbers(nx, hx, real=True, device=device)[None, :]
        k2 = ky**2 + kx**2
        inv_k2 = torch.where(k2 > 0, 1.0 / torch.where(k2 > 0, k2, 1.0), 0.0)
        mask = (
            _periodic.dealias_mask(ny, device=device)[:, None]
            & _periodic.dealias_mask(nx, real=True, device=device)[None, :]
        ).to(torch.float64)
        return cls(
            shape=(ny, nx),
            ky=ky,
            kx=kx,
            inv_k2=inv_k2,
            mask=mask,
            forcing_hat=torch.fft.rfft2(forcing(grid, p["forcing"]).to(device)),
            lin=-p["nu"] * k2,
        )

    def velocity(self, w_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u, v) = (psi_y, -psi_x)`` on the grid from the (truncated) ``w_hat``."""
        psi_hat = w_hat * self.inv_k2
        u = torch.fft.irfft2(1j * self.ky * psi_hat, s=self.shape)
        v = torch.fft.irfft2(-1j * self.kx * psi_hat, s=self.shape)
        return u, v

    def courant(self, w_hat: torch.Tensor) -> float:
        """``max|u| (max|k_x| + max|k_y|)`` over the kept modes: Courant number per unit
        time step."""
        u, v = self.velocity(w_hat * self.mask)
        kept = self.mask > 0
        k_sum = (self.kx * kept).abs().max() + (self.ky * kept).abs().max()
        return float(torch.sqrt(u * u + v * v).max() * k_sum)

    def crank_nicolson(self, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1 + dt L / 2, 1 / (1 - dt L / 2))``."""
        return 1.0 + 0.5 * dt * self.lin, 1.0 / (1.0 - 0.5 * dt * self.lin)

    def nonlinear(self, w_hat: torch.Tensor) -> torch.Tensor:
        """``N(w) = f - P(u . grad w)`` in Fourier space."""
        w_hat = w_hat * self.mask
        u, v = self.velocity(w_hat)
        w_x = torch.fft.irfft2(1j * self.kx * w_hat, s=self.shape)
        w_y = torch.fft.irfft2(1j * self.ky * w_hat, s=self.shape)
        advection = torch.fft.rfft2(u * w_x + v * w_y) * self.mask
        return self.forcing_hat - advection

    def step(
        self, w_hat: torch.Tensor, dt: float, explicit: torch.Tensor, implicit_inv: torch.Tensor
    ) -> torch.Tensor:
        """One Crank-Nicolson / Heun step of length ``dt`` (multipliers precomputed)."""
        n0 = self.nonlinear(w_hat)
        base = explicit * w_hat
        predictor = (base + dt * n0) * implicit_inv
        n1 = self.nonlinear(predictor)
        return (base + 0.5 * dt * (n0 + n1)) * implicit_inv


def forcing(grid: Grid, amplitude: float) -> torch.Tensor:
    """``f = A (sin(2 pi (x/Lx + y/Ly)) + cos(2 pi (x/Lx + y/Ly)))`` on the grid, float64."""
    y, x = grid.mesh()
    phase = 2.0 * np.pi * (x / grid.length("x") + y / grid.length("y"))
    return torch.from_numpy(amplitude * (np.sin(phase) + np.cos(phase)))


def terms(
    fields: Mapping[str, torch.Tensor], grid: Grid, params: Params
) -> dict[str, torch.Tensor]:
    """Terms of the residual ``r = w - Phi_T(w0)`` of the vorticity equation.

    ``Phi_T`` is :func:`flow_map` with the step ``params["residual_dt"]``: the residual
    is the integral form of the equation over ``[0, T]``, discretised at second order in
    time and spectrally in space, so it vanishes (to ``O(residual_dt^2)``) exactly when
    ``w`` is the vorticity at ``T`` that evolves from ``w0``.  Gradients flow to both
    ``w`` and ``w0``.

    Parameters
    ----------
    fields
        ``{"w0": (N, ny, nx), "w": (N, ny, nx)}`` tensors.
    grid, params
        The periodic grid and family parameters.

    Returns
    -------
    dict
        ``{"w": w, "-Phi_T(w0)": -Phi_T(w0)}``, each ``(N, ny, nx)`` in the dtype of ``w``
        (the flow map runs in float64).
    """
    p = FAMILY.params(params)
    w0, w = _checks.check_tensors(fields, ("w0", "w"), grid.shape)
    _checks.positive(p, ("residual_dt",))
    phi = flow_map(w0, grid, p, p["residual_dt"])
    return {"w": w, "-Phi_T(w0)": (-phi).to(w.dtype)}


def solution_map(
    fields: Mapping[str, torch.Tensor], grid: Grid, params: Params
) -> dict[str, torch.Tensor]:
    """``{"w0": w0} -> {"w": Phi_T(w0)}``, batched and differentiable: :func:`flow_map`
    with the residual's step ``params["residual_dt"]`` (``O(residual_dt^2)`` from the
    reference solution, ~3e-6 relative with the defaults at 32^2), in the dtype of ``w0``."""
    p = FAMILY.params(params)
    _checks.positive(p, ("residual_dt",))
    (w0,) = _checks.check_tensors(fields, ("w0",), grid.shape)
    return {"w": flow_map(w0, grid, p, p["residual_dt"]).to(w0.dtype)}


FAMILY = PDEFamily(
    name="navier_stokes",
    equation=(
        "dw/dt + u . grad w = nu Lap w + f, u = (psi_y, -psi_x), -Lap psi = w on the torus "
        "[0, L)^2, f = A (sin(2 pi (x + y) / L) + cos(2 pi (x + y) / L)); w = w(T) from w0"
    ),
    boundary=BOUNDARY,
    fields={
        "w0": FieldInfo("initial vorticity w(t=0)", role="coefficient"),
        "w": FieldInfo("vorticity at the final time w(t=T)", role="solution"),
    },
    dims=DIMS,
    defaults={
        "nu": 1e-3,  # viscosity
        "forcing": 0.1,  # amplitude A of f
        "alpha": 2.5,  # GRF of w0: smoothness,
        "tau": 7.0,  # inverse length scale (sigma = tau^(alpha - 1))
        "t_final": 1.0,  # T
        "length": 1.0,  # side L of the periodic box
        "dt": 1e-3,  # time step of the reference solver
        "residual_dt": 1e-2,  # time step of the flow map inside the residual
        "cfl": 1.0,  # largest Courant number max|u| dt (max|k_x| + max|k_y|)
    },
    make_grid=make_grid,
    sample=sample,
    solve=solve,
    terms=terms,
    min_resolution=MIN_RESOLUTION,
    solution_map=solution_map,
)
