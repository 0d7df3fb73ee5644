"""Evaluation of a trained model, and of classical baselines, on a whole test set.

For each test sample ``i`` the observations are drawn from the truth with a seed derived
from ``(seed, i)`` (:func:`sample_seeds`, :func:`draw_observations`): ``points`` random grid
points per observed field, as in DiffusionPDE.  The task picks the observed fields
(``forward``: the coefficient fields, ``inverse``: the solution fields, ``joint``: all), and
every method is run on the *same* observations:

* ``diffusion``: :func:`pdediff.solve.solve`, an ensemble of ``members`` posterior samples;
* ``interp-solve`` (forward, joint; Darcy, Poisson, Helmholtz; forward Navier-Stokes):
  :func:`pdediff.baselines.interpolate_then_solve`, with the ``u`` sensors held in a joint
  task;
* ``pde-fit`` (inverse; Darcy, Poisson, Helmholtz, Navier-Stokes):
  :func:`pdediff.baselines.pde_constrained_fit`;
* ``fno`` (forward, inverse; any family): a trained :class:`pdediff.baselines.FNOBaseline`
  (``baseline_options={"fno": {"model": DIR}}``, one FNO per task) reads the sensors of its
  source field and predicts its target field;
* ``exact-prior`` (forward Darcy, noise-free sensors): members of the exact posterior under
  the prior the test data were drawn from
  (:func:`pdediff.baselines.exact_prior.darcy_exact_posterior`), a reference for the
  learned prior and the Bayes floor of the error, not a method a user could run on real
  data (``baseline_options={"exact-prior": {"members": N}}``: its ensemble size, default
  ``members``).

Each (method, sample, field) gives one row of scores from :mod:`pdediff.metrics`; the
baselines are point estimates (one "member"), so their probabilistic scores are left out
except the CRPS, which for one member is the mean absolute error.  The table goes to JSON
(rows, summary, rank histograms and the settings) and CSV (the rows), both rewritten
atomically after every sample, so a crash loses at most the sample in progress.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

from pdediff import __version__
from pdediff.errors import DataError, PdediffError
from pdediff.io.conventions import (
    SAMPLE_DIM,
    attrs_params,
    dataset_params,
    plain_value,
    sample_variables,
)
from pdediff.io.fieldspec import FieldSpec
from pdediff.io.observations import FieldObservations, Observations, observations_from_truth
from pdediff.io.store import atomic_path, open_fields
from pdediff.metrics import (
    coverage,
    crps_ensemble,
    rank_histogram,
    relative_l2,
    residual_norm,
    spread_skill,
    threshold_error_rate,
)
from pdediff.pde.base import Grid, PDEFamily
from pdediff.pde.registry import FAMILIES
from pdediff.solve.api import (
    TASKS,
    condition_params,
    model_family,
    observed_points,
    resolve_protocol,
    select_task,
)
from pdediff.solve.posterior import Protocol

__all__ = [
    "COLUMNS",
    "METHODS",
    "Evaluation",
    "check_methods",
    "draw_observations",
    "evaluate",
    "observed_count",
    "sample_seeds",
]

METHODS = ("diffusion", "interp-solve", "pde-fit", "fno", "exact-prior")
#: Tasks each method can solve (the baselines need the coefficient, resp. solution, sensors).
METHOD_TASKS = {
    "diffusion": TASKS,
    "interp-solve": ("forward", "joint"),
    "pde-fit": ("inverse",),
    "fno": ("forward", "inverse"),
    "exact-prior": ("forward",),
}
ENSEMBLE_METHODS = frozenset({"diffusion", "exact-prior"})
#: Methods for one family only (the prior they know).
FAMILY_METHODS = {"exact-prior": "darcy"}
BASELINE_FAMILIES = ("darcy", "poisson", "helmholtz", "navier_stokes")
#: The methods that need a family of :data:`BASELINE_FAMILIES` (a reference solver).
CLASSICAL_METHODS = frozenset({"interp-solve", "pde-fit"})
COVERAGE_LEVEL = 0.9
#: The columns of a row, in the order of the CSV.
COLUMNS = (
    "method",
    "sample",
    "field",
    "observed",
    "n_obs",
    "obs_seed",
    "members",
    "rel_l2_mean",
    "rel_l2_member",
    "error_rate_mean",
    "error_rate_member",
    "residual",
    "crps",
    "coverage90",
    "spread_skill",
    "seconds",
    "error",
    "condition",
)
#: The columns summarised as mean and std over the samples.
METRICS = COLUMNS[7:16]


# ----------------------------------------------------------------------------- seeds, data


def sample_seeds(seed: int, index: int) -> tuple[int, int]:
    """Seeds of test sample ``index``: its observation draw and its posterior sampling.

    Both come from ``numpy.random.SeedSequence([seed, index])``, so samples get independent
    streams and a sample's observations do not depend on which others are evaluated.
    """
    if int(seed) != seed or seed < 0:
        raise PdediffError(f"seed must be an integer >= 0, got {seed}")
    obs_seed, solve_seed = np.random.SeedSequence([int(seed), int(index)]).generate_state(2)
    return int(obs_seed), int(solve_seed)


def draw_observations(
    ds: xr.Dataset,
    spec: FieldSpec,
    task: str,
    index: int,
    seed: int = 0,
    *,
    points: int | None = 500,
    fraction: float | None = None,
    noise_std: float | Mapping[str, float] = 0.0,
    layout: str = "points",
) -> Observations:
    """The observations of test sample ``index`` that every method gets.

    Every field of the model is drawn (:func:`~pdediff.io.observations.observations_from_truth`
    with the first seed of :func:`sample_seeds`), then the task keeps its fields
    (:func:`~pdediff.solve.api.select_task`): a field's sensors are therefore the same in
    the forward, inverse and joint tasks.  ``fraction`` overrides ``points``.
    """
    obs, _ = observations_from_truth(
        ds,
        spec.variables,
        points,
        fraction=fraction,
        seed=sample_seeds(seed, index)[0],
        noise_std=noise_std,
        layout=layout,
        sample=index,
    )
    return select_task(obs, spec, task)


def observed_count(ds: xr.Dataset, spec: FieldSpec, task: str, **draw: Any) -> float:
    """Observed points per field of ``task`` in the draws of ``draw`` (the keyword
    arguments of :func:`draw_observations`; the same count for every sample): the
    ``points`` for which :func:`~pdediff.solve.api.model_guidance` picks settings."""
    return observed_points(draw_observations(ds, spec, task, 0, **draw))


def _open(data: str | os.PathLike | xr.Dataset) -> tuple[xr.Dataset, str]:
    if isinstance(data, xr.Dataset):
        return data, "<in-memory Dataset>"
    return open_fields(data), str(data)


def _check_data(ds: xr.Dataset, spec: FieldSpec, where: str) -> None:
    """The test set must hold the model's fields on its grid, from the same PDE."""
    try:
        spec.check_compatible(ds)
    except DataError as e:
        raise DataError(f"test set {where} does not fit the model: {e}") from None
    if SAMPLE_DIM not in ds.dims:
        raise DataError(f"test set {where} has no {SAMPLE_DIM!r} dim")
    model_pde, data_pde = spec.attrs.get("pde"), ds.attrs.get("pde")
    if model_pde is not None and data_pde is not None and str(model_pde) != str(data_pde):
        raise DataError(
            f"test set {where} holds {data_pde!r} data but the model was trained on "
            f"{model_pde!r} data"
        )
    model_p = attrs_params(spec.attrs)
    data_p = dataset_params(ds)
    differ = {
        k: (float(model_p[k]), data_p[k])
        for k in sorted(model_p.keys() & data_p.keys())
        if not np.isclose(float(model_p[k]), data_p[k], rtol=1e-9, atol=0.0)
    }
    if differ:
        raise DataError(
            f"PDE parameters of test set {where} differ from the model's training data "
            f"(name: (model, data)): {differ}"
        )


def _indices(ds: xr.Dataset, samples: int | None) -> list[int]:
    n = ds.sizes[SAMPLE_DIM]
    if samples is None:
        return list(range(n))
    if int(samples) != samples or not 1 <= samples <= n:
        raise PdediffError(
            f"samples must be between 1 and {n} (the test set's size), got {samples}"
        )
    return list(range(int(samples)))


def check_methods(methods: Sequence[str], task: str, family: PDEFamily | None) -> tuple[str, ...]:
    """The methods, deduplicated, if each is known and solves ``task`` for ``family``."""
    if task not in TASKS:
        raise PdediffError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    methods = tuple(dict.fromkeys(methods))
    if not methods:
        raise PdediffError(f"no method given; choose from {', '.join(METHODS)}")
    for m in methods:
        if m not in METHODS:
            raise PdediffError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
        if task not in METHOD_TASKS[m]:
            raise PdediffError(
                f"method {m!r} does not solve the {task} task (it solves "
                f"{' and '.join(METHOD_TASKS[m])})"
            )
        name = family.name if family is not None else None
        if m in CLASSICAL_METHODS and name not in BASELINE_FAMILIES:
            what = f"is {name!r}" if name else "names no known PDE family (attribute 'pde')"
            raise PdediffError(
                f"method {m!r} needs a {', '.join(BASELINE_FAMILIES)} test set; this one {what}"
            )
        if m in FAMILY_METHODS and name != FAMILY_METHODS[m]:
            raise PdediffError(
                f"method {m!r} knows the prior of {FAMILY_METHODS[m]!r} data only; this "
                f"test set is {name!r}"
            )
    return methods


# ------------------------------------------------------------------------------ the methods


@dataclass(frozen=True)
class _Context:
    """What every method and score of one evaluation needs."""

    checkpoint: str
    spec: FieldSpec
    task: str
    family: PDEFamily | None
    params: dict[str, float]
    grid: Grid
    levels: dict[str, tuple[float, float]]
    members: int
    preset: str
    protocol: dict
    use_pde: bool
    options: dict[str, dict]
    fno: Any = None  # the FNOBaseline of the "fno" method, loaded once
    condition: dict | None = None  # of a conditioned model: this test sample's values


def grid_indices(obs: FieldObservations, spec: FieldSpec, name: str) -> np.ndarray:
    """Flat (C-order) grid indices of observations that lie on grid nodes."""
    index = []
    for d in spec.dims:
        c, p = np.asarray(spec.coords[d]), obs.positions[d]
        k = np.abs(c[None, :] - p[:, None]).argmin(axis=1)
        if not np.allclose(c[k], p, rtol=0.0, atol=1e-9 * max(1.0, float(np.ptp(c)))):
            raise PdediffError(f"the baselines need observations of {name!r} on grid nodes")
        index.append(k)
    return np.ravel_multi_index(index, spec.shape)


def _run_diffusion(ctx: _Context, obs: Observations, solve_seed: int) -> tuple[dict, float]:
    from pdediff.solve.api import solve

    post = solve(
        ctx.checkpoint,
        obs,
        task=ctx.task,
        members=ctx.members,
        preset=ctx.preset,
        protocol=ctx.protocol,
        use_pde=ctx.use_pde,
        seed=solve_seed,
        progress=False,
        condition=ctx.condition,
    )
    dims = ("member", *ctx.spec.dims)
    est = {f: np.asarray(post[f].transpose(*dims).values, np.float64) for f in ctx.spec.variables}
    return est, float(post.attrs["run_time_s"])


def _run_interp_solve(ctx: _Context, obs: Observations) -> dict:
    from pdediff.baselines import interpolate_then_solve

    name, sol = ctx.family.coefficient_solution()
    a = obs.fields[name]
    kwargs = dict(ctx.options.get("interp-solve", {}))
    if sol in obs.fields:  # joint task: hold u at its sensors
        kwargs.update(
            u_idx=grid_indices(obs.fields[sol], ctx.spec, sol), u_values=obs.fields[sol].values
        )
    return interpolate_then_solve(
        ctx.family, ctx.grid, ctx.params, grid_indices(a, ctx.spec, name), a.values, **kwargs
    )


def _run_pde_fit(ctx: _Context, obs: Observations) -> dict:
    from pdediff.baselines import pde_constrained_fit

    coef, sol = ctx.family.coefficient_solution()
    u = obs.fields[sol]
    out = pde_constrained_fit(
        ctx.family,
        ctx.grid,
        ctx.params,
        grid_indices(u, ctx.spec, sol),
        u.values,
        **ctx.options.get("pde-fit", {}),
    )
    return {coef: out[coef], sol: out[sol]}


def _load_fno(options: Mapping[str, Any], spec: FieldSpec, task: str) -> Any:
    """The FNO baseline of ``options["model"]``, checked against the model and the task."""
    from pdediff.baselines.fno import FNOBaseline

    if not options.get("model"):
        raise PdediffError(
            "method 'fno' needs a trained FNO baseline for the task: pass --fno-model DIR "
            "(baseline_options={'fno': {'model': DIR}}, a directory of FNOBaseline.save)"
        )
    fno = FNOBaseline.load(options["model"])
    role = "coefficient" if task == "forward" else "solution"
    observed = [
        v for v in spec.variables if spec.variable_attrs.get(v, {}).get("role", "solution") == role
    ]
    where = f"the FNO baseline {options['model']}"
    if fno.source not in observed or fno.target not in spec.variables or fno.target in observed:
        raise PdediffError(
            f"{where} maps {fno.source!r} -> {fno.target!r}, but the {task} task observes "
            f"{observed} of the model's {list(spec.variables)}: pass the FNO trained for the "
            f"{task} task"
        )
    if tuple(fno.shape) != tuple(spec.shape):
        raise PdediffError(
            f"{where} was trained on a {fno.shape} grid; the model's is {spec.shape}"
        )
    return fno


def _run_fno(ctx: _Context, obs: Observations) -> dict:
    """The FNO's prediction of its target field from the sensors of its source field.

    The observed (source) field is returned as the nearest-neighbour fill of its sensors
    (:func:`pdediff.baselines.classical.fill_field`), not as the FNO's input (sensor values
    and the training mean elsewhere), so its scores compare with those of ``interp-solve``.
    """
    from pdediff.baselines.classical import fill_field

    f = obs.fields[ctx.fno.source]
    idx = grid_indices(f, ctx.spec, ctx.fno.source)
    return {
        ctx.fno.source: fill_field(ctx.grid, idx, np.asarray(f.values, np.float64)),
        ctx.fno.target: ctx.fno.predict(idx, f.values),
    }


def _run_exact_prior(ctx: _Context, obs: Observations, solve_seed: int) -> dict:
    from pdediff.baselines.exact_prior import darcy_exact_posterior

    a = obs.fields["a"]
    if a.std is not None and np.any(np.asarray(a.std) > 0):
        raise PdediffError("method 'exact-prior' needs noise-free sensors of a (noise_std = 0)")
    members = int(ctx.options.get("exact-prior", {}).get("members", ctx.members))
    rng = np.random.default_rng(solve_seed)
    idx = grid_indices(a, ctx.spec, "a")
    return darcy_exact_posterior(ctx.grid, ctx.params, idx, a.values, members, rng)


def _run(method: str, ctx: _Context, obs: Observations, solve_seed: int) -> tuple[dict, float]:
    """``field -> (M, *grid)`` estimates and the seconds they took."""
    if method == "diffusion":
        return _run_diffusion(ctx, obs, solve_seed)
    t0 = time.perf_counter()
    if method == "exact-prior":
        est = _run_exact_prior(ctx, obs, solve_seed)
    elif method == "interp-solve":
        est = _run_interp_solve(ctx, obs)
    elif method == "pde-fit":
        est = _run_pde_fit(ctx, obs)
    else:
        est = _run_fno(ctx, obs)
    seconds = time.perf_counter() - t0
    if method not in ENSEMBLE_METHODS:  # a point estimate: one member
        est = {f: np.asarray(v, np.float64)[None] for f, v in est.items()}
    return est, seconds


# ------------------------------------------------------------------------------- the scores


def _residual(ctx: _Context, est: Mapping[str, np.ndarray]) -> float | None:
    """Relative PDE residual of the (ensemble mean) estimate, if the family is known."""
    if ctx.family is None or any(f not in est for f in ctx.family.fields):
        return None
    mean = {f: est[f].mean(axis=0)[None] for f in ctx.family.fields}
    return float(residual_norm(ctx.family, mean, ctx.grid, ctx.params).relative[0])


def score_field(
    ens: np.ndarray,
    truth: np.ndarray,
    *,
    ensemble: bool,
    levels: tuple[float, float] | None = None,
) -> dict[str, float | None]:
    """Scores of one field of one sample: ``ens`` is ``(M, *grid)``, ``truth`` ``grid``.

    ``rel_l2_mean`` / ``error_rate_mean`` score the ensemble mean, ``*_member`` the mean
    over members of each member's score; the error rate only with ``levels``; coverage of
    the central 90 % interval and the spread-skill ratio only for an ``ensemble`` of at
    least two members.
    """
    mean, y = ens.mean(axis=0)[None], truth[None]
    tiled = np.broadcast_to(truth, ens.shape)
    two = ensemble and ens.shape[0] >= 2
    out: dict[str, float | None] = {
        "rel_l2_mean": float(relative_l2(mean, y)[0]),
        "rel_l2_member": float(relative_l2(ens, tiled).mean()),
        "error_rate_mean": None,
        "error_rate_member": None,
        "crps": float(crps_ensemble(ens, truth)),
        "coverage90": float(coverage(ens, truth, COVERAGE_LEVEL)) if two else None,
        "spread_skill": float(spread_skill(ens, truth)) if two else None,
    }
    if levels is not None:
        out["error_rate_mean"] = float(threshold_error_rate(mean, y, levels=levels)[0])
        out["error_rate_member"] = float(threshold_error_rate(ens, tiled, levels=levels).mean())
    return out


# ---------------------------------------------------------------------------- the result


def _clean(x: Any) -> Any:
    """JSON-safe copy: numpy scalars and arrays to Python, NaN/inf to ``None``."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _stats(values: list[float]) -> dict[str, float | int]:
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    return {"mean": float(a.mean()), "std": float(a.std()), "n": int(a.size)}


@dataclass
class Evaluation:
    """Rows of scores, rank histograms and the settings of one evaluation.

    Attributes
    ----------
    rows
        One dict per (method, sample, field) with the keys :data:`COLUMNS`; a score that
        does not apply is ``None``; ``error`` is the message of a failed method, else ``""``.
    rank_histograms
        ``method -> field -> (M + 1,)`` counts pooled over samples and grid points
        (ensemble methods only).
    meta
        Command, model, data, task, seed, protocol and the other settings; ``complete``
        and ``samples_done`` say how far the evaluation got.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    rank_histograms: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``method -> field -> metric -> {"mean", "std", "n"}`` over the samples (std with
        ``ddof=0``, ``None`` and NaN/inf left out) and ``failed``, the failed samples."""
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in self.rows:
            groups.setdefault((row["method"], row["field"]), []).append(row)
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for (method, name), rows in groups.items():
            entry: dict[str, Any] = {"failed": sum(bool(r["error"]) for r in rows)}
            for metric in METRICS:
                values = [r[metric] for r in rows if r[metric] is not None]
                if np.isfinite(values).any():
                    entry[metric] = _stats(values)
            out.setdefault(method, {})[name] = entry
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: the settings, ``summary``, ``rank_histogram`` and ``rows``."""
        return _clean(
            {
                **self.meta,
                "summary": self.summary(),
                "rank_histogram": self.rank_histograms,
                "rows": self.rows,
            }
        )

    def table(self):
        """The rows as a :class:`pandas.DataFrame` (columns :data:`COLUMNS`)."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(COLUMNS))

    def write(self, path: str | os.PathLike, overwrite: bool = False) -> tuple[Path, Path]:
        """Write ``path`` (JSON) and the rows as CSV beside it (same stem), atomically."""
        json_path, csv_path = table_paths(path)
        with atomic_path(json_path, overwrite) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        with atomic_path(csv_path, overwrite) as tmp:
            _write_csv(self.rows, tmp)
        return json_path, csv_path

    def format(self) -> str:
        """The summary as a text table (relative errors in %)."""
        return format_summary(self.summary())


def table_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``TABLE.json`` and the ``TABLE.csv`` beside it; a clear error for another suffix."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        raise PdediffError(f"the evaluation table must be a .json file, got {str(path)!r}")
    return path, path.with_suffix(".csv")


def _write_csv(rows: list[dict[str, Any]], tmp: Path) -> None:
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for row in rows:
            cells = [_clean(row[c]) for c in COLUMNS]
            writer.writerow(
                ["" if v is None else repr(v) if isinstance(v, float) else v for v in cells]
            )


#: (metric, header, scale) of the printed summary.
_SHOWN = (
    ("rel_l2_mean", "rel L2 mean %", 100.0),
    ("rel_l2_member", "rel L2 member %", 100.0),
    ("error_rate_mean", "err rate %", 100.0),
    ("residual", "residual", 1.0),
    ("crps", "CRPS", 1.0),
    ("coverage90", "cov 90%", 1.0),
    ("spread_skill", "spread/skill", 1.0),
    ("seconds", "s/sample", 1.0),
)


def format_summary(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """A text table of a :meth:`Evaluation.summary`: mean ± std per method and field."""
    header = ["method", "field", "n", *[h for _, h, _ in _SHOWN]]
    lines = []
    for method, per_field in summary.items():
        for name, entry in per_field.items():
            n = max((s["n"] for k, s in entry.items() if k in METRICS), default=0)
            cells = [
                method,
                name,
                f"{n}" + (f" ({entry['failed']} failed)" if entry["failed"] else ""),
            ]
            for metric, _, scale in _SHOWN:
                s = entry.get(metric)
                cells.append(
                    "-" if s is None else f"{scale * s['mean']:.3g} ± {scale * s['std']:.2g}"
                )
            lines.append(cells)
    widths = [max(len(r[k]) for r in [header, *lines]) for k in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *lines]
    )


# ----------------------------------------------------------------------------- evaluation


def _check_parameters(spec: FieldSpec, ds: xr.Dataset, family, where: str) -> None:
    """A PDE parameter may vary per test sample only if the model is conditioned on it
    (each sample is then solved, and scored, with its own value)."""
    varying = [
        v
        for v in sample_variables(ds)
        if family is not None and v in family.defaults and v not in spec.conditions
    ]
    if varying:
        raise PdediffError(
            f"{where} varies the PDE parameter(s) {varying} per sample, but the model is not "
            f"conditioned on them and evaluate uses one value of each; generate the test "
            f"data with --param NAME=VALUE"
        )


def _sample_condition(spec: FieldSpec, sel: xr.Dataset) -> dict | None:
    """The model's conditions for one test sample: its per-sample variables (numbers for
    the scalar conditions, the class name for the label); None for an unconditioned model."""
    if not spec.condition_names:
        return None
    out: dict[str, float | str] = {n: float(sel[n].values) for n in spec.conditions}
    if spec.label:
        out[spec.label["name"]] = str(plain_value(sel[spec.label["name"]].values.item()))
    return out


def _levels(family: PDEFamily | None, params: Mapping, spec: FieldSpec) -> dict:
    """The two values of a thresholded coefficient (Darcy ``a``), for the error rate."""
    if family is None or family.name != "darcy" or "a" not in spec.variables:
        return {}
    full = family.params(params)
    return {"a": (full["a_low"], full["a_high"])}


def _for_sample(ctx: _Context, condition: dict | None) -> _Context:
    """The context of one test sample of a conditioned model: its condition, and the
    family (of its label's class) and parameters (its conditions) it selects."""
    if condition is None:
        return ctx
    family = model_family(ctx.spec, condition) if ctx.spec.label else ctx.family
    params = condition_params(family, ctx.spec, condition)
    return replace(
        ctx,
        condition=condition,
        family=family,
        params=params,
        levels=_levels(family, params, ctx.spec),
    )


def _class_families(spec: FieldSpec, family: PDEFamily | None) -> list[PDEFamily | None]:
    """The family of every class of a model across families, else ``[family]``."""
    if not spec.label:
        return [family]
    return [model_family(spec, {spec.label["name"]: c}) for c in spec.label["classes"]]


def _context(
    checkpoint: str | os.PathLike,
    ds: xr.Dataset,
    where: str,
    task: str,
    methods: Sequence[str],
    settings: Mapping[str, Any],
) -> tuple[_Context, tuple[str, ...]]:
    """Check the model, data, task and methods before any work; the shared context."""
    from pdediff.train import read_checkpoint

    spec = read_checkpoint(checkpoint).fieldspec
    _check_data(ds, spec, where)
    family = FAMILIES.get(str(ds.attrs.get("pde")))
    _check_parameters(spec, ds, family, where)
    for each in _class_families(spec, family):
        methods = check_methods(methods, task, each)
    params = {k: v for k, v in dataset_params(ds).items() if family and k in family.defaults}
    levels = _levels(family, params, spec)
    if int(settings["members"]) != settings["members"] or settings["members"] < 1:
        raise PdediffError(f"members must be an integer >= 1, got {settings['members']}")
    resolve_protocol(checkpoint, settings["preset"], task, settings["protocol"])
    options = {str(k): dict(v) for k, v in (settings.get("baseline_options") or {}).items()}
    fno = None
    if "fno" in methods:
        given = options.get("fno", {}).items()
        options["fno"] = {k: str(v) if isinstance(v, os.PathLike) else v for k, v in given}
        fno = _load_fno(options["fno"], spec, task)
    ctx = _Context(
        checkpoint=str(checkpoint),
        spec=spec,
        task=task,
        family=family,
        params=params,
        grid=spec.grid(),
        levels=levels,
        members=int(settings["members"]),
        preset=settings["preset"],
        protocol=dict(settings["protocol"] or {}),
        use_pde=bool(settings["use_pde"]),
        options=options,
        fno=fno,
    )
    return ctx, methods


class _Sample(NamedTuple):
    """One test sample: its observations, seeds and true fields ``(*grid)``."""

    index: int
    obs: Observations
    obs_seed: int
    solve_seed: int
    truth: dict[str, np.ndarray]


def _evaluate_sample(
    result: Evaluation,
    ctx: _Context,
    ds: xr.Dataset,
    index: int,
    methods: Sequence[str],
    draw: Mapping[str, Any],
    seed: int,
    bar: Any,
) -> None:
    """Draw sample ``index``'s observations once, run every method on them, add the rows."""
    sel = ds.isel({SAMPLE_DIM: index})
    ctx = _for_sample(ctx, _sample_condition(ctx.spec, sel))
    sample = _Sample(
        index,
        draw_observations(ds, ctx.spec, ctx.task, index, seed, **draw),
        *sample_seeds(seed, index),
        {
            f: np.asarray(sel[f].transpose(*ctx.spec.dims).values, np.float64)
            for f in ctx.spec.variables
        },
    )
    for method in methods:
        try:
            est, seconds = _run(method, ctx, sample.obs, sample.solve_seed)
            error = ""
        except (PdediffError, FloatingPointError) as e:
            if method == "diffusion" and isinstance(e, PdediffError):
                raise  # a bad protocol or model, not a property of this sample
            est, seconds, error = {}, None, f"{type(e).__name__}: {e}"
        _add_rows(result, ctx, method, sample, est, seconds, error)
        bar.update(1)


def _add_rows(
    result: Evaluation,
    ctx: _Context,
    method: str,
    sample: _Sample,
    est: Mapping[str, np.ndarray],
    seconds: float | None,
    error: str,
) -> None:
    """One row per field of the model (empty scores where the method failed)."""
    residual = _residual(ctx, est) if est else None
    ensemble = method in ENSEMBLE_METHODS
    obs = sample.obs.fields
    for name in ctx.spec.variables:
        scores: dict[str, Any] = dict.fromkeys(METRICS)
        if name in est:
            truth = sample.truth[name]
            levels = ctx.levels.get(name)
            scores.update(score_field(est[name], truth, ensemble=ensemble, levels=levels))
            scores.update(residual=residual, seconds=seconds)
        if name in est and ensemble:
            rng = np.random.default_rng(sample.obs_seed)  # breaks ties only
            counts = rank_histogram(est[name], sample.truth[name], rng)
            hist = result.rank_histograms.setdefault(method, {})
            hist[name] = hist[name] + counts if name in hist else counts
        result.rows.append(
            {
                "method": method,
                "sample": sample.index,
                "field": name,
                "observed": name in obs,
                "n_obs": obs[name].size if name in obs else 0,
                "obs_seed": sample.obs_seed,
                "members": est[name].shape[0] if name in est else None,
                **scores,
                "error": error,
                "condition": json.dumps(ctx.condition) if ctx.condition else "",
            }
        )


def evaluate(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike | xr.Dataset,
    *,
    task: str = "inverse",
    points: int | None = 500,
    fraction: float | None = None,
    noise_std: float | Mapping[str, float] = 0.0,
    layout: str = "points",
    members: int = 8,
    preset: str = "pdediff",
    protocol: Mapping | None = None,
    use_pde: bool = True,
    samples: int | None = None,
    seed: int = 0,
    methods: Sequence[str] = ("diffusion",),
    baseline_options: Mapping[str, Mapping] | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    resume: bool = False,
    command: str | None = None,
    progress: bool = True,
) -> Evaluation:
    """Score a trained model (and baselines) on a test set, from observations drawn per sample.

    Parameters
    ----------
    checkpoint
        A ``pdediff train`` checkpoint directory.
    data
        The test set (a field file or Dataset with a ``sample`` dim): the model's fields
        on its grid, from the same PDE family and parameters.  A conditioned model (``train
        --condition``, ``--label``) gets each test sample's own values of its conditions
        (the test set's per-sample variables; recorded in the ``condition`` column), the
        PDE residual, solver and baselines that sample's parameters and, for a label of
        PDE families (``pdediff merge``), its family.
    task
        ``forward``, ``inverse`` or ``joint``: which fields are observed.
    points, fraction
        Observed grid points per field (``fraction`` of the grid points overrides
        ``points``); with ``layout="columns"`` the number of sensor columns.
    noise_std
        Standard deviation of the Gaussian noise added to the observations (physical
        units; one value or ``field -> value``).
    members, preset, protocol, use_pde
        As in :func:`pdediff.solve.solve` (``protocol`` overrides the preset's fields).
    samples
        Evaluate the first ``samples`` test samples (default: all).
    seed
        Master seed: sample ``i`` uses the seeds :func:`sample_seeds` ``(seed, i)``.
    methods
        Any of :data:`METHODS`; every method gets the same observations of a sample.
    baseline_options
        Keyword arguments per baseline, e.g. ``{"pde-fit": {"max_iter": 100}}``; the
        ``fno`` method needs ``{"fno": {"model": DIR}}``, the FNO baseline of the task.
    out
        ``TABLE.json``: written, with ``TABLE.csv``, after every sample (atomically).
    overwrite
        Replace an existing table.
    resume
        Continue the table at ``out``: keep the samples it has done (their rows and rank
        histograms) and evaluate the rest, so an interrupted run, or a table extended to
        more samples, loses nothing.  Every setting of the old table (model, data, task,
        methods, sensors, seed, protocol, ...) must match; ``meta["resumed"]`` records
        which samples came from which earlier run.  A missing table starts from scratch.
    command
        The command line to record (the CLI passes its own).
    progress
        Show a progress bar over samples and methods.

    Returns
    -------
    Evaluation
        Rows, summary, rank histograms and settings.

    Raises
    ------
    PdediffError
        Unknown task, method or preset; a method that does not solve the task or the
        family; a test set that does not fit the model; a table path that is not ``.json``;
        ``fno`` without a model, or with one trained for another task or grid.
        ``resume`` of a table made with other settings (the message names them).
    FileExistsError
        The table (or its CSV) exists and neither ``overwrite`` nor ``resume`` is set.
    """
    from tqdm.auto import tqdm

    ds, where = _open(data)
    settings = {
        "members": members,
        "preset": preset,
        "protocol": protocol,
        "use_pde": use_pde,
        "baseline_options": baseline_options,
    }
    ctx, methods = _context(checkpoint, ds, where, task, methods, settings)
    indices = _indices(ds, samples)
    if out is not None:
        _check_output(out, overwrite or resume)
    draw = {"points": points, "fraction": fraction, "noise_std": noise_std, "layout": layout}
    seen = observed_count(ds, ctx.spec, task, **draw)
    history = ds.attrs.get("history")
    meta = _meta(ctx, where, history, methods, indices, seed, draw, command, seen)
    result = Evaluation(meta=meta)
    if resume and out is not None and table_paths(out)[0].is_file():
        _resume(result, table_paths(out)[0])
    done = result.meta["samples_done"]
    with tqdm(
        total=len(indices) * len(methods), initial=done * len(methods), desc="evaluate",
        disable=not progress,
    ) as bar:  # fmt: skip
        for index in indices[done:]:
            _evaluate_sample(result, ctx, ds, index, methods, draw, seed, bar)
            result.meta["samples_done"] += 1
            result.meta["complete"] = result.meta["samples_done"] == len(indices)
            if out is not None:
                result.write(out, overwrite=True)
    return result


#: Settings an earlier table must share for ``evaluate(resume=True)`` to continue it.
RESUME_MATCHED = (
    "model", "data", "pde", "params", "task", "methods", "seed", "points", "fraction",
    "noise_std", "layout", "members", "preset", "protocol", "use_pde", "baseline_options",
    "coverage_level",
)  # fmt: skip


def stored_protocol(protocol: Mapping | None) -> dict | None:
    """A table's stored protocol with the fields it predates set to their defaults (the
    values they had, in effect, when it was made), for comparison with a protocol now."""
    if protocol is None:
        return None
    return _clean(Protocol().to_dict()) | dict(protocol)


def _resume(result: Evaluation, path: Path) -> None:
    """Take the samples done in the table at ``path`` into ``result`` (see ``evaluate``)."""
    old = json.loads(path.read_text())
    old["protocol"] = stored_protocol(old.get("protocol"))
    now = _clean(result.meta)
    differ = [k for k in RESUME_MATCHED if _clean(old.get(k)) != now.get(k)]
    if differ:
        raise PdediffError(
            f"cannot resume {path}: it was made with other {', '.join(differ)} (e.g. "
            f"{differ[0]} = {old.get(differ[0])!r}, now {now.get(differ[0])!r}); pass "
            "--overwrite to start it again"
        )
    done = int(old.get("samples_done", 0))
    if done > result.meta["samples"]:
        raise PdediffError(
            f"cannot resume {path}: it has {done} samples done, more than the "
            f"{result.meta['samples']} asked for (its pooled rank histograms cannot be cut); "
            "ask for at least as many samples or pass --overwrite"
        )
    # a table older than a column gets it empty: "" for the text columns, None for scores
    blank = dict.fromkeys(COLUMNS) | {"error": "", "condition": ""}
    result.rows = [blank | row for row in old["rows"] if row["sample"] < done]
    result.rank_histograms = {
        method: {name: np.asarray(counts, dtype=np.int64) for name, counts in fields.items()}
        for method, fields in old.get("rank_histogram", {}).items()
    }
    history = list(old.get("resumed", []))  # [first, last + 1) of the samples of each run
    start = history[-1]["samples"][1] if history else 0
    history.append(
        {"samples": [start, done]} | {k: old.get(k) for k in ("created", "command", "pdediff")}
    )
    result.meta.update(samples_done=done, complete=done == result.meta["samples"], resumed=history)


def _check_output(out: str | os.PathLike, overwrite: bool) -> None:
    paths = table_paths(out)
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        verb = "exists" if len(existing) == 1 else "exist"
        raise FileExistsError(
            f"{' and '.join(existing)} {verb}; pass --overwrite (overwrite=True) to replace "
            "it or --resume (resume=True) to continue it"
        )
    if not paths[0].parent.is_dir():
        raise DataError(f"output folder {paths[0].parent} does not exist")


def _meta(
    ctx: _Context,
    where: str,
    history: str | None,
    methods: Sequence[str],
    indices: Sequence[int],
    seed: int,
    draw: Mapping[str, Any],
    command: str | None,
    seen: float,
) -> dict[str, Any]:
    """The table's settings; ``protocol`` as resolved for ``seen`` points per field (``None``
    without the ``diffusion`` method: the baselines do not use it, so a change of the
    model's guidance does not make their tables stale); ``history`` is the test set's
    ``history`` attribute (how it was made)."""
    return {
        "command": command,
        "model": ctx.checkpoint,
        "data": where,
        "data_history": history,
        "pde": ctx.family.name if ctx.family else None,
        "params": ctx.family.params(ctx.params) if ctx.family else {},
        "task": ctx.task,
        "methods": list(methods),
        "seed": seed,
        **{k: (dict(v) if isinstance(v, Mapping) else v) for k, v in draw.items()},
        "members": ctx.members,
        "preset": ctx.preset,
        "protocol": resolve_protocol(
            ctx.checkpoint, ctx.preset, ctx.task, ctx.protocol, seen
        ).to_dict()
        if "diffusion" in methods
        else None,
        "use_pde": ctx.use_pde,
        "baseline_options": ctx.options,
        "coverage_level": COVERAGE_LEVEL,
        "samples": len(indices),
        "samples_done": 0,
        "complete": False,
        "pdediff": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
