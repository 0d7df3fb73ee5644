"""The EDM training loss (Karras et al. 2022, eq. 8 and Table 1, "Ours" column).

.. math::

    \\mathcal L = \\mathbb E_{\\sigma, x_0, n}\\Big[\\lambda(\\sigma)\\,
        \\big\\| D(x_0 + n, \\sigma) - x_0 \\big\\|_2^2\\Big],\\qquad
    \\ln\\sigma \\sim \\mathcal N(P_\\mathrm{mean}, P_\\mathrm{std}^2),\\quad
    n \\sim \\mathcal N(0, \\sigma^2 I),\\quad
    \\lambda(\\sigma) = \\frac{\\sigma^2 + \\sigma_d^2}{(\\sigma\\sigma_d)^2}.

With EDM preconditioning ``lambda(sigma) c_out(sigma)^2 = 1``: the loss is the plain mean
squared error of the backbone against a unit-variance target.  For a fixed ``sigma`` the
minimiser over ``D`` is the posterior mean ``E[x0 | x0 + n]``, the exact denoiser.
"""

from __future__ import annotations

import torch

from .types import Cond, Denoiser

__all__ = ["EDMLoss", "edm_loss_at", "edm_loss_weight"]


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """``lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2`` (EDM Table 1)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def _weighted_mean(
    err: torch.Tensor, mask: torch.Tensor | None, channel_weights: torch.Tensor | None
) -> torch.Tensor:
    """Per-sample weighted mean of ``err`` over channels and grid points, shape ``(N,)``.

    A weighted *mean* (not sum) keeps the loss scale independent of the grid size, of
    how many points a mask keeps, and of the overall scale of the channel weights.
    """
    weight = torch.ones_like(err)
    if channel_weights is not None:
        w = torch.as_tensor(channel_weights, dtype=err.dtype, device=err.device)
        weight = weight * w.reshape(1, -1, *([1] * (err.ndim - 2)))
    if mask is not None:
        weight = weight * mask.to(dtype=err.dtype, device=err.device)
    dims = tuple(range(1, err.ndim))
    # A sample whose mask keeps nothing contributes 0, not 0/0.
    total = weight.sum(dim=dims).clamp_min(torch.finfo(err.dtype).tiny)
    return (weight * err).sum(dim=dims) / total


def edm_loss_at(
    denoiser: Denoiser,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    cond: Cond | None = None,
    mask: torch.Tensor | None = None,
    channel_weights: torch.Tensor | None = None,
    sigma_data: float = 0.5,
) -> torch.Tensor:
    """The EDM loss at given noise levels and noise (the deterministic inner part).

    Parameters
    ----------
    denoiser
        ``D(x, sigma, cond=None) -> x0_hat``.
    x0
        Clean samples ``(N, C, *grid)``.
    sigma
        Noise levels ``(N,)``.
    noise
        Standard normal ``eps`` with the shape of ``x0``; the added noise is ``sigma eps``.
    cond
        Passed to the denoiser.
    mask
        ``(N or 1, 1 or C, *grid)``, 1 where the loss counts (e.g. inside the domain).
    channel_weights
        ``(C,)`` relative weights of the channels (e.g. ``a`` vs ``u``).
    sigma_data
        ``sigma_d`` of the weighting ``lambda(sigma)``.

    Returns
    -------
    torch.Tensor
        ``lambda(sigma) * weighted mean ||D(x0 + sigma eps, sigma) - x0||^2``, shape ``(N,)``.
    """
    sigma = torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device).reshape(-1)
    if sigma.numel() == 1:
        sigma = sigma.expand(x0.shape[0])
    sigma_b = sigma.reshape(-1, *([1] * (x0.ndim - 1)))
    denoised = denoiser(x0 + sigma_b * noise, sigma, cond)
    err = (denoised - x0) ** 2
    return edm_loss_weight(sigma, sigma_data) * _weighted_mean(err, mask, channel_weights)


def _drop_conditions(
    cond: Cond | None, n: int, p_uncond: float, generator: torch.Generator | None, device
) -> Cond | None:
    """Classifier-free-guidance training: set ``cond["drop"]`` with probability ``p_uncond``.

    An existing ``drop`` is kept (logical or); without a condition there is nothing to drop.
    """
    if cond is None or p_uncond <= 0:
        return cond
    drop = torch.rand(n, generator=generator, device=device) < p_uncond
    if "drop" in cond:
        drop = drop | cond["drop"].to(device=device, dtype=torch.bool)
    return {**cond, "drop": drop}


class EDMLoss:
    """EDM loss with log-normal noise levels (Karras et al. 2022, eq. 8, Table 1).

    Parameters
    ----------
    P_mean, P_std
        ``ln sigma ~ N(P_mean, P_std^2)`` (EDM: -1.2, 1.2).
    sigma_data
        ``sigma_d`` in the weighting ``lambda(sigma)``; match the preconditioner's.
    channel_weights
        Optional ``(C,)`` relative channel weights.
    p_uncond
        Probability per sample of dropping the condition (classifier-free guidance,
        Ho & Salimans 2022: 0.1-0.2).

    Examples
    --------
    >>> loss_fn = EDMLoss()
    >>> loss = loss_fn(net, x0, cond, generator=g).mean()  # doctest: +SKIP
    """

    def __init__(
        self,
        P_mean: float = -1.2,
        P_std: float = 1.2,
        sigma_data: float = 0.5,
        channel_weights: torch.Tensor | None = None,
        p_uncond: float = 0.0,
    ) -> None:
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}")
        if P_std <= 0:
            raise ValueError(f"P_std must be positive, got {P_std}")
        self.P_mean = float(P_mean)
        self.P_std = float(P_std)
        self.sigma_data = float(sigma_data)
        self.channel_weights = channel_weights
        self.p_uncond = float(p_uncond)

    def sample_sigma(
        self, n: int, generator: torch.Generator | None = None, device=None
    ) -> torch.Tensor:
        """``n`` noise levels with ``ln sigma ~ N(P_mean, P_std^2)``."""
        rnd = torch.randn(n, generator=generator, device=device)
        return (rnd * self.P_std + self.P_mean).exp()

    def __call__(
        self,
        denoiser: Denoiser,
        x0: torch.Tensor,
        cond: Cond | None = None,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Per-sample loss ``(N,)``; draws ``sigma``, the noise and the condition dropout
        from ``generator`` (in that order) so a fixed generator state reproduces it."""
        n = x0.shape[0]
        sigma = self.sample_sigma(n, generator, x0.device).to(x0.dtype)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        cond = _drop_conditions(cond, n, self.p_uncond, generator, x0.device)
        return edm_loss_at(
            denoiser, x0, sigma, noise, cond, mask, self.channel_weights, self.sigma_data
        )
