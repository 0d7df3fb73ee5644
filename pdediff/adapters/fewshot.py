"""Few-shot fine-tuning of a trained denoiser: LoRA or all weights, with prior preservation.

The base model's EMA weights are trained further with its own EDM loss on a few new
samples, normalised with the base model's :class:`~pdediff.io.FieldSpec` (so the adapted
model shares the base model's channels, grid and normalisation).  With few samples the
model forgets the base distribution and overfits; DreamBooth's prior-preservation loss
(Ruiz et al. 2023, "DreamBooth: Fine Tuning Text-to-Image Diffusion Models for
Subject-Driven Generation", CVPR, eq. 2) counters this by also fitting samples drawn from
the frozen base model:

.. math::

    \\mathcal L = \\mathcal L_\\mathrm{EDM}(x_\\mathrm{new})
        + \\lambda\\, \\mathcal L_\\mathrm{EDM}(x_\\mathrm{prior}),\\qquad
    x_\\mathrm{prior} \\sim p_\\mathrm{base}.

The prior samples are drawn once, before training, with EDM's Heun sampler (Karras et al.
2022, Algorithm 1) on ``prior_steps`` Karras noise levels.  Their cost is
``prior_samples * (2 * prior_steps - 1)`` network evaluations without gradients, and each
training step then runs a second batch (the prior batch) forward and backward: about twice
the cost of a step without it.

LoRA (:mod:`pdediff.adapters.lora`, Hu et al. 2022) writes a small adapter file that
:func:`load_adapted` puts back on the base model; ``method="full"`` writes a complete
checkpoint directory usable wherever a ``pdediff train`` checkpoint is.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from pdediff.adapters.lora import (
    Targets,
    _check_rank_alpha,
    add_lora,
    base_model_hash,
    count_parameters,
    load_lora,
    lora_parameters,
    merge_lora,
    save_lora,
)
from pdediff.errors import DataError, PdediffError
from pdediff.io.fieldspec import FieldSpec
from pdediff.train.checkpoint import Checkpoint, read_checkpoint, save_checkpoint
from pdediff.train.config import TrainConfig, build_loss
from pdediff.train.loop import BatchSampler, step_seed

__all__ = ["METHODS", "FinetuneResult", "finetune", "load_adapted", "sample_prior"]

#: ``lora``: low-rank adapters, base weights frozen; ``full``: every weight trains.
METHODS = ("lora", "full")
#: Learning rates used when none is given (an adapter tolerates a larger one).
DEFAULT_LR = {"lora": 1e-3, "full": 1e-4}
# Independent random streams of the seed (distinct from pdediff.train.loop's 0..3).
_INIT, _EPOCH, _NOISE, _PRIOR_EPOCH, _PRIOR = range(10, 15)


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes
    ----------
    path
        The adapter file (``lora``) or checkpoint directory (``full``).
    method
        ``"lora"`` or ``"full"``.
    steps
        Optimisation steps done.
    trainable_parameters, total_parameters
        Scalars trained, and in the adapted network (adapters included).
    seconds, prior_seconds
        Wall time of the training steps, and of drawing the prior samples.
    loss, prior_loss
        Mean EDM loss on the new data and on the prior samples over the last
        ``min(10, steps)`` steps (``prior_loss`` NaN without prior preservation).
    base_hash
        :func:`~pdediff.adapters.lora.base_model_hash` of the base denoiser.
    layers
        Adapted layer names (empty for ``full``).
    history
        ``{"step", "loss", "prior_loss"}`` per step.
    model
        The fine-tuned denoiser (adapters not merged), in eval mode.
    """

    path: Path
    method: str
    steps: int
    trainable_parameters: int
    total_parameters: int
    seconds: float
    prior_seconds: float
    loss: float
    prior_loss: float
    base_hash: str
    layers: list[str] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    model: nn.Module | None = None


# -- checks -------------------------------------------------------------------------------
def _check_settings(method: str, steps: int, batch_size: int, lr: float, prior: dict) -> None:
    if method not in METHODS:
        raise PdediffError(f"unknown fine-tuning method {method!r}; choose one of {METHODS}")
    checks = [
        ("steps", steps, isinstance(steps, int) and steps >= 1, "a positive integer"),
        ("batch_size", batch_size, isinstance(batch_size, int) and batch_size >= 1, "positive"),
        ("lr", lr, 0 < lr < math.inf, "a positive number"),
        ("prior_weight", prior["weight"], 0 <= prior["weight"] < math.inf, ">= 0"),
        ("prior_steps", prior["steps"], prior["steps"] >= 1, "a positive integer"),
    ]
    if prior["weight"] > 0:
        checks.append(
            ("prior_samples", prior["samples"], prior["samples"] >= 1, ">= 1 with prior_weight > 0")
        )
    for name, value, ok, expected in checks:
        if not ok:
            raise PdediffError(f"finetune: {name} must be {expected}, got {value!r}")


def _check_output(out: Path, method: str, base: Path, overwrite: bool) -> None:
    """Fail before any work on an output that exists (without ``overwrite``) or cannot be
    written."""
    if not out.parent.is_dir():
        raise PdediffError(f"output folder {out.parent} does not exist")
    if method == "full":
        if out.resolve() == base.resolve():
            raise PdediffError(f"--out {out} is the base checkpoint; write elsewhere")
        taken = out.exists() and (not out.is_dir() or any(out.iterdir()))
    else:
        if out.suffix == ".json" or out.is_dir():
            raise PdediffError(
                f"the LoRA adapter {out} must be a file path (e.g. ADAPTER.safetensors), not "
                f"{'a directory' if out.is_dir() else 'the .json sidecar'}"
            )
        taken = out.exists() or out.with_suffix(".json").exists()
    if taken and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (CLI: --overwrite)")


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _load_data(data: str | os.PathLike | xr.Dataset, spec: FieldSpec, base: Path):
    """The new samples as a normalised tensor, in the base model's channels and units."""
    from pdediff.io.conventions import check_finite
    from pdediff.io.store import open_fields

    if isinstance(data, xr.Dataset):
        ds, name = data, "<in-memory dataset>"
    else:
        ds, name = open_fields(data), str(data)
    check_finite(ds, name)
    try:
        x = spec.to_tensor(ds)
    except DataError as e:
        raise DataError(
            f"the fine-tuning data {name} do not fit the base model {base} (its variables "
            f"{list(spec.variables)} on its {'x'.join(map(str, spec.shape))} grid): {e}"
        ) from None
    if x.shape[0] < 1:
        raise DataError(f"the fine-tuning data {name} hold no sample")
    return x, name


# -- prior samples ------------------------------------------------------------------------
@torch.no_grad()
def sample_prior(
    denoiser: nn.Module,
    shape: tuple[int, ...],
    n: int,
    *,
    steps: int = 18,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """``n`` samples of the denoiser's distribution (normalised fields), for prior
    preservation.

    EDM's deterministic Heun sampler (Karras et al. 2022, Algorithm 1) on ``steps`` Karras
    noise levels between the denoiser's ``sigma_min`` and ``sigma_max`` (eq. 5): ``n *
    (2 steps - 1)`` network evaluations, in batches of ``batch_size``.

    Parameters
    ----------
    denoiser
        ``D(x, sigma) -> x0_hat``; its parameters' device is used.
    shape
        ``(C, *grid)`` of one sample.
    n, steps, batch_size, seed
        Number of samples, sampler steps, samples per batch, seed of the initial noise.
    """
    from pdediff.core.samplers import SAMPLERS
    from pdediff.core.schedules import karras_sigmas

    device = next(denoiser.parameters()).device
    lo = float(getattr(denoiser, "sigma_min", 0.002))
    hi = float(getattr(denoiser, "sigma_max", 80.0))
    sigmas = karras_sigmas(steps, lo, hi, dtype=torch.float32, device=device)
    gen = torch.Generator(device=device).manual_seed(step_seed(seed, _PRIOR))
    out = []
    for start in tqdm(range(0, n, batch_size), desc="prior samples", disable=not progress):
        size = min(batch_size, n - start)
        x = sigmas[0] * torch.randn((size, *shape), generator=gen, device=device)
        out.append(SAMPLERS["heun"](denoiser, x, sigmas, generator=gen))
    return torch.cat(out)


# -- training -----------------------------------------------------------------------------
def _prepare(
    model: nn.Module, method: str, rank: int, alpha: float | None, targets: Targets, seed: int
) -> tuple[list[nn.Parameter], list[str]]:
    """Adapters (``lora``) or all weights (``full``) made trainable."""
    if method == "full":
        model.requires_grad_(True)
        return list(model.parameters()), []
    gen = torch.Generator().manual_seed(step_seed(seed, _INIT))
    layers = add_lora(model, rank, alpha, targets, generator=gen)
    return lora_parameters(model), layers


@dataclass
class _Batches:
    """The new data and (optionally) the prior samples, with per-step batch indices."""

    x: torch.Tensor
    prior: torch.Tensor | None
    sampler: BatchSampler
    prior_sampler: BatchSampler | None

    @classmethod
    def build(
        cls, x: torch.Tensor, prior: torch.Tensor | None, batch_size: int, seed: int, device
    ) -> _Batches:
        sampler = BatchSampler(x.shape[0], batch_size, step_seed(seed, _EPOCH))
        if prior is None:
            return cls(x.to(device), None, sampler, None)
        prior_sampler = BatchSampler(len(prior), batch_size, step_seed(seed, _PRIOR_EPOCH))
        return cls(x.to(device), prior.to(device), sampler, prior_sampler)

    def new(self, step: int) -> torch.Tensor:
        return self.x[self.sampler.indices(step).to(self.x.device)]

    def old(self, step: int) -> torch.Tensor:
        assert self.prior is not None and self.prior_sampler is not None
        return self.prior[self.prior_sampler.indices(step).to(self.prior.device)]


@dataclass
class _Job:
    """Everything a fine-tuning run needs, built once; ``info`` is what the output records."""

    out: Path
    ckpt: Checkpoint
    model: nn.Module
    params: list[nn.Parameter]
    opt: torch.optim.Optimizer
    loss_fn: Any
    batches: _Batches
    base_hash: str
    info: dict[str, Any]

    @property
    def settings(self) -> dict[str, Any]:
        return self.info["settings"]


def _step(job: _Job, step: int) -> tuple[float, float]:
    """One AdamW step on ``L_new + lambda L_prior``; returns both losses."""
    seed, batches = job.settings["seed"], job.batches
    gen = torch.Generator(device=batches.x.device).manual_seed(step_seed(seed, _NOISE, step))
    torch.manual_seed(step_seed(seed, _NOISE, step, 1))  # dropout in the backbone
    job.opt.zero_grad(set_to_none=True)
    loss_new = job.loss_fn(job.model, batches.new(step), generator=gen).mean()
    loss, loss_prior = loss_new, torch.tensor(math.nan)
    if batches.prior is not None:
        loss_prior = job.loss_fn(job.model, batches.old(step), generator=gen).mean()
        loss = loss_new + job.settings["prior_weight"] * loss_prior
    if not torch.isfinite(loss):
        raise PdediffError(
            f"the fine-tuning loss became {loss.item()} at step {step}; lower lr "
            f"(nothing was written for this step)"
        )
    loss.backward()
    torch.nn.utils.clip_grad_norm_(job.params, job.settings["grad_clip"] or math.inf)
    job.opt.step()
    return float(loss_new.detach()), float(loss_prior.detach())


def _train(job: _Job, save_every: int | None, progress: bool) -> list[dict[str, float]]:
    """The optimisation loop; writes the output every ``save_every`` steps (not the last)."""
    steps, method = job.settings["steps"], job.settings["method"]
    history: list[dict[str, float]] = []
    job.model.train()
    with tqdm(total=steps, desc=f"finetune ({method})", unit="step", disable=not progress) as bar:
        for step in range(steps):
            loss, loss_prior = _step(job, step)
            history.append({"step": step + 1, "loss": loss, "prior_loss": loss_prior})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
                _write(job, step + 1)
    job.model.eval().requires_grad_(False)
    return history


def _mean_last(history: list[dict[str, float]], key: str, k: int = 10) -> float:
    values = [h[key] for h in history[-k:]]
    return sum(values) / len(values) if values else math.nan


def _write(job: _Job, step: int) -> None:
    """Write the adapter (``lora``) or a full checkpoint (``full``), atomically."""
    if job.settings["method"] == "lora":
        save_lora(job.model, job.out, job.base_hash, {**job.info, "step": step})
        return
    from pdediff import __version__
    from pdediff.core.ema import EMA

    settings, info = job.settings, job.info
    config = job.ckpt.config.to_dict()
    config["optimizer"].update(lr=settings["lr"], warmup_steps=0)
    config.update(steps=step, batch_size=settings["batch_size"], seed=settings["seed"])
    state = {
        "step": step,
        "elapsed": info.get("seconds", 0.0),
        "loss": info.get("loss"),
        "samples_seen": step * settings["batch_size"],
        "world_size": 1,
        "data": info["data"],
        "finetune": info,
        "command": info.get("command"),
        "commands": [c for c in (info.get("command"),) if c],
        "pdediff": __version__,
        "torch": torch.__version__,
        "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    save_checkpoint(
        job.out,
        model=job.model,
        ema=EMA(job.model, decay=job.ckpt.config.ema_decay),  # a copy: the tuned weights
        optimizer=job.opt,
        fieldspec=job.ckpt.fieldspec,
        config=TrainConfig.from_dict(config, "fine-tuning settings"),
        architecture=job.ckpt.architecture,
        state=state,
        carry=False,
    )


def _settings(method: str, rank: int, alpha: float | None, **rest: Any) -> dict[str, Any]:
    """The run's settings as recorded in the output (LoRA's rank and alpha for ``lora``)."""
    lora = method == "lora"
    return {
        "method": method,
        "rank": rank if lora else None,
        "alpha": (float(rank) if alpha is None else float(alpha)) if lora else None,
        **rest,
    }


def finetune(
    base_checkpoint: str | os.PathLike,
    data: str | os.PathLike | xr.Dataset,
    out: str | os.PathLike,
    *,
    method: str = "lora",
    rank: int = 4,
    alpha: float | None = None,
    targets: Targets = None,
    steps: int = 200,
    batch_size: int = 8,
    lr: float | None = None,
    prior_weight: float = 0.0,
    prior_samples: int = 64,
    prior_steps: int = 18,
    save_every: int | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> FinetuneResult:
    """Fine-tune a trained denoiser on a few new samples (LoRA or all weights).

    Minimises ``L_EDM(new) + prior_weight * L_EDM(prior)`` (DreamBooth prior preservation,
    Ruiz et al. 2023, eq. 2; the EDM loss of Karras et al. 2022, eq. 8, with the base
    model's loss settings) with AdamW at a constant learning rate.

    Parameters
    ----------
    base_checkpoint
        A ``pdediff train`` checkpoint or an exported model; its EMA weights are the base.
    data
        The new samples: a field file or Dataset with the base model's variables on its
        grid (normalised with the base model's :class:`~pdediff.io.FieldSpec`).
    out
        ``lora``: the adapter file (e.g. ``few.safetensors``, plus ``few.json``);
        ``full``: a checkpoint directory.
    method
        ``"lora"`` (adapters, base frozen) or ``"full"`` (every weight).
    rank, alpha, targets
        LoRA settings (:func:`~pdediff.adapters.lora.add_lora`); ``alpha`` defaults to
        ``rank``, ``targets`` to every Linear and convolution layer.
    steps, batch_size
        Optimisation steps and new samples per step (drawn in per-epoch permutations; a
        batch larger than the data repeats samples).
    lr
        Learning rate (default 1e-3 for LoRA, 1e-4 for full fine-tuning).
    prior_weight
        ``lambda``; 0 turns prior preservation off (no prior samples are drawn).
    prior_samples, prior_steps
        Number of prior samples drawn once from the frozen base model, and the Heun steps
        per sample (cost: ``prior_samples * (2 prior_steps - 1)`` evaluations).  Each step
        trains on a prior batch of ``batch_size`` as well.
    save_every
        Also write the output every this many steps (so a crash loses at most these).
    seed
        Seeds the adapters' initial values, the prior samples, the batches and the noise.
    device
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda:0"``...
    overwrite
        Replace an existing output.
    progress
        Show progress bars.
    command
        The command line, recorded with the output.

    Returns
    -------
    FinetuneResult
        Trainable and total parameter counts, time, final losses, the model.

    Raises
    ------
    PdediffError
        A bad setting, data that do not fit the base model, or a non-finite loss.
    FileExistsError
        ``out`` exists and ``overwrite`` is False.
    """
    base, out = Path(base_checkpoint), Path(out)
    lr = DEFAULT_LR.get(method, math.nan) if lr is None else float(lr)
    prior = {"weight": float(prior_weight), "samples": prior_samples, "steps": prior_steps}
    _check_settings(method, steps, batch_size, lr, prior)
    if method == "lora":
        _check_rank_alpha(rank, alpha)
    if save_every is not None and save_every < 1:
        raise PdediffError(f"finetune: save_every must be a positive integer, got {save_every}")
    _check_output(out, method, base, overwrite)
    ckpt = read_checkpoint(base)
    if ckpt.fieldspec.condition_names:
        raise PdediffError(
            f"finetune does not handle conditioned models yet: {base} is conditioned on "
            f"{list(ckpt.fieldspec.condition_names)}"
        )
    dev = _device(device)
    model = ckpt.denoiser(ema=True, device=dev)
    x, name = _load_data(data, ckpt.fieldspec, base)
    base_hash = base_model_hash(model)
    t0 = time.perf_counter()
    x_prior = None
    if prior["weight"] > 0:
        x_prior = sample_prior(
            model,
            tuple(x.shape[1:]),
            prior_samples,
            steps=prior_steps,
            batch_size=batch_size,
            seed=seed,
            progress=progress,
        )
    prior_seconds = time.perf_counter() - t0
    params, layers = _prepare(model, method, rank, alpha, targets, seed)
    settings = _settings(
        method,
        rank,
        alpha,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        prior_weight=prior["weight"],
        prior_samples=0 if x_prior is None else prior_samples,
        prior_steps=prior_steps,
        seed=seed,
        grad_clip=ckpt.config.optimizer.grad_clip,
    )
    info = {
        "method": method,
        "base_checkpoint": str(base),
        "base_step": ckpt.step,
        "base_hash": base_hash,
        "data": {"source": name, "samples": int(x.shape[0])},
        "settings": settings,
        "command": command,
    }
    job = _Job(
        out,
        ckpt,
        model,
        params,
        torch.optim.AdamW(params, lr=lr, weight_decay=0.0),
        build_loss(ckpt.config),
        _Batches.build(x, x_prior, batch_size, seed, dev),
        base_hash,
        info,
    )
    t0 = time.perf_counter()
    history = _train(job, save_every, progress)
    seconds = time.perf_counter() - t0
    loss, loss_prior = _mean_last(history, "loss"), _mean_last(history, "prior_loss")
    info.update(
        seconds=seconds,
        prior_seconds=prior_seconds,
        loss=loss,
        prior_loss=None if x_prior is None else loss_prior,
        trainable_parameters=count_parameters(params),
    )
    _write(job, steps)
    return FinetuneResult(
        path=out,
        method=method,
        steps=steps,
        trainable_parameters=count_parameters(params),
        total_parameters=count_parameters(model),
        seconds=seconds,
        prior_seconds=prior_seconds,
        loss=loss,
        prior_loss=loss_prior,
        base_hash=base_hash,
        layers=layers,
        history=history,
        model=model,
    )


def load_adapted(
    base_checkpoint: str | os.PathLike,
    adapter: str | os.PathLike,
    *,
    merge: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, FieldSpec]:
    """The base model's EMA denoiser with a LoRA adapter, ready for sampling.

    Parameters
    ----------
    base_checkpoint
        The checkpoint (or exported model) the adapter was trained on.
    adapter
        The adapter file written by :func:`finetune` (``method="lora"``).
    merge
        Fold the adapter into the weights (:func:`~pdediff.adapters.lora.merge_lora`):
        same outputs, no per-call cost of the low-rank product.
    device
        Where to put the denoiser.

    Returns
    -------
    denoiser, spec
        ``D(x, sigma, cond=None) -> x0_hat`` on normalised fields (eval mode, parameter
        gradients off) and the base model's :class:`~pdediff.io.FieldSpec`; pass both to
        :func:`pdediff.solve.posterior.sample_posterior` as for any checkpoint.

    Raises
    ------
    LoRAError
        The adapter was trained on another base model (both hashes named) or is corrupt.
    """
    ckpt = read_checkpoint(base_checkpoint)
    model = ckpt.denoiser(ema=True, device=device)
    load_lora(model, adapter)
    if merge:
        merge_lora(model)
    return model.eval().requires_grad_(False), ckpt.fieldspec
