"""Guidance for posterior sampling: terms, weight schedules and two injection points.

A *term* maps the denoiser's estimate ``x0_hat`` (``(N, C, *grid)``) to a per-sample loss
``(N,)``; a *weight schedule* maps the noise level ``sigma`` ``(N,)`` to a weight ``(N,)``.
The guidance loss of a batch is

.. math::  \\mathcal{L}(x, \\sigma) = \\sum_n \\sum_k w_k(\\sigma_n)\\,
           L_k\\big(\\hat x_0(x_n, \\sigma_n)\\big)_n ,

a sum of per-sample losses, so the gradient with respect to sample ``n`` is that sample's
own gradient (the batch members never mix).  It enters sampling in one of two ways:

* :func:`guided_denoiser` wraps a denoiser (DPS, Chung et al. 2023): the gradient is
  added to the score, the sampler is unchanged;
* :func:`step_correction` returns a :data:`~pdediff.core.types.Correction`, a gradient step
  on the sampler state after each sampler step (DiffusionPDE, Huang et al. 2024).

References
----------
.. [1] H. Chung, J. Kim, M. T. McCann, M. L. Klasky, J. C. Ye, "Diffusion Posterior
   Sampling for General Noisy Inverse Problems", ICLR 2023, arXiv:2209.14687.
.. [2] J. Huang, G. Yang, Z. Wang, J. J. Park, "DiffusionPDE: Generative PDE-Solving Under
   Partial Observation", NeurIPS 2024, arXiv:2406.17763.
.. [3] B. Poole, A. Jain, J. T. Barron, B. Mildenhall, "DreamFusion: Text-to-3D using 2D
   Diffusion", ICLR 2023, arXiv:2209.14988 (the Jacobian-free gradient).
.. [5] H. Chung, S. Lee, J. C. Ye, "Decomposed Diffusion Sampler for Accelerating
   Large-Scale Inverse Problems" (DDS), ICLR 2024, arXiv:2303.05754; B. Song et al.,
   "Solving Inverse Problems with Latent Diffusion Models via Hard Data Consistency"
   (ReSample), ICLR 2024, arXiv:2307.08123.
.. [4] J. Yao et al., "Guided Diffusion Sampling on Function Spaces with Applications to
   PDEs" (FunDPS), NeurIPS 2025, arXiv:2505.17004.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, Protocol, runtime_checkable

import torch

from pdediff.core.types import Cond, Correction, Denoiser, expand_sigma

__all__ = [
    "Term",
    "ObservationTerm",
    "ResidualTerm",
    "CallableTerm",
    "WeightSchedule",
    "constant",
    "switch",
    "power",
    "sigma_window",
    "sigma_at_step_fraction",
    "guidance_grad",
    "guided_denoiser",
    "step_correction",
    "consistency_correction",
]

Norm = Literal["l2sq", "l2", "mse", "rms", "huber"]

#: ``w(sigma) -> weight``: ``sigma`` is a float tensor ``(N,)``, the weight has its shape.
WeightSchedule = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------
# Terms


@runtime_checkable
class Term(Protocol):
    """A guidance term: ``loss(x0_hat) -> (N,)``, one scalar per batch member."""

    name: str

    def loss(self, x0_hat: torch.Tensor) -> torch.Tensor: ...


def _reduce(r: torch.Tensor, norm: Norm, huber_delta: float = 1.0) -> torch.Tensor:
    """Per-sample size of a residual ``r`` ``(N, ...)``.

    ``l2sq`` :math:`\\|r\\|^2`, ``l2`` :math:`\\|r\\|`, ``mse`` :math:`\\|r\\|^2/m`,
    ``rms`` :math:`\\|r\\|/\\sqrt m` and ``huber`` the mean Huber loss (``m`` entries per
    sample).
    """
    r = r.reshape(r.shape[0], -1)
    if norm == "l2sq":
        return r.square().sum(dim=1)
    if norm == "l2":
        # vector_norm has a zero subgradient at r = 0, where sqrt(sum r^2) would give NaN.
        return torch.linalg.vector_norm(r, dim=1)
    if norm == "mse":
        return r.square().mean(dim=1)
    if norm == "rms":
        return torch.linalg.vector_norm(r, dim=1) / math.sqrt(r.shape[1])
    if norm == "huber":
        zero = torch.zeros_like(r)
        return torch.nn.functional.huber_loss(r, zero, reduction="none", delta=huber_delta).mean(1)
    raise ValueError(f"unknown norm {norm!r}; use 'l2sq', 'l2', 'mse', 'rms' or 'huber'")


class ObservationTerm:
    """Misfit between predicted and measured observations, :math:`\\|A(\\hat x_0) - y\\|`.

    Parameters
    ----------
    operator
        Maps ``x0`` ``(N, C, *grid)`` to predicted observations ``(N, M)`` (in practice a
        linear observation operator, composed with any de-normalisation of the fields).
    y
        Observations ``(N, M)``, or ``(M,)`` shared by the batch.
    noise_std
        Observation noise standard deviation :math:`\\eta` (a float or a tensor broadcastable
        to ``(N, M)``).  With ``norm="l2sq"`` the loss is then the Gaussian negative
        log-likelihood :math:`\\|A(\\hat x_0)-y\\|^2 / (2\\eta^2)`; without it the plain
        :math:`\\|A(\\hat x_0)-y\\|^2` of DPS [1]_.  Other norms act on the whitened
        residual :math:`(A(\\hat x_0)-y)/\\eta`.
    norm
        ``"l2sq"`` (squared, DPS), ``"l2"`` (not squared, the DiffusionPDE loss
        :math:`\\|M(\\hat a - y)\\|` [2]_), or ``"mse"``, ``"rms"``, ``"huber"``.
    name
        Used in error messages (e.g. ``"obs_u"``).
    """

    def __init__(
        self,
        operator: Callable[[torch.Tensor], torch.Tensor],
        y: torch.Tensor,
        noise_std: float | torch.Tensor | None = None,
        norm: Norm = "l2sq",
        name: str = "observation",
    ) -> None:
        _reduce(torch.zeros(1, 1), norm)  # fail now on an unknown norm, not mid-sampling
        self.operator = operator
        self.y = y
        self.noise_std = noise_std
        self.norm = norm
        self.name = name

    def loss(self, x0_hat: torch.Tensor) -> torch.Tensor:
        r = self.operator(x0_hat) - self.y.to(x0_hat)
        if self.noise_std is None:
            return _reduce(r, self.norm)
        r = r / torch.as_tensor(self.noise_std, dtype=r.dtype, device=r.device)
        # The 1/2 makes the squared form the Gaussian negative log-likelihood.
        return 0.5 * _reduce(r, "l2sq") if self.norm == "l2sq" else _reduce(r, self.norm)

    __call__ = loss


class ResidualTerm:
    """Size of a residual, typically a finite-difference PDE residual.

    ``loss = scale * norm(residual_fn(x0_hat))``.  DiffusionPDE's PDE loss
    :math:`\\|r\\|/N^2` on an :math:`N\\times N` grid [2]_ is
    ``ResidualTerm(fn, norm="l2", scale=1 / N**2)``; FunDPS uses ``norm="huber"`` [4]_.

    Parameters
    ----------
    residual_fn
        ``x0_hat (N, C, *grid) -> residual (N, ...)``; the caller supplies any mapping from
        normalised to physical fields and the grid spacing.
    norm
        See :class:`ObservationTerm`; ``huber_delta`` is the Huber threshold.
    scale
        Constant factor on the loss.
    """

    def __init__(
        self,
        residual_fn: Callable[[torch.Tensor], torch.Tensor],
        norm: Norm = "l2sq",
        scale: float = 1.0,
        huber_delta: float = 1.0,
        name: str = "residual",
    ) -> None:
        _reduce(torch.zeros(1, 1), norm)
        self.residual_fn = residual_fn
        self.norm = norm
        self.scale = scale
        self.huber_delta = huber_delta
        self.name = name

    def loss(self, x0_hat: torch.Tensor) -> torch.Tensor:
        return self.scale * _reduce(self.residual_fn(x0_hat), self.norm, self.huber_delta)

    __call__ = loss


class CallableTerm:
    """Any callable ``fn(x0_hat) -> (N,)`` as a term."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "callable")

    def loss(self, x0_hat: torch.Tensor) -> torch.Tensor:
        return self.fn(x0_hat)

    __call__ = loss


# ----------------------------------------------------------------------------------------
# Weight schedules over sigma


def constant(w: float) -> WeightSchedule:
    """:math:`w(\\sigma) = w`."""
    return lambda sigma: torch.full_like(sigma, w)


def switch(w_before: float, w_after: float, sigma_switch: float) -> WeightSchedule:
    """``w_before`` while :math:`\\sigma > \\sigma_s`, ``w_after`` once :math:`\\sigma \\le
    \\sigma_s`.

    Sampling runs from high to low noise, so "before" is the early, noisy part.
    DiffusionPDE's switch after 80 % of the steps [2]_ is
    ``switch(z, 0.1 * z, sigma_at_step_fraction(sigmas, 0.8))``.
    """
    return lambda sigma: torch.where(
        sigma > sigma_switch, torch.full_like(sigma, w_before), torch.full_like(sigma, w_after)
    )


def power(w: float, sigma_ref: float = 1.0, p: float = 1.0) -> WeightSchedule:
    """:math:`w(\\sigma) = w\\,\\min(1, \\sigma/\\sigma_{ref})^p`.

    Constant at high noise, decaying as :math:`\\sigma^p` below :math:`\\sigma_{ref}`;
    ``power(w, 1.0, 1.0)`` is FunDPS's observation weight ("×1 while σ > 1, then ×σ") [4]_.
    """
    return lambda sigma: w * torch.clamp(sigma / sigma_ref, max=1.0) ** p


def sigma_window(w: float, sigma_lo: float = 0.0, sigma_hi: float = math.inf) -> WeightSchedule:
    """``w`` for :math:`\\sigma_{lo} \\le \\sigma \\le \\sigma_{hi}`, zero elsewhere.

    E.g. FunDPS's PDE loss "only once σ ≤ 1" is ``sigma_window(w, sigma_hi=1.0)`` [4]_.
    """
    inside = lambda sigma: (sigma >= sigma_lo) & (sigma <= sigma_hi)  # noqa: E731
    return lambda sigma: torch.where(inside(sigma), w, 0.0).to(sigma)


def sigma_at_step_fraction(sigmas: torch.Tensor, fraction: float) -> float:
    """The ``sigma_switch`` for :func:`switch` that reproduces a switch by step index.

    DiffusionPDE uses the first weights after step ``i`` while ``i <= fraction * n``
    (``n = len(sigmas) - 1`` steps, 0-based ``i``) [2]_; a correction after step ``i``
    sees ``sigma = sigmas[i + 1]``.  With ``k = floor(fraction * n)``,
    ``sigmas[i + 1] > sigmas[k + 2]`` exactly when ``i <= k``, so this returns
    ``sigmas[k + 2]`` (or ``-1`` when every step is "before").
    """
    k = math.floor(fraction * (len(sigmas) - 1))
    return float(sigmas[k + 2]) if k + 2 < len(sigmas) else -1.0


# ----------------------------------------------------------------------------------------
# Gradient

TermLike = Term | Callable[[torch.Tensor], torch.Tensor]
WeightLike = float | WeightSchedule
WeightedTerms = Sequence[tuple[TermLike, WeightLike] | TermLike]


def _as_weighted(terms: WeightedTerms) -> list[tuple[Term, WeightSchedule]]:
    """Normalise ``[(term, weight) | term, ...]`` to terms with weight schedules."""
    out: list[tuple[Term, WeightSchedule]] = []
    for item in terms:
        term, weight = item if isinstance(item, tuple) else (item, 1.0)
        if not isinstance(term, Term):
            term = CallableTerm(term)
        if not callable(weight):
            weight = constant(float(weight))
        out.append((term, weight))
    return out


def _per_sample_sigma(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    return expand_sigma(sigma, x).reshape(x.shape[0])


def _active_weights(
    weighted: list[tuple[Term, WeightSchedule]], sigma_n: torch.Tensor
) -> list[tuple[Term, torch.Tensor]]:
    """``(term, weight (N,))`` of the terms whose weight is not zero for every sample.

    Known before the denoiser runs, so e.g. an expensive PDE residual outside its sigma
    window is never evaluated, and no graph is built when no term is active.
    """
    out = []
    for term, schedule in weighted:
        # A user schedule may return a Python float: make it one weight per sample.
        w = torch.as_tensor(schedule(sigma_n)).to(sigma_n).expand(sigma_n.shape[0])
        if torch.any(w != 0):
            out.append((term, w))
    return out


def _weighted_losses(
    active: list[tuple[Term, torch.Tensor]], x0_hat: torch.Tensor
) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(name, weight (N,), loss (N,))`` of each active term."""
    out = []
    for term, w in active:
        loss = term.loss(x0_hat)
        if loss.shape != (x0_hat.shape[0],):
            raise ValueError(
                f"guidance term {term.name!r} must return one loss per sample, shape "
                f"({x0_hat.shape[0]},); got {tuple(loss.shape)}"
            )
        out.append((term.name, w.to(loss.dtype), loss))
    return out


def _raise_non_finite(name: str, what: str, sigma_n: torch.Tensor) -> None:
    raise FloatingPointError(
        f"guidance term {name!r} gave a non-finite {what} at sigma in "
        f"[{float(sigma_n.min()):.4g}, {float(sigma_n.max()):.4g}]; lower its weight, "
        "check its inputs (observations, residual) or use a less steep norm"
    )


def _diagnose(
    losses: list[tuple[str, torch.Tensor, torch.Tensor]],
    target: torch.Tensor,
    sigma_n: torch.Tensor,
) -> None:
    """Find the term behind a non-finite total gradient and raise naming it."""
    for name, w, loss in losses:
        if not torch.isfinite(loss).all():
            _raise_non_finite(name, "loss", sigma_n)
        (g,) = torch.autograd.grad((w * loss).sum(), target, retain_graph=True)
        if not torch.isfinite(g).all():
            _raise_non_finite(name, "gradient", sigma_n)
    _raise_non_finite("+".join(n for n, _, _ in losses), "sum of gradients", sigma_n)


def _evaluate(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigma: torch.Tensor | float,
    cond: Cond | None,
    through_denoiser: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(target, x0_hat)``: the leaf the gradient is taken with respect to, and the
    estimate the terms see (built with autograd on; call under ``enable_grad``)."""
    sigma_n = _per_sample_sigma(sigma, x)
    if torch.all(sigma_n == 0):
        # At sigma = 0 the state is clean: D(x, 0) = x by definition, and a preconditioned
        # network need not be defined there (EDM's c_noise = log(sigma) / 4).
        target = x.detach().requires_grad_(True)
        return target, target
    if through_denoiser:
        target = x.detach().requires_grad_(True)
        return target, denoiser(target, sigma, cond)
    with torch.no_grad():
        x0_hat = denoiser(x.detach(), sigma, cond)
    target = x0_hat.detach().requires_grad_(True)
    return target, target


def guidance_grad(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigma: torch.Tensor | float,
    terms_with_weights: WeightedTerms,
    cond: Cond | None = None,
    through_denoiser: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the weighted guidance loss, and the denoised estimate.

    .. math::  g = \\nabla_x \\sum_n \\sum_k w_k(\\sigma_n) L_k(D(x, \\sigma))_n
               = J_D^\\top \\sum_k w_k \\nabla_{\\hat x_0} L_k

    With ``through_denoiser=True`` the gradient is back-propagated through the denoiser
    (DPS [1]_).  With ``False`` the Jacobian :math:`J_D = \\partial D/\\partial x` is
    replaced by the identity, :math:`g = \\sum_k w_k \\nabla_{\\hat x_0} L_k` at
    :math:`\\hat x_0 = D(x,\\sigma)` (the Jacobian-free gradient of SDS [3]_): no backward
    pass through the network, exact where :math:`J_D \\approx I` (small sigma).

    Parameters
    ----------
    denoiser
        ``D(x, sigma, cond) -> x0_hat``.
    x
        Noisy state ``(N, C, *grid)``.
    sigma
        Noise level, scalar or ``(N,)``.  At ``sigma = 0`` (all samples) ``D(x, 0) = x`` is
        used without calling the denoiser.
    terms_with_weights
        ``[(term, weight), ...]``: a term is a :class:`Term` or a callable
        ``x0_hat -> (N,)``; a weight is a float or a schedule ``w(sigma) -> (N,)``.  A bare
        term has weight 1.  Terms whose weight is zero for every sample are not evaluated.
    cond
        Passed to the denoiser.
    through_denoiser
        Differentiate through the denoiser (True) or drop its Jacobian (False).

    Returns
    -------
    grad, denoised
        Detached tensors shaped like ``x``.

    Raises
    ------
    FloatingPointError
        If the gradient is not finite, naming the term responsible.
    """
    sigma_n = _per_sample_sigma(sigma, x)
    active = _active_weights(_as_weighted(terms_with_weights), sigma_n)
    if not active:
        with torch.no_grad():
            x0_hat = x if torch.all(sigma_n == 0) else denoiser(x, sigma, cond)
        return torch.zeros_like(x), x0_hat.detach()
    with torch.enable_grad():
        target, x0_hat = _evaluate(denoiser, x, sigma, cond, through_denoiser)
        if not torch.isfinite(x0_hat).all():
            raise FloatingPointError("the denoiser returned non-finite values")
        losses = _weighted_losses(active, x0_hat)
        total = sum((w * loss).sum() for _, w, loss in losses)
        (grad,) = torch.autograd.grad(total, target, retain_graph=True)
        if not torch.isfinite(grad).all():
            _diagnose(losses, target, sigma_n)
    return grad.detach(), x0_hat.detach()


# ----------------------------------------------------------------------------------------
# Injection


def guided_denoiser(
    denoiser: Denoiser,
    terms: WeightedTerms,
    through_denoiser: bool = True,
    scale: Literal["score", "x0"] = "score",
) -> Denoiser:
    """A denoiser whose score carries the guidance gradient (DPS, [1]_).

    The score of a denoiser is :math:`s(x,\\sigma) = (D(x,\\sigma) - x)/\\sigma^2`.  If the
    total loss :math:`L` is a negative log-likelihood :math:`-\\log p(y\\mid x)`, the
    posterior score is :math:`s - \\nabla_x L`.  Solving
    :math:`(D' - x)/\\sigma^2 = s - \\nabla_x L` for the denoiser gives

    .. math::  D'(x, \\sigma) = D(x, \\sigma) - \\sigma^2 \\nabla_x L
               \\qquad (\\texttt{scale="score"}).

    DPS approximates :math:`p(y \\mid x_\\sigma)` by :math:`p(y \\mid \\hat x_0)`, which
    ignores the spread of :math:`x_0` given :math:`x_\\sigma`; it is exact as
    :math:`\\sigma \\to 0` (and for a Gaussian prior and linear observations when the
    weight absorbs that spread, see the tests).  With ``scale="x0"`` the step is taken on
    the clean estimate instead, :math:`D' = D - \\nabla_x L`: a sigma-independent
    correction of :math:`\\hat x_0`, for losses that are not log-likelihoods.

    Every sampler then samples the guided model unchanged.  The returned denoiser runs
    autograd internally (also inside ``torch.no_grad``) and returns a detached tensor.
    """
    if scale not in ("score", "x0"):
        raise ValueError(f"scale must be 'score' or 'x0', got {scale!r}")

    def guided(x: torch.Tensor, sigma: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        grad, x0_hat = guidance_grad(denoiser, x, sigma, terms, cond, through_denoiser)
        if scale == "x0":
            return x0_hat - grad
        return x0_hat - expand_sigma(sigma, x) ** 2 * grad

    return guided


def _normalized(
    g: torch.Tensor, loss: torch.Tensor, mode: Literal["rms", "dps"], eps: float = 1e-12
) -> torch.Tensor:
    """Per-sample normalised gradient: by its RMS, or by :math:`\\sqrt{L}` (DPS)."""
    if mode == "rms":
        size = g.reshape(g.shape[0], -1).square().mean(dim=1).sqrt()
    else:
        size = loss.detach().clamp(min=0).sqrt()
    return g / expand_sigma(size + eps, g)


def step_correction(
    denoiser: Denoiser,
    terms: WeightedTerms,
    through_denoiser: bool = True,
    normalize: Literal["rms", "dps"] | None = None,
    cond: Cond | None = None,
    reuse_denoised: bool = False,
) -> Correction:
    """The DiffusionPDE step correction: a gradient step on the sampler state [2]_.

    After sampler step ``i`` produced ``x`` at noise level ``sigma`` the correction returns

    .. math::  x \\leftarrow x - \\sum_k \\zeta_k(\\sigma)\\, \\nabla_x
               L_k\\big(D(x, \\sigma)\\big),

    i.e. the denoiser is re-evaluated at the new state and new noise level (at
    ``sigma = 0`` the state itself is the estimate, ``D(x, 0) = x``).  The weights
    :math:`\\zeta_k` are the term weights (floats or schedules of sigma).

    Relation to the released DiffusionPDE code.  There, in step ``i`` of EDM Heun from
    :math:`x_i` at :math:`t_i`, the loss is evaluated on the second Heun evaluation
    :math:`\\hat x_0 = D(\\tilde x_{i+1}, t_{i+1})` (:math:`\\tilde x_{i+1}` the Euler
    predictor; on the last, Euler-only step on :math:`D(x_i, t_i)`), differentiated with
    respect to the step's input :math:`x_i` and applied to the Heun output
    :math:`x_{i+1}`: :math:`x_{i+1} \\leftarrow x_{i+1} - \\zeta \\nabla_{x_i} L`.  Here the
    gradient is taken at :math:`x_{i+1}` itself.  The two differ by the Jacobian of the
    step, :math:`\\partial \\tilde x_{i+1}/\\partial x_i = (t_{i+1}/t_i) I + (1 - t_{i+1}/t_i)
    J_D = I + O(\\Delta t)`, and by evaluating at the Heun rather than the Euler point, both
    negligible at DiffusionPDE's 2,000 steps.  The costs are comparable: here one extra
    denoiser forward and one backward per step; there no extra forward, but a backward
    through both evaluations of the step, whose graphs the sampler must keep.  This way the
    sampler and the correction stay separate functions; replaying the released code bit
    for bit would need a sampler that keeps the step's graph.

    DiffusionPDE's protocol (norm not squared; ``sigmas`` the sampler's noise levels)::

        s = sigma_at_step_fraction(sigmas, 0.8)
        terms = [
            (ObservationTerm(obs_a, y_a, norm="l2", name="obs_a"), switch(z_a, 0.1 * z_a, s)),
            (ObservationTerm(obs_u, y_u, norm="l2", name="obs_u"), switch(z_u, 0.1 * z_u, s)),
            (ResidualTerm(pde_residual, norm="l2", scale=1 / N**2, name="pde"),
             switch(0.0, z_pde, s)),
        ]
        correction = step_correction(denoiser, terms)

    Parameters
    ----------
    denoiser, terms, through_denoiser
        As in :func:`guidance_grad`.
    normalize
        ``None``: the plain weighted gradient.  ``"rms"``: each term's per-sample gradient
        is divided by its root mean square, so :math:`\\zeta_k` is the RMS displacement of
        ``x`` per step.  ``"dps"``: divided by :math:`\\sqrt{L_k}`; for the squared norm
        :math:`L = \\|r\\|^2` this is DPS's step size :math:`\\zeta/\\|r\\|` [1]_ (and equals
        :math:`2\\nabla\\|r\\|`, twice the unsquared-norm gradient DiffusionPDE uses).
    cond
        Condition of the denoiser (a correction is called without one).
    reuse_denoised
        Use the sampler's ``denoised`` instead of re-evaluating the denoiser (no network
        call at all); only with ``through_denoiser=False``.  The estimate is then the one
        the sampler made for the step, not for the new state.

    Returns
    -------
    Correction
        ``correction(x, sigma, denoised, i) -> x`` (detached).

    Raises
    ------
    FloatingPointError
        From the returned correction, naming the term with a non-finite gradient.
    """
    if reuse_denoised and through_denoiser:
        raise ValueError("reuse_denoised=True needs through_denoiser=False (no graph to reuse)")
    if normalize not in (None, "rms", "dps"):
        raise ValueError(f"normalize must be None, 'rms' or 'dps', got {normalize!r}")
    weighted = _as_weighted(terms)

    def correction(
        x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor, i: int
    ) -> torch.Tensor:
        source = _constant_denoiser(denoised) if reuse_denoised else denoiser
        if normalize is None:
            grad, _ = guidance_grad(source, x, sigma, weighted, cond, through_denoiser)
            return x - grad
        return x - _normalized_grad(source, x, sigma, weighted, cond, through_denoiser, normalize)

    return correction


def _constant_denoiser(value: torch.Tensor) -> Denoiser:
    """A 'denoiser' returning a stored estimate (for ``reuse_denoised``)."""
    return lambda x, sigma, cond=None: value


def _normalized_grad(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigma: torch.Tensor,
    weighted: list[tuple[Term, WeightSchedule]],
    cond: Cond | None,
    through_denoiser: bool,
    mode: Literal["rms", "dps"],
) -> torch.Tensor:
    """:math:`\\sum_k \\zeta_k \\, \\mathrm{normalise}(\\nabla_x L_k)`, one backward per term."""
    sigma_n = _per_sample_sigma(sigma, x)
    active = _active_weights(weighted, sigma_n)
    step = torch.zeros_like(x)
    if not active:
        return step
    with torch.enable_grad():
        target, x0_hat = _evaluate(denoiser, x, sigma, cond, through_denoiser)
        for name, w, loss in _weighted_losses(active, x0_hat):
            if not torch.isfinite(loss).all():
                _raise_non_finite(name, "loss", sigma_n)
            (g,) = torch.autograd.grad(loss.sum(), target, retain_graph=True)
            if not torch.isfinite(g).all():
                _raise_non_finite(name, "gradient", sigma_n)
            step = step + expand_sigma(w, x) * _normalized(g.detach(), loss, mode)
    return step


def consistency_correction(
    denoiser: Denoiser,
    terms: WeightedTerms,
    iterations: int,
    lr: float = 0.02,
    sigma_max: float = math.inf,
    cond: Cond | None = None,
) -> Correction:
    """Data consistency on the clean estimate: a few optimiser steps on ``x0_hat``, the
    noise left as it was (DDS / ReSample, [5]_).

    After sampler step ``i`` produced ``x`` at noise level ``sigma``, with
    :math:`\\hat x_0 = D(x, \\sigma)` (``x`` itself at ``sigma = 0``), the correction
    returns

    .. math::  x \\leftarrow x + (\\hat x_0' - \\hat x_0), \\qquad
               \\hat x_0' = \\mathrm{Adam}^{K}_{\\eta}\\Big(\\hat x_0;\\;
               \\sum_k \\zeta_k(\\sigma) L_k\\Big),

    i.e. the estimate is moved by ``K = iterations`` Adam steps of learning rate ``eta``
    (``lr``, in the units of ``x``) on the weighted guidance loss, starting from the
    denoiser's estimate, and the noise component :math:`x - \\hat x_0` is kept.  Early
    stopping is the regulariser: the estimate moves at most about ``K * lr`` per entry and
    step, and the prior pulls it back at the next denoiser call.  Unlike
    :func:`step_correction` the network is never differentiated (one forward per step, the
    loss gradients only), so an expensive forward map (a PDE solve) can be fitted tightly.
    Adam's update is elementwise, so batch members stay independent.

    Parameters
    ----------
    denoiser, terms, cond
        As in :func:`guidance_grad`; the weights set the balance between terms (Adam
        removes their overall scale).
    iterations
        Adam steps per sampler step (``K >= 1``).
    lr
        Adam's learning rate.
    sigma_max
        Only at ``sigma <= sigma_max`` (early, noisy estimates are left to the prior).

    Raises
    ------
    FloatingPointError
        From the returned correction, naming the term with a non-finite gradient.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    weighted = _as_weighted(terms)

    def correction(
        x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor, i: int
    ) -> torch.Tensor:
        sigma_n = _per_sample_sigma(sigma, x)
        active = _active_weights(weighted, sigma_n)
        if not active or float(sigma_n.max()) > sigma_max:
            return x
        with torch.no_grad():
            x0 = x if torch.all(sigma_n == 0) else denoiser(x, sigma, cond)
        return x + (_fit(x0, active, iterations, lr, sigma_n) - x0)

    return correction


def _fit(
    x0: torch.Tensor,
    active: list[tuple[Term, torch.Tensor]],
    iterations: int,
    lr: float,
    sigma_n: torch.Tensor,
) -> torch.Tensor:
    """``iterations`` Adam steps on the weighted loss, from ``x0`` (detached result)."""
    target = x0.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([target], lr=lr)
    with torch.enable_grad():
        for _ in range(iterations):
            losses = _weighted_losses(active, target)
            total = sum((w * loss).sum() for _, w, loss in losses)
            (grad,) = torch.autograd.grad(total, target, retain_graph=True)
            if not torch.isfinite(grad).all():
                _diagnose(losses, target, sigma_n)
            target.grad = grad
            optimiser.step()
    return target.detach()
