"""Latent diffusion: a field autoencoder, latent datasets, and posterior sampling with
guidance through the decoder (Rombach et al. 2022, arXiv:2112.10752).

>>> from pdediff.latent import train_autoencoder, load_autoencoder, encode_dataset
>>> train_autoencoder("darcy.nc", "ae", downsample=4, steps=2000)        # doctest: +SKIP
>>> ae = load_autoencoder("ae")                                          # doctest: +SKIP
>>> encode_dataset(ae, open_fields("darcy.nc")).to_netcdf("z.nc")        # doctest: +SKIP

then ``pdediff train --data z.nc --out ldm`` and
``latent_solve("ldm", "ae", "obs.nc", task="inverse")``.
"""

from pdediff.latent.autoencoder import (
    Autoencoder,
    FieldAutoencoder,
    autoencoder_for,
    kl_divergence,
    load_autoencoder,
    save_autoencoder,
)
from pdediff.latent.encode import check_latent_spec, decode_dataset, encode_dataset
from pdediff.latent.solve import latent_solve
from pdediff.latent.train import AutoencoderResult, evaluate_autoencoder, train_autoencoder

__all__ = [
    "Autoencoder",
    "AutoencoderResult",
    "FieldAutoencoder",
    "autoencoder_for",
    "check_latent_spec",
    "decode_dataset",
    "encode_dataset",
    "evaluate_autoencoder",
    "kl_divergence",
    "latent_solve",
    "load_autoencoder",
    "save_autoencoder",
    "train_autoencoder",
]
