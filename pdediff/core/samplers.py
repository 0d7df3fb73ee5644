"""Samplers: pure functions with one signature, in the manner of k-diffusion and NVlabs/edm.

Every sampler is ::

    sample_X(denoiser, x, sigmas, *, cond=None, generator=None, callback=None,
             correction=None, **options) -> x

- ``denoiser``: ``D(x, sigma, cond=None) -> x0_hat`` (EDM); it gets ``sigma`` of shape
  ``(N,)``.  Guidance and classifier-free guidance wrap the denoiser; the sampler is
  unchanged.
- ``x``: the initial state, already at noise level ``sigmas[0]`` (``sigmas[0] * randn``),
  shape ``(N, C, *grid)`` (any shape with the batch first).
- ``sigmas``: decreasing 1-D tensor of noise levels (see :mod:`pdediff.core.schedules`);
  it usually ends in 0, but need not (then the sample keeps noise ``sigmas[-1]``).
- ``generator``: the only source of randomness (:func:`noise_like`), so a fixed
  generator state reproduces a run.  It must live on ``x``'s device.
- ``correction(x, sigma_next, denoised, i) -> x``: the DiffusionPDE step correction,
  applied after each step; then ``callback({"i", "sigma", "sigma_next", "x",
  "denoised"})``.  ``denoised`` is the denoiser output the step was built on (at the
  step's start, ``sigma`` or EDM's ``sigma_hat``), as in k-diffusion.

The samplers hold no state and do no I/O.  They do **not** apply ``torch.no_grad()``:
guidance may differentiate through the denoiser, so the caller decides; wrap a call in
``torch.no_grad()`` (or ``torch.inference_mode()``) for plain sampling to save memory.

All work in EDM's ``sigma`` parameterisation ``x_sigma = x_0 + sigma * eps``
(``s(t) = 1``, ``sigma(t) = t``), where the probability-flow ODE is
``dx/dsigma = (x - D(x, sigma)) / sigma`` (Karras et al. 2022, eq. 1 and 4) and the score
is ``(D(x, sigma) - x) / sigma^2``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .types import Callback, Cond, Correction, Denoiser

__all__ = [
    "SAMPLERS",
    "noise_like",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_euler_maruyama",
    "sample_heun",
    "sample_pc",
]


def noise_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise with the shape, dtype and device of ``x``, from ``generator``
    (the global generator when ``None``)."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def _prepare_sigmas(sigmas: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # float32 at least: the small-sigma end of a schedule needs the resolution.
    sigmas = torch.as_tensor(sigmas)
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D tensor of length >= 2, got {tuple(sigmas.shape)}")
    return sigmas.to(dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)


def _denoise(
    denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor, cond: Cond | None
) -> torch.Tensor:
    """``D(x, sigma)`` with ``sigma`` broadcast to one value per sample, shape ``(N,)``."""
    return denoiser(x, sigma * x.new_ones(x.shape[0], dtype=sigma.dtype), cond)


def _to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """Probability-flow ODE derivative ``dx/dsigma = (x - D) / sigma`` (EDM eq. 4)."""
    return (x - denoised) / sigma


def _end_step(
    x: torch.Tensor,
    i: int,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    denoised: torch.Tensor,
    correction: Correction | None,
    callback: Callback | None,
) -> torch.Tensor:
    """The two injection points after step ``i``: correction first, then the callback (so
    the callback sees the state the next step starts from)."""
    if correction is not None:
        x = correction(x, sigma_next, denoised, i)
    if callback is not None:
        callback({"i": i, "sigma": sigma, "sigma_next": sigma_next, "x": x, "denoised": denoised})
    return x


def sample_euler(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    correction: Correction | None = None,
) -> torch.Tensor:
    """Euler's method on the probability-flow ODE (deterministic; order 1).

    .. math::

        x_{i+1} = x_i + (\\sigma_{i+1} - \\sigma_i)\\,
            \\frac{x_i - D(x_i, \\sigma_i)}{\\sigma_i}

    (Karras et al. 2022, eq. 4 with ``sigma(t) = t``; Song et al. 2021, probability-flow
    ODE).  The step to ``sigma = 0`` returns ``D(x, sigma_{n-1})``.  Global error
    ``O(h)`` in the step size.  ``generator`` is unused (kept for the common signature).
    """
    del generator
    sigmas = _prepare_sigmas(sigmas, x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(denoiser, x, sigma, cond)
        x = x + (sigma_next - sigma) * _to_d(x, sigma, denoised)
        x = _end_step(x, i, sigma, sigma_next, denoised, correction, callback)
    return x


def sample_heun(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    correction: Correction | None = None,
    S_churn: float = 0.0,
    S_tmin: float = 0.0,
    S_tmax: float = float("inf"),
    S_noise: float = 1.0,
) -> torch.Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2): Heun's method (order 2)
    on the probability-flow ODE, with optional "churn" noise.

    For each step ``i`` (with ``n = len(sigmas) - 1``):

    .. math::

        \\gamma_i = \\begin{cases}\\min(S_\\mathrm{churn}/n, \\sqrt2 - 1) &
            S_\\mathrm{tmin} \\le \\sigma_i \\le S_\\mathrm{tmax}\\\\ 0 & \\text{otherwise}
            \\end{cases},\\quad
        \\hat\\sigma = (1 + \\gamma_i)\\sigma_i,\\quad
        \\hat x = x_i + \\sqrt{\\hat\\sigma^2 - \\sigma_i^2}\\, S_\\mathrm{noise}\\,\\epsilon,

        d = (\\hat x - D(\\hat x, \\hat\\sigma))/\\hat\\sigma,\\quad
        x_{i+1} = \\hat x + (\\sigma_{i+1} - \\hat\\sigma)\\, d,

    and, unless ``sigma_{i+1} = 0``, the trapezoidal correction
    ``x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) (d + d') / 2`` with
    ``d' = (x_{i+1} - D(x_{i+1}, sigma_{i+1})) / sigma_{i+1}``.  The last step to 0 is a
    plain Euler step (the derivative at ``sigma = 0`` is undefined).  With
    ``S_churn = 0`` (default) it is deterministic, with global error ``O(h^2)``; 2 denoiser
    calls per step (1 for the last).  DiffusionPDE uses this sampler with 2,000 steps.

    Parameters
    ----------
    S_churn, S_tmin, S_tmax, S_noise
        Amount of noise added per step, the ``sigma`` range where it is added, and the
        noise inflation (EDM Table 5 tunes them per data set).
    """
    sigmas = _prepare_sigmas(sigmas, x)
    n = len(sigmas) - 1
    gamma_max = min(S_churn / n, math.sqrt(2) - 1)
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = gamma_max if S_churn > 0 and S_tmin <= float(sigma) <= S_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            x = x + (sigma_hat**2 - sigma**2).sqrt() * S_noise * noise_like(x, generator)
        denoised = _denoise(denoiser, x, sigma_hat, cond)
        d = _to_d(x, sigma_hat, denoised)
        x_next = x + (sigma_next - sigma_hat) * d
        if sigma_next > 0:
            d_next = _to_d(x_next, sigma_next, _denoise(denoiser, x_next, sigma_next, cond))
            x_next = x + (sigma_next - sigma_hat) * (d + d_next) / 2
        x = _end_step(x_next, i, sigma, sigma_next, denoised, correction, callback)
    return x


def _ancestral_step(
    sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigma_down, sigma_up)`` with ``sigma_down^2 + sigma_up^2 = sigma_next^2``.

    With ``eta = 1``, ``sigma_up^2 = sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2`` is
    the variance of the Gaussian posterior ``q(x_next | x, x0)`` of the VE process
    (DDPM's ancestral step); ``eta = 0`` is the deterministic ODE step.
    """
    var_up = sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2
    sigma_up = torch.minimum(sigma_next, eta * var_up.clamp_min(0).sqrt())
    sigma_down = (sigma_next**2 - sigma_up**2).clamp_min(0).sqrt()
    return sigma_down, sigma_up


def sample_euler_maruyama(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    correction: Correction | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Ancestral Euler sampler of the reverse SDE (k-diffusion's ``sample_euler_ancestral``;
    Ho et al. 2020 ancestral sampling in EDM's ``sigma`` parameterisation).

    Each step splits ``sigma_next^2 = sigma_down^2 + sigma_up^2``, takes a deterministic
    Euler step of the probability-flow ODE down to ``sigma_down`` and adds fresh noise of
    standard deviation ``sigma_up``:

    .. math::

        \\sigma_\\mathrm{up} = \\min\\Big(\\sigma_{i+1},\\;
            \\eta\\,\\frac{\\sigma_{i+1}}{\\sigma_i}\\sqrt{\\sigma_i^2 - \\sigma_{i+1}^2}\\Big),
        \\quad
        x_{i+1} = x_i + (\\sigma_\\mathrm{down} - \\sigma_i)
            \\frac{x_i - D(x_i, \\sigma_i)}{\\sigma_i}
            + s_\\mathrm{noise}\\,\\sigma_\\mathrm{up}\\,\\epsilon_i.

    With ``eta = 1`` the step is exactly the Gaussian posterior ``q(x_{i+1} | x_i,
    x_0 = D(x_i, sigma_i))``, i.e. ``x_{i+1} = x_0 + sigma_{i+1}^2 / sigma_i^2 (x_i - x_0)
    + sigma_up eps``; as the steps shrink it is an Euler–Maruyama discretisation of the
    reverse-time VE SDE ``dx = -2 sigma score dsigma + sqrt(2 sigma) dW`` (Song et al.
    2021; Karras et al. 2022, eq. 6), weak order 1.  ``eta = 0`` reduces to
    :func:`sample_euler`; values in between interpolate.  The last step to 0 adds no
    noise.  One denoiser call per step.
    """
    sigmas = _prepare_sigmas(sigmas, x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(denoiser, x, sigma, cond)
        sigma_down, sigma_up = _ancestral_step(sigma, sigma_next, eta)
        x = x + (sigma_down - sigma) * _to_d(x, sigma, denoised)
        if sigma_next > 0:
            x = x + noise_like(x, generator) * s_noise * sigma_up
        x = _end_step(x, i, sigma, sigma_next, denoised, correction, callback)
    return x


def _langevin_step(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigma: torch.Tensor,
    cond: Cond | None,
    snr: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One Langevin corrector step at fixed ``sigma`` (Song et al. 2021, Algorithm 4/5).

    Step size ``eps = 2 (snr ||z|| / ||score||)^2`` with the norms averaged over the batch,
    as in the authors' code (``score_sde``); with a batch of 1 this is the per-sample rule.
    Averaging keeps a sample whose score is nearly 0 (low dimensions) from taking a huge
    step.
    """
    score = (_denoise(denoiser, x, sigma, cond) - x) / sigma**2
    z = noise_like(x, generator)
    score_norm = score.flatten(1).norm(dim=1).mean()
    z_norm = z.flatten(1).norm(dim=1).mean()
    step = 2 * (snr * z_norm / score_norm.clamp_min(torch.finfo(x.dtype).tiny)) ** 2
    return x + step * score + (2 * step).sqrt() * z


def sample_pc(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    correction: Correction | None = None,
    n_corrector: int = 1,
    snr: float = 0.16,
) -> torch.Tensor:
    """Predictor–corrector sampler (Song et al. 2021, "Score-Based Generative Modeling
    through Stochastic Differential Equations", Algorithm 2 for the VE SDE).

    Predictor: the reverse-diffusion step (an Euler–Maruyama step of the reverse VE SDE
    with the discrete ``g_i^2 = sigma_i^2 - sigma_{i+1}^2``),

    .. math::

        x \\leftarrow x + (\\sigma_i^2 - \\sigma_{i+1}^2)\\, s(x, \\sigma_i)
            + \\sqrt{\\sigma_i^2 - \\sigma_{i+1}^2}\\, z,\\qquad
        s(x, \\sigma) = \\frac{D(x, \\sigma) - x}{\\sigma^2};

    corrector: ``n_corrector`` Langevin MCMC steps at ``sigma_{i+1}``,
    ``x <- x + eps s(x, sigma_{i+1}) + sqrt(2 eps) z`` with
    ``eps = 2 (snr ||z|| / ||s||)^2``.  The predictor is weak order 1; the corrector steps
    reduce the error of the marginal at each level rather than raising the order.  The last
    step to ``sigma = 0`` returns the predictor's mean ``D(x, sigma_{n-1})`` without noise
    or correctors (Song et al.'s "denoise" output).  ``1 + n_corrector`` denoiser calls
    per step.

    Parameters
    ----------
    n_corrector
        Langevin steps per noise level (Song et al. use 1).
    snr
        Signal-to-noise ratio of the Langevin steps (0.16 for VE on CIFAR-10 in the paper).
    """
    sigmas = _prepare_sigmas(sigmas, x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(denoiser, x, sigma, cond)
        g2 = sigma**2 - sigma_next**2
        x = x + g2 * (denoised - x) / sigma**2
        if sigma_next > 0:
            x = x + g2.sqrt() * noise_like(x, generator)
            for _ in range(n_corrector):
                x = _langevin_step(denoiser, x, sigma_next, cond, snr, generator)
        x = _end_step(x, i, sigma, sigma_next, denoised, correction, callback)
    return x


def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    correction: Correction | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
    Diffusion Probabilistic Models", Algorithm 2), in the ``sigma`` form of k-diffusion.

    With ``t = -log sigma`` and ``h_i = t_{i+1} - t_i``, the exact solution of the
    probability-flow ODE is ``x_{i+1} = (sigma_{i+1}/sigma_i) x_i + sigma_{i+1}
    int e^t D dt``; the multistep method approximates ``D`` on the step by a linear
    extrapolation from the current and previous denoiser outputs:

    .. math::

        r_i = h_{i-1} / h_i,\\quad
        \\hat D_i = \\Big(1 + \\frac{1}{2 r_i}\\Big) D_i - \\frac{1}{2 r_i} D_{i-1},\\quad
        x_{i+1} = \\frac{\\sigma_{i+1}}{\\sigma_i}\\, x_i - (e^{-h_i} - 1)\\, \\hat D_i.

    The first step (no history) and the step to ``sigma = 0`` use ``hat D_i = D_i``
    (DPM-Solver++(1) = DDIM).  Deterministic, global order 2, one denoiser call per step.
    ``generator`` is unused (kept for the common signature).
    """
    del generator
    sigmas = _prepare_sigmas(sigmas, x)
    old_denoised: torch.Tensor | None = None
    h_last: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(denoiser, x, sigma, cond)
        if sigma_next == 0:
            # h = inf: the exponential integrator collapses to the data prediction.
            x_new, h = denoised, None
        else:
            h = sigma.log() - sigma_next.log()
            d_hat = denoised
            if old_denoised is not None and h_last is not None:
                r = h_last / h
                d_hat = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x_new = (sigma_next / sigma) * x - torch.expm1(-h) * d_hat
        old_denoised, h_last = denoised, h
        x = _end_step(x_new, i, sigma, sigma_next, denoised, correction, callback)
    return x


#: The samplers by name; a plain dict, not mutated by the package.
SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "euler_maruyama": sample_euler_maruyama,
    "pc": sample_pc,
    "dpmpp_2m": sample_dpmpp_2m,
}
