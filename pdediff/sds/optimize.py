"""Score distillation sampling (SDS): fit a renderer's parameters to a diffusion prior.

A differentiable renderer ``g(theta)`` produces normalised fields (see
:mod:`pdediff.sds.renderers`).  Each step draws a noise level :math:`\\sigma` and noise
:math:`\\varepsilon \\sim N(0, I)`, denoises :math:`x_\\sigma = g + \\sigma\\varepsilon`
and moves :math:`\\theta` along DreamFusion's gradient with the denoiser Jacobian dropped
[1]_.  In the EDM form of a denoiser :math:`D` (Karras et al. 2022) the predicted noise is
:math:`\\hat\\varepsilon = (x_\\sigma - D(x_\\sigma, \\sigma))/\\sigma`, so
:math:`\\hat\\varepsilon - \\varepsilon = (g - D)/\\sigma` and

.. math::  \\nabla_\\theta \\mathcal{L}_\\mathrm{SDS}
           = \\mathbb{E}_{\\sigma, \\varepsilon}\\Big[\\frac{w(\\sigma)}{\\sigma^2}
             \\big(g(\\theta) - D(g(\\theta) + \\sigma\\varepsilon, \\sigma)\\big)\\Big]
             \\frac{\\partial g}{\\partial \\theta} .

A descent step therefore moves :math:`g` towards the denoised :math:`D(x_\\sigma)`: with
the default weighting :math:`w = \\sigma^2` the gradient is the plain :math:`g - D`.  It
is implemented as the surrogate loss

.. math::  \\ell(\\theta) = \\frac{w(\\sigma)}{2\\sigma^2}
           \\big\\| g(\\theta) - \\mathrm{sg}[D(x_\\sigma, \\sigma)] \\big\\|^2

(``sg``: stop-gradient), whose autograd gradient is the expression above, plus optional
guidance terms :math:`\\sum_k \\zeta_k(\\sigma) L_k(g(\\theta))` (observations, PDE
residuals, :mod:`pdediff.core.guidance`) differentiated through the renderer as usual.
:math:`\\theta` is updated by Adam.

SDS seeks a mode of the prior (restricted to what the renderer can draw) rather than a
sample: it returns one field per renderer, not an ensemble.

References
----------
.. [1] B. Poole, A. Jain, J. T. Barron, B. Mildenhall, "DreamFusion: Text-to-3D using 2D
   Diffusion", ICLR 2023, arXiv:2209.14988.
.. [2] T. Karras, M. Aittala, T. Aila, S. Laine, "Elucidating the Design Space of
   Diffusion-Based Generative Models", NeurIPS 2022, arXiv:2206.00364.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from pdediff.core.guidance import CallableTerm, Term, WeightSchedule, constant
from pdediff.core.types import Cond, Denoiser, expand_sigma
from pdediff.errors import PdediffError

__all__ = [
    "SIGMA_SCHEDULES",
    "WEIGHTINGS",
    "SDSResult",
    "sds_optimize",
    "sds_surrogate",
]

#: ``w(sigma) (N,) -> (N,)``: the weight of the SDS gradient ``w / sigma^2 (g - D)``.
#: ``sigma2``: ``g - D``, the step towards the denoised estimate (bounded at every sigma);
#: ``sigma``: ``(g - D) / sigma = eps_hat - eps``, DreamFusion's noise residual with its
#: ``w(t) = 1``; ``uniform``: ``(g - D) / sigma^2``, the score-scaled form (large at small
#: sigma).
WEIGHTINGS: dict[str, WeightSchedule] = {
    "sigma2": lambda sigma: sigma**2,
    "sigma": lambda sigma: sigma,
    "uniform": lambda sigma: torch.ones_like(sigma),
}

#: ``(i, steps, sigma_min, sigma_max, generator) -> sigma`` of step ``i``.
SigmaSchedule = Callable[[int, int, float, float, torch.Generator], float]


def _log_uniform(i: int, steps: int, lo: float, hi: float, gen: torch.Generator) -> float:
    """:math:`\\log\\sigma \\sim U(\\log\\sigma_{min}, \\log\\sigma_{max})`, independently."""
    u = float(torch.rand((), generator=gen, dtype=torch.float64))
    return math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def _anneal(i: int, steps: int, lo: float, hi: float, gen: torch.Generator) -> float:
    """From :math:`\\sigma_{max}` down to :math:`\\sigma_{min}`, geometrically: coarse
    structure first, detail last (the annealed time schedules that followed DreamFusion)."""
    frac = i / max(steps - 1, 1)
    return math.exp(math.log(hi) + frac * (math.log(lo) - math.log(hi)))


SIGMA_SCHEDULES: dict[str, SigmaSchedule] = {"log-uniform": _log_uniform, "anneal": _anneal}

TermLike = Term | Callable[[torch.Tensor], torch.Tensor]
WeightedTerms = Sequence[tuple[TermLike, float | WeightSchedule] | TermLike]


@dataclass
class SDSResult:
    """What :func:`sds_optimize` returns.

    Attributes
    ----------
    fields
        The renderer's output after the last step, ``(N, C, *grid)`` normalised, detached.
    history
        Per step: ``"sigma"``, ``"sds"`` (the surrogate :math:`\\ell`, a weighted squared
        distance to the denoised estimate), each guidance term by name (unweighted loss,
        summed over the batch) and ``"total"`` (the loss differentiated).
    seconds
        Wall time of the optimisation.
    """

    fields: torch.Tensor
    history: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def loss(self) -> list[float]:
        """The total loss per step."""
        return self.history["total"]


def _weighting(weighting: str | WeightSchedule) -> WeightSchedule:
    if callable(weighting):
        return weighting
    if weighting not in WEIGHTINGS:
        raise PdediffError(f"unknown SDS weighting {weighting!r}; known: {', '.join(WEIGHTINGS)}")
    return WEIGHTINGS[weighting]


def _schedule(schedule: str | SigmaSchedule) -> SigmaSchedule:
    if callable(schedule):
        return schedule
    if schedule not in SIGMA_SCHEDULES:
        raise PdediffError(
            f"unknown sigma schedule {schedule!r}; known: {', '.join(SIGMA_SCHEDULES)}"
        )
    return SIGMA_SCHEDULES[schedule]


def _as_weighted(terms: WeightedTerms | None) -> list[tuple[Term, WeightSchedule]]:
    """``[(term, weight) | term, ...]`` as terms with weight schedules (weight 1 if bare)."""
    out = []
    for item in terms or []:
        term, weight = item if isinstance(item, tuple) else (item, 1.0)
        term = term if isinstance(term, Term) else CallableTerm(term)
        out.append((term, weight if callable(weight) else constant(float(weight))))
    return out


def sds_surrogate(
    g: torch.Tensor,
    denoiser: Denoiser,
    sigma: torch.Tensor | float,
    eps: torch.Tensor,
    weighting: str | WeightSchedule = "sigma2",
    cond: Cond | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SDS surrogate loss of rendered fields ``g`` at one noise level and noise draw.

    .. math::  \\ell_n = \\frac{w(\\sigma_n)}{2\\sigma_n^2}
               \\| g_n - \\mathrm{sg}[D(g_n + \\sigma_n\\varepsilon_n, \\sigma_n)] \\|^2,
               \\qquad \\nabla_{g_n} \\ell_n = \\frac{w(\\sigma_n)}{\\sigma_n^2}
               \\big(g_n - D(g_n + \\sigma_n\\varepsilon_n, \\sigma_n)\\big)

    (DreamFusion's gradient, the denoiser Jacobian dropped [1]_; gradient descent moves
    ``g`` towards ``D``).

    Parameters
    ----------
    g
        Rendered fields ``(N, C, *grid)`` (normalised), part of the autograd graph.
    denoiser
        ``D(x, sigma, cond) -> x0_hat``; run without gradients.
    sigma
        Noise level, a positive scalar or ``(N,)``.
    eps
        Standard normal noise of ``g``'s shape.
    weighting
        A key of :data:`WEIGHTINGS` or ``w(sigma) (N,) -> (N,)``.
    cond
        Passed to the denoiser.

    Returns
    -------
    loss, denoised
        The per-sample surrogate ``(N,)`` and the (detached) estimate ``D(x_sigma)``.
    """
    sigma_n = expand_sigma(sigma, g).reshape(g.shape[0])
    if not bool((sigma_n > 0).all()):
        raise PdediffError(f"SDS needs sigma > 0, got {sigma_n.tolist()}")
    s = expand_sigma(sigma_n, g)
    with torch.no_grad():
        denoised = denoiser(g.detach() + s * eps, sigma_n, cond).to(g.dtype)
    w = torch.as_tensor(_weighting(weighting)(sigma_n)).to(g).expand(g.shape[0])
    sq = (g - denoised).reshape(g.shape[0], -1).square().sum(dim=1)
    return 0.5 * w / sigma_n**2 * sq, denoised


def _check(steps: int, lr: float, sigma_min: float, sigma_max: float) -> None:
    if steps < 1:
        raise PdediffError(f"steps must be >= 1, got {steps}")
    if not lr > 0:
        raise PdediffError(f"lr must be positive, got {lr}")
    if not 0 < sigma_min <= sigma_max < math.inf:
        raise PdediffError(
            f"need 0 < sigma_min <= sigma_max < inf, got sigma_min={sigma_min}, "
            f"sigma_max={sigma_max}"
        )


def _generator(generator: torch.Generator | int | None) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    return torch.Generator().manual_seed(0 if generator is None else int(generator))


def _raise_non_finite(i: int, sigma: float, losses: dict[str, float]) -> None:
    bad = [k for k, v in losses.items() if not math.isfinite(v)] or ["gradient"]
    raise FloatingPointError(
        f"SDS step {i} (sigma {sigma:.4g}): non-finite {', '.join(bad)} "
        f"({losses}); lower lr or the guidance weights, or check the renderer"
    )


def sds_optimize(
    renderer: nn.Module,
    denoiser: Denoiser,
    *,
    steps: int = 200,
    lr: float = 1e-2,
    sigma_min: float = 0.02,
    sigma_max: float = 3.0,
    weighting: str | WeightSchedule = "sigma2",
    schedule: str | SigmaSchedule = "log-uniform",
    guidance_terms: WeightedTerms | None = None,
    prior_weight: float = 1.0,
    cond: Cond | None = None,
    generator: torch.Generator | int | None = None,
    callback: Callable[[dict], None] | None = None,
) -> SDSResult:
    """Optimise a renderer's parameters by score distillation (DreamFusion [1]_).

    Minimises, by Adam on the trainable parameters of ``renderer``,

    .. math::  \\mathcal{L}(\\theta) = \\lambda\\, \\ell_\\mathrm{SDS}(\\theta; \\sigma,
               \\varepsilon) + \\sum_k \\zeta_k(\\sigma)\\, L_k\\big(g(\\theta)\\big),

    a fresh :math:`\\sigma` (from ``schedule``) and :math:`\\varepsilon` every step;
    :math:`\\ell_\\mathrm{SDS}` is :func:`sds_surrogate` (module docstring for the
    gradient) and :math:`\\lambda` is ``prior_weight``.

    Parameters
    ----------
    renderer
        ``nn.Module`` with ``forward() -> (N, C, *grid)`` normalised fields (the contract of
        :mod:`pdediff.sds.renderers`); its parameters with ``requires_grad`` are optimised.
    denoiser
        ``D(x, sigma, cond) -> x0_hat`` of the prior, on normalised fields.
    steps, lr
        Adam steps and learning rate.
    sigma_min, sigma_max
        Range of the noise levels (normalised units).  DreamFusion draws ``t`` in
        ``[0.02, 0.98]``; a high ``sigma_max`` lets the prior reshape coarse structure, a
        low ``sigma_min`` refines detail.
    weighting
        ``w(sigma)``: a key of :data:`WEIGHTINGS` (default ``"sigma2"``, the gradient
        ``g - D``) or a callable ``(N,) -> (N,)``.
    schedule
        ``"log-uniform"`` (independent draws), ``"anneal"`` (geometric decay from
        ``sigma_max`` to ``sigma_min``) or ``(i, steps, sigma_min, sigma_max, generator)
        -> sigma``.
    guidance_terms
        ``[(term, weight), ...]`` as in :func:`pdediff.core.guidance.guidance_grad`: a term
        is a :class:`~pdediff.core.guidance.Term` (``ObservationTerm``, ``ResidualTerm``,
        ``CallableTerm``) or a callable ``g -> (N,)``, a weight a float or a schedule of
        sigma.  Evaluated on the rendered ``g`` (not on a denoised estimate).
    prior_weight
        :math:`\\lambda`; 0 fits the guidance terms alone (no prior, no denoiser call).
    cond
        Condition passed to the denoiser.
    generator
        Generator or seed of the noise levels and the noise.
    callback
        Called after each step with ``{"i", "sigma", "fields", "denoised", "losses"}``
        (detached tensors; no I/O of its own).

    Returns
    -------
    SDSResult
        Final fields, per-step history, wall time.

    Raises
    ------
    PdediffError
        Bad settings, or a renderer without trainable parameters.
    FloatingPointError
        A non-finite loss or gradient, naming the step, sigma and losses.
    """
    _check(steps, lr, sigma_min, sigma_max)
    if prior_weight < 0:
        raise PdediffError(f"prior_weight must be >= 0, got {prior_weight}")
    params = [p for p in renderer.parameters() if p.requires_grad]
    if not params:
        raise PdediffError("the renderer has no trainable parameters")
    weight_fn, sigma_fn = _weighting(weighting), _schedule(schedule)
    terms = _as_weighted(guidance_terms)
    names = [term.name for term, _ in terms]
    if len(set(names)) != len(names) or {"sigma", "sds", "total"} & set(names):
        raise PdediffError(f"guidance term names must be unique and not sigma/sds/total: {names}")
    gen = _generator(generator)
    optimiser = torch.optim.Adam(params, lr=lr)
    history: dict[str, list[float]] = {"sigma": [], "sds": [], "total": []}
    history.update({term.name: [] for term, _ in terms})
    t0 = time.perf_counter()
    for i in range(steps):
        sigma = float(sigma_fn(i, steps, sigma_min, sigma_max, gen))
        optimiser.zero_grad(set_to_none=True)
        g = renderer()
        sigma_n = torch.full((g.shape[0],), sigma, dtype=g.dtype, device=g.device)
        losses, total, denoised = {}, g.new_zeros(()), None
        if prior_weight > 0:
            eps = torch.randn(g.shape, generator=gen, dtype=g.dtype).to(g.device)
            sds, denoised = sds_surrogate(g, denoiser, sigma_n, eps, weight_fn, cond)
            total = total + prior_weight * sds.sum()
            losses["sds"] = float(sds.detach().sum())
        for term, schedule_k in terms:
            loss = term.loss(g)
            if loss.shape != (g.shape[0],):
                raise PdediffError(
                    f"guidance term {term.name!r} must return one loss per sample, shape "
                    f"({g.shape[0]},); got {tuple(loss.shape)}"
                )
            w = torch.as_tensor(schedule_k(sigma_n)).to(loss).expand(g.shape[0])
            total = total + (w * loss).sum()
            losses[term.name] = float(loss.detach().sum())
        losses["total"] = float(total.detach())
        if not all(math.isfinite(v) for v in losses.values()):
            _raise_non_finite(i, sigma, losses)
        total.backward()
        if not all(torch.isfinite(p.grad).all() for p in params if p.grad is not None):
            _raise_non_finite(i, sigma, losses)
        optimiser.step()
        history["sigma"].append(sigma)
        for k, v in losses.items():
            history[k].append(v)
        if callback is not None:
            callback(
                {
                    "i": i,
                    "sigma": sigma,
                    "fields": g.detach(),
                    "denoised": denoised,
                    "losses": losses,
                }
            )
    with torch.no_grad():
        fields = renderer().detach()
    if prior_weight == 0:
        history.pop("sds")
    return SDSResult(fields=fields, history=history, seconds=time.perf_counter() - t0)
