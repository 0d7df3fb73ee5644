"""Denoisers built from denoisers: classifier-free guidance, products of experts,
autoguidance, and interpolation between conditions.

All combinations are linear in the denoiser outputs.  Since the score is
:math:`s = (D - x)/\\sigma^2`, an affine combination :math:`x + \\sum_i w_i (D_i - x)` of
denoisers is the denoiser of the same combination :math:`\\sum_i w_i s_i` of scores, and the
forms quoted in noise-prediction (:math:`\\epsilon`) space carry over to ``D`` unchanged
because :math:`\\epsilon = (x - D)/\\sigma` is affine in ``D`` too.

References
----------
.. [1] J. Ho, T. Salimans, "Classifier-Free Diffusion Guidance", NeurIPS 2021 Workshop,
   arXiv:2207.12598.
.. [2] G. E. Hinton, "Training Products of Experts by Minimizing Contrastive Divergence",
   Neural Computation 14(8), 2002; Y. Du et al., "Reduce, Reuse, Recycle: Compositional
   Generation with Energy-Based Diffusion Models and MCMC", ICML 2023.
.. [3] T. Karras, M. Aittala, T. Kynkäänniemi, J. Lehtinen, T. Aila, S. Laine, "Guiding a
   Diffusion Model with a Bad Version of Itself", NeurIPS 2024, arXiv:2406.02507.
.. [4] K. Shoemake, "Animating Rotation with Quaternion Curves", SIGGRAPH 1985 (slerp).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from pdediff.core.types import Cond, Denoiser

__all__ = ["cfg", "product_of_experts", "autoguidance", "bind_condition", "interpolate_condition"]


def _dropped(cond: Cond, n: int, device: torch.device) -> Cond:
    """``cond`` with every condition dropped (the unconditional model)."""
    return {**cond, "drop": torch.ones(n, dtype=torch.bool, device=device)}


def _doubled(x: torch.Tensor, sigma: torch.Tensor, cond: Cond):
    """Inputs of one batched call: conditional half first, unconditional half second."""
    n = x.shape[0]
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    sigma = sigma.expand(n) if sigma.ndim == 0 else sigma.reshape(n)
    keep = cond.get("drop", torch.zeros(n, dtype=torch.bool, device=x.device))
    both = {k: torch.cat([v, v]) for k, v in cond.items() if k != "drop"}
    both["drop"] = torch.cat([keep.to(torch.bool), torch.ones_like(keep, dtype=torch.bool)])
    return torch.cat([x, x]), torch.cat([sigma, sigma]), both


def cfg(
    denoiser: Denoiser,
    w: float,
    form: Literal["cfg", "ho", "scale"] = "cfg",
    batched: bool = True,
) -> Denoiser:
    """Classifier-free guidance [1]_.

    With :math:`D_c = D(x,\\sigma,c)` and :math:`D_u` the same denoiser with
    ``cond["drop"]`` all True (its learned null condition):

    * ``form="cfg"`` and ``form="ho"``: :math:`D_c + w\\,(D_c - D_u) = (1+w)\\,D_c - w\\,D_u`.
      These are the same expression: the second is how Ho & Salimans write it,
      :math:`\\tilde\\epsilon = (1+w)\\,\\epsilon(x,c) - w\\,\\epsilon(x)`, and
      :math:`\\epsilon` is affine in ``D``.  ``w = 0`` is the conditional denoiser
      (returned exactly, without the unconditional call), ``w = -1`` the unconditional.
    * ``form="scale"``: the guidance-scale convention :math:`D_u + w\\,(D_c - D_u)` of most
      diffusion libraries, with scale :math:`w_{scale} = 1 + w`: ``w = 1`` is the
      conditional denoiser (again exact), ``w = 0`` the unconditional.

    Parameters
    ----------
    denoiser
        A conditional denoiser that honours ``cond["drop"]``.
    w
        Guidance weight in the convention of ``form``.
    batched
        Evaluate both branches in one call of batch ``2N`` (True) or two calls of ``N``
        (less memory).

    Returns
    -------
    Denoiser
        Requires a ``cond``; a ``"drop"`` already in it is kept for the conditional branch.
    """
    if form not in ("cfg", "ho", "scale"):
        raise ValueError(f"form must be 'cfg', 'ho' or 'scale', got {form!r}")
    w_cfg = w - 1.0 if form == "scale" else w

    def guided(x: torch.Tensor, sigma: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        if cond is None:
            raise ValueError("classifier-free guidance needs a condition (cond is None)")
        if w_cfg == 0:
            return denoiser(x, sigma, cond)
        if batched:
            d_c, d_u = denoiser(*_doubled(x, sigma, cond)).chunk(2)
        else:
            d_c = denoiser(x, sigma, cond)
            d_u = denoiser(x, sigma, _dropped(cond, x.shape[0], x.device))
        return d_c + w_cfg * (d_c - d_u)

    return guided


def product_of_experts(
    denoisers: Sequence[Denoiser], weights: Sequence[float] | None = None
) -> Denoiser:
    """Product of experts: the weighted scores add [2]_.

    .. math::  D(x,\\sigma) = x + \\sum_i w_i\\,(D_i(x,\\sigma) - x)
               \\iff s(x,\\sigma) = \\sum_i w_i\\, s_i(x,\\sigma).

    At :math:`\\sigma \\to 0` this is the denoiser of :math:`\\prod_i p_i^{w_i}`; at larger
    sigma the sum of the noised experts' scores is *not* the score of the noised product
    (noising does not commute with the product), which is why samplers of composed models
    sometimes add MCMC corrections [2]_.  With weights summing to 1 the result is a convex
    combination of the ``D_i``.  Every expert receives the same ``cond``; use
    :func:`bind_condition` to give an expert its own.

    Parameters
    ----------
    denoisers
        The experts.
    weights
        One per expert; all 1 by default.
    """
    weights = [1.0] * len(denoisers) if weights is None else list(weights)
    if len(weights) != len(denoisers) or not denoisers:
        raise ValueError(f"need one weight per denoiser: {len(weights)} vs {len(denoisers)}")

    def combined(x: torch.Tensor, sigma: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        out = x
        for d, w in zip(denoisers, weights, strict=True):
            out = out + w * (d(x, sigma, cond) - x)
        return out

    return combined


def autoguidance(good: Denoiser, bad: Denoiser, w: float) -> Denoiser:
    """Autoguidance: guide a model with a worse version of itself [3]_.

    .. math::  D(x,\\sigma,c) = D_{good} + w\\,(D_{good} - D_{bad})

    ``w = 0`` is the good model (returned exactly).  Karras et al. write
    :math:`w_K D_{good} + (1 - w_K) D_{bad}`, i.e. :math:`w_K = 1 + w` (their
    :math:`w_K = 1` is no guidance).  ``bad`` is typically a smaller or less trained model
    with the same conditioning.
    """

    def guided(x: torch.Tensor, sigma: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        d_good = good(x, sigma, cond)
        if w == 0:
            return d_good
        return d_good + w * (d_good - bad(x, sigma, cond))

    return guided


def bind_condition(denoiser: Denoiser, cond: Cond | None) -> Denoiser:
    """``denoiser`` with its condition fixed to ``cond``; the call-time ``cond`` is ignored.

    For composing experts that need different conditions (e.g. a small adapted model and a
    pretrained one, each with its own labels).
    """

    def bound(x: torch.Tensor, sigma: torch.Tensor, _cond: Cond | None = None) -> torch.Tensor:
        return denoiser(x, sigma, cond)

    return bound


def interpolate_condition(
    c0: torch.Tensor,
    c1: torch.Tensor,
    t: float | torch.Tensor,
    mode: Literal["linear", "slerp"] = "linear",
    dim: int = -1,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Interpolate between two condition vectors or embeddings.

    ``linear``: :math:`(1-t)\\,c_0 + t\\,c_1`.  ``slerp`` (spherical, [4]_) along ``dim``,
    with :math:`\\theta` the angle between :math:`c_0` and :math:`c_1`:

    .. math::  \\frac{\\sin((1-t)\\theta)}{\\sin\\theta}\\,c_0
               + \\frac{\\sin(t\\theta)}{\\sin\\theta}\\,c_1,

    which keeps the norm of unit vectors (embeddings living near a sphere do not shrink
    midway); nearly parallel vectors fall back to ``linear``.

    Parameters
    ----------
    c0, c1
        Conditions of one shape, e.g. ``(N, D)`` or ``(D,)``.
    t
        In [0, 1]; a float or a tensor broadcastable to ``c0`` without ``dim``
        (e.g. ``(N,)`` for ``(N, D)``).
    dim
        The vector dimension for ``slerp``.
    """
    if c0.shape != c1.shape:
        raise ValueError(f"conditions differ in shape: {tuple(c0.shape)} vs {tuple(c1.shape)}")
    t = torch.as_tensor(t, dtype=c0.dtype, device=c0.device)
    if t.ndim > 0:
        t = t.unsqueeze(dim)
    if mode == "linear":
        return torch.lerp(c0, c1, t)
    if mode != "slerp":
        raise ValueError(f"mode must be 'linear' or 'slerp', got {mode!r}")
    cos = torch.nn.functional.cosine_similarity(c0, c1, dim=dim, eps=eps).unsqueeze(dim)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    sin = torch.sin(theta)
    parallel = sin.abs() < 1e-4
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    out = (torch.sin((1 - t) * theta) * c0 + torch.sin(t * theta) * c1) / safe
    return torch.where(parallel, torch.lerp(c0, c1, t), out)
