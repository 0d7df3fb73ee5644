"""A Fourier neural operator backbone for diffusion on 2-D grids.

The Fourier layers are neuraloperator's ``SpectralConv`` (Li et al. 2021, "Fourier Neural
Operator for Parametric Partial Differential Equations"; Kossaifi et al., neuraloperator).
neuraloperator's own FNO conditions its blocks with one AdaIN vector shared by the whole
batch; a diffusion backbone needs a different noise level (and condition) per sample, so
each block here is written out::

    h <- GELU(FiLM_emb(GroupNorm(SpectralConv(h) + Conv1x1(h))))

with the per-sample, per-channel scale and shift ``(1 + gamma(emb)) * h + beta(emb)`` of
FiLM (Perez et al. 2018).  GroupNorm statistics are per sample and averaged over the grid,
and the spectral weights act on a fixed number of Fourier modes, so one set of weights
runs at any resolution.

neuraloperator is imported when an :class:`FNOBackbone` is built, not when this module is
imported (it takes about a second).

Precision: neuraloperator 2.0 computes the Fourier-space product in complex64 whatever the
input dtype, so for float64 inputs the spectral path runs in single precision (everything
else runs in float64).  Its complex weights stay complex64 under ``.double()``, and
:class:`_SpectralConv` keeps ``.to(torch.float64)`` from casting them to real numbers
(which would silently drop their imaginary parts).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._common import (
    BackboneError,
    ConditionEmbedding,
    as_int_tuple,
    check_cond_keys,
    check_input,
    check_nonnegative,
    check_positive,
    concat_fields,
    drop_mask,
    group_count,
    noise_feature_count,
    zero_,
)

__all__ = ["FNOBackbone"]


def _neuralop_spectral_conv() -> type[nn.Module]:
    """neuraloperator's ``SpectralConv`` class, imported on first use."""
    try:
        from neuralop.layers.spectral_convolution import SpectralConv
    except ImportError as err:  # pragma: no cover - neuraloperator is a dependency
        raise BackboneError(
            "FNOBackbone needs neuraloperator (pip install neuraloperator)"
        ) from err
    return SpectralConv


class _SpectralConv(nn.Module):
    """neuraloperator's ``SpectralConv`` (complex64 weights), run in single precision.

    Parameters
    ----------
    channels
        Input and output channels.
    modes
        Fourier modes kept along (H, W), neuraloperator's ``n_modes``: the total number
        along H (half negative, half positive frequencies) and ``modes[1] // 2 + 1`` of the
        real FFT along W.
    """

    def __init__(self, channels: int, modes: tuple[int, int]) -> None:
        super().__init__()
        self.conv = _neuralop_spectral_conv()(channels, channels, n_modes=modes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # neuraloperator allocates its Fourier-space output as complex64.
        return self.conv(x.to(torch.float32)).to(x.dtype)

    def _apply(self, fn: Callable, recurse: bool = True) -> nn.Module:
        # Module.to(dtype) casts complex parameters to that dtype too; to a real dtype that
        # drops the imaginary part.  Keep complex tensors complex (moving only the device).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            probe = fn(torch.zeros(1, dtype=torch.complex64))
        if probe.is_complex():
            return super()._apply(fn, recurse)

        def keep_complex(t: torch.Tensor) -> torch.Tensor:
            return t.to(probe.device) if t.is_complex() else fn(t)

        return super()._apply(keep_complex, recurse)


class FiLMSpectralBlock(nn.Module):
    """``GELU(FiLM(GroupNorm(SpectralConv(h) + Conv1x1(h))))`` with per-sample FiLM.

    Parameters
    ----------
    width
        Channels.
    modes
        Fourier modes (see :class:`_SpectralConv`).
    emb_dim
        Size of the embedding that gives the FiLM scale and shift.
    """

    def __init__(self, width: int, modes: tuple[int, int], emb_dim: int) -> None:
        super().__init__()
        self.spectral = _SpectralConv(width, modes)
        self.skip = nn.Conv2d(width, width, 1)
        self.norm = nn.GroupNorm(group_count(width), width, affine=False)
        self.film = nn.Linear(emb_dim, 2 * width)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.spectral(h) + self.skip(h))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        return F.gelu(h * (1 + scale) + shift)


def grid_channels(x: torch.Tensor) -> torch.Tensor:
    """Coordinates ``(i/H, j/W)`` in ``[0, 1)`` as two channels ``(N, 2, H, W)``
    (neuraloperator's periodic grid embedding: the points of a 2x coarser grid are a
    subset of those of the finer one)."""
    n, _, h, w = x.shape
    ys = torch.arange(h, dtype=x.dtype, device=x.device) / h
    xs = torch.arange(w, dtype=x.dtype, device=x.device) / w
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([yy, xx]).expand(n, 2, h, w)


class FNOBackbone(nn.Module):
    """Fourier-neural-operator backbone ``F(x, c_noise, cond=None)`` (Li et al. 2021) with
    per-sample FiLM conditioning (Perez et al. 2018).

    Lifting (two-layer 1x1 channel MLP to ``width``), ``n_layers``
    :class:`FiLMSpectralBlock` s, projection (two-layer 1x1 channel MLP, the last layer
    zero-initialised so an untrained net outputs 0).  The embedding of ``c_noise`` and of
    the vector/label conditions is that of the UNet (positional features + MLP, learned null
    conditions); ``cond["fields"]`` is concatenated to the input channels (zeros where
    dropped).  The same weights run at any resolution.

    Parameters
    ----------
    in_channels, out_channels
        Channels of ``x`` and of the output.
    width
        Channels of the Fourier layers.
    modes
        Fourier modes kept along (H, W), neuraloperator's ``n_modes`` (even numbers: the
        total along H; ``modes[1] // 2 + 1`` real-FFT modes along W).  A grid with fewer
        modes uses the ones it has.
    n_layers
        Number of Fourier blocks.
    vector_dim
        Size of ``cond["vector"]`` (0: none).
    num_labels
        Number of classes of ``cond["label"]`` (0: none).
    cond_channels
        Channels of ``cond["fields"]`` (0: none).
    emb_dim
        Size of the embedding; default ``4 * width``.
    grid
        Append the coordinates ``(i/H, j/W)`` as two input channels (neuraloperator's
        default positional embedding).  Without them the net is translation-equivariant on
        periodic grids.
    """

    name = "fno"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: int = 32,
        modes: Sequence[int] = (12, 12),
        n_layers: int = 4,
        vector_dim: int = 0,
        num_labels: int = 0,
        cond_channels: int = 0,
        emb_dim: int | None = None,
        grid: bool = True,
    ) -> None:
        super().__init__()
        modes = as_int_tuple(modes, "modes")
        check_positive(
            in_channels=in_channels, out_channels=out_channels, width=width, n_layers=n_layers
        )
        check_nonnegative(vector_dim=vector_dim, num_labels=num_labels, cond_channels=cond_channels)
        if len(modes) != 2 or min(modes) < 1:
            raise BackboneError(f"modes must be two positive ints (H, W), got {modes}")
        if emb_dim is not None:
            check_positive(emb_dim=emb_dim)
        self._config = dict(
            in_channels=in_channels, out_channels=out_channels, width=width,
            modes=list(modes), n_layers=n_layers, vector_dim=vector_dim,
            num_labels=num_labels, cond_channels=cond_channels, emb_dim=emb_dim,
            grid=bool(grid),
        )  # fmt: skip
        self.in_channels, self.cond_channels, self.grid = in_channels, cond_channels, bool(grid)
        emb = emb_dim or 4 * width
        self.embed = ConditionEmbedding(noise_feature_count(width), emb, vector_dim, num_labels)
        lift_in = in_channels + cond_channels + (2 if grid else 0)
        self.lift = nn.Sequential(
            nn.Conv2d(lift_in, 2 * width, 1), nn.GELU(), nn.Conv2d(2 * width, width, 1)
        )
        self.blocks = nn.ModuleList(
            FiLMSpectralBlock(width, (modes[0], modes[1]), emb) for _ in range(n_layers)
        )
        self.project = nn.Sequential(
            nn.Conv2d(width, 2 * width, 1),
            nn.GELU(),
            zero_(nn.Conv2d(2 * width, out_channels, 1)),
        )

    @property
    def config(self) -> dict:
        """Constructor arguments (JSON-ready) that rebuild this net:
        ``FNOBackbone(**net.config)`` or ``build_backbone("fno", **net.config)``."""
        return {k: list(v) if isinstance(v, list) else v for k, v in self._config.items()}

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, cond: dict | None = None
    ) -> torch.Tensor:
        """Evaluate the network.

        Parameters
        ----------
        x
            Input ``(N, in_channels, H, W)``, any ``H``, ``W``.
        c_noise
            Noise labels ``(N,)`` (or a scalar), any range (``ln(sigma)/4``, ``[0, 999]``).
        cond
            Optional :data:`~pdediff.core.types.Cond` dict with the keys this net was built
            for (``"vector"``, ``"label"``, ``"fields"``) and ``"drop"``.

        Returns
        -------
        torch.Tensor
            ``(N, out_channels, H, W)`` in the dtype of ``x``.
        """
        c_noise = check_input("FNOBackbone", x, c_noise, self.in_channels)
        cfg = self._config
        check_cond_keys(
            "FNOBackbone",
            cond,
            {"vector": cfg["vector_dim"] > 0, "label": cfg["num_labels"] > 0,
             "fields": self.cond_channels > 0},
        )  # fmt: skip
        drop = drop_mask(cond, x.shape[0], x.device)
        emb = self.embed(c_noise, cond, drop)
        h = concat_fields("FNOBackbone", x, cond, self.cond_channels, drop)
        if self.grid:
            h = torch.cat([h, grid_channels(x)], dim=1)
        h = self.lift(h)
        for block in self.blocks:
            h = block(h, emb)
        return self.project(h)
