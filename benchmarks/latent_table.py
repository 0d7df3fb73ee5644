"""The latent diffusion table of issue 6: latent against pixel-space models on Darcy flow.

**Numbers from briefly trained models.**  The defaults fit about 40 CPU minutes at two
threads: every network is tiny and trained for a few hundred to a couple of thousand steps,
and the errors are those of such models on 4 test samples, not of converged ones.  Every
size is an option.

For each resolution ``R`` of ``--resolutions`` (64 128) Darcy flow ``-div(a grad u) = f``
with the family's default parameters is generated (:func:`pdediff.generate.generate`):
``--train-samples`` training and ``--test-samples`` test samples (seeds ``--seed`` and
``--seed + 1``).  Then:

* **Autoencoders.**  For each factor ``f`` of ``--factors`` (4 8) a field VAE of ``(a, u)``
  (:func:`pdediff.latent.train_autoencoder`, what ``pdediff train-autoencoder`` runs: KL
  weight ``--kl-weight`` 1e-6, ``--latent-channels`` 4, width ``--vae-channels``,
  ``--vae-steps`` AdamW steps) on the ``R/f x R/f`` latent grid.  On the test samples:
  the relative L2 error of the reconstructed ``a`` and ``u``, the error rate of ``a``
  (thresholded at the midpoint of ``a_low``/``a_high``, as DiffusionPDE) and the mean
  relative PDE residual (:func:`pdediff.metrics.residual_norm`) of the reconstructed
  ``(a, u)`` beside that of the originals.
* **Diffusion models.**  A latent model per VAE, trained with :func:`pdediff.train.train` on
  the posterior means of the training samples (:func:`pdediff.latent.encode_dataset`, what
  ``pdediff encode`` writes), and a pixel-space model on the fields; both are the same UNet
  (``--channels``, ``--channel-mult``, one block per level), so their parameter counts
  differ only by the input and output convolutions (4 latent channels against 2 fields).
  Latent models train ``--latent-steps``, pixel models ``--pixel-steps`` (a pixel step
  costs much more).  With ``--shipped-pixel64`` the 64 x 64 pixel model is the shipped
  ``pdediff/models/darcy64`` instead (32 channels, 1.1 M parameters, 4,000 steps: larger
  and far longer trained than the others, so that row is no like-for-like comparison);
  a 128 x 128 pixel model is always trained here.
* **Posterior.**  The inverse task (observe ``u``, infer ``a``) and the forward task
  (observe ``a``, infer ``u``) from ``--points`` (500) random sensors per observed field,
  for every model on the same test samples and sensors (seeds ``(--seed, i)``:
  :func:`~pdediff.solve.evaluate.draw_observations`, :func:`~pdediff.solve.evaluate.sample_seeds`),
  ``--members`` members and ``--steps`` Heun steps on the same Karras schedule.  Latent
  models sample with :func:`pdediff.latent.latent_solve` (guidance on the decoded fields,
  observation weight ``--latent-obs-weight``, default the library's 10); pixel models with
  :func:`pdediff.solve.solve`, preset ``--pixel-preset``: ``joint`` (default) samples
  ``a`` and ``u`` as the latent model does (observation weight ``--pixel-obs-weight``,
  default the preset's 1000); ``pdediff`` takes ``u`` from the reference solver of the
  sampled ``a`` (and the shipped model's tuned weights from its ``guidance.json``).
  ``--pde-weight`` (default 0: observations only) is the PDE residual weight of both.
  Scores (:func:`~pdediff.solve.evaluate.score_field`, the rows of ``evaluate``): relative
  L2 and error rate of the ensemble mean, CRPS, coverage, and the relative PDE residual of
  the ensemble mean.  The wall time of a solve (``run_time_s``: sampling and, for latent
  models, decoding; no loading) is given per test sample (all members in one batch) and
  per member; it is only comparable between rows of one run on one machine.

Everything lands in ``--work`` (data, autoencoders, latents, checkpoints, one evaluation
table per model and task, written after every test sample); the summary ``--out`` is
rewritten after every part.  ``--resume`` reuses what was made with the same settings (a
retrained upstream part invalidates what depends on it); ``--overwrite`` redoes it all.

    python benchmarks/latent_table.py --work /work/runs/latent --threads 2 \\
        --out benchmarks/results/latent_darcy.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from pdediff.adapters import base_model_hash, count_parameters
from pdediff.errors import PdediffError
from pdediff.generate import generate
from pdediff.io import open_fields, write_fields
from pdediff.io.conventions import SAMPLE_DIM, dataset_params
from pdediff.io.fieldspec import FieldSpec
from pdediff.latent import (
    Autoencoder,
    encode_dataset,
    evaluate_autoencoder,
    latent_solve,
    load_autoencoder,
    train_autoencoder,
)
from pdediff.latent.solve import DEFAULT_OBS_WEIGHT
from pdediff.latent.train import reconstruct
from pdediff.metrics import residual_norm, threshold_error_rate
from pdediff.models import shipped_model
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
from pdediff.train import TrainConfig, load_checkpoint, read_checkpoint, train

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_run_options, check_work, command_line, save, unet_config  # noqa: E402
from solver_table import fmt, markdown  # noqa: E402

FAMILY = "darcy"
TASKS = ("inverse", "forward")
#: (task, field, metric) of the posterior table: inverse a error rate and rel L2, forward u.
SHOWN = (
    ("inverse", "a", "error_rate_mean"),
    ("inverse", "a", "rel_l2_mean"),
    ("forward", "u", "rel_l2_mean"),
)
#: (task, inferred field) of each task.
TARGETS = (("inverse", "a"), ("forward", "u"))
SCORED = ("rel_l2_mean", "error_rate_mean", "residual", "crps", "coverage90", "seconds")
#: Offsets of the data seeds from --seed.
DATA_SEEDS = {"train": 0, "test": 1}
SHIPPED_PIXEL = "darcy64"


def _normal(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def _read_record(path: Path, settings: Mapping) -> dict | None:
    """The record at ``path`` if it was made with ``settings``, else ``None``."""
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("settings") == _normal(settings) else None


def _write_record(path: Path, record: Mapping) -> None:
    path.write_text(json.dumps(_normal(record), indent=1) + "\n")


# ---------------------------------------------------------------------------------- data


def make_data(args: argparse.Namespace, work: Path, res: int) -> dict[str, Any]:
    """Generate (or, with ``--resume``, reuse) the training and test sets at ``res``."""
    folder = work / "data" / f"r{res}"
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {"train": args.train_samples, "test": args.test_samples}
    recipe = {
        name: {"n": n, "resolution": res, "seed": args.seed + DATA_SEEDS[name]}
        for name, n in sizes.items()
    }
    paths = {name: folder / f"{name}.nc" for name in sizes}
    record_path = folder / "recipe.json"
    entry = {"train": str(paths["train"]), "test": str(paths["test"]), "recipe": recipe}
    if args.resume and all(p.is_file() for p in paths.values()):
        if _read_record(record_path, recipe) is not None:
            return {**entry, "status": "reused"}
    for name, r in recipe.items():
        print(f"generating {name} r{res} ({r['n']} samples)", flush=True)
        ds = generate(FAMILY, r["n"], res, seed=r["seed"], progress=False)
        write_fields(ds, paths[name], overwrite=True)
    _write_record(record_path, {"settings": recipe})
    return {**entry, "status": "ran"}


# ------------------------------------------------------------------------- autoencoders


def vae_settings(args: argparse.Namespace, factor: int, data: Mapping) -> dict[str, Any]:
    """Keyword arguments of :func:`~pdediff.latent.train_autoencoder` (and the data)."""
    return {
        "downsample": factor,
        "latent_channels": args.latent_channels,
        "kl_weight": args.kl_weight,
        "steps": args.vae_steps,
        "batch_size": args.vae_batch,
        "lr": args.vae_lr,
        "seed": args.seed,
        "base_channels": args.vae_channels,
        "data_recipe": data["recipe"]["train"],
    }


def reconstruction_scores(ae: Autoencoder, test: xr.Dataset) -> dict[str, Any]:
    """Rel. L2 per field and the PDE residuals (:func:`~pdediff.latent.evaluate_autoencoder`)
    of the test samples' reconstructions, and the error rate of the reconstructed ``a``."""
    scores = evaluate_autoencoder(ae, test)
    levels = _levels(test)
    x = ae.spec.to_tensor(test)
    i = ae.spec.variables.index("a")
    pred = ae.spec.denormalise(reconstruct(ae, x).double())[:, i].numpy()
    truth = np.asarray(test["a"].transpose(SAMPLE_DIM, *ae.spec.dims).values, np.float64)
    scores["error_rate_a"] = float(threshold_error_rate(pred, truth, levels=levels["a"]).mean())
    return scores


def train_vae(args: argparse.Namespace, work: Path, res: int, factor: int, data: Mapping) -> dict:
    """Train (or reuse) the ×``factor`` autoencoder at ``res``; its reconstructions of the
    test set are scored on every run (a few samples: cheap)."""
    out = work / "vae" / f"r{res}_x{factor}"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = vae_settings(args, factor, data)
    record_path = out.with_suffix(".record.json")
    record = _read_record(record_path, settings) if args.resume else None
    if record is not None and (out / "config.json").is_file():
        ae = load_autoencoder(out)
        if ae.digest() == record["digest"]:
            test = reconstruction_scores(ae, open_fields(data["test"]))
            return {**record, "status": "reused", "test": test}
    print(f"training the x{factor} autoencoder at r{res} ({args.vae_steps} steps)", flush=True)
    kwargs = {k: v for k, v in settings.items() if k != "data_recipe"}
    try:
        result = train_autoencoder(
            data["train"],
            out,
            **kwargs,
            save_every=None,
            overwrite=True,
            device=args.device,
            progress=args.progress,
            command=command_line(),
        )
    except PdediffError as e:
        raise SystemExit(f"autoencoder r{res} x{factor}: {e}") from None
    ae = result.autoencoder
    record = {
        "settings": settings,
        "path": str(out),
        "digest": ae.digest(),
        "latent_shape": list(ae.latent_shape),
        "parameters": count_parameters(ae.net),
        "decoder_parameters": count_parameters(ae.net.decoder),
        "seconds": result.seconds,
        "loss": result.loss,
        "scale_factor": result.scale_factor,
    }
    _write_record(record_path, record)
    test = reconstruction_scores(ae, open_fields(data["test"]))
    return {**record, "status": "ran", "test": test}


def encode_latents(vae: Mapping, data: Mapping, work: Path, label: str) -> str:
    """The latents of the training set (``pdediff encode``), rewritten unless they are
    those of this autoencoder already."""
    path = work / "latents" / f"{label}.nc"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and open_fields(path).attrs.get("autoencoder_digest") == vae["digest"]:
        return str(path)
    ae = load_autoencoder(vae["path"])
    write_fields(encode_dataset(ae, open_fields(data["train"])), path, overwrite=True)
    return str(path)


# ----------------------------------------------------------------------- diffusion models


def diffusion_config(args: argparse.Namespace, steps: int) -> TrainConfig:
    """The UNet and training settings shared by latent and pixel models."""
    return TrainConfig.from_dict(unet_config(args, steps))


def model_summary(path: str | Path) -> dict[str, Any]:
    """Parameter count and weight hash of the denoiser a solve loads (EMA weights)."""
    denoiser = load_checkpoint(path)[0]
    return {"parameters": count_parameters(denoiser), "hash": base_model_hash(denoiser)}


def train_diffusion(
    args: argparse.Namespace, data: str, out: Path, steps: int, upstream: Mapping
) -> dict[str, Any]:
    """Train (or reuse) a diffusion model on ``data``; ``upstream`` (data recipe or
    autoencoder digest) joins the settings, so a remade input retrains it."""
    config = diffusion_config(args, steps)
    settings = {"config": config.to_dict(), "data": data, **upstream}
    record_path = out.with_suffix(".record.json")
    record = _read_record(record_path, settings) if args.resume else None
    if record is not None and (out / "state.json").is_file():
        if model_summary(out)["hash"] == record["hash"]:
            return {**record, "status": "reused"}
    print(f"training {out.name} ({steps} steps)", flush=True)
    try:
        result = train(
            data,
            out,
            config,
            overwrite=True,
            device=args.device,
            progress=args.progress,
            command=command_line(),
        )
    except PdediffError as e:
        raise SystemExit(f"{out.name}: {e}") from None
    record = {
        "settings": settings,
        "path": str(out),
        "steps": result.step,
        "seconds": result.seconds,
        "loss": result.loss,
        **model_summary(out),
    }
    _write_record(record_path, record)
    return {**record, "status": "ran"}


def pixel_model(args: argparse.Namespace, work: Path, res: int, data: Mapping) -> dict:
    """The pixel-space model at ``res``: the shipped one (``--shipped-pixel64`` at 64) or
    one trained here."""
    if res == 64 and args.shipped_pixel64:
        path = shipped_model(SHIPPED_PIXEL)
        state = read_checkpoint(path).state
        return {
            "path": str(path),
            "status": "shipped",
            "steps": state.get("step"),
            "seconds": state.get("elapsed"),
            "loss": state.get("loss"),
            **model_summary(path),
        }
    out = work / "models" / f"r{res}_pixel"
    out.parent.mkdir(parents=True, exist_ok=True)
    upstream = {"data_recipe": data["recipe"]["train"]}
    return train_diffusion(args, data["train"], out, args.pixel_steps, upstream)


def latent_model(
    args: argparse.Namespace, work: Path, res: int, factor: int, vae: Mapping, data: Mapping
) -> dict[str, Any]:
    """The latent model on the ×``factor`` autoencoder's latents at ``res``."""
    label = f"r{res}_x{factor}"
    latents = encode_latents(vae, data, work, label)
    out = work / "models" / f"{label}_latent"
    out.parent.mkdir(parents=True, exist_ok=True)
    entry = train_diffusion(
        args, latents, out, args.latent_steps, {"autoencoder_digest": vae["digest"]}
    )
    return {
        **entry,
        "autoencoder": vae["path"],
        "autoencoder_digest": vae["digest"],
        "decoder_parameters": vae["decoder_parameters"],
    }


# ------------------------------------------------------------------------------ posterior


def _levels(ds: xr.Dataset) -> dict[str, tuple[float, float]]:
    params = get_family(FAMILY).params(dataset_params(ds))
    return {"a": (params["a_low"], params["a_high"])}


def pixel_protocol(args: argparse.Namespace) -> dict[str, Any]:
    """Protocol overrides of the pixel solves (``None``: the preset's or model's value)."""
    return {
        "steps": args.steps,
        "pde_weight": args.pde_weight,
        "default_obs_weight": args.pixel_obs_weight,
    }


def make_solver(
    entry: Mapping, task: str, args: argparse.Namespace
) -> tuple[FieldSpec, Callable[[Any, int], xr.Dataset], dict]:
    """The fields' spec, ``run(observations, seed) -> posterior Dataset`` and the resolved
    protocol of one model (latent or pixel) on ``task``."""
    if "autoencoder" in entry:
        ae = load_autoencoder(entry["autoencoder"])
        weight = DEFAULT_OBS_WEIGHT if args.latent_obs_weight is None else args.latent_obs_weight
        protocol = {"sampler": "heun", "steps": args.steps, "obs_weight": weight}
        protocol["pde_weight"] = args.pde_weight

        def run(obs, seed: int) -> xr.Dataset:
            return latent_solve(
                entry["path"],
                ae,
                obs,
                task=task,
                members=args.members,
                steps=args.steps,
                obs_weight=weight,
                pde_weight=args.pde_weight,
                seed=seed,
                progress=False,
            )

        return ae.spec, run, protocol

    overrides = pixel_protocol(args)
    resolved = resolve_protocol(entry["path"], args.pixel_preset, task, overrides)

    def run(obs, seed: int) -> xr.Dataset:
        return solve(
            entry["path"],
            obs,
            task=task,
            members=args.members,
            preset=args.pixel_preset,
            protocol=overrides,
            seed=seed,
            progress=False,
        )

    spec = read_checkpoint(entry["path"]).fieldspec
    return spec, run, {"preset": args.pixel_preset, **resolved.to_dict()}


def posterior_rows(
    label: str,
    post: xr.Dataset,
    truth: xr.Dataset,
    spec: FieldSpec,
    obs,
    seeds: tuple[int, int],
    i: int,
) -> list[dict[str, Any]]:
    """Rows of :data:`~pdediff.solve.evaluate.COLUMNS` (both fields) of one solve of test
    sample ``i``, with the relative PDE residual of the ensemble mean."""
    family = get_family(FAMILY)
    est = {
        f: post[f].transpose("member", *spec.dims).values.astype(np.float64) for f in family.fields
    }
    mean = {f: v.mean(axis=0)[None] for f, v in est.items()}
    params = dataset_params(truth)
    residual = float(residual_norm(family, mean, spec.grid(), params).relative[0])
    levels = _levels(truth)
    rows = []
    for name in family.fields:
        y = np.asarray(truth[name].transpose(*spec.dims).values, np.float64)
        row = dict.fromkeys(COLUMNS)
        row.update(score_field(est[name], y, ensemble=True, levels=levels.get(name)))
        row.update(
            method=label,
            sample=i,
            field=name,
            observed=name in obs.fields,
            n_obs=obs.fields[name].size if name in obs.fields else 0,
            obs_seed=seeds[0],
            members=est[name].shape[0],
            residual=residual,
            seconds=float(post.attrs["run_time_s"]),
            error="",
        )
        rows.append(row)
    return rows


def _failed(label: str, i: int, obs_seed: int, error: str) -> list[dict[str, Any]]:
    """The rows of a solve that blew up (scores ``None``, as in ``evaluate``)."""
    rows = []
    for name in get_family(FAMILY).fields:
        row = dict.fromkeys(COLUMNS)
        row.update(method=label, sample=i, field=name, obs_seed=obs_seed, error=error)
        rows.append(row)
    return rows


def solve_task(
    label: str, entry: Mapping, task: str, args: argparse.Namespace, test: str, folder: Path
) -> dict[str, Any]:
    """One model on one task for every test sample, written after each sample to
    ``FOLDER/LABEL_TASK.json`` (the evaluation table format); reused when complete and
    made with the same settings and weights."""
    path = folder / f"{label}_{task}.json"
    spec, run, protocol = make_solver(entry, task, args)
    meta = _normal(
        {
            "task": task,
            "model": entry["path"],
            "model_hash": entry["hash"],
            "autoencoder_digest": entry.get("autoencoder_digest"),
            "data": test,
            "seed": args.seed,
            "points": args.points,
            "members": args.members,
            "samples": args.test_samples,
            "protocol": protocol,
        }
    )
    if args.resume and path.is_file():
        doc = json.loads(path.read_text())
        if doc.get("complete") and all(doc.get(k) == v for k, v in meta.items()):
            return {"table": str(path), "status": "reused", "summary": doc["summary"]}
    ds = open_fields(test)
    result = Evaluation(meta={**meta, "samples_done": 0, "complete": False})
    for i in range(args.test_samples):
        obs = draw_observations(ds, spec, task, i, args.seed, points=args.points)
        seeds = sample_seeds(args.seed, i)
        truth = ds.isel({SAMPLE_DIM: i})
        try:
            post = run(obs, seeds[1])
            result.rows += posterior_rows(label, post, truth, spec, obs, seeds, i)
        except FloatingPointError as e:
            result.rows += _failed(label, i, seeds[0], f"FloatingPointError: {e}")
        except PdediffError as e:
            raise SystemExit(f"{label} {task}: {e}") from None
        result.meta.update(samples_done=i + 1, complete=i + 1 == args.test_samples)
        result.write(path, overwrite=True)
    return {"table": str(path), "status": "ran", "summary": result.summary()}


def posterior_scores(summary: Mapping, label: str, members: int) -> dict[str, Any]:
    """``field -> metric -> stat`` of one model, ``failed`` samples and
    ``seconds_per_member`` (a solve's seconds over the members of its one batch)."""
    fields = summary.get(label, {})
    out: dict[str, Any] = {f: {m: fields[f].get(m) for m in SCORED} for f in fields}
    out["failed"] = max((fields[f].get("failed", 0) for f in fields), default=0)
    seconds = fields.get("a", {}).get("seconds")  # one solve gives both fields
    out["seconds_per_member"] = None
    if seconds is not None:
        per = {k: seconds[k] / members for k in ("mean", "std")}
        out["seconds_per_member"] = {**per, "n": seconds["n"]}
    return out


# ------------------------------------------------------------------------------ tables


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.3g}"


def autoencoder_markdown(resolutions: Mapping[str, Mapping]) -> str:
    """Reconstruction of the test samples by every autoencoder."""
    header = ["grid", "factor", "latent grid", "VAE params", "train s", "a rel L2 %"]
    header += ["a err rate %", "u rel L2 %", "residual originals", "residual recon."]
    rows = []
    for res, part in resolutions.items():
        for factor, vae in part.get("autoencoders", {}).items():
            t = vae["test"]
            rows.append(
                [
                    f"{res}²",
                    factor,
                    "x".join(map(str, vae["latent_shape"])),
                    f"{vae['parameters']:,}",
                    f"{vae['seconds']:.3g}",
                    _pct(t["relative_l2"]["a"]),
                    _pct(t["error_rate_a"]),
                    _pct(t["relative_l2"]["u"]),
                    f"{t['residual'].get('original', float('nan')):.3g}",
                    f"{t['residual'].get('reconstructed', float('nan')):.3g}",
                ]
            )
    return markdown(header, rows)


def posterior_markdown(resolutions: Mapping[str, Mapping], members: int) -> str:
    """Errors in % (± standard error), residual of the mean, training and solve times."""
    header = ["grid", "model", "params (DM + decoder)", "train s (VAE + DM)"]
    header += ["inv a err rate %", "inv a rel L2 %", "fwd u rel L2 %", "residual inv / fwd"]
    header += [f"s/solve ({members} members) inv / fwd", "s/member inv / fwd"]
    rows = []
    for res, part in resolutions.items():
        for label, model in part.get("models", {}).items():
            done = part["posterior"].get(label, {})
            scores = {t: done.get(t, {}).get("scores", {}) for t in TASKS}

            def pair(metric: str, digits: int = 3, scores=scores) -> str:
                return " / ".join(
                    fmt(scores[t].get(f, {}).get(metric), digits=digits) for t, f in TARGETS
                )

            per_member = [fmt(scores[t].get("seconds_per_member"), digits=2) for t, _ in TARGETS]
            rows.append(
                [f"{res}²", label, _params(model), _train_s(model, part)]
                + [fmt(scores[t].get(f, {}).get(m), 100, sem=True) for t, f, m in SHOWN]
                + [pair("residual"), pair("seconds", 2), " / ".join(per_member)]
            )
    return markdown(header, rows)


def _params(model: Mapping) -> str:
    """The diffusion model's parameters; a latent model's with its decoder's."""
    text = f"{model['parameters']:,}"
    if model.get("decoder_parameters") is not None:
        text += f" + {model['decoder_parameters']:,}"
    return text


def _train_s(model: Mapping, part: Mapping) -> str:
    """Training seconds; a latent model's with its autoencoder's (``VAE + DM``)."""
    if model.get("seconds") is None:
        return "-"
    factor = model.get("factor")
    if factor is None:
        return f"{model['seconds']:.3g}"
    vae = part["autoencoders"][factor]["seconds"]
    return f"{vae:.3g} + {model['seconds']:.3g}"


# -------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--work", required=True, help="folder of every intermediate artifact")
    a("--out", required=True, help="summary JSON")
    a("--resolutions", nargs="+", type=int, default=[64, 128], help="grid points per dim")
    a("--factors", nargs="+", type=int, default=[4, 8], help="autoencoder downsampling")
    a("--train-samples", type=int, default=512, help="training samples per resolution")
    a("--test-samples", type=int, default=4, help="test samples per resolution")
    a("--latent-channels", type=int, default=4, help="channels of the latents")
    a("--vae-channels", type=int, default=8, help="width of the autoencoder's finest level")
    a("--kl-weight", type=float, default=1e-6, help="KL weight of the autoencoder")
    a("--vae-steps", type=int, default=1000, help="autoencoder training steps")
    a("--vae-batch", type=int, default=8)
    a("--vae-lr", type=float, default=1e-3)
    a("--channels", type=int, default=16, help="UNet model_channels (latent and pixel)")
    a("--channel-mult", nargs="+", type=int, default=[1, 2, 2], help="UNet channel_mult")
    a("--latent-steps", type=int, default=2000, help="training steps of the latent models")
    a("--pixel-steps", type=int, default=800, help="training steps of the pixel models")
    a("--batch", type=int, default=8, help="diffusion training batch")
    a("--lr", type=float, default=1e-3, help="diffusion training learning rate")
    a("--shipped-pixel64", action="store_true", help="pixel model at 64: the shipped darcy64")
    a("--members", type=int, default=4, help="ensemble size")
    a("--steps", type=int, default=16, help="Heun steps of every solve")
    a("--points", type=int, default=500, help="sensors per observed field")
    a("--pixel-preset", default="joint", choices=["joint", "pdediff"], help="pixel preset")
    a("--pixel-obs-weight", type=float, help="pixel observation weight (default: preset's)")
    a("--latent-obs-weight", type=float, help=f"latent weight (default {DEFAULT_OBS_WEIGHT:g})")
    a("--pde-weight", type=float, default=0.0, help="PDE residual weight of every solve")
    a("--seed", type=int, default=0, help="seed of data (+0 train, +1 test), training, sampling")
    add_run_options(p)
    return p


def _check_args(args: argparse.Namespace, work: Path) -> None:
    check_work(args, work)
    bad = sorted({r for r in args.resolutions for f in args.factors if r % f})
    if bad:
        raise SystemExit(f"--resolutions {bad} are not multiples of every --factors {args.factors}")


def run_resolution(
    args: argparse.Namespace, work: Path, res: int, part: dict, flush: Callable[[], None]
) -> None:
    """Every part at one resolution, filling ``part`` and calling ``flush`` after each."""
    data = make_data(args, work, res)
    part.update(data=data, autoencoders={}, models={}, posterior={})
    part["models"]["pixel"] = pixel_model(args, work, res, data)
    flush()
    for factor in args.factors:
        vae = train_vae(args, work, res, factor, data)
        part["autoencoders"][f"x{factor}"] = vae
        flush()
        model = latent_model(args, work, res, factor, vae, data)
        part["models"][f"latent-x{factor}"] = {**model, "factor": f"x{factor}"}
        flush()
    folder = work / "evals" / f"r{res}"
    folder.mkdir(parents=True, exist_ok=True)
    for label, entry in part["models"].items():
        for task in TASKS:
            print(f"r{res} {label} {task}", flush=True)
            done = solve_task(label, entry, task, args, data["test"], folder)
            done["scores"] = posterior_scores(done.pop("summary"), label, args.members)
            part["posterior"].setdefault(label, {})[task] = done
            flush()


def main(argv: list[str] | None = None) -> dict:
    t0 = time.perf_counter()
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work, out = Path(args.work), Path(args.out)
    _check_args(args, work)
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "note": "latent against pixel-space diffusion on Darcy flow, briefly trained tiny "
        "models; errors of the ensemble mean, every model on the same test samples and "
        "sensors; seconds: one solve of all members (sampling and decoding)",
        "settings": {k: v for k, v in vars(args).items() if k != "progress"},
        "threads": torch.get_num_threads(),
        "resolutions": {},
    }
    for res in args.resolutions:
        part = result["resolutions"].setdefault(str(res), {})
        run_resolution(args, work, res, part, lambda: save(result, out))
    result["seconds"] = time.perf_counter() - t0
    result["markdown"] = {
        "autoencoders": autoencoder_markdown(result["resolutions"]),
        "posterior": posterior_markdown(result["resolutions"], args.members),
    }
    save(result, out)
    print("\nautoencoders (test samples)")
    print(result["markdown"]["autoencoders"])
    print(f"\nposterior ({args.points} sensors, {args.steps} Heun steps)")
    print(result["markdown"]["posterior"])
    return result


if __name__ == "__main__":
    main()
