"""PDE families: coefficient samplers, reference solvers and torch residuals.

One module per family (``darcy``, ``poisson``, ``helmholtz``, ``burgers``,
``navier_stokes``), each exposing a :class:`~pdediff.pde.base.PDEFamily` named ``FAMILY``.
The registry is the plain dict :data:`pdediff.pde.registry.FAMILIES`.
"""

from pdediff.pde.base import FieldInfo, Grid, PDEError, PDEFamily, node_grid, periodic_grid

__all__ = ["FieldInfo", "Grid", "PDEError", "PDEFamily", "node_grid", "periodic_grid"]
