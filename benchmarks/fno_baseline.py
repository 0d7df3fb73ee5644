"""FNO baseline on the anchor Darcy setting, compared with ANCHORS.md's FNO row.

An FNO (neuraloperator, Li et al. 2021) is trained on ``--n-train`` generated Darcy pairs
(``generate("darcy", n, R, seed=--train-seed)``) to map the field seen at random sensors to
the other field: forward ``a -> u`` (scored by the relative L2 error of ``u``) and inverse
``u -> a`` (scored by the pixel error rate of ``a`` thresholded at 7.5, and its relative L2
error).  Each training sample gets new random sensors at every step.  Test samples are
``generate("darcy", --n-test, R, seed=--seed)``; the sensors of test sample ``i`` are ``M``
distinct grid nodes drawn by ``sample_rng(seed + 1, i)``, the same as in
``classical_baselines.py``, whose scores are printed beside these when its result file is
there.  A "training mean" row (the per-node mean of the target over the training set,
whatever the sensors say) shows what is learned beyond the average field.

    python benchmarks/fno_baseline.py --out benchmarks/results/fno_baseline.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pdediff.baselines.fno import FNOBaseline, train_fno_baseline
from pdediff.generate import generate, sample_rng
from pdediff.metrics import relative_l2, threshold_error_rate

sys.path.insert(0, str(Path(__file__).parent))
from _common import save  # noqa: E402
from solver_table import sensor_setting  # noqa: E402

# ANCHORS.md, "Relative L2 error (%) at 500 observations, 128x128", row FNO, Darcy column:
# forward relative L2 of u / inverse error rate of thresholded a.
ANCHOR = {"forward": 28.2, "inverse": 49.3}
CLASSICAL = Path(__file__).parent / "results" / "classical_baselines.json"
TASKS = {"forward": ("a", "u"), "inverse": ("u", "a")}


def sensors(seed: int, n: int, resolution: int, m: int) -> np.ndarray:
    """``(n, m)`` flat sensor indices, sample ``i`` drawn by ``sample_rng(seed, i)``."""
    return np.stack(
        [sample_rng(seed, i).choice(resolution * resolution, m, replace=False) for i in range(n)]
    )


def scores(task: str, pred: np.ndarray, truth: np.ndarray, levels: tuple[float, float]) -> dict:
    """Per-sample errors (fractions) of one task."""
    out = {"rel_l2": relative_l2(pred, truth)}
    if task == "inverse":
        out["error_rate"] = threshold_error_rate(pred, truth, 0.5 * sum(levels))
    return out


def pct(values: np.ndarray) -> dict:
    v = 100.0 * np.asarray(values)
    return {
        "mean_pct": round(float(v.mean()), 3),
        "sem_pct": round(float(v.std(ddof=1) / np.sqrt(v.size)), 3),
        "median_pct": round(float(np.median(v)), 3),
    }


def inference_seconds(model: FNOBaseline, idx: np.ndarray, values: np.ndarray) -> tuple:
    """Predictions of all cases, seconds per case batched, seconds for one case alone."""
    t0 = time.perf_counter()
    pred = model.predict(idx, values)
    batched = (time.perf_counter() - t0) / len(idx)
    n_single = min(10, len(idx))
    t0 = time.perf_counter()
    for i in range(n_single):
        model.predict(idx[i], values[i])
    return pred, batched, (time.perf_counter() - t0) / n_single


def run_case(task: str, resolution: int, m: int, train, test, args) -> dict:
    """Train one FNO, score it on the test set; also score the training-mean field."""
    source, target = TASKS[task]
    model = train_fno_baseline(
        train, source, target, sensors=m, steps=args.steps, batch_size=args.batch_size,
        seed=args.seed, width=args.width, modes=args.modes, n_layers=args.layers,
        padding=args.padding, lr=args.lr, progress=args.progress,
    )  # fmt: skip
    idx = sensors(args.seed + 1, len(test["sample"]), resolution, m)
    values = np.take_along_axis(test[source].values.reshape(len(idx), -1), idx, axis=1)
    truth = test[target].values.astype(np.float64)
    pred, batched, single = inference_seconds(model, idx, values)
    levels = (train.attrs["param_a_low"], train.attrs["param_a_high"])
    mean_field = np.broadcast_to(train[target].values.mean(axis=0), truth.shape)
    fno, ref = scores(task, pred, truth, levels), scores(task, mean_field, truth, levels)
    return {
        "task": task,
        "source": source,
        "target": target,
        "resolution": resolution,
        "sensors": m,
        "sensor_fraction": round(m / resolution**2, 4),
        "n_train": len(train["sample"]),
        "n_test": len(truth),
        "train_seconds": round(model.config["train"]["seconds"], 1),
        "infer_seconds_per_sample_batched": round(batched, 5),
        "infer_seconds_single": round(single, 5),
        "parameters": sum(p.numel() for p in model.net.parameters()),
        "final_train_loss": round(model.history[-1]["loss"], 4),
        "history": model.history,
        "_model": model,
        "fno": {k: pct(v) for k, v in fno.items()},
        "training_mean": {k: pct(v) for k, v in ref.items()},
    }


def classical_rows() -> list[dict]:
    if not CLASSICAL.is_file():
        return []
    return json.loads(CLASSICAL.read_text())["rows"]


def classical_score(rows: list[dict], task: str, resolution: int, m: int) -> str:
    """The classical baseline's mean error on the same sensors, if it was run."""
    for r in rows:
        same = r["family"] == "darcy" and (r["resolution"], r["sensors"]) == (resolution, m)
        kind = r.get("method") == "nearest" if task == "forward" else r.get("reg") == "tv"
        if same and r["task"] == task and kind:
            return f"{r['mean_pct']:.2f} % (n={r['n']})"
    return "-"


def headline(row: dict) -> tuple[float, float]:
    key = "rel_l2" if row["task"] == "forward" else "error_rate"
    return row["fno"][key]["mean_pct"], row["training_mean"][key]["mean_pct"]


def print_table(rows: list[dict], classical: list[dict]) -> None:
    print(
        f"\n{'task':<8}{'grid':>6}{'sensors':>9}  {'metric':<14}{'FNO':>16}{'train mean':>12}"
        f"{'classical':>20}{'anchor 128^2/500':>18}{'train s':>9}{'infer ms':>10}"
    )
    for r in rows:
        fno, ref = headline(r)
        metric = "rel L2 of u" if r["task"] == "forward" else "a error rate"
        sem = r["fno"]["rel_l2" if r["task"] == "forward" else "error_rate"]["sem_pct"]
        print(
            f"{r['task']:<8}{r['resolution']:>4}^2{r['sensors']:>5} ({r['sensor_fraction']:4.0%})"
            f" {metric:<14}{fno:>8.2f} +- {sem:.2f} %{ref:>10.2f} %"
            f"{classical_score(classical, r['task'], r['resolution'], r['sensors']):>20}"
            f"{ANCHOR[r['task']]:>16.1f} %{r['train_seconds']:>9.0f}"
            f"{1000 * r['infer_seconds_per_sample_batched']:>10.2f}"
        )


COMPARISON = """
Against ANCHORS.md's FNO row (Darcy, 128^2, 500 points = 3 % of nodes, 50,000 training
pairs, training length not given there): {fwd} % forward / {inv} % inverse.  Differences:
  * grid: {density}; far more than 3 % at 128^2, so the
    rows with 3 % of the nodes are the density-matched comparison;
  * training set: {n_train} pairs (vs 50,000), {steps} AdamW steps of {batch} samples
    ({epochs:.1f} epochs), {train_min:.1f} CPU minutes per model on one thread of a shared
    2-core machine: short training, likely to leave error on the table (the JSON keeps
    each loss history);
  * net: width {width}, {modes} Fourier modes per dim, {layers} layers, padding {padding};
    the published baseline's configuration is not given in ANCHORS.md;
  * test set: {n_test} samples (vs 1,000); sensors drawn per sample as in
    classical_baselines.py.
"""


def comparison(args: argparse.Namespace, rows: list[dict]) -> str:
    """The differences from the published FNO row, filled in from the settings."""
    density = ", ".join(f"500 sensors are {500 / r**2:.0%} of {r}^2" for r in args.resolutions)
    return COMPARISON.format(
        fwd=ANCHOR["forward"],
        inv=ANCHOR["inverse"],
        density=density,
        n_train=args.n_train,
        steps=args.steps,
        batch=args.batch_size,
        epochs=args.steps * args.batch_size / args.n_train,
        train_min=np.mean([r["train_seconds"] for r in rows]) / 60,
        width=args.width,
        modes=args.modes,
        layers=args.layers,
        padding=args.padding,
        n_test=args.n_test,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolutions", type=int, nargs="+", default=[32])
    p.add_argument("--sensors", type=float, nargs="+", default=[500, 0.03],
                   help="counts (>= 1) or fractions of the nodes (< 1)")  # fmt: skip
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--train-seed", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--modes", type=int, default=12)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--padding", type=float, default=0.125)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument(
        "--save-models",
        metavar="DIR",
        help="save each FNO to DIR/TASK_RES_LABEL (LABEL: p500 for a count, f0.03 for a "
        "fraction), for benchmarks/solver_table.py --fno-forward DIR/forward_64_{sensors}",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start, rows = time.perf_counter(), []
    for res in args.resolutions:
        t0 = time.perf_counter()
        train = generate("darcy", args.n_train, res, seed=args.train_seed, progress=False)
        test = generate("darcy", args.n_test, res, seed=args.seed, progress=False)
        print(f"data {res}^2: {time.perf_counter() - t0:.1f} s", flush=True)
        for s in args.sensors:
            m = int(s) if s >= 1 else max(1, round(s * res * res))
            for task in TASKS:
                rows.append(run_case(task, res, m, train, test, args))
                if args.save_models:
                    label = sensor_setting(f"{s:g}")[0]  # solver_table's part labels
                    rows[-1]["model"] = str(Path(args.save_models) / f"{task}_{res}_{label}")
                    rows[-1].pop("_model").save(rows[-1]["model"])
                rows[-1].pop("_model", None)
                fno, ref = headline(rows[-1])
                print(f"  {task} {res}^2 {m}: FNO {fno:.2f} %, training mean {ref:.2f} % "
                      f"({rows[-1]['train_seconds']:.0f} s)", flush=True)  # fmt: skip
    print_table(rows, classical_rows())
    print(comparison(args, rows))
    result = {
        "note": "FNO baseline (neuraloperator FNO) on Darcy; train generate('darcy', n_train, R, "
        "seed=train_seed), test seed=seed, test sensors sample_rng(seed + 1, i); errors in %; "
        "'training_mean' scores the per-node training mean of the target; CPU, "
        f"{args.threads} thread(s), shared machine",
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "progress")},
        "anchor_fno_128_500": ANCHOR,
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "rows": rows,
    }
    save(result, args.out)


if __name__ == "__main__":
    main()
