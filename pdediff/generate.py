"""Dataset generation: draw coefficients, solve with the reference solver, in parallel.

Sample ``i`` of a dataset generated with seed ``s`` uses its own random generator seeded by
``SeedSequence(s, spawn_key=(i,))``, so the data do not depend on how the samples are split
among workers.  Parallelism goes through Dask: a ``LocalCluster`` of ``workers`` processes,
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
from pdediff.io.conventions import make_dataset
from pdediff.pde.registry import get_family

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPE_KEYS = {"family", "n", "resolution", "seed", "params", "description"}


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` (independent of chunking and worker count)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def draw_block(
    family: str,
    resolution: int,
    params: Mapping[str, float],
    seed: int,
    start: int,
    stop: int,
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    """Samples ``start..stop-1``, stacked: ``{field: (stop - start, *grid.shape)}``."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)  # one process per core: avoid oversubscription
    fam = get_family(family)
    grid = fam.grid(resolution, params)
    full = fam.params(params)
    samples = [fam.draw(sample_rng(seed, i), grid, full) for i in range(start, stop)]
    return {k: np.stack([s[k] for s in samples]).astype(np.float32) for k in samples[0]}


def _blocks(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(i, min(i + chunk, n)) for i in range(0, n, chunk)]


def _run_serial(args: tuple, blocks: list[tuple[int, int]], bar: tqdm) -> list[dict]:
    out = []
    for start, stop in blocks:
        out.append(draw_block(*args, start, stop))
        bar.update(stop - start)
    return out


def _run_dask(args, blocks, bar, workers: int, scheduler: str | None) -> list[dict]:
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
            client.submit(draw_block, *args, start, stop, 1, pure=False) for start, stop in blocks
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
    """
    fam = get_family(family)
    if int(n) != n or n <= 0:
        raise PdediffError(f"number of samples must be a positive integer, got {n}")
    if workers <= 0:
        raise PdediffError(f"workers must be a positive integer, got {workers}")
    grid = fam.grid(resolution, params)  # validates resolution and parameter names
    full = fam.params(params)
    chunk = chunk or max(1, min(64, -(-n // (4 * workers))))
    blocks = _blocks(int(n), int(chunk))
    args = (family, int(resolution), dict(params or {}), int(seed))
    with tqdm(total=n, desc=f"{family} {resolution}", unit="sample", disable=not progress) as bar:
        if workers == 1 and not scheduler:
            results = _run_serial(args, blocks, bar)
        else:
            results = _run_dask(args, blocks, bar, workers, scheduler)
    fields = {k: np.concatenate([r[k] for r in results]) for k in results[0]}
    return make_dataset(
        fields,
        grid,
        pde=fam.name,
        params=full,
        info=fam.fields,
        source=f"pdediff reference solver ({fam.equation}; {fam.boundary})",
        history=f"generate {family} n={n} resolution={resolution} seed={seed}",
    )


def read_recipe(path: str | os.PathLike) -> dict:
    """A dataset recipe (TOML): ``family``, ``n``, ``resolution``, ``seed``, ``[params]``."""
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
