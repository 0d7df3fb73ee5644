"""Training of denoisers: config, loop (single process or ``torchrun`` DDP), checkpoints.

>>> from pdediff.train import TrainConfig, train, load_checkpoint
>>> result = train("darcy.nc", "ckpt", TrainConfig(steps=500))        # doctest: +SKIP
>>> denoiser, spec, config = load_checkpoint("ckpt")                   # doctest: +SKIP

``denoiser`` works on normalised fields; ``spec.to_dataset(x)`` turns its samples back
into a Dataset in physical units.
"""

from pdediff.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    load_denoiser,
    read_checkpoint,
)
from pdediff.train.config import (
    CascadeConfig,
    ConfigError,
    ModelConfig,
    OptimizerConfig,
    TrainConfig,
    load_config,
)
from pdediff.train.loop import TrainResult, train

__all__ = [
    "CascadeConfig",
    "Checkpoint",
    "CheckpointError",
    "ConfigError",
    "ModelConfig",
    "OptimizerConfig",
    "TrainConfig",
    "TrainResult",
    "load_checkpoint",
    "load_config",
    "load_denoiser",
    "read_checkpoint",
    "train",
]
