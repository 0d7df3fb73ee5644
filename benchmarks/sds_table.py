"""The score distillation table of issue 6: inverse Darcy from sparse sensors of ``u`` by SDS
with each renderer, beside posterior sampling, and the resolution transfer of the neural field.

Test sample ``i`` gets the sensors :func:`pdediff.solve.evaluate.draw_observations` draws
from the seeds ``(--seed, i)`` (``--points`` random nodes of ``u``), so every row sees the
observations that ``pdediff evaluate --task inverse --seed SEED`` gives its methods:

* ``sds:RENDERER``: one fit per renderer of ``--renderers`` (keys of
  :data:`pdediff.sds.RENDERERS`) by :func:`pdediff.sds.sds_optimize` with the settings and
  observation terms of ``pdediff sds`` (:func:`pdediff.sds.sds_solve`; ``--steps``, ``--lr``,
  ``--obs-weight``, ``--ellipses`` override its defaults), seeded with the sample's
  sampling seed (the second of :func:`~pdediff.solve.evaluate.sample_seeds`);
* ``diffusion``: :func:`pdediff.solve.evaluate.evaluate` with the ``pdediff`` preset and
  ``--members`` posterior samples (scores of the ensemble mean, and the mean over members);
* ``pde-fit``: the classical PDE-constrained fit, in the same ``evaluate`` call.

Every row is scored as ``evaluate`` scores it (:func:`~pdediff.solve.evaluate.score_field`,
:func:`pdediff.metrics.residual_norm`): the error rate of ``a`` after thresholding at the
midpoint of its two levels, the relative L2 errors of ``a`` and ``u``, the relative PDE
residual of the estimated pair (``-div(a grad u) - f`` on the interior nodes, relative to
``f``), and the wall time per sample (for SDS: building the renderer and optimising; the
checkpoint is loaded once).  SDS returns one field (a mode, not a sample), so its
"member" and "mean" scores coincide.

Resolution transfer.  A neural field is a function of the position, so it renders on any
grid.  Pdediff grids are node grids that include both ends: with ``k = --transfer-factor``
the grid of ``k (n - 1) + 1`` nodes per dim nests the model's ``n``-node grid (its every
``k``-th node; ``k = 2``: 127 nests 64).  For every fit whose coefficient ``a`` is drawn by a
:class:`~pdediff.sds.NeuralField` (``neural-field``, ``physics-neural-field``), the field's
``a`` is rendered on both grids (physical units; clipped to ``[a_low, a_high]`` for the
physics renderer, as its own output is) and the table reports, per sample then averaged:

* ``agreement_max_abs``, ``agreement_rel_l2``, ``agreement_flip_rate``: the fine render at
  the shared nodes against the model-grid render: largest absolute difference, relative L2
  difference and the fraction of shared nodes thresholded to the other level (all ~0: the
  same function at the same points);
* ``error_rate_coarse``: the error rate of the model-grid render against the truth;
* ``error_rate_shared``: the error rate of the fine render at the shared nodes against the
  truth (equal to the former up to round-off);
* ``error_rate_fine``, ``rel_l2_fine``: the whole fine render against the truth upsampled
  to the fine grid by nearest node (fine node ``j`` takes model node ``j / k`` rounded, ties
  - the midpoints when ``k`` is even - to the lower node);
* ``error_rate_upsampled``, ``rel_l2_upsampled``: the model-grid render upsampled the same
  way, against the same upsampled truth: what pixel replication gives, for comparison.

The JSON ``--out`` (command, machine, date, settings, one record per fit, the summary per
method and field in ``evaluate``'s form, the transfer summary and the tables) is rewritten
after every fit; the posterior table goes to ``OUT_STEM/posterior.json`` (with its CSV),
written by ``evaluate`` after every sample.  ``--resume`` keeps the fits of a previous run
with the same settings and a complete posterior table made with the same settings.

    python benchmarks/sds_table.py --model pdediff/models/darcy64 \
        --data /work/runs/darcy64_test.nc --samples 5 --points 500 --threads 1 \
        --out benchmarks/results/sds_table_darcy64.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import xarray as xr
from torch import nn

from pdediff.errors import PdediffError
from pdediff.io.conventions import SAMPLE_DIM, dataset_params
from pdediff.io.fieldspec import FieldSpec
from pdediff.io.observations import Observations
from pdediff.io.store import open_fields
from pdediff.metrics import relative_l2, residual_norm, threshold_error_rate
from pdediff.pde.base import Grid, PDEFamily
from pdediff.pde.registry import FAMILIES
from pdediff.sds import (
    RENDERERS,
    NeuralField,
    PhysicsRenderer,
    sds_fit,
    sds_solve,
)
from pdediff.solve.evaluate import (
    COLUMNS,
    Evaluation,
    draw_observations,
    sample_seeds,
    score_field,
)
from pdediff.train import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from _common import save  # noqa: E402
from solver_table import check_family, check_outputs, fmt, markdown, nfe, run_part  # noqa: E402

#: The posterior methods of ``evaluate`` that solve the inverse task without extra models.
POSTERIOR_METHODS = ("diffusion", "pde-fit")
#: The settings of ``pdediff sds`` (:func:`sds_solve`'s defaults) that the fits use.
SDS_KEYS = ("steps", "lr", "obs_weight", "sigma_min", "sigma_max", "weighting", "schedule")
SDS_KEYS += ("ellipses",)
SDS_DEFAULTS = {k: inspect.signature(sds_solve).parameters[k].default for k in SDS_KEYS}
TRANSFER_KEYS = ("agreement_max_abs", "agreement_rel_l2", "agreement_flip_rate")
TRANSFER_KEYS += ("error_rate_coarse", "error_rate_shared", "error_rate_fine")
TRANSFER_KEYS += ("error_rate_upsampled", "rel_l2_fine", "rel_l2_upsampled")


class Problem(NamedTuple):
    """What every fit and score of one run needs: the prior and the Darcy setting."""

    denoiser: nn.Module
    spec: FieldSpec
    family: PDEFamily
    params: dict[str, float]
    grid: Grid
    levels: tuple[float, float]
    coefficient: str


def load_problem(model: str, ds: xr.Dataset) -> Problem:
    """The model's denoiser and spec, and the family, parameters and levels of the test set
    (as ``evaluate`` reads them); the test set must hold the model's fields on its grid."""
    denoiser, spec, _ = load_checkpoint(model)
    spec.check_compatible(ds)
    if spec.conditions or str(spec.attrs.get("pde", "darcy")) != "darcy":
        raise PdediffError(f"{model} is not an unconditioned Darcy model")
    family = FAMILIES["darcy"]
    params = {k: v for k, v in dataset_params(ds).items() if k in family.defaults}
    full = family.params(params)
    coef = [f for f, info in family.fields.items() if info.role == "coefficient"][0]
    return Problem(
        denoiser, spec, family, params, spec.grid(), (full["a_low"], full["a_high"]), coef
    )


def truth_of(ds: xr.Dataset, spec: FieldSpec, index: int) -> dict[str, np.ndarray]:
    """The true fields ``(*grid)`` of test sample ``index``, float64."""
    sel = ds.isel({SAMPLE_DIM: index})
    return {f: np.asarray(sel[f].transpose(*spec.dims).values, np.float64) for f in spec.variables}


# ------------------------------------------------------------------------------- one fit


def fit(
    problem: Problem, obs: Observations, renderer: str, settings: Mapping, seed: int
) -> tuple[nn.Module, Any, float]:
    """Fit ``renderer`` to the prior and the observations as ``pdediff sds`` does.

    Returns the fitted renderer, the :class:`~pdediff.sds.SDSResult` and the wall time of
    building the renderer and optimising it.
    """
    t0 = time.perf_counter()
    sds = {k: v for k, v in settings.items() if k not in ("obs_weight", "ellipses")}
    render, result, _ = sds_fit(
        problem.denoiser,
        problem.spec,
        problem.family,
        obs,
        renderer,
        obs_weight=settings["obs_weight"],
        ellipses=settings["ellipses"],
        seed=seed,
        **sds,
    )
    return render, result, time.perf_counter() - t0


def score_fit(problem: Problem, fields: torch.Tensor, truth: Mapping[str, np.ndarray]) -> dict:
    """``evaluate``'s scores of one fitted pair (normalised ``(1, C, *grid)``): per field,
    and the relative PDE residual of the pair."""
    phys = problem.spec.denormalise(fields.double())[0].numpy()
    est = {f: phys[c] for c, f in enumerate(problem.spec.variables)}
    scores = {
        f: score_field(
            est[f][None],
            truth[f],
            ensemble=False,
            levels=problem.levels if f == problem.coefficient else None,
        )
        for f in problem.spec.variables
    }
    pair = {f: est[f][None] for f in problem.family.fields}
    residual = residual_norm(problem.family, pair, problem.grid, problem.params).relative[0]
    return {"scores": scores, "residual": float(residual)}


# ---------------------------------------------------------------------- resolution transfer


def coefficient_field(renderer: nn.Module, problem: Problem) -> tuple[NeuralField, int] | None:
    """The neural field that draws the coefficient and its output channel, if there is one."""
    if isinstance(renderer, PhysicsRenderer):
        inner = renderer.coef_renderer
        return (inner, 0) if isinstance(inner, NeuralField) else None
    if isinstance(renderer, NeuralField):
        return renderer, problem.spec.variables.index(problem.coefficient)
    return None


def nearest_upsample(x: np.ndarray, factor: int) -> np.ndarray:
    """A node field ``(n1, n2, ...)`` on the nested grid of ``factor (n - 1) + 1`` nodes per
    dim: fine node ``j`` takes node ``j / factor`` rounded, ties to the lower node."""
    index = [(np.arange(factor * (n - 1) + 1) + (factor - 1) // 2) // factor for n in x.shape]
    return x[np.ix_(*index)]


def render_coefficient(
    field: NeuralField,
    channel: int,
    problem: Problem,
    shape: Sequence[int] | None,
    clip: bool,
) -> np.ndarray:
    """The field's coefficient in physical units on the node grid ``shape`` (default: the
    grid it was built on), clipped to the levels with ``clip``."""
    c = problem.spec.variables.index(problem.coefficient)
    with torch.no_grad():
        x = field.render(shape)[0, channel].double()
    a = x * problem.spec.std[c] + problem.spec.mean[c]
    return (a.clamp(*problem.levels) if clip else a).numpy()


def transfer(
    renderer: nn.Module, problem: Problem, truth: np.ndarray, factor: int
) -> dict[str, float] | None:
    """The resolution-transfer scores of the module docstring, or ``None`` if no neural
    field draws the coefficient."""
    found = coefficient_field(renderer, problem)
    if found is None:
        return None
    field, channel = found
    clip = isinstance(renderer, PhysicsRenderer)
    coarse = render_coefficient(field, channel, problem, None, clip)
    fine_shape = [factor * (n - 1) + 1 for n in coarse.shape]
    fine = render_coefficient(field, channel, problem, fine_shape, clip)
    shared = fine[(slice(None, None, factor),) * fine.ndim]
    truth_up, coarse_up = nearest_upsample(truth, factor), nearest_upsample(coarse, factor)

    def rate(pred: np.ndarray, ref: np.ndarray) -> float:
        return float(threshold_error_rate(pred[None], ref[None], levels=problem.levels)[0])

    def rel(pred: np.ndarray, ref: np.ndarray) -> float:
        return float(relative_l2(pred[None], ref[None])[0])

    return {
        "fine_shape": fine_shape,
        "agreement_max_abs": float(np.abs(shared - coarse).max()),
        "agreement_rel_l2": rel(shared, coarse),
        "agreement_flip_rate": rate(shared, coarse),
        "error_rate_coarse": rate(coarse, truth),
        "error_rate_shared": rate(shared, truth),
        "error_rate_fine": rate(fine, truth_up),
        "error_rate_upsampled": rate(coarse_up, truth_up),
        "rel_l2_fine": rel(fine, truth_up),
        "rel_l2_upsampled": rel(coarse_up, truth_up),
    }


def fit_record(
    problem: Problem,
    ds: xr.Dataset,
    index: int,
    renderer: str,
    args: argparse.Namespace,
) -> dict:
    """Draw sample ``index``'s sensors, fit ``renderer``, score it: one record of the JSON."""
    obs = draw_observations(ds, problem.spec, "inverse", index, args.seed, points=args.points)
    obs_seed, solve_seed = sample_seeds(args.seed, index)
    record = {
        "sample": index,
        "renderer": renderer,
        "obs_seed": obs_seed,
        "solve_seed": solve_seed,
        "n_obs": {f: int(o.size) for f, o in obs.fields.items()},
        "scores": None,
        "residual": None,
        "transfer": None,
        "error": "",
    }
    try:
        render, result, seconds = fit(problem, obs, renderer, args.sds, solve_seed)
    except FloatingPointError as e:  # a diverged fit is a result; bad settings are not
        return {**record, "error": f"{type(e).__name__}: {e}"}
    truth = truth_of(ds, problem.spec, index)
    record.update(score_fit(problem, result.fields, truth))
    record["transfer"] = transfer(render, problem, truth[problem.coefficient], args.factor)
    record.update(
        seconds=seconds,
        sds_seconds=result.seconds,
        final_losses={k: v[-1] for k, v in result.history.items()},
    )
    return record


# ------------------------------------------------------------------------------ summaries


def fit_rows(fits: Sequence[dict], spec: FieldSpec) -> list[dict]:
    """The fits as rows of an :class:`~pdediff.solve.evaluate.Evaluation` (method
    ``sds:RENDERER``, one member), so that they are summarised as ``evaluate`` does."""
    rows = []
    for rec in fits:
        for f in spec.variables:
            row = dict.fromkeys(COLUMNS)
            row.update(
                method=f"sds:{rec['renderer']}",
                sample=rec["sample"],
                field=f,
                observed=f in rec["n_obs"],
                n_obs=rec["n_obs"].get(f, 0),
                obs_seed=rec["obs_seed"],
                members=1,
                error=rec["error"],
            )
            if rec["scores"] is not None:
                row.update(rec["scores"][f], residual=rec["residual"], seconds=rec["seconds"])
            rows.append(row)
    return rows


def stats(values: Sequence[float]) -> dict[str, float | int] | None:
    """``{"mean", "std", "n"}`` (std with ``ddof=0``) of the finite values, as in the
    summaries of ``evaluate``; ``None`` if there are none."""
    a = np.asarray([v for v in values if v is not None], np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return None
    return {"mean": float(a.mean()), "std": float(a.std()), "n": int(a.size)}


def transfer_summary(fits: Sequence[dict], renderers: Sequence[str]) -> dict:
    """``renderer -> metric -> stats`` over the samples, for renderers with a neural field."""
    out = {}
    for r in renderers:
        done = [rec["transfer"] for rec in fits if rec["renderer"] == r and rec["transfer"]]
        if done:
            out[r] = {k: stats([t[k] for t in done]) for k in TRANSFER_KEYS}
            out[r]["fine_shape"] = done[0]["fine_shape"]
    return out


def method_label(method: str, members: int, preset: str) -> str:
    if method.startswith("sds:"):
        return f"SDS {method[4:]}"
    return f"diffusion ({preset}, M={members})" if method == "diffusion" else method


def comparison_table(summary: Mapping, methods: Sequence[str], labels: Mapping) -> str:
    """Errors in % (± standard error), the residual and seconds as means."""
    header = ["method", "a error rate %", "a error rate % (member)", "a rel L2 %", "u rel L2 %"]
    header += ["PDE residual (rel)", "s/sample", "n", "failed"]
    rows = []
    for m in methods:
        a, u = summary.get(m, {}).get("a", {}), summary.get(m, {}).get("u", {})
        rows.append(
            [
                labels[m],
                fmt(a.get("error_rate_mean"), 100, sem=True),
                fmt(a.get("error_rate_member"), 100, sem=True),
                fmt(a.get("rel_l2_mean"), 100, sem=True),
                fmt(u.get("rel_l2_mean"), 100, sem=True),
                fmt(a.get("residual")),
                fmt(a.get("seconds"), digits=2),
                str((a.get("rel_l2_mean") or {}).get("n", 0)),
                str(a.get("failed", 0)),
            ]
        )
    return markdown(header, rows)


def transfer_table(summary: Mapping) -> str:
    """Agreement and errors of the neural fields rendered on the nested fine grid."""
    header = ["renderer", "fine grid", "max abs Δa shared", "flip % shared", "a err % model grid"]
    header += ["a err % fine, shared nodes", "a err % fine vs nearest truth"]
    header += ["a err % upsampled render", "a rel L2 % fine", "a rel L2 % upsampled", "n"]
    rows = []
    for r, s in summary.items():
        rows.append(
            [
                r,
                "x".join(map(str, s["fine_shape"])),
                fmt(s["agreement_max_abs"]),
                fmt(s["agreement_flip_rate"], 100),
                fmt(s["error_rate_coarse"], 100, sem=True),
                fmt(s["error_rate_shared"], 100, sem=True),
                fmt(s["error_rate_fine"], 100, sem=True),
                fmt(s["error_rate_upsampled"], 100, sem=True),
                fmt(s["rel_l2_fine"], 100, sem=True),
                fmt(s["rel_l2_upsampled"], 100, sem=True),
                str(s["error_rate_fine"]["n"]),
            ]
        )
    return markdown(header, rows)


# ------------------------------------------------------------------------------- the run


def posterior_kwargs(args: argparse.Namespace) -> dict:
    """The ``evaluate`` call of the posterior rows (the sensors of the SDS fits)."""
    return {
        "task": "inverse",
        "points": args.points,
        "fraction": None,
        "noise_std": 0.0,
        "members": args.members,
        "preset": args.preset,
        "protocol": {"steps": args.posterior_steps} if args.posterior_steps else {},
        "samples": args.samples,
        "seed": args.seed,
        "methods": list(args.methods),
        "baseline_options": {},
        "progress": args.progress,
    }


def run_posterior(args: argparse.Namespace, path: Path) -> dict:
    """Run (or with ``--resume`` reuse) the posterior table; what the summary keeps of it."""
    kwargs = posterior_kwargs(args)
    try:
        doc, status = run_part(
            path, args.model, args.data, kwargs, resume=args.resume, overwrite=args.overwrite
        )
    except PdediffError as e:
        raise SystemExit(f"posterior: {e}") from None
    return {
        "table": str(path),
        "status": status,
        "methods": list(args.methods),
        "preset": args.preset,
        "members": args.members,
        "protocol": doc["protocol"],
        "nfe": nfe(doc["protocol"]),
        "complete": doc["complete"],
        "summary": doc["summary"],
    }


def fit_settings(args: argparse.Namespace) -> dict:
    """The settings a fit depends on: a previous fit is reused only if they are the same."""
    keys = ("model", "data", "seed", "points", "factor")
    return json.loads(json.dumps({"sds": args.sds, **{k: getattr(args, k) for k in keys}}))


def previous_fits(out: Path, settings: Mapping, todo: set[tuple[int, str]]) -> list[dict]:
    """The fits of ``out`` made with ``settings`` that are still wanted (``--resume``)."""
    if not out.is_file():
        return []
    doc = json.loads(out.read_text())
    if doc.get("fit_settings") != settings:
        print(f"  rerunning the fits of {out.name} (settings differ)", flush=True)
        return []
    return [f for f in doc.get("fits", []) if (f["sample"], f["renderer"]) in todo]


def summarise(result: dict, args: argparse.Namespace, spec: FieldSpec) -> None:
    """Fill the summary, transfer summary and tables of ``result`` from its fits."""
    fits = sorted(result["fits"], key=lambda f: (f["sample"], args.renderers.index(f["renderer"])))
    summary = dict((result.get("posterior") or {}).get("summary", {}))
    summary.update(Evaluation(rows=fit_rows(fits, spec)).summary())
    methods = [m for m in args.methods if m in summary]
    methods += [f"sds:{r}" for r in args.renderers if f"sds:{r}" in summary]
    labels = {m: method_label(m, args.members, args.preset) for m in methods}
    result["summary"] = summary
    result["transfer"] = transfer_summary(fits, args.renderers)
    result["markdown"] = {
        "comparison": comparison_table(summary, methods, labels),
        "transfer": transfer_table(result["transfer"]),
    }


def report(record: dict) -> None:
    """One line per fit: the scores of ``a`` and the residual, or the error."""
    if record["error"]:
        print(f"  failed: {record['error']}", flush=True)
        return
    a = record["scores"]["a"]
    line = f"  a error rate {100 * a['error_rate_mean']:.2f} %, a rel L2 "
    line += f"{100 * a['rel_l2_mean']:.1f} %, u rel L2 "
    line += f"{100 * record['scores']['u']['rel_l2_mean']:.1f} %, residual "
    line += f"{record['residual']:.3g}, {record['seconds']:.1f} s"
    print(line, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="checkpoint directory of a Darcy (a, u) model")
    p.add_argument("--data", required=True, help="Darcy test set (.nc or .zarr)")
    p.add_argument("--samples", type=int, default=5, help="first K test samples")
    p.add_argument("--points", type=int, default=500, help="random sensors of u per sample")
    p.add_argument("--seed", type=int, default=0, help="seed of sensors, fits and sampling")
    p.add_argument("--renderers", nargs="+", default=list(RENDERERS), choices=list(RENDERERS))
    p.add_argument("--steps", type=int, default=SDS_DEFAULTS["steps"], help="SDS steps")
    p.add_argument("--lr", type=float, default=SDS_DEFAULTS["lr"], help="SDS Adam step")
    p.add_argument(
        "--obs-weight",
        type=float,
        default=SDS_DEFAULTS["obs_weight"],
        help="weight of the squared observation misfit in the SDS loss",
    )
    p.add_argument("--ellipses", type=int, default=SDS_DEFAULTS["ellipses"])
    p.add_argument(
        "--methods",
        nargs="*",
        default=list(POSTERIOR_METHODS),
        choices=POSTERIOR_METHODS,
        help="posterior rows (evaluate methods); none: SDS only",
    )
    p.add_argument("--members", type=int, default=8, help="posterior ensemble size")
    p.add_argument("--preset", default="pdediff", help="preset of the posterior row")
    p.add_argument("--posterior-steps", type=int, help="sampler steps (default: the preset's)")
    p.add_argument(
        "--transfer-factor",
        dest="factor",
        type=int,
        default=2,
        help="fine grid of FACTOR (n - 1) + 1 nodes per dim (2: 64 -> 127)",
    )
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--resume", action="store_true", help="keep fits and tables already made")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--progress", action="store_true", help="progress bar of the posterior")
    p.add_argument("--out", required=True, help="summary JSON; the posterior table in OUT_STEM/")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The arguments, checked, with ``sds``: the settings of every fit."""
    args = build_parser().parse_args(argv)
    if args.factor < 2:
        raise SystemExit(f"--transfer-factor must be >= 2, got {args.factor}")
    if args.samples < 1 or args.points < 1:
        raise SystemExit("--samples and --points must be >= 1")
    if Path(args.out).suffix != ".json":
        raise SystemExit(f"--out must be a .json file, got {args.out}")
    args.renderers = list(dict.fromkeys(args.renderers))
    args.sds = {**SDS_DEFAULTS, "steps": args.steps, "lr": args.lr}
    args.sds.update(obs_weight=args.obs_weight, ellipses=args.ellipses)
    return args


def open_problem(args: argparse.Namespace) -> tuple[xr.Dataset, Problem]:
    """The test set and the model, checked before any work."""
    ds = open_fields(args.data)
    if args.samples > ds.sizes[SAMPLE_DIM]:
        raise SystemExit(f"--samples {args.samples}: {args.data} has {ds.sizes[SAMPLE_DIM]}")
    try:
        return ds, load_problem(args.model, ds)
    except PdediffError as e:
        raise SystemExit(f"{args.model}: {e}") from None


def run_fits(result: dict, problem: Problem, ds: xr.Dataset, args: argparse.Namespace) -> None:
    """Every (sample, renderer) fit not in ``result["fits"]`` yet, saving after each."""
    todo = [(i, r) for i in range(args.samples) for r in args.renderers]
    done = {(f["sample"], f["renderer"]) for f in result["fits"]}
    for k, (index, renderer) in enumerate(todo):
        if (index, renderer) in done:
            continue
        print(f"[{k + 1}/{len(todo)}] sample {index} sds:{renderer}", flush=True)
        try:
            record = fit_record(problem, ds, index, renderer, args)
        except PdediffError as e:
            raise SystemExit(f"sds:{renderer}: {e}") from None
        report(record)
        result["fits"].append(record)
        save(result, args.out)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    family = check_family(args.data, "darcy")
    out = Path(args.out)
    posterior_path = out.with_suffix("") / "posterior.json"
    check_outputs([out, posterior_path] if args.methods else [out], args.resume, args.overwrite)
    ds, problem = open_problem(args)
    settings = fit_settings(args)
    wanted = {(i, r) for i in range(args.samples) for r in args.renderers}
    result = {
        "note": "inverse Darcy from sensors of u: SDS per renderer vs posterior sampling on "
        "the same samples and sensors (seeds (seed, i)); resolution transfer of the neural "
        "fields (see the script's docstring for what is measured)",
        "family": family,
        "model": args.model,
        "data": args.data,
        "settings": {k: v for k, v in vars(args).items() if k not in ("progress", "sds")},
        "fit_settings": settings,
        "threads": torch.get_num_threads(),
        "posterior": None,
        "fits": previous_fits(out, settings, wanted) if args.resume else [],
    }
    if args.methods:
        print("[posterior] " + ", ".join(args.methods), flush=True)
        posterior_path.parent.mkdir(parents=True, exist_ok=True)
        result["posterior"] = run_posterior(args, posterior_path)
        save(result, out)
    run_fits(result, problem, ds, args)
    summarise(result, args, problem.spec)
    save(result, out)
    print("\n" + result["markdown"]["comparison"])
    if result["transfer"]:
        print("\nresolution transfer of the neural fields\n" + result["markdown"]["transfer"])
    return result


if __name__ == "__main__":
    main()
