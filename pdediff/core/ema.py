"""Exponential moving average (EMA) of model weights.

After each optimiser step the shadow weights move towards the model's,

.. math::  \\theta_{ema} \\leftarrow \\beta\\,\\theta_{ema} + (1-\\beta)\\,\\theta ,

with :math:`\\beta` given one of three ways:

* ``decay``: a constant :math:`\\beta` (e.g. 0.999);
* ``half_life``: in training samples, as in EDM [1]_: :math:`\\beta = 0.5^{n/h}` for an
  update after ``n`` samples, so the weight of a sample halves every ``h`` samples
  whatever the batch size; with ``rampup`` the half-life is capped at
  ``rampup * samples_seen`` early in training;
* ``std``: EDM2's power-function EMA [2]_, :math:`\\beta_t = (1 - 1/t)^{\\gamma+1}` at
  update ``t``, whose averaging profile :math:`\\propto \\tau^\\gamma` has relative width
  ``std`` (the same fraction of training at any length).

Floating-point parameters and buffers are averaged; others (e.g. ``num_batches_tracked``)
are copied.

References
----------
.. [1] T. Karras, M. Aittala, T. Aila, S. Laine, "Elucidating the Design Space of
   Diffusion-Based Generative Models", NeurIPS 2022 (``ema_halflife_kimg``,
   ``ema_rampup_ratio``).
.. [2] T. Karras, M. Aittala, J. Lehtinen, J. Hellsten, T. Aila, S. Laine, "Analyzing and
   Improving the Training Dynamics of Diffusion Models", CVPR 2024, arXiv:2312.02696
   (Sec. 3.1, Eq. 3 and the relation between gamma and sigma_rel).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["EMA", "power_ema_gamma"]


def power_ema_gamma(std: float) -> float:
    """Exponent :math:`\\gamma` of EDM2's power-function EMA of relative width ``std``.

    The profile :math:`\\tau^\\gamma` on :math:`[0, 1]` has relative standard deviation
    :math:`\\sigma_{rel} = \\sqrt{(\\gamma+1)/((\\gamma+2)^2(\\gamma+3))}`; squaring and
    clearing denominators gives the cubic
    :math:`\\gamma^3 + 7\\gamma^2 + (16 - \\sigma_{rel}^{-2})\\gamma + 12 - \\sigma_{rel}^{-2}
    = 0`, whose positive root is found by bisection (it is increasing there).
    """
    a = std**-2
    if not 0 < std < 12**-0.5:
        raise ValueError(f"std must be in (0, {12**-0.5:.4f}) (gamma > 0), got {std}")

    def f(g: float) -> float:
        return ((g + 7) * g + 16 - a) * g + 12 - a

    lo, hi = 0.0, a  # f(0) = 12 - a < 0 and f(a) > 0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


class EMA:
    """A shadow copy of a model holding the moving average of its weights.

    Parameters
    ----------
    model
        The trained model; the shadow is a deep copy with gradients off, in eval mode.
    decay
        Constant :math:`\\beta`; the default 0.999 applies when neither ``half_life`` nor
        ``std`` is given.
    half_life
        Half-life in training samples (EDM); :meth:`update` then needs ``n_samples``.
    rampup
        With ``half_life``: cap the half-life at ``rampup * samples_seen`` (EDM uses 0.05).
    std
        Relative width of EDM2's power-function EMA (e.g. 0.05 to 0.10).
    warmup
        Number of first updates that copy the model instead of averaging (with ``decay``
        or ``half_life``), so the random initial weights are not averaged in.

    Attributes
    ----------
    module
        The shadow model, usable directly for evaluation.
    num_updates, samples_seen
        Counters, saved by :meth:`state_dict`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        decay: float | None = None,
        *,
        half_life: float | None = None,
        rampup: float | None = None,
        std: float | None = None,
        warmup: int = 0,
    ) -> None:
        if sum(v is not None for v in (decay, half_life, std)) > 1:
            raise ValueError("give one of decay, half_life and std")
        if decay is None and half_life is None and std is None:
            decay = 0.999
        if decay is not None and not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay, self.half_life, self.rampup, self.std = decay, half_life, rampup, std
        self.gamma = power_ema_gamma(std) if std is not None else None
        self.warmup = warmup
        self.num_updates = 0
        self.samples_seen = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def beta(self, n_samples: int | None = None) -> float:
        """:math:`\\beta` for the next update (before the counters advance)."""
        t = self.num_updates + 1
        if self.gamma is not None:
            return (1 - 1 / t) ** (self.gamma + 1)
        if t <= self.warmup:
            return 0.0
        if self.half_life is None:
            return float(self.decay)
        if n_samples is None:
            raise ValueError("an EMA with a half-life in samples needs update(model, n_samples)")
        h = self.half_life
        if self.rampup is not None:
            h = min(h, self.samples_seen * self.rampup)
        return 0.5 ** (n_samples / max(h, 1e-8))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, n_samples: int | None = None) -> float:
        """Move the shadow towards ``model``; ``n_samples`` trained on since the last
        update.  Returns the :math:`\\beta` used."""
        beta = self.beta(n_samples)
        for (name, ema_t), model_t in zip(_tensors(self.module), _tensors_of(model), strict=True):
            if ema_t.shape != model_t.shape:
                raise ValueError(f"EMA and model differ at {name!r}")
            if ema_t.is_floating_point():
                ema_t.lerp_(model_t.detach().to(ema_t.dtype), 1 - beta)
            else:
                ema_t.copy_(model_t)
        self.num_updates += 1
        self.samples_seen += n_samples or 0
        return beta

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Overwrite ``model``'s parameters and buffers with the EMA ones."""
        for (_, ema_t), model_t in zip(_tensors(self.module), _tensors_of(model), strict=True):
            model_t.copy_(ema_t)

    @contextmanager
    def swapped(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Evaluate ``model`` with the EMA weights inside the block; its own weights are
        restored on exit (also on an exception)."""
        backup = [t.detach().clone() for t in _tensors_of(model)]
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for t, b in zip(_tensors_of(model), backup, strict=True):
                    t.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        """Shadow weights (under ``"module"``) and counters."""
        return {
            "module": self.module.state_dict(),
            "num_updates": self.num_updates,
            "samples_seen": self.samples_seen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
        self.samples_seen = int(state["samples_seen"])


def _tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Named parameters then buffers, in a fixed order shared by a model and its copy."""
    return list(model.named_parameters()) + list(model.named_buffers())


def _tensors_of(model: torch.nn.Module) -> list[torch.Tensor]:
    return [t for _, t in _tensors(model)]
