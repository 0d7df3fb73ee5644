"""Cascaded diffusion (Ho et al. 2021, arXiv:2106.15282): a base model on a coarse grid and
super-resolution stages, each conditioned on the upsampled fields of the stage below by
channel concatenation, trained with conditioning augmentation, and guided by the same
observations (and PDE residual) at every stage.

>>> from pdediff.cascade import downsample, cascade_solve
>>> write_fields(downsample(open_fields("darcy64.nc"), 32), "darcy32.nc")  # doctest: +SKIP

then ``pdediff train --data darcy32.nc --out base``, ``pdediff train --stage sr --from 32
--to 64 --data darcy64.nc --out sr64 --aug-noise-max 0.2`` and
``cascade_solve(["base", "sr64"], "obs.nc", task="inverse", aug_level=0.1)``.
"""

from pdediff.cascade.augment import (
    augment,
    coarse_coords,
    downsample,
    gaussian_blur,
    interpolation_matrix,
    resample,
    upsample,
)
from pdediff.cascade.solve import CascadeError, cascade_solve, check_chain, obs_rmse
from pdediff.cascade.train import sr_conditioning

__all__ = [
    "CascadeError",
    "augment",
    "cascade_solve",
    "check_chain",
    "coarse_coords",
    "downsample",
    "gaussian_blur",
    "interpolation_matrix",
    "obs_rmse",
    "resample",
    "sr_conditioning",
    "upsample",
]
