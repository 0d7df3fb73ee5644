"""The cascade table of issue 6: cascaded super-resolution against one model at the finest grid.

In the manner of Ho et al. (2021), "Cascaded Diffusion Models for High Fidelity Image
Generation" (arXiv:2106.15282, Tables 4-5: sample quality of the cascade against the
conditioning augmentation), on Darcy flow ``-div(a grad u) = f`` (a two-valued
permeability ``a``, its pressure ``u``).

**Models.**  ``--grids`` (32 64) are the grids of the cascade, coarsest first.

* The *base* model is an ordinary model trained with :func:`pdediff.train.train` on
  ``--train-samples`` pairs generated *at* ``grids[0]`` (``pdediff generate darcy
  --resolution 32``, the same seed and recipe as the finer sets).  pdediff's node grids
  include both ends, so 64 -> 32 does not nest and downsampling would interpolate a
  blended two-valued ``a`` at the coarse nodes (docs/methods.md, Cascades).
* One *super-resolution* stage per pair of consecutive grids (``cascade.stage = "sr"``),
  trained on its own on the pairs generated at its finer grid, conditioned on the
  upsampled fields by channel concatenation with conditioning augmentation
  (:func:`pdediff.cascade.train.sr_conditioning`): per sample a noise level
  ``s ~ U[0, --aug-noise-max]`` (told to the network) and a Gaussian blur of
  ``U[0, --aug-blur]`` grid steps.  Its conditioning is made from the training fields
  themselves (down- then upsampled), so at sampling time it sees a base model's sample
  instead, the mismatch the augmentation is for.
* *No cascade*: ``--direct-model``, by default the shipped :mod:`pdediff.models` ``darcy64``
  (UNet of 1.14 M parameters, 4,000 steps at batch 16 on 10,000 pairs, 2.4 h: trained much
  longer than the cascade here, on another machine: its "train s" is its card's; ``none``
  leaves it out).  With ``--direct-budget`` a
  direct model at the finest grid is also trained by this script with the
  super-resolution stages' UNet, batch and learning rate for ``--base-steps`` plus
  ``--sr-steps`` times the number of SR stages (the cascade's optimiser steps).

Every trained UNet has ``--channels`` / ``--channel-mult`` (one residual block per level).

**Rows.**  Each direct model, and the cascade sampled at each augmentation level ``s`` of
``--aug-levels`` (0 0.1 0.3; Ho et al. sample at a fixed ``s``: the low-resolution sample
is noised to ``s`` and the stage told ``s``, no blur; :func:`pdediff.cascade.cascade_solve`
warns for an ``s`` above ``--aug-noise-max``).  ``s = 0`` trusts the stage below fully.

**Generation** (unconditional; no guidance): ``--gen-samples`` joint samples ``(a, u)`` of
each row (``--steps`` Heun steps, both fields sampled, the same seed for every row), scored
by the relative log-spectrum error of the mean shell spectrum
(:func:`pdediff.metrics.energy_spectrum`) of ``a`` and of ``u`` against the mean spectrum
of the ``--ref-samples`` fields of the test set (:func:`pdediff.metrics.spectrum_distance`,
the formula of :func:`pdediff.metrics.spectrum_error` on mean spectra), and by the
relative PDE residual of the pairs (:func:`pdediff.metrics.residual_norm`: do the sampled
``u`` and ``a`` fit together?).  The samples are drawn by the same library calls as the
posterior rows (the observation weights set to 0, the reference solver off).

**Posterior** (the DiffusionPDE tasks): test sample ``i`` (the first ``--test-samples`` of
the test set, generated at the finest grid with its own seed) is observed at ``--points``
random nodes per field, drawn by :func:`pdediff.solve.evaluate.draw_observations` with the
seeds ``(--seed, i)``, so every row sees the same sensors; the sensors are physical
positions, so one set guides every stage of a cascade (:func:`~pdediff.cascade.cascade_solve`,
as ``pdediff solve-cascade``; a direct model by :func:`pdediff.solve.solve`).  Inverse:
observe ``u``, infer ``a``; forward: observe ``a``, infer ``u``.  ``pdediff`` preset at every
stage (``--steps`` Heun steps, ``u`` by the reference solver of the sampled ``a``, the
observation misfit as step correction; the inverse task with data consistency,
``--inverse-consistency-steps`` 40 Adam steps of ``--inverse-consistency-lr`` 0.05 on the
clean estimate after every step), with the observation weight of the task given to
every model and stage alike (``--inverse-weight`` 3000, ``--forward-weight`` 300: darcy64's
tuned guidance), ``--members`` members, sampling seed ``(--seed, i)``.  Scored by
:func:`~pdediff.solve.evaluate.score_field` (relative L2 and the error rate of ``a`` of the
ensemble mean, CRPS, coverage) and the relative log-spectrum error of each member against
the truth (:func:`pdediff.metrics.spectrum_error`, mean over members).  Time per sample is
the wall time of one ensemble (all members in one batch), stages together.

Everything lands in ``--work`` (data, checkpoints, one JSON per generation row and per
task); the summary ``--out`` is rewritten after every part.  ``--resume`` reuses what was
made with the same settings (a part records the weights' hashes of its models, so a
retrained model invalidates what depends on it); ``--overwrite`` redoes it all.

    python benchmarks/cascade_table.py --work /work/runs/cascade --threads 2 \
        --out benchmarks/results/cascade_darcy64.json

With the defaults (tiny UNets of 16 channels, 1,500 steps per stage, 4 test samples, 4
members, 16 steps) this takes about 25 minutes on 2 CPU threads, nine tenths of it
training; every size is an option.
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

from pdediff.adapters import base_model_hash, count_parameters
from pdediff.cascade import cascade_solve
from pdediff.errors import PdediffError
from pdediff.generate import generate
from pdediff.io import open_fields, write_fields
from pdediff.io.conventions import SAMPLE_DIM, dataset_params, grid_from_dataset
from pdediff.io.store import atomic_path
from pdediff.metrics import energy_spectrum, residual_norm, spectrum_distance, spectrum_error
from pdediff.models import shipped_model
from pdediff.pde.base import Grid
from pdediff.pde.registry import get_family
from pdediff.solve import solve
from pdediff.solve.evaluate import draw_observations, sample_seeds, score_field
from pdediff.train import TrainConfig, read_checkpoint, train

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_run_options, check_work, command_line, save, unet_config  # noqa: E402
from solver_table import fmt, markdown  # noqa: E402

FAMILY = "darcy"
FIELDS = ("a", "u")
TASKS = ("inverse", "forward")
#: The field each task infers.
TARGET = {"inverse": "a", "forward": "u"}
#: Offsets of the data seeds from --seed: every training grid shares one (the same recipe).
DATA_SEEDS = {"train": 0, "test": 1}
#: What identifies a row in the settings of a part (its models by their weights' hashes).
ROW_KEYS = ("label", "kind", "aug_level", "stages", "hashes")
#: Config entries a resumed training run may change (:func:`pdediff.train.train`).
RESUMABLE = ("steps", "log_every", "checkpoint_every")
#: Scores of a posterior row summarised over the test samples.
SCORED = ("rel_l2_mean", "error_rate_mean", "spectrum_member", "crps", "coverage90", "seconds")


def _normal(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


# ---------------------------------------------------------------------------------- data


def data_recipes(args: argparse.Namespace) -> dict[str, dict]:
    """``name -> {n, resolution, seed}``: a training set per grid and the test set."""
    recipes = {
        f"train{n}": {
            "n": args.train_samples,
            "resolution": n,
            "seed": args.seed + DATA_SEEDS["train"],
        }
        for n in args.grids
    }
    recipes["test"] = {
        "n": max(args.ref_samples, args.test_samples),
        "resolution": args.grids[-1],
        "seed": args.seed + DATA_SEEDS["test"],
    }
    return recipes


def make_data(args: argparse.Namespace, work: Path) -> dict[str, str]:
    """Generate (or, with ``--resume``, reuse) the data sets; returns ``name -> path``."""
    folder = work / "data"
    folder.mkdir(parents=True, exist_ok=True)
    recipes = data_recipes(args)
    record = folder / "recipes.json"
    paths = {name: folder / f"{name}.nc" for name in recipes}
    if args.resume and record.is_file() and all(p.is_file() for p in paths.values()):
        if json.loads(record.read_text()) != _normal(recipes):
            raise SystemExit(
                f"{record}: the data settings differ from this run's; use another --work "
                "or --overwrite"
            )
        return {k: str(v) for k, v in paths.items()}
    for name, r in recipes.items():
        print(f"generating {name} ({r['n']} samples at {r['resolution']})", flush=True)
        ds = generate(FAMILY, r["n"], r["resolution"], seed=r["seed"], progress=False)
        write_fields(ds, paths[name], overwrite=True)
    record.write_text(json.dumps(recipes, indent=1) + "\n")
    return {k: str(v) for k, v in paths.items()}


# -------------------------------------------------------------------------------- models


def stage_config(
    args: argparse.Namespace, steps: int, cascade: Mapping | None = None
) -> TrainConfig:
    """The training config of a stage (``cascade``: the ``[cascade]`` of an SR stage)."""
    config = unet_config(args, steps)
    if cascade is not None:
        config["cascade"] = dict(cascade)
    return TrainConfig.from_dict(config)


def sr_cascade(args: argparse.Namespace, low: int, high: int) -> dict[str, Any]:
    return {
        "stage": "sr",
        "from_shape": [low, low],
        "to_shape": [high, high],
        "aug_noise_max": args.aug_noise_max,
        "aug_blur": args.aug_blur,
    }


def _stored(path: Path) -> tuple[dict | None, int]:
    """The config and step of the checkpoint at ``path`` (``None, 0`` without one)."""
    if not (path / "state.json").is_file():
        return None, 0
    ckpt = read_checkpoint(path)
    return ckpt.config.to_dict(), ckpt.step


def _same_run(stored: Mapping | None, want: Mapping) -> bool:
    """Whether a checkpoint of config ``stored`` can be trained on to ``want``."""
    if stored is None:
        return False
    keys = (set(stored) | set(want)) - set(RESUMABLE)
    return all(stored.get(k) == want.get(k) for k in keys)


def train_stage(name: str, data: str, config: TrainConfig, args: argparse.Namespace) -> dict:
    """Train (or reuse, or continue, with ``--resume``) the model ``WORK/models/NAME``."""
    path = Path(args.work) / "models" / name
    stored, step = _stored(path) if args.resume else (None, 0)
    want = config.to_dict()
    if stored == want and step >= config.steps:
        return model_record(path, "reused")
    more = _same_run(stored, want) and step < config.steps  # the same run, more steps
    print(f"training {name} ({config.steps} steps)", flush=True)
    try:
        train(
            data,
            path,
            config,
            resume=more,
            overwrite=not more,
            device=args.device,
            progress=args.progress,
            command=command_line(),
        )
    except PdediffError as e:
        raise SystemExit(f"{name}: {e}") from None
    return model_record(path, "ran")


def model_record(path: str | Path, status: str) -> dict[str, Any]:
    """Path, grid, step, training time, loss, parameters and weights' hash of a model."""
    ckpt = read_checkpoint(path)
    denoiser = ckpt.denoiser()
    return {
        "path": str(path),
        "status": status,
        "grid": list(ckpt.fieldspec.shape),
        "stage": ckpt.config.cascade.stage,
        "cascade": _normal(vars(ckpt.config.cascade)),
        "step": ckpt.step,
        "seconds": ckpt.state.get("elapsed"),
        "loss": ckpt.state.get("loss"),
        "parameters": count_parameters(denoiser),
        "hash": base_model_hash(denoiser),
    }


def direct_path(args: argparse.Namespace) -> str | None:
    """``--direct-model`` as a path (``darcy64`` by default; ``None`` for ``none``)."""
    if args.direct_model.lower() == "none":
        return None
    if args.direct_model == "darcy64":
        return str(shipped_model("darcy64"))
    return args.direct_model


def check_direct(args: argparse.Namespace) -> str | None:
    """The direct model's path; it must model Darcy's ``(a, u)`` on the finest grid."""
    grid = args.grids[-1]
    try:
        path = direct_path(args)
        if path is None:
            return None
        spec = read_checkpoint(path).fieldspec
    except PdediffError as e:
        raise SystemExit(f"--direct-model {args.direct_model}: {e}") from None
    if list(spec.shape) != [grid, grid] or tuple(spec.variables) != FIELDS:
        raise SystemExit(
            f"--direct-model {path} models {list(spec.variables)} on {list(spec.shape)}; the "
            f"table needs {list(FIELDS)} on the cascade's finest grid [{grid}, {grid}] "
            "(give another --direct-model, or none)"
        )
    if spec.attrs.get("pde") != FAMILY:
        raise SystemExit(f"--direct-model {path} is not a {FAMILY} model")
    return path


def make_models(args: argparse.Namespace, data: Mapping[str, str]) -> dict[str, Any]:
    """The base model, the SR stages and the direct models' records."""
    grids = args.grids
    models: dict[str, Any] = {}
    models["base"] = train_stage(
        f"base{grids[0]}", data[f"train{grids[0]}"], stage_config(args, args.base_steps), args
    )
    models["sr"] = []
    for low, high in zip(grids[:-1], grids[1:], strict=True):
        config = stage_config(args, args.sr_steps, sr_cascade(args, low, high))
        models["sr"].append(train_stage(f"sr{low}to{high}", data[f"train{high}"], config, args))
    direct = check_direct(args)
    models["direct"] = model_record(direct, "given") if direct else None
    models["direct_budget"] = None
    if args.direct_budget:
        steps = args.base_steps + args.sr_steps * (len(grids) - 1)
        name = f"direct{grids[-1]}"
        models["direct_budget"] = train_stage(
            name, data[f"train{grids[-1]}"], stage_config(args, steps), args
        )
    return models


def _row(label: str, kind: str, aug_level: float | None, records: Sequence[Mapping]) -> dict:
    """A row of the table: the models it samples through (their records) and its level."""
    seconds = [r["seconds"] for r in records]
    return {
        "label": label,
        "kind": kind,
        "aug_level": aug_level,
        "stages": [r["path"] for r in records],
        "hashes": [r["hash"] for r in records],
        "parameters": sum(r["parameters"] for r in records),
        "train_seconds": None if None in seconds else sum(seconds),
    }


def table_rows(args: argparse.Namespace, models: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The direct models, then the cascade at each augmentation level."""
    rows = []
    if models["direct"] is not None:
        label = f"direct ({Path(models['direct']['path']).name})"
        rows.append(_row(label, "direct", None, [models["direct"]]))
    if models["direct_budget"] is not None:
        rows.append(_row("direct (cascade's budget)", "direct", None, [models["direct_budget"]]))
    stages = [models["base"], *models["sr"]]
    name = "cascade " + "→".join(map(str, args.grids))
    rows += [_row(f"{name}, s = {s:g}", "cascade", s, stages) for s in args.aug_levels]
    return rows


# -------------------------------------------------------------------------------- sampling


def sample_row(row: Mapping, obs, task: str, members: int, seed: int, protocol: Mapping):
    """The ensemble of one row: :func:`~pdediff.solve.solve` of a direct model, or
    :func:`~pdediff.cascade.cascade_solve` through the stages (guided at each)."""
    kwargs = dict(task=task, members=members, seed=seed, preset="pdediff", progress=False)
    if row["kind"] == "direct":
        return solve(row["stages"][0], obs, protocol=protocol, **kwargs)
    # cascade_solve takes the steps from its own argument (a protocol's would be ignored)
    rest = {k: v for k, v in protocol.items() if k != "steps"}
    level = row["aug_level"]
    return cascade_solve(
        row["stages"], obs, steps=protocol["steps"], aug_level=level, protocol=rest, **kwargs
    )


def stage_times(post: xr.Dataset) -> list[float] | None:
    """Wall time of each stage of a cascade's ensemble (``None`` for a direct model)."""
    records = stage_records(post)
    return None if records is None else [r["run_time_s"] for r in records]


def stage_records(post: xr.Dataset) -> list[dict[str, Any]] | None:
    """Grid, augmentation level, sampler steps and wall time of each stage of a cascade's
    ensemble (``None`` for a direct model)."""
    if "stages" not in post.attrs:
        return None
    keep = ("grid", "aug_level", "run_time_s")
    records = json.loads(post.attrs["stages"])
    return [{**{k: r[k] for k in keep}, "steps": r["protocol"]["steps"]} for r in records]


def _members(post: xr.Dataset, name: str, dims: Sequence[str]) -> np.ndarray:
    return post[name].transpose("member", *dims).values.astype(np.float64)


def _previous(path: Path, meta: Mapping, resume: bool) -> dict | None:
    """With ``resume``, the document at ``path`` if it was made with ``meta`` (complete
    or not: see its ``complete``)."""
    if not (resume and path.is_file()):
        return None
    doc = json.loads(path.read_text())
    return doc if doc.get("meta") == _normal(meta) else None


def _write(path: Path, doc: Mapping) -> None:
    """``doc`` as JSON at ``path``, atomically (a killed run leaves the last one whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(_normal(doc), indent=1) + "\n")


# ------------------------------------------------------------------------------ generation


def mean_spectrum(fields: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Shell wavenumbers and the mean shell spectrum of ``fields`` ``(N, ny, nx)``."""
    k, e = energy_spectrum(fields, grid)
    return k, e.mean(axis=0)


def reference_spectra(test: xr.Dataset, grid: Grid, n: int) -> dict[str, list[float]]:
    """``field -> mean spectrum`` of the first ``n`` test fields, and ``k``."""
    out = {}
    for name in FIELDS:
        values = test[name].isel({SAMPLE_DIM: slice(0, n)}).values.astype(np.float64)
        out["k"], out[name] = mean_spectrum(values, grid)
    return {k: v.tolist() for k, v in out.items()}


def gen_scores(post: xr.Dataset, test: xr.Dataset, ref: Mapping, grid: Grid) -> dict:
    """Spectrum distances of ``a`` and ``u`` and the PDE residual of the samples."""
    fields = {name: _members(post, name, grid.dims) for name in FIELDS}
    out: dict[str, Any] = {"spectra": {}}
    for name, values in fields.items():
        _, e = mean_spectrum(values, grid)
        out["spectra"][name] = e.tolist()
        k_max = min(grid.shape) // 2
        out[f"spectrum_{name}"] = float(spectrum_distance(e, ref[name], k_max))
    params = get_family(FAMILY).params(dataset_params(test))
    rel = residual_norm(get_family(FAMILY), fields, grid, params).relative
    out["residual"] = {"mean": float(rel.mean()), "std": float(rel.std()), "n": int(rel.size)}
    return out


def data_floor(data: str, test: xr.Dataset, ref: Mapping, grid: Grid, n: int) -> dict[str, Any]:
    """The generation scores of the first ``n`` training pairs at the finest grid: what a
    perfect sampler of ``n`` samples would get (the spread of the spectrum estimate)."""
    fields = open_fields(data).isel({SAMPLE_DIM: slice(0, n)})
    scores = gen_scores(fields.rename({SAMPLE_DIM: "member"}), test, ref, grid)
    return {"n": int(fields.sizes[SAMPLE_DIM]), "data": data, **scores}


def run_generation(
    row: Mapping, args: argparse.Namespace, test: xr.Dataset, ref: Mapping, grid: Grid
) -> dict[str, Any]:
    """Unconditional samples of one row, scored; ``WORK/generation/LABEL.json``."""
    path = Path(args.work) / "generation" / f"{_slug(row['label'])}.json"
    protocol = {"steps": args.steps, "default_obs_weight": 0.0, "solver": False}
    meta = {
        "row": {k: row[k] for k in ROW_KEYS},
        "samples": args.gen_samples,
        "protocol": protocol,
        "seed": args.seed,
        "reference": {"data": args.data_test, "n": args.ref_samples},
    }
    doc = _previous(path, meta, args.resume)
    if doc is not None and doc.get("complete"):
        return {**doc["result"], "status": "reused", "table": str(path)}
    print(f"generation: {row['label']}", flush=True)
    # a sample's sensors, given weight 0: solve and cascade_solve need observations
    spec = read_checkpoint(row["stages"][-1]).fieldspec
    obs = draw_observations(test, spec, "joint", 0, points=1)
    t0 = time.perf_counter()
    post = sample_row(row, obs, "joint", args.gen_samples, args.seed, protocol)
    seconds = time.perf_counter() - t0
    result = gen_scores(post, test, ref, grid)
    result.update(seconds_per_sample=seconds / args.gen_samples, stages=stage_records(post))
    _write(path, {"meta": meta, "complete": True, "result": result})
    return {**result, "status": "ran", "table": str(path)}


def _slug(label: str) -> str:
    keep = (c if c.isalnum() or c in ".-" else "_" for c in label.replace("→", "-"))
    return "".join(keep).strip("_")


# ------------------------------------------------------------------------------- posterior


def posterior_rows(
    row: Mapping, post: xr.Dataset, truth: xr.Dataset, grid: Grid, index: int, levels
) -> list[dict[str, Any]]:
    """Scores of both fields of one row's ensemble for one test sample."""
    out = []
    for name in FIELDS:
        ens = _members(post, name, grid.dims)
        y = np.asarray(truth[name].values, np.float64)
        scores = score_field(ens, y, ensemble=True, levels=levels.get(name))
        spec = spectrum_error(ens, np.broadcast_to(y, ens.shape), grid)
        scores.update(
            row=row["label"],
            sample=index,
            field=name,
            spectrum_member=float(spec.mean()),
            seconds=float(post.attrs["run_time_s"]),
            stage_seconds=stage_times(post),
            error="",
        )
        out.append(scores)
    return out


def _failed(row: Mapping, index: int, error: str) -> list[dict[str, Any]]:
    return [{"row": row["label"], "sample": index, "field": f, "error": error} for f in FIELDS]


def summarise(rows: Sequence[Mapping]) -> dict[str, dict[str, dict[str, Any]]]:
    """``row -> field -> metric -> {mean, std, n}`` over the samples, and ``failed``."""
    groups: dict[tuple[str, str], list[Mapping]] = {}
    for r in rows:
        groups.setdefault((r["row"], r["field"]), []).append(r)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (label, name), group in groups.items():
        entry: dict[str, Any] = {"failed": sum(bool(r["error"]) for r in group)}
        for metric in SCORED:
            values = np.array([r.get(metric) for r in group if r.get(metric) is not None])
            values = values[np.isfinite(values)] if values.size else values
            if values.size:
                entry[metric] = {
                    "mean": float(values.mean()),
                    "std": float(values.std()),
                    "n": int(values.size),
                }
        out.setdefault(label, {})[name] = entry
    return out


def run_posterior(
    task: str, rows: Sequence[Mapping], args: argparse.Namespace, test: xr.Dataset, grid: Grid
) -> dict[str, Any]:
    """Every row on the first ``--test-samples`` test samples, the same sensors and seeds;
    ``WORK/posterior/TASK.json``, written after each sample (a resumed run goes on after
    the samples done)."""
    path = Path(args.work) / "posterior" / f"{task}.json"
    weight = args.inverse_weight if task == "inverse" else args.forward_weight
    protocol = {"steps": args.steps, "default_obs_weight": weight}
    if task == "inverse" and args.inverse_consistency_steps:
        protocol["consistency_steps"] = args.inverse_consistency_steps
        protocol["consistency_lr"] = args.inverse_consistency_lr
    meta = {
        "task": task,
        "rows": [{k: r[k] for k in ROW_KEYS} for r in rows],
        "samples": args.test_samples,
        "points": args.points,
        "members": args.members,
        "protocol": protocol,
        "preset": "pdediff",
        "seed": args.seed,
        "data": args.data_test,
    }
    doc = _previous(path, meta, args.resume) or {"rows": [], "samples_done": 0}
    if doc.get("complete"):
        return {"table": str(path), "status": "reused", "summary": doc["summary"]}
    spec = read_checkpoint(rows[0]["stages"][-1]).fieldspec
    params = get_family(FAMILY).params(dataset_params(test))
    levels = {"a": (params["a_low"], params["a_high"])}
    scored: list[dict[str, Any]] = doc["rows"]
    status = "continued" if doc["samples_done"] else "ran"
    for i in range(doc["samples_done"], args.test_samples):
        print(f"{task}: test sample {i + 1}/{args.test_samples}", flush=True)
        obs = draw_observations(test, spec, task, i, args.seed, points=args.points)
        truth = test.isel({SAMPLE_DIM: i})
        seed = sample_seeds(args.seed, i)[1]
        for row in rows:
            try:
                post = sample_row(row, obs, task, args.members, seed, protocol)
            except FloatingPointError as e:
                scored += _failed(row, i, f"FloatingPointError: {e}")
                continue
            except PdediffError as e:
                raise SystemExit(f"{task}, {row['label']}: {e}") from None
            scored += posterior_rows(row, post, truth, grid, i, levels)
        summary = summarise(scored)
        done = {"samples_done": i + 1, "complete": i + 1 == args.test_samples}
        _write(path, {"meta": meta, **done, "summary": summary, "rows": scored})
    return {"table": str(path), "status": status, "summary": summarise(scored)}


# ---------------------------------------------------------------------------------- tables


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _stages(row: Mapping, models: Mapping) -> str:
    if row["kind"] == "direct":
        return f"{models['grids'][-1]}"
    return "→".join(map(str, models["grids"]))


def generation_markdown(rows: Sequence[Mapping], models: Mapping, floor: Mapping) -> str:
    """Unconditional samples: log-spectrum errors against the test set, residual, time;
    first the scores of as many true fields (``floor``)."""
    header = ["model", "grids", "params", "train s", "a spectrum err", "u spectrum err"]
    header += ["PDE residual (rel.)", "s/sample"]
    lines = [
        [
            f"data ({floor['n']} training fields)",
            str(models["grids"][-1]),
            "-",
            "-",
            fmt({"mean": floor["spectrum_a"]}),
            fmt({"mean": floor["spectrum_u"]}),
            fmt(floor["residual"]),
            "-",
        ]
    ]
    for row in rows:
        g = row.get("generation") or {}
        lines.append(
            [
                row["label"],
                _stages(row, models),
                f"{row['parameters']:,}",
                _seconds(row["train_seconds"]),
                fmt({"mean": g.get("spectrum_a")}),
                fmt({"mean": g.get("spectrum_u")}),
                fmt(g.get("residual")),
                fmt({"mean": g.get("seconds_per_sample")}, digits=2),
            ]
        )
    return markdown(header, lines)


def _target(posterior: Mapping, task: str, label: str) -> Mapping:
    """The summary of the field ``task`` infers, for the row ``label`` (``{}`` if none)."""
    summary = posterior.get(task, {}).get("summary", {})
    return summary.get(label, {}).get(TARGET[task], {})


def posterior_markdown(rows: Sequence[Mapping], posterior: Mapping) -> str:
    """The inferred field of each task: errors in % (± standard error), spectrum error."""
    header = ["model", "inv a err rate %", "inv a rel L2 %", "inv a spectrum err"]
    header += ["fwd u rel L2 %", "fwd u spectrum err", "s/sample inv / fwd", "failed inv / fwd"]
    lines = []
    for row in rows:
        inv, fwd = (_target(posterior, t, row["label"]) for t in TASKS)
        lines.append(
            [
                row["label"],
                fmt(inv.get("error_rate_mean"), 100, sem=True),
                fmt(inv.get("rel_l2_mean"), 100, sem=True),
                fmt(inv.get("spectrum_member"), sem=True),
                fmt(fwd.get("rel_l2_mean"), 100, sem=True),
                fmt(fwd.get("spectrum_member"), sem=True),
                f"{fmt(inv.get('seconds'), digits=2)} / {fmt(fwd.get('seconds'), digits=2)}",
                f"{inv.get('failed', '-')} / {fwd.get('failed', '-')}",
            ]
        )
    return markdown(header, lines)


# ------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--work", required=True, help="folder of every intermediate artifact")
    a("--out", required=True, help="summary JSON")
    a("--grids", nargs="+", type=int, default=[32, 64], help="cascade grids, coarsest first")
    a("--train-samples", type=int, default=2000, help="training pairs per grid")
    a("--test-samples", type=int, default=4, help="test samples of the posterior tasks")
    a("--ref-samples", type=int, default=256, help="test fields of the reference spectrum")
    a("--channels", type=int, default=16, help="UNet model_channels of every trained model")
    a("--channel-mult", nargs="+", type=int, default=[1, 2, 2], help="UNet channel_mult")
    a("--batch", type=int, default=16, help="training batch of every trained model")
    a("--lr", type=float, default=1e-3, help="learning rate of every trained model")
    a("--base-steps", type=int, default=1500, help="training steps of the base model")
    a("--sr-steps", type=int, default=1500, help="training steps of each SR stage")
    a("--aug-noise-max", type=float, default=0.3, help="SR training: s ~ U[0, MAX]")
    a("--aug-blur", type=float, default=0.5, help="SR training: blur ~ U[0, B] grid steps")
    a("--aug-levels", nargs="+", type=float, default=[0.0, 0.1, 0.3], help="sampling s")
    a(
        "--direct-model",
        default="darcy64",
        help="the no-cascade model on the finest grid: a checkpoint, darcy64 (shipped) or none",
    )
    a(
        "--direct-budget",
        action="store_true",
        help="also train a direct model with the cascade's UNet and optimiser steps",
    )
    a("--gen-samples", type=int, default=32, help="unconditional samples per row")
    a("--members", type=int, default=4, help="ensemble size of the posterior tasks")
    a("--steps", type=int, default=16, help="Heun steps of every stage")
    a("--points", type=int, default=500, help="sensors per observed field")
    a("--inverse-weight", type=float, default=3000.0, help="observation weight, inverse task")
    a("--forward-weight", type=float, default=300.0, help="observation weight, forward task")
    a(
        "--inverse-consistency-steps",
        type=int,
        default=40,
        help="inverse task: data-consistency Adam steps per sampler step (0: step correction)",
    )
    a("--inverse-consistency-lr", type=float, default=0.05, help="their learning rate")
    a("--seed", type=int, default=0, help="seed of data (offset per set), training, sampling")
    add_run_options(p)
    return p


def _check_args(args: argparse.Namespace, work: Path) -> None:
    check_work(args, work)
    grids = args.grids
    if len(grids) < 2 or any(lo >= hi for lo, hi in zip(grids[:-1], grids[1:], strict=True)):
        raise SystemExit(f"--grids needs two or more increasing sizes, got {grids}")
    if any(s < 0 for s in args.aug_levels) or len(set(args.aug_levels)) < len(args.aug_levels):
        raise SystemExit(f"--aug-levels must be distinct and >= 0, got {args.aug_levels}")
    small = {"--test-samples": args.test_samples, "--gen-samples": args.gen_samples}
    small.update({"--members": args.members, "--ref-samples": args.ref_samples})
    for flag, value in small.items():
        if value < 1:
            raise SystemExit(f"{flag} must be >= 1, got {value}")


def main(argv: list[str] | None = None) -> dict:
    t0 = time.perf_counter()
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work, out = Path(args.work), Path(args.out)
    _check_args(args, work)
    check_direct(args)  # before any work
    work.mkdir(parents=True, exist_ok=True)
    data = make_data(args, work)
    args.data_test = data["test"]
    result: dict[str, Any] = {
        "note": "cascaded super-resolution (Ho et al. 2021) against a direct model on the "
        "finest grid: unconditional sample quality (log-spectrum error against the test "
        "set) and guided posteriors (every stage guided by the same sensors); errors of "
        "the ensemble mean, spectrum errors of the members",
        "settings": {k: v for k, v in vars(args).items() if k not in ("progress", "data_test")},
        "data": data,
        "threads": torch.get_num_threads(),
    }
    models = {**make_models(args, data), "grids": args.grids}
    rows = table_rows(args, models)
    result.update(models=models, rows=rows)
    save(result, out)
    test = open_fields(data["test"])
    grid = grid_from_dataset(test)
    ref = reference_spectra(test, grid, args.ref_samples)
    result["reference_spectra"] = ref
    train = data[f"train{args.grids[-1]}"]
    result["generation_floor"] = data_floor(train, test, ref, grid, args.gen_samples)
    for row in rows:
        row["generation"] = run_generation(row, args, test, ref, grid)
        save(result, out)
    result["posterior"] = {}
    for task in TASKS:
        result["posterior"][task] = run_posterior(task, rows, args, test, grid)
        save(result, out)
    result["markdown"] = {
        "generation": generation_markdown(rows, models, result["generation_floor"]),
        "posterior": posterior_markdown(rows, result["posterior"]),
    }
    result["seconds"] = time.perf_counter() - t0
    save(result, out)
    print(f"\ngeneration ({args.gen_samples} unguided samples per row, {args.steps} steps)")
    print(result["markdown"]["generation"])
    print(f"\nposterior ({args.points} sensors, {args.members} members, {args.steps} steps)")
    print(result["markdown"]["posterior"])
    return result


if __name__ == "__main__":
    main()
