"""``pdediff demo``: the first thing a newcomer runs.

Until the solver lands (issue 4), the demo shows the data side of pdediff: it draws a small
Darcy dataset (−∇·(a∇u) = 1, u = 0 on the boundary, a a thresholded Gaussian random field)
with the reference solver, writes it to NetCDF, checks each sample's finite-difference
residual and plots a few samples.
"""

from __future__ import annotations

import time
from pathlib import Path

from pdediff.generate import generate
from pdediff.inspection import format_report
from pdediff.io.store import atomic_path, write_fields
from pdediff.plot import plot_fields


def run_demo(out: Path, seed: int = 0, resolution: int = 64, n: int = 8) -> dict[str, Path]:
    """Generate, check and plot a small Darcy dataset in ``out`` (created; files replaced).

    Returns the paths written.
    """
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ds = generate("darcy", n, resolution, seed=seed)
    data = write_fields(ds, out / "darcy.nc", overwrite=True)
    print(
        f"generated {n} Darcy samples at {resolution}x{resolution} in "
        f"{time.perf_counter() - t0:.1f} s -> {data}"
    )
    print(format_report(ds, str(data), max_samples=n))
    fig = out / "darcy.png"
    with atomic_path(fig, overwrite=True) as tmp:
        plot_fields(ds, tmp, ["a", "u"], samples=min(n, 3))
    print(f"figure -> {fig}")
    return {"data": data, "figure": fig}
