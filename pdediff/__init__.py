"""pdediff: forward and inverse PDE problems with uncertainty, by guided diffusion sampling
over gridded xarray data."""

__version__ = "0.1.0"
