"""The training loop: EDM loss, AdamW with warm-up and clipping, EMA, logs, checkpoints.

Every random draw of step ``s`` (the batch, the noise levels and noise, dropout) comes
from generators seeded by ``(seed, s)``, and the batches follow per-epoch permutations
seeded by ``(seed, epoch)``.  Training therefore holds no random state between steps: a run
stopped after a checkpoint and resumed gives bit-identical weights to one never stopped
(with deterministic kernels; CPU kernels are).

Under ``torchrun`` each of the ``P`` processes takes its ``batch_size / P`` slice of the
step's batch; DDP averages the gradients, so all ranks keep the same weights.  Rank 0
writes the log, the checkpoints and the progress bar.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from pdediff import __version__
from pdediff.errors import DataError, PdediffError
from pdediff.io.fieldspec import FieldSpec
from pdediff.train.checkpoint import (
    Architecture,
    Checkpoint,
    CheckpointError,
    read_checkpoint,
    recover,
    save_checkpoint,
)
from pdediff.train.config import (
    ConfigError,
    TrainConfig,
    backbone_kwargs,
    build_loss,
    precond_kwargs,
)
from pdediff.train.distributed import (
    Dist,
    agree,
    all_mean,
    gather_digests,
    init_distributed,
    state_digest,
)

__all__ = ["BatchSampler", "TrainResult", "lr_at", "step_seed", "train"]

# Independent random streams derived from the seed.
_INIT, _EPOCH, _NOISE, _TORCH = range(4)
#: Config fields a resumed run may change: they do not alter the trained weights.
RESUMABLE_CHANGES = ("steps", "log_every", "checkpoint_every", "deterministic")
#: Datasets up to this size are moved to the GPU whole (no per-step host transfer).
_DEVICE_DATA_BYTES = 2**31

#: ``hook(x0, cond, generator) -> cond``: the conditioning of a batch made from the batch
#: itself (a super-resolution stage's low-resolution fields); draws from ``generator``.
BatchConditioning = Callable[[torch.Tensor, dict | None, torch.Generator], dict]


def _no_conditioning(config: TrainConfig, spec: FieldSpec) -> None:
    """A base model: its conditioning is the data's (``condition``) or none."""
    return None


def _sr_conditioning(config: TrainConfig, spec: FieldSpec) -> BatchConditioning:
    """A super-resolution stage: :func:`pdediff.cascade.train.sr_conditioning`."""
    from pdediff.cascade.train import sr_conditioning

    return sr_conditioning(config.cascade, spec)


#: The per-batch conditioning hook of each cascade stage: ``(config, spec) -> hook | None``.
BATCH_CONDITIONING: dict[str, Callable[[TrainConfig, FieldSpec], BatchConditioning | None]] = {
    "base": _no_conditioning,
    "sr": _sr_conditioning,
}


def step_seed(seed: int, stream: int, *keys: int) -> int:
    """A 63-bit seed for ``stream`` at ``keys`` (e.g. the step and rank), independent of
    any other ``(stream, keys)``: numpy's SeedSequence hashes the entropy."""
    state = np.random.SeedSequence([seed, stream, *keys]).generate_state(1, np.uint64)[0]
    return int(state) >> 1


def lr_at(step: int, lr: float, warmup_steps: int) -> float:
    """Linear warm-up from ``lr / warmup_steps`` (step 0) to ``lr`` (step ``warmup - 1``)."""
    if warmup_steps <= 0:
        return lr
    return lr * min(1.0, (step + 1) / warmup_steps)


class BatchSampler:
    """Batch indices of any step as a pure function of ``(seed, step)``.

    The sample stream is the concatenation of per-epoch random permutations of the
    dataset; step ``s`` takes positions ``s * batch_size`` to ``(s + 1) * batch_size - 1``,
    so every sample is seen once per epoch whatever the batch size.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(step_seed(self.seed, _EPOCH, epoch))
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def indices(self, step: int) -> torch.Tensor:
        """The ``batch_size`` sample indices of ``step`` (long, CPU)."""
        pos = step * self.batch_size + torch.arange(self.batch_size)
        epochs, offsets = pos // self.n, pos % self.n
        out = torch.empty(self.batch_size, dtype=torch.long)
        for e in epochs.unique().tolist():
            sel = epochs == e
            out[sel] = self._perm(e)[offsets[sel]]
        return out


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    path
        The checkpoint directory.
    step
        The last step trained (the checkpoint's).
    loss
        Mean loss over the last logging window (NaN when no step ran).
    seconds
        Wall time of this call's training steps.
    model
        The trained denoiser (raw weights, this process's copy).
    history
        The log records written by this call.
    """

    path: Path
    step: int
    loss: float
    seconds: float
    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)


# -- setup --------------------------------------------------------------------------------
def _has_checkpoint(out: Path) -> bool:
    return (out / "state.json").is_file()


def _check_output(out: Path, resume: bool, overwrite: bool) -> bool:
    """Whether to resume; refuses a non-empty ``out`` unless ``resume`` or ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise PdediffError(f"{out} exists and is not a directory")
    if resume and _has_checkpoint(out):
        return True
    if resume and out.is_dir() and any(out.iterdir()):
        raise CheckpointError(
            f"cannot resume: {out} is not empty but holds no checkpoint (no state.json)"
        )
    if out.is_dir() and any(out.iterdir()) and not (resume or overwrite):
        raise FileExistsError(
            f"{out} exists and is not empty; pass --resume to continue its training or "
            f"--overwrite to start again"
        )
    return False


def _resume_config(ckpt: Checkpoint, config: TrainConfig | None) -> TrainConfig:
    """The checkpoint's config, with the changes a resumed run allows."""
    if config is None:
        return ckpt.config.resolved()
    old, new = ckpt.config.resolved().to_dict(), config.resolved().to_dict()
    diff = [k for k in new if k not in RESUMABLE_CHANGES and new[k] != old.get(k)]
    if diff:
        raise ConfigError(
            f"cannot resume {ckpt.path} with a different {', '.join(diff)} "
            f"(checkpoint: {', '.join(f'{k}={old.get(k)!r}' for k in diff)}); a resumed run "
            f"keeps its config except {', '.join(RESUMABLE_CHANGES)}: start a new run instead"
        )
    return config.resolved()


def _load_data(data: str | os.PathLike | xr.Dataset) -> tuple[xr.Dataset, str]:
    from pdediff.io.conventions import check_finite
    from pdediff.io.store import open_fields

    if isinstance(data, xr.Dataset):
        ds, name = data, "<in-memory dataset>"
    else:
        ds, name = open_fields(data), str(data)
    check_finite(ds, name)
    return ds, name


def _fieldspec(ds: xr.Dataset, config: TrainConfig, name: str) -> FieldSpec:
    missing = [v for v in config.variables or [] if v not in ds.data_vars]
    if missing:
        raise DataError(
            f"{name} lacks variable(s) {missing} named in the config; it has {list(ds.data_vars)}"
        )
    return FieldSpec.from_dataset(
        ds, config.variables, conditions=config.condition, label=config.label
    )


def _conditions(ds: xr.Dataset, spec: FieldSpec, name: str) -> dict[str, torch.Tensor] | None:
    """``cond`` of every sample: ``"vector"`` ``(N, D)`` in [-1, 1] and ``"label"`` ``(N,)``
    class indices, each where the model has it; None when unconditioned."""
    from pdediff.io.conditions import dataset_conditions, dataset_labels

    cond = {}
    if spec.conditions:
        cond["vector"] = dataset_conditions(ds, spec.conditions, name)
    if spec.label:
        cond["label"] = dataset_labels(ds, spec.label, name)
    return cond or None


def _rows(cond: dict[str, torch.Tensor] | None, idx, device) -> dict[str, torch.Tensor] | None:
    """The samples ``idx`` of every per-sample condition, on ``device``."""
    if cond is None:
        return None
    return {k: v[idx].to(device, non_blocking=True) for k, v in cond.items()}


def _fingerprint(x: torch.Tensor, cond: dict[str, torch.Tensor] | None = None) -> str:
    import hashlib

    h = hashlib.sha256(x.contiguous().numpy().tobytes())
    for key in ("vector", "label"):
        if cond is not None and key in cond:
            h.update(cond[key].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class _Run:
    """Everything the loop needs, built once."""

    config: TrainConfig
    spec: FieldSpec
    arch: Architecture
    model: nn.Module
    ema: Any
    optimizer: torch.optim.AdamW
    loss_fn: Any
    data: torch.Tensor
    data_info: dict[str, Any]
    start: int
    elapsed: float
    provenance: dict[str, Any] = field(default_factory=dict)
    cond_data: dict[str, torch.Tensor] | None = None  # per-sample conditions (vector, label)
    batch_cond: BatchConditioning | None = None  # conditioning made from each batch


def _architecture(config: TrainConfig, channels: int, labels: int = 0) -> Architecture:
    from pdediff.nets import build_backbone

    sr = config.cascade.is_sr  # + the augmentation level, + the low-resolution fields
    kwargs = backbone_kwargs(
        config.model, channels, len(config.condition) + sr, channels if sr else 0, labels
    )
    try:
        net_config = build_backbone(config.model.backbone, **kwargs).config
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config: bad model.backbone_kwargs: {e}") from None
    return Architecture(
        config.model.backbone, net_config, config.model.precond, precond_kwargs(config.model)
    )


def _check_forward(
    model: nn.Module,
    x: torch.Tensor,
    config: TrainConfig,
    cond: dict[str, torch.Tensor] | None,
    hook: BatchConditioning | None = None,
) -> None:
    """Fail before training when the backbone cannot take the data's grid (or condition)."""
    try:
        with torch.no_grad():
            c = None if cond is None else dict(cond)
            if hook is not None:
                c = hook(x, c, torch.Generator(device=x.device).manual_seed(0))
            out = model(x, torch.ones(x.shape[0], device=x.device), c)
    except (PdediffError, RuntimeError, ValueError) as e:
        raise ConfigError(
            f"backbone {config.model.backbone!r} cannot process fields of shape "
            f"{tuple(x.shape[1:])}: {e}"
        ) from None
    if out.shape != x.shape:
        raise ConfigError(f"the denoiser maps {tuple(x.shape)} to {tuple(out.shape)}")


def _plan(
    data: str | os.PathLike | xr.Dataset,
    out: Path,
    config: TrainConfig | None,
    resume: bool,
    overwrite: bool,
) -> tuple[
    Checkpoint | None,
    TrainConfig,
    FieldSpec,
    Architecture,
    torch.Tensor,
    dict[str, torch.Tensor] | None,
    str,
]:
    """The checkpoint to resume (or None), the config, the data's spec, tensor and
    condition vectors (None when unconditioned)."""
    ckpt = read_checkpoint(out) if _check_output(out, resume, overwrite) else None
    if ckpt is not None:
        ckpt.require_training()
    ds, name = _load_data(data)
    if ckpt is not None:
        config = _resume_config(ckpt, config)
        spec, arch = ckpt.fieldspec, ckpt.architecture
        spec.check_compatible(ds)
        label = spec.label.get("name") if spec.label else None
        if list(spec.conditions) != config.condition or label != config.label:
            raise CheckpointError(
                f"{out}: config.json conditions on {config.condition} (label "
                f"{config.label}) but fieldspec.json holds {list(spec.conditions)} (label "
                f"{label}): the checkpoint is inconsistent"
            )
    else:
        config = (config or TrainConfig()).resolved()
        spec = _fieldspec(ds, config, name)
        arch = _architecture(config, len(spec.variables), len(spec.label.get("classes", [])))
    return ckpt, config, spec, arch, spec.to_tensor(ds), _conditions(ds, spec, name), name


def _machine(d: Dist) -> dict[str, Any]:
    """Where this session trains: platform, CPU count, torch device (and the GPU's name)."""
    machine = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "device": str(d.device),
        "world_size": d.world_size,
    }
    if d.device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(d.device)
    return machine


def _provenance(ckpt: Checkpoint | None, command: str | None, d: Dist) -> dict[str, Any]:
    """``command``: the one that started the checkpoint (kept when resuming; None if not
    recorded); ``commands``: every recorded command, in order; ``machine``: this session's."""
    old = ckpt.state if ckpt is not None else {}
    commands = list(old.get("commands") or ([old["command"]] if old.get("command") else []))
    if command:
        commands.append(command)
    first = old.get("command") if ckpt is not None else command
    return {"command": first, "commands": commands, "machine": _machine(d)}


def _setup(
    data: str | os.PathLike | xr.Dataset,
    out: Path,
    config: TrainConfig | None,
    resume: bool,
    overwrite: bool,
    d: Dist,
    command: str | None = None,
) -> tuple[_Run, bool]:
    """Read the data (and checkpoint), build model, EMA, optimizer and loss."""
    from pdediff.core.ema import EMA

    ckpt, config, spec, arch, x, cond, name = _plan(data, out, config, resume, overwrite)
    if config.batch_size % d.world_size:
        raise ConfigError(
            f"batch_size {config.batch_size} is not divisible by the {d.world_size} processes"
        )
    loss_fn = build_loss(config)
    torch.manual_seed(step_seed(config.seed, _INIT))  # the initial weights
    model = (ckpt.build(d.device) if ckpt else arch.build().to(d.device)).train()
    hook = BATCH_CONDITIONING[config.cascade.stage](config, spec)
    c1 = _rows(cond, slice(0, 1), d.device)
    _check_forward(model, x[:1].to(d.device), config, c1, hook)
    o = config.optimizer
    opt = torch.optim.AdamW(
        model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
    )
    ema = EMA(model, config.ema_decay)
    start, elapsed = 0, 0.0
    if ckpt is not None:
        start, elapsed = ckpt.step, float(ckpt.state.get("elapsed", 0.0))
        _restore(ckpt, model, ema, opt)
    info = {"source": name, "samples": int(x.shape[0]), "sha256": _fingerprint(x, cond)}
    if ckpt is not None and ckpt.state.get("data", {}).get("sha256") != info["sha256"]:
        _warn(d, f"the data differ from those {out} was trained on; resuming anyway")
    if d.device.type == "cuda" and x.numel() * x.element_size() <= _DEVICE_DATA_BYTES:
        x = x.to(d.device)
        cond = _rows(cond, slice(None), d.device)
    origin = _provenance(ckpt, command, d)
    run = _Run(
        config, spec, arch, model, ema, opt, loss_fn, x, info, start, elapsed, origin, cond, hook
    )
    return run, ckpt is not None


def _restore(ckpt: Checkpoint, model: nn.Module, ema: Any, opt: torch.optim.Optimizer) -> None:
    """Weights, EMA and optimizer state of ``ckpt`` into the freshly built objects."""
    ckpt.load_model(model)
    ckpt.load_ema(ema)
    file = ckpt.path / "optimizer.safetensors"
    try:
        opt.load_state_dict(ckpt.tensors(file.name))
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{file} does not fit the model's parameters: {e}") from None


def _warn(d: Dist, message: str) -> None:
    if d.is_main:
        print(f"pdediff train: warning: {message}", file=sys.stderr)


# -- the loop -----------------------------------------------------------------------------
@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic kernels inside the block (the previous setting is restored)."""
    previous = torch.are_deterministic_algorithms_enabled()
    cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    if enabled:
        # cuBLAS needs a fixed workspace for reproducible reductions
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def _train_step(
    run: _Run, net: nn.Module, step: int, sampler: BatchSampler, d: Dist, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One optimisation step; returns the local mean loss, the gradient norm and the lr."""
    cfg = run.config
    local = cfg.batch_size // d.world_size
    idx = sampler.indices(step)[d.rank * local : (d.rank + 1) * local]
    x0 = run.data[idx.to(run.data.device)].to(d.device, non_blocking=True)
    cond = _rows(run.cond_data, idx.to(run.data.device), d.device)
    lr = lr_at(step, cfg.optimizer.lr, cfg.optimizer.warmup_steps)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    torch.manual_seed(step_seed(cfg.seed, _TORCH, step, d.rank))  # dropout in the backbone
    gen.manual_seed(step_seed(cfg.seed, _NOISE, step, d.rank))  # sigma and noise
    if run.batch_cond is not None:  # draws its augmentation before the loss's draws
        cond = run.batch_cond(x0, cond, gen)
    run.optimizer.zero_grad(set_to_none=True)
    loss = run.loss_fn(net, x0, cond, generator=gen).mean()  # draws sigma, noise, dropout
    loss.backward()
    clip = cfg.optimizer.grad_clip or math.inf  # inf: only measure the norm
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), clip)
    run.optimizer.step()
    run.ema.update(run.model)
    return loss.detach(), grad_norm.detach(), lr


class _Logger:
    """Averages loss and gradient norm between log steps; rank 0 appends ``log.jsonl``."""

    def __init__(self, run: _Run, out: Path, d: Dist, bar: tqdm) -> None:
        self.run, self.out, self.d, self.bar = run, out, d, bar
        self.sums = torch.zeros(2, dtype=torch.float64, device=d.device)
        self.count, self.t_window = 0, time.perf_counter()
        self.t_start = self.t_window
        self.history: list[dict[str, Any]] = []
        self.last_loss = math.nan

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        # accumulated on the device: no host sync per step
        self.sums += torch.stack([loss.double(), grad_norm.double()])
        self.count += 1

    def flush(self, step: int, lr: float) -> None:
        """Write the record of the window ending at ``step`` (steps done so far)."""
        if self.count == 0:
            return
        means = all_mean(self.d, self.sums / self.count).tolist()
        now = time.perf_counter()
        cfg = self.run.config
        record = {
            "step": step,
            "loss": means[0],
            "lr": lr,
            "grad_norm": means[1],
            "samples_per_s": self.count * cfg.batch_size / max(now - self.t_window, 1e-9),
            "time": self.run.elapsed + now - self.t_start,
            "epoch": step * cfg.batch_size / self.run.data.shape[0],
        }
        self.sums.zero_()
        self.count, self.t_window, self.last_loss = 0, now, means[0]
        if not math.isfinite(means[0]):
            raise PdediffError(
                f"the loss became {means[0]} by step {step}; lower optimizer.lr or set "
                f"optimizer.grad_clip (the last checkpoint in {self.out} is unaffected)"
            )
        self.history.append(record)
        if self.d.is_main:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            self.bar.set_postfix(
                loss=f"{means[0]:.4g}", samples_s=f"{record['samples_per_s']:.1f}", refresh=False
            )


def _truncate_log(out: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a run resumes from."""
    log = out / "log.jsonl"
    if not log.is_file():
        return
    keep = []
    for line in log.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut by a kill
    tmp = log.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(f"{line}\n" for line in keep))
    os.replace(tmp, log)


def _checkpoint(
    run: _Run, out: Path, step: int, d: Dist, elapsed: float, loss: float, carry: bool = True
) -> None:
    """Rank 0 saves (``carry``: keeping the log); every rank checks the ranks' weights are
    identical."""
    digests = gather_digests(d, state_digest(run.model))
    error = None
    if len(set(digests)) > 1:
        error = PdediffError(f"the {d.world_size} processes' weights differ at step {step}")
    elif d.is_main:
        state = {
            "step": step,
            "elapsed": elapsed,
            "loss": loss if math.isfinite(loss) else None,
            "samples_seen": step * run.config.batch_size,
            "world_size": d.world_size,
            "rank_digests": digests,
            "data": run.data_info,
            **run.provenance,
            "pdediff": __version__,
            "torch": torch.__version__,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        try:
            save_checkpoint(
                out,
                model=run.model,
                ema=run.ema,
                optimizer=run.optimizer,
                fieldspec=run.spec,
                config=run.config,
                architecture=run.arch,
                state=state,
                carry=carry,
            )
        except OSError as e:
            error = PdediffError(f"cannot write the checkpoint {out}: {e}")
    if not agree(d, error is None):
        raise error or PdediffError(f"another process failed to save the checkpoint {out}")


def _loop(run: _Run, out: Path, d: Dist, progress: bool) -> TrainResult:
    cfg = run.config
    net: nn.Module = run.model
    if d.active:
        ids = [d.device.index] if d.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(run.model, device_ids=ids)
    sampler = BatchSampler(run.data.shape[0], cfg.batch_size, cfg.seed)
    gen = torch.Generator(device=d.device)
    disable = not (progress and d.is_main)
    with tqdm(
        total=cfg.steps, initial=run.start, unit="step", desc="train", disable=disable
    ) as bar:
        log = _Logger(run, out, d, bar)
        lr = lr_at(run.start, cfg.optimizer.lr, cfg.optimizer.warmup_steps)
        for step in range(run.start, cfg.steps):
            loss, grad_norm, lr = _train_step(run, net, step, sampler, d, gen)
            log.add(loss, grad_norm)
            done = step + 1
            bar.update(1)
            save = done % cfg.checkpoint_every == 0 or done == cfg.steps
            if save or done % cfg.log_every == 0:  # a NaN loss stops before it is saved
                log.flush(done, lr)
            if save:
                elapsed = run.elapsed + time.perf_counter() - log.t_start
                _checkpoint(run, out, done, d, elapsed, log.last_loss)
    seconds = time.perf_counter() - log.t_start
    step = max(run.start, cfg.steps)
    return TrainResult(out, step, log.last_loss, seconds, run.model, log.history)


def train(
    data: str | os.PathLike | xr.Dataset,
    out: str | os.PathLike,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "auto",
    progress: bool = True,
    command: str | None = None,
) -> TrainResult:
    """Train a denoiser on the fields of ``data`` and checkpoint it to ``out``.

    Parameters
    ----------
    data
        A field file (NetCDF or zarr, pdediff's convention) or a Dataset.  The fields are
        normalised with a :class:`~pdediff.io.FieldSpec` computed on them (stored in the
        checkpoint; a resumed run reuses the stored one).
    out
        Checkpoint directory (see :mod:`pdediff.train.checkpoint`); must be absent or
        empty unless ``resume`` or ``overwrite``.
    config
        The run's settings (default :class:`TrainConfig`); when resuming, ``None`` means
        the checkpoint's, and only ``steps``, ``log_every``, ``checkpoint_every`` and
        ``deterministic`` may differ from it.
    resume
        Continue the checkpoint in ``out`` up to ``config.steps`` (starts afresh when
        ``out`` holds none).
    overwrite
        Replace whatever is in ``out`` (at the first checkpoint, written at step 0).
    device
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    progress
        Show a progress bar (rank 0 only).
    command
        The command line that runs this training (``pdediff train`` passes its own), kept
        in ``state.json`` with the machine: ``command`` is the one that started the
        checkpoint, ``commands`` every recorded one in order (resumed runs append).

    Returns
    -------
    TrainResult
        Final step, loss, time, the trained model and the log records.
    """
    out = Path(out)
    if config is not None and config.deterministic:
        # read when cuBLAS starts, so before the first CUDA matmul
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    d = init_distributed(device)
    try:
        result = _train(data, out, config, resume, overwrite, d, progress, command)
    except BaseException:
        d.close(clean=False)
        raise
    d.close()
    return result


def _train(
    data, out: Path, config, resume: bool, overwrite: bool, d: Dist, progress: bool, command
):
    if d.is_main:
        out.parent.mkdir(parents=True, exist_ok=True)
        if recover(out):
            _warn(d, f"restored {out} from the backup of an interrupted save")
    d.barrier()
    # every draw is seeded from (seed, step): leave the caller's global RNG as it was
    devices = [d.device.index or 0] if d.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        error: Exception | None = None
        try:
            run, resumed = _setup(data, out, config, resume, overwrite, d, command)
        except (PdediffError, FileExistsError, FileNotFoundError) as e:
            error = e
        if not agree(d, error is None):
            raise error or PdediffError("another process failed to set up training")
        if run.start >= run.config.steps and resumed:
            _warn(d, f"{out} is at step {run.start} already (steps = {run.config.steps})")
        with _deterministic(run.config.deterministic):
            if resumed:
                if d.is_main:
                    _truncate_log(out, run.start)
            else:  # creates out, or replaces what --overwrite allowed
                _checkpoint(run, out, 0, d, 0.0, math.nan, carry=False)
            return _loop(run, out, d, progress)
