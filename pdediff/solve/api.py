"""The user-facing solver: checkpoint + observation file in, posterior Dataset out.

Tasks select which observations are used: ``forward`` those of the coefficient fields
(role ``coefficient``), ``inverse`` those of the solution fields, ``joint`` all of them.
The result is an ``xarray.Dataset`` with, for each field ``f``: ``f`` (``member``, *grid),
``f_mean`` and ``f_std``; the observations used (``obs_f`` on dim ``n_obs_f``, with their
positions ``obs_f_x``, ...); and attributes recording model, protocol, members, seed and run time
(and, for a conditioned model, the ``condition`` with its PDE parameters as ``param_<name>``;
with experts, ``experts`` and ``main_weight``).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import xarray as xr

from pdediff.core.types import Cond
from pdediff.errors import PdediffError, PdediffWarning
from pdediff.io.conditions import encode_conditions, encode_label
from pdediff.io.conventions import PARAM_PREFIX, attrs_param_ranges, attrs_params, history_line
from pdediff.io.fieldspec import FieldSpec
from pdediff.io.observations import Observations, build_operator, read_observations
from pdediff.pde.base import PDEFamily
from pdediff.pde.registry import FAMILIES
from pdediff.solve.experts import compose_experts
from pdediff.solve.posterior import DIFFUSIONPDE, Protocol, sample_posterior, uses_solver

TASKS = ("forward", "inverse", "joint")
#: ``pdediff``: 32 Heun steps, the family's reference solver for the solution where it has
#: one (:mod:`pdediff.solve.posterior`); ``joint``: the same, both fields sampled (the
#: DiffusionPDE model of the problem) with the PDE residual term; ``diffusionpde``: the
#: released protocol.  A model's ``guidance.json`` refines the first two per task.
PRESETS: dict[str, Protocol] = {
    "pdediff": Protocol(steps=32, solver=None, default_obs_weight=1000.0),
    "joint": Protocol(steps=32, solver=False, default_obs_weight=1000.0, pde_weight=10.0),
    "diffusionpde": DIFFUSIONPDE,
}
#: File in a model directory: ``{preset: {task: {protocol field: value}}}``, the weights
#: tuned for that model (written by whoever tuned them, with how, in the model card).  A
#: task's entry may hold ``"by_points": {"500": {...}, "31": {...}}``: settings tuned at
#: those numbers of observed points per field, applied on top of the entry by
#: :func:`model_guidance` for the count nearest (in ratio) to the observations at hand.
GUIDANCE_FILE = "guidance.json"
BY_POINTS = "by_points"
MEMBER_DIM = "member"


def model_guidance(
    checkpoint: str | os.PathLike, preset: str, task: str, points: float | None = None
) -> dict:
    """The protocol overrides that ``checkpoint``'s ``guidance.json`` stores for
    ``preset`` and ``task`` (empty without the file).

    ``points``: observed points per field (:func:`observed_points`).  Where the entry was
    tuned at several counts (``by_points``), the settings of the count nearest to
    ``points`` in ratio, :math:`\\arg\\min_n |\\log(n / \\mathrm{points})|`, override the
    entry's (which scored best over all counts together); without ``points``, the entry.
    """
    path = Path(checkpoint) / GUIDANCE_FILE
    if not path.is_file():
        return {}
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PdediffError(f"{path} is not valid JSON ({e}); fix or delete it") from None
    entry = dict(stored.get(preset, {}).get(task, {}))
    by_points = entry.pop(BY_POINTS, None)
    if by_points and points is not None and points > 0:
        nearest = min(by_points, key=lambda n: abs(math.log(float(n) / points)))
        entry.update(by_points[nearest])
    return entry


def observed_points(obs: Observations) -> float:
    """Observed values per observed field (the ``points`` of :func:`model_guidance`)."""
    sizes = [f.size for f in obs.fields.values() if f.size]
    return sum(sizes) / len(sizes) if sizes else 0.0


def resolve_protocol(
    checkpoint: str | os.PathLike,
    preset: str,
    task: str,
    overrides: Mapping | None = None,
    points: float | None = None,
) -> Protocol:
    """``PRESETS[preset]``, then the model's :func:`model_guidance` (for ``points``
    observed per field), then ``overrides`` (``None`` values ignored)."""
    if preset not in PRESETS:
        raise PdediffError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    known = {f.name for f in fields(Protocol)}
    stored = model_guidance(checkpoint, preset, task, points)
    given = dict(overrides or {})
    unknown = sorted((set(stored) | set(given)) - known)
    if unknown:
        raise PdediffError(f"unknown protocol setting(s) {unknown}; known: {sorted(known)}")
    return PRESETS[preset].with_overrides(**stored).with_overrides(**given)


def task_fields(spec: FieldSpec, task: str) -> tuple[list[str], list[str]]:
    """``(observed, inferred)`` fields of ``task`` by the fields' ``role`` attribute
    (forward: the coefficients are observed, inverse: the solutions; joint: every field is
    both)."""
    if task not in TASKS:
        raise PdediffError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if task == "joint":
        return list(spec.variables), list(spec.variables)
    role = "coefficient" if task == "forward" else "solution"
    roles = {v: spec.variable_attrs.get(v, {}).get("role", "solution") for v in spec.variables}
    observed = [v for v in spec.variables if roles[v] == role]
    return observed, [v for v in spec.variables if v not in observed]


def select_task(obs: Observations, spec: FieldSpec, task: str) -> Observations:
    """Keep the observations the task uses (:func:`task_fields`)."""
    wanted = task_fields(spec, task)[0]
    if task == "joint":
        return obs
    role = "coefficient" if task == "forward" else "solution"
    keep = {f: o for f, o in obs.fields.items() if f in wanted}
    if not keep:
        raise PdediffError(
            f"the {task} task uses observations of the model's {role} fields {wanted}, "
            f"but the file observes {sorted(obs.fields)}"
        )
    return replace(obs, fields=keep)


def model_condition(
    spec: FieldSpec, condition: Mapping[str, float | str] | None, cfg_weight: float, model: str
) -> Cond | None:
    """``cond`` of the model of ``spec`` for physical ``condition`` values: ``{"vector":
    (1, D)}`` for its scalar conditions and ``{"label": (1,)}`` for its label (a class
    name, e.g. ``{"pde": "poisson"}``), or None for an unconditioned model given none.

    Raises :class:`PdediffError` for a condition given to an unconditioned model (or
    ``cfg_weight`` without one), an unknown or missing name, a label value that is not one
    of the model's classes; warns for a value outside the training range.
    """
    label = spec.label.get("name") if spec.label else None
    if not spec.conditions and label is None and not condition:
        if cfg_weight:
            raise PdediffError(
                f"cfg_weight = {cfg_weight} needs a conditioned model; {model} was trained "
                "without --condition or --label: set cfg_weight to 0"
            )
        return None
    values = dict(condition or {})
    cond: dict = {}
    if label is not None:
        if label not in values:
            raise PdediffError(
                f"missing condition {label!r}: {model} is conditioned on the label {label} "
                f"(classes {spec.label['classes']}); give e.g. {label}={spec.label['classes'][0]}"
            )
        cond["label"] = encode_label(spec.label, values.pop(label), model)[None]
    if values and not spec.conditions and label is not None:
        raise PdediffError(
            f"unknown condition(s) {sorted(values)}: {model} is conditioned on the label "
            f"{label} only; remove them"
        )
    if spec.conditions or values:
        cond["vector"] = encode_conditions(spec.conditions, values, model)[None]
    return cond


def model_attrs(spec: FieldSpec, condition: Mapping[str, float | str] | None) -> dict:
    """The attributes of the model's data for ``condition``: those of its label's class
    (its family and parameters, :func:`pdediff.io.conditions.label_datasets`) over the
    shared ones."""
    if not spec.label or spec.label["name"] not in (condition or {}):
        return dict(spec.attrs)
    own = spec.label.get("attrs", {}).get(str(condition[spec.label["name"]]), {})
    return {**spec.attrs, **own}


def model_family(spec: FieldSpec, condition: Mapping[str, float | str] | None) -> PDEFamily | None:
    """The PDE family of the model (of the label's class for a model across families)."""
    return FAMILIES.get(str(model_attrs(spec, condition).get("pde")))


def condition_params(
    family: PDEFamily | None, spec: FieldSpec, condition: Mapping[str, float] | None
) -> dict[str, float]:
    """The family parameters of the model (``param_<name>`` of its data), with the
    conditions that are family parameters (Helmholtz ``k``) set to their given values.

    Warns when the training data varied a parameter that the model is not conditioned on:
    the PDE guidance then uses the family's default for it.
    """
    if family is None:
        return {}
    attrs = model_attrs(spec, condition)
    params = attrs_params(attrs, family.defaults)
    given = {k: float(v) for k, v in (condition or {}).items() if k in family.defaults}
    for name, (low, high) in attrs_param_ranges(attrs).items():
        if name in family.defaults and name not in given:
            warnings.warn(
                f"the model's training data vary {name} over [{low:g}, {high:g}] but the model "
                f"is not conditioned on it: the PDE guidance uses {name} = "
                f"{family.defaults[name]:g} (the {family.name} default)",
                PdediffWarning,
                stacklevel=3,
            )
    return {**params, **given}


def add_observations(ds: xr.Dataset, obs: Observations) -> xr.Dataset:
    """Add the observations used to a result, in place: ``obs_f`` on dim ``n_obs_f`` with
    the positions as coordinates ``obs_f_<dim>``, and ``obs_f_std`` where given."""
    for f, o in obs.fields.items():
        name, dim = f"obs_{f}", f"n_obs_{f}"
        coords = {f"{name}_{d}": (dim, np.asarray(p)) for d, p in o.positions.items()}
        ds[name] = xr.DataArray(
            np.asarray(o.values),
            dims=dim,
            coords=coords,
            attrs={"long_name": f"observations of {f} used"},
        )
        if o.std is not None:
            ds[f"{name}_std"] = xr.DataArray(np.asarray(o.std), dims=dim)
    return ds


def posterior_dataset(samples, spec: FieldSpec, obs: Observations, attrs: Mapping) -> xr.Dataset:
    """Ensemble ``(M, C, *grid)`` (normalised) -> Dataset with members, mean, std and the
    observations used."""
    members = spec.to_dataset(samples).rename({"sample": MEMBER_DIM})
    out = {}
    for f in spec.variables:
        out[f] = members[f]
        out[f"{f}_mean"] = (
            members[f]
            .mean(MEMBER_DIM)
            .assign_attrs(
                long_name=f"posterior mean of {f}", units=members[f].attrs.get("units", "1")
            )
        )
        out[f"{f}_std"] = (
            members[f]
            .std(MEMBER_DIM, ddof=1 if members.sizes[MEMBER_DIM] > 1 else 0)
            .assign_attrs(
                long_name=f"posterior standard deviation of {f}",
                units=members[f].attrs.get("units", "1"),
            )
        )
    ds = xr.Dataset(out, attrs=dict(spec.attrs))
    add_observations(ds, obs)
    ds.attrs.update({k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in attrs.items()})
    return ds


def solve(
    checkpoint: str | os.PathLike,
    observations: str | os.PathLike | Observations,
    *,
    task: str = "joint",
    members: int = 8,
    preset: str = "pdediff",
    protocol: Mapping | None = None,
    use_pde: bool = True,
    seed: int = 0,
    progress: bool = True,
    condition: Mapping[str, float] | None = None,
    experts: Sequence[tuple[str | os.PathLike, float]] | None = None,
    main_weight: float | None = None,
) -> xr.Dataset:
    """Sample the posterior of a trained model's fields given observations.

    Parameters
    ----------
    checkpoint
        A ``pdediff train`` checkpoint directory (its EMA weights are used).
    observations
        An observation file (see docs/observations.md) or :class:`Observations`.
    task
        ``forward``, ``inverse`` or ``joint`` (which observations are used).
    members
        Ensemble size (one batch).
    preset
        A key of :data:`PRESETS`; the model's ``guidance.json`` (:func:`model_guidance`)
        and then ``protocol`` override any of its fields (e.g. ``{"steps": 50,
        "pde_weight": 10, "obs_weight": {"u": 100}}``).
    use_pde
        Use the family named in the model's ``pde`` attribute for the residual term
        (``False``: ``pde_weight = 0``).
    condition
        Physical values of the conditions of a conditioned model (``pdediff train
        --condition``), e.g. ``{"k": 4.0}``; required for such a model, an error for any
        other.  A condition that is a parameter of the family (Helmholtz ``k``) also sets
        that parameter of the PDE residual and of the reference solver.  The classifier-free
        guidance weight is the protocol's ``cfg_weight`` (e.g. ``protocol={"cfg_weight":
        1.5}``; 0, the default, samples the conditional model).
    experts
        ``[(checkpoint, weight), ...]``: sample the product of experts
        :math:`D = x + \\sum_i w_i (D_i - x)` of the model and these (e.g. a large prior and
        small models of a narrow domain; :func:`pdediff.solve.experts.compose_experts`).
        Each must have the model's variables, grid and normalisation.  A conditioned expert
        gets the values of ``condition`` it is conditioned on and the same CFG weight; the
        models are bound to their conditions, with CFG, before they are composed.
    main_weight
        Weight of the model in the product; ``1 - sum(expert weights)`` by default.
    """
    from tqdm.auto import tqdm

    from pdediff.train import load_checkpoint

    denoiser, spec, config = load_checkpoint(checkpoint)
    if config.cascade.stage != "base":
        raise PdediffError(
            f"{checkpoint} is a {config.cascade.stage!r} cascade stage: it needs the stage "
            "below it; use `pdediff solve-cascade --stages BASE ... {checkpoint}`"
        )
    if not isinstance(observations, Observations):
        observations = read_observations(observations)
    obs = select_task(observations, spec, task)
    proto = resolve_protocol(checkpoint, preset, task, protocol, observed_points(obs))
    if not use_pde:
        proto = replace(proto, pde_weight=0.0)
    cond = model_condition(spec, condition, proto.cfg_weight, f"model {checkpoint}")
    model = build_operator(obs, spec, normalised=True)
    family = model_family(spec, condition)
    params = condition_params(family, spec, condition)
    extra: dict = {}
    if experts:
        denoiser, extra = compose_experts(
            denoiser,
            spec,
            experts,
            main_weight=main_weight,
            cond=cond,
            condition=condition,
            cfg_weight=proto.cfg_weight,
            members=members,
        )
    elif main_weight is not None:
        raise PdediffError("main_weight is the weight of the model among experts: give experts")
    t0 = time.perf_counter()
    with tqdm(
        total=proto.steps, desc=f"{task} posterior", unit="step", disable=not progress
    ) as bar:
        samples = sample_posterior(
            denoiser,
            spec,
            model,
            replace(proto, cfg_weight=0.0) if extra else proto,  # CFG is bound in experts
            members=members,
            family=family,
            params=params,
            seed=seed,
            callback=lambda info: bar.update(1),
            cond=None if extra else cond,
        )
    seconds = time.perf_counter() - t0
    attrs = {
        "model": str(checkpoint),
        "task": task,
        "preset": preset,
        "protocol": proto.to_dict(),
        "pde_guidance": family.name if family and proto.pde_weight > 0 else "none",
        "solver": f"{family.name} reference solver" if uses_solver(proto, family) else "none",
        "members": members,
        "seed": seed,
        "run_time_s": round(seconds, 3),
        "history": history_line(f"solve {task} with {checkpoint}"),
    }
    attrs.update(extra)
    if cond is not None:
        attrs["condition"] = {
            k: v if isinstance(v, str) else float(v) for k, v in (condition or {}).items()
        }
        attrs["cfg_weight"] = proto.cfg_weight
        if family is not None:  # the parameters the PDE guidance and solver used
            attrs.update({PARAM_PREFIX + k: params[k] for k in condition if k in params})
    return posterior_dataset(samples, spec, obs, attrs)
