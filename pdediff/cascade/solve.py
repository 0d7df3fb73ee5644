"""Posterior sampling through a cascade: a guided base model, then guided super-resolution.

Stage 0 is a base model on the coarse grid, sampled exactly as :func:`pdediff.solve.solve`
samples it (same seed, same ensemble).  Each later stage ``k`` is a super-resolution model
(``pdediff train --stage sr``) whose low-resolution grid is the grid of stage ``k - 1``.
Every member ``m`` of stage ``k - 1`` is de-normalised, upsampled onto stage ``k``'s grid,
normalised by stage ``k``'s spec and noised to the fixed augmentation level ``s_k``
(Ho et al. 2021, "Cascaded Diffusion Models for High Fidelity Image Generation",
arXiv:2106.15282, Sec. 4.3: no blur at sampling time),

.. math::  z^{(m)} = \\mathrm{up}\\big(x_{k-1}^{(m)}\\big) + s_k\\,\\varepsilon^{(m)},
           \\qquad \\mathrm{cond}^{(m)} = \\{\\text{fields}: z^{(m)},\\
           \\text{vector}: s_k\\},

and member ``m`` of stage ``k`` is drawn from the stage's denoiser with ``cond^{(m)}``
bound, under the same DiffusionPDE guidance as the base (Huang et al. 2024,
arXiv:2406.17763): the observation misfit ``||A_f x0_hat - y_f||`` with ``A_f`` built for
*this* stage's grid from the same observations (physical positions), and the family's
finite-difference residual on this grid where the family has one.  So observations and
physics act at every resolution, and each super-resolution member refines its own
low-resolution member.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import xarray as xr

from pdediff.cascade.augment import augment, coarse_coords, upsample
from pdediff.cascade.train import periodic_dims
from pdediff.core.types import Cond
from pdediff.errors import PdediffError, PdediffWarning
from pdediff.io.conventions import history_line
from pdediff.io.fieldspec import FieldSpec
from pdediff.io.observations import (
    ObservationModel,
    Observations,
    build_operator,
    read_observations,
)
from pdediff.solve.posterior import Protocol, sample_posterior, uses_solver
from pdediff.train.checkpoint import Checkpoint, read_checkpoint

__all__ = ["CascadeError", "cascade_solve", "check_chain", "obs_rmse"]


class CascadeError(PdediffError):
    """The stages of a cascade do not fit together."""


@dataclass
class _Stage:
    """One stage's model and its protocol, observation model and conditioning inputs."""

    ckpt: Checkpoint
    protocol: Protocol
    obs: Observations
    model: ObservationModel

    @property
    def spec(self) -> FieldSpec:
        return self.ckpt.fieldspec


def _describe(ckpt: Checkpoint, k: int) -> str:
    return f"stage {k} ({ckpt.path})"


def _check_link(low: Checkpoint, high: Checkpoint, k: int) -> None:
    """Raise :class:`CascadeError` unless ``high`` (stage ``k``) refines ``low``."""
    lo, hi, cas = low.fieldspec, high.fieldspec, high.config.cascade
    where = _describe(high, k)
    if hi.variables != lo.variables or hi.dims != lo.dims:
        raise CascadeError(
            f"{where} models {list(hi.variables)} on dims {hi.dims}, stage {k - 1} "
            f"{list(lo.variables)} on {lo.dims}: a cascade refines the same fields"
        )
    if list(cas.from_shape) != list(lo.shape):
        raise CascadeError(
            f"the stages do not chain: {where} is conditioned on a {cas.from_shape} grid "
            f"(--from) but stage {k - 1} ({low.path}) is on a {list(lo.shape)} grid"
        )
    if periodic_dims(lo) != periodic_dims(hi):
        raise CascadeError(f"{where} and stage {k - 1} differ in which dims are periodic")
    for d, p, n in zip(hi.dims, periodic_dims(hi), lo.shape, strict=True):
        expected = coarse_coords(np.asarray(hi.coords[d]), n, p)
        if not np.allclose(expected, lo.coords[d], rtol=1e-6, atol=1e-9):
            raise CascadeError(
                f"the stages do not chain: {where} covers {d} in [{hi.coords[d][0]:g}, "
                f"{hi.coords[d][-1]:g}], stage {k - 1} in [{lo.coords[d][0]:g}, "
                f"{lo.coords[d][-1]:g}] (another domain or grid kind)"
            )


def check_chain(stages: Sequence[Checkpoint]) -> None:
    """Raise :class:`CascadeError` unless ``stages`` is a base model followed by
    super-resolution stages, each conditioned on the grid of the one before."""
    if not stages:
        raise CascadeError("a cascade needs at least a base model")
    if stages[0].config.cascade.is_sr:
        raise CascadeError(
            f"{_describe(stages[0], 0)} is a super-resolution stage (trained with --stage sr, "
            f"{stages[0].config.cascade.from_shape} -> {stages[0].config.cascade.to_shape}); "
            "the first stage must be a base model"
        )
    for k in range(1, len(stages)):
        if not stages[k].config.cascade.is_sr:
            raise CascadeError(
                f"{_describe(stages[k], k)} is not a super-resolution stage (trained without "
                "--stage sr); every stage after the first must be one"
            )
        _check_link(stages[k - 1], stages[k], k)


@torch.no_grad()
def obs_rmse(model: ObservationModel, x: torch.Tensor, spec: FieldSpec) -> dict[str, float]:
    """RMS of ``A_f x - y_f`` per observed field over members and observations, in the
    field's physical units (``x`` normalised by ``spec``)."""
    out, slices = {}, model.operator.slices()
    for op, name in zip(model.operator.operators, model.operator.names, strict=True):
        r = op(x.double()) - model.y[slices[name]]
        out[name] = float(r.square().mean().sqrt()) * spec.std[spec.variables.index(name)]
    return out


def _per_stage(value, count: int, name: str) -> list:
    """``value`` repeated ``count`` times, or a sequence of ``count`` values."""
    if value is None or isinstance(value, int | float):
        return [value] * count
    values = list(value)
    if len(values) != count:
        raise CascadeError(f"{name} gives {len(values)} values for {count} stages")
    return values


def _aug_levels(aug_level, stages: Sequence[Checkpoint]) -> list[float]:
    """One augmentation level per super-resolution stage, checked against training."""
    levels = [float(s) for s in _per_stage(aug_level, len(stages) - 1, "aug_level")]
    for k, (s, ckpt) in enumerate(zip(levels, stages[1:], strict=True), start=1):
        if not (s >= 0 and np.isfinite(s)):
            raise CascadeError(f"aug_level must be finite and >= 0, got {s}")
        high = ckpt.config.cascade.aug_noise_max
        if s > high:
            warnings.warn(
                f"aug_level {s:g} of {_describe(ckpt, k)} is outside the levels it was "
                f"trained on, [0, {high:g}] (--aug-noise-max)",
                PdediffWarning,
                stacklevel=3,
            )
    return levels


def _stage_seed(seed: int, k: int, stream: int) -> int:
    """Seed of stage ``k``'s sampler (stream 0) or augmentation noise (stream 1); stage 0's
    sampler uses ``seed`` itself, as :func:`pdediff.solve.solve` does."""
    if k == 0 and stream == 0:
        return seed
    return int(np.random.SeedSequence([seed, k, stream]).generate_state(1, np.uint64)[0] >> 1)


def _sr_condition(
    stage: _Stage,
    previous: torch.Tensor,
    previous_spec: FieldSpec,
    level: float,
    vector: Cond | None,
    generator: torch.Generator,
) -> Cond:
    """``cond`` of every member of a super-resolution stage from the members below."""
    spec = stage.spec
    periodic = periodic_dims(spec)
    low = upsample(previous_spec.denormalise(previous.double()), spec.shape, periodic)
    fields = augment(spec.normalise(low).float(), level, 0.0, generator, periodic)
    s = torch.full((previous.shape[0], 1), level, dtype=fields.dtype)
    if vector is not None:  # the stage's own scalar conditions come first
        s = torch.cat([vector["vector"].expand(previous.shape[0], -1).to(s.dtype), s], 1)
    return {"fields": fields, "vector": s}


def _open_stages(
    paths: Sequence[str | os.PathLike],
    observations: Observations,
    task: str,
    preset: str,
    overrides: Sequence[dict],
    use_pde: bool,
) -> list[_Stage]:
    from pdediff.solve.api import resolve_protocol, select_task

    ckpts = [read_checkpoint(p) for p in paths]
    check_chain(ckpts)
    stages = []
    for k, (path, ckpt) in enumerate(zip(paths, ckpts, strict=True)):
        proto = resolve_protocol(path, preset, task, overrides[k])
        if not use_pde:
            proto = replace(proto, pde_weight=0.0)
        if k > 0:  # CFG would drop the low-resolution fields too
            proto = replace(proto, cfg_weight=0.0)
        obs = select_task(observations, ckpt.fieldspec, task)
        model = build_operator(obs, ckpt.fieldspec, normalised=True)
        stages.append(_Stage(ckpt, proto, obs, model))
    return stages


def _run_stage(
    stage: _Stage,
    k: int,
    members: int,
    seed: int,
    condition: Mapping[str, float] | None,
    below: tuple[torch.Tensor, FieldSpec, float] | None,
    progress: bool,
) -> tuple[torch.Tensor, dict]:
    """Sample stage ``k`` (``below``: the members, spec and augmentation level feeding a
    super-resolution stage); returns the members and the stage's record."""
    from tqdm.auto import tqdm

    from pdediff.solve.api import condition_params, model_condition, model_family

    spec, proto, path = stage.spec, stage.protocol, stage.ckpt.path
    own = {n: v for n, v in (condition or {}).items() if n in spec.condition_names} or None
    family = model_family(spec, own)
    params = condition_params(family, spec, condition)
    cond = model_condition(spec, own, proto.cfg_weight, f"model {path}")
    if below is not None:
        gen = torch.Generator().manual_seed(_stage_seed(seed, k, 1))
        cond = _sr_condition(stage, below[0], below[1], below[2], cond, gen)
    t0 = time.perf_counter()
    shape = "x".join(map(str, spec.shape))
    with tqdm(total=proto.steps, desc=f"stage {k} ({shape})", disable=not progress) as bar:
        x = sample_posterior(
            stage.ckpt.denoiser(),
            spec,
            stage.model,
            proto,
            members=members,
            family=family,
            params=params,
            seed=_stage_seed(seed, k, 0),
            callback=lambda info: bar.update(1),
            cond=cond,
        )
    record = {
        "stage": k,
        "model": str(path),
        "kind": stage.ckpt.config.cascade.stage,
        "grid": list(spec.shape),
        "aug_level": None if below is None else below[2],
        "protocol": proto.to_dict(),
        "pde_guidance": family.name if family and proto.pde_weight > 0 else "none",
        "solver": f"{family.name} reference solver" if uses_solver(proto, family) else "none",
        "obs_rmse": obs_rmse(stage.model, x, spec),
        "run_time_s": round(time.perf_counter() - t0, 3),
    }
    return x, record


def cascade_solve(
    stages: Sequence[str | os.PathLike],
    observations: str | os.PathLike | Observations,
    *,
    task: str = "inverse",
    members: int = 8,
    steps: int | Sequence[int] | None = None,
    aug_level: float | Sequence[float] = 0.0,
    seed: int = 0,
    preset: str = "pdediff",
    protocol: Mapping | None = None,
    use_pde: bool = True,
    condition: Mapping[str, float] | None = None,
    progress: bool = True,
) -> xr.Dataset:
    """Posterior ensemble of the fields on the finest grid of a cascade, guided at every
    stage by the same observations (and PDE residual); see the module docstring.

    Parameters
    ----------
    stages
        Checkpoint directories: a base model, then super-resolution stages in order of
        increasing resolution (``pdediff train --stage sr --from N --to M``), each with
        ``--from`` equal to the grid of the stage before.
    observations
        An observation file or :class:`Observations` (physical positions, so one set
        serves every grid).
    task
        ``forward``, ``inverse`` or ``joint``: which observations are used (by role).
    members
        Ensemble size; member ``m`` of a stage refines member ``m`` of the stage below.
    steps
        Sampler steps, one number for all stages or one per stage (``None``: the preset's).
    aug_level
        Augmentation level ``s`` of each super-resolution stage's conditioning, one for all
        or one per super-resolution stage; in ``[0, aug_noise_max]`` of its training (a
        warning otherwise).  Ho et al. sweep it; 0 trusts the stage below fully.
    seed
        Stage 0 samples exactly as :func:`pdediff.solve.solve` with this seed; later stages
        and their augmentation noise use seeds derived from it.
    preset, protocol, use_pde
        As :func:`pdediff.solve.solve`, resolved per stage (each model's
        ``guidance.json`` applies to it); ``protocol`` is one override dict for all stages.
        ``cfg_weight`` acts on the base stage only.
    condition
        Physical values of the conditions of conditioned stages (as :func:`solve`).

    Returns
    -------
    xarray.Dataset
        As :func:`pdediff.solve.solve` on the last stage's grid, with attributes ``stages``
        (JSON: model, kind, grid, augmentation level, protocol, observation RMSE and run
        time of each stage), ``stage<k>_obs_rmse_<f>`` and ``obs_rmse_<f>`` (the last
        stage's, physical units).

    Raises
    ------
    CascadeError
        Stages that do not chain (a super-resolution stage first, a base model later,
        grids, fields or domains that do not match).
    PdediffError
        Bad settings or observations, as :func:`pdediff.solve.solve`.
    """
    if members < 1:
        raise PdediffError(f"members must be >= 1, got {members}")
    if not isinstance(observations, Observations):
        observations = read_observations(observations)
    steps_k = _per_stage(steps, len(stages), "steps")
    given = dict(protocol or {})  # a stage without its own steps keeps the protocol's
    overrides = [{**given, "steps": given.get("steps") if n is None else n} for n in steps_k]
    opened = _open_stages(stages, observations, task, preset, overrides, use_pde)
    known = {n for s in opened for n in s.spec.condition_names}
    unknown = sorted(set(condition or {}) - known)
    if unknown:
        raise PdediffError(
            f"condition {unknown} is not a condition of any stage; they are conditioned on "
            f"{sorted(known) or 'nothing'}"
        )
    levels = _aug_levels(aug_level, [s.ckpt for s in opened])
    t0 = time.perf_counter()
    x, records, below = None, [], None
    for k, stage in enumerate(opened):
        if k > 0:
            below = (x, opened[k - 1].spec, levels[k - 1])
        x, record = _run_stage(stage, k, members, seed, condition, below, progress)
        records.append(record)
    top = opened[-1]
    attrs = {
        "model": str(stages[-1]),
        "method": "cascade: guided base model, guided super-resolution stages",
        "task": task,
        "preset": preset,
        "protocol": top.protocol.to_dict(),
        "members": members,
        "seed": seed,
        "stages": json.dumps(records),
        "run_time_s": round(time.perf_counter() - t0, 3),
        "history": history_line(f"solve-cascade {task} with {' '.join(map(str, stages))}"),
    }
    for r in records:
        attrs.update({f"stage{r['stage']}_obs_rmse_{f}": v for f, v in r["obs_rmse"].items()})
    attrs.update({f"obs_rmse_{f}": v for f, v in records[-1]["obs_rmse"].items()})
    from pdediff.solve.api import posterior_dataset

    return posterior_dataset(x, top.spec, top.obs, attrs)
