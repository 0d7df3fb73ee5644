"""Training speed: samples per second of ``pdediff.train`` for the small (CPU-default)
UNet and FNO backbones at several resolutions.  Each row trains on Darcy data through
:func:`pdediff.train.train` (forward, backward, AdamW, EMA, logging), discards the first
``--warmup`` steps and times the next ``--steps``.  Prints a table and saves JSON with the
command, seed and machine.

    python benchmarks/train_speed.py --resolutions 32 64 128 --batch-size 8 \
        --out benchmarks/results/train_speed.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import save  # noqa: E402

from pdediff.generate import generate  # noqa: E402
from pdediff.train import TrainConfig, train  # noqa: E402
from pdediff.train.config import SMALL_BACKBONE_KWARGS  # noqa: E402
from pdediff.train.distributed import resolve_device  # noqa: E402


def measure(
    backbone: str, data, batch_size: int, warmup: int, steps: int, seed: int, device: str
) -> dict:
    """Samples/s over ``steps`` steps after ``warmup`` steps (one log window)."""
    config = TrainConfig.from_dict({
        "model": {"backbone": backbone}, "batch_size": batch_size, "seed": seed,
        "steps": warmup + steps, "log_every": steps, "checkpoint_every": 10**9,
    })  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if warmup:  # the first steps pay for allocations and kernel selection
            train(data, Path(tmp) / "w", config.replace(steps=warmup), device=device,
                  progress=False)  # fmt: skip
            result = train(data, Path(tmp) / "w", config, resume=True, device=device,
                           progress=False)  # fmt: skip
        else:
            result = train(data, Path(tmp) / "w", config, device=device, progress=False)
    record = result.history[-1]
    params = sum(p.numel() for p in result.model.backbone.parameters())
    return {
        "backbone": backbone,
        "backbone_kwargs": SMALL_BACKBONE_KWARGS[backbone],
        "parameters": params,
        "resolution": int(data.sizes["x"]),
        "batch_size": batch_size,
        "steps_timed": steps,
        "samples_per_s": round(record["samples_per_s"], 2),
        "seconds_per_step": round(batch_size / record["samples_per_s"], 4),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=["unet", "fno"])
    p.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--n", type=int, default=16, help="Darcy samples per resolution")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = []
    for res in args.resolutions:
        data = generate("darcy", args.n, res, seed=args.seed, progress=False)
        for name in args.backbones:
            row = measure(name, data, args.batch_size, args.warmup, args.steps, args.seed,
                          args.device)  # fmt: skip
            rows.append(row)
            print(f"{name:<5} {res:>4}^2  batch {row['batch_size']:>3}  "
                  f"{row['parameters'] / 1e6:5.2f}M params  "
                  f"{row['samples_per_s']:8.2f} samples/s  {row['seconds_per_step']:.3f} s/step",
                  flush=True)  # fmt: skip
    device = str(resolve_device(args.device))
    result = {
        "note": "pdediff.train on Darcy fields (a, u), EDM loss, AdamW + EMA, default small "
                "backbones; samples/s over the timed steps after warm-up",
        "seed": args.seed, "device": device, "torch_threads": torch.get_num_threads(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()], "rows": rows,
    }  # fmt: skip
    save(result, args.out)


if __name__ == "__main__":
    main()
