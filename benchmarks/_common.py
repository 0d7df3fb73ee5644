"""What every benchmark records with its numbers: the command, the machine, the date."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pdediff import __version__


def machine() -> dict:
    """Platform, CPU count and library versions of this machine."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "pdediff": __version__,
    }


def command_line() -> str:
    """The command that ran this script, quoted for a shell."""
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def save(result: dict, out: str | os.PathLike | None) -> None:
    """Write ``result`` as JSON to ``out`` (if given), creating its folder, stamped with the
    command, the machine and the date."""
    result = {"command": command_line(), **result, "machine": machine(), "date": utc_now()}
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"saved {out}")


def add_run_options(parser) -> None:
    """The options every script with a ``--work`` folder shares: device, threads, resume."""
    a = parser.add_argument
    a("--device", default="cpu", help="training device")
    a("--threads", type=int, help="torch threads (default: torch's)")
    a("--resume", action="store_true", help="reuse what was made with the same settings")
    a("--overwrite", action="store_true", help="redo everything in --work")
    a("--progress", action="store_true")


def check_work(args, work: Path) -> None:
    """Refuse a bad ``--out``, ``--resume`` with ``--overwrite``, or a used ``--work`` folder
    without either (nothing is replaced unasked)."""
    if Path(args.out).suffix != ".json":
        raise SystemExit(f"--out must be a .json file, got {args.out}")
    if args.resume and args.overwrite:
        raise SystemExit("give --resume or --overwrite, not both")
    if work.is_dir() and any(work.iterdir()) and not (args.resume or args.overwrite):
        raise SystemExit(f"{work} is not empty; pass --resume to reuse it or --overwrite")


def unet_config(args, steps: int, **extra) -> dict:
    """A ``TrainConfig`` dict of a small one-block UNet from ``args`` (``channels``,
    ``channel_mult``, ``lr``, ``batch``, ``seed``), ``steps`` long, with ``extra`` keys
    (e.g. ``cascade``) added."""
    return {
        "model": {
            "backbone_kwargs": {
                "model_channels": args.channels,
                "channel_mult": list(args.channel_mult),
                "num_blocks": 1,
            }
        },
        "optimizer": {"lr": args.lr, "warmup_steps": min(100, steps)},
        "batch_size": args.batch,
        "steps": steps,
        "seed": args.seed,
        "checkpoint_every": max(1, min(500, steps)),
        "log_every": max(1, min(50, steps)),
        **extra,
    }
