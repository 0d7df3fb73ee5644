"""Tune a model's guidance settings per task on validation data; store the best.

For each task and each point of the grid (``--weights`` for the observation weight, and any
protocol field with ``--grid NAME=V1,V2,...``; the points are their product, ``--set
NAME=V`` fixes a field for all of them) the model is evaluated
(:func:`pdediff.solve.evaluate.evaluate`, the same sensors for every point) on the first
``--samples`` samples of ``--data``, which must be validation samples, never the test set
of the benchmark.  The weight with the lowest score of the inferred field (the first
solution field for the forward task, the first coefficient field for the inverse task,
the first field for the joint task: its Darcy error rate where it has one, its relative L2
error elsewhere; coverage and spread-skill are recorded beside it) is written,
with the ``--set`` fields, to the model's ``guidance.json``
(:data:`pdediff.solve.api.GUIDANCE_FILE`) under ``--preset`` (with ``--steps`` when given),
and the sweep itself under ``"tuning"`` per task, so ``pdediff solve`` and ``pdediff demo``
use it.  ``--points 500 31`` scores every point at each sensor count (the same samples)
and ranks by the geometric mean of the scores, so the stored setting is the one that holds
at dense and sparse sensors alike (a setting tuned at 500 sensors alone can fail at 3 %).

    python benchmarks/tune_guidance.py --model MODEL --data val64.nc --samples 4 \\
        --weights 100 300 1000 3000 --out benchmarks/results/tune_guidance_darcy64.json
    python benchmarks/tune_guidance.py ... --tasks inverse --weights 3000 \
        --grid consistency_steps=10,20,40 --set consistency_lr=0.05
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from pdediff.io.store import atomic_path
from pdediff.solve.api import BY_POINTS, GUIDANCE_FILE, model_guidance, task_fields
from pdediff.solve.evaluate import evaluate
from pdediff.train import read_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from _common import command_line, save  # noqa: E402

#: Recorded beside the score: a setting that fits tighter may be overconfident.
CALIBRATION = ("coverage90", "spread_skill")


def score(summary: dict, target: str) -> tuple[float, str]:
    """The number to minimise and its name: the error rate of the inferred field
    ``target`` where it has one, its relative L2 error elsewhere."""
    entry = summary["diffusion"][target]
    key = "error_rate_mean" if "error_rate_mean" in entry else "rel_l2_mean"
    return float(entry[key]["mean"]), f"{key} of {target}"


def _value(text: str) -> float | int:
    number = float(text)
    return int(number) if number.is_integer() and "." not in text and "e" not in text else number


def parse_assignments(items: list[str], many: bool) -> dict:
    """``["name=v1,v2", ...]`` -> ``{name: [v1, v2]}`` (or ``{name: v}`` with ``many=False``)."""
    out = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not values:
            raise SystemExit(f"expected NAME=VALUE{',...' if many else ''}, got {item!r}")
        parsed = [_value(v) for v in values.split(",")]
        if not many and len(parsed) != 1:
            raise SystemExit(f"--set takes one value, got {item!r}")
        out[name] = parsed if many else parsed[0]
    return out


def grid_points(args: argparse.Namespace) -> list[dict]:
    """The product of ``--weights`` and the ``--grid`` values, one settings dict each."""
    axes = {"default_obs_weight": list(args.weights)} | parse_assignments(args.grid, True)
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def _describe(settings: dict) -> str:
    return " ".join(f"{k}={v:g}" for k, v in settings.items())


#: Settings a stored point must share to be reused by ``--resume``.
SAME_RUN = ("model", "data", "preset", "steps", "points", "members", "samples", "seed", "set")


def previous_points(args: argparse.Namespace, task: str) -> list[dict]:
    """The points of ``--out`` for ``task`` made with the same run settings (``--resume``)."""
    if not (args.resume and args.out and Path(args.out).is_file()):
        return []
    old = json.loads(Path(args.out).read_text())
    now = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    before = dict(old.get("settings", {}))
    if isinstance(before.get("points"), int):  # sweeps before --points took several counts
        before["points"] = [before["points"]]
    if any(before.get(k) != now[k] for k in SAME_RUN):
        return []
    return old.get("sweeps", {}).get(task, {}).get("points", [])


def sweep(args: argparse.Namespace, task: str, saved: Callable[[str, list], None]) -> dict:
    """Evaluate every grid point for ``task`` (reusing ``--resume`` points), calling
    ``saved(task, points)`` after each so an interrupted sweep keeps what it measured."""
    points = []
    fixed = parse_assignments(args.set, False)
    done = {json.dumps(p["settings"], sort_keys=True): p for p in previous_points(args, task)}
    for settings in grid_points(args):
        if json.dumps(settings, sort_keys=True) in done:
            points.append(done[json.dumps(settings, sort_keys=True)])
            print(f"{task:8s} {_describe(settings)}: reused", flush=True)
            continue
        t0 = time.perf_counter()
        scores = {n: evaluate_point(args, task, {**fixed, **settings}, n) for n in args.points}
        value = math.exp(sum(math.log(max(v, 1e-300)) for v, _, _ in scores.values()) / len(scores))
        name, calib = scores[args.points[0]][1:]  # the first count's calibration on top
        point = {"weight": settings["default_obs_weight"], "settings": settings, "score": value}
        point |= {"metric": name, "calibration": calib}
        if len(scores) > 1:  # the score is then the geometric mean of these
            point["per_points"] = {
                str(n): {"score": v, "calibration": c} for n, (v, _, c) in scores.items()
            }
        points.append(point | {"seconds": round(time.perf_counter() - t0, 1)})
        print(
            f"{task:8s} {_describe(settings)}: {name} {100 * value:6.2f} %"
            + "".join(
                f" ({n}: {100 * v:.2f} %)" for n, (v, _, _) in scores.items() if len(scores) > 1
            )
            + ", "
            + ", ".join(f"{k} {v:.3g}" for k, v in calib.items() if v is not None),
            flush=True,
        )
        saved(task, points)
    best = min(points, key=lambda p: p["score"])
    return {"points": points, "best": best}


def evaluate_point(
    args: argparse.Namespace, task: str, protocol: dict, points: int
) -> tuple[float, str, dict]:
    """Score one setting at ``points`` sensors: ``(score, its name, calibration)``."""
    ev = evaluate(
        args.model,
        args.data,
        task=task,
        points=points,
        members=args.members,
        preset=args.preset,
        protocol={**protocol, "steps": args.steps},
        samples=args.samples,
        seed=args.seed,
        progress=False,
    )
    summary = ev.summary()
    target = task_fields(read_checkpoint(args.model).fieldspec, task)[1][0]
    value, name = score(summary, target)
    stats = summary["diffusion"][target]  # one member (--members 1) has no calibration
    return value, name, {k: stats[k]["mean"] if k in stats else None for k in CALIBRATION}


def write_guidance(
    model: Path,
    preset: str,
    best: dict[str, dict],
    record: dict,
    steps: int | None,
    fixed: dict | None = None,
) -> Path:
    """Store each task's best settings, the ``fixed`` ones (and ``steps``, when the sweep
    set them); a sweep at several sensor counts also stores the best settings at each
    count (``by_points``, applied by :func:`pdediff.solve.api.model_guidance`)."""
    path = model / GUIDANCE_FILE
    stored = json.loads(path.read_text()) if path.is_file() else {}
    for task, b in best.items():
        chosen = b.get("settings", {"default_obs_weight": b["weight"]})
        entry = {**model_guidance(model, preset, task), **(fixed or {}), **chosen}
        entry |= {"steps": steps} if steps else {}
        per_count = best_per_count(record["sweeps"][task]["points"])
        stored.setdefault(preset, {})[task] = entry | ({BY_POINTS: per_count} if per_count else {})
    for task in best:  # each task (and preset) keeps the sweep that chose its weight
        key = task if preset == "pdediff" else f"{task} ({preset})"
        stored.setdefault("tuning", {})[key] = {
            "command": record["command"],
            "preset": preset,
            "settings": record["settings"],
            "sweep": record["sweeps"][task],
        }
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(stored, indent=1) + "\n")
    return path


def best_per_count(points: list[dict]) -> dict[str, dict]:
    """``count -> settings`` of the best point at each sensor count of a sweep scored at
    several (empty for one count)."""
    counts = list(points[0].get("per_points") or {}) if points else []
    return {n: min(points, key=lambda p: p["per_points"][n]["score"])["settings"] for n in counts}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, help="validation fields (not the test set)")
    p.add_argument("--tasks", nargs="+", default=["inverse", "forward"])
    p.add_argument("--weights", type=float, nargs="+", default=[100, 300, 1000, 3000])
    p.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...")
    p.add_argument("--set", action="append", default=[], metavar="NAME=V")
    p.add_argument("--preset", default="pdediff")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (preset's default)")
    p.add_argument(
        "--points", type=int, nargs="+", default=[500], help="sensor count(s) to score at"
    )
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dry-run", action="store_true", help="do not write guidance.json")
    p.add_argument("--resume", action="store_true", help="reuse the points saved in --out")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    sweeps: dict[str, dict] = {}

    def saved(task: str, points: list) -> None:
        save({"settings": settings, "sweeps": {**sweeps, task: {"points": points}}}, args.out)

    for task in args.tasks:
        sweeps[task] = sweep(args, task, saved)
    record = {"command": command_line(), "settings": settings, "sweeps": sweeps}
    if not args.dry_run:
        best = {task: s["best"] for task, s in sweeps.items()}
        fixed = parse_assignments(args.set, False)
        path = write_guidance(args.model, args.preset, best, record, args.steps, fixed)
        chosen = ", ".join(f"{t} {_describe(b['settings'])}" for t, b in best.items())
        print(f"wrote {path}: {chosen}")
    save(record, args.out)
    return record


if __name__ == "__main__":
    main()
