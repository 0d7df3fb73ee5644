"""Classical baselines on the anchor Darcy setting, compared with ANCHORS.md's figures.

Forward: nearest-neighbour (and linear) interpolation of the sensed permeability, snapped to
{a_low, a_high}, then the reference solve; scored by the relative L2 error of ``u``.
Inverse: PDE-constrained fit of ``a`` from sensors of ``u`` (adjoint gradient, L-BFGS-B,
TV or Tikhonov), scored by the error rate of ``a`` thresholded at (a_low + a_high) / 2
(Darcy) or the relative L2 error of ``a`` on the interior nodes (Poisson, Helmholtz: the
boundary values of the source do not enter ``u``).  The regularisation weight and TV
smoothing are chosen by a sweep on validation samples (another data seed, other sensors),
never on the test samples.

The linear-interpolation rows use the first 50 forward samples.  Test samples are
``generate(family, n, R, seed=SEED)``; validation samples use ``seed=SEED + 1000``.  Sensor
positions of test sample ``i``: ``M`` distinct grid points drawn by ``sample_rng(SEED + 1,
i)`` (validation: ``SEED + 1001``).

    python benchmarks/classical_baselines.py --out benchmarks/results/classical_baselines.json
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

from pdediff.baselines import interpolate_then_solve, pde_constrained_fit
from pdediff.generate import generate, sample_rng
from pdediff.pde.registry import get_family

sys.path.insert(0, str(Path(__file__).parent))
from _common import save  # noqa: E402

VAL_OFFSET = 1000
METRIC = {"darcy": "error rate of thresholded a", "navier_stokes": "relative L2 of w0"}
# ANCHORS.md, "Classical baselines on the anchor Darcy setting" (8 cases each).
FORWARD_ANCHORS = {(32, 31): 5.8, (64, 123): 3.5, (64, 500): 2.0, (128, 500): 1.9}
INVERSE_ANCHORS = {(32, 31): 20.0, (32, 500): 5.6, (64, 500): 5.6}


def sensors(seed: int, index: int, resolution: int, m: int) -> np.ndarray:
    """``m`` distinct flat grid indices for sample ``index``."""
    return sample_rng(seed, index).choice(resolution * resolution, m, replace=False)


def load(family: str, n: int, resolution: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(coefficient, solution) arrays of ``n`` samples (Navier-Stokes: ``w0``, ``w``)."""
    fam = get_family(family)
    ds = generate(family, n, resolution, seed=seed, progress=False)
    coef, sol = fam.coefficient_solution()
    return ds[coef].values.astype(np.float64), ds[sol].values.astype(np.float64)


def summary(values: list[float], anchor: float | None) -> dict:
    """Mean, standard error, median (in %), and how often a mean of 8 cases drawn from our
    per-sample errors is at or below the anchor (a bootstrap: is the gap sampling noise?)."""
    v = 100.0 * np.asarray(values)
    out = {
        "mean_pct": round(float(v.mean()), 3),
        "sem_pct": round(float(v.std(ddof=1) / np.sqrt(v.size)), 3) if v.size > 1 else None,
        "median_pct": round(float(np.median(v)), 3),
        "per_sample_pct": [round(float(x), 3) for x in v],
    }
    if anchor is not None:
        means = np.random.default_rng(0).choice(v, (10000, 8)).mean(axis=1)
        out["anchor_pct"] = anchor
        out["p_mean_of_8_le_anchor"] = float(np.mean(means <= anchor))
    return out


# ----------------------------------------------------------------------------- forward


def forward_case(resolution: int, m: int, n: int, seed: int, method: str) -> dict:
    grid = get_family("darcy").grid(resolution)
    a_all, u_all = load("darcy", n, resolution, seed)
    errors, t0 = [], time.perf_counter()
    for i in range(n):
        idx = sensors(seed + 1, i, resolution, m)
        out = interpolate_then_solve("darcy", grid, None, idx, a_all[i].ravel()[idx], method)
        errors.append(np.linalg.norm(out["u"] - u_all[i]) / np.linalg.norm(u_all[i]))
    seconds = (time.perf_counter() - t0) / n
    anchor = FORWARD_ANCHORS.get((resolution, m)) if method == "nearest" else None
    return {
        "task": "forward",
        "family": "darcy",
        "method": method,
        "resolution": resolution,
        "sensors": m,
        "n": n,
        "metric": "relative L2 of u",
        "seconds_per_sample": round(seconds, 4),
        **summary(errors, anchor),
    }


# ----------------------------------------------------------------------------- inverse


def score(family: str, fit: dict, a_true: np.ndarray) -> float:
    if family == "darcy":
        return float(np.mean(fit["a_thresholded"] != a_true))
    if family == "navier_stokes":  # periodic: every node counts
        return float(np.linalg.norm(fit["w0"] - a_true) / np.linalg.norm(a_true))
    inner = (slice(1, -1), slice(1, -1))
    return float(np.linalg.norm(fit["a"][inner] - a_true[inner]) / np.linalg.norm(a_true[inner]))


def run_fits(family, resolution, m, data, sensor_seed, reg, lam, eps, max_iter):
    """Fit every sample of ``data = (a, u)``: scores, seconds and iterations per sample."""
    grid = get_family(family).grid(resolution)
    scores, seconds, iters = [], [], []
    for i, (a, u) in enumerate(zip(*data, strict=True)):
        idx = sensors(sensor_seed, i, resolution, m)
        fit = pde_constrained_fit(
            family, grid, None, idx, u.ravel()[idx], reg, lam, max_iter, eps=eps
        )
        scores.append(score(family, fit, a))
        seconds.append(fit["info"]["seconds"])
        iters.append(fit["info"]["n_iter"])
    return scores, seconds, iters


def inverse_case(family, resolution, m, reg, lams, epss, n_val, n_test, seed, max_iter) -> dict:
    """Sweep (lam, eps) on validation samples, then score the best pair on test samples."""
    val = load(family, n_val, resolution, seed + VAL_OFFSET)
    sweep = []
    for lam, eps in itertools.product(lams, epss if reg == "tv" else [None]):
        s, _, _ = run_fits(
            family, resolution, m, val, seed + VAL_OFFSET + 1, reg, lam, eps, max_iter
        )
        sweep.append({"lam": lam, "eps": eps, "val_mean_pct": round(100 * float(np.mean(s)), 3)})
        print(
            f"    val {family} {resolution}^2/{m} {reg} lam={lam:g} eps={eps}: "
            f"{sweep[-1]['val_mean_pct']:.2f} %",
            flush=True,
        )
    best = min(sweep, key=lambda r: r["val_mean_pct"])
    test = load(family, n_test, resolution, seed)
    scores, seconds, iters = run_fits(
        family, resolution, m, test, seed + 1, reg, best["lam"], best["eps"], max_iter
    )
    anchor = INVERSE_ANCHORS.get((resolution, m)) if family == "darcy" and reg == "tv" else None
    return {
        "task": "inverse",
        "family": family,
        "reg": reg,
        "resolution": resolution,
        "sensors": m,
        "n": n_test,
        "n_val": n_val,
        "metric": METRIC.get(family, "relative L2 of a (interior nodes)"),
        "lam": best["lam"],
        "eps": best["eps"],
        "sweep": sweep,
        "seconds_per_sample": round(float(np.mean(seconds)), 3),
        "iterations_mean": round(float(np.mean(iters)), 1),
        **summary(scores, anchor),
    }


def line(row: dict) -> str:
    what = (
        row["method"]
        if row["task"] == "forward"
        else f"{row['reg']} lam={row['lam']:g}"
        + (f" eps={row['eps']:g}" if row.get("eps") is not None else "")
    )
    anchor = f"{row['anchor_pct']:>5.1f} %" if "anchor_pct" in row else "    - "
    p = f"  P8<=anchor {row['p_mean_of_8_le_anchor']:.3f}" if "anchor_pct" in row else ""
    return (
        f"{row['task']:<8}{row['family']:<10}{row['resolution']:>4}^2 {row['sensors']:>4}  "
        f"{what:<26} n={row['n']:<3} {row['mean_pct']:>6.2f} +- {row['sem_pct'] or 0:.2f} % "
        f"(median {row['median_pct']:.2f})  anchor {anchor}  "
        f"{row['seconds_per_sample']:.3f} s/sample{p}"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-forward", type=int, default=200)
    p.add_argument("--n-inverse", type=int, default=16)
    p.add_argument("--n-inverse-64", type=int, default=8)
    p.add_argument("--n-val", type=int, default=4)
    p.add_argument("--max-iter", type=int, default=1000)
    p.add_argument("--skip-other-families", action="store_true")
    p.add_argument(
        "--only-navier-stokes",
        action="store_true",
        help="only the Navier-Stokes inverse fit (w0 from w(T); 31 and 500 sensors at 32^2)",
    )
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.only_navier_stokes:
        return navier_stokes(args)
    lams = [1e-11, 1e-10, 1e-9, 1e-8]
    lams_darcy = [1e-13, 1e-12, *lams]  # dense sensors want little regularisation
    rows = []

    def add(row: dict) -> None:
        rows.append(row)
        print(line(row), flush=True)

    for res, m in FORWARD_ANCHORS:
        add(forward_case(res, m, args.n_forward, args.seed, "nearest"))
        add(forward_case(res, m, min(args.n_forward, 50), args.seed, "linear"))
    inv = {"n_val": args.n_val, "seed": args.seed, "max_iter": args.max_iter}
    for m in (31, 500):
        add(
            inverse_case(
                "darcy", 32, m, "tv", lams_darcy, [1.0, 100.0], n_test=args.n_inverse, **inv
            )
        )
    eps_500 = rows[-1]["eps"]
    add(
        inverse_case(
            "darcy",
            64,
            500,
            "tv",
            lams_darcy[:4],
            [eps_500],
            n_test=args.n_inverse_64,
            **{**inv, "n_val": 2},
        )
    )
    add(
        inverse_case("darcy", 32, 500, "tikhonov", lams_darcy, [None], n_test=args.n_inverse, **inv)
    )
    if not args.skip_other_families:
        for family, reg in itertools.product(["poisson", "helmholtz"], ["tv", "tikhonov"]):
            add(
                inverse_case(
                    family, 32, 500, reg, lams, [0.3, 3.0], n_test=8, **{**inv, "n_val": 3}
                )
            )
    result = {
        "note": "classical baselines on the anchor Darcy setting (pdediff darcy defaults); "
        "test data generate(family, n, R, seed), validation seed + 1000; sensors: M distinct "
        "random grid points per sample (boundary included); errors in %; lam/eps chosen on "
        "validation samples; single process, one core",
        "seed": args.seed,
        "rows": rows,
    }
    save(result, args.out)


def navier_stokes(args: argparse.Namespace) -> None:
    """The inverse fit of the Navier-Stokes initial vorticity (autograd through the flow
    map), its weights swept on validation samples as for the other families."""
    inv = {"n_val": args.n_val, "seed": args.seed, "max_iter": args.max_iter}
    rows = []
    for m, reg in itertools.product((500, 31), ("tikhonov", "tv")):
        lams = [1e-10, 1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3]
        rows.append(inverse_case("navier_stokes", 32, m, reg, lams, [1.0, 10.0], n_test=8, **inv))
        print(line(rows[-1]), flush=True)
    note = (
        "Navier-Stokes inverse fit at 32^2 (w0 from sensors of w(T)); test data "
        "generate(navier_stokes, n, 32, seed), validation seed + 1000; lam/eps chosen on "
        "validation samples; single process, one core"
    )
    save({"note": note, "seed": args.seed, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
