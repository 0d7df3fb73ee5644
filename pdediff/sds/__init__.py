"""Score distillation (SDS): fit the parameters of a differentiable renderer of PDE fields
to a trained diffusion prior, with optional observation and residual terms.

:func:`sds_optimize` is the optimiser (torch only), :mod:`pdediff.sds.renderers` the
renderers (neural field, soft ellipses, physics through the reference solver) and
:func:`sds_solve` the checkpoint-and-observations-to-Dataset entry point of ``pdediff sds``.
"""

from pdediff.sds.api import (
    RENDERERS,
    build_renderer,
    observation_terms,
    sds_dataset,
    sds_fit,
    sds_solve,
)
from pdediff.sds.optimize import (
    SIGMA_SCHEDULES,
    WEIGHTINGS,
    SDSResult,
    sds_optimize,
    sds_surrogate,
)
from pdediff.sds.renderers import (
    ChannelStack,
    EllipseRenderer,
    NeuralField,
    PhysicsRenderer,
    PixelRenderer,
    spec_params,
)

__all__ = [
    "RENDERERS",
    "SIGMA_SCHEDULES",
    "WEIGHTINGS",
    "ChannelStack",
    "EllipseRenderer",
    "NeuralField",
    "PhysicsRenderer",
    "PixelRenderer",
    "SDSResult",
    "build_renderer",
    "observation_terms",
    "sds_dataset",
    "sds_optimize",
    "sds_fit",
    "sds_solve",
    "sds_surrogate",
    "spec_params",
]
