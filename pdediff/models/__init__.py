"""Trained models shipped inside the package: EMA weights and a model card, a few MB each.

Each model is a directory ``pdediff/models/<name>/`` written by ``pdediff export`` (see
:mod:`pdediff.train.export`): ``config.json``, ``fieldspec.json``, ``ema.safetensors``,
``state.json``, ``log.jsonl``, ``card.json`` and ``MODEL_CARD.md``.  The package data of
``pyproject.toml`` carries these files into both editable and normal installs.

>>> from pdediff.models import shipped_model
>>> from pdediff.train import load_checkpoint
>>> denoiser, spec, config = load_checkpoint(shipped_model("darcy64"))  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from pdediff.errors import PdediffError

__all__ = ["SHIPPED", "ShippedModelError", "shipped_model"]

#: Model name -> its directory under ``pdediff/models/``.  Listing a name here does not
#: put its weights in the package: ``pdediff export CKPT pdediff/models/NAME --name NAME``
#: does, and :func:`shipped_model` says when they are missing.
SHIPPED: dict[str, str] = {
    # Darcy flow (a, u) at 64 x 64: a small UNet trained on CPU (see its MODEL_CARD.md)
    "darcy64": "darcy64",
    # the other families at 32 x 32: 16-channel UNets (288 k parameters), 8000 steps on CPU
    "burgers32": "burgers32",
    "helmholtz32": "helmholtz32",
    "navier_stokes32": "navier_stokes32",
    "poisson32": "poisson32",
}

_ROOT = Path(__file__).resolve().parent


class ShippedModelError(PdediffError):
    """A shipped model is unknown, or its files are missing from this install."""


def shipped_model(name: str) -> Path:
    """The directory of the shipped model ``name``, to pass to
    :func:`~pdediff.train.load_checkpoint`.

    Raises
    ------
    ShippedModelError
        ``name`` is not in :data:`SHIPPED` (the message lists the names that are), or its
        files are not in this install.
    """
    from pdediff.train.checkpoint import REQUIRED  # torch only when a model is wanted

    if name not in SHIPPED:
        names = ", ".join(sorted(SHIPPED)) or "none"
        raise ShippedModelError(f"no shipped model named {name!r}; available: {names}")
    folder = _ROOT / SHIPPED[name]
    missing = [f for f in REQUIRED if not (folder / f).is_file()]
    if missing:
        raise ShippedModelError(
            f"the weights of the shipped model {name!r} are missing from this install "
            f"({folder} lacks {', '.join(missing)}): install a pdediff release that ships "
            f"them, or write them with `pdediff export CHECKPOINT {folder} --name {name}`"
        )
    return folder
