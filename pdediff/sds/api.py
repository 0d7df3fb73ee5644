"""Score distillation from a checkpoint and an observation file to a Dataset (``pdediff sds``).

The renderers a user picks by name are a plain dict, :data:`RENDERERS`, of builders
``(spec, family, options) -> renderer``; the observations enter as one squared-misfit
:class:`~pdediff.core.guidance.ObservationTerm` per observed field on the normalised fields.
The result mirrors :func:`pdediff.solve.solve`'s: the fields (one ``sample``), the
observations used (``obs_f`` on ``n_obs_f`` with their positions), the per-step history
(``sds_sigma``, ``sds_loss`` on ``step``) and attributes recording model, renderer,
settings, seed and run time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from pdediff.core.guidance import ObservationTerm
from pdediff.core.types import Denoiser
from pdediff.errors import PdediffError
from pdediff.io.conventions import history_line
from pdediff.io.fieldspec import FieldSpec
from pdediff.io.observations import (
    ObservationModel,
    Observations,
    build_operator,
    read_observations,
)
from pdediff.pde.adjoint import SOLVER_FAMILIES
from pdediff.pde.base import PDEFamily
from pdediff.pde.registry import FAMILIES
from pdediff.sds.optimize import SDSResult, sds_optimize
from pdediff.sds.renderers import (
    ChannelStack,
    EllipseRenderer,
    NeuralField,
    PhysicsRenderer,
)
from pdediff.solve.api import add_observations

__all__ = [
    "RENDERERS",
    "build_renderer",
    "observation_terms",
    "sds_dataset",
    "sds_fit",
    "sds_solve",
]

Builder = Callable[[FieldSpec, PDEFamily | None, Mapping], nn.Module]


def _coefficient(spec: FieldSpec) -> str:
    """The one variable whose ``role`` attribute is ``coefficient``."""
    coef = [
        v for v in spec.variables if spec.variable_attrs.get(v, {}).get("role") == "coefficient"
    ]
    if len(coef) != 1:
        raise PdediffError(
            f"the ellipse renderers draw the model's one coefficient field; its fields "
            f"{list(spec.variables)} have {len(coef)} with role 'coefficient'"
        )
    return coef[0]


def _physics_family(family: PDEFamily | None, renderer: str) -> PDEFamily:
    if family is None or family.name not in SOLVER_FAMILIES:
        name = "no PDE family" if family is None else f"PDE family {family.name!r}"
        raise PdediffError(
            f"renderer {renderer!r} needs a model of a family with a reference solver "
            f"({', '.join(SOLVER_FAMILIES)}); this model has {name}"
        )
    return family


def _ellipses(spec: FieldSpec, options: Mapping, variable: str | None = None) -> EllipseRenderer:
    variable = variable or _coefficient(spec)
    return EllipseRenderer.from_spec(
        spec, variable, options.get("ellipses", 4), seed=options.get("seed", 0)
    )


def _neural_field(spec: FieldSpec, channels: int, options: Mapping) -> NeuralField:
    return NeuralField(channels, spec, seed=options.get("seed", 0))


def _free_ellipses(spec: FieldSpec, family: PDEFamily | None, options: Mapping) -> nn.Module:
    """Ellipses for the coefficient, a neural field for every other channel."""
    coef = _coefficient(spec)
    parts = [
        _ellipses(spec, options, v) if v == coef else _neural_field(spec, 1, options)
        for v in spec.variables
    ]
    return ChannelStack(parts)


def _physics(coefficient: Callable[[FieldSpec, Mapping], nn.Module], name: str) -> Builder:
    def build(spec: FieldSpec, family: PDEFamily | None, options: Mapping) -> nn.Module:
        family = _physics_family(family, name)
        return PhysicsRenderer(coefficient(spec, options), family, spec)

    return build


#: ``name -> (spec, family, options) -> renderer``; options: ``seed``, ``ellipses`` (K).
RENDERERS: dict[str, Builder] = {
    "neural-field": lambda spec, family, options: _neural_field(spec, len(spec.variables), options),
    "ellipses": _free_ellipses,
    "physics-ellipses": _physics(_ellipses, "physics-ellipses"),
    "physics-neural-field": _physics(
        lambda spec, options: _neural_field(spec, 1, options), "physics-neural-field"
    ),
}


def build_renderer(
    name: str, spec: FieldSpec, family: PDEFamily | None = None, **options
) -> nn.Module:
    """The renderer :data:`RENDERERS` ``[name]`` for a model's spec (and PDE family)."""
    if name not in RENDERERS:
        raise PdediffError(f"unknown renderer {name!r}; known: {', '.join(RENDERERS)}")
    return RENDERERS[name](spec, family, options)


def observation_terms(model: ObservationModel, weight: float) -> list:
    """One ``(ObservationTerm, weight)`` per observed field, squared misfit of the
    normalised fields :math:`\\|A_f g - y_f\\|^2`, so that at an observed point the pull
    ``2 w (g - y)`` competes with the SDS pull ``g - D`` per grid value."""
    slices = model.operator.slices()
    return [
        (ObservationTerm(op, model.y[slices[name]], norm="l2sq", name=f"obs_{name}"), weight)
        for op, name in zip(model.operator.operators, model.operator.names, strict=True)
    ]


def _obs_rmse(model: ObservationModel, spec: FieldSpec, fields: torch.Tensor) -> dict:
    """Root mean square misfit of each observed field, in its physical units."""
    pred = model.operator(fields.double())[0]
    out = {}
    for name, sl in model.operator.slices().items():
        c = spec.variables.index(name)
        err = (pred[sl] - model.y[sl]) * spec.std[c]
        out[f"obs_rmse_{name}"] = float(err.square().mean().sqrt())
    return out


def sds_dataset(
    result: SDSResult, spec: FieldSpec, obs: Observations, attrs: Mapping
) -> xr.Dataset:
    """Fields (normalised ``(1, C, *grid)``) -> Dataset with the observations used and the
    per-step history."""
    ds = spec.to_dataset(result.fields)
    add_observations(ds, obs)
    ds["sds_sigma"] = xr.DataArray(
        np.asarray(result.history["sigma"]), dims="step", attrs={"long_name": "noise level"}
    )
    ds["sds_loss"] = xr.DataArray(
        np.asarray(result.history["total"]),
        dims="step",
        attrs={"long_name": "total loss (SDS surrogate + weighted observation misfit)"},
    )
    ds.attrs.update({k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in attrs.items()})
    return ds


def sds_fit(
    denoiser: Denoiser,
    spec: FieldSpec,
    family: PDEFamily | None,
    observations: Observations,
    renderer: str,
    *,
    obs_weight: float,
    ellipses: int,
    seed: int,
    progress: bool = False,
    **settings: Any,
) -> tuple[nn.Module, SDSResult, ObservationModel]:
    """Build ``renderer`` for ``spec`` and fit it by :func:`sds_optimize` (``settings``: its
    ``steps``, ``lr``, ``sigma_min``, ``sigma_max``, ``weighting``, ``schedule``) to the
    prior of ``denoiser`` and to ``observations`` (squared misfits of weight
    ``obs_weight``).  Returns the fitted renderer (e.g. to render it on another grid), the
    result and the observation model (normalised)."""
    from tqdm.auto import tqdm

    model = build_operator(observations, spec, normalised=True)
    render = build_renderer(renderer, spec, family, seed=seed, ellipses=ellipses)
    terms = observation_terms(model, obs_weight) if obs_weight > 0 else []
    steps = settings["steps"]
    with tqdm(total=steps, desc=f"sds {renderer}", unit="step", disable=not progress) as bar:
        result = sds_optimize(
            render,
            denoiser,
            guidance_terms=terms,
            generator=seed,
            callback=lambda info: bar.update(1),
            **settings,
        )
    return render, result, model


def sds_solve(
    checkpoint: str | os.PathLike,
    observations: str | os.PathLike | Observations,
    *,
    renderer: str = "physics-ellipses",
    steps: int = 200,
    lr: float = 2e-2,
    obs_weight: float = 10.0,
    sigma_min: float = 0.02,
    sigma_max: float = 3.0,
    weighting: str = "sigma2",
    schedule: str = "log-uniform",
    ellipses: int = 4,
    seed: int = 0,
    progress: bool = True,
) -> xr.Dataset:
    """Fit a renderer to a trained model's prior and to observations by score distillation.

    Parameters
    ----------
    checkpoint
        A ``pdediff train`` checkpoint directory or exported model.
    observations
        An observation file or :class:`~pdediff.io.observations.Observations`; all its
        fields are used.
    renderer
        A key of :data:`RENDERERS`; ``physics-*`` need a Darcy, Poisson or Helmholtz model.
    steps, lr, sigma_min, sigma_max, weighting, schedule
        As in :func:`~pdediff.sds.sds_optimize`.
    obs_weight
        Weight of each field's squared observation misfit (:func:`observation_terms`).
    ellipses
        Number of ellipses of the ellipse renderers.
    seed
        Seed of the renderer's initial parameters and of the noise.
    """
    from pdediff.train import load_checkpoint

    if obs_weight < 0:
        raise PdediffError(f"obs_weight must be >= 0, got {obs_weight}")
    denoiser, spec, _ = load_checkpoint(checkpoint)
    if spec.condition_names:
        raise PdediffError(
            f"sds does not handle conditioned models yet: {checkpoint} is conditioned on "
            f"{list(spec.condition_names)}; use pdediff solve --condition"
        )
    if not isinstance(observations, Observations):
        observations = read_observations(observations)
    family = FAMILIES.get(str(spec.attrs.get("pde")))
    settings = {"steps": steps, "lr": lr, "sigma_min": sigma_min, "sigma_max": sigma_max}
    settings |= {"weighting": weighting, "schedule": schedule}
    _, result, model = sds_fit(
        denoiser, spec, family, observations, renderer,
        obs_weight=obs_weight, ellipses=ellipses, seed=seed, progress=progress, **settings,
    )  # fmt: skip
    attrs = {
        "model": str(checkpoint),
        "method": "sds",
        "renderer": renderer,
        "settings": {
            "steps": steps,
            "lr": lr,
            "obs_weight": obs_weight,
            "sigma_min": sigma_min,
            "sigma_max": sigma_max,
            "weighting": weighting,
            "schedule": schedule,
            "ellipses": ellipses,
        },
        "solver": f"{family.name} reference solver" if renderer.startswith("physics") else "none",
        "seed": seed,
        "run_time_s": round(result.seconds, 3),
        **_obs_rmse(model, spec, result.fields),
        "history": history_line(f"sds {renderer} with {checkpoint}"),
    }
    return sds_dataset(result, spec, observations, attrs)
