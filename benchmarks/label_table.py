"""One model across PDE families (issue 5, labels): does the family label steer the prior?

Poisson ``lap u = a`` and Helmholtz ``lap u + k^2 u = a`` (``k = --helmholtz-k``, 3 by
default: the lowest mode of ``u`` is about 1.8x that of Poisson for the same source) on
``--resolution`` (32) grids, both with ``u = 0`` on the boundary and the same kind of
source ``a``, so only ``u`` tells them apart.  The script

1. generates ``--train-samples`` pairs of each family (seeds ``--seed`` and ``--seed + 1``)
   and merges them with the per-sample label ``pde``
   (:func:`pdediff.io.conditions.label_datasets`, what ``pdediff merge`` runs);
2. trains one small UNet on both, conditioned on the label with condition dropout 0.1
   (:func:`pdediff.train.train` with ``label = "pde"``, what ``pdediff train --label pde``
   runs), ``--train-steps`` steps;
3. checks whether the label steers the prior: unguided samples ``(a, u)`` for each label,
   scored by the relative residual of each family's discrete PDE and the RMS of ``u``;
4. scores it on ``--test-samples`` held-out samples of each family (seeds ``--seed + 2``,
   ``+ 3``) with :func:`pdediff.solve.evaluate.evaluate`, which gives each sample the
   model's condition from the test set (here its family), ``--points`` sensors per
   observed field from the seeds ``(--seed, i)``, ``--members`` members, ``--steps``
   Heun steps, for the forward task (``a`` observed, ``u`` inferred) and the inverse task
   (``u`` observed, ``a`` inferred).  Rows:

   * ``joint, right label``: both fields sampled with observation guidance only (preset
     ``joint``, no PDE term): what the network alone makes of the label;
   * ``joint, swapped label``: the same with each sample labelled as the other family;
   * ``solver, right label``: preset ``pdediff``, ``u`` from the reference solver of the
     family the label names (the physics exact);
   * ``per-family, joint`` and ``per-family, solver``: the same two presets with a model
     trained on that family's part of the training set alone (the same UNet, steps, batch
     and seed): the usual alternative to one labelled model (``--no-per-family``: none);
   * the classical baselines on the same sensors (forward: interpolate ``a`` then solve;
     inverse: TV-regularised PDE-constrained fit).

Guidance (:data:`PROTOCOL`, :data:`INVERSE_SOLVER`): chosen with the labelled model on 3
validation samples of Poisson (seed 99, not a test sample), 100 sensors, 4 members, 16
steps: observation weight 100 (step correction; 10, 30, 300 and 1000 fitted worse or blew
up), and for the solver rows' inverse task data consistency at every step, 40 Adam steps
of learning rate 0.05 (25 % relative L2 of ``a`` against 38 % with 10 steps).
``--protocol-json`` overrides them per preset.

Everything lands in ``--work``; the summary ``--out`` is written at the end.

    python benchmarks/label_table.py --work /work/runs/labels --threads 2 \\
        --out benchmarks/results/label_table_poisson_helmholtz32.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_run_options, check_work, save, unet_config  # noqa: E402

from pdediff.generate import generate  # noqa: E402
from pdediff.io import open_fields, write_fields  # noqa: E402
from pdediff.io.conditions import label_datasets, label_parts  # noqa: E402
from pdediff.solve.evaluate import evaluate  # noqa: E402
from pdediff.train import TrainConfig, train  # noqa: E402

FAMILIES = ("poisson", "helmholtz")
PROTOCOL = {
    "joint": {"default_obs_weight": 100.0, "pde_weight": 0.0},
    "pdediff": {"default_obs_weight": 100.0},
}
#: Extra guidance of the solver rows' inverse task: data consistency at every step.
INVERSE_SOLVER = {"consistency_steps": 40, "consistency_lr": 0.05}
BASELINE = {"forward": "interp-solve", "inverse": "pde-fit"}
SCORES = ("rel_l2_mean", "crps", "coverage90", "spread_skill", "seconds")


def train_models(args: argparse.Namespace, work: Path, data: Path) -> dict[str, Path]:
    """The labelled model and, unless ``--no-per-family``, one model per family on its
    part of the same data (each goes on from its checkpoint after a crash)."""
    jobs: dict[str, tuple[Any, dict]] = {"labelled": (data, {"label": "pde"})}
    if args.per_family:
        jobs.update({fam: (part, {}) for fam, part in label_parts(open_fields(data)).items()})
    models = {}
    for name, (source, extra) in jobs.items():
        out = work / ("model" if name == "labelled" else f"model_{name}")
        config = TrainConfig.from_dict(unet_config(args, args.train_steps, **extra))
        print(f"training {name} ({args.train_steps} steps)", flush=True)
        train(
            source,
            out,
            config,
            resume=(out / "state.json").exists() and not args.overwrite,
            overwrite=args.overwrite,
            progress=args.progress,
            device=args.device,
            command=" ".join(sys.argv),
        )
        models[name] = out
    return models


def make_data(args: argparse.Namespace, work: Path) -> tuple[Path, dict[str, xr.Dataset]]:
    """The merged training file and each family's test set (reused when present)."""
    params = {"poisson": {}, "helmholtz": {"k": args.helmholtz_k}}
    train_path, tests = work / "train.nc", {}
    parts = {}
    for i, fam in enumerate(FAMILIES):
        path = work / f"test_{fam}.nc"
        if not path.exists():
            test = generate(
                fam,
                args.test_samples,
                args.resolution,
                seed=args.seed + 2 + i,
                params=params[fam],
                progress=args.progress,
            )
            write_fields(test, path)
        tests[fam] = open_fields(path)
        if not train_path.exists():
            parts[fam] = generate(
                fam,
                args.train_samples,
                args.resolution,
                seed=args.seed + i,
                params=params[fam],
                progress=args.progress,
            )
    if parts:
        write_fields(label_datasets(parts, "pde"), train_path)
    return train_path, tests


def labelled(test: xr.Dataset, fam: str) -> xr.Dataset:
    """The test set with every sample labelled ``fam`` (its condition for the model)."""
    return test.assign(pde=("sample", np.full(test.sizes["sample"], fam, dtype=object)))


def score(rows: list[dict], method: str) -> dict[str, dict[str, Any]]:
    """Mean and standard error over samples of each score, per inferred field."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["method"] != method or r["observed"]:
            continue
        for key in SCORES:
            if r.get(key) is not None:
                out.setdefault(r["field"], {}).setdefault(key, []).append(float(r[key]))
    return {
        f: {
            k: {"mean": float(np.mean(v)), "se": float(np.std(v) / np.sqrt(len(v))), "n": len(v)}
            for k, v in scores.items()
        }
        for f, scores in out.items()
    }


def run_rows(args, models: dict[str, Path], tests: dict[str, xr.Dataset], overrides: dict):
    """Every row on both families and both tasks."""
    records = []
    other = dict(zip(FAMILIES, reversed(FAMILIES), strict=True))
    joint_methods = ("diffusion",)
    for task in ("forward", "inverse"):
        for fam, test in tests.items():
            one = models["labelled"]
            settings = [
                ("joint, right label", one, "joint", fam, ("diffusion", BASELINE[task])),
                ("joint, swapped label", one, "joint", other[fam], joint_methods),
                ("solver, right label", one, "pdediff", fam, joint_methods),
            ]
            if fam in models:
                settings += [
                    ("per-family, joint", models[fam], "joint", None, joint_methods),
                    ("per-family, solver", models[fam], "pdediff", None, joint_methods),
                ]
            for label, model, preset, given, methods in settings:
                protocol = {"steps": args.steps, **PROTOCOL[preset], **overrides.get(preset, {})}
                if preset == "pdediff" and task == "inverse":
                    protocol = {**INVERSE_SOLVER, **protocol}
                print(f"{task} {fam}: {label}", flush=True)
                t0 = time.perf_counter()
                result = evaluate(
                    model,
                    test if given is None else labelled(test, given),
                    task=task,
                    points=args.points,
                    members=args.members,
                    preset=preset,
                    protocol=protocol,
                    seed=args.seed,
                    methods=methods,
                    progress=args.progress,
                )
                for method in methods:
                    name = label if method == "diffusion" else method
                    records.append(
                        {
                            "task": task,
                            "family": fam,
                            "row": name,
                            "label": given,
                            "preset": preset if method == "diffusion" else None,
                            "protocol": protocol if method == "diffusion" else None,
                            "scores": score(result.rows, method),
                            "wall_s": round(time.perf_counter() - t0, 1),
                        }
                    )
    return records


def prior_check(args, model: Path, tests: dict[str, xr.Dataset]) -> dict[str, dict]:
    """Does the label steer the prior?  ``--prior-samples`` unguided joint samples ``(a, u)``
    per label (one sensor of weight 0, no PDE term, the same seed for every label), and
    the median relative residual of the pairs under each family's discrete PDE (with its
    parameters), and the RMS of ``u``; the test data's RMS of ``u`` beside it."""
    from pdediff.io.observations import observations_from_truth
    from pdediff.metrics import residual_norm
    from pdediff.pde.registry import FAMILIES as REGISTRY
    from pdediff.solve import solve

    params = {"poisson": {}, "helmholtz": {"k": args.helmholtz_k}}
    out = {}
    for label, test in tests.items():
        obs, _ = observations_from_truth(test.isel(sample=[0]), ["u"], count=1, seed=0)
        post = solve(
            model,
            obs,
            task="joint",
            members=args.prior_samples,
            preset="joint",
            protocol={"steps": args.steps, "default_obs_weight": 0.0, "pde_weight": 0.0},
            seed=args.seed,
            condition={"pde": label},
            progress=False,
        )
        fields = {
            f: post[f].transpose("member", "y", "x").values.astype(np.float64) for f in ("a", "u")
        }
        grid = REGISTRY[label].grid(args.resolution, {})
        out[label] = {
            f"residual_{fam}": float(
                np.median(residual_norm(REGISTRY[fam], fields, grid, params[fam]).relative)
            )
            for fam in FAMILIES
        }
        out[label]["u_rms"] = float(np.sqrt((fields["u"] ** 2).mean()))
        out[label]["data_u_rms"] = float(np.sqrt((test["u"].values.astype(float) ** 2).mean()))
        print(f"prior, label {label}: {out[label]}", flush=True)
    return out


def markdown(records: list[dict]) -> str:
    """A table: rows x (task, family), the relative L2 error of the inferred field (%)."""
    cols = [(t, f) for t in ("forward", "inverse") for f in FAMILIES]
    names = list(dict.fromkeys(r["row"] for r in records))
    head = "| row | " + " | ".join(f"{t} {f}" for t, f in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for name in names:
        cells = []
        for t, f in cols:
            hit = [r for r in records if r["row"] == name and r["task"] == t and r["family"] == f]
            field = "u" if t == "forward" else "a"
            s = hit[0]["scores"].get(field, {}).get("rel_l2_mean") if hit else None
            cells.append(f"{100 * s['mean']:.1f} ± {100 * s['se']:.1f}" if s else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--work", required=True, help="folder of data, model and tables")
    a("--out", required=True, help="summary JSON")
    a("--resolution", type=int, default=32)
    a("--helmholtz-k", type=float, default=3.0, help="the Helmholtz wavenumber")
    a("--train-samples", type=int, default=1000, help="training pairs per family")
    a("--test-samples", type=int, default=6, help="test samples per family")
    a("--train-steps", type=int, default=2000)
    a("--channels", type=int, default=16)
    a("--channel-mult", nargs="+", type=int, default=[1, 2, 2])
    a("--batch", type=int, default=16)
    a("--lr", type=float, default=1e-3)
    a("--points", type=int, default=100, help="sensors per observed field")
    a("--members", type=int, default=4)
    a("--steps", type=int, default=16, help="Heun steps")
    a("--protocol-json", default="{}", help='overrides per preset, {"joint": {...}}')
    a("--seed", type=int, default=0)
    a("--prior-samples", type=int, default=16, help="unguided samples per label")
    a("--no-per-family", dest="per_family", action="store_false", help="no per-family models")
    add_run_options(p)
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    check_work(args, work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train_path, tests = make_data(args, work)
    models = train_models(args, work, train_path)
    prior = prior_check(args, models["labelled"], tests)
    records = run_rows(args, models, tests, json.loads(args.protocol_json))
    result = {
        "settings": vars(args),
        "train_seconds": {
            name: json.loads((path / "state.json").read_text()).get("elapsed")
            for name, path in models.items()
        },
        "prior": prior,
        "records": records,
        "markdown": markdown(records),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(result["markdown"])
    save(result, args.out)
    return result


if __name__ == "__main__":
    main()
