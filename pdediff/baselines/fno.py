"""A learned baseline: a Fourier neural operator from a sparsely observed field to the other.

DiffusionPDE (Huang et al. 2024, Table 1) compares its guided sampler with deterministic
operator learners given the same sparse observations: an FNO (Li et al. 2021) is trained to
map the field observed at a few hundred points to the full other field, forward
(coefficient ``a`` -> solution ``u``) or inverse (``u`` -> ``a``).  Here

* the **input** is two channels: the source field, normalised, at the sensor nodes and 0
  (the training mean) elsewhere, and the 0/1 sensor mask;
* the **output** is the normalised target field on the whole grid;
* training draws new random sensor positions for every sample of every batch (so the net
  sees the mask vary, as at test time), and minimises the relative L2 error of the target
  in physical units, the metric it is scored by:

      L = mean_n ||G(x_n) - y_n||_2 / ||y_n||_2.

The network is neuraloperator's ``FNO`` (lifting, Fourier layers ``v <- s(W v + K v)`` with
``K`` a truncated Fourier multiplier, projection; the grid coordinates are appended to the
input), with optional domain padding for the non-periodic boxes.  The normalisation is a
:class:`~pdediff.io.FieldSpec` computed on the training data; it is saved with the weights.

References
----------
Li, Z. et al. (2021). Fourier neural operator for parametric partial differential equations.
ICLR (arXiv 2010.08895).
Kossaifi, J. et al. (2024). A library for learning neural operators (neuraloperator).
arXiv 2412.10354.
Huang, J. et al. (2024). DiffusionPDE: generative PDE-solving under partial observation.
NeurIPS (arXiv 2406.17763).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from pdediff.baselines.classical import observations
from pdediff.errors import PdediffError
from pdediff.io.fieldspec import FieldSpec
from pdediff.train.checkpoint import CheckpointError, read_tensors, write_tensors

__all__ = [
    "FORMAT",
    "FNOBaseline",
    "build_fno",
    "masked_input",
    "random_masks",
    "relative_l2_loss",
    "sensor_count",
    "train_fno_baseline",
]

FORMAT = "pdediff-fno-baseline"
VERSION = 1


# ------------------------------------------------------------------------------ pieces


def sensor_count(sensors: int | float, n_points: int) -> int:
    """Number of sensors: an int ``>= 1`` is a count, a float in ``(0, 1]`` a fraction of
    the ``n_points`` grid nodes (rounded, at least one)."""
    if isinstance(sensors, bool) or not isinstance(sensors, int | float | np.number):
        raise PdediffError(f"sensors must be a count (int) or a fraction (float), got {sensors!r}")
    if isinstance(sensors, int | np.integer):
        m = int(sensors)
    elif 0.0 < sensors <= 1.0:
        m = max(1, round(float(sensors) * n_points))
    else:
        raise PdediffError(f"a sensor fraction must be in (0, 1], got {sensors}")
    if not 1 <= m <= n_points:
        raise PdediffError(f"sensors must be between 1 and the {n_points} grid nodes, got {m}")
    return m


def random_masks(
    batch: int, n_points: int, m: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``(batch, n_points)`` float masks with ``m`` ones each, at distinct random nodes."""
    scores = torch.rand(batch, n_points, generator=generator)
    keep = scores.argsort(dim=1)[:, :m]
    return torch.zeros(batch, n_points).scatter_(1, keep, 1.0)


def masked_input(normalised: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The FNO's input ``(N, 2, *grid)``: the normalised source where ``masks`` is 1 and 0
    (the training mean) elsewhere, and the mask."""
    return torch.stack([torch.where(masks > 0, normalised, 0.0), masks], dim=1)


def relative_l2_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Mean over the batch of :math:`\lVert \hat y_n - y_n \rVert_2 / \lVert y_n \rVert_2`
    (Li et al. 2021's training loss), norms over all but the batch axis."""
    diff = (pred - target).flatten(1).norm(dim=1)
    ref = target.flatten(1).norm(dim=1).clamp_min(torch.finfo(target.dtype).tiny)
    return (diff / ref).mean()


def _neuralop_fno() -> type[nn.Module]:
    """neuraloperator's ``FNO`` class, imported on first use (it takes about a second)."""
    try:
        from neuralop.models import FNO
    except ImportError as err:  # pragma: no cover - neuraloperator is a dependency
        raise PdediffError(
            "the FNO baseline needs neuraloperator (pip install neuraloperator)"
        ) from err
    return FNO


def build_fno(config: dict[str, Any]) -> nn.Module:
    """neuraloperator's ``FNO`` from a JSON config (``n_modes``, ``hidden_channels``,
    ``n_layers``, ``domain_padding``, ``in_channels``, ``out_channels``)."""
    cfg = dict(config)
    cfg["n_modes"] = tuple(int(k) for k in cfg["n_modes"])
    try:
        return _neuralop_fno()(positional_embedding="grid", **cfg)
    except (TypeError, ValueError) as err:
        raise PdediffError(f"cannot build the FNO from {config}: {err}") from None


def _net_config(
    shape: tuple[int, ...], width: int, modes: int | Sequence[int], n_layers: int, padding: float
) -> dict[str, Any]:
    """JSON config of the FNO; modes are clipped to what the grid has."""
    modes = [int(modes)] * len(shape) if np.isscalar(modes) else [int(k) for k in modes]
    if len(modes) != len(shape) or min(modes) < 1:
        raise PdediffError(f"modes must be one positive int per grid dim {shape}, got {modes}")
    for name, value in (("width", width), ("n_layers", n_layers)):
        if int(value) != value or value < 1:
            raise PdediffError(f"{name} must be a positive integer, got {value!r}")
    if not 0.0 <= padding < 1.0:
        raise PdediffError(f"domain padding must be a fraction in [0, 1), got {padding}")
    return {
        "n_modes": [min(k, n) for k, n in zip(modes, shape, strict=True)],
        "in_channels": 2,
        "out_channels": 1,
        "hidden_channels": int(width),
        "n_layers": int(n_layers),
        "domain_padding": float(padding) or None,
    }


def _tensor_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The weights only (neuraloperator adds a ``_metadata`` dict of Python objects)."""
    return {k: v for k, v in net.state_dict().items() if isinstance(v, torch.Tensor)}


# ------------------------------------------------------------------------------ the model


@dataclass
class FNOBaseline:
    """A trained FNO that maps a field observed at sensors to the other field.

    Built by :func:`train_fno_baseline` or :meth:`load`.

    Attributes
    ----------
    net
        neuraloperator's ``FNO`` (input: normalised masked source and mask; output: the
        normalised target).
    spec
        Variables ``(source, target)``, grid and normalisation of the training data.
    config
        JSON-ready: ``net`` (the FNO's config), ``sensors`` (count used in training),
        ``train`` (hyperparameters, seed, data size, seconds) and ``history`` (loss).
    """

    net: nn.Module
    spec: FieldSpec
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        """Name of the observed field."""
        return self.spec.variables[0]

    @property
    def target(self) -> str:
        """Name of the predicted field."""
        return self.spec.variables[1]

    @property
    def shape(self) -> tuple[int, ...]:
        """Grid shape the model was trained on."""
        return self.spec.shape

    @property
    def history(self) -> list[dict[str, float]]:
        """Training loss, ``[{"step": s, "loss": mean relative L2 since the last entry}]``."""
        return self.config.get("history", [])

    # -- inference ------------------------------------------------------------------------
    def encode(self, masks: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Network input ``(N, 2, *grid)`` from 0/1 masks and physical source values
        ``(N, *grid)`` (values off the mask are ignored)."""
        normalised = (values - self.spec.mean[0]) / self.spec.std[0]
        return masked_input(normalised.float(), masks.float())

    def predict_encoded(self, inputs: torch.Tensor) -> torch.Tensor:
        """The target in physical units ``(N, *grid)`` from encoded inputs (with gradient)."""
        out = self.net(inputs)[:, 0]
        return out * self.spec.std[1] + self.spec.mean[1]

    def predict(self, obs_idx: Any, obs_values: Any, batch_size: int = 128) -> np.ndarray:
        """Predict the target field from sensors of the source field.

        Parameters
        ----------
        obs_idx
            One case: ``(M,)`` flat C-order grid indices, or a boolean mask of the grid
            shape.  A batch: ``(N, M)`` indices (``M`` sensors each) or ``(N, *grid)`` masks
            (any number each).
        obs_values
            Source values in physical units: ``(M,)`` / ``(N, M)`` (for masks: in the C
            order of the true entries), or, with masks, full fields ``grid`` / ``(N, *grid)``
            read at the mask (entries off the mask, NaN included, are ignored).
        batch_size
            Cases per forward pass.

        Returns
        -------
        numpy.ndarray
            float64 target field(s) in physical units: ``grid`` for one case,
            ``(N, *grid)`` for a batch.

        Raises
        ------
        PdediffError
            Indices or masks that do not fit the grid, values of the wrong length or not
            finite, no sensors.
        """
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise PdediffError(f"batch_size must be a positive integer, got {batch_size!r}")
        masks, values, single = self._parse(obs_idx, obs_values)
        inputs = self.encode(masks, values)
        self.net.eval()
        with torch.no_grad():
            out = torch.cat(
                [self.predict_encoded(b) for b in inputs.split(int(batch_size))]
            ).double()
        out = out.numpy()
        return out[0] if single else out

    def _parse(self, obs_idx: Any, obs_values: Any) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Masks and value fields ``(N, *grid)`` (float64) and whether one case was given."""
        idx = np.asarray(obs_idx)
        try:
            values = np.asarray(obs_values, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise PdediffError(f"observed values of {self.source!r}: {err}") from None
        single_ndim = len(self.shape) if idx.dtype == bool else 1
        if idx.ndim not in (single_ndim, single_ndim + 1):
            raise PdediffError(
                f"sensors of {self.source!r} must be (M,) flat indices or a boolean mask of "
                f"shape {self.shape}, or a batch of them; got {idx.dtype} of shape {idx.shape}"
            )
        single = idx.ndim == single_ndim
        if single:
            idx, values = idx[None], values[None]
        if values.ndim == 0 or values.shape[0] != idx.shape[0]:
            raise PdediffError(
                f"{idx.shape[0]} cases of sensors but observed values of shape {values.shape}"
            )
        n_points = int(np.prod(self.shape))
        masks = np.zeros((idx.shape[0], n_points))
        fields = np.zeros((idx.shape[0], n_points))
        for i in range(idx.shape[0]):
            flat, v = observations(idx[i], values[i], self.shape, self.source)
            masks[i, flat], fields[i, flat] = 1.0, v
        shape = (idx.shape[0], *self.shape)
        return (
            torch.from_numpy(masks.reshape(shape)),
            torch.from_numpy(fields.reshape(shape)),
            single,
        )

    # -- storage --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``config.json``, ``fieldspec.json`` and ``model.safetensors`` to the
        directory ``path`` (created if needed; files there are replaced)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "version": VERSION, **self.config}
        (path / "config.json").write_text(json.dumps(meta, indent=1) + "\n")
        (path / "fieldspec.json").write_text(self.spec.to_json() + "\n")
        write_tensors(path / "model.safetensors", _tensor_state(self.net))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FNOBaseline:
        """Read a directory written by :meth:`save` (no pickle).

        Raises
        ------
        CheckpointError
            A missing or corrupt file, another format, or weights that do not fit the
            network described by ``config.json``.
        """
        path = Path(path)
        meta = _read_json(path / "config.json")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"{path / 'config.json'} is not an FNO baseline config")
        if meta.get("version") != VERSION:
            raise CheckpointError(
                f"{path / 'config.json'} has version {meta.get('version')}; expected {VERSION}"
            )
        try:
            spec = FieldSpec.from_dict(_read_json(path / "fieldspec.json"))
        except (PdediffError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{path / 'fieldspec.json'}: {err}") from None
        config = {k: v for k, v in meta.items() if k not in ("format", "version")}
        try:
            net = build_fno(config["net"])
        except (KeyError, TypeError, PdediffError) as err:
            raise CheckpointError(f"{path / 'config.json'}: bad 'net' ({err})") from None
        weights, _ = read_tensors(path / "model.safetensors")
        try:
            net.load_state_dict(weights)
        except RuntimeError as err:
            raise CheckpointError(
                f"{path / 'model.safetensors'} does not fit the FNO of {path / 'config.json'}: "
                f"{str(err).splitlines()[0]}"
            ) from None
        return cls(net.eval(), spec, config)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: not a complete FNO baseline directory")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None


# ------------------------------------------------------------------------------ training


def _training_tensors(
    ds: xr.Dataset, source: str, target: str
) -> tuple[FieldSpec, torch.Tensor, torch.Tensor]:
    """FieldSpec of ``(source, target)`` on ``ds`` and the two fields ``(N, *grid)``:
    the source normalised, the target in physical units."""
    if source == target:
        raise PdediffError(f"source and target must differ, both are {source!r}")
    for name in (source, target):
        if name not in ds.data_vars:
            raise PdediffError(f"dataset has no field {name!r}; it has {list(ds.data_vars)}")
    spec = FieldSpec.from_dataset(ds, (source, target))
    if len(spec.dims) != 2:
        raise PdediffError(f"the FNO baseline needs 2-D fields, got dims {spec.dims}")
    x = spec.to_tensor(ds, normalise=False, dtype=torch.float64)
    if not torch.isfinite(x).all():
        raise PdediffError(f"fields {source!r} / {target!r} contain NaN or inf")
    src = ((x[:, 0] - spec.mean[0]) / spec.std[0]).float()
    return spec, src, x[:, 1].float()


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Sample indices of shuffled epochs, ``batch_size`` at a time (the last, shorter
    batch of an epoch is dropped unless the data are smaller than one batch)."""
    size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - size + 1, size):
            yield order[start : start + size]


def _seeds(seed: int) -> tuple[int, int]:
    """Independent seeds for the initial weights and for the data order and sensors."""
    a, b = np.random.SeedSequence(int(seed)).generate_state(2)
    return int(a), int(b)


def _check_training_args(steps: int, batch_size: int, lr: float, weight_decay: float) -> None:
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise PdediffError(f"{name} must be a positive integer, got {value!r}")
    if not (math.isfinite(lr) and lr > 0.0):
        raise PdediffError(f"lr must be positive, got {lr}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0.0):
        raise PdediffError(f"weight_decay must be >= 0, got {weight_decay}")


def _fit(
    model: FNOBaseline,
    src: torch.Tensor,
    tgt: torch.Tensor,
    m: int,
    opts: dict[str, Any],
    generator: torch.Generator,
) -> list[dict[str, float]]:
    """AdamW with a cosine learning-rate decay; returns the loss history."""
    steps, log_every = opts["steps"], max(1, opts["steps"] // 20)
    opt = torch.optim.AdamW(model.net.parameters(), lr=opts["lr"], weight_decay=opts["wd"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    batches = _batches(src.shape[0], opts["batch_size"], generator)
    history, running = [], []
    model.net.train()
    for step in tqdm(range(1, steps + 1), desc="FNO baseline", disable=not opts["progress"]):
        idx = next(batches)
        masks = random_masks(len(idx), src[0].numel(), m, generator).view_as(src[idx])
        inputs = masked_input(src[idx], masks)
        loss = relative_l2_loss(model.predict_encoded(inputs), tgt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running.append(loss.item())
        if step % log_every == 0 or step == steps:
            history.append({"step": step, "loss": float(np.mean(running))})
            running = []
    model.net.eval()
    return history


def train_fno_baseline(
    ds: xr.Dataset,
    source: str = "a",
    target: str = "u",
    sensors: int | float = 500,
    steps: int = 2000,
    batch_size: int = 32,
    seed: int = 0,
    width: int = 32,
    modes: int | Sequence[int] = 16,
    n_layers: int = 4,
    padding: float = 0.125,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    progress: bool = False,
) -> FNOBaseline:
    """Train an FNO to map ``source`` seen at random sensors to the full ``target`` field.

    Every training sample of every batch gets new sensor positions (``m`` distinct random
    grid nodes), so the net learns to read any mask of about that density; the loss is the
    relative L2 error of the target in physical units (see the module docstring).

    Parameters
    ----------
    ds
        Training data: a Dataset with ``source`` and ``target`` on one 2-D grid (sample dim
        first), e.g. :func:`pdediff.generate.generate`.  Forward: ``("a", "u")``; inverse:
        ``("u", "a")``; Navier--Stokes: ``("w0", "w")``.
    source, target
        Observed and predicted field names.
    sensors
        Sensors per training sample: a count (int) or a fraction of the grid nodes (float
        in ``(0, 1]``; ``1.0``: every node observed).
    steps, batch_size
        Optimiser steps and samples per step.
    seed
        Seeds the initial weights, the data order and the sensor draws: the same seed
        gives the same model (on the same machine and thread count).
    width, modes, n_layers
        FNO channels, Fourier modes per dim (neuraloperator's ``n_modes``: the number of
        frequencies kept, half of them negative, along each dim; clipped to the grid), and
        Fourier layers.
    padding
        Domain padding as a fraction of the grid (the boxes are not periodic; Li et al.
        pad their Darcy inputs); 0 for none.
    lr, weight_decay
        AdamW's; the learning rate decays to 0 on a cosine over ``steps``.
    progress
        Show a progress bar.

    Returns
    -------
    FNOBaseline
        In eval mode; ``config["train"]`` records the settings and the training seconds,
        ``history`` the loss.
    """
    _check_training_args(steps, batch_size, lr, weight_decay)
    spec, src, tgt = _training_tensors(ds, source, target)
    m = sensor_count(sensors, src[0].numel())
    net_config = _net_config(spec.shape, width, modes, n_layers, padding)
    init_seed, data_seed = _seeds(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        net = build_fno(net_config)
    model = FNOBaseline(net, spec, {"net": net_config, "sensors": m})
    opts = {"steps": int(steps), "batch_size": int(batch_size), "lr": float(lr)}
    opts.update(wd=float(weight_decay), progress=progress)
    t0 = time.perf_counter()
    history = _fit(model, src, tgt, m, opts, torch.Generator().manual_seed(data_seed))
    model.config["train"] = {
        "steps": int(steps),
        "batch_size": int(batch_size),
        "seed": int(seed),
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "n_train": int(src.shape[0]),
        "seconds": time.perf_counter() - t0,
    }
    model.config["history"] = history
    return model
