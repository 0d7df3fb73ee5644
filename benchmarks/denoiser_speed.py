"""Denoiser speed: milliseconds per evaluation of an EDM-preconditioned backbone, forward
only (one sampler step's network call, under ``torch.no_grad``) and forward + backward (a
training step's network cost: gradients of a squared loss to every weight), at several
resolutions.  Prints a table and saves JSON with the command, seed, threads and machine.

    python benchmarks/denoiser_speed.py --resolutions 32 64 128 --batch 8 \
        --out benchmarks/results/denoiser_speed.json

``--diffusionpde`` adds DiffusionPDE's network size (128 channels, mult (2, 2, 2), 4 blocks,
55 M parameters) at 128x128, batch 1, forward only.  Each timing is taken over repeated
runs after one warm-up run (repeats stop after ``--budget`` seconds); the table shows the
minimum, the least disturbed by other processes on a shared CPU (the JSON also has medians).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from pdediff.core.precond import EDMPrecond
from pdediff.nets import build_backbone

sys.path.insert(0, str(Path(__file__).parent))
from _common import save  # noqa: E402

MODELS = {
    "unet-small": (
        "unet",
        dict(model_channels=32, channel_mult=(1, 2, 2), num_blocks=1, attn_levels=(2,)),
    ),
    "unet-medium": (
        "unet",
        dict(model_channels=64, channel_mult=(1, 2, 2, 2), num_blocks=2, attn_levels=(3,)),
    ),
    "fno": ("fno", dict(width=32, modes=(12, 12), n_layers=4)),
}
DIFFUSIONPDE = (
    "unet",
    dict(model_channels=128, channel_mult=(2, 2, 2), num_blocks=4, attn_levels=()),
)


def time_ms(fn: Callable[[], None], budget: float, max_runs: int = 20) -> dict:
    """Wall time of ``fn`` in ms: min and median of runs after a warm-up call, repeated
    until ``budget`` seconds are spent.  A warm-up call longer than ``budget`` is the only
    run (it then includes the one-off setup, a small part of a call that long)."""
    t0 = time.perf_counter()
    fn()
    times = [time.perf_counter() - t0]
    if times[0] < budget:
        times = []
        while not times or (sum(times) < budget and len(times) < max_runs):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return {"min": round(1e3 * min(times), 2),
            "median": round(1e3 * statistics.median(times), 2), "runs": len(times)}  # fmt: skip


def measure(label: str, kind: str, cfg: dict, res: int, batch: int, args) -> dict:
    torch.manual_seed(args.seed)
    net = build_backbone(kind, in_channels=2, out_channels=2, **cfg)
    denoiser = EDMPrecond(net)
    x = torch.randn(batch, 2, res, res)
    sigma = torch.exp(torch.randn(batch) * 1.2 - 1.2)

    def forward() -> None:
        with torch.no_grad():
            denoiser(x, sigma)

    def forward_backward() -> None:
        net.zero_grad(set_to_none=True)
        denoiser(x, sigma).square().mean().backward()

    row = {"model": label, "backbone": kind, "config": net.config, "resolution": res,
           "batch": batch, "params": sum(p.numel() for p in net.parameters()),
           "forward_ms": time_ms(forward, args.budget)}  # fmt: skip
    if not args.forward_only and label != "unet-diffusionpde":
        row["forward_backward_ms"] = time_ms(forward_backward, args.budget)
    return row


def print_row(row: dict) -> None:
    fb = row.get("forward_backward_ms")
    fb_text = f"{fb['min']:>12.1f}" if fb is not None else f"{'-':>12}"
    print(f"{row['model']:<18} {row['params'] / 1e6:>7.2f}M {row['resolution']:>5}^2 "
          f"{row['batch']:>5} {row['forward_ms']['min']:>12.1f} {fb_text}", flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--budget", type=float, default=1.0, help="seconds of repeats per timing")
    p.add_argument("--forward-only", action="store_true")
    p.add_argument("--diffusionpde", action="store_true", help="add the 55 M-parameter UNet")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args(argv)
    load_before, t_start = os.getloadavg(), time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU")
    print(f"{'model':<18} {'params':>8} {'grid':>7} {'batch':>5} {'forward ms':>12} "
          f"{'fwd+bwd ms':>12}  (min over runs)")  # fmt: skip
    rows = []
    for res in args.resolutions:
        for label in args.models:
            kind, cfg = MODELS[label]
            rows.append(measure(label, kind, cfg, res, args.batch, args))
            print_row(rows[-1])
    if args.diffusionpde:
        rows.append(measure("unet-diffusionpde", *DIFFUSIONPDE, 128, 1, args))
        print_row(rows[-1])
    result = {
        "note": "ms per EDMPrecond(backbone) evaluation, float32, CPU; forward under no_grad; "
        "forward+backward = gradients of mean(D(x)^2) to every weight; min and median of "
        "runs after a warm-up (the table shows min: other processes share this CPU)",
        "seed": args.seed, "threads": torch.get_num_threads(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "seconds": round(time.perf_counter() - t_start, 1), "rows": rows,
    }  # fmt: skip
    save(result, args.out)


if __name__ == "__main__":
    main()
