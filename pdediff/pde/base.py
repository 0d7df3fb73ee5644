"""The interface every PDE family implements, and the uniform grid it works on.

A family is one module (``pdediff.pde.darcy``, ...) that owns three things (DESIGN.md):

1. a sampler of coefficients (Gaussian random fields, thresholded where needed),
2. a reference numerical solver (numpy / scipy, float64),
3. a differentiable, batched torch residual whose boundary condition is stated.

Each module exposes one :class:`PDEFamily` instance named ``FAMILY``; the registry in
``pdediff.pde`` is a plain dict of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from pdediff.errors import PdediffError

Array = np.ndarray
Params = Mapping[str, float]


class PDEError(PdediffError):
    """Bad input to a PDE family: unknown parameter, bad grid, wrong shapes."""


@dataclass(frozen=True)
class Grid:
    """A uniform tensor-product grid in physical units.

    Parameters
    ----------
    coords
        Ordered mapping ``dim -> 1-D coordinate array`` (e.g. ``{"y": ..., "x": ...}`` or
        ``{"t": ..., "x": ...}``), in the order of the array axes.
    periodic
        Names of the periodic dims.  For a periodic dim of period ``L`` sampled at ``n``
        points the coordinates are ``x_j = x_0 + j L / n`` (the end point is not stored).
    """

    coords: Mapping[str, Array]
    periodic: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        coords = {d: np.asarray(c, dtype=np.float64) for d, c in self.coords.items()}
        for dim, c in coords.items():
            if c.ndim != 1 or c.size < 2:
                raise PDEError(f"coordinate {dim!r} must be 1-D with >= 2 points, got {c.shape}")
        object.__setattr__(self, "coords", coords)
        object.__setattr__(self, "periodic", frozenset(self.periodic))
        for dim in coords:
            self.spacing(dim)  # validates uniformity early

    @property
    def dims(self) -> tuple[str, ...]:
        return tuple(self.coords)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(c.size for c in self.coords.values())

    def spacing(self, dim: str) -> float:
        """Grid spacing along ``dim``, checked to be uniform (relative tolerance 1e-4, so
        coordinates stored in float32 pass)."""
        if dim not in self.coords:
            raise PDEError(f"grid has no dim {dim!r}; it has {self.dims}")
        c = self.coords[dim]
        d = np.diff(c)
        h = float(d.mean())
        if h <= 0 or not np.allclose(d, h, rtol=1e-4, atol=0.0):
            raise PDEError(
                f"coordinate {dim!r} is not uniform and increasing (spacings from "
                f"{d.min():.6g} to {d.max():.6g}); pdediff's finite differences need a uniform grid"
            )
        return h

    def length(self, dim: str) -> float:
        """Domain length along ``dim``: ``n h`` if periodic, else ``(n - 1) h``."""
        n = self.coords[dim].size
        return self.spacing(dim) * (n if dim in self.periodic else n - 1)

    @property
    def lengths(self) -> tuple[float, ...]:
        """Domain length of every dim, in order (see :meth:`length`)."""
        return tuple(self.length(d) for d in self.dims)

    def mesh(self) -> tuple[Array, ...]:
        """Coordinate arrays broadcast to the grid shape (``indexing="ij"``)."""
        return tuple(np.meshgrid(*self.coords.values(), indexing="ij"))


def node_grid(n: int, dims: tuple[str, ...] = ("y", "x"), length: float = 1.0) -> Grid:
    """Node grid on ``[0, length]^d`` including both boundaries (Dirichlet problems)."""
    c = np.linspace(0.0, length, n)
    return Grid({d: c for d in dims})


def periodic_grid(n: int, dims: tuple[str, ...] = ("y", "x"), length: float = 1.0) -> Grid:
    """Periodic grid ``x_j = j length / n``, ``j = 0..n-1`` on every dim."""
    c = np.arange(n) * (length / n)
    return Grid({d: c for d in dims}, periodic=frozenset(dims))


@dataclass(frozen=True)
class FieldInfo:
    """Metadata of one field of a family (becomes the variable's attrs)."""

    long_name: str
    units: str = "1"
    role: str = "solution"  # "coefficient" (what the sampler draws) or "solution"


@dataclass(frozen=True)
class PDEFamily:
    """One PDE family: sampler, reference solver and residual, with its metadata.

    Attributes
    ----------
    name
        Registry key, also written to the ``pde`` attribute of datasets.
    equation, boundary
        Human-readable statement of the PDE and of its boundary condition.
    fields
        ``name -> FieldInfo`` in channel order.
    dims
        Dims of every field (without the sample dim), e.g. ``("y", "x")``.
    defaults
        Default parameters (the DiffusionPDE settings of ANCHORS.md); all overridable.
    make_grid
        ``(resolution, params) -> Grid``.
    sample
        ``(rng, grid, params) -> {coefficient fields}``: draw the inputs.
    solve
        ``(inputs, grid, params) -> {all fields}``: reference solution, float64 numpy.
    terms
        ``(fields, grid, params) -> {term name: tensor}``: the terms of the discrete
        residual, each ``(N, *interior)``; the residual is their sum.  ``fields`` maps field
        names to tensors ``(N, *grid.shape)``.  Differentiable and batched.
    min_resolution
        Smallest resolution the stencils and solver accept.
    solution_map
        ``(coefficients, grid, params) -> {solution fields}``: the reference solver as a
        batched torch map, differentiable in the coefficient fields (``(N, *grid.shape)``
        each), or ``None`` where the family has none (Burgers: its only field is the
        solution).  The posterior's solver mode samples the coefficients and takes the
        solution from it (:func:`pdediff.solve.posterior.solver_map`).
    """

    name: str
    equation: str
    boundary: str
    fields: Mapping[str, FieldInfo]
    dims: tuple[str, ...]
    defaults: Mapping[str, float]
    make_grid: Callable[[int, Params], Grid]
    sample: Callable[[np.random.Generator, Grid, Params], dict[str, Array]]
    solve: Callable[[Mapping[str, Array], Grid, Params], dict[str, Array]]
    terms: Callable[[Mapping[str, torch.Tensor], Grid, Params], dict[str, torch.Tensor]]
    min_resolution: int = 8
    solution_map: (
        Callable[[Mapping[str, torch.Tensor], Grid, Params], dict[str, torch.Tensor]] | None
    ) = None

    def role_fields(self, role: str) -> tuple[str, ...]:
        """The names of the fields with ``role`` (``"coefficient"``, ``"solution"``)."""
        return tuple(name for name, info in self.fields.items() if info.role == role)

    def coefficient_solution(self) -> tuple[str, str]:
        """``(coefficient field, solution field)`` of a family with one of each (the
        forward / inverse pair: ``("a", "u")``, Navier-Stokes ``("w0", "w")``)."""
        coef, sol = self.role_fields("coefficient"), self.role_fields("solution")
        if len(coef) != 1 or len(sol) != 1:
            raise PDEError(
                f"{self.name!r} has coefficient fields {list(coef)} and solution fields "
                f"{list(sol)}: no single coefficient -> solution pair"
            )
        return coef[0], sol[0]

    def params(self, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
        """Defaults updated with ``overrides``; an unknown name is an error."""
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(self.defaults))
        if unknown:
            raise PDEError(
                f"unknown parameter(s) {unknown} for PDE family {self.name!r}; "
                f"known: {sorted(self.defaults)}"
            )
        return {**self.defaults, **{k: float(v) for k, v in overrides.items()}}

    def grid(self, resolution: int, overrides: Mapping[str, float] | None = None) -> Grid:
        """The family's grid at ``resolution`` points per dim (validated)."""
        if int(resolution) != resolution or resolution < self.min_resolution:
            raise PDEError(
                f"resolution {resolution} is too small for {self.name!r}: its stencils and "
                f"solver need at least {self.min_resolution} points per dim"
            )
        return self.make_grid(int(resolution), self.params(overrides))

    def draw(self, rng: np.random.Generator, grid: Grid, params: Params) -> dict[str, Array]:
        """One sample: coefficients from ``sample``, then the reference ``solve``."""
        return self.solve(self.sample(rng, grid, params), grid, params)

    def residual(
        self, fields: Mapping[str, torch.Tensor], grid: Grid, params: Params
    ) -> torch.Tensor:
        """Discrete residual ``r = sum(terms)``, shape ``(N, *interior)``."""
        return sum(self.terms(fields, grid, params).values())

    def relative_residual(
        self, fields: Mapping[str, torch.Tensor], grid: Grid, params: Params
    ) -> torch.Tensor:
        """Per-sample ``||r||_2 / max_k ||term_k||_2``: the residual relative to the size of
        the largest term of the equation (so ~1 means the fields do not satisfy the PDE)."""
        terms = self.terms(fields, grid, params)
        r = sum(terms.values())
        norms = torch.stack([t.flatten(1).norm(dim=1) for t in terms.values()])
        scale = norms.max(dim=0).values.clamp_min(torch.finfo(r.dtype).tiny)  # 0/0 -> 0
        return r.flatten(1).norm(dim=1) / scale
