"""Ground-truth residual levels and solver cost of every PDE family.

For each family and resolution, draws samples with the reference solver (float64, seed
fixed) and reports the relative residual ``||r|| / max_k ||term_k||`` of pdediff's
finite-difference residual on them, and the time per sample.  Prints a table and saves JSON.

    python benchmarks/pde_accuracy.py --resolutions 32 64 128 --n 8 \
        --out benchmarks/results/pde_accuracy.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pdediff.generate import sample_rng

sys.path.insert(0, str(Path(__file__).parent))
from _common import save  # noqa: E402

from pdediff.pde.registry import FAMILIES  # noqa: E402


def measure(name: str, resolution: int, n: int, seed: int) -> dict:
    fam = FAMILIES[name]
    grid, params = fam.grid(resolution), fam.params()
    t0 = time.perf_counter()
    samples = [fam.draw(sample_rng(seed, i), grid, params) for i in range(n)]
    per_sample = (time.perf_counter() - t0) / n
    fields = {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in fam.fields}
    with torch.no_grad():
        rel = fam.relative_residual(fields, grid, params).numpy()
    return {
        "family": name,
        "resolution": resolution,
        "n": n,
        "residual_median": float(np.median(rel)),
        "residual_max": float(rel.max()),
        "seconds_per_sample": round(per_sample, 4),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=list(FAMILIES))
    p.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name in args.families:
        for res in args.resolutions:
            row = measure(name, res, args.n, args.seed)
            rows.append(row)
            print(
                f"{name:<14} {res:>4}  residual median {row['residual_median']:.2e}  "
                f"max {row['residual_max']:.2e}  {row['seconds_per_sample']:.3f} s/sample",
                flush=True,
            )
    result = {
        "note": "relative residual ||r||/max_k||term_k|| of float64 reference solutions under "
        "pdediff's residual; one thread",
        "seed": args.seed,
        "rows": rows,
    }
    save(result, args.out)


if __name__ == "__main__":
    main()
