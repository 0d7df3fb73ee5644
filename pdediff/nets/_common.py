"""Pieces shared by the backbones: the noise-level embedding, the condition embedding with
learned null conditions, field concatenation and input checks.

A backbone sees the preconditioner's noise label ``c_noise`` (``ln(sigma)/4`` for EDM,
``(M - 1) t`` in ``[0, 999]`` for VP) and an optional :data:`~pdediff.core.types.Cond`
dict.  Both are turned into one embedding vector per sample, which every block reads.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn

from pdediff.errors import PdediffError

__all__ = [
    "BackboneError",
    "ConditionEmbedding",
    "concat_fields",
    "group_count",
    "positional_features",
    "zero_",
]

#: The condition keys a backbone understands (see :data:`pdediff.core.types.Cond`).
COND_KEYS = ("vector", "label", "fields", "drop")


class BackboneError(PdediffError):
    """A backbone got a bad argument, input shape or condition."""


def zero_(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (in place) and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def group_count(channels: int, max_groups: int = 32, min_per_group: int = 4) -> int:
    """Number of GroupNorm groups for ``channels``: at most 32, at least 4 channels each
    (the SongUNet rule of Karras et al. 2022), and a divisor of ``channels``."""
    groups = max(1, min(max_groups, channels // min_per_group))
    while channels % groups:
        groups -= 1
    return groups


def noise_feature_count(channels: int) -> int:
    """Number of positional features of ``c_noise`` for a net of ``channels`` channels:
    ``channels`` rounded to even, at least 8."""
    return 2 * max(4, channels // 2)


def positional_features(
    c_noise: torch.Tensor, num_features: int, max_positions: float = 10_000.0
) -> torch.Tensor:
    r"""Sinusoidal features of the noise label (Vaswani et al. 2017; Ho et al. 2020).

    .. math::

        \phi(c) = [\cos(c\,\omega_k), \sin(c\,\omega_k)]_{k=0}^{K-1},\quad
        \omega_k = M^{-k/(K-1)},\quad K = \text{num\_features}/2,

    the "positional" embedding of DDPM++ with ``endpoint=True`` as in NVlabs/edm (used by
    DiffusionPDE with ``c_noise = ln(sigma)/4``).  The frequencies span ``1`` to ``1/M``, so
    both ``c_noise`` in ``[-2, 2]`` (EDM: the high frequencies resolve it) and ``c_noise`` in
    ``[0, 999]`` (VP: the low ones do) get distinct, bounded features.

    Parameters
    ----------
    c_noise
        Noise labels, shape ``(N,)``.
    num_features
        Even number of features ``2K`` with ``K >= 2``.
    max_positions
        ``M``, the inverse of the lowest frequency.

    Returns
    -------
    torch.Tensor
        ``(N, num_features)`` in the dtype of ``c_noise``.
    """
    half = num_features // 2
    exponents = torch.arange(half, dtype=c_noise.dtype, device=c_noise.device) / (half - 1)
    freqs = max_positions ** (-exponents)
    angles = c_noise[:, None] * freqs[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


def as_int_tuple(values: Sequence[int] | int, name: str) -> tuple[int, ...]:
    """``values`` as a tuple of ints (JSON gives lists); a clear error otherwise."""
    if isinstance(values, int):
        values = (values,)
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError) as err:
        raise BackboneError(f"{name} must be a sequence of integers, got {values!r}") from err
    if any(float(v) != o for v, o in zip(values, out, strict=True)):
        raise BackboneError(f"{name} must be a sequence of integers, got {values!r}")
    return out


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive(**values: int) -> None:
    """Raise :class:`BackboneError` naming the first argument that is not a positive int."""
    for name, value in values.items():
        if not _is_int(value) or value < 1:
            raise BackboneError(f"{name} must be a positive integer, got {value!r}")


def check_nonnegative(**values: int) -> None:
    """Raise :class:`BackboneError` naming the first argument that is not an int >= 0."""
    for name, value in values.items():
        if not _is_int(value) or value < 0:
            raise BackboneError(f"{name} must be an integer >= 0, got {value!r}")


def check_input(net: str, x: torch.Tensor, c_noise: torch.Tensor, channels: int) -> torch.Tensor:
    """Check ``x`` is ``(N, channels, H, W)``; return ``c_noise`` as ``(N,)`` in x's dtype."""
    if x.ndim != 4 or x.shape[1] != channels:
        raise BackboneError(
            f"{net} expects input of shape (N, {channels}, H, W), got {tuple(x.shape)}"
        )
    c_noise = torch.as_tensor(c_noise, device=x.device).to(x.dtype).reshape(-1)
    if c_noise.numel() == 1:
        c_noise = c_noise.expand(x.shape[0])
    if c_noise.shape[0] != x.shape[0]:
        raise BackboneError(
            f"{net}: c_noise has {c_noise.shape[0]} values for a batch of {x.shape[0]}"
        )
    return c_noise


def drop_mask(cond: dict | None, batch: int, device: torch.device) -> torch.Tensor:
    """``cond["drop"]`` as a bool ``(N,)`` tensor; all False when absent."""
    drop = None if cond is None else cond.get("drop")
    if drop is None:
        return torch.zeros(batch, dtype=torch.bool, device=device)
    drop = torch.as_tensor(drop, device=device).reshape(-1).to(torch.bool)
    if drop.numel() == 1:
        drop = drop.expand(batch)
    if drop.shape[0] != batch:
        raise BackboneError(f'cond["drop"] has {drop.shape[0]} values for a batch of {batch}')
    return drop


def check_cond_keys(net: str, cond: dict | None, allowed: dict[str, bool]) -> None:
    """Reject unknown keys, and keys this backbone was not built to use (a condition that
    would be silently ignored is a configuration error)."""
    if cond is None:
        return
    for key in cond:
        if key not in COND_KEYS:
            raise BackboneError(f"{net}: unknown condition key {key!r}; known: {COND_KEYS}")
        if key != "drop" and not allowed[key] and cond[key] is not None:
            size = {"vector": "vector_dim", "label": "num_labels", "fields": "cond_channels"}
            raise BackboneError(
                f'{net}: got cond["{key}"] but was built with {size[key]}=0; '
                f"build it with {size[key]} > 0 to use this condition"
            )


def concat_fields(
    net: str, x: torch.Tensor, cond: dict | None, cond_channels: int, drop: torch.Tensor
) -> torch.Tensor:
    """``x`` with ``cond["fields"]`` appended as channels; zeros where the condition is
    dropped or absent (the null field condition)."""
    if cond_channels == 0:
        return x
    fields = None if cond is None else cond.get("fields")
    n, _, h, w = x.shape
    if fields is None:
        return torch.cat([x, x.new_zeros(n, cond_channels, h, w)], dim=1)
    if tuple(fields.shape) != (n, cond_channels, h, w):
        raise BackboneError(
            f'{net}: cond["fields"] must have shape {(n, cond_channels, h, w)} to match the '
            f"input {tuple(x.shape)}, got {tuple(fields.shape)}"
        )
    fields = torch.where(drop[:, None, None, None], 0.0, fields.to(x.dtype))
    return torch.cat([x, fields], dim=1)


class ConditionEmbedding(nn.Module):
    """Embedding of the noise label and the vector/label conditions, one vector per sample.

    The positional features of ``c_noise`` plus a linear map of ``cond["vector"]`` plus an
    embedding of ``cond["label"]`` go through a two-layer SiLU MLP (the DDPM++ mapping
    network of Song et al. 2021 / Karras et al. 2022, with the conditions added before the
    MLP as in SongUNet).  Where ``cond["drop"]`` is True or a condition is absent, learned
    null embeddings are used instead: a null vector for the vector condition and the extra
    index ``num_labels`` of the label table, so classifier-free guidance needs no special
    input.

    Parameters
    ----------
    noise_dim
        Number of positional features of ``c_noise`` (even, >= 4).
    emb_dim
        Size of the output embedding.
    vector_dim
        Size of ``cond["vector"]`` (0: no vector condition).
    num_labels
        Number of classes of ``cond["label"]`` (0: no label condition).
    """

    def __init__(self, noise_dim: int, emb_dim: int, vector_dim: int, num_labels: int) -> None:
        super().__init__()
        self.noise_dim, self.vector_dim, self.num_labels = noise_dim, vector_dim, num_labels
        if vector_dim:
            self.vector = nn.Linear(vector_dim, noise_dim)
            self.null_vector = nn.Parameter(torch.zeros(noise_dim))
        if num_labels:
            # Row ``num_labels`` is the learned null label.
            self.label = nn.Embedding(num_labels + 1, noise_dim)
            nn.init.normal_(self.label.weight, std=1.0 / math.sqrt(noise_dim))
        self.mlp = nn.Sequential(
            nn.Linear(noise_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim), nn.SiLU()
        )

    def forward(self, c_noise: torch.Tensor, cond: dict | None, drop: torch.Tensor) -> torch.Tensor:
        """``(N, emb_dim)`` embedding from ``c_noise`` ``(N,)`` and the condition."""
        feats = positional_features(c_noise, self.noise_dim)
        if self.vector_dim:
            feats = feats + self._vector(cond, drop, feats)
        if self.num_labels:
            feats = feats + self._label(cond, drop)
        return self.mlp(feats)

    def _vector(self, cond: dict | None, drop: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        null = self.null_vector.to(like.dtype).expand_as(like)
        vec = None if cond is None else cond.get("vector")
        if vec is None:
            return null
        n = like.shape[0]
        if tuple(vec.shape) != (n, self.vector_dim):
            raise BackboneError(
                f'cond["vector"] must have shape {(n, self.vector_dim)}, got {tuple(vec.shape)}'
            )
        return torch.where(drop[:, None], null, self.vector(vec.to(like.dtype)))

    def _label(self, cond: dict | None, drop: torch.Tensor) -> torch.Tensor:
        label = None if cond is None else cond.get("label")
        null = torch.full_like(drop, self.num_labels, dtype=torch.long)
        if label is None:
            return self.label(null)
        label = torch.as_tensor(label, device=drop.device).reshape(-1)
        if label.shape != drop.shape or label.dtype.is_floating_point:
            raise BackboneError(
                f'cond["label"] must be integers of shape ({drop.shape[0]},), '
                f"got {label.dtype} {tuple(label.shape)}"
            )
        return self.label(torch.where(drop, null, label.long()))
