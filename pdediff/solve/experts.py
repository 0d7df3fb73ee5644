"""Product of experts: a large pretrained prior combined with small models of a narrow domain.

The composed denoiser adds the experts' weighted scores (Du et al. 2023, "Reduce, Reuse,
Recycle", ICML, arXiv:2302.11552; Yang et al. 2023, "Probabilistic Adaptation of
Text-to-Video Models" (VideoAdapter), arXiv:2306.01872):

.. math::  D(x, \\sigma) = x + \\sum_i w_i\\,\\big(D_i(x, \\sigma) - x\\big)
           \\iff s(x, \\sigma) = \\sum_i w_i\\, s_i(x, \\sigma),

with :math:`i = 0` the main model, of weight :math:`w_0 = 1 - \\sum_{i>0} w_i` by default
(a convex combination of denoisers when all weights are in [0, 1]); see
:func:`pdediff.core.compose.product_of_experts`.

Order of conditioning and composition: every model is first bound to its own condition,
with classifier-free guidance of weight ``cfg_weight`` for a conditioned model
(:func:`pdediff.solve.posterior.conditioned_denoiser`); the bound models are then composed.
Because CFG and the product are both affine in the denoisers, this equals CFG applied on top
of the composition (an unconditioned expert has :math:`D_c = D_u`, so CFG leaves it as is),
and each model is evaluated once per call with its own conditioning.  The composed denoiser
therefore ignores the ``cond`` it is called with.

The summed scores are the score of :math:`\\prod_i p_i^{w_i}` only as :math:`\\sigma \\to 0`
(noising does not commute with the product): the probability-flow ODE samples something
else, and Langevin corrector steps at each level (Du et al.'s MCMC; ``sample_pc`` with
``n_corrector`` > 1) bring the samples closer to the product (``tests/test_experts.py``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from pdediff.core.compose import bind_condition, product_of_experts
from pdediff.core.types import Cond, Denoiser
from pdediff.errors import PdediffError
from pdediff.io.fieldspec import FieldSpec
from pdediff.solve.posterior import conditioned_denoiser

__all__ = ["check_expert_spec", "compose_experts", "expert_weights", "parse_expert"]

#: One expert as given by the user: a checkpoint directory and its weight.
Expert = tuple[str | os.PathLike, float]


def parse_expert(text: str) -> tuple[str, float]:
    """``"DIR:W"`` -> ``(DIR, W)`` (split at the last colon, so DIR may contain colons)."""
    path, _, weight = text.rpartition(":")
    try:
        value = float(weight)
    except ValueError:
        value = None
    if not path or value is None:
        raise PdediffError(f"--expert expects DIR:WEIGHT (e.g. narrow_model:0.3), got {text!r}")
    return path, value


def expert_weights(weights: Sequence[float], main_weight: float | None = None) -> list[float]:
    """``[w_main, *weights]`` with ``w_main = 1 - sum(weights)`` unless given.

    Raises :class:`PdediffError` for a weight that is not a finite number.
    """
    w_main = 1.0 - math.fsum(weights) if main_weight is None else float(main_weight)
    out = [w_main, *(float(w) for w in weights)]
    bad = [w for w in out if not math.isfinite(w)]
    if bad:
        raise PdediffError(f"expert weights must be finite numbers, got {out}")
    return out


def _differs(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) != len(b) or not np.allclose(a, b, rtol=1e-6, atol=1e-12)


def check_expert_spec(main: FieldSpec, spec: FieldSpec, name: str) -> None:
    """Raise :class:`PdediffError` unless expert ``name``'s ``spec`` has the main model's
    variables, grid (dims and coordinates) and normalisation (per-channel mean and std).

    Scores of different normalisations live in different units and cannot be added.
    """
    if spec.variables != main.variables:
        what = f"variables {list(spec.variables)}, the main model {list(main.variables)}"
    elif spec.dims != main.dims or any(_differs(spec.coords[d], main.coords[d]) for d in main.dims):
        what = f"a grid {dict(zip(spec.dims, spec.shape, strict=True))} on other coordinates"
        what += f" than the main model's {dict(zip(main.dims, main.shape, strict=True))}"
    elif _differs(spec.mean, main.mean) or _differs(spec.std, main.std):
        what = (
            f"normalisation mean {list(spec.mean)}, std {list(spec.std)}; the main model "
            f"mean {list(main.mean)}, std {list(main.std)}. The experts need the same "
            "FieldSpec: train the expert on data normalised with the main model's FieldSpec "
            "(e.g. `pdediff finetune --full` from the main model)"
        )
    else:
        return
    raise PdediffError(f"expert {name} does not fit the main model: it has {what}")


def _bind(
    denoiser: Denoiser,
    spec: FieldSpec,
    condition: Mapping[str, float] | None,
    cfg_weight: float,
    members: int,
    name: str,
) -> Denoiser:
    """An expert bound to its own condition (the subset of ``condition`` it is conditioned
    on), with CFG; an unconditioned expert is bound to ``None``."""
    if not spec.condition_names:
        return bind_condition(denoiser, None)
    from pdediff.solve.api import model_condition  # api imports this module

    given = {k: v for k, v in (condition or {}).items() if k in spec.condition_names}
    cond = model_condition(spec, given, cfg_weight, name)
    return conditioned_denoiser(denoiser, cond, cfg_weight, members)


def compose_experts(
    main: Denoiser,
    spec: FieldSpec,
    experts: Sequence[Expert],
    *,
    main_weight: float | None = None,
    cond: Cond | None = None,
    condition: Mapping[str, float] | None = None,
    cfg_weight: float = 0.0,
    members: int = 1,
    device: str = "cpu",
) -> tuple[Denoiser, dict]:
    """Load ``experts`` and compose them with the main model as a product of experts.

    Parameters
    ----------
    main
        The main model's denoiser (e.g. a large pretrained prior), on normalised fields.
    spec
        The main model's :class:`~pdediff.io.FieldSpec`; every expert must share its
        variables, grid and normalisation (:func:`check_expert_spec`).
    experts
        ``[(checkpoint_dir, weight), ...]``, loaded with
        :func:`pdediff.train.load_checkpoint` (EMA weights).
    main_weight
        Weight of the main model; ``1 - sum(weights)`` by default.
    cond, condition, cfg_weight
        The main model's encoded ``cond`` (``None`` for an unconditioned model), the
        physical ``condition`` values it came from and the CFG weight.  A conditioned
        expert is bound to the values of ``condition`` it is conditioned on, with the same
        CFG weight; an unconditioned one ignores them.
    members
        Batch size the conditions are broadcast to.

    Returns
    -------
    denoiser, attrs
        The composed denoiser (its conditions are bound, so it ignores the call's ``cond``:
        sample it with ``cond=None`` and ``cfg_weight = 0``), and attributes for the
        output: ``experts`` (JSON of a list of ``{"model", "weight"}``) and
        ``main_weight``.

    Raises
    ------
    PdediffError
        No experts, a non-finite weight, an expert whose FieldSpec differs (named), or a
        conditioned expert without its condition.
    """
    from pdediff.train import load_checkpoint

    if not experts:
        raise PdediffError("compose_experts needs at least one expert (checkpoint, weight)")
    weights = expert_weights([w for _, w in experts], main_weight)
    if cond is None:
        bound = [bind_condition(main, None)]
    else:
        bound = [conditioned_denoiser(main, cond, cfg_weight, members)]
    for path, _ in experts:
        denoiser, expert_spec, _ = load_checkpoint(path, device=device)
        check_expert_spec(spec, expert_spec, str(path))
        bound.append(_bind(denoiser, expert_spec, condition, cfg_weight, members, f"expert {path}"))
    listed = [
        {"model": str(p), "weight": w} for (p, _), w in zip(experts, weights[1:], strict=True)
    ]
    return product_of_experts(bound, weights), {
        "experts": json.dumps(listed),
        "main_weight": weights[0],
    }
