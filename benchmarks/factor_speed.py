"""Cost of factoring Darcy's matrix: band Cholesky vs sparse LU, per resolution.

The guided Darcy solves (``solver`` mode and the consistency correction of
:mod:`pdediff.solve.posterior`) factor ``A(a) = -div(a grad .)`` once per member and per
guidance step, thousands of times a solve.  This times both factorisations of
:mod:`pdediff.pde._dirichlet` on the same piecewise-constant coefficient (the anchor's
``{3, 12}`` field, a random half each) and checks that they give the same solution, which
is how :data:`pdediff.pde._dirichlet.BAND_MAX` was chosen.  Prints a table and saves JSON.

    python benchmarks/factor_speed.py --resolutions 32 64 96 128 \
        --out benchmarks/results/factor_speed.json
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pdediff.pde import _dirichlet

sys.path.insert(0, str(Path(__file__).parent))
from _common import save  # noqa: E402


def _millis(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1e3 * (time.perf_counter() - t0) / repeats


def measure(resolution: int, repeats: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    a = np.where(rng.random((resolution, resolution)) > 0.5, 12.0, 3.0)
    h = 1.0 / (resolution - 1)
    matrix = _dirichlet.neg_div_c_grad_matrix(a, h, h)
    rhs = np.ones(a.shape)
    band = _dirichlet.neg_div_c_grad_band(a, h, h)
    lu = _dirichlet.factor(matrix)
    used = _dirichlet.neg_div_c_grad_factor(a, h, h)
    difference = _dirichlet.solve_factored(band, rhs) - _dirichlet.solve_factored(lu, rhs)
    return {
        "resolution": resolution,
        "sparse_lu_ms": _millis(lambda: _dirichlet.factor(matrix), repeats),
        "band_ms": _millis(lambda: _dirichlet.neg_div_c_grad_band(a, h, h), repeats),
        "used": "band" if isinstance(used, _dirichlet.BandedCholesky) else "sparse_lu",
        "max_difference": float(np.abs(difference).max()),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 96, 128])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rows = [measure(n, args.repeats, args.seed) for n in args.resolutions]
    print("resolution  sparse LU ms  band ms  used       max |difference|")
    for r in rows:
        print(
            f"{r['resolution']:10d}  {r['sparse_lu_ms']:12.2f}  {r['band_ms']:7.2f}  "
            f"{r['used']:9s}  {r['max_difference']:.2e}"
        )
    result = {"settings": vars(args), "band_max": _dirichlet.BAND_MAX, "rows": rows}
    save(result, args.out)
    return result


if __name__ == "__main__":
    main()
