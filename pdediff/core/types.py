"""Types of the core contract: denoisers, conditions, callbacks and step corrections."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

#: Conditioning of a denoiser, a plain dict with any of the keys
#:
#: ``"vector"``  float ``(N, D)``: continuous parameters (e.g. Helmholtz k, Burgers nu);
#: ``"label"``   long ``(N,)``: class labels (e.g. the PDE family);
#: ``"fields"``  float ``(N, Cf, *grid)``: fields concatenated to the input channels
#:               (e.g. the upsampled low-resolution field of a cascade stage);
#: ``"drop"``    bool ``(N,)``: True where the condition is dropped (classifier-free
#:               guidance): the backbone then uses its learned null condition.
Cond = dict[str, torch.Tensor]


class Denoiser(Protocol):
    """``D(x, sigma, cond=None) -> x0_hat`` (EDM): the estimate of the clean sample."""

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond | None = None
    ) -> torch.Tensor: ...


#: Called once per sampler step with ``{"i", "sigma", "sigma_next", "x", "denoised"}``;
#: it must not modify the tensors and does no I/O of its own (it may record them).
Callback = Callable[[dict], None]

#: The DiffusionPDE step correction: ``correction(x, sigma, denoised, i) -> x``, applied to
#: the sampler state after step ``i`` (``sigma`` is the noise level of the new ``x``).
Correction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def expand_sigma(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """``sigma`` as a tensor of shape ``(N, 1, ..., 1)`` broadcastable against ``x``."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))
