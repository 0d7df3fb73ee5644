"""``pdediff demo``: the first thing a newcomer runs.

On the Darcy model shipped with pdediff (:func:`pdediff.models.shipped_model`), or any other
shipped model or model directory (``--model poisson32``), the demo

1. draws a fresh truth (Darcy: ``(a, u)`` of ``-div(a grad u) = 1``, ``a`` a thresholded
   Gaussian random field, as the FNO / DiffusionPDE data) with the reference solver;
2. places ``points`` random sensors on every field;
3. solves the inverse problem (solution sensors -> coefficient) and the forward problem
   (coefficient sensors -> solution) with :func:`pdediff.solve.solve`: an ensemble of
   posterior samples (a family with no coefficient field, Burgers, gets the joint task:
   the whole field from its sensors);
4. runs the classical baselines on the same sensors where the family has them (interpolate
   the coefficient then solve; a regularised PDE-constrained fit of the coefficient) and,
   for Darcy's forward problem, the exact posterior under the prior the truth was drawn
   from (:mod:`pdediff.baselines.exact_prior`: the best any method can do on average), and
   prints the errors and calibration side by side;
5. writes each posterior (with the truth) to NetCDF and a figure of truth, mean, std,
   error and sensors.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import xarray as xr

from pdediff.errors import PdediffError
from pdediff.generate import generate
from pdediff.io.conventions import attrs_params
from pdediff.io.fieldspec import FieldSpec
from pdediff.io.observations import Observations, observations_from_truth
from pdediff.io.store import atomic_path, write_fields
from pdediff.pde.registry import FAMILIES
from pdediff.plot import plot_posterior
from pdediff.solve.api import select_task, solve, task_fields
from pdediff.solve.evaluate import BASELINE_FAMILIES, grid_indices, score_field

#: The classical baseline of each task.
BASELINES = {"inverse": "pde-fit", "forward": "interp-solve"}


def demo_tasks(spec: FieldSpec) -> dict[str, tuple[list[str], str]]:
    """``task -> (observed fields, field scored)``: inverse and forward where the model has
    coefficient and solution fields, else the joint task."""
    tasks = {}
    for task in ("inverse", "forward"):
        observed, inferred = task_fields(spec, task)
        if observed and inferred:
            tasks[task] = (observed, inferred[0])
    return tasks or {"joint": (list(spec.variables), spec.variables[0])}


def _truth(spec: FieldSpec, seed: int) -> xr.Dataset:
    """One fresh sample of the model's family on the model's grid (reference solver)."""
    params = attrs_params(spec.attrs)
    ds = generate(str(spec.attrs["pde"]), 1, spec.shape[-1], params=params, seed=seed)
    spec.check_compatible(ds)
    return ds


def _baseline(
    task: str, observed: str, obs: Observations, spec: FieldSpec, params: dict
) -> dict | None:
    """The classical baseline's fields, or ``None`` where the family has none."""
    from pdediff.baselines import interpolate_then_solve, pde_constrained_fit

    family = str(spec.attrs.get("pde"))
    if task not in BASELINES or family not in BASELINE_FAMILIES:
        return None
    sensors = obs.fields[observed]
    idx, values = grid_indices(sensors, spec, observed), sensors.values
    if task == "forward":
        return interpolate_then_solve(family, spec.grid(), params, idx, values)
    return pde_constrained_fit(family, spec.grid(), params, idx, values)


def _exact(task: str, obs: Observations, spec: FieldSpec, params: dict, members: int, seed: int):
    """Members of the exact posterior (Darcy's forward problem), or ``None``."""
    from pdediff.baselines import darcy_exact_posterior

    if task != "forward" or spec.attrs.get("pde") != "darcy":
        return None
    sensors = obs.fields["a"]
    idx = grid_indices(sensors, spec, "a")
    rng = np.random.default_rng(seed)
    return darcy_exact_posterior(spec.grid(), params, idx, sensors.values, members, rng)


def _calibrated_coverage(members: int, level: float = 0.9) -> float:
    """Expected ``cov90`` of a calibrated ensemble: its interval between the extreme members
    covers ``(M - 1) / (M + 1)`` while that is below ``level`` (see
    :func:`pdediff.metrics.coverage`)."""
    return min(level, (members - 1) / (members + 1))


def _row(name: str, ens: np.ndarray, truth: np.ndarray, levels, seconds: float) -> str:
    s = score_field(ens, truth, ensemble=ens.shape[0] > 1, levels=levels)
    rate = f"{100 * s['error_rate_mean']:6.2f}" if s["error_rate_mean"] is not None else "     -"
    cov = f"{s['coverage90']:5.2f}" if s["coverage90"] is not None else "    -"
    ss = f"{s['spread_skill']:5.2f}" if s["spread_skill"] is not None else "    -"
    return (
        f"  {name:<26} {100 * s['rel_l2_mean']:7.2f} {rate} {cov} {ss} "
        f"{s['crps']:8.3g} {seconds:7.1f}"
    )


def run_demo(
    out: Path,
    model: str | Path | None = None,
    seed: int = 0,
    points: int = 500,
    members: int = 8,
    steps: int | None = None,
) -> dict[str, Path]:
    """Inverse and forward problems from ``points`` sensors on a fresh truth.

    Parameters
    ----------
    out
        Folder for ``inverse.nc``, ``forward.nc`` (``joint.nc``) and their figures (created;
        replaced).
    model
        A shipped model's name (:data:`pdediff.models.SHIPPED`) or a model directory
        (default: the shipped ``darcy64``).
    seed
        Seeds the truth, the sensors and the sampling.
    points, members, steps
        Sensors per field, ensemble size and sampler steps (default: the model's).

    Returns
    -------
    dict
        The paths written.
    """
    from pdediff.models import SHIPPED, shipped_model
    from pdediff.train import read_checkpoint

    if model is None or str(model) in SHIPPED:
        model = shipped_model(str(model or "darcy64"))
    model = Path(model)
    spec = read_checkpoint(model).fieldspec
    if spec.attrs.get("pde") not in FAMILIES:
        raise PdediffError(
            f"the demo draws its truth with the model's reference solver; {model} names no "
            f"known PDE family (attribute 'pde' = {spec.attrs.get('pde')!r})"
        )
    out.mkdir(parents=True, exist_ok=True)
    truth = _truth(spec, seed)
    params = attrs_params(truth.attrs)
    levels = (params["a_low"], params["a_high"]) if "a_low" in params else None
    obs, _ = observations_from_truth(truth, list(spec.variables), count=points, seed=seed)
    print(f"model {model}: {spec.attrs.get('pde')} at {'x'.join(map(str, spec.shape))}")
    print(f"truth drawn with the reference solver (seed {seed}); {points} sensors per field")
    paths: dict[str, Path] = {}
    for task, (observed, target) in demo_tasks(spec).items():
        post = solve(
            model,
            select_task(obs, spec, task),
            task=task,
            members=members,
            protocol={"steps": steps},
            seed=seed,
        )
        t0 = time.perf_counter()
        base = _baseline(task, observed[0], obs, spec, params)
        base_s = time.perf_counter() - t0
        lv = levels if target == "a" else None
        t = truth[target].isel(sample=0).values
        ens = post[target].transpose("member", *spec.dims).values
        print(f"\n{task}: observe {', '.join(observed)} at {points} points -> {target}")
        print(
            f"  {'method':<26} {'relL2%':>7} {'err%':>6} {'cov90':>5} {'s/s':>5} "
            f"{'CRPS':>8} {'seconds':>7}"
        )
        print(_row(f"pdediff ({members} members)", ens, t, lv, post.attrs["run_time_s"]))
        if base is not None:
            print(_row(f"classical ({BASELINES[task]})", base[target][None], t, lv, base_s))
        t0 = time.perf_counter()
        exact = _exact(task, obs, spec, params, members, seed)
        if exact is not None:
            exact_s = time.perf_counter() - t0
            print(_row(f"exact posterior ({members})", exact[target], t, lv, exact_s))
        for f in spec.variables:
            post[f"{f}_true"] = truth[f].isel(sample=0, drop=True)
        paths[task] = write_fields(post, out / f"{task}.nc", overwrite=True)
        fig = out / f"{task}.png"
        with atomic_path(fig, overwrite=True) as tmp:
            plot_posterior(post, tmp, truth=truth.isel(sample=0))
        paths[f"{task}_figure"] = fig
    print(
        ("\nerr% = pixels of a on the wrong side of (a_low + a_high)/2; " if levels else "\n")
        + "cov90 = fraction of truth inside the ensemble's central 90 % interval; s/s = "
        "spread-skill ratio (1 is calibrated)"
        + (
            "; exact posterior = sampled knowing the prior the truth was drawn from, the "
            "best possible on average (a reference, not a method for real data; with "
            f"{members} members even its cov90 is about {_calibrated_coverage(members):.2f})"
            if spec.attrs.get("pde") == "darcy"
            else ""
        )
    )
    print(f"posteriors and figures -> {out}/")
    return paths
