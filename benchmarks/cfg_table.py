"""The conditioned-model table of issue 5: classifier-free guidance on a held-out parameter.

A Helmholtz model ``lap u + k^2 u = a`` (``u = 0`` on the boundary of the unit square) is
conditioned on the wavenumber ``k``.  Helmholtz is the family for this: ``k`` is a parameter
of the PDE itself (of the residual and of the reference solver, which
:func:`pdediff.solve.solve` sets from the condition), and the family has a differentiable
solver, so the ``pdediff`` preset's solver mode applies and ``k`` can be fitted to a pair
``(a, u)`` by the reference solver.  The source ``a`` does not depend on ``k``; the solution
does strongly: the first Dirichlet eigenvalue of ``-lap`` on the unit square is ``2 pi^2``
(``k ~ 4.44``), so the lowest mode of ``u`` grows about 5x from ``k = 1`` to ``k = 4``.  The
default range 1:4 and the out-of-range test value 4.2 stay below that resonance.  (A Darcy
contrast mostly rescales ``a``, which the model's normalisation absorbs.)

The script, at CPU scale by default (32x32):

1. generates ``--n-train`` samples with ``k ~ U(--k-range)`` (``k`` stored per sample) and
   trains a small UNet on ``(a, u)`` conditioned on ``k`` with condition dropout
   ``--p-uncond`` (:func:`pdediff.train.train`, into ``--model-dir``, default
   ``OUT_STEM/model``), or uses a trained conditioned model (``--model``);
2. generates one test set per ``--k-test`` value (default 3.3, held out: the training values
   are continuous draws, and off the prior mean 2.5, so that a posterior no better than the
   prior is not centred on the truth by accident; and 4.2, outside the training range,
   where the library warns), all with the seed ``--test-seed``: the sets share their
   sources ``a``, only ``k`` differs;
3. for each test sample, task (``forward``: ``a`` observed, ``u`` inferred; ``inverse``: ``u``
   observed, ``a`` inferred) and setting, draws an ensemble of ``--members``, with the
   sensors of the seeds ``(--seed, i)`` (:func:`pdediff.solve.evaluate.sample_seeds`, the
   same at every setting and every ``k``): ``--sensors`` 500 points per field by default,
   49 % of the 32x32 nodes (DiffusionPDE's count; ``--sensors 0.1`` for a sparser run).

Settings (rows); the CFG weight ``w`` is that of :class:`~pdediff.solve.posterior.Protocol`,
``D_c + w (D_c - D_u)``, so ``w = 0`` is the conditional model:

* ``known-solver-wW``: condition ``k`` = the true value, ``w = W`` (``--weights``, default
  0 0.5 1 2 4), the ``pdediff`` preset: ``u`` from the reference solver at the given ``k``;
* ``known-joint-wW``: the same with the ``joint`` preset (both fields sampled), PDE weight
  ``--joint-pde-weight`` (default 0, so that the row differs from the unknown one by the
  condition alone);
* ``unknown-joint``: ``k`` unknown, the condition dropped (``cond["drop"]``: the null
  embedding learned with ``p_uncond``, the unconditional branch of CFG), i.e. the mixture
  over the training range of ``k``.  Without ``k`` there is no residual and no solver: both
  fields are sampled with observation guidance only (``joint`` preset, ``pde_weight = 0``),
  and CFG does not apply.  :func:`pdediff.solve.solve` requires a condition for a
  conditioned model, so this row calls the library pieces it is made of
  (:func:`~pdediff.solve.posterior.sample_posterior` with the dropped condition);
* ``plugin-solver-wW``: ``k`` inferred, then used: the condition is the posterior mean of
  ``k`` of the ``unknown-joint`` ensemble of the same sample and task (clipped to the
  training range), ``w = W`` (``--plugin-weights``, default 0 2), ``pdediff`` preset.

Guidance (:data:`MODE_PROTOCOL`, over the presets): the presets' observation weight of 1000
(tuned for Darcy at 64x64) blows this model's samples up (relative errors of 10-100), so
every row uses 10: in a sweep over 1, 3, 10, 30 on two samples at ``k = 3.3`` it was best
or near best for the forward task in both modes and for the inverse task in the joint mode.
Solver-mode inverse samples stayed poor at any step-correction weight (relative L2 of ``a``
0.5-1.8), and data consistency (10 Adam steps of learning rate 0.05 on the clean estimate
after every step, ``consistency_steps``) brought them to 0.2-0.3, so the solver rows use
it.  ``--protocol-json`` overrides any of it, for every row or per preset (``{"pdediff":
{...}, "joint": {...}}``); ``--steps`` sets the sampler steps (presets: 32 Heun).

The posterior over ``k``: each member gets the ``k`` that best explains its pair, the
output-error fit ``k_m = argmin_k ||S_k(a_m) - u_m||^2`` with ``S_k`` the reference solver
(a bounded scalar search below the first resonance).  If the unconditional model samples the
joint law of ``(a, u)`` over the training mixture of ``k``, a member guided by the
observations is a draw from the posterior of ``(a, u)``, and the ``k`` its fields satisfy a
draw from ``p(k | y)``: the members' ``k_m`` are an ensemble of that posterior, scored like
a field (mean, std, central 90 % interval at the quantiles of
:func:`pdediff.metrics.coverage`, whether it covers the true ``k``, CRPS).  This costs a few
dozen sparse solves per member and no further sampling; weighting ensembles sampled on a
grid of ``k`` by their observation misfit would cost one ensemble per grid value and weigh
guided samples (which all fit the observations) by a misfit that is not their likelihood.
The equation-error fit, the least-squares ``k^2`` of the residual ``lap u + k^2 u - a``
(closed form, :func:`fit_k_residual`), is recorded too (``k_residual``) but not used: the
Laplacian amplifies the noise left in a sampled ``u``, which biases ``k^2`` upwards (on
this model's inverse samples it gave 5-8 for a true 3.3, the output-error fit 0.9-4).  The
fit of the known-joint rows measures how closely samples follow their condition; solver
rows satisfy the PDE at their condition exactly, so their fit returns it (not shown).

Scores per (setting, sample) of the inferred field (both fields are recorded):
``rel_l2_mean`` (of the ensemble mean), ``rel_spread`` (RMS over the grid of the members'
standard deviation over the RMS of the truth: the spread in the units of the relative
error), ``coverage90``, ``spread_skill``, ``crps``
(:func:`pdediff.solve.evaluate.score_field`), the ``k`` posterior and the seconds.  The
loop runs sample by sample over all settings; ``--out`` is rewritten after every ensemble,
with the settings each record was made with, so an interrupted run leaves a table of its
first samples, and ``--resume`` keeps the records made with the same settings and model
(and resumes the training).  At the end one markdown table per test ``k`` is printed (means
over the samples; errors in %, with the standard error).

    python benchmarks/cfg_table.py --threads 2 --samples 4 2 \
        --out benchmarks/results/cfg_table_helmholtz32.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from pdediff.errors import PdediffError
from pdediff.generate import generate
from pdediff.io.conventions import SAMPLE_DIM, attrs_params, dataset_params
from pdediff.io.fieldspec import FieldSpec
from pdediff.io.observations import Observations, build_operator
from pdediff.metrics import coverage, crps_ensemble
from pdediff.pde.base import Grid
from pdediff.pde.registry import FAMILIES
from pdediff.solve.api import (
    posterior_dataset,
    resolve_protocol,
    select_task,
    solve,
    task_fields,
)
from pdediff.solve.evaluate import draw_observations, sample_seeds, score_field
from pdediff.solve.posterior import sample_posterior
from pdediff.train import TrainConfig, load_checkpoint, read_checkpoint, train

sys.path.insert(0, str(Path(__file__).parent))
from _common import save  # noqa: E402
from solver_table import (  # noqa: E402
    check_outputs,
    fmt,
    markdown,
    parse_json,
    preset_overrides,
    sensor_label,
    sensor_setting,
)

FAMILY = FAMILIES["helmholtz"]
CONDITION = "k"
TASKS = ("forward", "inverse")
MODES = {"solver": "pdediff", "joint": "joint"}
#: Protocol of each mode over its preset (see the module docstring).
MODE_PROTOCOL = {
    "solver": {"default_obs_weight": 10.0, "consistency_steps": 10, "consistency_lr": 0.05},
    "joint": {"default_obs_weight": 10.0},
}
LEVEL = 0.9
#: Per-field scores kept per record and summarised over the samples.
SCORES = ("rel_l2_mean", "rel_l2_member", "rel_spread", "crps", "coverage90", "spread_skill")
#: Scores of the ``k`` posterior summarised over the samples.
K_SCORES = ("mean", "std", "abs_error", "covered", "crps")


# ------------------------------------------------------------------------ model and data


def parse_range(text: str) -> tuple[float, float]:
    """``"1:4"`` -> ``(1.0, 4.0)``."""
    try:
        low, high = (float(v) for v in text.split(":"))
    except ValueError:
        raise SystemExit(f"--k-range must be LOW:HIGH, got {text!r}") from None
    if not low < high:
        raise SystemExit(f"--k-range needs LOW < HIGH, got {text!r}")
    return low, high


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The small conditioned UNet of the table (condition dropout for CFG)."""
    return TrainConfig.from_dict(
        {
            "model": {
                "backbone_kwargs": {"model_channels": args.channels, "channel_mult": [1, 2, 2]}
            },
            "optimizer": {"lr": args.lr, "warmup_steps": min(100, args.train_steps)},
            "batch_size": args.batch_size,
            "steps": args.train_steps,
            "checkpoint_every": max(1, min(500, args.train_steps)),
            "log_every": max(1, min(100, args.train_steps)),
            "seed": args.train_seed,
            "condition": [CONDITION],
            "p_uncond": args.p_uncond,
        }
    )


def prepare_model(args: argparse.Namespace) -> tuple[str, dict]:
    """The checkpoint to sample: ``--model``, or one trained (or resumed) in
    ``--model-dir``.  Returns its path and what the table records of its training."""
    if args.model:
        return args.model, {"given": args.model}
    low, high = parse_range(args.k_range)
    data = generate(
        FAMILY.name,
        args.n_train,
        args.resolution,
        seed=args.train_seed,
        progress=False,
        param_ranges={CONDITION: (low, high)},
    )
    config = train_config(args)
    train(
        data,
        args.model_dir,
        config,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=args.progress,
    )
    state = read_checkpoint(args.model_dir).state
    info = {
        "n_train": args.n_train,
        "k_range": [low, high],
        "train_seed": args.train_seed,
        "config": config.to_dict(),
        **{k: state.get(k) for k in ("step", "loss", "elapsed")},
    }
    return str(args.model_dir), info


def check_model(spec: FieldSpec, model: str) -> None:
    """A Helmholtz ``(a, u)`` model conditioned on ``k`` alone."""
    if str(spec.attrs.get("pde")) != FAMILY.name or set(spec.variables) != {"a", "u"}:
        raise SystemExit(f"{model} is not a Helmholtz (a, u) model")
    if list(spec.conditions) != [CONDITION]:
        raise SystemExit(
            f"{model} is conditioned on {list(spec.conditions)}; the table needs a model "
            f"conditioned on {CONDITION!r} alone (pdediff train --condition {CONDITION})"
        )


def make_test_set(spec: FieldSpec, k: float, n: int, seed: int) -> xr.Dataset:
    """``n`` samples at the fixed ``k`` on the model's grid, with the other parameters of
    its training data."""
    params = {**attrs_params(spec.attrs, FAMILY.defaults), CONDITION: k}
    ny, nx = spec.shape
    if ny != nx:
        raise SystemExit(f"the Helmholtz generator makes square grids; the model's is {spec.shape}")
    return generate(FAMILY.name, n, ny, seed=seed, params=params, progress=False)


# ------------------------------------------------------------------------- the k posterior


def first_resonance(grid: Grid) -> float:
    """The smallest ``k`` at which the discrete Helmholtz problem on ``grid`` has no unique
    solution: the square root of the smallest eigenvalue of the five-point ``-lap`` with
    zero boundary values, ``sum_d 4 / h_d^2 sin^2(pi / (2 (n_d - 1)))``."""
    lam = sum(
        4.0 / grid.spacing(d) ** 2 * math.sin(math.pi / (2 * (n - 1))) ** 2
        for d, n in zip(grid.dims, grid.shape, strict=True)
    )
    return math.sqrt(lam)


def fit_k(a: np.ndarray, u: np.ndarray, grid: Grid, params: Mapping[str, float]) -> np.ndarray:
    """Output-error fit of ``k`` to each member: ``argmin_k ||S_k(a_m) - u_m||^2``.

    ``S_k`` is the family's reference solver at ``k`` (and the other ``params``); the
    bounded scalar search (Brent) covers ``[0, 0.99 k_1]``, ``k_1`` the first resonance
    (:func:`first_resonance`), below which the solution is a smooth function of ``k``.

    Parameters
    ----------
    a, u
        ``(M, ny, nx)`` physical fields.
    grid, params
        Their grid and the family parameters other than ``k``.

    Returns
    -------
    numpy.ndarray
        ``(M,)`` fitted values.
    """
    from scipy.optimize import minimize_scalar

    def misfit(k: float, am: np.ndarray, um: np.ndarray) -> float:
        solved = FAMILY.solve({"a": am}, grid, {**params, CONDITION: k})["u"]
        return float(np.sum((solved - um) ** 2))

    bounds = (0.0, 0.99 * first_resonance(grid))
    return np.array(
        [
            minimize_scalar(
                misfit, bounds=bounds, args=(am, um), method="bounded", options={"xatol": 1e-3}
            ).x
            for am, um in zip(a, u, strict=True)
        ]
    )


def fit_k_residual(a: np.ndarray, u: np.ndarray, grid: Grid) -> np.ndarray:
    """Equation-error fit of ``k`` to each member: the least-squares ``k^2`` of the residual
    ``lap u + k^2 u - a`` (:func:`pdediff.pde.helmholtz.terms`, interior nodes),
    ``k^2 = <u, a - lap u> / <u, u>``, returned as ``sqrt(max(k^2, 0))``; NaN where ``u``
    vanishes.  A diagnostic only (see the module docstring)."""
    fields = {"a": torch.from_numpy(a), "u": torch.from_numpy(u)}
    terms = FAMILY.terms(fields, grid, FAMILY.params({CONDITION: 1.0}))  # "k^2 u" is u
    u_int, rest = terms["k^2 u"].flatten(1), (terms["lap u"] + terms["-a"]).flatten(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        k2 = (-(u_int * rest).sum(1) / u_int.pow(2).sum(1)).numpy()
    return np.sqrt(np.clip(k2, 0.0, None))


def k_posterior(k_members: np.ndarray, k_true: float) -> dict[str, Any]:
    """Summary of the members' ``k``: mean, std, central 90 % interval (the Weibull
    quantiles of :func:`pdediff.metrics.coverage`), whether it covers ``k_true``, CRPS."""
    k = np.asarray(k_members, np.float64)
    truth = np.array([k_true])
    if not np.isfinite(k).all():
        return {"members": [None if not np.isfinite(v) else float(v) for v in k]}
    lo, hi = np.quantile(k, [(1 - LEVEL) / 2, (1 + LEVEL) / 2], method="weibull")
    return {
        "members": k.tolist(),
        "mean": float(k.mean()),
        "std": float(k.std(ddof=1)) if k.size > 1 else 0.0,
        "q05": float(lo),
        "q95": float(hi),
        "abs_error": float(abs(k.mean() - k_true)),
        "covered": float(coverage(k[:, None], truth, LEVEL)),
        "crps": float(crps_ensemble(k[:, None], truth)),
    }


# ---------------------------------------------------------------------------- the settings


def settings(args: argparse.Namespace) -> list[dict]:
    """The rows of each (test k, task): known (per mode and weight), unknown, plug-in."""
    rows = [
        {"label": f"known-{mode}-w{w:g}", "k": "true", "mode": mode, "cfg_weight": w}
        for mode in args.modes
        for w in args.weights
    ]
    rows.append({"label": "unknown-joint", "k": "none", "mode": "joint", "cfg_weight": 0.0})
    rows += [
        {"label": f"plugin-solver-w{w:g}", "k": "posterior mean", "mode": "solver", "cfg_weight": w}
        for w in args.plugin_weights
    ]
    return rows


def protocol_overrides(setting: Mapping, args: argparse.Namespace) -> dict:
    """Protocol overrides of a setting: :data:`MODE_PROTOCOL`, ``--protocol-json`` and
    ``--steps``, the CFG weight, and for the joint rows the PDE weight (0 where ``k`` is
    unknown)."""
    preset = MODES[setting["mode"]]
    out = {**MODE_PROTOCOL[setting["mode"]], **args.protocol[preset]}
    out["cfg_weight"] = setting["cfg_weight"]
    if args.steps is not None:
        out["steps"] = args.steps
    if setting["mode"] == "joint":
        known = setting["k"] != "none"
        out.update(solver=False, pde_weight=args.joint_pde_weight if known else 0.0)
    return out


def solve_unconditional(
    model: str, obs: Observations, task: str, members: int, protocol: Mapping, seed: int
) -> xr.Dataset:
    """Posterior ensemble of a conditioned model with its condition dropped.

    :func:`pdediff.solve.solve` requires a condition for a conditioned model; this is its
    path with ``cond = {"vector": 0, "drop": True}`` (the learned null embedding, as the
    unconditional branch of CFG) and no PDE family: without ``k`` there is no residual term
    and no reference solver, both fields are sampled.
    """
    proto = resolve_protocol(model, MODES["joint"], task, protocol)
    denoiser, spec, _ = load_checkpoint(model)
    obs = select_task(obs, spec, task)
    dropped = {
        "vector": torch.zeros(1, len(spec.conditions)),
        "drop": torch.ones(1, dtype=torch.bool),
    }
    t0 = time.perf_counter()
    samples = sample_posterior(
        denoiser,
        spec,
        build_operator(obs, spec, normalised=True),
        proto,
        members=members,
        seed=seed,
        cond=dropped,
    )
    attrs = {"protocol": proto.to_dict(), "run_time_s": round(time.perf_counter() - t0, 3)}
    return posterior_dataset(samples, spec, obs, attrs)


def run_setting(
    model: str,
    setting: Mapping,
    obs: Observations,
    task: str,
    condition: float | None,
    protocol: Mapping,
    args: argparse.Namespace,
    solve_seed: int,
) -> tuple[xr.Dataset, list[str]]:
    """One ensemble and the messages of the warnings it raised (a ``k`` outside the
    training range)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if condition is None:
            post = solve_unconditional(model, obs, task, args.members, protocol, solve_seed)
        else:
            post = solve(
                model,
                obs,
                task=task,
                members=args.members,
                preset=MODES[setting["mode"]],
                protocol=protocol,
                seed=solve_seed,
                progress=False,
                condition={CONDITION: condition},
            )
    messages = list(dict.fromkeys(str(w.message) for w in caught))
    for m in messages:
        print(f"  warning: {m}", flush=True)
    return post, messages


# ------------------------------------------------------------------------------ the scores


def relative_spread(ens: np.ndarray, truth: np.ndarray) -> float | None:
    """RMS over the grid of the members' std (``ddof=1``) over the RMS of the truth."""
    if ens.shape[0] < 2:
        return None
    return float(np.sqrt(ens.var(axis=0, ddof=1).mean() / np.mean(truth**2)))


def score_record(
    post: xr.Dataset, truth: Mapping[str, np.ndarray], spec: FieldSpec, k_true: float
) -> dict[str, Any]:
    """Scores of every field and the ``k`` posterior of one ensemble."""
    dims = ("member", *spec.dims)
    ens = {f: np.asarray(post[f].transpose(*dims).values, np.float64) for f in spec.variables}
    scores = {}
    for f in spec.variables:
        s = score_field(ens[f], truth[f], ensemble=True)
        s["rel_spread"] = relative_spread(ens[f], truth[f])
        scores[f] = {m: s[m] for m in SCORES}
    grid, params = spec.grid(), attrs_params(spec.attrs, FAMILY.defaults)
    return {
        "scores": scores,
        "k_posterior": k_posterior(fit_k(ens["a"], ens["u"], grid, params), k_true),
        "k_residual": k_posterior(fit_k_residual(ens["a"], ens["u"], grid), k_true),
    }


def _stats(values: Sequence[float | None]) -> dict | None:
    v = np.asarray([x for x in values if x is not None], np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    return {"mean": float(v.mean()), "std": float(v.std()), "n": int(v.size)}


def summarise(part: Mapping, target: str) -> dict:
    """Means over the samples of one part: the target field's scores, the ``k`` posterior,
    the seconds, and the warnings raised."""
    records = list(part["records"].values())
    out = {m: _stats([r["scores"][target][m] for r in records]) for m in SCORES}
    out.update({f"k_{m}": _stats([r["k_posterior"].get(m) for r in records]) for m in K_SCORES})
    out["k_residual_mean"] = _stats([r["k_residual"].get("mean") for r in records])
    out["seconds"] = _stats([r["seconds"] for r in records])
    out["condition"] = _stats([r["condition"] for r in records])
    out["warnings"] = sorted({w for r in records for w in r["warnings"]})
    out["n"] = len(records)
    return out


# ------------------------------------------------------------------------------- the loop


def part_meta(
    k_test: float, task: str, setting: Mapping, model: str, args: argparse.Namespace
) -> dict:
    """What a record depends on; a stored record is reused only when this matches."""
    ckpt = read_checkpoint(model)  # JSON only: cheap
    overrides = protocol_overrides(setting, args)
    protocol = resolve_protocol(model, MODES[setting["mode"]], task, overrides).to_dict()
    return json.loads(
        json.dumps(
            {
                "k_test": k_test,
                "task": task,
                **setting,
                "protocol": protocol,
                "members": args.members,
                "draw": args.draw,
                "noise_std": args.noise_std,
                "seed": args.seed,
                "test_seed": args.test_seed,
                "model": {"path": model, "step": ckpt.step, "data": ckpt.state.get("data")},
            }
        )
    )


def condition_of(
    setting: Mapping, k_true: float, unknown: Mapping | None, spec: FieldSpec
) -> float | None:
    """The physical condition of a setting for one sample (``None``: dropped).

    The plug-in value is the posterior mean of the unknown row, clipped to the training
    range: the support of the prior the unconditional model learned (and on the unit
    square the solver nears its first resonance above it, ``k ~ 4.44``).
    """
    if setting["k"] == "true":
        return k_true
    if setting["k"] == "none":
        return None
    k_hat = (unknown or {}).get("k_posterior", {}).get("mean")
    if k_hat is None:
        raise PdediffError("the plug-in row needs a finite k posterior from the unknown row")
    r = spec.conditions[CONDITION]
    return float(np.clip(k_hat, r["low"], r["high"]))


def run_sample(
    parts: dict,
    names: Mapping,
    ds: xr.Dataset,
    index: int,
    spec: FieldSpec,
    model: str,
    args: argparse.Namespace,
    flush: Callable[[], None],
) -> None:
    """Every (task, setting) of one test sample, skipping records already there."""
    k_true = dataset_params(ds)[CONDITION]
    obs_seed, solve_seed = sample_seeds(args.seed, index)
    sel = ds.isel({SAMPLE_DIM: index})
    truth = {f: np.asarray(sel[f].transpose(*spec.dims).values, np.float64) for f in spec.variables}
    for task in args.tasks:
        obs = draw_observations(
            ds, spec, task, index, args.seed, **args.draw, noise_std=args.noise_std
        )
        for setting in args.settings:
            part = parts[names[task, setting["label"]]]
            if str(index) in part["records"]:
                continue
            unknown = parts[names[task, "unknown-joint"]]["records"].get(str(index))
            condition = condition_of(setting, k_true, unknown, spec)
            protocol = protocol_overrides(setting, args)
            post, messages = run_setting(
                model, setting, obs, task, condition, protocol, args, solve_seed
            )
            record = {
                "sample": index,
                "obs_seed": obs_seed,
                "solve_seed": solve_seed,
                "condition": condition,
                "seconds": float(post.attrs["run_time_s"]),
                "warnings": messages,
                **score_record(post, truth, spec, k_true),
            }
            part["records"][str(index)] = record
            target = task_fields(spec, task)[1][0]
            part["summary"] = summarise(part, target)
            flush()
            k_hat = record["k_posterior"].get("mean")
            print(
                f"  k={k_true:g} sample {index} {task} {setting['label']}: "
                f"{target} rel L2 {100 * record['scores'][target]['rel_l2_mean']:.2f} %, "
                f"k^ {'-' if k_hat is None else f'{k_hat:.3g}'}, {record['seconds']:.1f} s",
                flush=True,
            )


def reusable(previous: Mapping, name: str, meta: Mapping, resume: bool) -> dict:
    """The stored records of part ``name`` if ``resume`` and they were made with ``meta``."""
    old = previous.get("parts", {}).get(name)
    if not resume or old is None:
        return {}
    if old.get("meta") != meta:
        print(f"  rerunning {name} (settings differ)", flush=True)
        return {}
    return dict(old.get("records", {}))


# ------------------------------------------------------------------------------- the table


def format_table(result: Mapping, k_test: float) -> str:
    """Markdown table of one test ``k``: errors and spread of the inferred field in %."""
    header = ["task", "k given", "mode", "w", "field", "rel L2 %", "rel spread %"]
    header += ["coverage90", "spread-skill", "CRPS", "k used", "k^ mean", "k^ std"]
    header += ["k^ 90% covers", "k^ CRPS", "s/sample", "n"]
    given = {"true": "true", "none": "unknown", "posterior mean": "k^ plug-in"}
    rows = []
    for part in result["parts"].values():
        m, s = part["meta"], part.get("summary")
        if m["k_test"] != k_test or not s:
            continue
        # a solver row satisfies the PDE at the k it was given: its fit returns that k
        fitted = m["mode"] != "solver"
        rows.append(
            [
                m["task"],
                given[m["k"]],
                m["mode"],
                "-" if m["k"] == "none" else f"{m['cfg_weight']:g}",
                part["target"],
                fmt(s["rel_l2_mean"], 100, sem=True),
                fmt(s["rel_spread"], 100),
                fmt(s["coverage90"]),
                fmt(s["spread_skill"]),
                fmt(s["crps"]),
                fmt(s["condition"]),
                *[fmt(s[f"k_{k}"]) if fitted else "-" for k in ("mean", "std", "covered", "crps")],
                fmt(s["seconds"], digits=2),
                str(s["n"]),
            ]
        )
    return markdown(header, rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="result JSON (the model goes beside it)")
    p.add_argument("--model", help="a trained Helmholtz model conditioned on k (no training)")
    p.add_argument("--model-dir", help="where to train the model (default: OUT_STEM/model)")
    p.add_argument("--resolution", type=int, default=32, help="grid points per dim")
    p.add_argument("--n-train", type=int, default=2000, help="training samples")
    p.add_argument("--k-range", default="1:4", help="training range of k, LOW:HIGH")
    p.add_argument("--train-steps", type=int, default=2400)
    p.add_argument("--channels", type=int, default=16, help="UNet model_channels")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--p-uncond", type=float, default=0.1, help="condition dropout")
    p.add_argument("--train-seed", type=int, default=0, help="seed of training data and run")
    p.add_argument("--k-test", nargs="+", type=float, default=[3.3, 4.2], help="k of each test set")
    p.add_argument(
        "--samples",
        nargs="+",
        type=int,
        default=[4, 2],
        help="test samples per --k-test value (one number: the same for all)",
    )
    p.add_argument("--test-seed", type=int, default=1, help="seed of every test set")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--sensors", default="500", help="a count (500) or a fraction (0.1)")
    p.add_argument("--noise-std", type=float, default=0.0, help="observation noise (physical)")
    p.add_argument("--members", type=int, default=8, help="ensemble size")
    p.add_argument("--weights", nargs="+", type=float, default=[0.0, 0.5, 1.0, 2.0, 4.0])
    p.add_argument(
        "--modes",
        nargs="+",
        default=list(MODES),
        choices=list(MODES),
        help="sampling modes of the known-k rows",
    )
    p.add_argument(
        "--plugin-weights",
        nargs="*",
        type=float,
        default=[0.0, 2.0],
        help="CFG weights of the plug-in rows (none: no plug-in row)",
    )
    p.add_argument(
        "--joint-pde-weight", type=float, default=0.0, help="PDE weight of the known-joint rows"
    )
    p.add_argument("--steps", type=int, help="sampler steps (default: the presets' 32)")
    p.add_argument(
        "--protocol-json",
        help="protocol overrides: {field: value} for every row, or {preset: {field: value}} "
        "per preset (pdediff: the solver rows, joint: the joint rows)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of sensors and sampling")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--resume", action="store_true", help="keep records made the same way")
    p.add_argument("--overwrite", action="store_true", help="replace the result and model")
    p.add_argument("--progress", action="store_true")
    return p


def check_args(args: argparse.Namespace) -> None:
    if len(args.samples) not in (1, len(args.k_test)):
        raise SystemExit("--samples: give one number, or one per --k-test value")
    if any(n < 1 for n in args.samples) or args.members < 2:
        raise SystemExit("--samples must be >= 1 and --members >= 2")
    if any(w < 0 for w in [*args.weights, *args.plugin_weights]):
        raise SystemExit("CFG weights must be >= 0")
    if Path(args.out).suffix != ".json":
        raise SystemExit(f"--out must be a .json file, got {args.out}")


def part_name(k_test: float, task: str, label: str) -> str:
    return f"k{k_test:g}_{task}_{label}"


def init_parts(
    args: argparse.Namespace, spec: FieldSpec, model: str, previous: Mapping
) -> dict[str, dict]:
    """Every part (test k, task, setting) with its settings, the records kept from
    ``previous`` (with ``--resume``) and their summary."""
    parts = {}
    for k_test in args.k_test:
        for task in args.tasks:
            target = task_fields(spec, task)[1][0]
            for setting in args.settings:
                name = part_name(k_test, task, setting["label"])
                meta = part_meta(k_test, task, setting, model, args)
                records = reusable(previous, name, meta, args.resume)
                part = {"meta": meta, "target": target, "records": records}
                part["summary"] = summarise(part, target) if records else None
                parts[name] = part
    return parts


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    check_outputs([out], args.resume, args.overwrite)
    args.model_dir = args.model_dir or str(out.with_suffix("") / "model")
    protocol_json = parse_json(args.protocol_json, "--protocol-json")
    args.protocol = preset_overrides(protocol_json, list(MODES.values()))
    args.draw = sensor_setting(args.sensors)[1]
    args.settings = settings(args)
    counts = args.samples * len(args.k_test) if len(args.samples) == 1 else args.samples
    previous = json.loads(out.read_text()) if args.resume and out.is_file() else {}

    model, training = prepare_model(args)
    spec = read_checkpoint(model).fieldspec
    check_model(spec, model)
    result = {
        "note": "CFG table: Helmholtz model conditioned on k; per test k, task and setting "
        "the inferred field's scores and the posterior of k from the members' fits by the "
        "reference solver",
        "family": FAMILY.name,
        "model": model,
        "training": training,
        "conditions": spec.conditions,
        "sensor_label": sensor_label(args.draw),
        "settings": {k: v for k, v in vars(args).items() if k not in ("progress", "settings")},
        "mode_protocol": MODE_PROTOCOL,
        "threads": torch.get_num_threads(),
        "parts": init_parts(args, spec, model, previous),
    }
    save(result, out)
    for k_test, n in zip(args.k_test, counts, strict=True):
        ds = make_test_set(spec, k_test, n, args.test_seed)
        names = {
            (task, s["label"]): part_name(k_test, task, s["label"])
            for task in args.tasks
            for s in args.settings
        }
        for index in range(n):
            print(f"k = {k_test:g}, sample {index + 1}/{n}", flush=True)
            try:
                run_sample(
                    result["parts"], names, ds, index, spec, model, args, lambda: save(result, out)
                )
            except PdediffError as e:
                raise SystemExit(f"k = {k_test:g}, sample {index}: {e}") from None
    result["markdown"] = {f"{k:g}": format_table(result, k) for k in args.k_test}
    save(result, out)
    for k, table in result["markdown"].items():
        print(f"\nk = {k} ({result['sensor_label']}, {args.members} members)\n{table}")
    return result


if __name__ == "__main__":
    main()
