"""Classical baselines that a learned solver is compared against on the same data.

:func:`interpolate_then_solve` (forward: interpolate the sensed coefficient, then solve) and
:func:`pde_constrained_fit` (inverse: regularised fit of the coefficient through the exact
discrete solve, adjoint gradient, L-BFGS-B), for Darcy, Poisson and Helmholtz; and the
learned baseline :func:`train_fno_baseline` (an FNO from the sparse, masked field to the other).
:func:`darcy_exact_posterior` is a reference rather than a baseline: the exact posterior of
Darcy's coefficient under the prior its data were drawn from (the Bayes floor of the forward
error).
"""

from pdediff.baselines.classical import (
    fit_objective,
    interpolate_then_solve,
    observations,
    pde_constrained_fit,
)
from pdediff.baselines.exact_prior import darcy_exact_posterior
from pdediff.baselines.fno import FNOBaseline, train_fno_baseline

__all__ = [
    "FNOBaseline",
    "darcy_exact_posterior",
    "fit_objective",
    "interpolate_then_solve",
    "observations",
    "pde_constrained_fit",
    "train_fno_baseline",
]
