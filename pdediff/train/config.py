"""Training configuration: a tree of dataclasses, read from TOML or JSON.

A config file mirrors the tree; every key is optional and unknown keys are errors::

    batch_size = 16
    steps = 2000
    variables = ["a", "u"]        # default: every field of the dataset
    condition = ["k"]             # per-sample parameters the model is conditioned on
    label = "pde"                 # a per-sample variable of class names (e.g. the family)
    p_uncond = 0.1                # condition dropout for classifier-free guidance

    [model]
    backbone = "unet"             # a key of pdediff.nets.BACKBONES
    precond = "edm"               # edm, vp, ve
    sigma_data = 1.0              # shared by the preconditioner and the loss
    [model.backbone_kwargs]       # merged over the small CPU defaults of the backbone
    model_channels = 32

    [loss]                        # keyword arguments of pdediff.core.loss.EDMLoss
    P_mean = -1.2

    [optimizer]                   # AdamW, linear warm-up, gradient clipping
    lr = 5e-4

    [cascade]                     # a super-resolution stage of a cascade (pdediff.cascade)
    stage = "sr"                  # "base" (default: an ordinary model) or "sr"
    from_shape = [32, 32]         # the low-resolution grid it is conditioned on
    to_shape = [64, 64]           # its own grid (that of the data)
    aug_noise_max = 0.2           # conditioning augmentation: s ~ U[0, aug_noise_max]
    aug_blur = 0.5                # and Gaussian blur of b ~ U[0, aug_blur] grid steps

The backbone's input and output channels are not part of the config: they are the number
of variables of the data's :class:`~pdediff.io.FieldSpec`; its ``vector_dim`` is the
number of conditions (plus one, the augmentation level, for a super-resolution stage, whose
``cond_channels`` is the number of variables) and its ``num_labels`` the number of classes
of the label.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pdediff.errors import PdediffError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "CASCADE_STAGES",
    "CascadeConfig",
    "ConfigError",
    "LOSS_RESERVED",
    "ModelConfig",
    "OptimizerConfig",
    "PRECONDS",
    "SMALL_BACKBONE_KWARGS",
    "TrainConfig",
    "backbone_kwargs",
    "build_denoiser",
    "build_loss",
    "load_config",
]

#: CPU-sized settings of each backbone, under the user's ``model.backbone_kwargs``.
SMALL_BACKBONE_KWARGS: dict[str, dict[str, Any]] = {
    "unet": {"model_channels": 32, "channel_mult": [1, 2, 2], "num_blocks": 1, "attn_levels": []},
    "fno": {"width": 32, "modes": [12, 12], "n_layers": 4},
}

#: Backbone keyword arguments fixed by the data, not by the config.
DATA_KWARGS = ("in_channels", "out_channels")

#: Backbone keyword arguments fixed by ``condition``, ``label`` and ``cascade``.
CONDITION_KWARGS = ("vector_dim", "cond_channels", "num_labels")

#: The stages of a cascade: a base model (any ordinary model) and super-resolution stages.
CASCADE_STAGES = ("base", "sr")

#: Loss keyword arguments set elsewhere in the config.
LOSS_RESERVED = ("sigma_data",)

#: Condition dropout of a conditioned model when ``p_uncond`` is not given (Ho & Salimans
#: 2022 use 0.1-0.2).
DEFAULT_P_UNCOND = 0.1


class ConfigError(PdediffError):
    """A training config has an unknown key, a value of the wrong type or out of range."""


@dataclass
class ModelConfig:
    """The denoiser: a backbone wrapped by a preconditioner.

    Attributes
    ----------
    backbone
        Name in :data:`pdediff.nets.BACKBONES`.
    backbone_kwargs
        Keyword arguments of the backbone, merged over :data:`SMALL_BACKBONE_KWARGS`;
        ``in_channels`` / ``out_channels`` come from the data.
    precond
        ``"edm"``, ``"vp"`` or ``"ve"`` (Karras et al. 2022, Table 1).
    precond_kwargs
        Keyword arguments of the preconditioner besides ``sigma_data``.
    sigma_data
        Standard deviation of the data for the EDM preconditioner and the loss weight.
        The :class:`~pdediff.io.FieldSpec` normalises every channel to unit standard
        deviation, hence 1 (EDM's 0.5 is for images scaled to [-1, 1]).
    """

    backbone: str = "unet"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    precond: str = "edm"
    precond_kwargs: dict[str, Any] = field(default_factory=dict)
    sigma_data: float = 1.0


@dataclass
class OptimizerConfig:
    """AdamW (Loshchilov & Hutter 2019) with a linear warm-up and gradient clipping.

    Attributes
    ----------
    lr
        Learning rate after the warm-up.
    betas, eps, weight_decay
        AdamW's hyperparameters.
    warmup_steps
        The learning rate grows linearly from ``lr / warmup_steps`` to ``lr`` over these.
    grad_clip
        Maximum global gradient norm; 0 disables clipping (the norm is still logged).
    """

    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0


@dataclass
class CascadeConfig:
    """The model's place in a cascade (Ho et al. 2021, arXiv:2106.15282).

    A super-resolution (``"sr"``) stage learns the fields on the data's grid ``to_shape``
    given the same fields on the coarser grid ``from_shape``, upsampled back to
    ``to_shape`` and concatenated as input channels (``cond["fields"]``).  The training loop
    makes that conditioning from every batch (:func:`pdediff.cascade.train.sr_conditioning`:
    node subsampling, linear interpolation) and corrupts it (conditioning augmentation)
    with noise of level ``s ~ U[0, aug_noise_max]`` per sample, passed to the network as
    the last entry of ``cond["vector"]``, and a Gaussian blur of ``b ~ U[0, aug_blur]`` grid
    steps.  Sampling (:func:`pdediff.cascade.cascade_solve`) reads these settings.

    Attributes
    ----------
    stage
        ``"base"`` (every ordinary model) or ``"sr"``.
    from_shape, to_shape
        Grid points per dim of the conditioning and of the data (``"sr"`` only).
    aug_noise_max
        Largest noise level ``s`` of the augmentation, in units of the normalised fields.
    aug_blur
        Largest blur standard deviation, in grid steps of ``to_shape``.
    """

    stage: str = "base"
    from_shape: list[int] | None = None
    to_shape: list[int] | None = None
    aug_noise_max: float = 0.0
    aug_blur: float = 0.0

    @property
    def is_sr(self) -> bool:
        return self.stage == "sr"

    def validate(self, source: str) -> None:
        """Raise :class:`ConfigError` for an unknown stage or inconsistent grids."""
        if self.stage not in CASCADE_STAGES:
            raise ConfigError(
                f"{source}: cascade.stage must be one of {', '.join(CASCADE_STAGES)}, "
                f"got {self.stage!r}"
            )
        for key in ("aug_noise_max", "aug_blur"):
            value = getattr(self, key)
            if not (value >= 0 and value < float("inf")):
                raise ConfigError(f"{source}: cascade.{key} must be finite and >= 0")
        grids = (self.from_shape, self.to_shape)
        if not self.is_sr:
            if any(g is not None for g in grids) or self.aug_noise_max or self.aug_blur:
                raise ConfigError(
                    f"{source}: cascade.from_shape, to_shape and the augmentation belong to a "
                    'super-resolution stage; set cascade.stage = "sr" (--stage sr)'
                )
            return
        if any(g is None for g in grids):
            raise ConfigError(
                f"{source}: a super-resolution stage needs cascade.from_shape and to_shape "
                "(--from and --to)"
            )
        low, high = self.from_shape, self.to_shape
        if len(low) != len(high) or any(n < 2 for n in low):
            raise ConfigError(
                f"{source}: cascade.from_shape {low} and to_shape {high} must give >= 2 "
                "points for every grid dim"
            )
        if any(a > b for a, b in zip(low, high, strict=True)) or low == high:
            raise ConfigError(
                f"{source}: cascade.from_shape {low} must be coarser than to_shape {high}"
            )


@dataclass
class TrainConfig:
    """Everything that determines a training run (with the data and the seed, exactly).

    Attributes
    ----------
    model, loss, optimizer
        The denoiser, the :class:`~pdediff.core.loss.EDMLoss` keyword arguments, AdamW.
    batch_size
        Samples per step, over all processes together.
    steps
        Total optimisation steps (a resumed run continues up to this number).
    ema_decay
        Decay per step of the exponential moving average of the weights.
    seed
        Seeds the initial weights, the batches and the noise of every step.
    checkpoint_every, log_every
        Steps between checkpoints and between log lines.
    variables
        Fields of the dataset to learn jointly; ``None``: all of them.
    deterministic
        Ask torch for deterministic kernels (needed for exact resume on a GPU; CPU
        kernels are deterministic already).
    condition
        Per-sample scalar variables of the dataset (e.g. ``["k"]`` from ``pdediff generate
        --param-range k=1:4``) fed to the backbone as ``cond["vector"]``, each mapped to
        [-1, 1] by its training range (:mod:`pdediff.io.conditions`, stored in the
        checkpoint's ``fieldspec.json``).  Empty: an unconditioned model.
    label
        A per-sample variable of class names (e.g. ``pde`` of
        :func:`pdediff.io.conditions.label_datasets`, one model across PDE families) fed
        to the backbone as ``cond["label"]``, the index of the class in the sorted class
        names (stored in ``fieldspec.json``).  ``None``: no label.
    p_uncond
        Probability per sample of dropping the condition during training, so the same
        network learns the unconditional model for classifier-free guidance (Ho & Salimans
        2022).  ``None``: :data:`DEFAULT_P_UNCOND` for a conditioned model (:meth:`resolved`
        fills it in, so the checkpoint records the value used), 0 otherwise (and for a
        super-resolution stage, where a drop would also drop the low-resolution field).
    cascade
        The model's stage in a cascade (:class:`CascadeConfig`); default: a base model.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: dict[str, Any] = field(default_factory=dict)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    batch_size: int = 16
    steps: int = 2000
    ema_decay: float = 0.995
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 20
    variables: list[str] | None = None
    deterministic: bool = False
    condition: list[str] = field(default_factory=list)
    label: str | None = None
    p_uncond: float | None = None
    cascade: CascadeConfig = field(default_factory=CascadeConfig)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a nested dict; ``source`` names the origin in error messages."""
        config = _build(cls, data, source, "")
        config.validate(source)
        return config

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with top-level fields changed (``None`` values are ignored)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        new = TrainConfig.from_dict({**self.to_dict(), **changes}, "command line")
        return new

    @property
    def conditioned(self) -> bool:
        """Whether the model has a condition (scalars or a label) to drop for CFG."""
        return bool(self.condition) or self.label is not None

    def resolved(self) -> TrainConfig:
        """A conditioned config with ``p_uncond`` filled in (:data:`DEFAULT_P_UNCOND` where
        it is ``None``); any other config unchanged."""
        if self.p_uncond is not None or not self.conditioned:
            return self
        p_uncond = 0.0 if self.cascade.is_sr else DEFAULT_P_UNCOND
        return dataclasses.replace(self, p_uncond=p_uncond)

    def validate(self, source: str = "config") -> None:
        """Raise :class:`ConfigError` for a value out of range."""
        o = self.optimizer
        checks = [
            ("batch_size", self.batch_size >= 1, "a positive integer"),
            ("steps", self.steps >= 0, "a non-negative integer"),
            ("ema_decay", 0.0 <= self.ema_decay < 1.0, "in [0, 1)"),
            ("seed", self.seed >= 0, "a non-negative integer"),
            ("checkpoint_every", self.checkpoint_every >= 1, "a positive integer"),
            ("log_every", self.log_every >= 1, "a positive integer"),
            ("model.sigma_data", self.model.sigma_data > 0, "positive"),
            ("optimizer.lr", o.lr > 0, "positive"),
            ("optimizer.betas", all(0.0 <= b < 1.0 for b in o.betas), "two numbers in [0, 1)"),
            ("optimizer.eps", o.eps > 0, "positive"),
            ("optimizer.weight_decay", o.weight_decay >= 0, "non-negative"),
            ("optimizer.warmup_steps", o.warmup_steps >= 0, "a non-negative integer"),
            ("optimizer.grad_clip", o.grad_clip >= 0, "non-negative (0: no clipping)"),
        ]
        for key, ok, expected in checks:
            if not ok:
                raise ConfigError(f"{source}: {key} must be {expected}")
        if self.variables is not None and not self.variables:
            raise ConfigError(f"{source}: variables must name at least one field")
        for key in DATA_KWARGS:
            if key in self.model.backbone_kwargs:
                raise ConfigError(
                    f"{source}: model.backbone_kwargs.{key} is set by the data "
                    f"(the number of variables); remove it"
                )
        for key in LOSS_RESERVED:
            if key in self.loss or key in self.model.precond_kwargs:
                raise ConfigError(f"{source}: set {key} once, as model.{key}")
        self._validate_condition(source)
        self.cascade.validate(source)

    def _validate_condition(self, source: str) -> None:
        if len(set(self.condition)) != len(self.condition):
            raise ConfigError(f"{source}: condition names a variable twice: {self.condition}")
        if self.p_uncond is not None and not 0.0 <= self.p_uncond <= 1.0:
            raise ConfigError(f"{source}: p_uncond must be in [0, 1], got {self.p_uncond}")
        if self.p_uncond and not self.conditioned:
            raise ConfigError(
                f"{source}: p_uncond = {self.p_uncond} drops a condition, but condition is "
                "empty; name the variables to condition on (--condition k) or remove p_uncond"
            )
        if self.label is not None and (not self.label.strip() or self.label in self.condition):
            raise ConfigError(
                f"{source}: label {self.label!r} must name a variable that is not a condition"
            )
        if "p_uncond" in self.loss:
            raise ConfigError(f"{source}: set p_uncond once, at the top level (not in [loss])")
        for key in CONDITION_KWARGS:
            if key in self.model.backbone_kwargs:
                raise ConfigError(
                    f"{source}: model.backbone_kwargs.{key} is set by condition and cascade "
                    f"(the number of conditions, of a super-resolution stage's fields); remove it"
                )


# -- reading ------------------------------------------------------------------------------
def load_config(path: str | Path) -> TrainConfig:
    """Read a :class:`TrainConfig` from a ``.toml`` or ``.json`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(path.read_text())
        elif suffix == ".json":
            data = json.loads(path.read_text())
        else:
            raise ConfigError(f"config file {path}: use a .toml or .json file")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be parsed: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a table/object at the top level")
    return TrainConfig.from_dict(data, f"config file {path}")


def _build(cls: type, data: Any, source: str, prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, checking keys and value types."""
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where} must be a table/object, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {prefix}{unknown[0]!r}; known keys"
            f"{' of ' + where if prefix else ''}: {', '.join(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, source, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, source, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, source: str, key: str) -> Any:
    """``value`` checked against the type ``hint`` (ints are accepted as floats)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _coerce(value, hint, source, key)

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{source}: {key} must be {expected}, got {value!r}")

    if hint is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise bad(f"a list of {len(args)} values")
        return tuple(_coerce(v, a, source, key) for v, a in zip(value, args, strict=True))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise bad("a list")
        return [_coerce(v, args[0], source, key) for v in value]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise bad("a table/object")
        return dict(value)
    raise TypeError(f"no coercion for {hint}")  # pragma: no cover - a bug in this module


# -- building -----------------------------------------------------------------------------
def _preconds() -> dict[str, type]:
    from pdediff.core.precond import PRECONDS as classes

    return classes


#: Names of the preconditioners (the classes are imported when a model is built).
PRECONDS = ("edm", "vp", "ve")


def _check_kwargs(func: Any, kwargs: dict[str, Any], key: str, skip: tuple[str, ...]) -> None:
    """Raise :class:`ConfigError` naming a keyword that ``func`` does not take."""
    params = inspect.signature(func).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    known = [n for n, p in params.items() if n not in skip and p.kind is not p.VAR_POSITIONAL]
    for name in kwargs:
        if name not in known:
            raise ConfigError(
                f"config: unknown key {key}.{name!r} for {getattr(func, '__name__', func)}; "
                f"known: {', '.join(known)}"
            )


def backbone_kwargs(
    model: ModelConfig,
    channels: int,
    conditions: int = 0,
    cond_channels: int = 0,
    num_labels: int = 0,
) -> dict[str, Any]:
    """The backbone's keyword arguments: CPU defaults, the config's, the channels and, for a
    conditioned model, ``vector_dim = conditions`` (``cond_channels``, the channels of
    ``cond["fields"]``, for a super-resolution stage; ``num_labels``, the label's classes)."""
    from pdediff.nets import BACKBONES

    if model.backbone not in BACKBONES:
        raise ConfigError(
            f"config: unknown model.backbone {model.backbone!r}; known: {', '.join(BACKBONES)}"
        )
    kwargs = {**SMALL_BACKBONE_KWARGS.get(model.backbone, {}), **model.backbone_kwargs}
    _check_kwargs(BACKBONES[model.backbone], kwargs, "model.backbone_kwargs", DATA_KWARGS)
    if conditions:
        kwargs["vector_dim"] = conditions
    if cond_channels:
        kwargs["cond_channels"] = cond_channels
    if num_labels:
        kwargs["num_labels"] = num_labels
    return {"in_channels": channels, "out_channels": channels, **kwargs}


def precond_kwargs(model: ModelConfig) -> dict[str, Any]:
    """The preconditioner's keyword arguments, ``sigma_data`` included where it takes one."""
    preconds = _preconds()
    if model.precond not in preconds:
        raise ConfigError(
            f"config: unknown model.precond {model.precond!r}; known: {', '.join(preconds)}"
        )
    cls = preconds[model.precond]
    _check_kwargs(cls, model.precond_kwargs, "model.precond_kwargs", ("self", "backbone"))
    kwargs = dict(model.precond_kwargs)
    if "sigma_data" in inspect.signature(cls).parameters:
        kwargs["sigma_data"] = model.sigma_data
    return kwargs


def build_denoiser(
    backbone: str, backbone_config: dict[str, Any], precond: str, precond_config: dict[str, Any]
):
    """``precond(build_backbone(backbone, **backbone_config), **precond_config)``."""
    from pdediff.nets import build_backbone

    net = build_backbone(backbone, **backbone_config)
    return _preconds()[precond](net, **precond_config)


def build_loss(config: TrainConfig):
    """The :class:`~pdediff.core.loss.EDMLoss` of ``config`` (``sigma_data`` of the model)."""
    from pdediff.core.loss import EDMLoss

    _check_kwargs(EDMLoss, config.loss, "loss", ("self", "p_uncond", *LOSS_RESERVED))
    p_uncond = config.resolved().p_uncond or 0.0
    try:
        return EDMLoss(sigma_data=config.model.sigma_data, p_uncond=p_uncond, **config.loss)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config: bad [loss] value: {e}") from None
