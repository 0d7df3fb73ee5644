"""Ablations of the guided diffusion solver: each point one evaluation on the same samples.

Sub-studies (``--study``, default all; letters or names):

* ``a`` / ``pde``: observations only vs observations + PDE residual (the ``joint`` preset
  with ``pde_weight`` 0 and with its default), and solver mode (the ``pdediff`` preset: ``u``
  from the reference solver of the sampled ``a``);
* ``b`` / ``steps``: error vs number of sampler steps (and NFE) for the samplers
  ``--samplers`` (heun, euler, dpmpp_2m) at ``--steps-list`` (8 16 32 64);
* ``c`` / ``fraction``: error vs observed fraction of the grid points (``--fractions``);
* ``d`` / ``noise``: error vs observation noise, ``--noise-levels`` times the standard
  deviation of each field over the test set;
* ``e`` / ``members``: calibration (coverage of the 90 % interval, CRPS, spread-skill) vs
  ensemble size (``--members-list``).

Studies b-e use ``--preset`` (default ``pdediff``), ``--members``, and ``--points`` /
``--fraction`` sensors where they do not vary them.  Test sample ``i`` gets its sensors from
the seeds ``(--seed, i)`` at every point (so within a study only the varied setting
changes; the noise draw is seeded the same way).  Each point writes its evaluation table to
``OUT_STEM/STUDY_TASK_LABEL.json`` and the summary ``--out`` is rewritten after every point;
``--resume`` reuses complete tables made with the same settings.  A table per study is
printed (errors of the ensemble mean of the inferred field, in %).

    python benchmarks/ablations.py --model CKPT --data TEST.nc --samples 20 \
        --out benchmarks/results/ablations_darcy64.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pdediff.errors import PdediffError
from pdediff.io.store import open_fields
from pdediff.solve.api import PRESETS, task_fields
from pdediff.train import read_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from _common import save  # noqa: E402
from solver_table import (  # noqa: E402
    check_family,
    check_outputs,
    fmt,
    markdown,
    nfe,
    parse_json,
    run_part,
    sensor_label,
    sensor_setting,
    stat,
)

STUDIES = {"a": "pde", "b": "steps", "c": "fraction", "d": "noise", "e": "members"}
DESCRIPTION = {
    "pde": "observations only vs observations + PDE residual (joint preset), and solver mode",
    "steps": "error vs sampler steps (NFE) per sampler",
    "fraction": "error vs observed fraction of the grid points",
    "noise": "error vs observation noise (relative to each field's std over the test set)",
    "members": "calibration vs ensemble size",
}


def study_points(study: str, args: argparse.Namespace, field_std: dict) -> list[dict]:
    """The points of one study: a label and what it changes from the base settings."""
    if study == "pde":
        return [
            {"label": "joint-obs-only", "preset": "joint", "protocol": {"pde_weight": 0.0}},
            {"label": "joint-obs+pde", "preset": "joint", "protocol": {}},
            {"label": "pdediff-solver", "preset": "pdediff", "protocol": {}},
        ]
    if study == "steps":
        return [
            {"label": f"{s}-{n}", "protocol": {"sampler": s, "steps": n}}
            for s in args.samplers
            for n in args.steps_list
        ]
    if study == "fraction":
        return [
            {"label": f"f{f:g}", "draw": {"points": None, "fraction": f}} for f in args.fractions
        ]
    if study == "noise":
        return [
            {
                "label": f"noise{r:g}",
                "noise_level": r,
                "noise_std": {f: r * s for f, s in field_std.items()},
            }
            for r in args.noise_levels
        ]
    return [{"label": f"m{m}", "members": m} for m in args.members_list]


def point_kwargs(point: dict, task: str, args: argparse.Namespace, base: dict) -> dict:
    preset = point.get("preset", args.preset)
    protocol = {**base, **point.get("protocol", {})}
    return {
        "task": task,
        **point.get("draw", args.draw),
        "noise_std": point.get("noise_std", args.noise_std),
        "members": point.get("members", args.members),
        "preset": preset,
        "protocol": protocol,
        "samples": args.samples,
        "seed": args.seed,
        "methods": ["diffusion"],
        "progress": args.progress,
    }


def point_entry(point: dict, task: str, kwargs: dict, doc: dict, spec, path: Path) -> dict:
    """What the summary keeps of one point: settings, NFE and the inferred field's scores."""
    target = task_fields(spec, task)[1][0]
    scores = {
        m: stat(doc["summary"], "diffusion", target, m)
        for m in ("rel_l2_mean", "rel_l2_member", "error_rate_mean", "crps", "coverage90")
        + ("spread_skill", "residual", "seconds")
    }
    return {
        "label": point["label"],
        "task": task,
        "field": target,
        "preset": kwargs["preset"],
        "protocol_overrides": kwargs["protocol"],
        "points": kwargs["points"],
        "fraction": kwargs["fraction"],
        "sensor_label": sensor_label(kwargs),
        "noise_level": point.get("noise_level"),
        "noise_std": kwargs["noise_std"],
        "members": kwargs["members"],
        "protocol": doc["protocol"],
        "nfe": nfe(doc["protocol"]),
        "n": (scores["rel_l2_mean"] or {}).get("n", 0),
        "complete": doc["complete"],
        "table": str(path),
        "scores": scores,
        "summary": doc["summary"],
    }


def format_study(points: list[dict]) -> str:
    header = ["task", "setting", "preset", "sensors", "M", "NFE", "field", "rel L2 %"]
    header += ["error rate %", "coverage90", "CRPS", "spread-skill", "s/sample", "n"]
    rows = []
    for p in points:
        s = p["scores"]
        rows.append(
            [
                p["task"],
                p["label"],
                p["preset"],
                p["sensor_label"],
                str(p["members"]),
                str(p["nfe"]["total"] if p["nfe"]["total"] is not None else "-"),
                p["field"],
                fmt(s["rel_l2_mean"], 100, sem=True),
                fmt(s["error_rate_mean"], 100, sem=True),
                fmt(s["coverage90"]),
                fmt(s["crps"]),
                fmt(s["spread_skill"]),
                fmt(s["seconds"], digits=2),
                str(p["n"]),
            ]
        )
    return markdown(header, rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--data", required=True, help="test set (.nc or .zarr)")
    p.add_argument("--family", help="PDE family of the test set (checked against the data)")
    p.add_argument("--samples", type=int, default=20, help="first K test samples")
    p.add_argument(
        "--study", nargs="+", default=list(STUDIES.values()), choices=[*STUDIES, *STUDIES.values()]
    )
    p.add_argument(
        "--tasks", nargs="+", default=["forward", "inverse"], choices=["forward", "inverse"]
    )
    p.add_argument(
        "--preset", default="pdediff", choices=list(PRESETS), help="preset of studies b-e"
    )
    p.add_argument("--steps", type=int, help="sampler steps of every point but study b's")
    p.add_argument("--protocol-json", help="protocol overrides of every point, {field: value}")
    p.add_argument("--members", type=int, default=8, help="ensemble size (studies a-d)")
    p.add_argument(
        "--sensors",
        default="500",
        help="sensors of studies a, b, d, e: a count (500) or a fraction (0.03)",
    )
    p.add_argument(
        "--noise-std",
        type=float,
        default=0.0,
        help="observation noise (physical) of studies a, b, c, e",
    )
    p.add_argument("--samplers", nargs="+", default=["heun", "euler", "dpmpp_2m"])
    p.add_argument("--steps-list", nargs="+", type=int, default=[8, 16, 32, 64])
    p.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.03, 0.1, 0.3, 1.0])
    p.add_argument("--noise-levels", nargs="+", type=float, default=[0.0, 0.01, 0.03, 0.1])
    p.add_argument("--members-list", nargs="+", type=int, default=[2, 4, 8, 16, 32])
    p.add_argument("--seed", type=int, default=0, help="seed of sensors, noise and sampling")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--resume", action="store_true", help="keep complete tables")
    p.add_argument("--overwrite", action="store_true", help="replace existing tables")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--out", required=True, help="summary JSON; tables go to OUT_STEM/")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    studies = list(dict.fromkeys(STUDIES.get(s, s) for s in args.study))
    args.draw = sensor_setting(args.sensors)[1]
    base = parse_json(args.protocol_json, "--protocol-json")
    if args.steps is not None:
        base["steps"] = args.steps
    family = check_family(args.data, args.family)
    spec = read_checkpoint(args.model).fieldspec
    ds = open_fields(args.data)
    field_std = {f: float(ds[f].std()) for f in spec.variables}
    out = Path(args.out)
    if out.suffix != ".json":
        raise SystemExit(f"--out must be a .json file, got {args.out}")
    folder = out.with_suffix("")
    todo = [
        (study, task, point)
        for study in studies
        for task in args.tasks
        for point in study_points(study, args, field_std)
    ]
    paths = [folder / f"{s}_{t}_{p['label']}.json" for s, t, p in todo]
    check_outputs(paths, args.resume, args.overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    result = {
        "note": "ablations: every point on the same test samples and sensors (seeds (seed, i)); "
        "scores of the ensemble mean of the inferred field",
        "family": family,
        "model": args.model,
        "data": args.data,
        "settings": {k: v for k, v in vars(args).items() if k != "progress"},
        "protocol_overrides": base,
        "field_std": field_std,
        "threads": torch.get_num_threads(),
        "studies": {s: {"description": DESCRIPTION[s], "points": []} for s in studies},
    }
    for k, ((study, task, point), path) in enumerate(zip(todo, paths, strict=True)):
        print(f"[{k + 1}/{len(todo)}] {path.stem}", flush=True)
        kwargs = point_kwargs(point, task, args, base)
        try:
            doc, status = run_part(
                path, args.model, args.data, kwargs, resume=args.resume, overwrite=args.overwrite
            )
        except PdediffError as e:
            raise SystemExit(f"{path.stem}: {e}") from None
        entry = point_entry(point, task, kwargs, doc, spec, path)
        entry["status"] = status
        result["studies"][study]["points"].append(entry)
        save(result, out)
    result["markdown"] = {}
    for study in studies:
        table = format_study(result["studies"][study]["points"])
        result["markdown"][study] = table
        print(f"\n{study}: {DESCRIPTION[study]}\n{table}")
    save(result, out)
    return result


if __name__ == "__main__":
    main()
