"""Training a super-resolution stage: the conditioning the loop makes from every batch.

``pdediff train --stage sr --from 32 --to 64 --data HIGH.nc --out SR`` trains an ordinary
denoiser on the high-resolution fields ``x0`` (normalised by their
:class:`~pdediff.io.FieldSpec`) with, per batch (Ho et al. 2021, arXiv:2106.15282, Sec. 4),

.. math::  \\mathrm{cond} = \\{\\text{fields}: G_b * \\mathrm{up}(\\mathrm{down}(x_0))
           + s\\,\\varepsilon,\\ \\text{vector}: s\\},
           \\qquad s \\sim U[0, s_\\max],\\ b \\sim U[0, b_\\max]

per sample.  Down- and upsampling are linear and keep constants, so on the normalised
fields they equal the normalised down- and upsampled physical fields: the conditioning at
sampling time (a base sample de-normalised by the base model's spec, upsampled, normalised
by this stage's spec) has the same meaning.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pdediff.cascade.augment import augment, downsample, upsample
from pdediff.core.types import Cond
from pdediff.io.fieldspec import FieldSpec
from pdediff.train.config import CascadeConfig, ConfigError

__all__ = ["periodic_dims", "sr_conditioning"]


def periodic_dims(spec: FieldSpec) -> tuple[bool, ...]:
    """Whether each grid dim of ``spec`` is periodic, in order."""
    periodic = spec.grid().periodic
    return tuple(d in periodic for d in spec.dims)


def sr_conditioning(
    cascade: CascadeConfig, spec: FieldSpec
) -> Callable[[torch.Tensor, Cond | None, torch.Generator], Cond]:
    """The per-batch conditioning hook of a super-resolution stage.

    Parameters
    ----------
    cascade
        The stage's settings (``stage = "sr"``).
    spec
        The training data's spec; its grid must be ``cascade.to_shape``.

    Returns
    -------
    callable
        ``hook(x0, cond, generator) -> cond``: ``cond["fields"]`` the augmented
        upsampled low-resolution ``x0``; ``cond["vector"]`` the existing condition vector
        (if any) with the noise level ``s`` appended.  ``s`` and then the blur are drawn
        from ``generator``, then the noise.

    Raises
    ------
    ConfigError
        The data are not on ``to_shape``, or not 2-D.
    """
    if list(spec.shape) != list(cascade.to_shape):
        raise ConfigError(
            f"the super-resolution stage is to_shape {cascade.to_shape} (--to) but the data "
            f"are on a {list(spec.shape)} grid; give --to {spec.shape[0]} or other data"
        )
    if len(spec.shape) != 2:
        raise ConfigError(f"cascades need 2-D grids; the data have dims {spec.dims}")
    periodic = periodic_dims(spec)
    low_shape, high_shape = list(cascade.from_shape), list(cascade.to_shape)

    def hook(x0: torch.Tensor, cond: Cond | None, generator: torch.Generator) -> Cond:
        n = x0.shape[0]
        u = torch.rand(2, n, generator=generator, device=x0.device, dtype=x0.dtype)
        s, blur = cascade.aug_noise_max * u[0], cascade.aug_blur * u[1]
        low = upsample(downsample(x0, low_shape, periodic), high_shape, periodic)
        fields = augment(low, s, blur, generator, periodic)
        vector = s[:, None]
        if cond is not None and cond.get("vector") is not None:
            vector = torch.cat([cond["vector"].to(x0.dtype), vector], dim=1)
        return {**(cond or {}), "fields": fields, "vector": vector}

    return hook
