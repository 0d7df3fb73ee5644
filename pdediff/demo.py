"""``pdediff demo``: the first thing a newcomer runs.

On the Darcy model shipped with pdediff (:func:`pdediff.models.shipped_model`), the demo

1. draws a fresh truth ``(a, u)`` of ``-div(a grad u) = 1`` with the reference solver (``a``
   a thresholded Gaussian random field, as the FNO / DiffusionPDE data);
2. places ``points`` random sensors on ``a`` and on ``u``;
3. solves the inverse problem (``u`` sensors -> ``a``) and the forward problem (``a``
   sensors -> ``u``) with :func:`pdediff.solve.solve`: an ensemble of posterior samples;
4. runs the classical baselines on the same sensors (interpolate ``a`` then solve; a
   TV-regularised PDE-constrained fit of ``a``) and prints the errors and calibration side
   by side;
5. writes each posterior (with the truth) to NetCDF and a figure of truth, mean, std,
   error and sensors.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import xarray as xr

from pdediff.generate import generate
from pdediff.io.conventions import attrs_params
from pdediff.io.fieldspec import FieldSpec
from pdediff.io.observations import Observations, observations_from_truth
from pdediff.io.store import atomic_path, write_fields
from pdediff.plot import plot_posterior
from pdediff.solve.api import select_task, solve
from pdediff.solve.evaluate import grid_indices, score_field

#: The observed field, the field scored, and the classical baseline of each task.
TASKS = {"inverse": ("u", "a", "pde-fit"), "forward": ("a", "u", "interp-solve")}


def _truth(spec: FieldSpec, seed: int) -> xr.Dataset:
    """One fresh sample of the model's family on the model's grid (reference solver)."""
    params = attrs_params(spec.attrs)
    ds = generate(str(spec.attrs["pde"]), 1, spec.shape[-1], params=params, seed=seed)
    spec.check_compatible(ds)
    return ds


def _baseline(task: str, obs: Observations, spec: FieldSpec, params: dict) -> dict:
    from pdediff.baselines import interpolate_then_solve, pde_constrained_fit

    observed = TASKS[task][0]
    sensors = obs.fields[observed]
    idx, values = grid_indices(sensors, spec, observed), sensors.values
    if task == "forward":
        return interpolate_then_solve("darcy", spec.grid(), params, idx, values)
    return pde_constrained_fit("darcy", spec.grid(), params, idx, values)


def _row(name: str, ens: np.ndarray, truth: np.ndarray, levels, seconds: float) -> str:
    s = score_field(ens, truth, ensemble=ens.shape[0] > 1, levels=levels)
    rate = f"{100 * s['error_rate_mean']:6.2f}" if s["error_rate_mean"] is not None else "     -"
    cov = f"{s['coverage90']:5.2f}" if s["coverage90"] is not None else "    -"
    ss = f"{s['spread_skill']:5.2f}" if s["spread_skill"] is not None else "    -"
    return (
        f"  {name:<26} {100 * s['rel_l2_mean']:7.2f} {rate} {cov} {ss} "
        f"{s['crps']:8.4f} {seconds:7.1f}"
    )


def run_demo(
    out: Path,
    model: str | Path | None = None,
    seed: int = 0,
    points: int = 500,
    members: int = 8,
    steps: int | None = None,
) -> dict[str, Path]:
    """Inverse and forward Darcy problems from ``points`` sensors on a fresh truth.

    Parameters
    ----------
    out
        Folder for ``inverse.nc``, ``forward.nc`` and their figures (created; replaced).
    model
        A model directory (default: the shipped ``darcy64``).
    seed
        Seeds the truth, the sensors and the sampling.
    points, members, steps
        Sensors per field, ensemble size and sampler steps (default: the model's).

    Returns
    -------
    dict
        The paths written.
    """
    from pdediff.models import shipped_model
    from pdediff.train import read_checkpoint

    model = Path(model) if model is not None else shipped_model("darcy64")
    spec = read_checkpoint(model).fieldspec
    if spec.attrs.get("pde") != "darcy":
        raise ValueError(f"the demo needs a Darcy model; {model} is {spec.attrs.get('pde')!r}")
    out.mkdir(parents=True, exist_ok=True)
    truth = _truth(spec, seed)
    params = attrs_params(truth.attrs)
    levels = (params["a_low"], params["a_high"])
    obs, _ = observations_from_truth(truth, ["a", "u"], count=points, seed=seed)
    print(f"model {model}: {spec.attrs.get('pde')} at {'x'.join(map(str, spec.shape))}")
    print(f"truth drawn with the reference solver (seed {seed}); {points} sensors per field")
    paths: dict[str, Path] = {}
    for task, (observed, target, baseline) in TASKS.items():
        post = solve(
            model,
            select_task(obs, spec, task),
            task=task,
            members=members,
            protocol={"steps": steps},
            seed=seed,
        )
        t0 = time.perf_counter()
        base = _baseline(task, obs, spec, params)
        base_s = time.perf_counter() - t0
        lv = levels if target == "a" else None
        t = truth[target].isel(sample=0).values
        ens = post[target].transpose("member", *spec.dims).values
        print(f"\n{task}: observe {observed} at {points} points -> {target}")
        print(
            f"  {'method':<26} {'relL2%':>7} {'err%':>6} {'cov90':>5} {'s/s':>5} "
            f"{'CRPS':>8} {'seconds':>7}"
        )
        print(_row(f"pdediff ({members} members)", ens, t, lv, post.attrs["run_time_s"]))
        print(_row(f"classical ({baseline})", base[target][None], t, lv, base_s))
        for f in ("a", "u"):
            post[f"{f}_true"] = truth[f].isel(sample=0, drop=True)
        paths[task] = write_fields(post, out / f"{task}.nc", overwrite=True)
        fig = out / f"{task}.png"
        with atomic_path(fig, overwrite=True) as tmp:
            plot_posterior(post, tmp, truth=truth.isel(sample=0))
        paths[f"{task}_figure"] = fig
    print(
        "\nerr% = pixels of a on the wrong side of (a_low + a_high)/2; cov90 = fraction of "
        "truth inside the ensemble's central 90 % interval; s/s = spread-skill ratio "
        "(1 is calibrated)"
    )
    print(f"posteriors and figures -> {out}/")
    return paths
