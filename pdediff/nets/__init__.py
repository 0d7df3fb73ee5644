"""Backbone networks ``F(x, c_noise, cond=None) -> (N, out_channels, H, W)``.

A preconditioner (:mod:`pdediff.core.precond`) wraps a backbone into a denoiser.  Every
backbone takes plain keyword arguments and has a JSON-ready ``config`` dict, so a
checkpoint rebuilds it with ``build_backbone(name, **config)``.

``unet``  :class:`~pdediff.nets.unet.UNet`: residual UNet with attention (DDPM++/SongUNet).
``fno``   :class:`~pdediff.nets.fno.FNOBackbone`: Fourier neural operator with per-sample
          FiLM, resolution-agnostic (imports neuraloperator when built).
"""

from __future__ import annotations

import inspect

from torch import nn

from ._common import BackboneError
from .fno import FNOBackbone
from .unet import UNet

__all__ = ["BACKBONES", "BackboneError", "FNOBackbone", "UNet", "build_backbone"]

#: Backbone classes by name (a plain dict: add an entry to register another backbone).
BACKBONES: dict[str, type[nn.Module]] = {"unet": UNet, "fno": FNOBackbone}


def build_backbone(name: str, **config) -> nn.Module:
    """Build the backbone ``name`` from its constructor arguments.

    Parameters
    ----------
    name
        A key of :data:`BACKBONES` (``"unet"``, ``"fno"``).
    **config
        Constructor arguments, e.g. ``net.config`` of an existing backbone (JSON lists are
        accepted where tuples are expected).

    Returns
    -------
    torch.nn.Module
        The new backbone (freshly initialised).

    Raises
    ------
    BackboneError
        (a ``ValueError``) for an unknown name, unknown or missing arguments, or bad values.
    """
    if name not in BACKBONES:
        raise BackboneError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}")
    cls = BACKBONES[name]
    try:
        inspect.signature(cls).bind(**config)
    except TypeError as err:
        params = list(inspect.signature(cls).parameters)
        raise BackboneError(
            f"bad arguments for backbone {name!r}: {err}; it takes {params}"
        ) from None
    return cls(**config)
