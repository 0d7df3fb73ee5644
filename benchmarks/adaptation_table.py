"""The adaptation tables of issue 5: few-shot adaptation to a new regime, product of experts.

**Regimes.**  Darcy flow ``-div(a grad u) = f`` at ``--resolution`` (32) with the permeability
``a`` a thresholded Gaussian random field.  The *old* regime is the family's default
(``tau = 3``: correlation length about a third of the domain); the *new* regime
(``--new-param tau=8``) has a shorter correlation length, i.e. a finer-grained medium with
more, smaller inclusions (1.8 times the interface density of ``a`` at 32x32).  It changes
only the prior of ``a``: the PDE, its reference solver, the residual and the levels
``a_low`` / ``a_high`` of the error rate are the same, so a model of the old regime is a
meaningful starting point and both regimes are scored alike.  Only the prior parameters
``alpha`` and ``tau`` may be changed (:data:`PRIOR_PARAMS`).

**Table 1 (adaptation).**  A base model (UNet of ``--channels`` / ``--channel-mult``) is
trained with :func:`pdediff.train.train` on ``--old-train`` old-regime samples.  For each
``n`` of ``--pool-sizes`` (10 50 200; the first ``n`` of one new-regime pool, so the sets are
nested) the rows are :func:`pdediff.adapters.finetune` runs on the ``n`` pairs:

* ``scratch``: every weight of the same architecture from its random initialisation (the
  base run's step-0 checkpoint, ``--scratch-steps`` at ``--scratch-lr``), so it shares the
  base model's normalisation and differs from ``full`` only in where it starts;
* ``full``: every weight of the base model (``--ft-steps`` at ``--full-lr``);
* ``lora-rR`` and ``lora-rR-prior``: LoRA of each rank of ``--ranks``, without and with
  DreamBooth prior preservation (``--prior-weight`` on ``--prior-samples`` samples drawn
  from the base with ``--prior-steps`` Heun steps).

A LoRA adapter is folded into the base weights (:func:`pdediff.adapters.load_adapted`) and
written as a checkpoint (:func:`pdediff.train.checkpoint.save_checkpoint`), so every row is
scored by :func:`pdediff.solve.evaluate.evaluate` (``pdediff`` preset, ``--steps`` Heun steps,
``--members``, ``--points`` sensors per field, seeds ``(--seed, i)``): the inverse task
(error rate of ``a``; guided by data consistency through the solver, ``--consistency-steps``
Adam steps of ``--consistency-lr`` per sampler step, the shipped darcy64 model's tuned
setting; 0: the step correction) and the forward task (relative L2 of ``u``) on
``--test-samples`` new-regime test samples, and the same on old-regime test samples
(forgetting; the base row is the reference).  Rows record trainable parameters and training time.

``evaluate`` refuses a test set whose ``param_*`` attributes differ from the model's
training data.  Every model here carries the base model's :class:`~pdediff.io.FieldSpec`
(old-regime parameters), so the new-regime test set is scored from a copy
(``new_test_eval.nc``) whose changed prior parameters are set to the old values and whose
``benchmark_note`` says so; since they do not enter the PDE, solver, residual or error-rate
levels, no score changes.

**Table 2 (product of experts, VideoAdapter).**  ``D = x + sum_i w_i (D_i - x)`` of the base
model (main, weight ``1 - w``) and the ``scratch`` model on ``--poe-n`` pairs (weight ``w``
of ``--poe-weights``), on the new-regime test set, against each model alone, all with the
predictor-corrector sampler (``pc``, ``--poe-correctors`` Langevin steps per level, which a
product needs; docs/methods.md).  ``evaluate`` has no experts argument, so these rows are
scored per test sample with the library's pieces (the same sensors, seeds and scores:
:func:`~pdediff.solve.evaluate.draw_observations`, :func:`pdediff.solve.solve` with
``experts``, :func:`~pdediff.solve.evaluate.score_field`).  The Heun rows of both models from
table 1 are printed beside them.

Everything lands in ``--work`` (data, checkpoints, adapters, evaluation tables); the summary
``--out`` is rewritten after every part.  ``--resume`` reuses what was made with the same
settings (a retrained model invalidates what depends on it); ``--overwrite`` redoes it all.

    python benchmarks/adaptation_table.py --work /work/runs/adaptation --threads 2 \
        --out benchmarks/results/adaptation_darcy32.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from pdediff.adapters import base_model_hash, count_parameters, finetune, load_adapted
from pdediff.core.ema import EMA
from pdediff.errors import PdediffError
from pdediff.generate import generate
from pdediff.io import open_fields, write_fields
from pdediff.io.conventions import PARAM_PREFIX, SAMPLE_DIM, dataset_params
from pdediff.pde.registry import get_family
from pdediff.solve import solve
from pdediff.solve.api import resolve_protocol
from pdediff.solve.evaluate import (
    COLUMNS,
    Evaluation,
    draw_observations,
    sample_seeds,
    score_field,
)
from pdediff.train import TrainConfig, read_checkpoint, train
from pdediff.train.checkpoint import save_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_run_options, check_work, command_line, save  # noqa: E402
from solver_table import fmt, markdown, run_part, stat  # noqa: E402

FAMILY = "darcy"
#: Parameters that shape only the prior of ``a`` (not the PDE or the error-rate levels).
PRIOR_PARAMS = ("alpha", "tau")
REGIMES = ("new", "old")
TASKS = ("inverse", "forward")
#: (task, field, metric) of the table's columns: inverse a error rate, forward u rel L2.
SHOWN = (("inverse", "a", "error_rate_mean"), ("forward", "u", "rel_l2_mean"))
#: Offsets of the data seeds from --seed: one independent stream per set.
DATA_SEEDS = {"old_train": 0, "new_pool": 1, "old_test": 2, "new_test": 3}
SCORED = ("rel_l2_mean", "error_rate_mean", "crps", "coverage90", "seconds")


# ------------------------------------------------------------------------------ settings


def parse_params(items: Sequence[str]) -> dict[str, float]:
    """``["tau=8"]`` -> ``{"tau": 8.0}``, only :data:`PRIOR_PARAMS`, each changed."""
    out = {}
    defaults = get_family(FAMILY).defaults
    for item in items:
        name, _, value = item.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            raise SystemExit(f"--new-param expects NAME=VALUE, got {item!r}") from None
        if name not in PRIOR_PARAMS:
            raise SystemExit(
                f"--new-param {name}: only the prior parameters {PRIOR_PARAMS} may change "
                "(the others change the PDE or the error-rate levels)"
            )
        if out[name] == defaults[name]:
            raise SystemExit(f"--new-param {item} is the old regime's value")
    if not out:
        raise SystemExit("--new-param: give at least one NAME=VALUE")
    return out


def base_config(args: argparse.Namespace, steps: int) -> TrainConfig:
    """The base model's training config (``steps = 0``: its random initialisation)."""
    return TrainConfig.from_dict(
        {
            "model": {
                "backbone_kwargs": {
                    "model_channels": args.channels,
                    "channel_mult": list(args.channel_mult),
                    "num_blocks": 1,
                }
            },
            "optimizer": {"lr": args.base_lr, "warmup_steps": min(100, args.base_steps)},
            "batch_size": args.base_batch,
            "steps": steps,
            "seed": args.seed,
            "checkpoint_every": max(1, min(500, args.base_steps)),
            "log_every": max(1, min(50, args.base_steps)),
        }
    )


def adaptation_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every fine-tuning of table 1: label, pool size, method, rank, prior weight."""
    runs = []
    for n in args.pool_sizes:
        runs.append({"n": n, "method": "scratch", "rank": None, "prior_weight": 0.0})
        runs.append({"n": n, "method": "full", "rank": None, "prior_weight": 0.0})
        for rank in args.ranks:
            for weight in (0.0, args.prior_weight):
                runs.append({"n": n, "method": "lora", "rank": rank, "prior_weight": weight})
    for run in runs:
        name = run["method"] + (f"-r{run['rank']}" if run["rank"] else "")
        run["label"] = f"n{run['n']}_{name}" + ("-prior" if run["prior_weight"] > 0 else "")
    return runs


def _normal(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


# ---------------------------------------------------------------------------------- data


def data_recipes(args: argparse.Namespace, new: Mapping[str, float]) -> dict[str, dict]:
    """``name -> {n, resolution, seed, params}`` of the four generated sets."""
    sizes = {
        "old_train": args.old_train,
        "new_pool": max(args.pool_sizes),
        "old_test": args.test_samples,
        "new_test": args.test_samples,
    }
    return {
        name: {
            "n": n,
            "resolution": args.resolution,
            "seed": args.seed + DATA_SEEDS[name],
            "params": dict(new) if name.startswith("new") else {},
        }
        for name, n in sizes.items()
    }


def relabelled(ds: xr.Dataset, new: Mapping[str, float]) -> xr.Dataset:
    """``ds`` with the changed prior parameters set to the old regime's values, so that
    ``evaluate`` scores it with the base model's FieldSpec (see the module docstring)."""
    old = get_family(FAMILY).defaults
    out = ds.copy()
    for name in new:
        out.attrs[PARAM_PREFIX + name] = old[name]
    out.attrs["benchmark_note"] = (
        "adaptation_table.py: generated with "
        + ", ".join(f"{k}={v:g}" for k, v in new.items())
        + "; param attributes set to the old regime's ("
        + ", ".join(f"{k}={old[k]:g}" for k in new)
        + ") for evaluate's parameter check (prior-only parameters: no score changes)"
    )
    return out


def make_data(args: argparse.Namespace, work: Path, new: Mapping[str, float]) -> dict[str, str]:
    """Generate (or, with ``--resume``, reuse) the data sets; returns ``name -> path``."""
    folder = work / "data"
    folder.mkdir(parents=True, exist_ok=True)
    recipes = data_recipes(args, new)
    record = folder / "recipes.json"
    paths = {name: folder / f"{name}.nc" for name in recipes}
    paths["new_test_eval"] = folder / "new_test_eval.nc"
    paths.update({f"new_n{n}": folder / f"new_n{n}.nc" for n in args.pool_sizes})
    done = record.is_file() and all(p.is_file() for p in paths.values())
    if args.resume and done:
        if json.loads(record.read_text()) != _normal(recipes):
            raise SystemExit(
                f"{record}: the data settings differ from this run's; use another --work "
                "or --overwrite"
            )
        return {k: str(v) for k, v in paths.items()}
    sets = {}
    for name, r in recipes.items():
        print(f"generating {name} ({r['n']} samples)", flush=True)
        sets[name] = generate(
            FAMILY, r["n"], r["resolution"], seed=r["seed"], params=r["params"], progress=False
        )
        write_fields(sets[name], paths[name], overwrite=True)
    write_fields(relabelled(sets["new_test"], new), paths["new_test_eval"], overwrite=True)
    for n in args.pool_sizes:
        subset = sets["new_pool"].isel({SAMPLE_DIM: slice(0, n)})
        write_fields(subset, paths[f"new_n{n}"], overwrite=True)
    record.write_text(json.dumps(recipes, indent=1) + "\n")
    return {k: str(v) for k, v in paths.items()}


# ------------------------------------------------------------------------------- models


def _weights_hash(path: Path) -> str:
    return base_model_hash(read_checkpoint(path).denoiser())


def train_base(args: argparse.Namespace, work: Path, data: str) -> dict[str, Any]:
    """Train (or reuse) the base model and its step-0 initialisation."""
    base, init = work / "base", work / "init"
    config = base_config(args, args.base_steps)
    status = "reused"
    try:
        if not (args.resume and _at_step(base, config.steps)):
            print(f"training the base model ({config.steps} steps)", flush=True)
            train(
                data,
                base,
                config,
                resume=args.resume,
                overwrite=args.overwrite,
                device=args.device,
                progress=args.progress,
                command=command_line(),
            )
            status = "ran"
        init_config = base_config(args, 0)
        if not _same_config(init, init_config):  # the random initialisation, for scratch
            train(data, init, init_config, overwrite=True, device=args.device, progress=False)
    except PdediffError as e:
        raise SystemExit(f"base model: {e}") from None
    ckpt = read_checkpoint(base)
    return {
        "path": str(base),
        "init": str(init),
        "status": status,
        "step": ckpt.step,
        "seconds": ckpt.state.get("elapsed"),
        "loss": ckpt.state.get("loss"),
        "parameters": count_parameters(ckpt.denoiser()),
        "config": ckpt.config.to_dict(),
        "hash": _weights_hash(base),
        "init_hash": _weights_hash(init),
    }


def _at_step(path: Path, steps: int) -> bool:
    return (path / "state.json").is_file() and read_checkpoint(path).step >= steps


def _same_config(path: Path, config: TrainConfig) -> bool:
    if not (path / "state.json").is_file():
        return False
    return read_checkpoint(path).config.to_dict() == config.to_dict()


def finetune_kwargs(run: Mapping, args: argparse.Namespace, base: Mapping) -> dict[str, Any]:
    """The :func:`~pdediff.adapters.finetune` settings of one run."""
    scratch = run["method"] == "scratch"
    lr = {"scratch": args.scratch_lr, "full": args.full_lr, "lora": args.lora_lr}[run["method"]]
    lora = {"rank": run["rank"]} if run["method"] == "lora" else {}
    return {
        "base_checkpoint": base["init"] if scratch else base["path"],
        "method": "lora" if run["method"] == "lora" else "full",
        **lora,
        "steps": args.scratch_steps if scratch else args.ft_steps,
        "batch_size": args.ft_batch,
        "lr": lr,
        "prior_weight": run["prior_weight"],
        "prior_samples": args.prior_samples,
        "prior_steps": args.prior_steps,
        "seed": args.seed,
    }


def merge_to_checkpoint(base: str, adapter: Path, out: Path, steps: int) -> Path:
    """The base model with ``adapter`` folded in, written as a checkpoint directory (the
    base's config, architecture and FieldSpec), so ``evaluate`` can score it."""
    ckpt = read_checkpoint(base)
    model, spec = load_adapted(base, adapter)
    sidecar = json.loads(adapter.with_suffix(".json").read_text())
    state = {"step": steps, "merged_lora": {"base": base, "adapter": str(adapter), **sidecar}}
    save_checkpoint(
        out,
        model=model,
        ema=EMA(model, decay=ckpt.config.ema_decay),  # a copy: the merged weights
        optimizer=torch.optim.AdamW(model.parameters()),
        fieldspec=spec,
        config=ckpt.config,
        architecture=ckpt.architecture,
        state=state,
        carry=False,
    )
    return out


def run_finetune(
    run: Mapping, args: argparse.Namespace, base: Mapping, data: str, folder: Path
) -> dict[str, Any]:
    """One fine-tuning (reused with ``--resume`` when made with the same settings and base
    weights), its record, and the checkpoint that ``evaluate`` scores."""
    kwargs = finetune_kwargs(run, args, base)
    settings = _normal(
        {
            **kwargs,
            "data": data,
            "base_hash": base["init_hash" if run["method"] == "scratch" else "hash"],
        }
    )
    lora = kwargs["method"] == "lora"
    out = folder / (f"{run['label']}.safetensors" if lora else run["label"])
    model = folder / f"{run['label']}_merged" if lora else out
    record_path = folder / f"{run['label']}.record.json"
    if args.resume and record_path.is_file() and (model / "state.json").is_file():
        record = json.loads(record_path.read_text())
        if record["settings"] == settings:
            return {**record, "status": "reused"}
    print(f"fine-tuning {run['label']}", flush=True)
    try:
        result = finetune(
            out=out,
            data=data,
            device=args.device,
            overwrite=True,
            progress=args.progress,
            command=command_line(),
            **kwargs,
        )
    except PdediffError as e:
        raise SystemExit(f"{run['label']}: {e}") from None
    if lora:
        merge_to_checkpoint(kwargs["base_checkpoint"], out, model, result.steps)
    record = {
        "settings": settings,
        "output": str(out),
        "model": str(model),
        "trainable_parameters": result.trainable_parameters,
        "total_parameters": result.total_parameters,
        "seconds": result.seconds,
        "prior_seconds": result.prior_seconds,
        "loss": result.loss,
        "prior_loss": result.prior_loss if run["prior_weight"] > 0 else None,
    }
    record_path.write_text(json.dumps(_normal(record), indent=1) + "\n")
    return {**record, "status": "ran"}


# --------------------------------------------------------------------------- evaluation


def task_guidance(args: argparse.Namespace, task: str) -> dict[str, Any]:
    """Protocol settings of ``task``: data consistency for the inverse task
    (``--consistency-steps``; as the shipped darcy64 model's tuned guidance), none else."""
    if task != "inverse" or not args.consistency_steps:
        return {}
    return {"consistency_steps": args.consistency_steps, "consistency_lr": args.consistency_lr}


def eval_kwargs(args: argparse.Namespace, task: str) -> dict[str, Any]:
    return {
        "task": task,
        "points": args.points,
        "fraction": None,
        "noise_std": 0.0,
        "members": args.members,
        "preset": "pdediff",
        "protocol": {"steps": args.steps, **task_guidance(args, task)},
        "samples": args.test_samples,
        "seed": args.seed,
        "methods": ["diffusion"],
        "progress": args.progress,
    }


def scores(summary: Mapping) -> dict[str, dict[str, Any]]:
    """``field -> metric -> stat`` of the diffusion method in an evaluation summary."""
    return {
        f: {m: stat(summary, "diffusion", f, m) for m in SCORED}
        for f in summary.get("diffusion", {})
    }


def evaluate_model(
    model: str, label: str, args: argparse.Namespace, data: Mapping[str, str], fresh: bool
) -> dict[str, dict[str, Any]]:
    """``regime -> task -> {table, status, scores}``: ``model`` on both test sets.

    ``fresh``: the model was (re)made by this run, so its old tables are not reused."""
    sets = {"new": data["new_test_eval"], "old": data["old_test"]}
    out: dict[str, dict[str, Any]] = {}
    for regime in REGIMES:
        for task in TASKS:
            path = Path(args.work) / "evals" / label / f"{regime}_{task}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                doc, status = run_part(
                    path,
                    model,
                    sets[regime],
                    eval_kwargs(args, task),
                    resume=args.resume and not fresh,
                    overwrite=True,
                )
            except PdediffError as e:
                raise SystemExit(f"{label} {regime} {task}: {e}") from None
            out.setdefault(regime, {})[task] = {
                "table": str(path),
                "status": status,
                "complete": doc["complete"],
                "scores": scores(doc["summary"]),
            }
    return out


# ------------------------------------------------------------------- product of experts


def poe_methods(base: str, small: str, weights: Sequence[float]) -> dict[str, dict]:
    """``method -> {model, experts}``: each model alone and the product per weight."""
    methods = {"base": {"model": base, "experts": None}, "small": {"model": small, "experts": None}}
    for w in weights:
        methods[f"product-w{w:g}"] = {"model": base, "experts": [(small, float(w))]}
    return methods


def poe_protocol(args: argparse.Namespace, task: str) -> dict[str, Any]:
    return {
        "sampler": "pc",
        "steps": args.poe_steps or args.steps,
        "sampler_options": {"n_corrector": args.poe_correctors},
        **task_guidance(args, task),
    }


def _poe_rows(
    method: str, post: xr.Dataset, truth: xr.Dataset, obs, obs_seed: int, index: int, levels
) -> list[dict[str, Any]]:
    """Rows of :data:`~pdediff.solve.evaluate.COLUMNS` for one method and test sample."""
    rows = []
    for name in ("a", "u"):
        est = post[name].transpose("member", *truth[name].dims).values.astype(np.float64)
        y = np.asarray(truth[name].values, np.float64)
        row = dict.fromkeys(COLUMNS)
        row.update(score_field(est, y, ensemble=True, levels=levels.get(name)))
        row.update(
            method=method,
            sample=index,
            field=name,
            observed=name in obs.fields,
            n_obs=obs.fields[name].size if name in obs.fields else 0,
            obs_seed=obs_seed,
            members=est.shape[0],
            seconds=float(post.attrs["run_time_s"]),
            error="",
        )
        rows.append(row)
    return rows


def _failed_rows(method: str, index: int, obs_seed: int, error: str) -> list[dict[str, Any]]:
    rows = []
    for name in ("a", "u"):
        row = dict.fromkeys(COLUMNS)
        row.update(method=method, sample=index, field=name, obs_seed=obs_seed, error=error)
        rows.append(row)
    return rows


def _solve_once(
    method: str, m: Mapping, obs, task: str, seed: int, args: argparse.Namespace
) -> xr.Dataset | str:
    """The posterior of one method (``m``: model and experts) for one test sample, or the
    message of a sample that blew up (a failed row, as in ``evaluate``)."""
    try:
        return solve(
            m["model"],
            obs,
            task=task,
            members=args.members,
            preset="pdediff",
            protocol=poe_protocol(args, task),
            seed=seed,
            progress=False,
            experts=m["experts"],
        )
    except FloatingPointError as e:
        return f"FloatingPointError: {e}"
    except PdediffError as e:
        raise SystemExit(f"product of experts, {method}: {e}") from None


def poe_task(
    task: str, methods: Mapping[str, dict], args: argparse.Namespace, data: str, fresh: bool
) -> dict[str, Any]:
    """One task of table 2 on every test sample, written after each sample to
    ``WORK/poe/TASK.json`` (the evaluation table format); reused when complete."""
    path = Path(args.work) / "poe" / f"{task}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    base = next(iter(methods.values()))["model"]
    protocol = poe_protocol(args, task)
    meta = _normal(
        {
            "task": task,
            "data": data,
            "seed": args.seed,
            "points": args.points,
            "members": args.members,
            "samples": args.test_samples,
            "preset": "pdediff",
            "protocol": resolve_protocol(base, "pdediff", task, protocol).to_dict(),
            "methods": methods,
        }
    )
    if args.resume and not fresh and path.is_file():
        doc = json.loads(path.read_text())
        if doc.get("complete") and all(doc.get(k) == v for k, v in meta.items()):
            return {"table": str(path), "status": "reused", "summary": doc["summary"]}
    ds = open_fields(data)
    spec = read_checkpoint(base).fieldspec
    params = get_family(FAMILY).params(dataset_params(ds))
    levels = {"a": (params["a_low"], params["a_high"])}
    result = Evaluation(meta={**meta, "samples_done": 0, "complete": False})
    for i in range(args.test_samples):
        obs = draw_observations(ds, spec, task, i, args.seed, points=args.points)
        obs_seed, solve_seed = sample_seeds(args.seed, i)
        truth = ds.isel({SAMPLE_DIM: i})
        for method, m in methods.items():
            solved = _solve_once(method, m, obs, task, solve_seed, args)
            if isinstance(solved, str):
                result.rows += _failed_rows(method, i, obs_seed, solved)
            else:
                result.rows += _poe_rows(method, solved, truth, obs, obs_seed, i, levels)
        result.meta["samples_done"] = i + 1
        result.meta["complete"] = i + 1 == args.test_samples
        result.write(path, overwrite=True)
    return {"table": str(path), "status": "ran", "summary": result.summary()}


# ------------------------------------------------------------------------------ tables


def adaptation_markdown(base: Mapping, runs: Sequence[Mapping]) -> str:
    """Table 1: errors in % (± standard error) on both regimes, parameters and time."""
    header = ["n", "method", "rank", "prior λ", "trainable params", "train s"]
    header += [
        f"{r} {t} {f} {'err rate' if 'error' in m else 'rel L2'} %"
        for r in REGIMES
        for t, f, m in SHOWN
    ]
    rows = [_table_row("-", "base (old regime)", base, base["parameters"], base["seconds"])]
    for run in runs:
        seconds = run["seconds"] + run["prior_seconds"]
        rows.append(
            _table_row(
                str(run["n"]),
                run["method"],
                run,
                run["trainable_parameters"],
                seconds,
                run["rank"],
                run["prior_weight"],
            )
        )
    return markdown(header, rows)


def _table_row(n, method, entry, params, seconds, rank=None, prior=0.0) -> list[str]:
    cells = [n, method, str(rank or "-"), f"{prior:g}" if prior else "-", f"{params:,}"]
    cells.append(f"{seconds:.3g}" if seconds is not None else "-")
    for regime in REGIMES:
        for task, field, metric in SHOWN:
            s = entry["evals"][regime][task]["scores"].get(field, {}).get(metric)
            cells.append(fmt(s, 100, sem=True))
    return cells


def poe_markdown(poe: Mapping, reference: Mapping[str, Mapping]) -> str:
    """Table 2: each model alone and the product (pc sampler), with the Heun rows of
    table 1 (``reference``: method -> evals) for comparison."""
    header = ["model", "sampler", "inverse a err rate %", "inverse a rel L2 %"]
    header += ["forward u rel L2 %", "s/sample inv / fwd"]
    sampler = f"pc ({poe['protocol']['steps']} steps, {poe['protocol']['n_corrector']} corr.)"
    rows = []
    for method in poe["methods"]:
        get = {t: poe["tasks"][t]["summary"].get(method, {}) for t in TASKS}
        rows.append(_poe_row(method, sampler, lambda t, f, m, get=get: get[t].get(f, {}).get(m)))
    for name, evals in reference.items():
        new = evals["new"]
        rows.append(
            _poe_row(
                f"{name} (table 1)",
                "heun",
                lambda t, f, m, new=new: new[t]["scores"].get(f, {}).get(m),
            )
        )
    return markdown(header, rows)


def _poe_row(name: str, sampler: str, get) -> list[str]:
    return [
        name,
        sampler,
        fmt(get("inverse", "a", "error_rate_mean"), 100, sem=True),
        fmt(get("inverse", "a", "rel_l2_mean"), 100, sem=True),
        fmt(get("forward", "u", "rel_l2_mean"), 100, sem=True),
        f"{fmt(get('inverse', 'a', 'seconds'), digits=2)} / "
        f"{fmt(get('forward', 'u', 'seconds'), digits=2)}",
    ]


# -------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--work", required=True, help="folder of every intermediate artifact")
    a("--out", required=True, help="summary JSON")
    a("--new-param", nargs="+", default=["tau=8"], help="the new regime: NAME=VALUE (alpha, tau)")
    a("--resolution", type=int, default=32, help="grid points per dim")
    a("--old-train", type=int, default=2000, help="old-regime training samples")
    a("--pool-sizes", nargs="+", type=int, default=[10, 50, 200], help="new-regime pairs")
    a("--test-samples", type=int, default=4, help="test samples of each regime")
    a("--channels", type=int, default=16, help="UNet model_channels")
    a("--channel-mult", nargs="+", type=int, default=[1, 2, 2], help="UNet channel_mult")
    a("--base-steps", type=int, default=2000, help="training steps of the base model")
    a("--base-batch", type=int, default=16)
    a("--base-lr", type=float, default=1e-3)
    a("--ranks", nargs="+", type=int, default=[2, 4, 16], help="LoRA ranks")
    a("--ft-steps", type=int, default=200, help="steps of full fine-tuning and LoRA")
    a("--ft-batch", type=int, default=8, help="batch of every fine-tuning (scratch too)")
    a("--full-lr", type=float, help="full fine-tuning lr (default: the library's, 1e-4)")
    a("--lora-lr", type=float, help="LoRA lr (default: the library's, 1e-3)")
    a("--scratch-steps", type=int, default=1000, help="steps of training from scratch")
    a("--scratch-lr", type=float, default=1e-3)
    a("--prior-weight", type=float, default=1.0, help="prior-preservation weight")
    a("--prior-samples", type=int, default=32, help="prior samples drawn from the base")
    a("--prior-steps", type=int, default=12, help="Heun steps per prior sample")
    a("--members", type=int, default=4, help="ensemble size")
    a("--steps", type=int, default=16, help="sampler steps (pdediff preset, Heun)")
    a("--points", type=int, default=100, help="sensors per observed field")
    a("--consistency-steps", type=int, default=40, help="inverse task: data-consistency steps")
    a("--consistency-lr", type=float, default=0.05, help="inverse task: their Adam lr")
    a("--poe-n", type=int, help="pairs of the small model (default: the largest pool size)")
    a("--poe-weights", nargs="+", type=float, default=[0.5], help="weights of the small model")
    a("--poe-correctors", type=int, default=5, help="Langevin steps per level (pc sampler)")
    a("--poe-steps", type=int, help="pc sampler steps (default: --steps)")
    a("--seed", type=int, default=0, help="seed of data (offset per set), training, sampling")
    add_run_options(p)
    return p


def _check_args(args: argparse.Namespace, work: Path) -> None:
    check_work(args, work)
    args.poe_n = args.poe_n or max(args.pool_sizes)
    if args.poe_n not in args.pool_sizes:
        raise SystemExit(f"--poe-n {args.poe_n} is not one of --pool-sizes {args.pool_sizes}")


def main(argv: list[str] | None = None) -> dict:
    t0 = time.perf_counter()
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work, out = Path(args.work), Path(args.out)
    _check_args(args, work)
    new = parse_params(args.new_param)
    work.mkdir(parents=True, exist_ok=True)
    data = make_data(args, work, new)
    result: dict[str, Any] = {
        "note": "few-shot adaptation to a new Darcy regime and product of experts; errors "
        "of the ensemble mean; every model on the same test samples and sensors",
        "settings": {k: v for k, v in vars(args).items() if k != "progress"},
        "regimes": {"old": get_family(FAMILY).defaults, "new": get_family(FAMILY).params(new)},
        "data": data,
        "threads": torch.get_num_threads(),
    }
    base = train_base(args, work, data["old_train"])
    base["evals"] = evaluate_model(base["path"], "base", args, data, base["status"] == "ran")
    result.update(base=base, runs=[])
    save(result, out)
    folder = work / "runs"
    folder.mkdir(exist_ok=True)
    for run in adaptation_runs(args):
        entry = {**run, **run_finetune(run, args, base, data[f"new_n{run['n']}"], folder)}
        entry["evals"] = evaluate_model(
            entry["model"], run["label"], args, data, entry["status"] == "ran"
        )
        result["runs"].append(entry)
        save(result, out)
    result["poe"] = run_poe(args, base, result["runs"], data)
    result["seconds"] = time.perf_counter() - t0
    reference = {"base": base["evals"], "small": _small(result["runs"], args)["evals"]}
    result["markdown"] = {
        "adaptation": adaptation_markdown(base, result["runs"]),
        "poe": poe_markdown(result["poe"], reference),
    }
    save(result, out)
    print("\nadaptation (new regime " + ", ".join(args.new_param) + ")")
    print(result["markdown"]["adaptation"])
    print(f"\nproduct of experts (small model: scratch on {args.poe_n} new-regime pairs)")
    print(result["markdown"]["poe"])
    return result


def _small(runs: Sequence[Mapping], args: argparse.Namespace) -> Mapping:
    return next(r for r in runs if r["n"] == args.poe_n and r["method"] == "scratch")


def run_poe(args: argparse.Namespace, base: Mapping, runs: Sequence[Mapping], data) -> dict:
    """Table 2 on the new-regime test set (both tasks)."""
    small = _small(runs, args)
    methods = poe_methods(base["path"], small["model"], args.poe_weights)
    fresh = base["status"] == "ran" or small["status"] == "ran"
    tasks = {}
    for task in TASKS:
        print(f"product of experts: {task}", flush=True)
        tasks[task] = poe_task(task, methods, args, data["new_test"], fresh)
    protocol = poe_protocol(args, "forward")
    return {
        "main": base["path"],
        "expert": small["model"],
        "weights": args.poe_weights,
        "methods": list(methods),
        "protocol": {"steps": protocol["steps"], "n_corrector": args.poe_correctors},
        "tasks": tasks,
    }


if __name__ == "__main__":
    main()
