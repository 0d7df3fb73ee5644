"""The DiffusionPDE solver: guidance on an analytic Gaussian prior, the PDE residual term,
the end-to-end API and CLI on a tiny trained model, and bad input."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import xarray as xr

from pdediff.cli import main
from pdediff.errors import PdediffError
from pdediff.generate import generate
from pdediff.io import FieldSpec, write_fields
from pdediff.io.observations import (
    build_operator,
    observations_from_truth,
    write_observations,
)
from pdediff.pde.registry import FAMILIES
from pdediff.solve import DIFFUSIONPDE, Protocol, sample_posterior, solve
from pdediff.solve.posterior import guidance_terms, pde_residual_fn


@pytest.fixture(scope="module")
def darcy():
    return generate("darcy", 12, 8, seed=0, progress=False)


def standard_normal_denoiser(x, sigma, cond=None):
    """Exact denoiser of the prior N(0, I): E[x0 | x] = x / (1 + sigma^2)."""
    s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return x / (1 + s**2)


def unit_spec(ds: xr.Dataset) -> FieldSpec:
    return FieldSpec.from_dataset(ds, ["a", "u"], normalise=False)


def test_observations_pull_observed_points_and_leave_the_rest_to_the_prior(darcy):
    truth = darcy.isel(sample=[0])
    truth = truth.assign(a=truth["a"] * 0 + 1.5)  # target values 1.5 under a N(0, 1) prior
    spec = unit_spec(truth)
    obs, _ = observations_from_truth(truth, ["a"], count=6, seed=1)
    model = build_operator(obs, spec)
    protocol = Protocol(sampler="heun", steps=60, obs_weight={"a": 0.3})
    x = sample_posterior(standard_normal_denoiser, spec, model, protocol, members=400, seed=2)
    observed = model.operator(x.double())
    # every member is pulled onto the observations (step correction, unsquared norm)
    assert (observed - 1.5).abs().mean() < 0.1
    mask = torch.zeros(spec.shape, dtype=torch.bool)
    idx = np.searchsorted(spec.coords["y"], obs.fields["a"].positions["y"])
    jdx = np.searchsorted(spec.coords["x"], obs.fields["a"].positions["x"])
    mask[idx, jdx] = True
    free = x[:, 0][:, ~mask]
    # unobserved pixels of an independent prior stay N(0, 1): mean within 5 standard errors
    assert abs(free.mean()) < 5 / np.sqrt(free.numel())
    assert abs(free.std() - 1) < 0.05
    # the unobserved channel is untouched
    assert abs(x[:, 1].std() - 1) < 0.05


def test_without_guidance_the_sampler_returns_the_prior(darcy):
    spec = unit_spec(darcy.isel(sample=[0]))
    obs, _ = observations_from_truth(darcy.isel(sample=[0]), ["a"], count=4, seed=0)
    model = build_operator(obs, spec)
    protocol = Protocol(steps=40, default_obs_weight=0.0)
    x = sample_posterior(standard_normal_denoiser, spec, model, protocol, members=200, seed=0)
    assert abs(x.mean()) < 0.02 and abs(x.std() - 1) < 0.02


def test_pde_residual_term_is_zero_at_the_truth_and_scale_free(darcy):
    spec = FieldSpec.from_dataset(darcy, ["a", "u"])
    fam = FAMILIES["darcy"]
    fn = pde_residual_fn(fam, spec, {})
    x = spec.to_tensor(darcy).double()
    r_truth = fn(x).flatten(1).pow(2).mean(1).sqrt()
    assert r_truth.max() < 1e-4  # float32 storage of an exact solve
    noisy = x + 0.05 * torch.randn_like(x)
    assert fn(noisy).flatten(1).pow(2).mean(1).sqrt().min() > 1e-2
    # the same physics in other units (u scaled by 1000, f by 1000) gives the same loss
    scaled = darcy.assign(u=darcy["u"] * 1000)
    spec_s = FieldSpec.from_dataset(scaled, ["a", "u"])
    fn_s = pde_residual_fn(fam, spec_s, {"f": 1000.0})
    torch.testing.assert_close(
        fn_s(spec_s.normalise(spec_s.denormalise(spec_s.to_tensor(scaled).double())) + 0 * noisy),
        fn_s(spec_s.to_tensor(scaled).double()),
    )


def test_diffusionpde_protocol_switches_terms(darcy):
    spec = FieldSpec.from_dataset(darcy, ["a", "u"])
    obs, _ = observations_from_truth(darcy.isel(sample=[0]), ["a", "u"], count=5, seed=0)
    model = build_operator(obs, spec)
    from pdediff.core.schedules import karras_sigmas

    sigmas = karras_sigmas(100)
    proto = DIFFUSIONPDE.with_overrides(obs_weight={"a": 5.0, "u": 0.0})
    terms = guidance_terms(model, spec, proto, sigmas, pde_residual_fn(FAMILIES["darcy"], spec, {}))
    names = [t.name for t, _ in terms]
    assert names == ["obs_a", "pde"]
    (_, w_obs), (_, w_pde) = terms
    early, late = sigmas[10:11].double(), sigmas[95:96].double()
    assert float(w_obs(early)) == 5.0 and float(w_obs(late)) == 0.5
    assert float(w_pde(early)) == 0.0 and float(w_pde(late)) == 100.0


def test_bad_protocols(darcy):
    spec = unit_spec(darcy.isel(sample=[0]))
    obs, _ = observations_from_truth(darcy.isel(sample=[0]), ["a"], count=4, seed=0)
    model = build_operator(obs, spec)
    for proto, msg in [
        (Protocol(sampler="rk45"), "unknown sampler 'rk45'"),
        (Protocol(steps=0), "steps must be >= 1"),
        (Protocol(obs_weight={"b": 1.0}), r"unknown field\(s\) \['b'\]"),
        (Protocol(pde_weight=-1.0), "must be >= 0"),
        (Protocol(consistency_steps=-1), "consistency_steps must be >= 0"),
        (Protocol(consistency_steps=2, consistency_lr=0.0), "consistency_lr > 0"),
    ]:
        with pytest.raises(PdediffError, match=msg):
            sample_posterior(standard_normal_denoiser, spec, model, proto)
    with pytest.raises(PdediffError, match="members must be >= 1"):
        sample_posterior(standard_normal_denoiser, spec, model, Protocol(), members=0)


def test_blow_up_is_reported_with_what_to_lower(darcy):
    spec = unit_spec(darcy.isel(sample=[0]))
    obs, _ = observations_from_truth(darcy.isel(sample=[0]), ["a"], count=4, seed=0)
    model = build_operator(obs, spec)

    def fragile(x, sigma, cond=None):  # a network whose output overflows for large inputs
        return standard_normal_denoiser(x, sigma) + 1e-3 * x**3

    with pytest.raises(FloatingPointError, match=r"blew up .*lower the guidance weight.*1000000"):
        proto = Protocol(steps=10, obs_weight={"a": 1e6})
        sample_posterior(fragile, spec, model, proto, members=2)


@pytest.mark.parametrize(
    "task, fields", [("forward", ["a"]), ("inverse", ["u"]), ("joint", ["a", "u"])]
)
def test_solve_api_returns_a_posterior_dataset(checkpoint, darcy, task, fields):
    obs, _ = observations_from_truth(darcy.isel(sample=[3]), ["a", "u"], count=6, seed=0)
    ds = solve(checkpoint, obs, task=task, members=3, protocol={"steps": 4}, progress=False)
    assert ds["a"].dims == ("member", "y", "x") and ds.sizes["member"] == 3
    assert {"a_mean", "a_std", "u_mean", "u_std"} <= set(ds.data_vars)
    assert sorted(v[4:] for v in ds.data_vars if v.startswith("obs_")) == fields
    assert ds.attrs["task"] == task and ds.attrs["pde_guidance"] == "none"
    np.testing.assert_allclose(ds["a_mean"], ds["a"].mean("member"), rtol=1e-5)
    xr.testing.assert_equal(ds["x"], darcy["x"])


def test_solve_cli_end_to_end_and_bad_input(checkpoint, darcy, tmp_path, capsys):
    obs, _ = observations_from_truth(darcy.isel(sample=[3]), ["u"], count=6, seed=0)
    obs_path = write_observations(obs, tmp_path / "obs.nc")
    out, fig = tmp_path / "post.nc", tmp_path / "post.png"
    argv = [
        "solve",
        "--model",
        str(checkpoint),
        "--obs",
        str(obs_path),
        "--task",
        "inverse",
        "--members",
        "2",
        "--steps",
        "3",
        "-o",
        str(out),
        "--plot",
        str(fig),
        "--quiet",
    ]
    assert main(argv) == 0
    assert out.exists() and fig.read_bytes()[:4] == b"\x89PNG"
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    bad = [
        "solve",
        "--model",
        str(checkpoint),
        "--obs",
        str(obs_path),
        "--task",
        "forward",
        "-o",
        str(tmp_path / "x.nc"),
        "--quiet",
    ]
    assert main(bad) == 2
    assert "coefficient fields ['a']" in capsys.readouterr().err
    assert not (tmp_path / "x.nc").exists()
    write_fields(darcy.isel(sample=[0]), tmp_path / "truth.nc")


@pytest.mark.parametrize(
    ("name", "resolution"), [("poisson", 9), ("darcy", 9), ("navier_stokes", 8)]
)
def test_solver_mode_returns_exact_solutions_and_fits_the_u_sensors(name, resolution):
    """The solution channel is the family's reference solution of the sampled coefficient
    (Navier-Stokes: the flow map with residual_dt, ~1e-6 from the reference), and guidance
    through the differentiable solver pulls it onto the solution's sensors."""
    fam = FAMILIES[name]
    coef, sol = fam.coefficient_solution()
    ds = generate(name, 4, resolution, seed=3, progress=False)
    spec = FieldSpec.from_dataset(ds, [coef, sol])
    obs, _ = observations_from_truth(ds.isel(sample=[0]), [sol], count=12, seed=0)
    model = build_operator(obs, spec)
    misfit = {}
    protocols = {
        "none": Protocol(steps=30, default_obs_weight=0.0, solver=True),
        "step": Protocol(steps=30, default_obs_weight=1.0, solver=True),
        "consistency": Protocol(steps=30, solver=True, consistency_steps=5, consistency_lr=0.05),
    }
    for key, proto in protocols.items():
        x = sample_posterior(
            standard_normal_denoiser, spec, model, proto, members=6, family=fam, seed=1
        )
        phys = spec.denormalise(x.double())
        for a, u in zip(phys[:, 0].numpy(), phys[:, 1].numpy(), strict=True):
            ref = fam.solve({coef: a}, spec.grid(), {})[sol]
            np.testing.assert_allclose(u, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
            if name == "darcy":  # clipped to the prior's two levels' range
                assert a.min() >= 3.0 - 1e-5 and a.max() <= 12.0 + 1e-5
        misfit[key] = float((model.operator(x.double()) - model.y).norm(dim=1).mean())
    # u is never sampled, yet guidance through the solver pulls it onto the sensors
    assert misfit["step"] < 0.7 * misfit["none"]
    assert misfit["consistency"] < 0.7 * misfit["none"]


def test_coefficient_solution_pairs():
    assert FAMILIES["darcy"].coefficient_solution() == ("a", "u")
    assert FAMILIES["navier_stokes"].coefficient_solution() == ("w0", "w")
    with pytest.raises(PdediffError, match="'burgers' has coefficient fields \\[\\]"):
        FAMILIES["burgers"].coefficient_solution()


def test_burgers_has_no_solver_mode():
    """Burgers' only field is the solution: no coefficient to sample, so solver=True is a
    clear error and the default preset samples the field (solver=None)."""
    from pdediff.solve.posterior import solver_families, solver_map, uses_solver

    fam = FAMILIES["burgers"]
    assert "burgers" not in solver_families() and "navier_stokes" in solver_families()
    assert not uses_solver(Protocol(solver=None), fam)
    spec = FieldSpec.from_dataset(generate("burgers", 2, 8, seed=0, progress=False), ["u"])
    with pytest.raises(PdediffError, match="differentiable solver"):
        solver_map(fam, spec, {})


def test_model_guidance_file_and_presets(checkpoint, darcy, tmp_path):
    import json
    import shutil

    from pdediff.solve.api import resolve_protocol

    model = tmp_path / "model"
    shutil.copytree(checkpoint, model)
    (model / "guidance.json").write_text(json.dumps({"pdediff": {"inverse": {"steps": 3}}}))
    assert resolve_protocol(model, "pdediff", "inverse").steps == 3
    assert resolve_protocol(model, "pdediff", "forward").steps == 32
    assert resolve_protocol(model, "pdediff", "inverse", {"steps": 5}).steps == 5
    obs, _ = observations_from_truth(darcy.isel(sample=[3]), ["u"], count=6, seed=0)
    ds = solve(model, obs, task="inverse", members=2, progress=False)
    assert ds.attrs["solver"] == "darcy reference solver"
    assert json.loads(ds.attrs["protocol"])["steps"] == 3
    ds = solve(model, obs, task="inverse", members=2, preset="joint", protocol={"steps": 2})
    assert ds.attrs["solver"] == "none"
    # settings tuned at several sensor counts: the solve takes those of the nearest count
    by_points = {"6": {"steps": 2}, "40": {"steps": 4}}
    entry = {"inverse": {"steps": 3, "by_points": by_points}}
    (model / "guidance.json").write_text(json.dumps({"pdediff": entry}))
    assert resolve_protocol(model, "pdediff", "inverse").steps == 3
    assert resolve_protocol(model, "pdediff", "inverse", points=20).steps == 4
    ds = solve(model, obs, task="inverse", members=2, progress=False)
    assert json.loads(ds.attrs["protocol"])["steps"] == 2
    more, _ = observations_from_truth(darcy.isel(sample=[3]), ["u"], count=30, seed=0)
    ds = solve(model, more, task="inverse", members=2, progress=False)
    assert json.loads(ds.attrs["protocol"])["steps"] == 4
    (model / "guidance.json").write_text(json.dumps({"pdediff": {"inverse": {"stepz": 3}}}))
    with pytest.raises(PdediffError, match=r"unknown protocol setting\(s\) \['stepz'\]"):
        resolve_protocol(model, "pdediff", "inverse")


def test_demo_runs_on_a_model_and_writes_posteriors_and_figures(checkpoint, tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--model", str(checkpoint), "--out", str(out), "--points", "8"]
    assert main([*argv, "--members", "2", "--steps", "2"]) == 0
    text = capsys.readouterr().out
    assert "classical (pde-fit)" in text and "classical (interp-solve)" in text
    assert text.count("exact posterior (2)") == 1  # Darcy's forward problem only
    for task in ("inverse", "forward"):
        post = xr.open_dataset(out / f"{task}.nc")
        assert post.sizes["member"] == 2 and {"a_true", "u_true", "a_std"} <= set(post)
        assert (out / f"{task}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("family", "tasks", "baselines"),
    [("navier_stokes", ("inverse", "forward"), True), ("burgers", ("joint",), False)],
)
def test_demo_on_other_families(family, tasks, baselines, tmp_path, capsys):
    """The demo takes any family's model: Navier-Stokes gets the inverse (w -> w0) and
    forward tasks with their classical baselines, Burgers (one field) the joint task."""
    from pdediff.train import TrainConfig, train

    cfg = TrainConfig.from_dict(
        {
            "model": {"backbone_kwargs": {"model_channels": 8, "channel_mult": [1, 2]}},
            "batch_size": 4,
            "steps": 2,
            "checkpoint_every": 2,
        }
    )
    model = tmp_path / "model"
    train(generate(family, 4, 8, seed=0, progress=False), model, cfg, progress=False)
    out = tmp_path / "demo"
    argv = ["demo", "--model", str(model), "--out", str(out), "--points", "8"]
    assert main([*argv, "--members", "2", "--steps", "2"]) == 0
    text = capsys.readouterr().out
    assert ("classical (pde-fit)" in text) is baselines
    assert "err% = pixels" not in text  # no two-level coefficient
    assert "exact posterior" not in text  # Darcy's prior only
    assert sorted(p.name for p in out.glob("*.nc")) == sorted(f"{t}.nc" for t in tasks)
    fields = set(FAMILIES[family].fields)
    post = xr.open_dataset(out / f"{tasks[0]}.nc")
    assert {f"{f}_true" for f in fields} <= set(post)


def test_sampler_options_reach_the_sampler_and_are_checked(darcy):
    spec = unit_spec(darcy.isel(sample=[0]))
    obs, _ = observations_from_truth(darcy.isel(sample=[0]), ["a"], count=4, seed=0)
    model = build_operator(obs, spec)
    one = Protocol(sampler="pc", steps=5, sampler_options={"n_corrector": 1})
    three = one.with_overrides(sampler_options={"n_corrector": 3})
    x1 = sample_posterior(standard_normal_denoiser, spec, model, one, members=2, seed=0)
    x3 = sample_posterior(standard_normal_denoiser, spec, model, three, members=2, seed=0)
    assert not torch.equal(x1, x3)
    with pytest.raises(PdediffError, match=r"has no option\(s\) \['n_correctr'\]"):
        bad = one.with_overrides(sampler_options={"n_correctr": 3})
        sample_posterior(standard_normal_denoiser, spec, model, bad, members=2)


def test_consistency_below_its_sigma_max_and_the_step_correction_above():
    """``consistency_sigma_max`` splits the guidance: the DiffusionPDE step correction on
    the noisy steps, data consistency on the estimates below it."""
    from pdediff.core.guidance import ObservationTerm, consistency_correction, step_correction
    from pdediff.solve.posterior import _correction

    def denoiser(x, sigma, cond=None):
        return 0.9 * torch.tanh(x) / (1 + torch.as_tensor(sigma, dtype=x.dtype) ** 2)

    y = torch.tensor([[0.5, -0.2]], dtype=torch.float64)
    terms = [(ObservationTerm(lambda x0: x0.flatten(1)[:, :2], y, name="obs"), 2.0)]
    proto = Protocol(consistency_steps=3, consistency_lr=0.1, consistency_sigma_max=1.0)
    both = _correction(denoiser, terms, proto)
    step = step_correction(denoiser, terms)
    consistency = consistency_correction(denoiser, terms, 3, 0.1)
    x = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for sig, ref, other in ((3.0, step, consistency), (0.5, consistency, step)):
        sigma = torch.tensor(sig, dtype=torch.float64)
        out = both(x, sigma, denoiser(x, sigma), 0)
        torch.testing.assert_close(out, ref(x, sigma, denoiser(x, sigma), 0))
        assert not torch.allclose(out, other(x, sigma, denoiser(x, sigma), 0))
    whole = _correction(denoiser, terms, replace(proto, consistency_sigma_max=None))
    sigma = torch.tensor(3.0, dtype=torch.float64)
    torch.testing.assert_close(whole(x, sigma, x, 0), consistency(x, sigma, x, 0))


def test_observations_of_a_need_no_solve_in_solver_mode(darcy, monkeypatch):
    """In solver mode an observation of the coefficient acts on the clipped estimate alone:
    the same loss and gradient as through the full solver map, without its solve."""
    from pdediff.core.schedules import karras_sigmas
    from pdediff.pde import adjoint
    from pdediff.solve import posterior

    spec = FieldSpec.from_dataset(darcy, ["a", "u"])
    obs, _ = observations_from_truth(darcy.isel(sample=[0]), ["a", "u"], count=6, seed=0)
    model = build_operator(obs, spec, normalised=True)
    fam, proto = FAMILIES["darcy"], Protocol(default_obs_weight=1.0, solver=True)
    solved = posterior.solver_map(fam, spec, {})
    clipped = posterior.solver_map(fam, spec, {}, solve=False)
    sigmas = karras_sigmas(8, dtype=torch.float64)
    full = posterior.guidance_terms(model, spec, proto, sigmas, None, solved)
    fast = posterior.guidance_terms(model, spec, proto, sigmas, None, solved, clipped, ("a",))
    x0 = torch.randn(
        3, 2, *spec.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    calls = []
    real = adjoint.solve_torch
    monkeypatch.setattr(adjoint, "solve_torch", lambda *a, **k: calls.append(1) or real(*a, **k))
    for (t_full, _), (t_fast, _) in zip(full, fast, strict=True):
        grads = []
        for term in (t_full, t_fast):
            x = x0.clone().requires_grad_(True)
            loss = term.loss(x).sum()
            grads.append((loss.detach(), torch.autograd.grad(loss, x)[0]))
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)
    # the a term of the full map solves, the fast one does not; u needs the solve in both
    assert len(calls) == 3


@pytest.mark.parametrize("members", [4, 8, 39])
def test_demo_calibrated_coverage_is_what_the_metric_gives_a_calibrated_ensemble(members):
    from pdediff.demo import _calibrated_coverage
    from pdediff.metrics import coverage

    rng = np.random.default_rng(members)
    ens, truth = rng.standard_normal((members, 40_000)), rng.standard_normal(40_000)
    assert coverage(ens, truth) == pytest.approx(_calibrated_coverage(members), abs=0.01)
