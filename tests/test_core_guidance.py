"""Tests of pdediff.core.guidance, .compose and .ema against closed forms.

Most checks use a Gaussian prior x0 ~ N(mu, s^2 I), whose EDM denoiser is exact and
linear: D(x, sigma) = mu + c (x - mu) with c = s^2 / (s^2 + sigma^2), the Jacobian c I.
With observations y = x0[obs] + eta * noise the posterior is Gaussian too, per coordinate:
precision 1/s^2 + 1/eta^2 on observed coordinates, the prior elsewhere.
"""

from __future__ import annotations

import math

import pytest
import torch

from pdediff.core import compose, guidance
from pdediff.core.ema import EMA, power_ema_gamma
from pdediff.core.guidance import (
    CallableTerm,
    ObservationTerm,
    ResidualTerm,
    consistency_correction,
    guidance_grad,
    guided_denoiser,
    sigma_at_step_fraction,
    step_correction,
)
from pdediff.core.samplers import sample_heun
from pdediff.core.schedules import karras_sigmas
from pdediff.core.types import expand_sigma

DT = torch.float64
SHAPE = (1, 2, 4)  # (C, H, W): 8 coordinates
S, ETA = 0.7, 0.1
OBS = torch.tensor([1, 5, 6])


def _mu() -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, 8, dtype=DT).reshape(SHAPE)


def gaussian_denoiser(mu: torch.Tensor, s: float):
    def D(x, sigma, cond=None):
        sig = expand_sigma(sigma, x)
        return mu + s**2 / (s**2 + sig**2) * (x - mu)

    return D


def select(x0: torch.Tensor) -> torch.Tensor:
    return x0.flatten(1)[:, OBS]


def _y(n: int) -> torch.Tensor:
    return torch.tensor([0.9, -0.4, 0.3], dtype=DT).expand(n, 3)


def posterior_mean_var() -> tuple[torch.Tensor, torch.Tensor]:
    """Per-coordinate posterior mean and variance of x0 given y (flattened, (8,))."""
    mean, var = _mu().flatten().clone(), torch.full((8,), S**2, dtype=DT)
    prec = 1 / S**2 + 1 / ETA**2
    mean[OBS] = (mean[OBS] / S**2 + _y(1)[0] / ETA**2) / prec
    var[OBS] = 1 / prec
    return mean, var


def posterior_denoiser(x: torch.Tensor, sigma) -> torch.Tensor:
    m, p2 = (t.reshape(SHAPE) for t in posterior_mean_var())
    sig2 = expand_sigma(sigma, x) ** 2
    return m + p2 / (p2 + sig2) * (x - m)


def exact_likelihood_weight(sigma: torch.Tensor) -> torch.Tensor:
    """eta^2 / (eta^2 + v(sigma)), v = Var[x0 | x_sigma]: turns DPS's p(y | x0_hat) into the
    exact p(y | x_sigma) = N(A D(x), eta^2 + v) for this prior."""
    v = S**2 * sigma**2 / (S**2 + sigma**2)
    return ETA**2 / (ETA**2 + v)


# ----------------------------------------------------------------------------------------
# Gradients


def test_guidance_grad_matches_analytic_and_jacobian_free_differs_by_jacobian():
    torch.manual_seed(0)
    n = 4
    D = gaussian_denoiser(_mu(), S)
    x = torch.randn(n, *SHAPE, dtype=DT) * 2
    sigma = torch.tensor([0.05, 0.5, 2.0, 10.0], dtype=DT)  # one per sample
    y = torch.randn(n, 8, dtype=DT)
    term = ObservationTerm(lambda x0: x0.flatten(1), y, noise_std=ETA)
    c = expand_sigma(S**2 / (S**2 + sigma**2), x)

    grad, den = guidance_grad(D, x, sigma, [(term, 1.0)])
    r = (den - y.reshape(n, *SHAPE)) / ETA**2
    torch.testing.assert_close(den, D(x, sigma))
    torch.testing.assert_close(grad, c * r, rtol=1e-12, atol=1e-12)

    grad_free, _ = guidance_grad(D, x, sigma, [(term, 1.0)], through_denoiser=False)
    torch.testing.assert_close(grad_free, r, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, c * grad_free, rtol=1e-12, atol=1e-12)
    assert not grad.requires_grad and not den.requires_grad


def test_guided_denoiser_is_exact_posterior_with_exact_likelihood_weight():
    torch.manual_seed(1)
    D = gaussian_denoiser(_mu(), S)
    term = ObservationTerm(select, _y(5), noise_std=ETA)
    Dg = guided_denoiser(D, [(term, exact_likelihood_weight)])
    x = torch.randn(5, *SHAPE, dtype=DT) * 3
    for sig in (0.01, 0.3, 1.0, 20.0):
        sigma = torch.full((5,), sig, dtype=DT)
        with torch.no_grad():  # guidance must still work inside no_grad
            out = Dg(x, sigma)
        torch.testing.assert_close(out, posterior_denoiser(x, sigma), rtol=1e-10, atol=1e-10)


def test_dps_with_constant_weight_is_exact_as_sigma_goes_to_zero():
    torch.manual_seed(2)
    D = gaussian_denoiser(_mu(), S)
    Dg = guided_denoiser(D, [ObservationTerm(select, _y(3), noise_std=ETA)])
    x = torch.randn(3, *SHAPE, dtype=DT)
    errs = []
    for sig in (0.02, 0.01):
        sigma = torch.full((3,), sig, dtype=DT)
        errs.append((Dg(x, sigma) - posterior_denoiser(x, sigma)).abs().max().item())
    assert errs[1] < 5e-4
    assert 8 < errs[0] / errs[1] < 32  # the DPS error is O(sigma^4) here
    big = torch.full((3,), 1.0, dtype=DT)
    assert (Dg(x, big) - posterior_denoiser(x, big)).abs().max() > 1e-2  # not exact at large sigma


def test_guided_sampling_gives_the_exact_posterior():
    gen = torch.Generator().manual_seed(3)
    n = 4000
    D = gaussian_denoiser(_mu(), S)
    Dg = guided_denoiser(
        D, [(ObservationTerm(select, _y(n), noise_std=ETA), exact_likelihood_weight)]
    )
    sigmas = karras_sigmas(40, dtype=DT)
    x = sigmas[0] * torch.randn(n, *SHAPE, generator=gen, dtype=DT)
    out = sample_heun(Dg, x, sigmas, generator=gen).flatten(1)
    mean, var = posterior_mean_var()
    se = (var / n).sqrt()
    assert ((out.mean(0) - mean).abs() < 5 * se).all()
    assert ((out.std(0) / var.sqrt() - 1).abs() < 0.07).all()
    # The data dominate the prior on observed coordinates: shrinkage eta^2/(s^2+eta^2) = 2 %.
    assert (mean[OBS] - _y(1)[0]).abs().max() < 0.05


def test_step_correction_sampling_fits_observed_and_leaves_unobserved_at_prior():
    gen = torch.Generator().manual_seed(4)
    n = 4000
    D = gaussian_denoiser(_mu(), S)
    corr = step_correction(D, [(ObservationTerm(select, _y(n)), 0.25)])
    sigmas = karras_sigmas(40, dtype=DT)
    x = sigmas[0] * torch.randn(n, *SHAPE, generator=gen, dtype=DT)
    out = sample_heun(D, x, sigmas, generator=gen, correction=corr).flatten(1)
    assert (out[:, OBS] - _y(n)).abs().max() < 1e-3
    free = torch.tensor([i for i in range(8) if i not in OBS.tolist()])
    # A selects coordinates and J_D is diagonal, so unobserved ones get no gradient.
    se = S / math.sqrt(n)
    assert ((out[:, free].mean(0) - _mu().flatten()[free]).abs() < 5 * se).all()
    assert ((out[:, free].std(0) / S - 1).abs() < 0.07).all()


def _nonlinear_denoiser(x, sigma, cond=None):
    sig = expand_sigma(sigma, x)
    return torch.tanh(x / (1 + sig**2)) + 0.3 * sig * x.roll(1, dims=-1) ** 2


def _terms(n):
    y = torch.linspace(-0.5, 0.5, 3, dtype=DT).expand(n, 3)
    obs = ObservationTerm(select, y, norm="l2", name="obs")
    res = ResidualTerm(lambda x0: x0[..., 1:] - x0[..., :-1], norm="l2sq", scale=0.5, name="pde")
    return obs, res


def test_step_correction_is_x_minus_weighted_gradient():
    torch.manual_seed(5)
    n = 3
    obs, res = _terms(n)
    w_res = guidance.power(2.0, sigma_ref=1.0, p=1.0)
    corr = step_correction(_nonlinear_denoiser, [(obs, 0.3), (res, w_res)])
    x = torch.randn(n, *SHAPE, dtype=DT)
    for sig in (0.4, 3.0, 0.0):
        sigma = torch.tensor(sig, dtype=DT)
        xr = x.clone().requires_grad_(True)
        d = xr if sig == 0 else _nonlinear_denoiser(xr, sigma)  # D(x, 0) = x
        loss = 0.3 * obs.loss(d).sum() + min(sig, 1.0) * 2.0 * res.loss(d).sum()
        (g,) = torch.autograd.grad(loss, xr)
        out = corr(x, sigma, torch.zeros_like(x), 7)
        torch.testing.assert_close(out, x - g, rtol=1e-12, atol=1e-12)


def test_step_correction_normalize_and_reuse_denoised():
    torch.manual_seed(6)
    n = 3
    obs, _ = _terms(n)
    x = torch.randn(n, *SHAPE, dtype=DT)
    sigma = torch.tensor(0.7, dtype=DT)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(obs.loss(_nonlinear_denoiser(xr, sigma)).sum(), xr)
    rms = g.flatten(1).square().mean(1).sqrt().reshape(n, 1, 1, 1)
    corr = step_correction(_nonlinear_denoiser, [(obs, 0.2)], normalize="rms")
    torch.testing.assert_close(corr(x, sigma, x, 0), x - 0.2 * g / rms)

    # DPS's step zeta / ||r|| on the gradient of ||r||^2 is 2 zeta times that of ||r||.
    sq = ObservationTerm(select, obs.y, norm="l2sq")
    dps = step_correction(_nonlinear_denoiser, [(sq, 0.2)], normalize="dps")
    plain = step_correction(_nonlinear_denoiser, [(obs, 0.4)])
    torch.testing.assert_close(dps(x, sigma, x, 0), plain(x, sigma, x, 0))

    # Jacobian-free on the sampler's estimate: no denoiser call, gradient wrt x0_hat.
    den = torch.randn(n, *SHAPE, dtype=DT)
    dr = den.clone().requires_grad_(True)
    (g0,) = torch.autograd.grad(obs.loss(dr).sum(), dr)
    corr = step_correction(None, [(obs, 0.2)], through_denoiser=False, reuse_denoised=True)
    torch.testing.assert_close(corr(x, sigma, den, 0), x - 0.2 * g0)
    with pytest.raises(ValueError):
        step_correction(None, [(obs, 0.2)], reuse_denoised=True)


def test_consistency_first_step_is_adam_sign_step_on_the_estimate():
    torch.manual_seed(7)
    n, lr = 3, 0.05
    obs, res = _terms(n)
    x = torch.randn(n, *SHAPE, dtype=DT)
    sigma = torch.tensor(0.6, dtype=DT)
    corr = consistency_correction(_nonlinear_denoiser, [(obs, 0.3), (res, 2.0)], 1, lr=lr)
    d = _nonlinear_denoiser(x, sigma).requires_grad_(True)
    (g,) = torch.autograd.grad(0.3 * obs.loss(d).sum() + 2.0 * res.loss(d).sum(), d)
    # Adam's first step is -lr * g / (|g| + eps): the sign, elementwise; the noise is kept.
    step = -lr * g / (g.abs() + 1e-8)
    torch.testing.assert_close(corr(x, sigma, x, 0), x + step)


def test_consistency_fits_observations_keeps_unobserved_and_members_independent():
    n = 4
    y = _y(n) + torch.arange(n, dtype=DT)[:, None]  # a different target per member
    term = ObservationTerm(select, y, norm="l2sq")
    corr = consistency_correction(None, [(term, 1.0)], 400, lr=0.05)
    x = torch.randn(n, *SHAPE, dtype=DT, generator=torch.Generator().manual_seed(8))
    out = corr(x, torch.tensor(0.0, dtype=DT), x, 0)  # sigma = 0: the state is the estimate
    assert (select(out) - y).abs().max() < 1e-2
    free = [i for i in range(8) if i not in OBS.tolist()]
    torch.testing.assert_close(out.flatten(1)[:, free], x.flatten(1)[:, free])
    one = consistency_correction(
        None, [(ObservationTerm(select, y[2:3], norm="l2sq"), 1.0)], 400, lr=0.05
    )
    torch.testing.assert_close(one(x[2:3], torch.tensor(0.0, dtype=DT), x, 0), out[2:3])


def test_consistency_sigma_window_errors_and_non_finite():
    n = 2
    obs, _ = _terms(n)
    x = torch.randn(n, *SHAPE, dtype=DT)
    corr = consistency_correction(_nonlinear_denoiser, [(obs, 1.0)], 3, sigma_max=1.0)
    assert torch.equal(corr(x, torch.tensor(2.0, dtype=DT), x, 0), x)
    assert not torch.equal(corr(x, torch.tensor(0.5, dtype=DT), x, 0), x)
    for bad in ({"iterations": 0}, {"iterations": 2, "lr": 0.0}):
        with pytest.raises(ValueError):
            consistency_correction(_nonlinear_denoiser, [(obs, 1.0)], **bad)
    sqrt0 = CallableTerm(lambda x0: torch.sqrt(0 * x0).flatten(1).sum(1), name="pde")
    corr = consistency_correction(_nonlinear_denoiser, [(obs, 1.0), (sqrt0, 1.0)], 2)
    with pytest.raises(FloatingPointError, match="'pde'.*gradient"):
        corr(x, torch.tensor(0.5, dtype=DT), x, 0)


def test_weight_schedules():
    sig = torch.tensor([5.0, 1.0, 0.5, 0.1], dtype=DT)
    assert guidance.constant(2.0)(sig).tolist() == [2.0] * 4
    assert guidance.switch(1.0, 0.1, 0.5)(sig).tolist() == [1.0, 1.0, 0.1, 0.1]
    torch.testing.assert_close(guidance.power(3.0, 1.0, 1.0)(sig), 3.0 * sig.clamp(max=1))
    torch.testing.assert_close(guidance.power(1.0, 2.0, 2.0)(sig), (sig / 2).clamp(max=1) ** 2)
    assert guidance.sigma_window(4.0, 0.2, 1.0)(sig).tolist() == [0.0, 4.0, 4.0, 0.0]
    assert guidance.sigma_window(4.0, sigma_hi=1.0)(sig).tolist() == [0.0, 4.0, 4.0, 4.0]


@pytest.mark.parametrize("n_steps", [10, 17, 2000])
def test_switch_by_step_fraction_matches_diffusionpde_step_index(n_steps):
    sigmas = karras_sigmas(n_steps, dtype=DT)
    sched = guidance.switch(1.0, 0.1, sigma_at_step_fraction(sigmas, 0.8))
    got = [float(sched(sigmas[i + 1 : i + 2])) for i in range(n_steps)]
    want = [1.0 if i <= 0.8 * n_steps else 0.1 for i in range(n_steps)]
    assert got == want
    assert sigma_at_step_fraction(sigmas, 1.0) == -1.0


def test_non_finite_gradient_names_the_term():
    n = 2
    obs, _ = _terms(n)
    # sqrt at 0: the loss is finite (0) but its gradient is not.
    bad = CallableTerm(lambda x0: torch.sqrt(0 * x0).flatten(1).sum(1), name="pde")
    x = torch.randn(n, *SHAPE, dtype=DT)
    sigma = torch.tensor(0.5, dtype=DT)
    with pytest.raises(FloatingPointError, match="'pde'.*gradient"):
        guidance_grad(_nonlinear_denoiser, x, sigma, [(obs, 1.0), (bad, 1.0)])
    with pytest.raises(FloatingPointError, match="'pde'"):
        guided_denoiser(_nonlinear_denoiser, [(obs, 1.0), (bad, 1.0)])(x, sigma)
    for normalize in (None, "rms", "dps"):
        corr = step_correction(_nonlinear_denoiser, [(obs, 1.0), (bad, 1.0)], normalize=normalize)
        with pytest.raises(FloatingPointError, match="'pde'"):
            corr(x, sigma, x, 0)
    nan_loss = CallableTerm(lambda x0: x0.flatten(1).sum(1) * float("nan"), name="obs_u")
    with pytest.raises(FloatingPointError, match="'obs_u'.*loss"):
        guidance_grad(_nonlinear_denoiser, x, sigma, [(obs, 1.0), (nan_loss, 1.0)])


def test_zero_weight_terms_are_not_evaluated_and_shapes_are_checked():
    def boom(x0):
        raise AssertionError("evaluated")

    x = torch.randn(2, *SHAPE, dtype=DT)
    sigma = torch.tensor(2.0, dtype=DT)
    sched = guidance.sigma_window(1.0, sigma_hi=1.0)
    g, d = guidance_grad(_nonlinear_denoiser, x, sigma, [(boom, sched)])
    assert torch.equal(g, torch.zeros_like(x))
    torch.testing.assert_close(d, _nonlinear_denoiser(x, sigma))
    with pytest.raises(ValueError, match="one loss per sample"):
        guidance_grad(_nonlinear_denoiser, x, sigma, [lambda x0: x0.sum()])


def test_observation_term_norms():
    y = torch.tensor([[1.0, 2.0]], dtype=DT)
    x0 = torch.tensor([[3.0, 0.0]], dtype=DT)  # residual (2, -2)
    ident = lambda x: x  # noqa: E731
    assert ObservationTerm(ident, y).loss(x0).item() == pytest.approx(8.0)
    assert ObservationTerm(ident, y, noise_std=2.0).loss(x0).item() == pytest.approx(1.0)
    assert ObservationTerm(ident, y, norm="l2").loss(x0).item() == pytest.approx(math.sqrt(8))
    assert ObservationTerm(ident, y, norm="rms").loss(x0).item() == pytest.approx(2.0)
    with pytest.raises(ValueError):
        ObservationTerm(ident, y, norm="l1")


# ----------------------------------------------------------------------------------------
# Composition


def conditional_denoiser(x, sigma, cond):
    """Gaussian prior whose mean depends on the condition; the null condition has mean 0."""
    mean = cond["vector"].sum(1) + cond["label"].to(x.dtype)
    mean = torch.where(cond.get("drop", torch.zeros_like(mean, dtype=torch.bool)), 0.0, mean)
    return gaussian_denoiser(expand_sigma(mean, x), S)(x, sigma)


def _cond(n):
    return {
        "vector": torch.randn(n, 2, dtype=DT),
        "label": torch.arange(n),
        "drop": torch.tensor([False, True, False]),
    }


def test_cfg_forms():
    torch.manual_seed(7)
    x, sigma, cond = torch.randn(3, *SHAPE, dtype=DT), torch.tensor(0.8, dtype=DT), _cond(3)
    d_c = conditional_denoiser(x, sigma, cond)
    d_u = conditional_denoiser(x, sigma, {**cond, "drop": torch.ones(3, dtype=torch.bool)})
    assert torch.equal(compose.cfg(conditional_denoiser, 0.0)(x, sigma, cond), d_c)
    assert torch.equal(compose.cfg(conditional_denoiser, 1.0, form="scale")(x, sigma, cond), d_c)
    w = 2.5
    out = compose.cfg(conditional_denoiser, w)(x, sigma, cond)
    torch.testing.assert_close(out, d_c + w * (d_c - d_u))
    torch.testing.assert_close(compose.cfg(conditional_denoiser, w, form="ho")(x, sigma, cond), out)
    ho = (1 + w) * d_c - w * d_u
    torch.testing.assert_close(out, ho)
    scale = compose.cfg(conditional_denoiser, 1 + w, form="scale")(x, sigma, cond)
    torch.testing.assert_close(scale, out)
    two_calls = compose.cfg(conditional_denoiser, w, batched=False)(x, sigma, cond)
    torch.testing.assert_close(two_calls, out)
    assert cond["drop"].tolist() == [False, True, False]  # the caller's dict is unchanged
    with pytest.raises(ValueError):
        compose.cfg(conditional_denoiser, w)(x, sigma, None)


def test_product_of_experts_adds_scores_and_is_the_product_as_sigma_to_zero():
    torch.manual_seed(8)
    (m1, s1), (m2, s2) = (0.5, 0.6), (-1.0, 1.3)
    d1, d2 = (
        gaussian_denoiser(torch.tensor(m1, dtype=DT), s1),
        gaussian_denoiser(torch.tensor(m2, dtype=DT), s2),
    )
    poe = compose.product_of_experts([d1, d2])
    x = torch.randn(4, *SHAPE, dtype=DT)

    def score(D, sig):
        return (D(x, torch.tensor(sig, dtype=DT)) - x) / sig**2

    for sig in (0.1, 1.0, 10.0):
        torch.testing.assert_close(score(poe, sig), score(d1, sig) + score(d2, sig))
    q2 = 1 / (1 / s1**2 + 1 / s2**2)
    dp = gaussian_denoiser(torch.tensor(q2 * (m1 / s1**2 + m2 / s2**2), dtype=DT), math.sqrt(q2))
    errs = [(score(poe, s) - score(dp, s)).abs().max().item() * s**2 for s in (0.02, 0.01)]
    assert errs[1] < 1e-6 and 12 < errs[0] / errs[1] < 20  # D differs by O(sigma^4)
    assert (score(poe, 1.0) - score(dp, 1.0)).abs().max() > 1e-2  # not the noised product

    half = compose.product_of_experts([d1, d2], [0.5, 0.5])
    sigma = torch.tensor(0.3, dtype=DT)
    torch.testing.assert_close(half(x, sigma), 0.5 * (d1(x, sigma) + d2(x, sigma)))
    with pytest.raises(ValueError):
        compose.product_of_experts([d1, d2], [1.0])


def test_autoguidance_and_bind_condition():
    torch.manual_seed(9)
    x, sigma, cond = torch.randn(3, *SHAPE, dtype=DT), torch.tensor(0.8, dtype=DT), _cond(3)
    good = conditional_denoiser
    assert torch.equal(compose.autoguidance(good, good, 1.7)(x, sigma, cond), good(x, sigma, cond))
    bad = gaussian_denoiser(torch.tensor(0.0, dtype=DT), 2.0)
    out = compose.autoguidance(good, bad, 0.5)(x, sigma, cond)
    g, b = good(x, sigma, cond), bad(x, sigma)
    torch.testing.assert_close(out, g + 0.5 * (g - b))
    bound = compose.bind_condition(conditional_denoiser, cond)
    assert torch.equal(bound(x, sigma, None), g)


def test_interpolate_condition():
    torch.manual_seed(10)
    c0, c1 = torch.randn(5, 16, dtype=DT), torch.randn(5, 16, dtype=DT)
    for mode in ("linear", "slerp"):
        f = compose.interpolate_condition
        torch.testing.assert_close(f(c0, c1, 0.0, mode), c0)
        torch.testing.assert_close(f(c0, c1, 1.0, mode), c1)
    u0, u1 = c0 / c0.norm(dim=1, keepdim=True), c1 / c1.norm(dim=1, keepdim=True)
    t = torch.linspace(0, 1, 5, dtype=DT)
    mid = compose.interpolate_condition(u0, u1, t, "slerp")
    torch.testing.assert_close(mid.norm(dim=1), torch.ones(5, dtype=DT))
    torch.testing.assert_close(compose.interpolate_condition(c0, c1, t)[2], 0.5 * (c0[2] + c1[2]))
    same = compose.interpolate_condition(u0, 2 * u0, 0.5, "slerp")  # parallel: linear
    torch.testing.assert_close(same, 1.5 * u0)


# ----------------------------------------------------------------------------------------
# EMA


def _model() -> torch.nn.Module:
    torch.manual_seed(11)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def test_ema_update_copy_and_state_dict():
    model = _model()
    ema = EMA(model, decay=0.9)
    old = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randn(8, 3))  # moves the BatchNorm running statistics
    assert ema.update(model) == pytest.approx(0.9)
    for e, o, p in zip(ema.module.parameters(), old, model.parameters(), strict=True):
        torch.testing.assert_close(e, 0.9 * o + 0.1 * p)
        assert not e.requires_grad
    assert ema.module[1].num_batches_tracked == model[1].num_batches_tracked  # copied

    other = EMA(_model(), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 1
    for a, b in zip(
        other.module.state_dict().values(), ema.module.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)

    target = _model()
    ema.copy_to(target)
    for a, b in zip(target.state_dict().values(), ema.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_ema_swapped_restores_even_on_error():
    model = _model()
    ema = EMA(model, decay=0.0)
    with torch.no_grad():
        model[0].weight.add_(3.0)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.swapped(model) as m:
        assert torch.equal(m[0].weight, ema.module[0].weight)
    with pytest.raises(RuntimeError), ema.swapped(model):
        raise RuntimeError("during evaluation")
    for k, v in model.state_dict().items():
        assert torch.equal(v, own[k])


def test_ema_half_life_warmup_and_power():
    model = _model()
    ema = EMA(model, half_life=1000, rampup=0.05)
    assert ema.update(model, n_samples=100) == 0.0  # rampup: nothing seen yet, copy
    assert ema.beta(100) == pytest.approx(0.5 ** (100 / (100 * 0.05)))
    ema = EMA(model, half_life=1000)
    assert ema.beta(100) == pytest.approx(0.5**0.1)
    with pytest.raises(ValueError):
        ema.update(model)
    ema = EMA(model, decay=0.99, warmup=2)
    assert [ema.update(model) for _ in range(3)] == [0.0, 0.0, 0.99]

    g = power_ema_gamma(0.05)
    assert math.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3))) == pytest.approx(0.05, rel=1e-9)
    assert g == pytest.approx(16.97, abs=0.01)
    assert power_ema_gamma(0.10) == pytest.approx(6.94, abs=0.01)  # EDM2's pair
    ema = EMA(model, std=0.05)
    assert [ema.update(model) for _ in range(3)] == pytest.approx(
        [0.0, 0.5 ** (g + 1), (2 / 3) ** (g + 1)]
    )
    with pytest.raises(ValueError):
        EMA(model, decay=0.9, std=0.05)
