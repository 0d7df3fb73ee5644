"""A UNet backbone for diffusion on 2-D grids.

The architecture follows the UNet of Ronneberger et al. 2015 ("U-Net: Convolutional
Networks for Biomedical Image Segmentation") as adapted to score models: residual blocks
with GroupNorm/SiLU, a noise-level embedding injected into every block, self-attention at
coarse levels and skip connections from every encoder block to the decoder (DDPM++ of Song
et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations";
the SongUNet of Karras et al. 2022, EDM, which DiffusionPDE uses; and the ADM UNet of
Dhariwal & Nichol 2021).  The embedding enters each block as a per-sample, per-channel
scale and shift after the second GroupNorm (FiLM, Perez et al. 2018; ADM's
``use_scale_shift_norm``).

Initialisation: the last convolution of every residual block, the output projection of
every attention layer and the output convolution are zero, so each block starts as its
skip path and an untrained net outputs exactly 0 (with EDM preconditioning the untrained
denoiser is then ``c_skip x``).  Everything else uses PyTorch's default initialisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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

__all__ = ["UNet"]

#: Residual sums are scaled by 1/sqrt(2) to keep unit variance (SongUNet's ``skip_scale``).
SKIP_SCALE = math.sqrt(0.5)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(group_count(channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """Residual block: ``GN-SiLU-conv``, FiLM of the embedding, ``GN-SiLU-dropout-conv``,
    plus the (1x1-projected) input, optionally followed by self-attention.

    Parameters
    ----------
    in_channels, out_channels
        Channels of the input and the output.
    emb_dim
        Size of the embedding vector.
    dropout
        Dropout probability before the second convolution.
    attention
        Whether a :class:`SelfAttention` layer follows the block.
    """

    def __init__(
        self, in_channels: int, out_channels: int, emb_dim: int, dropout: float, attention: bool
    ) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = (
            nn.Conv2d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )
        self.attn = SelfAttention(out_channels) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        h = self.conv2(self.dropout(h))
        h = (h + self.skip(x)) * SKIP_SCALE
        return h if self.attn is None else self.attn(h)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the grid points of one sample (one head per 64
    channels), residual, with a zero-initialised output projection.

    Parameters
    ----------
    channels
        Number of channels.
    head_channels
        Channels per head (a single head when ``channels`` is not a multiple).
    """

    def __init__(self, channels: int, head_channels: int = 64) -> None:
        super().__init__()
        heads = max(1, channels // head_channels)
        self.heads = heads if channels % heads == 0 else 1
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (n, heads, h*w, c/heads)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(n, c, h, w)
        return (x + self.proj(out)) * SKIP_SCALE


class Downsample(nn.Module):
    """Halve the grid with a stride-2 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the grid: nearest-neighbour upsampling, then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _validate(
    in_channels: int,
    out_channels: int,
    model_channels: int,
    channel_mult: list[int],
    num_blocks: int,
    attn_levels: list[int],
    dropout: float,
    vector_dim: int,
    num_labels: int,
    cond_channels: int,
    emb_dim: int | None,
) -> None:
    """Raise :class:`BackboneError` naming the first bad constructor argument of UNet."""
    check_positive(
        in_channels=in_channels,
        out_channels=out_channels,
        model_channels=model_channels,
        num_blocks=num_blocks,
        **({} if emb_dim is None else {"emb_dim": emb_dim}),
    )
    check_nonnegative(vector_dim=vector_dim, num_labels=num_labels, cond_channels=cond_channels)
    if not channel_mult or min(channel_mult) < 1:
        raise BackboneError(
            f"channel_mult must be a non-empty sequence of positive ints, got {channel_mult}"
        )
    levels = len(channel_mult)
    if any(not 0 <= i < levels for i in attn_levels):
        raise BackboneError(
            f"attn_levels {attn_levels} must be level indices in [0, {levels - 1}] "
            f"(one per entry of channel_mult {channel_mult})"
        )
    if not 0.0 <= dropout < 1.0:
        raise BackboneError(f"dropout must be in [0, 1), got {dropout!r}")


class UNet(nn.Module):
    """UNet backbone ``F(x, c_noise, cond=None)`` for score models on 2-D grids.

    Ronneberger et al. 2015 (U-Net), with the residual/attention/embedding design of
    DDPM++ (Song et al. 2021) and SongUNet (Karras et al. 2022) and FiLM conditioning
    (Perez et al. 2018).  Level ``i`` has ``model_channels * channel_mult[i]`` channels and
    ``num_blocks`` residual blocks in the encoder (``num_blocks + 1`` in the decoder, each
    reading one skip connection); the grid is halved between levels.  The middle (coarsest)
    stage is ``ResBlock + attention, ResBlock`` as in SongUNet.  DiffusionPDE's network is
    ``UNet(2, 2, model_channels=128, channel_mult=(2, 2, 2), num_blocks=4, attn_levels=())``
    (its ``attn_resolutions=[16]`` names no level of a 128x128 input, so only the middle
    stage has attention).

    Conditioning: ``cond["vector"]`` (a linear map) and ``cond["label"]`` (an embedding
    table) are added to the noise features before the embedding MLP; ``cond["fields"]`` is
    concatenated to the input channels.  Where ``cond["drop"]`` is True, or a condition
    the net was built for is absent, learned null embeddings and zero fields are used.

    Parameters
    ----------
    in_channels, out_channels
        Channels of ``x`` and of the output.
    model_channels
        Base number of channels.
    channel_mult
        Channel multiplier per level; ``len(channel_mult)`` levels, so ``H`` and ``W`` must
        be divisible by ``2 ** (len(channel_mult) - 1)``.
    num_blocks
        Residual blocks per level (encoder).
    attn_levels
        Indices of the levels whose blocks are followed by self-attention (coarse levels:
        attention costs ``(H W)^2``).
    dropout
        Dropout probability inside the residual blocks.
    vector_dim
        Size of ``cond["vector"]`` (0: none).
    num_labels
        Number of classes of ``cond["label"]`` (0: none).
    cond_channels
        Channels of ``cond["fields"]`` (0: none).
    emb_dim
        Size of the embedding; default ``4 * model_channels``.

    Notes
    -----
    The output convolution, the last convolution of each residual block and the attention
    output projections are zero-initialised, so an untrained net outputs 0.
    """

    name = "unet"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        model_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_blocks: int = 1,
        attn_levels: Sequence[int] = (2,),
        dropout: float = 0.0,
        vector_dim: int = 0,
        num_labels: int = 0,
        cond_channels: int = 0,
        emb_dim: int | None = None,
    ) -> None:
        super().__init__()
        channel_mult = as_int_tuple(channel_mult, "channel_mult")
        attn_levels = as_int_tuple(attn_levels, "attn_levels")
        self._config = dict(
            in_channels=in_channels,
            out_channels=out_channels,
            model_channels=model_channels,
            channel_mult=list(channel_mult),
            num_blocks=num_blocks,
            attn_levels=list(attn_levels),
            dropout=float(dropout),
            vector_dim=vector_dim,
            num_labels=num_labels,
            cond_channels=cond_channels,
            emb_dim=emb_dim,
        )
        _validate(**self._config)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.cond_channels, self.levels = cond_channels, len(channel_mult)
        emb = emb_dim or 4 * model_channels
        self.embed = ConditionEmbedding(
            noise_feature_count(model_channels), emb, vector_dim, num_labels
        )
        self.conv_in = nn.Conv2d(in_channels + cond_channels, model_channels, 3, padding=1)
        widths = [model_channels * m for m in channel_mult]
        self.encoder, skips = self._build_encoder(model_channels, widths, num_blocks, emb)
        ch, blk = widths[-1], dict(emb_dim=emb, dropout=float(dropout))
        self.middle = nn.ModuleList(
            [ResBlock(ch, ch, attention=True, **blk), ResBlock(ch, ch, attention=False, **blk)]
        )
        self.decoder = self._build_decoder(widths, skips, num_blocks, emb)
        self.norm_out = _norm(widths[0])
        self.conv_out = zero_(nn.Conv2d(widths[0], out_channels, 3, padding=1))

    def _build_encoder(
        self, ch: int, widths: list[int], num_blocks: int, emb: int
    ) -> tuple[nn.ModuleList, list[int]]:
        attn, dropout = set(self._config["attn_levels"]), self._config["dropout"]
        blocks, skips = nn.ModuleList(), [ch]
        for level, width in enumerate(widths):
            if level > 0:
                blocks.append(Downsample(ch))
                skips.append(ch)
            for _ in range(num_blocks):
                blocks.append(ResBlock(ch, width, emb, dropout, attention=level in attn))
                ch = width
                skips.append(ch)
        return blocks, skips

    def _build_decoder(
        self, widths: list[int], skips: list[int], num_blocks: int, emb: int
    ) -> nn.ModuleList:
        attn, dropout = set(self._config["attn_levels"]), self._config["dropout"]
        blocks, ch, skips = nn.ModuleList(), widths[-1], list(skips)
        for level in reversed(range(len(widths))):
            for _ in range(num_blocks + 1):
                width = widths[level]
                blocks.append(
                    ResBlock(ch + skips.pop(), width, emb, dropout, attention=level in attn)
                )
                ch = width
            if level > 0:
                blocks.append(Upsample(ch))
        return blocks

    @property
    def config(self) -> dict:
        """Constructor arguments (JSON-ready) that rebuild this net:
        ``UNet(**net.config)`` or ``build_backbone("unet", **net.config)``."""
        return {k: list(v) if isinstance(v, list) else v for k, v in self._config.items()}

    def _check_grid(self, x: torch.Tensor) -> None:
        divisor = 2 ** (self.levels - 1)
        if x.shape[-2] % divisor or x.shape[-1] % divisor:
            raise BackboneError(
                f"UNet with {self.levels} levels needs H and W divisible by {divisor}; "
                f"got input of shape {tuple(x.shape)}"
            )

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, cond: dict | None = None
    ) -> torch.Tensor:
        """Evaluate the network.

        Parameters
        ----------
        x
            Input ``(N, in_channels, H, W)``, ``H`` and ``W`` divisible by
            ``2 ** (len(channel_mult) - 1)``.
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
        c_noise = check_input("UNet", x, c_noise, self.in_channels)
        self._check_grid(x)
        cfg = self._config
        check_cond_keys(
            "UNet",
            cond,
            {
                "vector": cfg["vector_dim"] > 0,
                "label": cfg["num_labels"] > 0,
                "fields": self.cond_channels > 0,
            },
        )
        drop = drop_mask(cond, x.shape[0], x.device)
        emb = self.embed(c_noise, cond, drop)
        h = self.conv_in(concat_fields("UNet", x, cond, self.cond_channels, drop))
        skips = [h]
        for block in self.encoder:
            h = block(h, emb)
            skips.append(h)
        for block in self.middle:
            h = block(h, emb)
        for block in self.decoder:
            if isinstance(block, ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))
