"""The registry of PDE families: a plain dict ``name -> PDEFamily``."""

from __future__ import annotations

from pdediff.pde import burgers, darcy, helmholtz, navier_stokes, poisson
from pdediff.pde.base import PDEError, PDEFamily

FAMILIES: dict[str, PDEFamily] = {
    m.FAMILY.name: m.FAMILY for m in (darcy, poisson, helmholtz, burgers, navier_stokes)
}


def get_family(name: str) -> PDEFamily:
    """The family registered as ``name``; a clear error naming the known ones otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise PDEError(
            f"unknown PDE family {name!r}; known families: {', '.join(sorted(FAMILIES))}"
        ) from None
