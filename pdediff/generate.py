"""Dataset generation: draw coefficients, solve with the reference solver, in parallel.

Sample ``i`` of a dataset generated with seed ``s`` uses its own random generator seeded by
``SeedSequence(s, spawn_key=(i,))``, so the data do not depend on how the samples are split
among workers.  A parameter given a range (``param_ranges``) is drawn uniformly per sample
from a second stream of the same sample, ``SeedSequence(s, spawn_key=(i, 1))``: sample ``i``
keeps the coefficients it has without the range, only its parameter changes.  Parallelism
goes through Dask: a ``LocalCluster`` of ``workers`` processes,
or any running ``dask.distributed`` scheduler given by address.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from pdediff.errors import PdediffError
from pdediff.io.conventions import add_sample_params, make_dataset
from pdediff.pde.base import Grid
from pdediff.pde.registry import get_family

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPE_KEYS = {"family", "n", "resolution", "seed", "params", "param_ranges", "description"}
#: Spawn-key suffix of the stream that draws a sample's varying parameters.
_PARAM_STREAM = 1

Ranges = Mapping[str, tuple[float, float]]


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` (independent of chunking and worker count)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def draw_params(ranges: Ranges, seed: int, index: int) -> dict[str, float]:
    """The varying parameters of sample ``index``: ``low + (high - low) U`` with ``U ~
    U[0, 1)`` from the stream ``SeedSequence(seed, spawn_key=(index, 1))``, one draw per
    name in sorted order."""
    if not ranges:
        return {}
    names = sorted(ranges)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, _PARAM_STREAM)))
    u = rng.random(len(names))
    return {
        n: float(ranges[n][0] + (ranges[n][1] - ranges[n][0]) * ui)
        for n, ui in zip(names, u, strict=True)
    }


def draw_block(
    family: str,
    resolution: int,
    params: Mapping[str, float],
    seed: int,
    start: int,
    stop: int,
    threads: int | None = None,
    ranges: Ranges | None = None,
) -> dict[str, np.ndarray]:
    """Samples ``start..stop-1``, stacked: ``{field: (stop - start, *grid.shape)}`` (float32)
    and, for each parameter of ``ranges``, ``{name: (stop - start,)}`` (float64: the exact
    values the solver used)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)  # one process per core: avoid oversubscription
    fam = get_family(family)
    grid = fam.grid(resolution, params)
    fields, values = [], []
    for i in range(start, stop):
        varying = draw_params(ranges or {}, seed, i)
        fields.append(fam.draw(sample_rng(seed, i), grid, fam.params({**params, **varying})))
        values.append(varying)
    out = {k: np.stack([s[k] for s in fields]).astype(np.float32) for k in fields[0]}
    out.update({n: np.array([v[n] for v in values]) for n in ranges or {}})
    return out


def check_ranges(family: str, resolution: int, params: Mapping, ranges: Ranges) -> dict:
    """``ranges`` as ``{name: (low, high)}`` floats, checked: known parameters not also
    fixed in ``params``, ``low < high`` finite, and no change of the grid."""
    fam = get_family(family)
    out = {}
    for name, pair in ranges.items():
        try:
            low, high = (float(v) for v in pair)
        except (TypeError, ValueError):
            raise PdediffError(
                f"range of {name} must be two numbers LOW, HIGH, got {pair!r}"
            ) from None
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise PdediffError(f"range of {name} must have finite LOW < HIGH, got [{low}, {high}]")
        if name in params:
            raise PdediffError(f"parameter {name} is given both a value and a range; give one")
        if name in fam.fields:
            raise PdediffError(f"{name} is a field of {family}, not a parameter")
        out[name] = (low, high)
    base = fam.grid(resolution, params)
    for name, (low, high) in out.items():
        if not all(
            _same_grid(base, fam.grid(resolution, {**params, name: v})) for v in (low, high)
        ):
            raise PdediffError(
                f"parameter {name} changes the grid of {family}; it cannot vary per "
                f"sample (all samples share one grid): fix it with --param {name}=VALUE"
            )
    return out


def _same_grid(a: Grid, b: Grid) -> bool:
    return a.dims == b.dims and all(np.array_equal(a.coords[d], b.coords[d]) for d in a.dims)


def _blocks(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(i, min(i + chunk, n)) for i in range(0, n, chunk)]


def _run_serial(args: tuple, blocks: list[tuple[int, int]], bar: tqdm, ranges) -> list[dict]:
    out = []
    for start, stop in blocks:
        out.append(draw_block(*args, start, stop, None, ranges))
        bar.update(stop - start)
    return out


def _run_dask(args, blocks, bar, workers: int, scheduler: str | None, ranges) -> list[dict]:
    from dask.distributed import Client, LocalCluster, as_completed

    if scheduler:
        client, cluster = Client(scheduler), None
    else:
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
    try:
        futures = [
            client.submit(draw_block, *args, start, stop, 1, ranges, pure=False)
            for start, stop in blocks
        ]
        index = {f.key: i for i, f in enumerate(futures)}
        results: list[dict | None] = [None] * len(blocks)
        for fut in as_completed(futures):
            i = index[fut.key]
            results[i] = fut.result()
            bar.update(blocks[i][1] - blocks[i][0])
        return results
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def generate(
    family: str,
    n: int,
    resolution: int,
    seed: int = 0,
    params: Mapping[str, float] | None = None,
    workers: int = 1,
    scheduler: str | None = None,
    chunk: int | None = None,
    progress: bool = True,
    param_ranges: Ranges | None = None,
) -> xr.Dataset:
    """Generate ``n`` samples of ``family`` at ``resolution`` as a Dataset.

    Parameters
    ----------
    family
        A key of :data:`pdediff.pde.registry.FAMILIES`.
    n, resolution
        Number of samples and grid points per dim.
    seed
        Master seed; the same seed gives the same data for any ``workers`` / ``chunk``.
    params
        Overrides of the family's default parameters.
    workers
        Dask worker processes of a local cluster; 1 runs in this process.
    scheduler
        Address of a running ``dask.distributed`` scheduler (overrides ``workers``).
    chunk
        Samples per task (default: about 4 tasks per worker, at most 64 samples).
    param_ranges
        ``{name: (low, high)}``: parameters drawn uniformly per sample (see the module
        docstring), stored as variables ``<name>`` on dim ``sample`` with the attribute
        ``param_range_<name>``; the reference solver of each sample uses its value.
    """
    fam = get_family(family)
    if int(n) != n or n <= 0:
        raise PdediffError(f"number of samples must be a positive integer, got {n}")
    if workers <= 0:
        raise PdediffError(f"workers must be a positive integer, got {workers}")
    grid = fam.grid(resolution, params)  # validates resolution and parameter names
    full = fam.params(params)
    ranges = check_ranges(family, resolution, dict(params or {}), param_ranges or {})
    chunk = chunk or max(1, min(64, -(-n // (4 * workers))))
    blocks = _blocks(int(n), int(chunk))
    args = (family, int(resolution), dict(params or {}), int(seed))
    with tqdm(total=n, desc=f"{family} {resolution}", unit="sample", disable=not progress) as bar:
        if workers == 1 and not scheduler:
            results = _run_serial(args, blocks, bar, ranges)
        else:
            results = _run_dask(args, blocks, bar, workers, scheduler, ranges)
    arrays = {k: np.concatenate([r[k] for r in results]) for k in results[0]}
    ranged = " ".join(f"{k}={lo:g}:{hi:g}" for k, (lo, hi) in ranges.items())
    ds = make_dataset(
        {k: v for k, v in arrays.items() if k not in ranges},
        grid,
        pde=fam.name,
        params=full,
        info=fam.fields,
        source=f"pdediff reference solver ({fam.equation}; {fam.boundary})",
        history=f"generate {family} n={n} resolution={resolution} seed={seed}"
        + (f" param_range {ranged}" if ranged else ""),
    )
    if not ranges:
        return ds
    return add_sample_params(ds, {k: arrays[k] for k in ranges}, ranges)


def read_recipe(path: str | os.PathLike) -> dict:
    """A dataset recipe (TOML): ``family``, ``n``, ``resolution``, ``seed``, ``[params]``,
    ``[param_ranges]`` (``name = [low, high]``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"recipe {path} does not exist")
    try:
        recipe = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise PdediffError(f"recipe {path} is not valid TOML: {e}") from None
    unknown = sorted(set(recipe) - RECIPE_KEYS)
    if unknown:
        raise PdediffError(f"recipe {path}: unknown key(s) {unknown}; known: {sorted(RECIPE_KEYS)}")
    return recipe
