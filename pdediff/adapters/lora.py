"""LoRA: low-rank adapters on the Linear and convolution layers of a network.

LoRA (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models", ICLR,
arXiv:2106.09685, eq. 3) keeps a layer's weight ``W`` (``out x in``) frozen and learns a
rank-``r`` update:

.. math::

    W' = W + \\frac{\\alpha}{r}\\, B A,\\qquad
    A \\in \\mathbb R^{r \\times \\mathrm{in}},\\quad B \\in \\mathbb R^{\\mathrm{out} \\times r},

with ``A`` random and ``B = 0`` at initialisation, so the adapted network equals the base
network exactly until ``B`` is trained.  A convolution weight ``(out, in / groups, *k)``
is treated as the matrix ``(out, in / groups * prod(k))`` (``A`` is ``(r, in k k)`` for a
2-D kernel ``k x k``) and the update is reshaped back to the kernel.  In pdediff's UNet
the attention projections (``qkv``, ``proj``) are 1x1 convolutions, so they are adapted
like any other convolution.

The update is attached with :mod:`torch.nn.utils.parametrize`: the layer keeps its class
and forward, its ``weight`` becomes ``W + (alpha / r) B A`` computed on access, and the
base weight stays at ``layer.parametrizations.weight.original``.

An adapter is saved as a small safetensors file (the ``A`` and ``B`` of every adapted
layer) with a JSON sidecar (same name, ``.json``) holding the layers, ranks, ``alpha``,
the SHA-256 of the weights file and :func:`base_model_hash` of the base network, so an
adapter is never loaded onto another base model.

Examples
--------
>>> layers = add_lora(denoiser, rank=4, targets=["*.qkv", "*.conv1"])  # doctest: +SKIP
>>> opt = torch.optim.AdamW(lora_parameters(denoiser), lr=1e-3)         # doctest: +SKIP
>>> save_lora(denoiser, "darcy-few.safetensors", base_hash)             # doctest: +SKIP
>>> merge_lora(denoiser)  # plain weights W + (alpha / r) B A again        # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrize

from pdediff.errors import PdediffError

__all__ = [
    "FORMAT",
    "LoRA",
    "LoRAError",
    "SUPPORTED",
    "add_lora",
    "base_model_hash",
    "count_parameters",
    "load_lora",
    "lora_layers",
    "lora_parameters",
    "lora_state_dict",
    "merge_lora",
    "read_lora",
    "remove_lora",
    "save_lora",
    "set_lora_enabled",
]

FORMAT = "pdediff-lora"
VERSION = 1
#: Layer types that take an adapter on their ``weight``.
SUPPORTED: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Selects layers: ``None`` (all supported), name patterns, or ``f(name, layer) -> bool``.
Targets = Callable[[str, nn.Module], bool] | str | Sequence[str] | None


class LoRAError(PdediffError):
    """A bad LoRA setting (rank, alpha, target), or an adapter file that does not fit."""


class LoRA(nn.Module):
    """The parametrization ``W -> W + (alpha / r) B A`` of one layer's weight.

    Parameters
    ----------
    weight
        The base weight ``(out, *rest)``; ``A`` gets ``prod(rest)`` columns.
    rank
        ``r``, the rank of the update.
    alpha
        Scale numerator: the update is ``(alpha / r) B A``.
    generator
        Source of ``A``'s initial values (the global generator when ``None``).

    Notes
    -----
    ``A`` is drawn like PyTorch's default Linear weight (Kaiming-uniform with
    ``a = sqrt(5)``, i.e. ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, as in Hu et al.'s
    ``loralib``); ``B = 0``.  ``enabled = False`` returns ``W`` unchanged.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        rank: int,
        alpha: float,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        out, fan_in = weight.shape[0], weight[0].numel()
        bound = 1.0 / math.sqrt(fan_in)
        a = (torch.rand(rank, fan_in, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        self.lora_A = nn.Parameter(a.to(device=weight.device, dtype=weight.dtype))
        self.lora_B = nn.Parameter(weight.new_zeros(out, rank))
        self.rank, self.alpha = int(rank), float(alpha)
        self.shape = tuple(weight.shape)
        self.enabled = True

    @property
    def scale(self) -> float:
        """``alpha / r``."""
        return self.alpha / self.rank

    def delta(self) -> torch.Tensor:
        """The update ``(alpha / r) B A`` in the shape of the weight."""
        return (self.scale * (self.lora_B @ self.lora_A)).reshape(self.shape)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        return weight + self.delta().to(weight.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, enabled={self.enabled}"


# -- finding layers -----------------------------------------------------------------------
def _lora_of(layer: nn.Module) -> LoRA | None:
    """The layer's LoRA parametrization of ``weight``, if any."""
    if not parametrize.is_parametrized(layer, "weight"):
        return None
    found = [p for p in layer.parametrizations.weight if isinstance(p, LoRA)]
    return found[0] if found else None


def lora_layers(module: nn.Module) -> dict[str, LoRA]:
    """``{layer name: its LoRA parametrization}`` for every adapted layer of ``module``."""
    out = {}
    for name, layer in module.named_modules():
        lora = _lora_of(layer)
        if lora is not None:
            out[name] = lora
    return out


def _require_adapters(module: nn.Module, action: str) -> dict[str, LoRA]:
    layers = lora_layers(module)
    if not layers:
        raise LoRAError(f"cannot {action}: the model has no LoRA adapter (call add_lora first)")
    return layers


def _candidates(module: nn.Module) -> dict[str, nn.Module]:
    """Supported layers, without the parametrizations' own submodules."""
    return {
        name: layer
        for name, layer in module.named_modules()
        if isinstance(layer, SUPPORTED) and ".parametrizations." not in f".{name}."
    }


def _listing(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _match_pattern(module: nn.Module, pattern: str, candidates: Mapping[str, nn.Module]):
    """Supported layers named by ``pattern`` or lying inside a module it names."""
    names = [n for n, _ in module.named_modules() if n and fnmatch.fnmatchcase(n, pattern)]
    if not names:
        raise LoRAError(
            f"LoRA target {pattern!r} matches no layer of the model; layers that can be "
            f"adapted: {_listing(list(candidates))}"
        )
    hits = [c for c in candidates if any(c == n or c.startswith(n + ".") for n in names)]
    if not hits:
        kinds = sorted({type(module.get_submodule(n)).__name__ for n in names})
        raise LoRAError(
            f"LoRA target {pattern!r} names {', '.join(kinds)} layer(s), which hold no "
            f"Linear or convolution; adaptable layers: {_listing(list(candidates))}"
        )
    return hits


def _select(module: nn.Module, targets: Targets) -> list[str]:
    candidates = _candidates(module)
    if targets is None:
        chosen = set(candidates)
    elif callable(targets):
        chosen = {n for n, layer in candidates.items() if targets(n, layer)}
    else:
        patterns = [targets] if isinstance(targets, str) else list(targets)
        if not patterns or not all(isinstance(p, str) for p in patterns):
            raise LoRAError(
                f"targets must be None, a predicate f(name, layer) or layer name patterns "
                f"(strings), got {targets!r}"
            )
        chosen = {n for p in patterns for n in _match_pattern(module, p, candidates)}
    if not chosen:
        raise LoRAError(
            f"the LoRA targets select no layer; adaptable layers: {_listing(list(candidates))}"
        )
    return [n for n in candidates if n in chosen]  # the model's order


def _check_rank_alpha(rank: Any, alpha: Any) -> tuple[int, float]:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise LoRAError(f"LoRA rank must be a positive integer (e.g. 4), got {rank!r}")
    alpha = float(rank) if alpha is None else alpha
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < math.inf:
        raise LoRAError(f"LoRA alpha must be a positive number (default: the rank), got {alpha!r}")
    return rank, float(alpha)


# -- adding, switching, folding -----------------------------------------------------------
def add_lora(
    module: nn.Module,
    rank: int,
    alpha: float | None = None,
    targets: Targets = None,
    *,
    freeze: bool = True,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Attach a LoRA adapter ``W' = W + (alpha / r) B A`` (Hu et al. 2022, eq. 3) to layers.

    Parameters
    ----------
    module
        Any network (a preconditioned denoiser or a bare backbone); changed in place.
    rank
        ``r >= 1``.  A rank above ``min(out, in k k)`` of a layer is allowed but adds
        nothing over that minimum.
    alpha
        Scale numerator (default ``rank``, i.e. ``alpha / r = 1``).  Changing ``alpha``
        for a fixed ``r`` is like changing the learning rate of the adapter.
    targets
        Which Linear / Conv1d / Conv2d / Conv3d layers: ``None`` all of them; layer name
        patterns (:func:`fnmatch.fnmatchcase`, e.g. ``"*.qkv"`` or ``"backbone.middle"``,
        which adapts every layer inside); or a predicate ``f(name, layer) -> bool``.
    freeze
        Turn off the gradients of every existing parameter of ``module``, so only the
        adapters train (:func:`lora_parameters`).
    generator
        Source of the initial ``A`` matrices.

    Returns
    -------
    list of str
        The names of the adapted layers, in the model's order.

    Raises
    ------
    LoRAError
        ``rank < 1``, ``alpha <= 0``, a pattern that names no layer (the message lists
        the adaptable ones), an empty selection, or a layer whose weight already has an
        adapter or another parametrization.
    """
    rank, alpha = _check_rank_alpha(rank, alpha)
    names = _select(module, targets)
    for name in names:
        if parametrize.is_parametrized(module.get_submodule(name), "weight"):
            raise LoRAError(
                f"layer {name!r} already has a parametrized weight (a LoRA adapter?); "
                f"merge_lora or remove_lora first"
            )
    if freeze:
        module.requires_grad_(False)
    for name in names:
        layer = module.get_submodule(name)
        lora = LoRA(layer.weight.detach(), rank, alpha, generator)
        parametrize.register_parametrization(layer, "weight", lora)
    return names


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The ``A`` and ``B`` matrices of every adapter, for the optimizer."""
    return [p for lora in lora_layers(module).values() for p in (lora.lora_A, lora.lora_B)]


def count_parameters(params: Sequence[torch.Tensor] | nn.Module) -> int:
    """Number of scalars in ``params`` (a module counts its parameters)."""
    if isinstance(params, nn.Module):
        params = list(params.parameters())
    return sum(p.numel() for p in params)


def set_lora_enabled(module: nn.Module, enabled: bool) -> None:
    """Switch every adapter on or off; off, the network computes the base weights ``W``."""
    for lora in _require_adapters(module, "enable or disable LoRA").values():
        lora.enabled = bool(enabled)


def merge_lora(module: nn.Module) -> list[str]:
    """Fold every adapter into its weight (``W <- W + (alpha / r) B A``) and remove the
    parametrizations; returns the merged layer names.

    A disabled adapter is folded too (remove it with :func:`remove_lora` instead).  The
    merged weights keep the base weights' ``requires_grad`` (off after ``add_lora``).
    """
    layers = _require_adapters(module, "merge LoRA")
    for name, lora in layers.items():
        lora.enabled = True
        _unparametrize(module.get_submodule(name), name, leave_parametrized=True)
    return list(layers)


def remove_lora(module: nn.Module) -> list[str]:
    """Drop every adapter, restoring the base weights ``W``; returns the layer names."""
    layers = _require_adapters(module, "remove LoRA")
    for name in layers:
        _unparametrize(module.get_submodule(name), name, leave_parametrized=False)
    return list(layers)


def _unparametrize(layer: nn.Module, name: str, leave_parametrized: bool) -> None:
    if len(layer.parametrizations.weight) != 1:
        raise LoRAError(
            f"layer {name!r} has other parametrizations of its weight besides LoRA; "
            f"remove them first"
        )
    parametrize.remove_parametrizations(layer, "weight", leave_parametrized=leave_parametrized)


# -- hashing and files --------------------------------------------------------------------
def _base_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The base weights by their unadapted names (``x.weight``, not
    ``x.parametrizations.weight.original``); parametrizations' own tensors are left out."""
    out = []
    for key, tensor in module.state_dict().items():
        parts = key.split(".")
        if "parametrizations" in parts:
            i = len(parts) - 1 - parts[::-1].index("parametrizations")
            if parts[-1] != "original":
                continue
            key = ".".join([*parts[:i], parts[i + 1]])
        out.append((key, tensor))
    return sorted(out, key=lambda item: item[0])


def base_model_hash(module: nn.Module) -> str:
    """SHA-256 (hex) of the base network's weights.

    The digest covers every parameter and buffer by name (sorted), dtype, shape and bytes.
    Adapters do not change it: an adapted layer contributes its base weight ``W`` under
    its original name, so the hash is the same before and after :func:`add_lora` (but not
    after :func:`merge_lora`, which changes ``W``).
    """
    digest = hashlib.sha256()
    for name, tensor in _base_tensors(module):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def lora_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``{"<layer>.lora_A": A, "<layer>.lora_B": B}`` (CPU copies) of every adapter."""
    out = {}
    for name, lora in _require_adapters(module, "save LoRA").items():
        out[f"{name}.lora_A"] = lora.lora_A.detach().to("cpu", copy=True).contiguous()
        out[f"{name}.lora_B"] = lora.lora_B.detach().to("cpu", copy=True).contiguous()
    return out


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """The weights file and its JSON sidecar."""
    path = Path(path)
    if path.suffix == ".json":
        raise LoRAError(
            f"{path}: give the adapter's weights path (e.g. ADAPTER.safetensors); the "
            f".json sidecar beside it is found from it"
        )
    return path, path.with_suffix(".json")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _replace_synced(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_lora(
    module: nn.Module,
    path: str | os.PathLike,
    base_hash: str,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write the adapters of ``module`` to ``path`` (safetensors) and ``path.json``.

    Parameters
    ----------
    module
        The adapted network.
    path
        Weights file (e.g. ``darcy-few.safetensors``); the sidecar is the same path with
        the suffix ``.json``.  Both are replaced if they exist.
    base_hash
        :func:`base_model_hash` of the base network (before adaptation).
    meta
        JSON-ready information kept in the sidecar under ``"meta"`` (how it was trained).

    Returns
    -------
    Path
        The weights file.

    Notes
    -----
    Each file is written to a temporary sibling and renamed into place, the weights
    first; the sidecar records the weights' SHA-256, so an interrupted save that renamed
    only the weights is detected by :func:`load_lora`.
    """
    weights, sidecar = _paths(path)
    if not weights.parent.is_dir():
        raise LoRAError(f"output folder {weights.parent} does not exist")
    tensors = lora_state_dict(module)
    info = {
        "format": FORMAT,
        "version": VERSION,
        "base_hash": str(base_hash),
        "layers": {
            name: {"rank": lora.rank, "alpha": lora.alpha, "shape": list(lora.shape)}
            for name, lora in lora_layers(module).items()
        },
        "parameters": count_parameters(list(tensors.values())),
        "meta": dict(meta or {}),
    }
    with tempfile.TemporaryDirectory(prefix=f".{weights.name}.", dir=weights.parent) as tmp:
        tmp_w, tmp_j = Path(tmp) / "weights", Path(tmp) / "sidecar"
        save_file(tensors, str(tmp_w), metadata={"format": FORMAT, "base_hash": str(base_hash)})
        info["weights_sha256"] = _file_sha256(tmp_w)
        tmp_j.write_text(json.dumps(info, indent=1) + "\n")
        _replace_synced(tmp_w, weights)
        _replace_synced(tmp_j, sidecar)
    return weights


def read_lora(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the sidecar of an adapter written by :func:`save_lora`.

    Raises
    ------
    LoRAError
        A missing or unreadable file, a sidecar of another format, or weights whose
        SHA-256 differs from the sidecar's record (an interrupted save or a mixed pair).
    """
    weights, sidecar = _paths(path)
    for p in (weights, sidecar):
        if not p.is_file():
            hint = ""
            if p.is_dir():
                hint = " (a full fine-tuned checkpoint? load it with load_checkpoint)"
            raise LoRAError(f"{p} is missing: not a complete LoRA adapter{hint}")
    try:
        info = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LoRAError(f"{sidecar} is not valid JSON: {e}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise LoRAError(f"{sidecar} is not a pdediff LoRA adapter sidecar")
    if info.get("version") != VERSION:
        raise LoRAError(
            f"{sidecar} has version {info.get('version')}; this pdediff reads {VERSION}"
        )
    if _file_sha256(weights) != info.get("weights_sha256"):
        raise LoRAError(
            f"{weights} does not match its sidecar {sidecar} (SHA-256 differs): an "
            f"interrupted save or files from two adapters; save the adapter again"
        )
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as e:  # the Rust reader raises its own error types
        raise LoRAError(f"{weights} is not a readable safetensors file: {e}") from None
    return tensors, info


def _check_base(info: Mapping[str, Any], path: Path, actual: str) -> None:
    expected = info.get("base_hash")
    if expected != actual:
        source = (info.get("meta") or {}).get("base_checkpoint")
        where = f" ({source})" if source else ""
        raise LoRAError(
            f"adapter {path} was trained on a base model with hash {expected}{where}, but "
            f"this model's base weights have hash {actual}: load it onto the base model it "
            f"was trained on"
        )


def load_lora(
    module: nn.Module,
    path: str | os.PathLike,
    base_hash: str | None = None,
    *,
    freeze: bool = True,
) -> dict[str, Any]:
    """Attach the adapters saved at ``path`` to ``module`` (in place).

    Parameters
    ----------
    module
        The base network the adapter was trained on (its layers without adapters get
        them; layers that have one must have the same rank and get the saved values).
    path
        Weights file written by :func:`save_lora`.
    base_hash
        :func:`base_model_hash` of ``module``; computed when not given.
    freeze
        As in :func:`add_lora`.

    Returns
    -------
    dict
        The sidecar (``layers``, ``base_hash``, ``meta``...).

    Raises
    ------
    LoRAError
        The adapter was trained on another base model (the message names both hashes),
        or its layers or shapes do not fit ``module``.
    """
    tensors, info = read_lora(path)
    _check_base(info, Path(path), base_hash or base_model_hash(module))
    layers = info.get("layers") or {}
    existing = lora_layers(module)
    _check_layers(module, layers, existing, Path(path))
    groups: dict[tuple[int, float], set[str]] = {}
    for name, spec in layers.items():
        if name not in existing:
            groups.setdefault((int(spec["rank"]), float(spec["alpha"])), set()).add(name)
    for (rank, alpha), names in groups.items():
        add_lora(module, rank, alpha, lambda n, _, names=names: n in names, freeze=freeze)
    _assign(lora_layers(module), layers, tensors, Path(path))
    return info


def _check_layers(
    module: nn.Module, layers: Mapping[str, Any], existing: Mapping[str, LoRA], path: Path
) -> None:
    candidates = _candidates(module)
    missing = [n for n in layers if n not in candidates]
    if missing:
        raise LoRAError(
            f"adapter {path} adapts layer(s) {_listing(missing, 3)} that the model lacks"
        )
    for name, spec in layers.items():
        lora = existing.get(name)
        if lora is not None and lora.rank != int(spec["rank"]):
            raise LoRAError(
                f"layer {name!r} already has a rank-{lora.rank} adapter; {path} holds a "
                f"rank-{spec['rank']} one: remove_lora first"
            )


def _assign(
    adapters: Mapping[str, LoRA],
    layers: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    path: Path,
) -> None:
    with torch.no_grad():
        for name in layers:
            lora = adapters[name]
            for part in ("lora_A", "lora_B"):
                key, target = f"{name}.{part}", getattr(lora, part)
                value = tensors.get(key)
                if value is None or value.shape != target.shape:
                    got = "missing" if value is None else tuple(value.shape)
                    raise LoRAError(
                        f"{path}: tensor {key} is {got}, the model expects {tuple(target.shape)}"
                    )
                target.copy_(value)
