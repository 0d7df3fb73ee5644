"""Training and evaluation of the field autoencoder (the first stage of latent diffusion).

:func:`train_autoencoder` minimises the KL-regularised reconstruction loss of
:mod:`pdediff.latent.autoencoder` (Rombach et al. 2022, arXiv:2112.10752, without the
perceptual and adversarial terms, which have no meaning for PDE fields) with AdamW, then
sets the latent scale factor on the training samples and scores the reconstructions of
held-out samples: relative L2 error per field, and the PDE residual of the reconstructions
against that of the originals (an autoencoder that blurs a solution breaks its equation
long before its L2 error looks bad).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from pdediff.errors import DataError, PdediffError
from pdediff.io.conventions import attrs_params, check_finite
from pdediff.io.fieldspec import FieldSpec
from pdediff.latent.autoencoder import (
    Autoencoder,
    FieldAutoencoder,
    autoencoder_for,
    kl_divergence,
    save_autoencoder,
)
from pdediff.metrics import relative_l2, residual_norm
from pdediff.pde.registry import FAMILIES
from pdediff.train.loop import BatchSampler

__all__ = ["AutoencoderResult", "evaluate_autoencoder", "train_autoencoder"]

LOSSES = ("l1", "l2")
#: Samples per forward pass when encoding or evaluating without gradients.
EVAL_BATCH = 64


@dataclass
class AutoencoderResult:
    """What :func:`train_autoencoder` returns.

    Attributes
    ----------
    path
        The autoencoder directory written.
    steps
        Optimisation steps done.
    loss
        Mean training objective per sample over the last ``min(10, steps)`` steps.
    reconstruction
        ``field -> mean relative L2 error`` of the held-out reconstructions (physical units).
    residual
        ``{"pde", "original", "reconstructed"}``: mean relative PDE residual
        (:func:`pdediff.metrics.residual_norm`) of the held-out originals and of their
        reconstructions; empty when the data name no known PDE family.
    scale_factor
        ``1 / std`` of the training samples' latent means.
    seconds
        Wall time of the training steps.
    history
        ``{"step", "loss", "reconstruction", "kl"}`` per step (reconstruction: mean
        absolute or squared error per value, normalised units).
    autoencoder
        The trained :class:`~pdediff.latent.autoencoder.Autoencoder` (eval mode).
    """

    path: Path
    steps: int
    loss: float
    reconstruction: dict[str, float]
    residual: dict[str, Any]
    scale_factor: float
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    autoencoder: Autoencoder | None = None


# -- checks and data ------------------------------------------------------------------------
def _check_settings(steps: int, batch_size: int, lr: float, kl_weight: float, loss: str) -> None:
    checks = [
        ("steps", steps, isinstance(steps, int) and steps >= 1, "a positive integer"),
        ("batch_size", batch_size, isinstance(batch_size, int) and batch_size >= 1, "positive"),
        ("lr", lr, 0 < lr < math.inf, "a positive number"),
        ("kl_weight", kl_weight, 0 <= kl_weight < math.inf, "a number >= 0 (1e-6: SD)"),
    ]
    for name, value, ok, expected in checks:
        if not ok:
            raise PdediffError(f"{name} must be {expected}, got {value!r}")
    if loss not in LOSSES:
        raise PdediffError(f"loss must be one of {LOSSES}, got {loss!r}")


def _check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise PdediffError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise DataError(f"output folder {out.parent} does not exist")


def _load(data: str | os.PathLike | xr.Dataset) -> tuple[xr.Dataset, str]:
    from pdediff.io.store import open_fields

    ds, name = (data, "<in-memory dataset>") if isinstance(data, xr.Dataset) else (None, str(data))
    ds = ds if ds is not None else open_fields(data)
    check_finite(ds, name)
    return ds, name


def _split(n: int, holdout: float, name: str) -> int:
    """Number of held-out samples (the last ones of the file)."""
    if not 0 < holdout < 1:
        raise PdediffError(f"holdout must be a fraction in (0, 1), got {holdout!r}")
    if n < 2:
        raise DataError(
            f"{name} has {n} sample(s); the autoencoder needs at least 2 (one held out)"
        )
    return min(n - 1, max(1, round(holdout * n)))


def _device(device: str | torch.device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# -- loss, scale, evaluation ----------------------------------------------------------------
def reconstruction_error(x_hat: torch.Tensor, x: torch.Tensor, loss: str = "l1") -> torch.Tensor:
    """:math:`\\|x - \\hat x\\|_1` or :math:`\\|x - \\hat x\\|_2^2` per sample, ``(N,)``."""
    d = (x_hat - x).flatten(1)
    return d.abs().sum(1) if loss == "l1" else d.square().sum(1)


def autoencoder_loss(
    net: FieldAutoencoder,
    x: torch.Tensor,
    kl_weight: float,
    loss: str = "l1",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(objective, reconstruction (N,), kl (N,))``: the batch mean of
    ``reconstruction + kl_weight * KL``, per-sample sums as in Stable Diffusion."""
    x_hat, mean, logvar = net(x, generator)
    rec, kl = reconstruction_error(x_hat, x, loss), kl_divergence(mean, logvar)
    return (rec + kl_weight * kl).mean(), rec, kl


def _batches(x: torch.Tensor, size: int = EVAL_BATCH):
    for i in range(0, x.shape[0], size):
        yield x[i : i + size]


@torch.no_grad()
def latent_scale(ae: Autoencoder, x: torch.Tensor) -> float:
    """``1 / std`` of the unscaled latent means of ``x`` over all samples, channels and
    points (Rombach et al.'s ``scale_factor``); 1 for a constant latent."""
    device = next(ae.net.parameters()).device
    z = torch.cat([ae.net.encode(b.to(device))[0].cpu() for b in _batches(x)])
    std = float(z.double().std())
    return 1.0 / std if std > 0 and math.isfinite(std) else 1.0


@torch.no_grad()
def reconstruct(ae: Autoencoder, x: torch.Tensor) -> torch.Tensor:
    """Decoded posterior means of normalised fields ``x``, on the CPU."""
    device = next(ae.net.parameters()).device
    return torch.cat([ae.decode(ae.encode(b.to(device))).cpu() for b in _batches(x)])


def _residual(spec: FieldSpec, fields: dict[str, np.ndarray]) -> tuple[str, float, np.ndarray]:
    family = FAMILIES.get(str(spec.attrs.get("pde")))
    if family is None or any(f not in fields for f in family.fields):
        return "", math.nan, np.array([])
    params = attrs_params(spec.attrs, family.defaults)
    grid = spec.grid()
    rel = residual_norm(family, {f: fields[f] for f in family.fields}, grid, params).relative
    return family.name, float(np.mean(rel)), rel


def evaluate_autoencoder(ae: Autoencoder, data: xr.Dataset | torch.Tensor) -> dict[str, Any]:
    """Reconstruction error and PDE residual of ``data`` through ``ae``.

    Parameters
    ----------
    ae
        The autoencoder.
    data
        Fields on the autoencoder's grid: a Dataset, or a normalised tensor ``(N, C, H, W)``.

    Returns
    -------
    dict
        ``samples``; ``relative_l2``: ``field -> mean`` of
        :math:`\\|\\hat u - u\\|_2 / \\|u\\|_2` in physical units; ``residual``:
        ``{"pde", "original", "reconstructed"}``, the mean relative residual of the family
        named by the data's ``pde`` attribute (parameters from ``param_*``), or ``{}`` when
        there is none.
    """
    spec = ae.spec
    x = spec.to_tensor(data) if isinstance(data, xr.Dataset) else data
    truth = spec.denormalise(x.double()).numpy()
    pred = spec.denormalise(reconstruct(ae, x).double()).numpy()
    rel = {
        v: float(relative_l2(pred[:, i], truth[:, i]).mean()) for i, v in enumerate(spec.variables)
    }
    out: dict[str, Any] = {"samples": int(x.shape[0]), "relative_l2": rel, "residual": {}}
    name, original, _ = _residual(spec, {v: truth[:, i] for i, v in enumerate(spec.variables)})
    if name:
        _, recon, _ = _residual(spec, {v: pred[:, i] for i, v in enumerate(spec.variables)})
        out["residual"] = {"pde": name, "original": original, "reconstructed": recon}
    return out


# -- training -------------------------------------------------------------------------------
@dataclass
class _Job:
    net: FieldAutoencoder
    spec: FieldSpec
    x_train: torch.Tensor
    x_val: torch.Tensor
    optimizer: torch.optim.Optimizer
    sampler: BatchSampler
    generator: torch.Generator
    settings: dict[str, Any]
    device: torch.device


def _step(job: _Job, step: int) -> dict[str, float]:
    s = job.settings
    xb = job.x_train[job.sampler.indices(step)].to(job.device)
    objective, rec, kl = autoencoder_loss(job.net, xb, s["kl_weight"], s["loss"], job.generator)
    if not torch.isfinite(objective):
        raise FloatingPointError(
            f"the autoencoder loss is {float(objective)} at step {step + 1}; lower the "
            f"learning rate (now {s['lr']}) or the KL weight (now {s['kl_weight']})"
        )
    job.optimizer.zero_grad(set_to_none=True)
    objective.backward()
    job.optimizer.step()
    per_value = float(rec.detach().mean()) / xb[0].numel()
    return {
        "step": step + 1,
        "loss": float(objective.detach()),
        "reconstruction": per_value,
        "kl": float(kl.detach().mean()),
    }


def _snapshot(job: _Job, step: int, out: Path, final: bool) -> Autoencoder:
    """Scale factor on the training samples, evaluation (final save only), atomic write."""
    ae = Autoencoder(job.net, job.spec, 1.0, step, job.settings)
    ae.scale_factor = latent_scale(ae, job.x_train)
    if final:
        ae.evaluation = evaluate_autoencoder(ae, job.x_val)
    save_autoencoder(ae, out)
    return ae


def _prepare(ds: xr.Dataset, name: str, settings: dict[str, Any]) -> _Job:
    spec = FieldSpec.from_dataset(ds, settings["variables"])
    x = spec.to_tensor(ds)
    n_val = _split(x.shape[0], settings["holdout"], name)
    device = _device(settings["device"])
    with torch.random.fork_rng():
        torch.manual_seed(settings["seed"])
        net = autoencoder_for(
            spec, settings["latent_channels"], settings["downsample"], settings["base_channels"]
        ).to(device)
    return _Job(
        net=net,
        spec=spec,
        x_train=x[:-n_val],
        x_val=x[-n_val:],
        optimizer=torch.optim.AdamW(net.parameters(), lr=settings["lr"], weight_decay=0.0),
        sampler=BatchSampler(x.shape[0] - n_val, settings["batch_size"], settings["seed"]),
        generator=torch.Generator().manual_seed(settings["seed"] + 1),
        settings=settings,
        device=device,
    )


def train_autoencoder(
    data: str | os.PathLike | xr.Dataset,
    out: str | os.PathLike,
    *,
    downsample: int = 4,
    latent_channels: int = 4,
    kl_weight: float = 1e-6,
    steps: int = 2000,
    batch_size: int = 16,
    lr: float = 5e-4,
    seed: int = 0,
    base_channels: int = 32,
    loss: str = "l1",
    variables: list[str] | None = None,
    holdout: float = 0.1,
    save_every: int | None = 500,
    overwrite: bool = False,
    device: str | torch.device = "auto",
    progress: bool = True,
    command: str | None = None,
) -> AutoencoderResult:
    """Train a field autoencoder and write it to the directory ``out``.

    Parameters
    ----------
    data
        Fields in pdediff's convention (file or Dataset), normalised with a
        :class:`~pdediff.io.FieldSpec` computed on them (stored with the autoencoder).
        The last ``holdout`` fraction of the samples (at least one) is held out.
    out
        Directory to write (must be absent or empty unless ``overwrite``); written
        atomically every ``save_every`` steps and at the end.
    downsample, latent_channels, base_channels
        Grid reduction factor per dim (4 or 8 typically), latent channels, width of the
        finest level (see :class:`~pdediff.latent.autoencoder.FieldAutoencoder`).
    kl_weight
        :math:`\\beta` of the KL term (1e-6 as in Stable Diffusion).
    steps, batch_size, lr, seed
        AdamW steps, samples per step, learning rate, and the seed of the weights,
        batches and posterior noise.
    loss
        ``"l1"`` (Stable Diffusion's pixel loss) or ``"l2"``.
    variables
        Fields to encode jointly (default: all).
    device
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda:0"``...
    command
        The command line, kept in the config for provenance.

    Returns
    -------
    AutoencoderResult
        Held-out reconstruction errors, PDE residuals, scale factor, history.

    Raises
    ------
    PdediffError
        A setting out of range, a grid that is not 2-D or not a multiple of ``downsample``,
        fewer than 2 samples, an unknown variable.
    FileExistsError
        ``out`` is not empty and ``overwrite`` is false.
    FloatingPointError
        The loss became NaN/inf (lower ``lr``).
    """
    _check_settings(steps, batch_size, lr, kl_weight, loss)
    if save_every is not None and (not isinstance(save_every, int) or save_every < 1):
        raise PdediffError(f"save_every must be a positive integer or None, got {save_every!r}")
    out = Path(out)
    _check_output(out, overwrite)
    ds, name = _load(data)
    settings = {
        "downsample": downsample,
        "latent_channels": latent_channels,
        "base_channels": base_channels,
        "kl_weight": kl_weight,
        "loss": loss,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "variables": list(variables) if variables else None,
        "holdout": holdout,
        "device": str(device),
        "data": name,
        "command": command,
    }
    job = _prepare(ds, name, settings)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    with tqdm(total=steps, desc="autoencoder", unit="step", disable=not progress) as bar:
        for step in range(steps):
            history.append(_step(job, step))
            bar.update(1)
            if step % 10 == 0 or step == steps - 1:
                bar.set_postfix(rec=f"{history[-1]['reconstruction']:.3g}")
            if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
                _snapshot(job, step + 1, out, final=False)
    seconds = time.perf_counter() - t0
    job.net.eval().requires_grad_(False)
    ae = _snapshot(job, steps, out, final=True)
    last = history[-min(10, steps) :]
    return AutoencoderResult(
        path=out,
        steps=steps,
        loss=float(np.mean([h["loss"] for h in last])),
        reconstruction=ae.evaluation["relative_l2"],
        residual=ae.evaluation["residual"],
        scale_factor=ae.scale_factor,
        seconds=seconds,
        history=history,
        autoencoder=ae,
    )
