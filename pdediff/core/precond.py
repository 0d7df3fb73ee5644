"""Preconditioners: wrap a backbone network ``F`` into an EDM denoiser ``D``.

Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"
(EDM), eq. (7) and Table 1: the denoiser is

.. math::

    D(x, \\sigma) = c_\\mathrm{skip}(\\sigma)\\, x
        + c_\\mathrm{out}(\\sigma)\\, F\\big(c_\\mathrm{in}(\\sigma)\\, x,\\;
          c_\\mathrm{noise}(\\sigma)\\big),

so the backbone never sees ``sigma`` itself, only the conditioning value ``c_noise``, and
its input and training target both have about unit variance.  The three preconditioners
below are sibling classes with one interface: ``forward(x, sigma, cond=None) -> x0_hat``,
``coefficients(sigma)``, ``round_sigma(sigma)`` and the attributes ``sigma_min``,
``sigma_max`` (the range of noise levels the network was trained on).

The backbone contract is ``F(x_in, c_noise, cond=None) -> tensor`` of the shape of
``x_in`` with ``c_noise`` of shape ``(N,)``; ``cond`` (a :data:`~pdediff.core.types.Cond`
dict) is passed through unchanged.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import torch
from torch import nn

from .types import Cond

__all__ = ["EDMPrecond", "VEPrecond", "VPPrecond", "Preconditioner"]

Coefficients = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # float32 at least: half-precision c_skip/c_out lose the small-sigma end of the range.
    return torch.promote_types(x.dtype, torch.float32)


class Preconditioner(nn.Module, abc.ABC):
    """Shared ``forward`` of the preconditioners (EDM eq. 7); subclasses give Table 1.

    Parameters
    ----------
    backbone
        ``F(x_in, c_noise, cond=None) -> tensor`` with the shape of ``x_in``; usually an
        ``nn.Module`` (then registered as a submodule, so its parameters are ours).
    """

    sigma_min: float
    sigma_max: float

    def __init__(self, backbone: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.backbone = backbone

    @abc.abstractmethod
    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        """``(c_skip, c_out, c_in, c_noise)`` at ``sigma`` (same shape as ``sigma``)."""

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Noise levels the network supports; continuous-time models: the identity."""
        return torch.as_tensor(sigma)

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor | float, cond: Cond | None = None
    ) -> torch.Tensor:
        """``D(x, sigma, cond) = c_skip x + c_out F(c_in x, c_noise, cond)``.

        Parameters
        ----------
        x
            Noisy sample ``(N, C, *grid)``.
        sigma
            Noise level: a scalar or a tensor of shape ``(N,)`` (or ``(N, 1, ..., 1)``).
        cond
            Passed to the backbone unchanged.

        Returns
        -------
        torch.Tensor
            The estimate of the clean sample, shape of ``x``, dtype float32 or wider.
        """
        dtype = _compute_dtype(x)
        x = x.to(dtype)
        sigma = torch.as_tensor(sigma, dtype=dtype, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.repeat(x.shape[0])  # a real (N,) tensor for the backbone's embedding
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        shape = (-1,) + (1,) * (x.ndim - 1)
        f_x = self.backbone(c_in.reshape(shape) * x, c_noise, cond)
        return c_skip.reshape(shape) * x + c_out.reshape(shape) * f_x.to(dtype)


class EDMPrecond(Preconditioner):
    """EDM preconditioning (Karras et al. 2022, Table 1, "Ours" column; eq. 7).

    .. math::

        c_\\mathrm{skip} = \\frac{\\sigma_d^2}{\\sigma^2 + \\sigma_d^2},\\quad
        c_\\mathrm{out} = \\frac{\\sigma \\sigma_d}{\\sqrt{\\sigma^2 + \\sigma_d^2}},\\quad
        c_\\mathrm{in} = \\frac{1}{\\sqrt{\\sigma^2 + \\sigma_d^2}},\\quad
        c_\\mathrm{noise} = \\tfrac14 \\ln \\sigma.

    With these, the network input ``c_in (x0 + n)`` and the effective training target
    ``(x0 - c_skip (x0 + n)) / c_out`` both have unit variance when ``x0`` has standard
    deviation ``sigma_data``.

    Parameters
    ----------
    backbone
        ``F(x_in, c_noise, cond=None)``.
    sigma_data
        Expected standard deviation of the data (0.5 for data scaled to about [-1, 1]).
    sigma_min, sigma_max
        The noise range used for sampling (EDM defaults 0.002 and 80); the formulas hold
        for any ``sigma > 0``.
    """

    def __init__(
        self,
        backbone: Callable[..., torch.Tensor],
        sigma_data: float = 0.5,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
    ) -> None:
        super().__init__(backbone)
        self.sigma_data = float(sigma_data)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        sd2 = self.sigma_data**2
        norm = (sigma**2 + sd2).sqrt()
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / norm
        c_in = 1.0 / norm
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise


class VPPrecond(Preconditioner):
    """Variance-preserving preconditioning (Song et al. 2021 VP SDE; Karras et al. 2022,
    Table 1, "VP" column).

    The VP SDE has ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)`` for
    ``t in [epsilon_t, 1]``, and

    .. math::

        c_\\mathrm{skip} = 1,\\quad c_\\mathrm{out} = -\\sigma,\\quad
        c_\\mathrm{in} = \\frac{1}{\\sqrt{\\sigma^2 + 1}},\\quad
        c_\\mathrm{noise} = (M - 1)\\, t(\\sigma),

    i.e. the backbone predicts the unit noise ``eps`` of the scaled sample.

    Parameters
    ----------
    backbone
        ``F(x_in, c_noise, cond=None)``.
    beta_d, beta_min
        Linear ``beta(t) = beta_min + beta_d t`` of the VP SDE.
    M
        Number of discrete time steps the ``c_noise`` scale refers to (DDPM's 1000).
    epsilon_t
        Smallest time; sets ``sigma_min = sigma(epsilon_t)``; ``sigma_max = sigma(1)``.
    """

    def __init__(
        self,
        backbone: Callable[..., torch.Tensor],
        beta_d: float = 19.9,
        beta_min: float = 0.1,
        M: int = 1000,
        epsilon_t: float = 1e-5,
    ) -> None:
        super().__init__(backbone)
        self.beta_d = float(beta_d)
        self.beta_min = float(beta_min)
        self.M = int(M)
        self.epsilon_t = float(epsilon_t)
        self.sigma_min = float(self.sigma(torch.tensor(epsilon_t, dtype=torch.float64)))
        self.sigma_max = float(self.sigma(torch.tensor(1.0, dtype=torch.float64)))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)``."""
        return torch.expm1(0.5 * self.beta_d * t**2 + self.beta_min * t).sqrt()

    def sigma_inv(self, sigma: torch.Tensor) -> torch.Tensor:
        """``t(sigma)``: the positive root of ``beta_d t^2 / 2 + beta_min t = ln(1 + sigma^2)``."""
        return (
            (self.beta_min**2 + 2 * self.beta_d * torch.log1p(sigma**2)).sqrt() - self.beta_min
        ) / self.beta_d

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = 1.0 / (sigma**2 + 1).sqrt()
        c_noise = (self.M - 1) * self.sigma_inv(sigma)
        return c_skip, c_out, c_in, c_noise


class VEPrecond(Preconditioner):
    """Variance-exploding preconditioning (Song et al. 2021 VE SDE / NCSN++; Karras et al.
    2022, Table 1, "VE" column).

    .. math::

        c_\\mathrm{skip} = 1,\\quad c_\\mathrm{out} = \\sigma,\\quad
        c_\\mathrm{in} = 1,\\quad c_\\mathrm{noise} = \\ln(\\sigma / 2).

    Parameters
    ----------
    backbone
        ``F(x_in, c_noise, cond=None)``.
    sigma_min, sigma_max
        Range of the VE noise levels (0.02 and 100 in Song et al. 2021).
    """

    def __init__(
        self,
        backbone: Callable[..., torch.Tensor],
        sigma_min: float = 0.02,
        sigma_max: float = 100.0,
    ) -> None:
        super().__init__(backbone)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        one = torch.ones_like(sigma)
        return one, sigma, one, torch.log(0.5 * sigma)


#: The preconditioners by name (a checkpoint's ``config.json`` stores the name).
PRECONDS: dict[str, type[Preconditioner]] = {"edm": EDMPrecond, "vp": VPPrecond, "ve": VEPrecond}
