"""The exact Darcy posterior under its generating prior: the truncated-Gaussian HMC against
closed forms and rejection sampling, the posterior against rejection from the prior itself,
and its row in the evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from pdediff.baselines.exact_prior import darcy_exact_posterior, tmvn_hmc
from pdediff.errors import PdediffError
from pdediff.generate import generate
from pdediff.pde.registry import FAMILIES
from pdediff.solve.evaluate import check_methods, evaluate


def test_hmc_orthant_of_independent_normals_is_half_normal():
    z = tmvn_hmc(np.eye(3), np.array([1.0, -1.0, 1.0]), 4000, np.random.default_rng(0))
    assert np.all(z * [1, -1, 1] > 0)
    # half-normal: mean sqrt(2/pi) = 0.798, variance 1 - 2/pi = 0.363
    np.testing.assert_allclose(np.abs(z).mean(0), np.sqrt(2 / np.pi), atol=0.03)
    np.testing.assert_allclose(z.var(0), 1 - 2 / np.pi, atol=0.03)


def test_hmc_matches_rejection_sampling_of_a_correlated_gaussian():
    cov = np.array([[1.0, 0.8, 0.3], [0.8, 1.0, 0.5], [0.3, 0.5, 1.0]])
    signs = np.array([1.0, 1.0, -1.0])
    rng = np.random.default_rng(1)
    z = tmvn_hmc(cov, signs, 6000, rng)
    ref = rng.multivariate_normal(np.zeros(3), cov, 300_000)
    ref = ref[np.all(ref * signs > 0, axis=1)]
    np.testing.assert_allclose(z.mean(0), ref.mean(0), atol=0.03)
    np.testing.assert_allclose(np.cov(z.T), np.cov(ref.T), atol=0.03)


def test_hmc_refuses_bad_signs():
    with pytest.raises(PdediffError, match="signs of"):
        tmvn_hmc(np.eye(2), np.array([1.0, 0.0]), 2, np.random.default_rng(0))


def _rejection(fam, grid, p, idx, values, n, rng):
    """Prior draws of Darcy's ``a`` that agree with the sensors."""
    keep = []
    while sum(len(k) for k in keep) < n:
        a = np.stack([fam.sample(rng, grid, p)["a"] for _ in range(4000)])
        keep.append(a[np.all(a.reshape(len(a), -1)[:, idx] == values, axis=1)])
    return np.concatenate(keep)[:n]


def test_darcy_posterior_equals_the_prior_conditioned_by_rejection():
    fam = FAMILIES["darcy"]
    grid, p = fam.grid(6), fam.params()
    idx = np.array([7, 20, 28])
    values = np.array([p["a_high"], p["a_low"], p["a_high"]])
    rng = np.random.default_rng(2)
    post = darcy_exact_posterior(grid, p, idx, values, 3000, rng, thin=3)
    ref = _rejection(fam, grid, p, idx, values, 3000, rng)
    high_post = (post["a"] == p["a_high"]).mean(0)
    high_ref = (ref == p["a_high"]).mean(0)
    assert np.abs(high_post - high_ref).max() < 0.06  # binomial s.e. of each ~0.01
    # every member agrees with the sensors, and its u is the reference solve of its a
    assert np.all(post["a"].reshape(3000, -1)[:, idx] == values)
    for a, u in zip(post["a"][:3], post["u"][:3], strict=True):
        np.testing.assert_allclose(u, fam.solve({"a": a}, grid, p)["u"], rtol=1e-12)


@pytest.mark.parametrize(
    ("idx", "values", "message"),
    [
        ([3, 3], [12.0, 12.0], "distinct sensor nodes"),
        ([3, 4], [12.0], "distinct sensor nodes"),
        ([3, 4], [12.0, 7.0], "a_low = 3.0 or a_high = 12.0"),
    ],
)
def test_darcy_posterior_bad_sensors(idx, values, message):
    fam = FAMILIES["darcy"]
    with pytest.raises(PdediffError, match=message):
        darcy_exact_posterior(
            fam.grid(6), None, np.array(idx), np.array(values), 2, np.random.default_rng(0)
        )


def test_exact_prior_row_of_an_evaluation(checkpoint):
    data = generate("darcy", 2, 8, seed=3, progress=False)
    table = evaluate(
        checkpoint, data, task="forward", methods=["exact-prior"], points=10, members=4,
        samples=2, progress=False, baseline_options={"exact-prior": {"members": 6}},
    )  # fmt: skip
    rows = [r for r in table.rows if r["field"] == "u"]
    assert len(rows) == 2 and all(r["members"] == 6 and r["error"] == "" for r in rows)
    assert all(0 < r["rel_l2_mean"] < r["rel_l2_member"] for r in rows)
    assert all(r["coverage90"] is not None for r in rows)


def test_exact_prior_is_for_forward_darcy_only():
    assert check_methods(["exact-prior"], "forward", FAMILIES["darcy"]) == ("exact-prior",)
    with pytest.raises(PdediffError, match="prior of 'darcy' data only"):
        check_methods(["exact-prior"], "forward", FAMILIES["poisson"])
    with pytest.raises(PdediffError, match="does not solve the inverse task"):
        check_methods(["exact-prior"], "inverse", FAMILIES["darcy"])
