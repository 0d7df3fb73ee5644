"""pdediff.metrics: known values, brute-force and closed-form checks, calibration
behaviour of the ensemble scores, numpy/torch agreement and shape errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from pdediff import metrics
from pdediff.metrics import MetricsError
from pdediff.pde import darcy
from pdediff.pde.base import Grid, node_grid


def gaussian_ensemble(rng: np.random.Generator, n: int, m: int, spread: float, shape=(16, 16)):
    """Members ``N(0, spread^2)`` per point, truth ``N(0, 1)``: calibrated when spread = 1."""
    truth = rng.standard_normal((n, *shape))
    ens = spread * rng.standard_normal((n, m, *shape))
    return ens, truth


# ------------------------------------------------------------------ deterministic


def test_relative_l2_known_values():
    truth = np.array([[3.0, 4.0], [1.0, 0.0]])  # norms 5 and 1
    pred = np.array([[3.0, 4.5], [1.0, 0.0]])
    np.testing.assert_allclose(metrics.relative_l2(pred, truth), [0.1, 0.0])
    pred2 = truth * 1.02
    np.testing.assert_allclose(metrics.relative_l2(pred2, truth), [0.02, 0.02])


def test_relative_l2_zero_truth_and_axes():
    z = np.zeros((2, 3))
    pred = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(metrics.relative_l2(pred, z), [0.0, np.inf])
    x = np.ones((2, 3, 4))
    # norm over the last axis only: one value per (sample, row)
    assert metrics.relative_l2(2 * x, x, axes=-1).shape == (2, 3)
    with pytest.raises(MetricsError, match="sample axis"):
        metrics.relative_l2(x, x, axes=(0, 1))


def test_threshold_error_rate_hand_made():
    truth = np.array([[[3.0, 12.0], [12.0, 3.0]]])
    pred = np.array([[[7.4, 7.6], [3.0, 3.0]]])  # pixel 0 ok, 1 ok, 2 wrong, 3 ok
    np.testing.assert_allclose(metrics.threshold_error_rate(pred, truth), [0.25])
    # another threshold: 7.7 makes pixel 1 wrong as well
    np.testing.assert_allclose(metrics.threshold_error_rate(pred, truth, threshold=7.7), [0.5])
    # normalised levels: the midpoint of (-1, 1) is 0
    np.testing.assert_allclose(
        metrics.threshold_error_rate(pred - 7.5, np.sign(truth - 7.5), levels=(-1, 1)), [0.25]
    )
    with pytest.raises(MetricsError, match="distinct"):
        metrics.threshold_error_rate(pred, truth, levels=(3.0, 3.0))


def test_residual_norm_darcy_reuses_family():
    fam = darcy.FAMILY
    grid = fam.grid(17)
    params = fam.params()
    fields = fam.draw(np.random.default_rng(0), grid, params)
    batch = {k: v[None] for k, v in fields.items()}
    res = metrics.residual_norm(fam, batch, grid)
    assert res.relative.shape == res.rms.shape == (1,)
    assert res.relative[0] < 1e-8 and res.rms[0] < 1e-8  # reference solution
    bad = {"a": batch["a"], "u": 0.0 * batch["u"]}  # u = 0: residual is -f = -1 everywhere
    res = metrics.residual_norm(fam, bad, grid)
    np.testing.assert_allclose(res.relative, [1.0])
    np.testing.assert_allclose(res.rms, [1.0])
    as_torch = {k: torch.from_numpy(v) for k, v in bad.items()}
    np.testing.assert_allclose(metrics.residual_norm(fam, as_torch, grid).rms, [1.0])


# ------------------------------------------------------------------------ spectra


@pytest.mark.parametrize("lengths", [1.0, (2.0, 3.0)])
def test_spectrum_single_mode_parseval(lengths):
    n = 32
    ly, lx = np.broadcast_to(lengths, (2,))
    y, x = np.meshgrid(np.arange(n) * ly / n, np.arange(n) * lx / n, indexing="ij")
    amp, m = 1.7, 5
    f = amp * np.cos(2 * np.pi * m * x / lx)[None]
    k, e = metrics.energy_spectrum(f, lengths)
    assert e.shape == (1, k.size)
    peak = int(np.argmax(e[0]))
    np.testing.assert_allclose(k[peak], 2 * np.pi * m / lx, rtol=0.5 / m)
    np.testing.assert_allclose(e[0, peak], amp**2 / 2)  # mean square of the mode
    np.testing.assert_allclose(e[0].sum(), np.mean(f**2))


def test_spectrum_parseval_random_and_grid_lengths():
    rng = np.random.default_rng(1)
    f = rng.standard_normal((3, 2, 24, 20))
    grid = Grid({"y": np.arange(24) * 0.1, "x": np.arange(20) * 0.1}, periodic={"y", "x"})
    k, e = metrics.energy_spectrum(f, grid)
    assert e.shape == (3, 2, k.size)
    np.testing.assert_allclose(e.sum(-1), np.mean(f**2, axis=(-2, -1)))
    assert k[1] == pytest.approx(2 * np.pi / 2.4)  # the longest period n h = 2.4
    # a node grid gives n h as the period too (one spacing more than grid.length)
    k2, _ = metrics.energy_spectrum(f[..., :20, :20], node_grid(20, length=1.9))
    assert k2[1] == pytest.approx(2 * np.pi / 2.0)


def test_spectrum_error_scale_free():
    rng = np.random.default_rng(2)
    truth = rng.standard_normal((2, 16, 16))
    np.testing.assert_allclose(metrics.spectrum_error(truth, truth), 0.0, atol=1e-12)
    # doubling the amplitude quadruples the power at every shell: log10 4
    np.testing.assert_allclose(metrics.spectrum_error(2 * truth, truth), np.log10(4), rtol=1e-6)


# ---------------------------------------------------------------------- CRPS


def crps_brute(ens: np.ndarray, y: np.ndarray, fair: bool = False) -> np.ndarray:
    """O(M^2) double sum on (M, ...) members."""
    m = ens.shape[0]
    skill = np.mean(np.abs(ens - y), axis=0)
    pair = sum(np.abs(a - b) for a, b in itertools.product(ens, ens))
    return skill - pair / (2 * (m * (m - 1) if fair else m * m))


def test_crps_one_member_is_absolute_error():
    rng = np.random.default_rng(11)
    y = rng.standard_normal((2, 3))
    x = rng.standard_normal((2, 1, 3))  # (N=2, M=1, 3)
    got = metrics.crps_ensemble(x, y, reduce=False)
    np.testing.assert_allclose(got, np.abs(x[:, 0] - y), atol=1e-15)
    # (N=1, M=1): both axes fit, so the member axis must be named
    assert metrics.crps_ensemble(x[:1], y[:1], member_axis=1) == pytest.approx(got[0].mean())
    with pytest.raises(MetricsError, match="2 members"):
        metrics.crps_ensemble(x, y, fair=True)


@pytest.mark.parametrize("fair", [False, True])
def test_crps_matches_brute_force(fair):
    rng = np.random.default_rng(3)
    ens = rng.standard_normal((7, 4, 5)) * 2 + 0.3
    y = rng.standard_normal((4, 5))
    got = metrics.crps_ensemble(ens, y, fair=fair, reduce=False)
    np.testing.assert_allclose(got, crps_brute(ens, y, fair), rtol=1e-12, atol=1e-12)
    assert metrics.crps_ensemble(ens, y, fair=fair) == pytest.approx(got.mean())
    # (N, M, *grid) layout: per-sample means
    ens_n = np.moveaxis(ens, 0, 1)  # (4, 7, 5) vs truth (4, 5)
    np.testing.assert_allclose(metrics.crps_ensemble(ens_n, y, fair=fair), got.mean(axis=1))


def test_crps_gaussian_closed_form():
    rng = np.random.default_rng(4)
    mu, sigma, m = 0.5, 2.0, 20_000
    ens = mu + sigma * rng.standard_normal((m, 1))
    y = np.array([-3.0, 0.5, 1.0, 4.0])
    z = (y - mu) / sigma
    exact = sigma * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))
    got = metrics.crps_ensemble(np.broadcast_to(ens, (m, 4)), y, reduce=False)
    # Monte Carlo error of E|X - y| and E|X - X'|: O(sigma / sqrt(M)) = 0.014
    np.testing.assert_allclose(got, exact, atol=4 * sigma / np.sqrt(m))


# ------------------------------------------------------------- calibration


def test_coverage_calibrated_and_overconfident():
    rng = np.random.default_rng(5)
    ens, truth = gaussian_ensemble(rng, 8, 20, 1.0)
    n_points = truth.size
    cov = metrics.coverage(ens, truth, 0.9)
    assert cov.shape == (8,)
    assert cov.mean() == pytest.approx(0.9, abs=4 * np.sqrt(0.09 / n_points) + 0.01)
    narrow, truth = gaussian_ensemble(rng, 8, 20, 0.5)
    assert metrics.coverage(narrow, truth, 0.9).mean() < 0.7
    with pytest.raises(MetricsError, match="level"):
        metrics.coverage(ens, truth, 1.5)


def test_spread_skill_calibrated_and_underdispersed():
    rng = np.random.default_rng(6)
    ens, truth = gaussian_ensemble(rng, 8, 5, 1.0, shape=(32, 32))
    ssr = metrics.spread_skill(ens, truth)
    assert ssr.shape == (8,)
    # (M+1)/M is what makes a 5-member calibrated ensemble score 1, not sqrt(5/6) = 0.91
    assert np.mean(ssr) == pytest.approx(1.0, abs=0.03)
    narrow, truth = gaussian_ensemble(rng, 8, 5, 0.5, shape=(32, 32))
    assert np.all(metrics.spread_skill(narrow, truth) < 0.7)


def test_rank_histogram_flat_and_u_shaped():
    rng = np.random.default_rng(7)
    m = 9
    ens, truth = gaussian_ensemble(rng, 4, m, 1.0, shape=(50, 50))
    counts = metrics.rank_histogram(ens, truth)
    assert counts.shape == (m + 1,) and counts.sum() == truth.size
    expected = truth.size / (m + 1)
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 < stats.chi2.ppf(0.999, df=m)
    narrow, truth = gaussian_ensemble(rng, 4, m, 0.5, shape=(50, 50))
    counts = metrics.rank_histogram(narrow, truth)
    assert min(counts[0], counts[-1]) > 2 * counts[1:m].max()


def test_rank_histogram_ties_are_spread():
    ens = np.zeros((3, 10_000))  # all members tie with the truth
    counts = metrics.rank_histogram(ens, np.zeros(10_000), rng=0)
    assert counts.shape == (4,)
    np.testing.assert_allclose(counts / counts.sum(), 0.25, atol=0.02)


# ------------------------------------------------------------ interfaces


def test_torch_and_numpy_agree():
    rng = np.random.default_rng(8)
    ens, truth = gaussian_ensemble(rng, 3, 6, 1.0, shape=(8, 8))
    t_ens, t_truth = torch.from_numpy(ens).float(), torch.from_numpy(truth).float()
    pairs = [
        (metrics.relative_l2, (ens[:, 0], truth), (t_ens[:, 0], t_truth)),
        (metrics.threshold_error_rate, (ens[:, 0], truth), (t_ens[:, 0], t_truth)),
        (metrics.spectrum_error, (ens[:, 0], truth), (t_ens[:, 0], t_truth)),
        (metrics.crps_ensemble, (ens, truth), (t_ens, t_truth)),
        (metrics.coverage, (ens, truth), (t_ens, t_truth)),
        (metrics.spread_skill, (ens, truth), (t_ens, t_truth)),
        (metrics.rank_histogram, (ens, truth), (t_ens, t_truth)),
    ]
    for fn, np_args, torch_args in pairs:
        from_np = fn(*(a.astype(np.float32).astype(np.float64) for a in np_args))
        from_torch = fn(*torch_args)
        assert isinstance(from_torch, np.ndarray | float), fn.__name__
        np.testing.assert_allclose(from_torch, from_np, rtol=1e-12, err_msg=fn.__name__)
    _, e_np = metrics.energy_spectrum(truth.astype(np.float32).astype(np.float64))
    _, e_t = metrics.energy_spectrum(t_truth.requires_grad_())
    np.testing.assert_allclose(e_t, e_np)


def test_member_axis_inference():
    rng = np.random.default_rng(9)
    ens = rng.standard_normal((4, 4, 3))
    truth = rng.standard_normal((4, 3))
    with pytest.raises(MetricsError, match="pass member_axis"):
        metrics.crps_ensemble(ens, truth)
    a0 = metrics.crps_ensemble(ens, truth, member_axis=0)
    a1 = metrics.crps_ensemble(ens, truth, member_axis=1)
    assert isinstance(a0, float) and a1.shape == (4,)


@pytest.mark.parametrize(
    ("fn", "args", "match"),
    [
        (metrics.relative_l2, (np.ones((2, 3)), np.ones((2, 4))), "same shape"),
        (metrics.relative_l2, (np.ones(3), np.ones(3)), "sample axis"),
        (metrics.crps_ensemble, (np.ones((5, 3)), np.ones(4)), "member axis"),
        (metrics.crps_ensemble, (np.ones((5, 3)), np.ones((5, 3))), "one axis more"),
        (metrics.coverage, (np.ones((2, 5, 3)), np.ones((2, 4))), "member axis"),
        (metrics.spread_skill, (np.ones((1, 3)), np.ones(3)), "2 members"),
        (metrics.energy_spectrum, (np.ones(8),), "two"),
        (metrics.energy_spectrum, (np.ones((8, 8)), -1.0), "positive"),
    ],
)
def test_bad_shapes_raise_value_error(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)


def test_summarize():
    rng = np.random.default_rng(10)
    ens_a = rng.choice([3.0, 12.0], size=(3, 4, 16, 16))
    truth_a = ens_a[:, 0].copy()
    ens_u, truth_u = gaussian_ensemble(rng, 3, 4, 1.0)
    out = metrics.summarize(
        {"a": ens_a, "u": ens_u},
        {"a": truth_a, "u": truth_u},
        levels={"a": (3.0, 12.0)},
        lengths=1.0,
    )
    assert set(out) == {"a", "u"}
    assert {"rel_l2_mean", "rel_l2_member", "crps", "coverage", "spread_skill"} <= set(out["u"])
    assert "error_rate_member" in out["a"] and "error_rate_member" not in out["u"]
    # member 0 is exact, the others disagree on about half of the pixels
    assert out["a"]["error_rate_member"]["mean"] == pytest.approx(0.375, abs=0.03)
    assert out["u"]["crps"]["mean"] == pytest.approx(np.mean(metrics.crps_ensemble(ens_u, truth_u)))
    assert out["u"]["spectrum_error"]["std"] >= 0.0
    with pytest.raises(MetricsError, match="same fields"):
        metrics.summarize({"a": ens_a}, {"u": truth_u})


def test_spectrum_distance_is_zero_for_equal_spectra_and_log_scaled():
    e = np.array([1.0, 0.5, 0.25, 0.125])
    assert metrics.spectrum_distance(e, e, 2) == 0
    assert np.isclose(metrics.spectrum_distance(10 * e, e, 2), 1.0)
    e10 = e.copy()
    e10[3] *= 100  # beyond k_max: left out, as is the mean
    e10[0] *= 100
    assert metrics.spectrum_distance(e10, e, 2) == 0
    # spectrum_error is this distance of the two fields' spectra (RMS over channels)
    rng = np.random.default_rng(0)
    f, g = rng.normal(size=(2, 3, 16, 16)), rng.normal(size=(2, 3, 16, 16))
    _, ef = metrics.energy_spectrum(f)
    _, eg = metrics.energy_spectrum(g)
    d = metrics.spectrum_distance(ef, eg, 8)
    np.testing.assert_allclose(metrics.spectrum_error(f, g), np.sqrt((d**2).mean(axis=1)))
