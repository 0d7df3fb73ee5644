"""Posterior sampling of PDE fields from sparse observations (DiffusionPDE).

Given a denoiser trained on the joint distribution of a family's fields (normalised by a
:class:`~pdediff.io.FieldSpec`) and observations ``y_f = A_f x_f + noise`` of some fields,
draw an ensemble from ``p(x | y)`` by running a sampler of :mod:`pdediff.core.samplers`
with guidance (Huang et al. 2024, "DiffusionPDE", arXiv 2406.17763):

.. math::  L(\\hat x_0) = \\sum_f \\zeta_f(\\sigma)\\, \\|A_f \\hat x_{0,f} - y_f\\|
           + \\zeta_\\mathrm{pde}(\\sigma)\\, \\frac{\\|r(\\hat x_0)\\|}{\\sqrt{P}\\, s},

a gradient step ``x <- x - grad_x L(D(x, sigma))`` after every sampler step (the step
correction).  ``r`` is the family's finite-difference residual of the de-normalised fields
(``P`` interior points) and ``s`` the root mean square of its largest term, so the PDE weight
does not depend on the physical units.  Observation misfits are on the normalised fields.

With ``Protocol.solver`` and a family that has a differentiable reference solver
(``PDEFamily.solution_map``: Darcy, Poisson, Helmholtz by the direct solve and its adjoint,
:mod:`pdediff.pde.adjoint`; Navier-Stokes by its pseudo-spectral flow map) the solution is
not sampled but computed: every estimate ``x0_hat`` is mapped to ``(a, u(a))`` with ``u(a)``
the reference solution of its coefficient, so observations of ``u`` guide ``a`` through the
solver, and the returned members are discrete solutions of their coefficients.
The PDE residual term is then zero and left out.

With ``Protocol.consistency_steps = K > 0`` the step correction is replaced by data
consistency on the clean estimate (DDS, Chung et al. 2024; ReSample, Song et al. 2024):
``x <- x + (x0' - x0_hat)`` with ``x0'`` the result of ``K`` Adam steps on the same loss
from ``x0_hat = D(x, sigma)`` (:func:`pdediff.core.guidance.consistency_correction`), which
fits observations through the solver far more tightly (the shipped Darcy model's inverse
task).

A conditioned model (trained with ``condition``, e.g. on Helmholtz ``k``) samples with its
condition bound: the denoiser every part of the sampler sees, the guidance gradient included,
is the classifier-free guided one (Ho & Salimans 2022, arXiv 2207.12598)

.. math::  \\tilde D(x, \\sigma) = D(x, \\sigma, c) + w\\,\\big(D(x, \\sigma, c)
           - D(x, \\sigma, \\varnothing)\\big),

``w = Protocol.cfg_weight`` (0: the conditional model, exactly), so classifier-free guidance
and observation / PDE guidance act in the same run.

Everything here is torch; xarray enters only in :mod:`pdediff.solve.api`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace

import torch

from pdediff.core.compose import bind_condition, cfg
from pdediff.core.guidance import (
    ObservationTerm,
    ResidualTerm,
    consistency_correction,
    sigma_at_step_fraction,
    step_correction,
    switch,
)
from pdediff.core.samplers import SAMPLERS
from pdediff.core.schedules import karras_sigmas
from pdediff.core.types import Callback, Cond, Correction, Denoiser
from pdediff.errors import PdediffError
from pdediff.io.fieldspec import FieldSpec
from pdediff.io.observations import ObservationModel
from pdediff.pde.base import Params, PDEFamily


@dataclass(frozen=True)
class Protocol:
    """How to sample: sampler, schedule and guidance weights.

    Attributes
    ----------
    sampler
        A key of :data:`pdediff.core.samplers.SAMPLERS`.
    steps, sigma_min, sigma_max, rho
        The Karras et al. (2022) noise schedule.
    obs_weight
        ``field -> zeta_f``; a field without an entry gets ``default_obs_weight``.
    pde_weight
        ``zeta_pde`` (0: observations only).
    switch_fraction
        Fraction of the steps after which observation weights drop to
        ``obs_weight_after * zeta_f`` and the PDE term switches on (DiffusionPDE: 0.8);
        ``None``: constant weights.
    solver
        Compute the solution fields with the family's differentiable reference solver
        instead of sampling them (see the module docstring): ``True`` needs a family with
        one, ``None`` uses it where the family has one.
    sampler_options
        Extra keyword arguments of the sampler, e.g. ``{"n_corrector": 5}`` for ``pc``
        (Langevin corrector steps per level; a product of experts needs several) or
        ``{"S_churn": ...}`` for ``heun``.
    cfg_weight
        Classifier-free guidance weight ``w`` of a conditioned model (see the module
        docstring): 0 samples the conditional model, larger values follow the condition
        more strongly (typically 0.5-3).
    consistency_steps, consistency_lr, consistency_sigma_max
        With ``consistency_steps = K > 0`` the guidance is data consistency on the clean
        estimate instead of the step correction
        (:func:`pdediff.core.guidance.consistency_correction`): after every sampler step
        at ``sigma <= consistency_sigma_max``, ``K`` Adam steps of learning rate
        ``consistency_lr`` (normalised units) on the weighted guidance loss move the
        denoiser's estimate, the noise is kept.  The network is never differentiated, so
        the solver can be fitted tightly for the cost of ``K`` solves and adjoints.
        ``consistency_sigma_max = None``: at every step; otherwise the step correction
        guides the steps above it (early, noisy estimates: the gradient through the
        network spreads what the observations say) and data consistency those below.
    """

    sampler: str = "heun"
    steps: int = 100
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    obs_weight: Mapping[str, float] = field(default_factory=dict)
    default_obs_weight: float = 1.0
    pde_weight: float = 0.0
    switch_fraction: float | None = None
    obs_weight_after: float = 0.1
    solver: bool | None = False
    cfg_weight: float = 0.0
    sampler_options: Mapping[str, float] = field(default_factory=dict)
    consistency_steps: int = 0
    consistency_lr: float = 0.02
    consistency_sigma_max: float | None = None

    def with_overrides(self, **kwargs) -> Protocol:
        """A copy with the given attributes replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in kwargs.items() if v is not None})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["obs_weight"] = dict(self.obs_weight)
        d["sampler_options"] = dict(self.sampler_options)
        return d


#: DiffusionPDE's released protocol: EDM Heun with 2,000 steps, step correction with the
#: unsquared norms, observation weights dropped to 0.1x and the PDE term switched on for the
#: last 20 % of the steps.  Its Darcy weights: forward zeta_a = 5, inverse zeta_u = 5000,
#: zeta_pde = 100 (on its own [-1, 1] scaling of the fields, see ANCHORS.md).
DIFFUSIONPDE = Protocol(
    sampler="heun", steps=2000, pde_weight=100.0, switch_fraction=0.8, obs_weight_after=0.1
)


def _check(protocol: Protocol, spec: FieldSpec) -> None:
    if protocol.sampler not in SAMPLERS:
        raise PdediffError(f"unknown sampler {protocol.sampler!r}; known: {sorted(SAMPLERS)}")
    if protocol.steps < 1:
        raise PdediffError(f"steps must be >= 1, got {protocol.steps}")
    known = set(inspect.signature(SAMPLERS[protocol.sampler]).parameters) - {
        "denoiser", "x", "sigmas", "cond", "generator", "callback", "correction"
    }  # fmt: skip
    bad = sorted(set(protocol.sampler_options) - known)
    if bad:
        raise PdediffError(
            f"sampler {protocol.sampler!r} has no option(s) {bad}; its options: {sorted(known)}"
        )
    unknown = sorted(set(protocol.obs_weight) - set(spec.variables))
    if unknown:
        raise PdediffError(
            f"observation weights for unknown field(s) {unknown}; the model "
            f"has {list(spec.variables)}"
        )
    weights = [*protocol.obs_weight.values(), protocol.default_obs_weight, protocol.pde_weight]
    weights.append(protocol.cfg_weight)
    if any(w < 0 or w != w for w in weights):
        raise PdediffError(f"guidance weights must be >= 0, got {protocol.to_dict()}")
    if protocol.consistency_steps < 0 or not protocol.consistency_lr > 0:
        raise PdediffError(
            f"consistency_steps must be >= 0 and consistency_lr > 0, got "
            f"{protocol.consistency_steps} and {protocol.consistency_lr}"
        )
    if protocol.cfg_weight == float("inf"):
        raise PdediffError("cfg_weight must be finite (typically 0.5-3)")


def pde_residual_fn(
    family: PDEFamily, spec: FieldSpec, params: Params
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x0 (normalised, (N, C, *grid)) -> r / s``: the family's residual of the physical
    fields, divided by the RMS of its largest term (held constant in the gradient)."""
    missing = [f for f in family.fields if f not in spec.variables]
    if missing:
        raise PdediffError(
            f"the model lacks field(s) {missing} of the {family.name} residual; "
            f"it has {list(spec.variables)}"
        )
    grid = spec.grid()
    full = family.params(params)

    def residual(x0: torch.Tensor) -> torch.Tensor:
        phys = spec.denormalise(x0)
        fields = {f: phys[:, spec.variables.index(f)] for f in family.fields}
        terms = family.terms(fields, grid, full)
        scale = torch.stack([t.flatten(1).pow(2).mean(1) for t in terms.values()]).amax(0)
        scale = scale.sqrt().clamp_min(torch.finfo(x0.dtype).tiny).detach()
        r = sum(terms.values())
        return r / scale.reshape(-1, *([1] * (r.ndim - 1)))

    return residual


def solver_families() -> tuple[str, ...]:
    """The registered families with a differentiable solver (``PDEFamily.solution_map``)."""
    from pdediff.pde.registry import FAMILIES

    return tuple(name for name, fam in FAMILIES.items() if fam.solution_map is not None)


def solver_map(
    family: PDEFamily, spec: FieldSpec, params: Params, solve: bool = True
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x0 -> x0'`` (normalised, ``(N, C, *grid)``): the coefficient fields clipped to the
    prior's range ``[a_low, a_high]`` where the family has one, the solution fields replaced
    by the family's differentiable reference solution of them (``PDEFamily.solution_map``).

    The clip passes gradients straight through (its value is clipped, its derivative is
    one), so an observation of ``a`` still pulls an estimate that left the range back in.
    ``solve=False``: the clip alone (the solution channels as they are), all an observation
    of a coefficient field needs.
    """
    if family.solution_map is None:
        raise PdediffError(
            f"solver=True needs a family with a differentiable solver "
            f"({', '.join(solver_families())}), the model's is {family.name!r}"
        )
    missing = [f for f in family.fields if f not in spec.variables]
    if missing:
        raise PdediffError(f"the model lacks field(s) {missing} of the {family.name} solver")
    grid, p = spec.grid(), family.params(params)
    index = {name: spec.variables.index(name) for name in family.fields}
    coefficients = family.role_fields("coefficient")

    def mapped(x0: torch.Tensor) -> torch.Tensor:
        phys = spec.denormalise(x0)
        channels = list(phys.unbind(1))
        inputs = {}
        for name in coefficients:
            c = channels[index[name]]
            if "a_low" in p:
                # value exactly the clipped one (c + (clip - c) rounds for large |c|), slope 1
                c = c.clamp(p["a_low"], p["a_high"]).detach() + (c - c.detach())
            channels[index[name]] = inputs[name] = c
        if solve:
            for name, value in family.solution_map(inputs, grid, p).items():
                channels[index[name]] = value.to(phys.dtype)
        return spec.normalise(torch.stack(channels, 1))

    return mapped


def guidance_terms(
    model: ObservationModel,
    spec: FieldSpec,
    protocol: Protocol,
    sigmas: torch.Tensor,
    residual: Callable[[torch.Tensor], torch.Tensor] | None,
    solved: Callable[[torch.Tensor], torch.Tensor] | None = None,
    clipped: Callable[[torch.Tensor], torch.Tensor] | None = None,
    coefficients: tuple[str, ...] = (),
) -> list:
    """The weighted terms of the step correction (one observation term per field).

    ``solved`` (:func:`solver_map`) makes every observation act on the solved estimate;
    with ``clipped`` (``solver_map(..., solve=False)``) observations of the
    ``coefficients`` fields act on the clipped estimate instead, the same loss without a
    solve.
    """
    s_switch = (
        sigma_at_step_fraction(sigmas, protocol.switch_fraction)
        if protocol.switch_fraction is not None
        else None
    )

    def schedule(before: float, after: float):
        return switch(before, after, s_switch) if s_switch is not None else before

    terms = []
    slices = model.operator.slices()
    for op, name in zip(model.operator.operators, model.operator.names, strict=True):
        zeta = protocol.obs_weight.get(name, protocol.default_obs_weight)
        if zeta == 0:
            continue
        y = model.y[slices[name]]
        if solved is not None:
            inner = clipped if clipped is not None and name in coefficients else solved
            op = _compose(op, inner)
        term = ObservationTerm(op, y, norm="l2", name=f"obs_{name}")
        terms.append((term, schedule(zeta, protocol.obs_weight_after * zeta)))
    if residual is not None and protocol.pde_weight > 0:

        def scaled(x0: torch.Tensor) -> torch.Tensor:
            r = residual(x0)
            return r / r[0].numel() ** 0.5  # ||r|| / sqrt(P): an RMS, whatever the grid size

        before = 0.0 if s_switch is not None else protocol.pde_weight
        terms.append(
            (ResidualTerm(scaled, norm="l2", name="pde"), schedule(before, protocol.pde_weight))
        )
    return terms


def uses_solver(protocol: Protocol, family: PDEFamily | None) -> bool:
    """Whether ``protocol`` computes the solution with the family's solver."""
    if protocol.solver is None:
        return family is not None and family.solution_map is not None
    return bool(protocol.solver)


def _compose(op: Callable, inner: Callable) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x0: op(inner(x0))


def conditioned_denoiser(
    denoiser: Denoiser, cond: Cond, cfg_weight: float, members: int
) -> Denoiser:
    """``denoiser`` with classifier-free guidance of weight ``cfg_weight``
    (:func:`pdediff.core.compose.cfg`) and ``cond`` bound, each entry broadcast from a
    batch of 1 to ``members``."""
    batch = {}
    for key, value in cond.items():
        if value.shape[0] not in (1, members):
            raise PdediffError(
                f'cond["{key}"] has a batch of {value.shape[0]}; give 1 (shared) or {members}'
            )
        batch[key] = value.expand(members, *value.shape[1:])
    return bind_condition(cfg(denoiser, cfg_weight), batch)


def _correction(denoiser: Denoiser, terms: list, protocol: Protocol) -> Correction | None:
    """The guidance correction: the step correction, or data consistency (see
    :class:`Protocol`); None without terms."""
    if not terms:
        return None
    step = step_correction(denoiser, terms)
    if not protocol.consistency_steps:
        return step
    sigma_max = protocol.consistency_sigma_max
    consistency = consistency_correction(
        denoiser,
        terms,
        protocol.consistency_steps,
        protocol.consistency_lr,
        float("inf") if sigma_max is None else sigma_max,
    )
    if sigma_max is None:
        return consistency

    def switched(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor, i: int):
        if float(torch.as_tensor(sigma).max()) > sigma_max:
            return step(x, sigma, denoised, i)
        return consistency(x, sigma, denoised, i)

    return switched


def sample_posterior(
    denoiser: Denoiser,
    spec: FieldSpec,
    model: ObservationModel,
    protocol: Protocol,
    *,
    members: int = 8,
    family: PDEFamily | None = None,
    params: Params | None = None,
    seed: int = 0,
    callback: Callback | None = None,
    dtype: torch.dtype = torch.float32,
    cond: Cond | None = None,
) -> torch.Tensor:
    """An ensemble of ``members`` posterior samples, normalised, ``(members, C, *grid)``.

    All members are sampled in one batch; each has its own noise (from ``seed``) and its own
    guidance gradient (per-sample losses never mix).  ``cond`` (e.g. ``{"vector": (1, D)}``,
    normalised) conditions a conditioned model, with classifier-free guidance of weight
    ``protocol.cfg_weight`` (see the module docstring); ``params`` should then hold the
    physical values of the conditions that are PDE parameters.

    Raises
    ------
    PdediffError
        Bad protocol (unknown sampler or field, negative weight).
    FloatingPointError
        The sample blew up; the message names the guidance term with a non-finite gradient
        (lower its weight).
    """
    _check(protocol, spec)
    if members < 1:
        raise PdediffError(f"members must be >= 1, got {members}")
    if cond is not None:
        denoiser = conditioned_denoiser(denoiser, cond, protocol.cfg_weight, members)
    elif protocol.cfg_weight:
        raise PdediffError(
            f"cfg_weight = {protocol.cfg_weight} needs a condition (classifier-free guidance "
            "of a conditioned model); set cfg_weight to 0 or give the condition"
        )
    sigmas = karras_sigmas(protocol.steps, protocol.sigma_min, protocol.sigma_max, protocol.rho).to(
        dtype
    )
    if protocol.solver and family is None:
        raise PdediffError("solver=True needs the PDE family of the model")
    solved = solver_map(family, spec, params or {}) if uses_solver(protocol, family) else None
    residual = pde_residual_fn(family, spec, params or {}) if family is not None else None
    if solved is not None:
        residual = None  # u(a) solves the discrete PDE: the residual is zero
    clipped = solver_map(family, spec, params or {}, solve=False) if solved is not None else None
    coefficients = family.role_fields("coefficient") if family is not None else ()
    terms = guidance_terms(model, spec, protocol, sigmas, residual, solved, clipped, coefficients)
    correction = _correction(denoiser, terms, protocol)
    generator = torch.Generator().manual_seed(seed)
    x = sigmas[0] * torch.randn(
        members, len(spec.variables), *spec.shape, generator=generator, dtype=dtype
    )
    weights = {
        "obs_weight": dict(protocol.obs_weight),
        "pde_weight": protocol.pde_weight,
        "default_obs_weight": protocol.default_obs_weight,
        "cfg_weight": protocol.cfg_weight,
    }
    try:
        with torch.no_grad():
            out = SAMPLERS[protocol.sampler](
                denoiser,
                x,
                sigmas,
                generator=generator,
                callback=callback,
                correction=correction,
                **dict(protocol.sampler_options),
            )
    except FloatingPointError as e:
        raise FloatingPointError(
            f"sampling blew up ({e}); lower the guidance weight of that term (now {weights})"
        ) from None
    if not torch.isfinite(out).all():
        raise FloatingPointError(
            f"the posterior samples contain NaN/inf; lower the guidance weights (now {weights})"
        )
    if solved is not None:
        out = solved(out)
    return out
