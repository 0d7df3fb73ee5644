"""Dataset generation speed: samples per second for a PDE family at given resolutions and
numbers of Dask workers.  Prints a table and saves it (JSON) with the command, seed and machine.

    python benchmarks/generate_speed.py --family darcy --resolutions 64 128 --workers 1 2 \
        --n 200 --out benchmarks/results/generate_speed_darcy.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pdediff.generate import generate

sys.path.insert(0, str(Path(__file__).parent))
from _common import save  # noqa: E402


def time_generate(family: str, n: int, resolution: int, workers: int, seed: int) -> dict:
    t0 = time.perf_counter()
    ds = generate(family, n, resolution, seed=seed, workers=workers, progress=False)
    wall = time.perf_counter() - t0
    assert ds.sizes["sample"] == n
    return {
        "family": family,
        "resolution": resolution,
        "workers": workers,
        "n": n,
        "seconds": round(wall, 3),
        "samples_per_s": round(n / wall, 2),
    }


def cluster_startup(workers: int) -> float:
    """Seconds to start and stop a LocalCluster of ``workers`` processes (the fixed cost
    included in every ``workers > 1`` row)."""
    from dask.distributed import Client, LocalCluster

    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None)
    Client(cluster).close()
    cluster.close()
    return round(time.perf_counter() - t0, 3)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="darcy")
    p.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args(argv)
    rows = []
    for res in args.resolutions:
        for w in args.workers:
            row = time_generate(args.family, args.n, res, w, args.seed)
            rows.append(row)
            print(
                f"{row['family']:<14} {res:>4}^2  workers {w}  {row['n']} samples  "
                f"{row['seconds']:8.2f} s  {row['samples_per_s']:8.2f} samples/s",
                flush=True,
            )
    startup = {w: cluster_startup(w) for w in args.workers if w > 1}
    for w, sec in startup.items():
        print(f"LocalCluster start + stop with {w} workers: {sec:.2f} s")
    result = {
        "note": "wall time of pdediff.generate, including Dask LocalCluster start-up when "
        "workers > 1; one process per worker, one thread each",
        "seed": args.seed,
        "rows": rows,
        "cluster_startup_s": startup,
    }
    save(result, args.out)


if __name__ == "__main__":
    main()
