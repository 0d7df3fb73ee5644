"""Classical baselines that a learned solver is compared against on the same data.

:func:`interpolate_then_solve` (forward: interpolate the sensed coefficient, then solve) and
:func:`pde_constrained_fit` (inverse: regularised fit of the coefficient through the exact
discrete solve, adjoint gradient, L-BFGS-B), for Darcy, Poisson and Helmholtz.
"""

from pdediff.baselines.classical import (
    fit_objective,
    interpolate_then_solve,
    observations,
    pde_constrained_fit,
)

__all__ = ["fit_objective", "interpolate_then_solve", "observations", "pde_constrained_fit"]
