"""The solver table of issue 4: a trained model and the baselines on one test set.

For each task (forward: observe ``a``, infer ``u``; inverse: observe ``u``, infer ``a``) and
each sensor setting (default: 500 random grid points, and 3 % of the grid points) the rows
are :func:`pdediff.solve.evaluate.evaluate` calls on the same test samples:

* ``pdediff``: the diffusion posterior with the ``pdediff`` preset (32 Heun steps, ``u`` from
  the reference solver of the sampled ``a``; observations of ``u`` guide ``a`` through the
  adjoint);
* ``joint``: the ``joint`` preset (both fields sampled, observation and PDE residual terms);
* ``diffusionpde``: the released DiffusionPDE protocol (Heun 2,000 steps, step correction,
  switch at 80 %), on the first ``--dp-samples`` samples only, with ``--dp-members``
  members (default 1: the released protocol draws one sample per scene, so its error is
  that of a single sample; compare it with the other rows' ``member`` column, the mean
  error of their single members);
* ``classical``: ``interp-solve`` (forward) and ``pde-fit`` (inverse), for Darcy, Poisson,
  Helmholtz and Navier-Stokes;
* ``fno``: the FNO baselines ``--fno-forward`` / ``--fno-inverse`` (one per task; the same
  model serves every sensor setting), when given;
* ``exact-prior`` (Darcy, forward): the exact posterior under the prior the test data were
  drawn from (:mod:`pdediff.baselines.exact_prior`), ``--exact-members`` members: the
  Bayes floor of the forward error, and the calibration a perfect prior would have.

Test sample ``i`` gets its sensors from the seeds ``(--seed, i)`` in every call, so every
row sees the same observations of the same samples (the ``diffusionpde`` row a prefix of
them).  Each call writes its table (JSON + CSV, after every sample) into the folder
``OUT_STEM/`` beside ``--out``, named ``TASK_SENSORS_ROW.json``; ``--resume`` skips the parts
whose table is complete and was made with the same settings, continues those that only have
fewer samples done (interrupted, or ``--samples`` raised: ``evaluate(resume=True)``), and
reruns the others.  After every part the summary ``--out`` is rewritten (command, machine,
settings, protocol overrides, the resolved protocol of every part, and one row per
(sensors, method)), and at the end the table is printed as markdown.  With ``--resume`` the
summary also keeps the parts of the earlier summary that this call does not run (status
``kept``), so ``--rows diffusionpde`` adds that row to a table instead of replacing it; it
re-reads them before each write, so two calls of other rows or sensor settings may run side
by side on one ``--out`` (a part finished by one is in the summary the other writes next).

NFE is the number of denoiser evaluations per member (a batch of members counts once):
the sampler's (Heun: ``2 steps - 1``; Euler, DPM-Solver++(2M): ``steps``) plus one per
guidance step correction (``steps - 1``, each also a backward pass).

    python benchmarks/solver_table.py --model CKPT --data TEST.nc --family darcy \
        --samples 100 --dp-samples 20 --members 8 --fno-forward DIR --fno-inverse DIR \
        --out benchmarks/results/solver_table_darcy64.json

A smaller CPU run: ``--samples 10 --dp-samples 2 --steps 16 --dp-steps 200``;
``--protocol-json`` overrides protocol fields of every preset (``{"sampler": "euler"}``) or of
some (``{"joint": {"pde_weight": 0}}``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pdediff.errors import PdediffError
from pdediff.io.store import open_fields
from pdediff.solve.api import PRESETS, resolve_protocol, task_fields
from pdediff.solve.evaluate import (
    BASELINE_FAMILIES,
    evaluate,
    observed_count,
    stored_protocol,
    table_paths,
)
from pdediff.train import read_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from _common import command_line, save  # noqa: E402

TASKS = ("forward", "inverse")
#: ``--tasks`` may add ``joint`` (observe every field; Burgers, whose only field is the
#: solution, has no other task).
TASKS_ALL = (*TASKS, "joint")
ROWS = ("pdediff", "joint", "diffusionpde", "classical", "fno", "exact-prior")
CLASSICAL = {"forward": "interp-solve", "inverse": "pde-fit"}
#: Denoiser calls per step of each sampler, and calls saved on the last step to sigma = 0.
SAMPLER_CALLS = {"heun": (2, 1), "euler": (1, 0), "dpmpp_2m": (1, 0), "euler_maruyama": (1, 0)}
#: Settings of an evaluation table that must match for --resume to reuse it.
MATCHED = ("task", "methods", "seed", "points", "fraction", "noise_std", "members", "preset")
MATCHED += ("protocol", "samples", "baseline_options", "model", "data")


# --------------------------------------------------------------------- shared helpers


def parse_json(text: str | None, flag: str) -> dict:
    """A JSON object given on the command line (``{}`` without one)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"{flag}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise SystemExit(f"{flag}: expected a JSON object, got {text!r}")
    return value


def preset_overrides(protocol_json: Mapping, presets: Sequence[str]) -> dict[str, dict]:
    """``preset -> protocol overrides`` from ``--protocol-json``: a dict keyed by preset
    names applies per preset, any other dict to every preset."""
    if protocol_json and set(protocol_json) <= set(PRESETS):
        return {p: dict(protocol_json.get(p, {})) for p in presets}
    return {p: dict(protocol_json) for p in presets}


def sensor_setting(text: str) -> tuple[str, dict]:
    """``"500"`` -> 500 points per field; ``"0.03"`` or ``"3%"`` -> that fraction of the grid
    points.  Returns a file-safe label and the keyword arguments of ``evaluate``."""
    try:
        if text.endswith("%"):
            frac = float(text[:-1]) / 100
        elif any(c in text for c in ".eE"):
            frac = float(text)
        else:
            points = int(text)
            if points < 1:
                raise ValueError
            return f"p{points}", {"points": points, "fraction": None}
    except ValueError:
        raise SystemExit(f"bad sensor setting {text!r}: a count (500) or a fraction") from None
    if not 0 < frac <= 1:
        raise SystemExit(f"bad sensor fraction {text!r}: must be in (0, 1]")
    return f"f{frac:g}", {"points": None, "fraction": frac}


def sensor_label(draw: Mapping) -> str:
    """Sensors in words, for the printed tables."""
    if draw.get("fraction") is not None:
        return f"{100 * draw['fraction']:g} % of nodes"
    return f"{draw['points']} points"


def nfe(protocol: Mapping) -> dict[str, int | None]:
    """Denoiser evaluations per member of a resolved protocol: the sampler's and the total
    with the step corrections (one per step not ending at sigma = 0)."""
    steps = int(protocol["steps"])
    per_step, saved = SAMPLER_CALLS.get(protocol["sampler"], (None, 0))
    if per_step is None:
        return {"sampler": None, "total": None}
    sampler = per_step * steps - saved
    weights = [protocol["default_obs_weight"], protocol["pde_weight"]]
    guided = any(w > 0 for w in [*weights, *dict(protocol["obs_weight"]).values()])
    return {"sampler": sampler, "total": sampler + (steps - 1 if guided else 0)}


def _normal(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def expected_meta(model: str, data: str, kwargs: Mapping) -> dict:
    """The settings an evaluation table made with ``kwargs`` records (see :data:`MATCHED`);
    its protocol as resolved for the number of points each field is observed at (none for
    the baselines' tables, as :func:`pdediff.solve.evaluate.evaluate` records)."""
    draw = {k: kwargs[k] for k in ("points", "fraction", "noise_std")}
    spec = read_checkpoint(model).fieldspec
    seen = observed_count(open_fields(data), spec, kwargs["task"], **draw)
    protocol = resolve_protocol(model, kwargs["preset"], kwargs["task"], kwargs["protocol"], seen)
    return _normal(
        {
            "task": kwargs["task"],
            "methods": list(kwargs["methods"]),
            "seed": kwargs["seed"],
            "points": kwargs["points"],
            "fraction": kwargs["fraction"],
            "noise_std": kwargs["noise_std"],
            "members": kwargs["members"],
            "preset": kwargs["preset"],
            "protocol": protocol.to_dict() if "diffusion" in kwargs["methods"] else None,
            "samples": kwargs["samples"],
            "baseline_options": kwargs.get("baseline_options") or {},
            "model": str(model),
            "data": str(data),
        }
    )


def run_part(
    path: Path, model: str, data: str, kwargs: Mapping, *, resume: bool, overwrite: bool
) -> tuple[dict, str]:
    """One evaluation table at ``path``: reused with ``resume`` if complete and made with
    the same settings, continued if it only has fewer samples done (an interrupted run, or
    a table extended to more samples), else (re)computed.  Returns the table's JSON
    document and what was done (``"reused"``, ``"continued"``, ``"ran"``)."""
    want = expected_meta(model, data, kwargs)
    status, go_on = "ran", False
    if resume and path.is_file():
        doc = json.loads(path.read_text())
        doc["protocol"] = stored_protocol(doc.get("protocol"))
        differ = [k for k in MATCHED if _normal(doc.get(k)) != want[k]]
        if doc.get("complete") and not differ:
            return doc, "reused"
        go_on = set(differ) <= {"samples"} and doc.get("samples_done", 0) <= kwargs["samples"]
        why = "incomplete" if not doc.get("complete") else f"settings differ: {differ}"
        print(f"  {'continuing' if go_on else 'rerunning'} {path.name} ({why})", flush=True)
        status = "continued" if go_on else "ran"
    evaluate(
        model,
        data,
        out=path,
        overwrite=(overwrite or resume) and not go_on,
        resume=go_on,
        command=command_line(),
        **kwargs,
    )
    return json.loads(path.read_text()), status


def kept_parts(out: Path, redone: set[str], resume: bool) -> dict[str, dict]:
    """With ``resume``, the parts of the summary at ``out`` that this run does not redo
    (other rows, tasks or sensor settings), re-read from their tables, so that a run of
    some rows (``--rows diffusionpde``) keeps the others in the summary."""
    if not resume or not out.is_file():
        return {}
    kept = {}
    for name, part in json.loads(out.read_text()).get("parts", {}).items():
        if name in redone or not Path(part["table"]).is_file():
            continue
        doc = json.loads(Path(part["table"]).read_text())
        kept[name] = {**part, "status": "kept", "complete": doc["complete"]}
        kept[name].update(summary=doc["summary"], protocol=stored_protocol(doc["protocol"]))
    return kept


def merge_parts(
    result: dict, out: Path, redone: set[str], resume: bool, mine: Mapping, spec
) -> list[dict]:
    """Set the summary's parts to the others' (re-read from ``out``: a call of other rows
    on the same ``--out`` may have added some since this one started) followed by this
    call's (``mine``), and its rows to theirs; returns the parts."""
    result["parts"] = {**kept_parts(out, redone, resume), **mine}
    done = list(result["parts"].values())
    result["rows"] = table_rows(done, spec)
    return done


def check_outputs(paths: Sequence[Path], resume: bool, overwrite: bool) -> None:
    """Refuse to start when a table would be replaced without --resume or --overwrite."""
    if resume or overwrite:
        return
    existing = [str(p) for path in paths for p in table_paths(path) if p.exists()]
    if existing:
        raise SystemExit(
            f"{len(existing)} table file(s) exist (first: {existing[0]}); pass --resume to "
            "keep the complete ones or --overwrite to replace them"
        )


def stat(summary: Mapping, method: str, field: str, metric: str) -> dict | None:
    """``{"mean", "std", "n"}`` of ``metric`` in an evaluation summary, if there."""
    return summary.get(method, {}).get(field, {}).get(metric)


def fmt(s: Mapping | None, scale: float = 1.0, sem: bool = False, digits: int = 3) -> str:
    """``mean`` (and ``± standard error`` with ``sem``) of a stat, ``-`` if missing."""
    if s is None or s.get("mean") is None:
        return "-"
    text = f"{scale * s['mean']:.{digits}g}"
    if sem and s["n"] > 1:
        text += f" ± {scale * s['std'] / math.sqrt(s['n'] - 1):.2g}"  # std has ddof=0
    return text


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def check_family(data: str, family: str | None) -> str | None:
    """The test set's PDE family (attribute ``pde``), checked against ``--family``."""
    pde = open_fields(data).attrs.get("pde")
    pde = None if pde is None else str(pde)
    if family is not None and pde is not None and pde != family:
        raise SystemExit(f"--family {family} but {data} holds {pde!r} data")
    return family or pde


# --------------------------------------------------------------------------- the table

#: Scored per task: (key, field role, metric, scale); "target" is the inferred field.
METRIC_KEYS = ("rel_l2_mean", "error_rate_mean", "crps", "coverage90", "spread_skill")
METRIC_KEYS += ("rel_l2_member", "error_rate_member")


def parts(args: argparse.Namespace, family: str | None) -> list[dict]:
    """Every evaluation of the table: task, sensors, row, preset, methods, samples."""
    fno = {"forward": args.fno_forward, "inverse": args.fno_inverse}
    out = []
    for task in args.tasks:
        for text in args.sensors:
            label, draw = sensor_setting(text)
            for row in args.rows:
                part = {"task": task, "sensors": label, "draw": draw, "row": row}
                part.update(preset="pdediff", methods=["diffusion"], samples=args.samples)
                if row in ("joint", "diffusionpde"):
                    part["preset"] = row
                if row == "joint":
                    part["samples"] = min(args.joint_samples or args.samples, args.samples)
                if row == "diffusionpde":
                    if args.dp_samples <= 0:
                        continue
                    part["samples"] = min(args.dp_samples, args.samples)
                if row == "classical":
                    if family not in BASELINE_FAMILIES or task not in CLASSICAL:
                        continue
                    part["methods"] = [CLASSICAL[task]]
                    part["samples"] = min(args.classical_samples or args.samples, args.samples)
                if row == "fno":
                    if not fno.get(task):
                        continue
                    part["methods"] = ["fno"]
                if row == "exact-prior":
                    if family != "darcy" or task != "forward":
                        continue
                    part["methods"] = ["exact-prior"]
                out.append(part)
    return out


def part_kwargs(part: Mapping, args: argparse.Namespace, overrides: Mapping) -> dict:
    options = dict(args.baseline_options)
    if part["row"] == "fno":
        pattern = args.fno_forward if part["task"] == "forward" else args.fno_inverse
        options["fno"] = {"model": pattern.format(sensors=part["sensors"])}
    if part["row"] == "exact-prior":
        options["exact-prior"] = {"members": args.exact_members or args.members}
    return {
        "task": part["task"],
        **part["draw"],
        "noise_std": args.noise_std,
        "members": args.dp_members if part["row"] == "diffusionpde" else args.members,
        "preset": part["preset"],
        "protocol": overrides[part["preset"]],
        "samples": part["samples"],
        "seed": args.seed,
        "methods": part["methods"],
        "baseline_options": {k: v for k, v in options.items() if k in part["methods"]},
        "progress": args.progress,
    }


def table_rows(done: Sequence[dict], spec) -> list[dict]:
    """One row per (sensors, row) of the finished parts (sensor settings in order of
    appearance, rows in :data:`ROWS` order): per task the scores of the field it infers,
    the seconds per sample, NFE and the number of samples."""
    rows: dict[tuple[str, str], dict] = {}
    for part in done:
        key = (part["sensors"], part["row"])
        row = rows.setdefault(
            key,
            {"sensors": part["sensors"], "sensor_label": part["sensor_label"], "row": part["row"]},
        )
        (method,) = part["methods"]
        target = task_fields(spec, part["task"])[1][0]
        summary = part["summary"]
        entry = {"method": method, "preset": part["preset"], "field": target}
        entry.update({m: stat(summary, method, target, m) for m in METRIC_KEYS})
        entry["seconds"] = stat(summary, method, target, "seconds")
        entry["n"] = (entry["rel_l2_mean"] or {}).get("n", 0)
        entry["nfe"] = nfe(part["protocol"])["total"] if method == "diffusion" else None
        entry["complete"] = part["complete"]
        row[part["task"]] = entry
    sensors = list(dict.fromkeys(s for s, _ in rows))
    return [rows[k] for k in sorted(rows, key=lambda k: (sensors.index(k[0]), ROWS.index(k[1])))]


SHORT = {"forward": "fwd", "inverse": "inv", "joint": "joint"}


def format_table(rows: Sequence[dict], spec) -> str:
    """The markdown table: errors in % (± standard error), the rest as means; per task the
    inferred field's error rate (where it has one) and relative L2 error of the ensemble
    mean, the mean error of single members (``member``: rel L2, or the error rate where
    the field has one), and the calibration columns as ``task1 / task2``."""
    tasks = [t for t in TASKS_ALL if any(t in r for r in rows)]
    error_columns = []
    for task in tasks:
        field = task_fields(spec, task)[1][0]
        rate = any(r.get(task, {}).get("error_rate_mean") for r in rows)
        if rate:
            error_columns.append((task, "error_rate_mean", f"{SHORT[task]} {field} error rate %"))
        error_columns.append((task, "rel_l2_mean", f"{SHORT[task]} {field} rel L2 %"))
        member = "error_rate_member" if rate else "rel_l2_member"
        error_columns.append((task, member, f"{SHORT[task]} {field} member %"))
    which = " / ".join(SHORT[t] for t in tasks)
    header = ["sensors", "method (preset)", *(c[2] for c in error_columns)]
    header += [f"{name} {which}" for name in ("coverage90", "spread-skill", "CRPS", "s/sample")]
    header += ["NFE", f"n {which}"]
    lines = []
    for r in rows:
        entries = [r.get(t, {}) for t in tasks]
        name = " / ".join(dict.fromkeys(e["method"] for e in entries if e))
        if name == "diffusion":
            name = f"diffusion ({r['row']})"

        def joined(metric: str, digits: int = 3, entries=entries) -> str:
            return " / ".join(fmt(e.get(metric), digits=digits) for e in entries)

        nfes = sorted({str(e["nfe"]) for e in entries if e and e["nfe"] is not None})
        lines.append(
            [
                r["sensor_label"],
                name,
                *(fmt(r.get(t, {}).get(m), 100, sem=True) for t, m, _ in error_columns),
                joined("coverage90"),
                joined("spread_skill"),
                joined("crps"),
                joined("seconds", 2),
                " / ".join(nfes) or "-",
                " / ".join(str(e.get("n", "-")) for e in entries),
            ]
        )
    return markdown(header, lines)


def _sample_scores(part: Mapping, field: str, metric: str) -> dict[int, float]:
    """``sample -> metric`` of the inferred ``field`` in a part's table (failed rows out)."""
    rows = json.loads(Path(part["table"]).read_text())["rows"]
    return {r["sample"]: r[metric] for r in rows if r["field"] == field and r[metric] is not None}


def paired(done: Sequence[dict], spec) -> list[dict]:
    """Every row against ``pdediff`` on the samples both have (same sensors): the error
    (error rate where the field has one, else relative L2) of each, their mean
    difference ``other - pdediff`` with its standard error, and on how many samples
    pdediff is better.  The ``diffusionpde`` row draws single samples, so it is compared
    with pdediff's single members (``*_member``) too."""
    parts = {(p["task"], p["sensors"], p["row"]): p for p in done}
    out = []
    for (task, sensors, row), part in parts.items():
        ref = parts.get((task, sensors, "pdediff"))
        if row == "pdediff" or ref is None:
            continue
        field = task_fields(spec, part["task"])[1][0]
        rate = stat(ref["summary"], "diffusion", field, "error_rate_mean") is not None
        name = "error_rate" if rate else "rel_l2"
        for kind in ["mean", "member"] if row == "diffusionpde" else ["mean"]:
            metric = f"{name}_{kind}"
            mine = _sample_scores(ref, field, metric)
            theirs = _sample_scores(part, field, f"{name}_mean")
            common = sorted(set(mine) & set(theirs))
            if not common:
                continue
            diff = [theirs[i] - mine[i] for i in common]
            n = len(diff)
            mean = sum(diff) / n
            se = math.sqrt(sum((d - mean) ** 2 for d in diff) / (n - 1) / n) if n > 1 else None
            out.append({
                "task": task, "sensors": sensors, "sensor_label": part["sensor_label"],
                "row": row, "method": part["methods"][0], "field": field, "metric": metric,
                "n": n, "pdediff": sum(mine[i] for i in common) / n,
                "other": sum(theirs[i] for i in common) / n, "difference": mean,
                "difference_se": se, "pdediff_better": sum(d > 0 for d in diff),
            })  # fmt: skip
    return out


def format_paired(pairs: Sequence[dict]) -> str:
    """The paired comparisons as markdown, errors in %."""
    header = ["task", "sensors", "row", "field, metric", "n", "pdediff %", "row %"]
    header += ["row - pdediff (points)", "pdediff better"]
    lines = []
    for q in pairs:
        diff = f"{100 * q['difference']:+.2f}"
        if q["difference_se"] is not None:
            diff += f" ± {100 * q['difference_se']:.2f}"
        lines.append([
            q["task"], q["sensor_label"], q["row"], f"{q['field']}, {q['metric']}", str(q["n"]),
            f"{100 * q['pdediff']:.3g}", f"{100 * q['other']:.3g}", diff,
            f"{q['pdediff_better']} of {q['n']}",
        ])  # fmt: skip
    return markdown(header, lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--data", required=True, help="test set (.nc or .zarr)")
    p.add_argument("--family", help="PDE family of the test set (checked against the data)")
    p.add_argument("--samples", type=int, default=100, help="first K test samples")
    p.add_argument(
        "--dp-samples",
        type=int,
        default=20,
        help="samples of the diffusionpde row (a prefix; 0: skip the row)",
    )
    p.add_argument(
        "--classical-samples", type=int, help="samples of the classical row (default: --samples)"
    )
    p.add_argument(
        "--joint-samples", type=int, help="samples of the joint row (default: --samples)"
    )
    p.add_argument("--members", type=int, default=8, help="ensemble size")
    p.add_argument(
        "--dp-members",
        type=int,
        default=1,
        help="ensemble size of the diffusionpde row (default 1: the released protocol)",
    )
    p.add_argument(
        "--sensors",
        nargs="+",
        default=["500", "0.03"],
        help="sensor settings: a count (500) or a fraction of the nodes (0.03, 3%%)",
    )
    p.add_argument("--noise-std", type=float, default=0.0, help="observation noise (physical)")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    p.add_argument(
        "--tasks",
        nargs="+",
        default=list(TASKS),
        choices=TASKS_ALL,
        help="tasks (joint: every field observed, e.g. Burgers)",
    )
    p.add_argument(
        "--fno-forward",
        help="FNO baseline directory of the forward task; '{sensors}' in it is replaced by "
        "the sensor setting's label (one FNO per setting, as fno_baseline.py --save-models)",
    )
    p.add_argument("--fno-inverse", help="the same for the inverse task")
    p.add_argument(
        "--exact-members",
        type=int,
        help="members of the exact-prior row (default: --members; more: closer to the "
        "Bayes floor of the ensemble mean's error)",
    )
    p.add_argument("--steps", type=int, help="sampler steps of the pdediff and joint presets")
    p.add_argument("--dp-steps", type=int, help="sampler steps of the diffusionpde preset")
    p.add_argument(
        "--protocol-json",
        help="protocol overrides: {field: value} for every preset, or {preset: {field: value}}",
    )
    p.add_argument("--baseline-options-json", help='e.g. {"pde-fit": {"max_iter": 200}}')
    p.add_argument("--seed", type=int, default=0, help="seed of sensors and sampling")
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
    args.baseline_options = parse_json(args.baseline_options_json, "--baseline-options-json")
    overrides = preset_overrides(parse_json(args.protocol_json, "--protocol-json"), list(PRESETS))
    for preset, steps in (("pdediff", args.steps), ("joint", args.steps)):
        if steps is not None:
            overrides[preset]["steps"] = steps
    if args.dp_steps is not None:
        overrides["diffusionpde"]["steps"] = args.dp_steps
    family = check_family(args.data, args.family)
    spec = read_checkpoint(args.model).fieldspec
    out = Path(args.out)
    if out.suffix != ".json":
        raise SystemExit(f"--out must be a .json file, got {args.out}")
    folder = out.with_suffix("")
    todo = parts(args, family)
    paths = [folder / f"{p['task']}_{p['sensors']}_{p['row']}.json" for p in todo]
    check_outputs(paths, args.resume, args.overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    redone = {p.stem for p in paths}
    result = {
        "note": "solver table: every row on the same test samples and sensors (seeds "
        "(seed, i)); errors of the ensemble mean; diffusionpde on the first dp_samples",
        "family": family,
        "model": args.model,
        "data": args.data,
        "settings": {k: v for k, v in vars(args).items() if k not in ("progress",)},
        "protocol_overrides": {p: overrides[p] for p in PRESETS},
        "threads": torch.get_num_threads(),
        "parts": {},  # set by merge_parts after each part
        "rows": [],
    }
    mine: dict[str, dict] = {}
    for i, (part, path) in enumerate(zip(todo, paths, strict=True), 1):
        name = path.stem
        print(f"[{i}/{len(todo)}] {name}", flush=True)
        try:
            doc, status = run_part(
                path,
                args.model,
                args.data,
                part_kwargs(part, args, overrides),
                resume=args.resume,
                overwrite=args.overwrite,
            )
        except PdediffError as e:
            raise SystemExit(f"{name}: {e}") from None
        part = {
            **{k: v for k, v in part.items() if k != "draw"},
            **part["draw"],
            "sensor_label": sensor_label(part["draw"]),
            "table": str(path),
            "status": status,
            "protocol": doc["protocol"],
            "nfe": nfe(doc["protocol"]) if part["methods"] == ["diffusion"] else None,
            "complete": doc["complete"],
            "summary": doc["summary"],
        }
        mine[name] = part
        merge_parts(result, out, redone, args.resume, mine, spec)
        save(result, out)
    done = merge_parts(result, out, redone, args.resume, mine, spec)
    result["paired"] = paired(done, spec)
    table = format_table(result["rows"], spec)
    table += "\n\nPaired with pdediff on the same samples and sensors:\n\n"
    table += format_paired(result["paired"])
    result["markdown"] = table
    save(result, out)
    print("\n" + table)
    return result


if __name__ == "__main__":
    main()
