"""Figures of field datasets (matplotlib, no display needed)."""

from __future__ import annotations

import os

import numpy as np
import xarray as xr

from pdediff.io.conventions import SAMPLE_DIM, field_variables


def _image(var: xr.DataArray) -> tuple[np.ndarray, tuple[str, str]]:
    """A 2-D slice to show: the grid itself, or the last time level of (t, y, x)."""
    while var.ndim > 2:
        var = var.isel({var.dims[0]: -1})
    if var.ndim == 1:
        var = var.expand_dims("_", 0)
    return np.asarray(var.values), (str(var.dims[0]), str(var.dims[1]))


def plot_fields(
    ds: xr.Dataset,
    path: str | os.PathLike | None = None,
    variables: list[str] | None = None,
    samples: int = 4,
):
    """One row per sample, one column per variable; returns the matplotlib Figure.

    Axes carry the physical coordinates; each panel has its own colour bar.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variables = list(variables or field_variables(ds))
    n = min(samples, ds.sizes.get(SAMPLE_DIM, 1))
    fig, axes = plt.subplots(
        n,
        len(variables),
        figsize=(3.2 * len(variables), 2.8 * n),
        squeeze=False,
        constrained_layout=True,
    )
    for i in range(n):
        for j, v in enumerate(variables):
            var = ds[v].isel({SAMPLE_DIM: i}) if SAMPLE_DIM in ds[v].dims else ds[v]
            img, (dy, dx) = _image(var)
            ax = axes[i, j]
            extent = None
            if dy in ds.coords and dx in ds.coords:
                extent = [
                    float(ds[dx].min()),
                    float(ds[dx].max()),
                    float(ds[dy].min()),
                    float(ds[dy].max()),
                ]
            im = ax.imshow(img, origin="lower", extent=extent, aspect="auto", cmap="viridis")
            fig.colorbar(im, ax=ax, shrink=0.85)
            units = ds[v].attrs.get("units", "")
            ax.set_title(f"{ds[v].attrs.get('long_name', v)} [{units}], sample {i}", fontsize=8)
            ax.set_xlabel(dx, fontsize=8)
            ax.set_ylabel(dy, fontsize=8)
            ax.tick_params(labelsize=7)
    if "pde" in ds.attrs:
        fig.suptitle(f"pde: {ds.attrs['pde']}", fontsize=10)
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def plot_posterior(
    ds: xr.Dataset, path: str | os.PathLike | None = None, truth: xr.Dataset | None = None
):
    """Posterior summary: per field, the mean and std with the observations used marked,
    and, given ``truth`` (one sample), the truth and the absolute error of the mean."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = [v[: -len("_mean")] for v in ds.data_vars if str(v).endswith("_mean")]
    cols = ["truth", "mean", "std", "|error|"] if truth is not None else ["mean", "std"]
    fig, axes = plt.subplots(
        len(fields),
        len(cols),
        figsize=(3.2 * len(cols), 2.9 * len(fields)),
        squeeze=False,
        constrained_layout=True,
    )
    for i, f in enumerate(fields):
        mean = ds[f"{f}_mean"]
        panels = {"mean": mean, "std": ds[f"{f}_std"]}
        if truth is not None:
            t = truth[f].squeeze(drop=True)
            panels.update({"truth": t, "|error|": abs(mean - t.values)})
        dy, dx = mean.dims[-2:]
        extent = [
            float(ds[dx].min()),
            float(ds[dx].max()),
            float(ds[dy].min()),
            float(ds[dy].max()),
        ]
        for j, name in enumerate(cols):
            ax = axes[i, j]
            im = ax.imshow(
                np.asarray(panels[name].values),
                origin="lower",
                extent=extent,
                aspect="auto",
                cmap="magma" if name in ("std", "|error|") else "viridis",
            )
            fig.colorbar(im, ax=ax, shrink=0.85)
            ax.set_title(f"{f}: {name}", fontsize=9)
            obs = f"obs_{f}"
            if obs in ds and f"{obs}_{dx}" in ds.coords and name in ("mean", "truth"):
                ax.scatter(
                    ds[f"{obs}_{dx}"],
                    ds[f"{obs}_{dy}"],
                    s=4,
                    c="white",
                    edgecolors="black",
                    linewidths=0.3,
                )
            ax.tick_params(labelsize=7)
    fig.suptitle(
        f"{ds.attrs.get('task', '')} posterior, {ds.sizes.get('member', 1)} members", fontsize=10
    )
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
