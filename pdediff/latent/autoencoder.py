"""A convolutional variational autoencoder of normalised PDE fields (the first stage of
latent diffusion), and its directory format.

The encoder maps fields ``x`` ``(N, C, H, W)`` (normalised by a
:class:`~pdediff.io.FieldSpec`) to a diagonal Gaussian posterior
:math:`q(z \\mid x) = \\mathcal N(\\mu(x), \\operatorname{diag} e^{\\log\\sigma^2(x)})` on a
grid ``f`` times coarser (``f = 2^L``, one stride-2 convolution per level); the decoder
maps ``z`` back.  Blocks are GroupNorm + SiLU residual blocks as in the first stage of
Stable Diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
Diffusion Models", CVPR, arXiv:2112.10752), trained on

.. math::

    \\mathcal L = \\frac1N \\sum_n \\Big( \\|x_n - \\hat x_n\\|_p^p
        + \\beta\\, \\mathrm{KL}\\big(q(z \\mid x_n)\\,\\|\\,\\mathcal N(0, I)\\big) \\Big),
    \\qquad
    \\mathrm{KL} = \\tfrac12 \\sum_j \\big(\\mu_j^2 + \\sigma_j^2 - 1 - \\log\\sigma_j^2\\big),

with :math:`p = 1` (or 2) and the small :math:`\\beta \\approx 10^{-6}` of the paper's
"KL-reg" autoencoders: the KL term only keeps the latent scale in check.  The latents a
diffusion model sees are multiplied by a scale factor ``1 / std(mu)`` (the paper's
``scale_factor``), stored with the autoencoder.

An autoencoder directory holds::

    config.json              format, version, architecture, scale factor, step, training
                             settings and the held-out evaluation
    fieldspec.json           the FieldSpec the fields are normalised with
    autoencoder.safetensors  the weights (no pickle)

It is written to a sibling temporary directory and swapped in with renames, so a crash
leaves the previous directory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pdediff.errors import DataError, PdediffError
from pdediff.io.fieldspec import FieldSpec
from pdediff.nets._common import group_count
from pdediff.train.checkpoint import (
    CheckpointError,
    _backup,
    _fsync_dir_files,
    _swap_in,
    check_weights,
    read_tensors,
    write_tensors,
)

__all__ = [
    "Autoencoder",
    "FieldAutoencoder",
    "FORMAT",
    "kl_divergence",
    "load_autoencoder",
    "save_autoencoder",
]

FORMAT = "pdediff-autoencoder"
VERSION = 1
CONFIG, SPEC, WEIGHTS = "config.json", "fieldspec.json", "autoencoder.safetensors"
FILES = (CONFIG, SPEC, WEIGHTS)
#: Channel multipliers of the levels, finest first (Stable Diffusion's ``ch_mult``).
DEFAULT_MULT = (1, 2, 4, 4, 4)
#: Stable Diffusion clamps the log-variance to this range for stability.
LOGVAR_RANGE = (-30.0, 20.0)


# -- network ------------------------------------------------------------------------------
class ResBlock(nn.Module):
    """``x + conv(SiLU(GN(conv(SiLU(GN(x))))))``, a 1x1 convolution on the skip when the
    channel count changes."""

    def __init__(self, c_in: int, c_out: int, padding_mode: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(group_count(c_in), c_in),
            nn.SiLU(),
            nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode=padding_mode),
            nn.GroupNorm(group_count(c_out), c_out),
            nn.SiLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, padding_mode=padding_mode),
        )
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


def _head(c_in: int, c_out: int, padding_mode: str) -> nn.Sequential:
    return nn.Sequential(
        nn.GroupNorm(group_count(c_in), c_in),
        nn.SiLU(),
        nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode=padding_mode),
    )


class _Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution (no checkerboard of transposed convs)."""

    def __init__(self, c_in: int, c_out: int, padding_mode: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode=padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


def _levels(downsample: int) -> int:
    if downsample not in (2, 4, 8, 16):
        raise PdediffError(
            f"downsample must be 2, 4, 8 or 16 (a power of two: one stride-2 convolution "
            f"per level), got {downsample!r}"
        )
    return int(math.log2(downsample))


class FieldAutoencoder(nn.Module):
    """Encoder and decoder of a KL-regularised convolutional autoencoder of 2-D fields.

    Parameters
    ----------
    channels
        Field channels ``C`` (the FieldSpec's variables).
    latent_channels
        Channels of the latent grid (4 in Stable Diffusion).
    downsample
        Grid reduction factor ``f`` per dim (2, 4, 8 or 16); ``H`` and ``W`` must be
        multiples of it.
    base_channels
        Width of the finest level; level ``i`` has ``base_channels * channel_mult[i]``.
    channel_mult
        Multipliers of the ``log2(f) + 1`` levels (default ``(1, 2, 4, 4, 4)[: L + 1]``).
    padding_mode
        ``"zeros"`` (bounded domains) or ``"circular"`` (periodic in both dims).
    """

    def __init__(
        self,
        channels: int,
        latent_channels: int = 4,
        downsample: int = 4,
        base_channels: int = 32,
        channel_mult: tuple[int, ...] | list[int] | None = None,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        levels = _levels(downsample)
        mult = tuple(channel_mult or DEFAULT_MULT[: levels + 1])
        _check_sizes(channels, latent_channels, base_channels, mult, levels, padding_mode)
        self.config = {
            "channels": channels,
            "latent_channels": latent_channels,
            "downsample": downsample,
            "base_channels": base_channels,
            "channel_mult": list(mult),
            "padding_mode": padding_mode,
        }
        ch = [base_channels * m for m in mult]
        pm = padding_mode
        enc: list[nn.Module] = [nn.Conv2d(channels, ch[0], 3, padding=1, padding_mode=pm)]
        for i in range(levels):
            enc += [
                ResBlock(ch[i], ch[i], pm),
                nn.Conv2d(ch[i], ch[i + 1], 3, 2, 1, padding_mode=pm),
            ]
        enc += [ResBlock(ch[-1], ch[-1], pm), _head(ch[-1], 2 * latent_channels, pm)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, ch[-1], 3, padding=1, padding_mode=pm)]
        dec.append(ResBlock(ch[-1], ch[-1], pm))
        for i in reversed(range(levels)):
            dec += [_Upsample(ch[i + 1], ch[i], pm), ResBlock(ch[i], ch[i], pm)]
        dec.append(_head(ch[0], channels, pm))
        self.decoder = nn.Sequential(*dec)

    @property
    def downsample(self) -> int:
        return int(self.config["downsample"])

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`DataError` unless ``x`` is ``(N, C, H, W)`` with ``H, W``
        multiples of the downsampling factor."""
        c, f = self.config["channels"], self.downsample
        if x.ndim != 4 or x.shape[1] != c:
            raise DataError(f"the autoencoder takes (N, {c}, H, W) fields, got {tuple(x.shape)}")
        if x.shape[2] % f or x.shape[3] % f:
            raise DataError(
                f"grid {tuple(x.shape[2:])} is not a multiple of the downsampling factor {f}; "
                f"use a smaller --downsample or crop/pad the fields to a multiple of {f}"
            )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each ``(N, latent_channels, H/f, W/f)``."""
        self.check_input(x)
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Fields ``(N, C, f h, f w)`` from latents ``(N, latent_channels, h, w)``."""
        if z.ndim != 4 or z.shape[1] != self.config["latent_channels"]:
            raise DataError(
                f"the decoder takes (N, {self.config['latent_channels']}, h, w) latents, "
                f"got {tuple(z.shape)}"
            )
        return self.decoder(z)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_hat, mean, logvar)`` with ``z = mean + exp(logvar / 2) * eps`` decoded."""
        mean, logvar = self.encode(x)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        return self.decode(mean + (0.5 * logvar).exp() * eps), mean, logvar


def _check_sizes(channels, latent_channels, base_channels, mult, levels, padding_mode) -> None:
    for name, v in (
        ("channels", channels),
        ("latent_channels", latent_channels),
        ("base_channels", base_channels),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise PdediffError(f"{name} must be a positive integer, got {v!r}")
    if len(mult) != levels + 1 or any(int(m) != m or m < 1 for m in mult):
        raise PdediffError(
            f"channel_mult needs {levels + 1} positive integers (one per level), got {mult!r}"
        )
    if padding_mode not in ("zeros", "circular"):
        raise PdediffError(f"padding_mode must be 'zeros' or 'circular', got {padding_mode!r}")


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """:math:`\\mathrm{KL}(\\mathcal N(\\mu, \\sigma^2) \\| \\mathcal N(0, 1))` summed over all
    but the batch dim, ``(N,)``:
    :math:`\\tfrac12 \\sum_j (\\mu_j^2 + \\sigma_j^2 - 1 - \\log \\sigma_j^2)`."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


# -- an autoencoder with its normalisation -------------------------------------------------
@dataclass
class Autoencoder:
    """A trained :class:`FieldAutoencoder` with what maps Datasets to its inputs.

    Attributes
    ----------
    net
        The network (eval mode after loading).
    spec
        Normalisation, variables and grid of the fields it was trained on.
    scale_factor
        Latents are ``scale_factor * mu(x)`` (unit standard deviation on the training data).
    step
        Optimisation steps it was trained for.
    settings
        Training settings (JSON-ready).
    evaluation
        Held-out reconstruction error and PDE residuals (see
        :func:`pdediff.latent.train.evaluate_autoencoder`).
    path
        Directory it was read from or last written to.
    """

    net: FieldAutoencoder
    spec: FieldSpec
    scale_factor: float = 1.0
    step: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def latent_channels(self) -> int:
        return int(self.net.config["latent_channels"])

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """``(h, w)`` of the latent grid of the spec's fields."""
        return tuple(n // self.net.downsample for n in self.spec.shape)

    def encode(
        self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Scaled latents ``scale_factor * z`` of normalised fields: the posterior mean, or a
        draw from the posterior with ``sample``."""
        mean, logvar = self.net.encode(x)
        if sample:
            eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
            mean = mean + (0.5 * logvar).exp() * eps.to(mean.device)
        return self.scale_factor * mean

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised fields from scaled latents (the inverse of :meth:`encode`)."""
        return self.net.decode(z / self.scale_factor)

    def digest(self) -> str:
        """SHA-256 (16 hex digits) of the weights and scale factor: identifies the latent
        space a latent diffusion model was trained in."""
        h = hashlib.sha256(repr(self.scale_factor).encode())
        for name, t in sorted(self.net.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def autoencoder_for(
    spec: FieldSpec,
    latent_channels: int = 4,
    downsample: int = 4,
    base_channels: int = 32,
    channel_mult: tuple[int, ...] | None = None,
) -> FieldAutoencoder:
    """A fresh :class:`FieldAutoencoder` for the fields of ``spec`` (2-D grids only);
    circular padding when every dim is periodic."""
    if len(spec.dims) != 2:
        raise DataError(
            f"the field autoencoder is 2-D; the fields have dims {spec.dims} ({len(spec.dims)}-D)"
        )
    periodic = all(spec.coord_attrs.get(d, {}).get("periodic") for d in spec.dims)
    net = FieldAutoencoder(
        len(spec.variables),
        latent_channels,
        downsample,
        base_channels,
        channel_mult,
        "circular" if periodic else "zeros",
    )
    net.check_input(torch.zeros(1, len(spec.variables), *spec.shape))
    return net


# -- saving and loading ---------------------------------------------------------------------
def save_autoencoder(ae: Autoencoder, path: str | os.PathLike) -> Path:
    """Write ``ae`` to the directory ``path`` atomically, replacing what is there."""
    path = Path(path)
    if not path.parent.is_dir():
        raise DataError(f"output folder {path.parent} does not exist")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        config = {
            "format": FORMAT,
            "version": VERSION,
            "architecture": ae.net.config,
            "scale_factor": float(ae.scale_factor),
            "step": int(ae.step),
            "train": ae.settings,
            "evaluation": ae.evaluation,
        }
        (tmp / CONFIG).write_text(json.dumps(config, indent=1, allow_nan=True) + "\n")
        (tmp / SPEC).write_text(ae.spec.to_json() + "\n")
        weights = {k: v.detach().cpu() for k, v in ae.net.state_dict().items()}
        write_tensors(tmp / WEIGHTS, weights, {"step": int(ae.step)})
        _fsync_dir_files(tmp)
        _swap_in(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ae.path = path
    return path


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON (truncated or corrupt?): {e}") from None


def _read_config(path: Path) -> dict[str, Any]:
    file = path / CONFIG
    config = _read_json(file)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(
            f"{file} is not a pdediff autoencoder config (format {FORMAT!r}); is {path} a "
            "diffusion checkpoint? Pass the directory written by pdediff train-autoencoder"
        )
    if config.get("version") != VERSION:
        raise CheckpointError(
            f"{file} has format version {config.get('version')}; this pdediff reads {VERSION}"
        )
    scale, step = config.get("scale_factor"), config.get("step")
    if not isinstance(scale, int | float) or not math.isfinite(scale) or scale <= 0:
        raise CheckpointError(f"{file}: scale_factor must be a positive number, got {scale!r}")
    if not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{file}: step must be a non-negative integer, got {step!r}")
    return config


def load_autoencoder(path: str | os.PathLike, device: str | torch.device = "cpu") -> Autoencoder:
    """Read an autoencoder directory (weights checked against its config).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    CheckpointError
        A missing file, invalid JSON, another format or version, unreadable safetensors,
        or weights that do not fit the architecture, naming the file at fault.
    """
    path = Path(path)
    if not path.is_dir():
        backup = _backup(path)
        hint = f" (a backup of an interrupted save is at {backup})" if backup.is_dir() else ""
        raise FileNotFoundError(f"autoencoder directory {path} does not exist{hint}")
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise CheckpointError(
            f"{path} is not a complete pdediff autoencoder: missing {', '.join(missing)}"
        )
    config = _read_config(path)
    try:
        spec = FieldSpec.from_dict(_read_json(path / SPEC))
        net = FieldAutoencoder(**config["architecture"])
    except (PdediffError, TypeError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the autoencoder: {e}") from None
    weights, meta = read_tensors(path / WEIGHTS, device)
    if meta.get("step") != config["step"]:
        raise CheckpointError(
            f"{path / WEIGHTS} is from step {meta.get('step')} but {CONFIG} from step "
            f"{config['step']}: the directory is inconsistent"
        )
    check_weights(net, weights, path / WEIGHTS, path / CONFIG)
    net.load_state_dict(weights)
    net = net.to(device).eval().requires_grad_(False)
    return Autoencoder(
        net,
        spec,
        float(config["scale_factor"]),
        config["step"],
        dict(config.get("train") or {}),
        dict(config.get("evaluation") or {}),
        path,
    )
