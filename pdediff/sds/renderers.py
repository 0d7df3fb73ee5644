"""Differentiable renderers ``g(theta)``: parameters in, normalised fields out.

The contract (what :func:`pdediff.sds.sds_optimize` optimises): a renderer is an
``nn.Module`` whose ``forward()`` takes no argument and returns ``(1, C, *grid)`` in the
**normalised** units of a model's :class:`~pdediff.io.FieldSpec`,
``x_norm = (x - mean_c) / std_c`` with channel ``c`` the spec's ``variables[c]``, so its
output can be fed to the model's denoiser as it is.  Its trainable parameters are the
``theta`` of score distillation.  A *coefficient renderer* is a renderer of the one
coefficient channel (``(1, 1, *grid)``, normalised by that channel's statistics), which a
:class:`PhysicsRenderer` completes with the solution of the PDE.

* :class:`PixelRenderer`: one free value per grid point (``g`` is the identity);
* :class:`NeuralField`: a coordinate MLP with random Fourier features, renders any grid of
  the same domain from the same parameters (Tancik et al. 2020);
* :class:`EllipseRenderer`: a piecewise-constant coefficient with ``K`` soft ellipses of a
  second level (VectorFusion's shape primitives, Jain et al. 2023, for permeability
  inclusions);
* :class:`ChannelStack`: renderers of some channels each, concatenated;
* :class:`PhysicsRenderer`: ``a -> (a, u(a))`` through the differentiable reference solver
  (:func:`pdediff.pde.adjoint.solve_torch`), so the rendered pair solves the discrete PDE.

References
----------
.. [1] M. Tancik et al., "Fourier Features Let Networks Learn High Frequency Functions in
   Low Dimensional Domains", NeurIPS 2020, arXiv:2006.10739.
.. [2] A. Jain, A. Xie, P. Abbeel, "VectorFusion: Text-to-SVG by Abstracting Pixel-Based
   Diffusion Models", CVPR 2023, arXiv:2211.11319.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from pdediff.errors import PdediffError
from pdediff.io.conventions import attrs_params
from pdediff.io.fieldspec import FieldSpec
from pdediff.pde.adjoint import SOLVER_FAMILIES
from pdediff.pde.base import Params, PDEFamily
from pdediff.solve.posterior import solver_map

__all__ = [
    "ChannelStack",
    "EllipseRenderer",
    "NeuralField",
    "PhysicsRenderer",
    "PixelRenderer",
    "spec_params",
]

Coords = Mapping[str, Sequence[float] | np.ndarray | torch.Tensor]


def _generator(seed: int | torch.Generator | None) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(0 if seed is None else int(seed))


def _as_coords(coords: FieldSpec | Coords | Sequence[int]) -> dict[str, torch.Tensor]:
    """``dim -> float64 coordinates`` of a spec's grid, of a mapping, or of a grid shape
    (unit-box nodes ``linspace(0, 1, n)``)."""
    if isinstance(coords, FieldSpec):
        coords = {d: coords.coords[d] for d in coords.dims}
    if isinstance(coords, Mapping):
        out = {str(d): torch.as_tensor(np.asarray(c, dtype=np.float64)) for d, c in coords.items()}
    else:
        names = ("y", "x") if len(coords) == 2 else tuple(f"d{i}" for i in range(len(coords)))
        out = {
            d: torch.linspace(0.0, 1.0, int(n), dtype=torch.float64)
            for d, n in zip(names, coords, strict=True)
        }
    for d, c in out.items():
        if c.ndim != 1 or c.numel() < 2:
            raise PdediffError(
                f"coordinate {d!r} must be 1-D with >= 2 points, got {tuple(c.shape)}"
            )
    return out


def _mesh(coords: dict[str, torch.Tensor]) -> torch.Tensor:
    """Points ``(*grid, d)`` of the tensor-product grid, in the dims' order."""
    return torch.stack(torch.meshgrid(*coords.values(), indexing="ij"), dim=-1)


# ----------------------------------------------------------------------------------------
# Free pixels


class PixelRenderer(nn.Module):
    """``g(theta) = theta``: one free, normalised value per channel and grid point.

    Parameters
    ----------
    shape
        ``(C, *grid)``.
    init
        Initial value (a float or a tensor of ``shape``); default 0, the normalised mean.
    """

    def __init__(self, shape: Sequence[int], init: float | torch.Tensor = 0.0) -> None:
        super().__init__()
        value = torch.as_tensor(init, dtype=torch.float32).expand(*shape).clone()
        self.theta = nn.Parameter(value[None])

    def forward(self) -> torch.Tensor:
        return self.theta


# ----------------------------------------------------------------------------------------
# Neural field


class NeuralField(nn.Module):
    """A coordinate MLP with random Fourier features [1]_, rendered on any grid.

    .. math::  g(p) = \\mathrm{MLP}\\big([\\cos 2\\pi B v, \\sin 2\\pi B v]\\big), \\qquad
               v = (p - p_{lo}) / (p_{hi} - p_{lo}) \\in [0, 1]^d ,

    with :math:`B_{jk} \\sim N(0, s^2)` fixed (not trained) and :math:`p_{lo}, p_{hi}` the
    corners of the domain the field was built on, in physical units.  The field is a
    function of the physical position, so the same parameters render the same function at
    any resolution (:meth:`render`); ``forward()`` renders the construction grid.  The
    output is the normalised fields (see the module docstring).

    Parameters
    ----------
    channels
        Output channels ``C``.
    coords
        A :class:`~pdediff.io.FieldSpec` (its grid), ``dim -> coordinates`` in physical
        units, or a grid shape (unit-box nodes ``linspace(0, 1, n)``).
    features
        Number of random frequencies ``m`` (the encoding has ``2 m`` entries).
    scale
        Standard deviation ``s`` of the frequencies, in cycles per domain: larger ``s``
        resolves finer detail and fits noise more readily.
    hidden, depth
        Width and number of hidden layers of the MLP (SiLU, so the field is smooth).
    seed
        Seed (or generator) of the frequencies and of the initial weights.
    """

    def __init__(
        self,
        channels: int,
        coords: FieldSpec | Coords | Sequence[int],
        *,
        features: int = 64,
        scale: float = 3.0,
        hidden: int = 64,
        depth: int = 3,
        seed: int | torch.Generator | None = 0,
    ) -> None:
        super().__init__()
        grid = _as_coords(coords)
        gen = _generator(seed)
        self.dims = tuple(grid)
        self.coords = {d: c.tolist() for d, c in grid.items()}
        self.register_buffer("lo", torch.tensor([float(c.min()) for c in grid.values()]))
        self.register_buffer("hi", torch.tensor([float(c.max()) for c in grid.values()]))
        self.register_buffer("freqs", scale * torch.randn(len(grid), features, generator=gen))
        layers: list[nn.Module] = []
        width = 2 * features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, channels))
        self.mlp = nn.Sequential(*layers)
        with torch.no_grad():
            for layer in self.mlp[::2]:  # from the generator, so a seed fixes the field
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=gen)
                layer.bias.zero_()

    def encode(self, points: torch.Tensor) -> torch.Tensor:
        """Fourier features ``(..., 2 m)`` of physical points ``(..., d)``."""
        v = (points - self.lo) / (self.hi - self.lo)
        angle = 2 * math.pi * v @ self.freqs
        return torch.cat([angle.cos(), angle.sin()], dim=-1)

    def render(self, coords: Coords | Sequence[int] | None = None) -> torch.Tensor:
        """The field ``(1, C, *grid)`` on ``coords`` (physical units, the field's dims in
        order) or on a node grid of the given shape spanning the domain."""
        if coords is None:
            grid = _as_coords(self.coords)
        elif isinstance(coords, Mapping):
            grid = _as_coords(coords)
            if tuple(grid) != self.dims:
                raise PdediffError(f"render on dims {self.dims}, got {tuple(grid)}")
        else:
            if len(coords) != len(self.dims):
                raise PdediffError(f"a {len(self.dims)}-d field, got grid shape {tuple(coords)}")
            grid = {
                d: torch.linspace(float(lo), float(hi), int(n), dtype=torch.float64)
                for d, lo, hi, n in zip(self.dims, self.lo, self.hi, coords, strict=True)
            }
        points = _mesh(grid).to(self.lo)
        out = self.mlp(self.encode(points))  # (*grid, C)
        return out.movedim(-1, 0)[None]

    def forward(self) -> torch.Tensor:
        return self.render()


# ----------------------------------------------------------------------------------------
# Ellipses


class EllipseRenderer(nn.Module):
    """A two-level coefficient with ``K`` soft elliptic inclusions, differentiable in every
    shape parameter (VectorFusion's idea [2]_ for permeability fields).

    Ellipse ``k`` has centre :math:`c_k`, semi-axes :math:`r_k = e^{\\ell_k}` and angle
    :math:`\\phi_k`; with :math:`q = R(-\\phi_k)(p - c_k)` and
    :math:`\\rho_k^2 = (q_1/r_{k1})^2 + (q_2/r_{k2})^2`, its soft indicator is

    .. math::  s_k(p) = \\sigma\\big(d_k(p) / \\tau\\big), \\qquad
               d_k = \\tfrac12 (1 - \\rho_k^2) \\sqrt{r_{k1} r_{k2}},

    :math:`d_k` being the signed distance to the boundary to first order (exact for a
    circle near its edge), so :math:`\\tau` is the edge width in physical units.  The
    ellipses are joined by the soft union :math:`o = 1 - \\prod_k (1 - s_k)` and

    .. math::  a(p) = a_{low} + (a_{high} - a_{low})\\, o(p),

    returned normalised as ``(a - mean) / std`` (``(1, 1, ny, nx)``).  Positions and axes
    are stored in units of the domain's largest extent ``L`` from its lower corner, so the
    same learning rate suits any physical size.

    Parameters
    ----------
    coords
        A 2-D :class:`~pdediff.io.FieldSpec` (its grid), ``{"y": ..., "x": ...}`` in
        physical units, or a grid shape (unit box).
    count
        Number of ellipses ``K``.
    a_low, a_high
        Background level and level inside the ellipses (physical units).
    tau
        Edge width in physical units; default one grid spacing.
    mean, std
        Normalisation of the channel (the spec's statistics of the coefficient).
    seed
        Seed (or generator) of the initial shapes: centres uniform in the middle 60 % of
        the domain, semi-axes 0.08 to 0.2 ``L``, random angles.
    """

    def __init__(
        self,
        coords: FieldSpec | Coords | Sequence[int],
        count: int = 4,
        *,
        a_low: float,
        a_high: float,
        tau: float | None = None,
        mean: float = 0.0,
        std: float = 1.0,
        seed: int | torch.Generator | None = 0,
    ) -> None:
        super().__init__()
        grid = _as_coords(coords)
        if len(grid) != 2:
            raise PdediffError(f"EllipseRenderer draws on 2-D grids, got dims {tuple(grid)}")
        if count < 1:
            raise PdediffError(f"count must be >= 1 ellipse, got {count}")
        if std <= 0:
            raise PdediffError(f"std must be positive, got {std}")
        gen = _generator(seed)
        lo = torch.tensor([float(c.min()) for c in grid.values()], dtype=torch.float64)
        extent = max(float(c.max() - c.min()) for c in grid.values())
        spacing = min(float(c[1] - c[0]) for c in grid.values())
        tau = spacing if tau is None else float(tau)
        if tau <= 0:
            raise PdediffError(f"tau (edge width) must be positive, got {tau}")
        self.levels = (float(a_low), float(a_high))
        self.norm = (float(mean), float(std))
        self.tau = tau / extent
        self.register_buffer("points", ((_mesh(grid) - lo) / extent).float())
        self.centre = nn.Parameter(0.2 + 0.6 * torch.rand(count, 2, generator=gen))
        axes = 0.08 + 0.12 * torch.rand(count, 2, generator=gen)
        self.log_axes = nn.Parameter(axes.log())
        self.angle = nn.Parameter(math.pi * torch.rand(count, generator=gen))

    @classmethod
    def from_spec(
        cls,
        spec: FieldSpec,
        variable: str = "a",
        count: int = 4,
        *,
        a_low: float | None = None,
        a_high: float | None = None,
        **kwargs,
    ) -> EllipseRenderer:
        """Renderer of ``variable`` on ``spec``'s grid, normalised by its statistics; the
        levels default to the ``param_a_low`` / ``param_a_high`` the spec records."""
        if variable not in spec.variables:
            raise PdediffError(
                f"the model has no field {variable!r}; it has {list(spec.variables)}"
            )
        a_low = spec.attrs.get("param_a_low") if a_low is None else a_low
        a_high = spec.attrs.get("param_a_high") if a_high is None else a_high
        if a_low is None or a_high is None:
            raise PdediffError(
                f"the model records no levels (param_a_low, param_a_high) for {variable!r}; "
                "give a_low and a_high"
            )
        c = spec.variables.index(variable)
        return cls(
            spec, count, a_low=a_low, a_high=a_high, mean=spec.mean[c], std=spec.std[c], **kwargs
        )

    def indicators(self) -> torch.Tensor:
        """Soft indicators ``s_k`` of the ellipses, ``(K, ny, nx)`` in ``[0, 1]``."""
        q = self.points.to(self.centre)[None] - self.centre[:, None, None, :]  # (K, ny, nx, 2)
        cos = self.angle.cos()[:, None, None]
        sin = self.angle.sin()[:, None, None]
        q1 = cos * q[..., 0] + sin * q[..., 1]
        q2 = -sin * q[..., 0] + cos * q[..., 1]
        axes = self.log_axes.exp()
        rho2 = (q1 / axes[:, None, None, 0]) ** 2 + (q2 / axes[:, None, None, 1]) ** 2
        distance = 0.5 * (1 - rho2) * axes.prod(-1).sqrt()[:, None, None]
        return torch.sigmoid(distance / self.tau)

    def coefficient(self) -> torch.Tensor:
        """The coefficient ``a`` in physical units, ``(ny, nx)``."""
        occupied = 1 - torch.prod(1 - self.indicators(), dim=0)
        a_low, a_high = self.levels
        return a_low + (a_high - a_low) * occupied

    def forward(self) -> torch.Tensor:
        mean, std = self.norm
        return ((self.coefficient() - mean) / std)[None, None]


# ----------------------------------------------------------------------------------------
# Composition


class ChannelStack(nn.Module):
    """Renderers of some channels each, concatenated along the channel dim in order.

    E.g. ``ChannelStack([EllipseRenderer(...), NeuralField(1, spec.coords)])`` renders a
    two-level ``a`` and a free ``u`` for an ``(a, u)`` model.
    """

    def __init__(self, renderers: Sequence[nn.Module]) -> None:
        super().__init__()
        if not renderers:
            raise PdediffError("ChannelStack needs at least one renderer")
        self.parts = nn.ModuleList(renderers)

    def forward(self) -> torch.Tensor:
        return torch.cat([part() for part in self.parts], dim=1)


def spec_params(spec: FieldSpec, family: PDEFamily) -> dict[str, float]:
    """The family parameters recorded in a model's spec (``param_*`` attributes), as
    :func:`pdediff.solve.solve` reads them."""
    return attrs_params(spec.attrs, family.defaults)


class PhysicsRenderer(nn.Module):
    """``(a, u(a))`` from a coefficient renderer, ``u`` by the reference solver.

    .. math::  g(\\theta) = \\mathrm{normalise}\\big(a_\\theta,\\; S(a_\\theta)\\big),

    with :math:`a_\\theta` the de-normalised output of ``coef_renderer`` and :math:`S` the
    family's discrete solution operator (:func:`~pdediff.pde.adjoint.solve_torch`, a
    sparse LU per call and one adjoint solve per backward).  The rendered pair satisfies
    the discrete PDE to round-off whatever ``theta`` is, so score distillation only moves
    within the solution manifold.  Where the family's coefficient has a range
    ``[a_low, a_high]`` (Darcy) the coefficient is clipped to it with a straight-through
    gradient (value clipped, derivative one), as in the posterior solver's solver mode.

    Parameters
    ----------
    coef_renderer
        A coefficient renderer: ``forward() -> (1, 1, *grid)``, normalised by the spec's
        statistics of the coefficient variable.
    family
        Darcy, Poisson or Helmholtz (:data:`~pdediff.pde.adjoint.SOLVER_FAMILIES`).
    spec
        The model's spec; its variables must be the family's fields.
    params
        Family parameters; default those recorded in the spec (:func:`spec_params`).
    """

    def __init__(
        self,
        coef_renderer: nn.Module,
        family: PDEFamily,
        spec: FieldSpec,
        params: Params | None = None,
    ) -> None:
        super().__init__()
        if family.name not in SOLVER_FAMILIES:
            raise PdediffError(
                f"PhysicsRenderer needs a family with a differentiable solver "
                f"({', '.join(SOLVER_FAMILIES)}), got {family.name!r}"
            )
        if set(spec.variables) != set(family.fields):
            raise PdediffError(
                f"the model's fields {list(spec.variables)} are not the {family.name} fields "
                f"{list(family.fields)}: the renderer could not render the others"
            )
        self.coef_renderer = coef_renderer
        self.family, self.spec = family, spec
        self.params = family.params(spec_params(spec, family) if params is None else params)
        coef = [f for f, info in family.fields.items() if info.role == "coefficient"]
        self.coefficient = coef[0]
        self._solved = solver_map(family, spec, self.params)

    def forward(self) -> torch.Tensor:
        a_norm = self.coef_renderer()
        if a_norm.shape[:2] != (1, 1):
            raise PdediffError(
                f"the coefficient renderer must return (1, 1, *grid), got {tuple(a_norm.shape)}"
            )
        # the other channels are placeholders: solver_map replaces them by u(a)
        channels = [
            a_norm[:, 0] if v == self.coefficient else torch.zeros_like(a_norm[:, 0])
            for v in self.spec.variables
        ]
        return self._solved(torch.stack(channels, dim=1))
