"""Checkpoints: a directory of JSON and safetensors files, written atomically.

Layout of a checkpoint directory::

    config.json           format version, the denoiser's architecture, the TrainConfig
    fieldspec.json        variables, grid and normalisation of the training data
    model.safetensors     the denoiser's weights (preconditioner + backbone)
    ema.safetensors       the EMA of the weights and its counters
    optimizer.safetensors AdamW's moments; hyperparameters as JSON in the metadata
    state.json            step, elapsed time, world size, ranks' weight digests, command,
                          machine
    log.jsonl             one JSON line per logged step (carried from one save to the next)

An *exported model* (:func:`pdediff.train.export.export_model`) is the same directory for
sampling only: it lacks ``model.safetensors`` and ``optimizer.safetensors``, its
``state.json`` holds an ``"exported"`` entry, and it adds ``MODEL_CARD.md`` and
``card.json``.  :func:`read_checkpoint` opens both kinds; only the EMA weights of an
exported model can be loaded, and it cannot be resumed.

Nothing is pickled: tensors go to safetensors, everything else to JSON.  A nested state
(an optimizer's or EMA's ``state_dict``) is split by :func:`pack_state` into named tensors
and a JSON skeleton that stores in the safetensors header.

A save writes a complete new directory beside the old one and swaps the two with renames;
an interrupted save leaves the previous checkpoint (possibly under the backup name
``.NAME.old``, which :func:`recover` restores).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from pdediff.errors import PdediffError
from pdediff.io.fieldspec import FieldSpec
from pdediff.train.config import TrainConfig, build_denoiser

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "EXPORTED_KEY",
    "FORMAT",
    "load_checkpoint",
    "load_denoiser",
    "pack_state",
    "read_checkpoint",
    "read_tensors",
    "recover",
    "save_checkpoint",
    "unpack_state",
    "write_tensors",
]

FORMAT = "pdediff-checkpoint"
VERSION = 1
#: Files of every checkpoint, exported models included.
REQUIRED = ("config.json", "fieldspec.json", "ema.safetensors", "state.json")
#: Files that only a training checkpoint has: the raw weights and the optimizer state.
TRAINING_FILES = ("model.safetensors", "optimizer.safetensors")
FILES = (
    "config.json",
    "fieldspec.json",
    "model.safetensors",
    "ema.safetensors",
    "optimizer.safetensors",
    "state.json",
)
#: Key of ``state.json`` that marks an exported model (and says where it came from).
EXPORTED_KEY = "exported"
#: Files of the old directory copied into each new save.
CARRIED = ("log.jsonl",)
_SKELETON_KEY = "pdediff_state"


class CheckpointError(PdediffError):
    """A checkpoint directory is incomplete, corrupt or does not match its config."""


# -- nested state <-> named tensors + JSON ------------------------------------------------
def pack_state(state: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state into named CPU tensors and a JSON-ready skeleton.

    Tensors are named by their path (``"state.0.exp_avg"``); in the skeleton they become
    ``{"__tensor__": name}``.  Tuples and dicts with non-string keys (an optimizer's
    parameter indices) are tagged so :func:`unpack_state` restores them exactly.
    """
    tensors: dict[str, torch.Tensor] = {}

    def enc(obj: Any, path: str) -> Any:
        if isinstance(obj, torch.Tensor):
            name = path or "tensor"
            if name in tensors:
                raise CheckpointError(f"two tensors of the state are both named {name!r}")
            # a copy: safetensors refuses tensors that share memory, and the live ones change
            tensors[name] = obj.detach().to("cpu", copy=True).contiguous()
            return {"__tensor__": name}
        if isinstance(obj, Mapping):
            sub = {k: enc(v, f"{path}.{k}" if path else str(k)) for k, v in obj.items()}
            if all(isinstance(k, str) for k in obj) and not _is_tagged(sub):
                return sub
            return {"__items__": [[k, v] for k, v in sub.items()]}
        if isinstance(obj, tuple):
            return {"__tuple__": [enc(v, f"{path}.{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [enc(v, f"{path}.{i}") for i, v in enumerate(obj)]
        if obj is None or isinstance(obj, bool | int | float | str):
            return obj
        raise CheckpointError(f"cannot store {type(obj).__name__} at {path!r} without pickle")

    return tensors, enc(state, "")


def _is_tagged(d: dict) -> bool:
    return len(d) == 1 and next(iter(d)) in ("__tensor__", "__items__", "__tuple__")


def unpack_state(tensors: Mapping[str, torch.Tensor], skeleton: Any) -> Any:
    """Inverse of :func:`pack_state`."""

    def dec(obj: Any) -> Any:
        if isinstance(obj, dict):
            if _is_tagged(obj):
                tag, value = next(iter(obj.items()))
                if tag == "__tensor__":
                    if value not in tensors:
                        raise KeyError(f"tensor {value!r} named in the metadata is missing")
                    return tensors[value]
                if tag == "__tuple__":
                    return tuple(dec(v) for v in value)
                return {k: dec(v) for k, v in value}
            return {k: dec(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [dec(v) for v in obj]
        return obj

    return dec(skeleton)


def write_tensors(path: Path, state: Any, meta: Mapping[str, Any] | None = None) -> None:
    """Write a nested state to a safetensors file, its skeleton and ``meta`` in the header."""
    tensors, skeleton = pack_state(state)
    header = {_SKELETON_KEY: json.dumps(skeleton)}
    header.update({k: json.dumps(v) for k, v in (meta or {}).items()})
    save_file(tensors, str(path), metadata=header)


def read_tensors(path: Path, device: str | torch.device = "cpu") -> tuple[Any, dict[str, Any]]:
    """Read a file written by :func:`write_tensors`: ``(state, meta)``."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: not a complete pdediff checkpoint")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as e:  # the Rust reader raises its own error types
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    try:
        meta = {k: json.loads(v) for k, v in header.items()}
        skeleton = meta.pop(_SKELETON_KEY, None)
        state = tensors if skeleton is None else unpack_state(tensors, skeleton)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt metadata in the header ({e})") from None
    return state, meta


# -- saving -------------------------------------------------------------------------------
def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, allow_nan=True) + "\n")


def _fsync_dir_files(folder: Path) -> None:
    """Flush the files to disk before the rename makes them the checkpoint."""
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def _backup(path: Path) -> Path:
    return path.parent / f".{path.name}.old"


def recover(path: str | os.PathLike) -> bool:
    """Restore the backup of a save that stopped between its two renames; clean up the
    temporary directories of interrupted saves.  Returns True if the backup was restored."""
    path = Path(path)
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
    backup = _backup(path)
    if backup.is_dir() and not path.exists():
        os.rename(backup, path)
        return True
    return False


def _swap_in(tmp: Path, path: Path) -> None:
    """Make ``tmp`` the directory ``path``; the old one survives until the new is in place."""
    if not path.exists():
        os.rename(tmp, path)
        return
    backup = _backup(path)
    if backup.exists():
        shutil.rmtree(backup)
    os.rename(path, backup)
    os.rename(tmp, path)
    shutil.rmtree(backup)


@dataclass
class Architecture:
    """What rebuilds the denoiser: backbone and preconditioner names and arguments."""

    backbone: str
    backbone_config: dict[str, Any]
    precond: str
    precond_config: dict[str, Any]

    def build(self) -> nn.Module:
        return build_denoiser(
            self.backbone, self.backbone_config, self.precond, self.precond_config
        )


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    ema: Any,
    optimizer: torch.optim.Optimizer,
    fieldspec: FieldSpec,
    config: TrainConfig,
    architecture: Architecture,
    state: dict[str, Any],
    carry: bool = True,
) -> Path:
    """Write a checkpoint to ``path`` atomically, replacing any checkpoint there.

    Parameters
    ----------
    path
        The checkpoint directory (its parent must exist).
    model
        The denoiser (not a DDP wrapper).
    ema
        A :class:`~pdediff.core.ema.EMA` of ``model``.
    optimizer
        Its ``state_dict`` is stored as named tensors + JSON hyperparameters.
    fieldspec, config, architecture
        Data normalisation, training config, and what rebuilds ``model``.
    state
        JSON-ready training state; must hold ``"step"``.
    carry
        Copy the log of the checkpoint being replaced into the new one.
    """
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        step = int(state["step"])
        _write_json(
            tmp / "config.json",
            {
                "format": FORMAT,
                "version": VERSION,
                "architecture": vars(architecture),
                "train": config.to_dict(),
            },
        )
        (tmp / "fieldspec.json").write_text(fieldspec.to_json() + "\n")
        write_tensors(tmp / "model.safetensors", model.state_dict(), {"step": step})
        write_tensors(tmp / "ema.safetensors", ema.state_dict(), {"step": step})
        write_tensors(tmp / "optimizer.safetensors", optimizer.state_dict(), {"step": step})
        for name in CARRIED if carry else ():
            if (path / name).is_file():
                shutil.copy2(path / name, tmp / name)
        _write_json(tmp / "state.json", state)  # last: a directory with it is complete
        _fsync_dir_files(tmp)
        _swap_in(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


# -- loading ------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: not a complete pdediff checkpoint")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON (truncated or corrupt?): {e}") from None


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def check_weights(module: nn.Module, weights: Any, file: Path, config_file: Path) -> None:
    """Raise :class:`CheckpointError` unless ``weights`` fit ``module``'s state dict,
    naming the file and the first missing, unexpected or mis-shaped tensors."""
    expected = module.state_dict()
    if not isinstance(weights, dict):
        raise CheckpointError(f"{file} does not hold a weight dict")
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [
        f"{k}: {_shape(weights[k])} in the file, {_shape(expected[k])} in the model"
        for k in expected
        if k in weights
        and (not isinstance(weights[k], torch.Tensor) or weights[k].shape != expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s) ({', '.join(missing[:3])}, ...)")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}, ...)")
    if shapes:
        problems.append(f"{len(shapes)} of another shape ({'; '.join(shapes[:3])})")
    if problems:
        raise CheckpointError(
            f"{file} does not match the network described by {config_file}: " + ", ".join(problems)
        )


@dataclass
class Checkpoint:
    """The JSON parts of a checkpoint directory; tensors are read on demand.

    Attributes
    ----------
    path
        The directory.
    architecture, config, fieldspec
        What rebuilds the denoiser, the training config, the data normalisation.
    state
        ``state.json``: ``step`` and bookkeeping.
    """

    path: Path
    architecture: Architecture
    config: TrainConfig
    fieldspec: FieldSpec
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def exported(self) -> bool:
        """Whether this is an exported model (EMA weights only, no optimizer state)."""
        return isinstance(self.state.get(EXPORTED_KEY), dict)

    def require_training(self, action: str = "resume training from", advice: str = "") -> None:
        """Raise :class:`CheckpointError` if this is an exported model, which has neither
        the raw weights nor the optimizer state: it cannot ``action`` (the error's verb)."""
        if not self.exported:
            return
        source = self.state[EXPORTED_KEY].get("from")
        origin = "the training checkpoint it was exported from" + (f" ({source})" if source else "")
        raise CheckpointError(
            f"cannot {action} {self.path}: it is an exported model (pdediff export) holding "
            f"the EMA weights only, not a training checkpoint; {advice}use {origin}"
        )

    def tensors(self, name: str, device: str | torch.device = "cpu") -> Any:
        """The nested state stored in ``name`` (e.g. ``"optimizer.safetensors"``)."""
        file = self.path / name
        state, meta = read_tensors(file, device)
        if meta.get("step") != self.step:
            raise CheckpointError(
                f"{file} is from step {meta.get('step')} but state.json from step "
                f"{self.step}: the checkpoint is inconsistent"
            )
        return state

    def build(self, device: str | torch.device = "cpu") -> nn.Module:
        """A freshly initialised denoiser of the checkpoint's architecture."""
        try:
            return self.architecture.build().to(device)
        except (PdediffError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"{self.path / 'config.json'}: cannot build the denoiser: {e}"
            ) from None

    def load_model(self, model: nn.Module, ema: bool = False) -> None:
        """Load the raw (or EMA) weights into ``model`` (built by :meth:`build`)."""
        if not ema:
            self.require_training(
                "load the raw (non-EMA) weights of", "load its EMA weights (ema=True) or "
            )
        file = self.path / ("ema.safetensors" if ema else "model.safetensors")
        weights = self.tensors(file.name)
        if ema:  # EMA.state_dict() keeps the averaged weights under "module"
            weights = weights.get("module") if isinstance(weights, dict) else None
        check_weights(model, weights, file, self.path / "config.json")
        model.load_state_dict(weights)

    def load_ema(self, ema: Any) -> None:
        """Restore an :class:`~pdediff.core.ema.EMA` (weights and counters)."""
        file = self.path / "ema.safetensors"
        state = self.tensors(file.name)
        if not isinstance(state, dict) or not {"num_updates", "samples_seen"} <= set(state):
            raise CheckpointError(f"{file} lacks the EMA counters")
        check_weights(ema.module, state.get("module"), file, self.path / "config.json")
        ema.load_state_dict(state)

    def denoiser(self, ema: bool = True, device: str | torch.device = "cpu") -> nn.Module:
        """The denoiser with the EMA (default) or raw weights, in eval mode, with
        parameter gradients off (gradients with respect to the input still flow)."""
        model = self.build(device)
        self.load_model(model, ema)
        return model.eval().requires_grad_(False)


def _check_files(path: Path, state: dict[str, Any]) -> None:
    """Every file of a training checkpoint, or of an exported model, must be there."""
    exported = isinstance(state.get(EXPORTED_KEY), dict)
    missing = [f for f in (REQUIRED if exported else FILES) if not (path / f).is_file()]
    if missing:
        kind = "exported pdediff model" if exported else "pdediff checkpoint"
        raise CheckpointError(f"{path} is not a complete {kind}: missing {', '.join(missing)}")


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a checkpoint directory, checking that every file is there and the JSON parts
    parse; weights are read later (:meth:`Checkpoint.denoiser`).

    Opens training checkpoints (``pdediff train``) and exported models (``pdediff
    export``: EMA weights only, see :attr:`Checkpoint.exported`).
    """
    path = Path(path)
    if not path.is_dir():
        backup = _backup(path)
        hint = f" (a backup of an interrupted save is at {backup})" if backup.is_dir() else ""
        raise FileNotFoundError(f"checkpoint directory {path} does not exist{hint}")
    state_file = path / "state.json"
    state = _read_json(state_file) if state_file.is_file() else {}
    _check_files(path, state if isinstance(state, dict) else {})
    cfg_file = path / "config.json"
    meta = _read_json(cfg_file)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_file} is not a pdediff checkpoint config")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{cfg_file} has format version {meta.get('version')}; this pdediff reads {VERSION}"
        )
    try:
        arch = Architecture(**meta["architecture"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{cfg_file}: bad or missing 'architecture' ({e})") from None
    config = TrainConfig.from_dict(meta.get("train", {}), str(cfg_file))
    spec_file = path / "fieldspec.json"
    try:
        spec = FieldSpec.from_dict(_read_json(spec_file))
    except (PdediffError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{spec_file}: {e}") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{path / 'state.json'} lacks an integer 'step'")
    if not math.isfinite(float(state["step"])) or state["step"] < 0:
        raise CheckpointError(f"{path / 'state.json'}: bad step {state['step']}")
    return Checkpoint(path, arch, config, spec, state)


def load_checkpoint(
    path: str | os.PathLike, ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[nn.Module, FieldSpec, TrainConfig]:
    """Load a trained denoiser for sampling.

    Parameters
    ----------
    path
        Checkpoint directory written by ``pdediff train``, or an exported model
        (``pdediff export``).
    ema
        Use the EMA weights (default) rather than the raw ones (which an exported model
        does not have).
    device
        Where to put the denoiser.

    Returns
    -------
    denoiser, fieldspec, config
        ``D(x, sigma, cond=None) -> x0_hat`` on normalised fields (eval mode, parameter
        gradients off); the :class:`~pdediff.io.FieldSpec` that maps Datasets to its
        channels and back; the :class:`~pdediff.train.config.TrainConfig`.

    Raises
    ------
    CheckpointError
        Naming the file at fault: missing, truncated JSON, unreadable safetensors, or
        weights that do not fit the architecture in ``config.json``; or ``ema=False`` for
        an exported model.
    """
    ckpt = read_checkpoint(path)
    return ckpt.denoiser(ema, device), ckpt.fieldspec, ckpt.config


def load_denoiser(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The EMA denoiser of a checkpoint, ready for sampling."""
    return read_checkpoint(path).denoiser(ema=True, device=device)
