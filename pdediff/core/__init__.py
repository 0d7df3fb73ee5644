"""The score-model and sampler core shared by every method in pdediff (torch only).

The one contract (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models", EDM) is the denoiser::

    D(x, sigma, cond=None) -> x0_hat       # same shape as x

with ``x`` of shape ``(N, C, *grid)``, ``sigma`` a tensor of shape ``(N,)`` (or a scalar
tensor, broadcast), and ``cond`` an optional :data:`Cond` dict.  The score is
``(D(x, sigma) - x) / sigma**2``.

Modules
-------
``types``      the ``Denoiser`` protocol and the ``Cond`` dict.
``precond``    EDM, VP and VE preconditioners wrapping a backbone into a denoiser.
``loss``       EDM loss (log-normal sigma, lambda(sigma) weighting, masks, condition dropout).
``schedules``  noise levels: Karras (rho), log-linear, VP; 1-D tensors ending in 0.
``samplers``   pure sampler functions with one signature.
``guidance``   observation / residual / custom guidance terms, weight schedules, injection.
``compose``    classifier-free guidance, product of experts, autoguidance.
``ema``        exponential moving average of weights.
"""
