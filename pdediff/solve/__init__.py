"""Forward, inverse and joint problems from sparse observations, with an ensemble."""

from pdediff.solve.api import PRESETS, TASKS, posterior_dataset, select_task, solve
from pdediff.solve.posterior import DIFFUSIONPDE, Protocol, sample_posterior

__all__ = [
    "DIFFUSIONPDE",
    "PRESETS",
    "TASKS",
    "Protocol",
    "posterior_dataset",
    "sample_posterior",
    "select_task",
    "solve",
]
