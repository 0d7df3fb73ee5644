"""Field Datasets to latent Datasets and back.

:func:`encode_dataset` writes the autoencoder's scaled latents as an ordinary pdediff
field Dataset: variables ``z0 .. z{c-1}`` with dims ``(sample, latent_<dim>, ...)`` on an
index grid ``0, 1, ..., h - 1``, so the unchanged ``pdediff train --data latents.nc``
trains a latent diffusion model (Rombach et al. 2022, arXiv:2112.10752).  The attributes
record which autoencoder made the latents (path and weight digest, checked when sampling)
and its scale factor; ``pde`` is ``"unknown"`` (a latent obeys no PDE; the family of the
fields is kept in ``latent_of_pde``).
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from pdediff.errors import DataError
from pdediff.io.conventions import CONVENTIONS, SAMPLE_DIM, history_line
from pdediff.io.fieldspec import FieldSpec
from pdediff.latent.autoencoder import Autoencoder
from pdediff.latent.train import EVAL_BATCH

__all__ = [
    "LATENT_PREFIX",
    "check_latent_spec",
    "decode_dataset",
    "encode_dataset",
    "latent_dims",
    "latent_names",
]

#: Latent variables are ``z0, z1, ...``; latent dims ``latent_<field dim>``.
LATENT_PREFIX = "z"
DIM_PREFIX = "latent_"


def latent_names(ae: Autoencoder) -> list[str]:
    return [f"{LATENT_PREFIX}{i}" for i in range(ae.latent_channels)]


def latent_dims(ae: Autoencoder) -> tuple[str, ...]:
    return tuple(DIM_PREFIX + d for d in ae.spec.dims)


def _attrs(ae: Autoencoder, sample: bool) -> dict:
    return {
        "Conventions": CONVENTIONS,
        "pde": "unknown",
        "latent_of_pde": str(ae.spec.attrs.get("pde", "unknown")),
        "latent_of_variables": ",".join(ae.spec.variables),
        "autoencoder": str(ae.path) if ae.path is not None else "<in memory>",
        "autoencoder_digest": ae.digest(),
        "scale_factor": float(ae.scale_factor),
        "downsample": int(ae.net.downsample),
        "latent_posterior": "sample" if sample else "mean",
        "source": "pdediff encode (latents of a field autoencoder)",
        "history": history_line(f"encode with autoencoder {ae.path}"),
    }


@torch.no_grad()
def encode_dataset(
    ae: Autoencoder,
    ds: xr.Dataset,
    *,
    sample: bool = False,
    seed: int = 0,
    batch_size: int = EVAL_BATCH,
) -> xr.Dataset:
    """Latents of the fields of ``ds``, as a Dataset a diffusion model can train on.

    Parameters
    ----------
    ae
        The autoencoder; ``ds`` must hold its variables on its grid.
    ds
        Fields ``(sample, *grid)`` in physical units (normalised with ``ae.spec``).
    sample
        Draw ``z ~ q(z | x)`` instead of the posterior mean (Stable Diffusion samples; with
        a KL weight of 1e-6 the posterior is nearly a point, and the mean is reproducible).
    seed
        Seed of the draws with ``sample``.

    Returns
    -------
    xarray.Dataset
        ``z0 .. z{c-1}`` ``(sample, latent_<dim>, ...)``, scaled by ``ae.scale_factor``.
    """
    x = ae.spec.to_tensor(ds)
    device = next(ae.net.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    z = torch.cat(
        [
            ae.encode(x[i : i + batch_size].to(device), sample, generator).cpu()
            for i in range(0, x.shape[0], batch_size)
        ]
    ).numpy()
    dims = latent_dims(ae)
    coords = {
        d: xr.Variable(
            d, np.arange(n, dtype=np.float64), {"units": "1", "long_name": f"latent index of {f}"}
        )
        for d, f, n in zip(dims, ae.spec.dims, z.shape[2:], strict=True)
    }
    data_vars = {
        name: xr.Variable(
            (SAMPLE_DIM, *dims),
            z[:, i].astype(np.float32),
            {"long_name": f"latent channel {i}", "units": "1", "role": "latent"},
        )
        for i, name in enumerate(latent_names(ae))
    }
    return xr.Dataset(data_vars, coords=coords, attrs=_attrs(ae, sample))


def check_latent_spec(spec: FieldSpec, ae: Autoencoder, where: str = "the latent model") -> None:
    """Raise :class:`DataError` unless ``spec`` (of a model trained on
    :func:`encode_dataset` output) is in the latent space of ``ae``."""
    names, shape = tuple(latent_names(ae)), ae.latent_shape
    if spec.variables != names or spec.shape != shape:
        raise DataError(
            f"{where} has variables {list(spec.variables)} on a {spec.shape} grid, but the "
            f"autoencoder {ae.path} makes latents {list(names)} on a {shape} grid: train the "
            "latent model on `pdediff encode` output of this autoencoder"
        )
    digest = spec.attrs.get("autoencoder_digest")
    if digest is not None and digest != ae.digest():
        raise DataError(
            f"{where} was trained on latents of another autoencoder "
            f"({spec.attrs.get('autoencoder')}, digest {digest}) than {ae.path} (digest "
            f"{ae.digest()}); pass the autoencoder that encoded its training data"
        )


@torch.no_grad()
def decode_dataset(ae: Autoencoder, latents: xr.Dataset) -> xr.Dataset:
    """Fields (physical units, ``ae.spec``'s grid) of a latent Dataset: the inverse of
    :func:`encode_dataset` up to the reconstruction error."""
    names = latent_names(ae)
    missing = [n for n in names if n not in latents.data_vars]
    if missing:
        raise DataError(
            f"the latents lack variable(s) {missing}; the autoencoder has {len(names)} "
            "latent channels"
        )
    dims = latent_dims(ae)
    z = np.stack([latents[n].transpose(SAMPLE_DIM, *dims).values for n in names], axis=1)
    if z.shape[2:] != ae.latent_shape:
        raise DataError(
            f"latent grid {z.shape[2:]} differs from the autoencoder's {ae.latent_shape}"
        )
    device = next(ae.net.parameters()).device
    x = ae.decode(torch.from_numpy(z).float().to(device)).cpu()
    return ae.spec.to_dataset(x)
