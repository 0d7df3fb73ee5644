"""Core: preconditioners, EDM loss, schedules and samplers, on priors with exact denoisers.

For a Gaussian prior x0 ~ N(mu, s^2) (per dimension) the exact denoiser is the posterior
mean D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2), and the probability-flow ODE
has the closed-form flow map x(sigma) = mu + (x(sigma_0) - mu) sqrt(s^2 + sigma^2) /
sqrt(s^2 + sigma_0^2).  For a two-component Gaussian mixture the exact denoiser is the
posterior-weighted mean of the component posteriors (Bayes).  All sampler runs use a fixed
generator, so the tests are deterministic; the tolerances below are written as
"discretisation bias (from the sampler's order) + 5 Monte Carlo standard errors".
"""

from __future__ import annotations

import math

import pytest
import torch

from pdediff.core.loss import EDMLoss, edm_loss_at, edm_loss_weight
from pdediff.core.precond import EDMPrecond, VEPrecond, VPPrecond
from pdediff.core.samplers import (
    SAMPLERS,
    noise_like,
    sample_dpmpp_2m,
    sample_euler,
    sample_euler_maruyama,
    sample_heun,
    sample_pc,
)
from pdediff.core.schedules import karras_sigmas, loglinear_sigmas, vp_sigmas

F64 = torch.float64
N_MC = 20000  # Monte Carlo batch: standard error of a mean is std / 141


# ---------------------------------------------------------------------------------------
# analytic priors


class GaussianPrior:
    """x0 ~ N(mu, s^2) independently per dimension of the trailing axis."""

    def __init__(self, mu, s):
        self.mu = torch.as_tensor(mu, dtype=F64)
        self.s = torch.as_tensor(s, dtype=F64)

    def __call__(self, x, sigma, cond=None):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        s2, mu = self.s.to(x.dtype) ** 2, self.mu.to(x.dtype)
        return (s2 * x + sigma**2 * mu) / (s2 + sigma**2)

    def flow(self, x, sigma_from, sigma_to):
        """Exact probability-flow ODE solution from sigma_from to sigma_to."""
        s2 = self.s**2
        return self.mu + (x - self.mu) * ((s2 + sigma_to**2) / (s2 + sigma_from**2)).sqrt()

    def sample(self, n, generator):
        return self.mu + self.s * torch.randn(n, self.mu.numel(), generator=generator, dtype=F64)


class MixturePrior:
    """1-D mixture sum_k w_k N(m_k, s_k^2); x has shape (N, 1)."""

    def __init__(self, w, m, s):
        self.w, self.m, self.s = (torch.tensor(v, dtype=F64) for v in (w, m, s))

    def responsibilities(self, x, sigma):
        var = self.s**2 + sigma**2
        logp = self.w.log() - 0.5 * (2 * math.pi * var).log() - 0.5 * (x - self.m) ** 2 / var
        return torch.softmax(logp, dim=-1)

    def __call__(self, x, sigma, cond=None):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1)
        post_means = (self.s**2 * x + sigma**2 * self.m) / (self.s**2 + sigma**2)
        return (self.responsibilities(x, sigma) * post_means).sum(-1, keepdim=True)

    @property
    def mean(self):
        return (self.w * self.m).sum()

    @property
    def var(self):
        return (self.w * (self.s**2 + self.m**2)).sum() - self.mean**2


GAUSS = GaussianPrior([1.0, -0.5, 0.0], [0.5, 1.0, 2.0])
MIX = MixturePrior([0.3, 0.7], [-1.0, 1.5], [0.3, 0.5])


def _initial(shape, sigmas, seed):
    g = torch.Generator().manual_seed(seed)
    return sigmas[0] * torch.randn(*shape, generator=g, dtype=F64), g


# ---------------------------------------------------------------------------------------
# samplers reproduce the prior's moments
#
# Steps and the discretisation bias allowed in the relative variance error, per sampler.
# Measured on the Gaussian prior with the Karras schedule (sigma 0.002..80, rho 7), the
# variance bias is about 6/n for Euler (order 1), 12/n for the ancestral
# Euler-Maruyama sampler (weak order 1, and each step loses the posterior variance),
# ~5/n for PC (weak order 1 predictor + Langevin), and ~16/n^2 for Heun and DPM-Solver++(2M)
# (order 2); the allowance is about twice the measured bias.
MOMENT_RUNS = {
    "euler": (200, {}, 0.06),
    "heun": (64, {}, 0.03),
    "heun_churn": (64, {"S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0}, 0.05),
    "euler_maruyama": (300, {}, 0.08),
    "pc": (200, {"n_corrector": 1, "snr": 0.16}, 0.06),
    "dpmpp_2m": (64, {}, 0.03),
}


def _sampler(name):
    return SAMPLERS["heun" if name == "heun_churn" else name]


@pytest.mark.parametrize("name", sorted(MOMENT_RUNS))
def test_gaussian_prior_moments(name):
    steps, options, var_bias = MOMENT_RUNS[name]
    sigmas = karras_sigmas(steps)
    x, g = _initial((N_MC, 3), sigmas, seed=0)
    y = _sampler(name)(GAUSS, x, sigmas, generator=g, **options)
    s = GAUSS.s
    # Mean: standard error s / sqrt(N); the bias of the mean is at most var_bias * s.
    mean_err = (y.mean(0) - GAUSS.mu).abs()
    assert torch.all(mean_err < 5 * s / math.sqrt(N_MC) + var_bias * s), mean_err
    # Variance: relative standard error sqrt(2 / N) = 0.01 for a Gaussian.
    var_err = (y.var(0) / s**2 - 1).abs()
    assert torch.all(var_err < 5 * math.sqrt(2 / N_MC) + var_bias), var_err
    print(f"{name}: |mean error| {mean_err.max():.4f}, |rel. variance error| {var_err.max():.4f}")


@pytest.mark.parametrize("name", sorted(MOMENT_RUNS))
def test_mixture_prior_moments(name):
    steps, options, var_bias = MOMENT_RUNS[name]
    sigmas = karras_sigmas(steps)
    x, g = _initial((N_MC, 1), sigmas, seed=1)
    y = _sampler(name)(MIX, x, sigmas, generator=g, **options)
    std = MIX.var.sqrt()
    mean_err = (y.mean() - MIX.mean).abs()
    assert mean_err < 5 * std / math.sqrt(N_MC) + var_bias * std
    # The mixture's kurtosis is below 3, so sqrt(2/N) still bounds the variance's
    # relative standard error; allow 6 of them for the non-Gaussian tail.
    var_err = (y.var() / MIX.var - 1).abs()
    assert var_err < 6 * math.sqrt(2 / N_MC) + var_bias
    # E_p[r_k(x)] = w_k exactly under the prior, so the mean responsibility of the samples
    # estimates the component weights without misclassification bias.
    weights = MIX.responsibilities(y, torch.tensor(0.0, dtype=F64)).mean(0)
    weight_err = (weights - MIX.w).abs()
    se = (MIX.w * (1 - MIX.w) / N_MC).sqrt()
    assert torch.all(weight_err < 5 * se + var_bias / 2), weight_err
    print(f"{name}: mean {mean_err:.4f}, rel. var {var_err:.4f}, weights {weight_err.max():.4f}")


# ---------------------------------------------------------------------------------------
# convergence order of the probability-flow solvers

ORDERS = {"euler": 1.0, "heun": 2.0, "dpmpp_2m": 2.0}
STEPS = (16, 32, 64, 128)


def _observed_order(errors):
    """Least-squares slope of -log2(error) against log2(steps)."""
    logs = torch.tensor([math.log2(e) for e in errors], dtype=F64)
    k = torch.arange(len(errors), dtype=F64)
    k = k - k.mean()
    return float(-(k * (logs - logs.mean())).sum() / (k**2).sum())


@pytest.mark.parametrize("name", sorted(ORDERS))
def test_order_gaussian_exact_flow(name):
    # Stop at sigma_min (drop the final 0) so every step is a regular ODE step and the
    # error is measured against the exact flow map, with no fixed last-step term.
    x, _ = _initial((64, 3), karras_sigmas(8), seed=2)
    errors = []
    for n in STEPS:
        sigmas = karras_sigmas(n)[:-1]
        exact = GAUSS.flow(x, sigmas[0], sigmas[-1])
        errors.append(float((SAMPLERS[name](GAUSS, x, sigmas) - exact).abs().max()))
    order = _observed_order(errors)
    print(f"{name}: Gaussian errors {errors}, order {order:.2f}")
    assert abs(order - ORDERS[name]) < 0.3


@pytest.mark.parametrize("name", sorted(ORDERS))
def test_order_mixture_fine_reference(name):
    # Nonlinear ODE: the reference is Heun with 16x the finest step count (its error
    # ~ (1/16)^2 of Heun's at the finest count, far below the errors measured here).
    # The median over samples: the few trajectories that start near the boundary between
    # the two basins have a huge flow-map Lipschitz constant and reach the asymptotic
    # regime only at much finer steps, which would mask the order in a max-norm.
    steps = (32, 64, 128, 256)
    x, _ = _initial((64, 1), karras_sigmas(8), seed=3)
    reference = sample_heun(MIX, x, karras_sigmas(16 * steps[-1])[:-1])
    errors = []
    for n in steps:
        y = SAMPLERS[name](MIX, x, karras_sigmas(n)[:-1])
        errors.append(float((y - reference).abs().median()))
    order = _observed_order(errors)
    print(f"{name}: mixture errors {errors}, order {order:.2f}")
    assert abs(order - ORDERS[name]) < 0.3


# ---------------------------------------------------------------------------------------
# sampler mechanics: callback, correction, determinism, shapes, gradients


def _pairs(sigmas):
    return torch.stack([sigmas[:-1], sigmas[1:]], dim=1)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_sees_every_step_and_correction_applies(name):
    sigmas = karras_sigmas(6)
    x, g = _initial((8, 2, 4, 4), sigmas, seed=4)
    denoiser = GaussianPrior(0.0, 1.0)
    seen, corrected = [], []

    def correction(x, sigma, denoised, i):
        corrected.append((i, float(sigma)))
        return x.clamp(-1.0, 1.0)  # clamping keeps every later state inside [-1, 1]

    def callback(info):
        assert set(info) >= {"i", "sigma", "sigma_next", "x", "denoised"}
        assert info["x"].abs().max() <= 1.0  # sees the corrected state
        assert info["denoised"].shape == x.shape
        seen.append((info["i"], float(info["sigma"]), float(info["sigma_next"])))

    y = SAMPLERS[name](denoiser, x, sigmas, generator=g, callback=callback, correction=correction)
    assert [step[0] for step in seen] == list(range(6))
    torch.testing.assert_close(torch.tensor([step[1:] for step in seen], dtype=F64), _pairs(sigmas))
    assert [step[0] for step in corrected] == list(range(6))
    torch.testing.assert_close(torch.tensor([step[1] for step in corrected], dtype=F64), sigmas[1:])
    assert y.abs().max() <= 1.0


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_deterministic_for_fixed_generator_any_shape(name):
    sigmas = karras_sigmas(5)
    calls = []

    def denoiser(x, sigma, cond=None):
        calls.append(tuple(sigma.shape))
        assert cond is not None and cond["vector"].shape == (3, 2)
        return GaussianPrior(0.2, 0.7)(x, sigma)

    cond = {"vector": torch.zeros(3, 2)}
    runs = []
    for seed in (5, 5, 6):
        g = torch.Generator().manual_seed(seed)
        x = sigmas[0].float() * torch.randn(3, 2, 5, 7, generator=g)
        runs.append(SAMPLERS[name](denoiser, x, sigmas, cond=cond, generator=g))
    assert runs[0].shape == (3, 2, 5, 7) and runs[0].dtype == torch.float32
    assert torch.isfinite(runs[0]).all()
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    assert set(calls) == {(3,)}  # one sigma per sample


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_no_hidden_no_grad(name):
    # Guidance differentiates through the sampler step: the samplers must not disable it.
    sigmas = karras_sigmas(3)
    x = (sigmas[0] * torch.randn(2, 1, 3, 3, dtype=F64)).requires_grad_()
    y = SAMPLERS[name](GaussianPrior(0.0, 1.0), x, sigmas, generator=torch.Generator())
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_samplers_registry_and_noise_like():
    assert SAMPLERS == {
        "euler": sample_euler,
        "heun": sample_heun,
        "euler_maruyama": sample_euler_maruyama,
        "pc": sample_pc,
        "dpmpp_2m": sample_dpmpp_2m,
    }
    x = torch.zeros(2, 3, dtype=F64)
    a = noise_like(x, torch.Generator().manual_seed(0))
    b = noise_like(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and a.dtype == F64 and torch.equal(a, b)


def test_euler_maruyama_eta_zero_is_euler():
    sigmas = karras_sigmas(10)
    x, _ = _initial((16, 3), sigmas, seed=7)
    a = sample_euler_maruyama(GAUSS, x, sigmas, eta=0.0, generator=torch.Generator())
    torch.testing.assert_close(a, sample_euler(GAUSS, x, sigmas))


def test_sigmas_not_ending_in_zero_and_bad_sigmas():
    # A schedule that stops at sigma_min leaves the sample at that noise level (64 steps
    # of an order-2 solver: error ~ 1e-3 of the scale, see the order tests).
    sigmas = karras_sigmas(64)[:-1]
    x, _ = _initial((4, 3), sigmas, seed=8)
    y = sample_dpmpp_2m(GAUSS, x, sigmas)
    torch.testing.assert_close(y, GAUSS.flow(x, sigmas[0], sigmas[-1]), atol=0.02, rtol=0)
    with pytest.raises(ValueError, match="1-D"):
        sample_euler(GAUSS, x, torch.tensor([1.0]))


# ---------------------------------------------------------------------------------------
# preconditioners


def _table1(kind, sigma, **kw):
    """Karras et al. 2022, Table 1, written out independently of the package."""
    if kind == "edm":
        sd = kw.get("sigma_data", 0.5)
        return (
            sd**2 / (sigma**2 + sd**2),
            sigma * sd / (sigma**2 + sd**2).sqrt(),
            1 / (sigma**2 + sd**2).sqrt(),
            sigma.log() / 4,
        )
    if kind == "ve":
        return torch.ones_like(sigma), sigma, torch.ones_like(sigma), (sigma / 2).log()
    bd, bm, M = 19.9, 0.1, 1000
    t = ((bm**2 + 2 * bd * (1 + sigma**2).log()).sqrt() - bm) / bd
    return torch.ones_like(sigma), -sigma, 1 / (sigma**2 + 1).sqrt(), (M - 1) * t


class ExactBackbone(torch.nn.Module):
    """The F whose preconditioned output is the exact Gaussian denoiser."""

    def __init__(self, prior, sigma_of_cnoise):
        super().__init__()
        self.prior, self.sigma_of_cnoise, self.precond = prior, sigma_of_cnoise, None
        self.seen_cond = []

    def forward(self, x_in, c_noise, cond=None):
        self.seen_cond.append(cond)
        sigma = self.sigma_of_cnoise(c_noise)
        c_skip, c_out, c_in, _ = (c.reshape(-1, 1) for c in self.precond.coefficients(sigma))
        x = x_in / c_in
        return (self.prior(x, sigma) - c_skip * x) / c_out


def _make(kind, backbone):
    if kind == "edm":
        return EDMPrecond(backbone, sigma_data=0.5), lambda c: (4 * c).exp()
    if kind == "ve":
        return VEPrecond(backbone), lambda c: 2 * c.exp()
    p = VPPrecond(backbone)
    return p, lambda c: p.sigma(c / (p.M - 1))


@pytest.mark.parametrize("kind", ["edm", "vp", "ve"])
def test_precond_coefficients_match_table1(kind):
    p, _ = _make(kind, torch.nn.Identity())
    sigma = torch.tensor([0.002, 0.1, 0.5, 1.0, 10.0, 80.0], dtype=F64)
    for got, want in zip(p.coefficients(sigma), _table1(kind, sigma), strict=True):
        torch.testing.assert_close(got, want)
    assert 0 < p.sigma_min < p.sigma_max
    torch.testing.assert_close(p.round_sigma(sigma), sigma)


@pytest.mark.parametrize("kind", ["edm", "vp", "ve"])
def test_precond_with_exact_backbone_is_exact_denoiser(kind):
    backbone = ExactBackbone(GAUSS, None)
    p, sigma_of_cnoise = _make(kind, backbone)
    backbone.precond, backbone.sigma_of_cnoise = p, sigma_of_cnoise
    g = torch.Generator().manual_seed(9)
    sigma = torch.tensor([0.01, 0.3, 1.0, 5.0, 40.0], dtype=F64)
    x = GAUSS.sample(5, g) + sigma[:, None] * torch.randn(5, 3, generator=g, dtype=F64)
    cond = {"vector": torch.ones(5, 1)}
    torch.testing.assert_close(p(x, sigma, cond), GAUSS(x, sigma))
    assert backbone.seen_cond[-1] is cond  # passed through unchanged
    # A scalar sigma broadcasts to the batch.
    torch.testing.assert_close(p(x, torch.tensor(0.7)), GAUSS(x, torch.full((5,), 0.7)))


def test_edm_precond_identities():
    sd = 0.5
    p = EDMPrecond(torch.nn.Identity(), sigma_data=sd)
    sigma = torch.logspace(-3, 2, 11, dtype=F64)
    c_skip, c_out, c_in, _ = p.coefficients(sigma)
    # Unit-variance network input: Var[c_in (x0 + n)] = c_in^2 (sd^2 + sigma^2) = 1.
    torch.testing.assert_close(c_in**2 * (sd**2 + sigma**2), torch.ones_like(sigma))
    # Unit-variance training target: Var[(x0 - c_skip (x0 + n)) / c_out] = 1 (EDM eq. 8).
    target_var = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * sigma**2) / c_out**2
    torch.testing.assert_close(target_var, torch.ones_like(sigma))
    # The loss weight undoes c_out: lambda(sigma) c_out^2 = 1.
    torch.testing.assert_close(edm_loss_weight(sigma, sd) * c_out**2, torch.ones_like(sigma))


def test_vp_sigma_inverse_and_float32_output():
    p = VPPrecond(lambda x, c, cond=None: torch.zeros_like(x))
    t = torch.linspace(1e-5, 1.0, 7, dtype=F64)
    torch.testing.assert_close(p.sigma_inv(p.sigma(t)), t)
    assert p.sigma_max == pytest.approx(float(p.sigma(torch.tensor(1.0, dtype=F64))))
    out = EDMPrecond(lambda x, c, cond=None: x)(torch.randn(2, 1, 3, dtype=torch.float16), 1.0)
    assert out.dtype == torch.float32


# ---------------------------------------------------------------------------------------
# EDM loss


def _gauss_batch(n, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = GAUSS.sample(n, g)
    noise = torch.randn(x0.shape, generator=g, dtype=F64)
    return x0, noise


@pytest.mark.parametrize("sigma", [0.05, 0.5, 3.0])
def test_loss_minimised_by_exact_denoiser(sigma):
    x0, noise = _gauss_batch(N_MC, seed=10)
    sig = torch.full((N_MC,), sigma, dtype=F64)
    exact = edm_loss_at(GAUSS, x0, sig, noise).mean()
    # Expected value: lambda(sigma) times the posterior variance s^2 sigma^2/(s^2+sigma^2),
    # averaged over the 3 dimensions; its relative standard error is sqrt(2/(3N)) ~ 0.006.
    s2 = GAUSS.s**2
    expected = edm_loss_weight(torch.tensor(sigma), 0.5) * (s2 * sigma**2 / (s2 + sigma**2)).mean()
    assert float(exact) == pytest.approx(float(expected), rel=0.03)
    # Perturbed denoisers have larger expected loss: E||D + e - x0||^2 = E||D - x0||^2 +
    # E||e||^2 because D is the posterior mean.  Same x0 and noise (common random numbers)
    # keep the comparison free of Monte Carlo noise in the shared part.
    perturbed = [
        lambda x, s, c=None: GAUSS(x, s) + 0.05 * GAUSS.s,
        lambda x, s, c=None: 1.05 * GAUSS(x, s),
        GaussianPrior(GAUSS.mu, 1.1 * GAUSS.s),
        GaussianPrior(GAUSS.mu + 0.05, GAUSS.s),
    ]
    for d in perturbed:
        assert edm_loss_at(d, x0, sig, noise).mean() > exact


def test_loss_mask_and_channel_weights():
    g = torch.Generator().manual_seed(11)
    x0 = torch.randn(4, 2, 6, 6, generator=g, dtype=F64)
    noise = torch.randn(x0.shape, generator=g, dtype=F64)
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0], dtype=F64)

    def d(x, s, c=None):
        return 0.5 * x

    full = edm_loss_at(d, x0, sigma, noise)
    lam = edm_loss_weight(sigma)
    err = (d(x0 + sigma.reshape(-1, 1, 1, 1) * noise, sigma) - x0) ** 2
    torch.testing.assert_close(full, lam * err.mean((1, 2, 3)))
    # Mask: only the left half of the grid counts.
    mask = torch.zeros(1, 1, 6, 6)
    mask[..., :3] = 1
    torch.testing.assert_close(
        edm_loss_at(d, x0, sigma, noise, mask=mask), lam * err[..., :3].mean((1, 2, 3))
    )
    # Channel weights (1, 0): only channel 0; equal weights of any scale: unweighted.
    torch.testing.assert_close(
        edm_loss_at(d, x0, sigma, noise, channel_weights=torch.tensor([1.0, 0.0])),
        lam * err[:, 0].mean((1, 2)),
    )
    torch.testing.assert_close(
        edm_loss_at(d, x0, sigma, noise, channel_weights=torch.tensor([3.0, 3.0])), full
    )
    # A sample whose mask keeps nothing contributes 0, not NaN.
    empty = torch.ones(4, 1, 6, 6)
    empty[0] = 0
    out = edm_loss_at(d, x0, sigma, noise, mask=empty)
    assert out[0] == 0 and torch.isfinite(out).all()


def test_loss_condition_dropout_and_reproducibility():
    seen = []

    def d(x, sigma, cond=None):
        seen.append(cond)
        return torch.zeros_like(x)

    x0 = torch.randn(N_MC, 1, 2)
    cond = {"vector": torch.zeros(N_MC, 3)}
    loss_fn = EDMLoss(p_uncond=0.2)
    a = loss_fn(d, x0, cond, generator=torch.Generator().manual_seed(12))
    b = loss_fn(d, x0, cond, generator=torch.Generator().manual_seed(12))
    torch.testing.assert_close(a, b)
    assert a.shape == (N_MC,)
    drop = seen[0]["drop"]
    assert drop.dtype == torch.bool and torch.equal(drop, seen[1]["drop"])
    # Binomial rate: standard error sqrt(0.2 * 0.8 / N) = 0.0028.
    assert abs(drop.float().mean().item() - 0.2) < 5 * math.sqrt(0.16 / N_MC)
    assert "drop" not in cond  # the caller's dict is not modified
    # An existing drop is kept (logical or).
    forced = {"vector": cond["vector"], "drop": torch.ones(N_MC, dtype=torch.bool)}
    loss_fn(d, x0, forced, generator=torch.Generator().manual_seed(13))
    assert seen[-1]["drop"].all()
    # No dropout requested, or nothing to drop: the condition is passed as is.
    EDMLoss()(d, x0, cond, generator=torch.Generator())
    assert seen[-1] is cond
    loss_fn(d, x0, None, generator=torch.Generator())
    assert seen[-1] is None


def test_loss_sigma_distribution():
    sigma = EDMLoss(P_mean=-1.2, P_std=1.2).sample_sigma(N_MC, torch.Generator().manual_seed(14))
    log_sigma = sigma.log()
    assert abs(log_sigma.mean().item() + 1.2) < 5 * 1.2 / math.sqrt(N_MC)
    assert abs(log_sigma.std().item() - 1.2) < 5 * 1.2 / math.sqrt(2 * N_MC)
    with pytest.raises(ValueError, match="p_uncond"):
        EDMLoss(p_uncond=1.5)


# ---------------------------------------------------------------------------------------
# schedules


@pytest.mark.parametrize(
    "schedule, first, last",
    [
        (lambda n: karras_sigmas(n, 0.002, 80.0, 7.0), 80.0, 0.002),
        (lambda n: loglinear_sigmas(n, 0.01, 50.0), 50.0, 0.01),
        (lambda n: vp_sigmas(n), math.sqrt(math.expm1(0.5 * 19.9 + 0.1)), None),
    ],
)
@pytest.mark.parametrize("n", [1, 2, 18])
def test_schedule_shape_endpoints_monotone(schedule, first, last, n):
    sigmas = schedule(n)
    assert sigmas.shape == (n + 1,) and sigmas.dtype == F64
    assert sigmas[-1] == 0
    assert float(sigmas[0]) == pytest.approx(first)
    assert torch.all(sigmas[1:] < sigmas[:-1])
    if last is not None and n >= 2:
        assert float(sigmas[-2]) == pytest.approx(last)


def test_vp_schedule_last_level_and_dtype():
    sigmas = vp_sigmas(10, eps_s=1e-3, dtype=torch.float32)
    assert sigmas.dtype == torch.float32
    want = math.sqrt(math.expm1(0.5 * 19.9 * 1e-6 + 0.1 * 1e-3))
    assert float(sigmas[-2]) == pytest.approx(want, rel=1e-5)
    # rho = 1 is linear in sigma.
    lin = karras_sigmas(5, 1.0, 5.0, rho=1.0)[:-1]
    torch.testing.assert_close(lin, torch.linspace(5.0, 1.0, 5, dtype=F64))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: karras_sigmas(0), "n must be an integer >= 1"),
        (lambda: karras_sigmas(2.5), "n must be an integer >= 1"),
        (lambda: karras_sigmas(10, sigma_min=0.0), "0 < sigma_min < sigma_max"),
        (lambda: karras_sigmas(10, sigma_min=5.0, sigma_max=1.0), "0 < sigma_min < sigma_max"),
        (lambda: karras_sigmas(10, rho=0.0), "rho must be positive"),
        (lambda: loglinear_sigmas(10, -1.0, 1.0), "0 < sigma_min < sigma_max"),
        (lambda: loglinear_sigmas(-3), "n must be an integer >= 1"),
        (lambda: vp_sigmas(10, eps_s=1.0), "eps_s must be in"),
        (lambda: vp_sigmas(10, beta_d=0.0, beta_min=0.0), "not both 0"),
    ],
)
def test_schedule_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
