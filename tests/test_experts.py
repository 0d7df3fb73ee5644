"""Product of experts (pdediff.solve.experts): the product identity on exact Gaussian
denoisers, identical experts, conditioning with CFG, solve attrs, spec mismatches, the CLI."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import xarray as xr

import pdediff.train
from pdediff.cli import main
from pdediff.core.compose import cfg, product_of_experts
from pdediff.core.samplers import sample_heun, sample_pc
from pdediff.core.schedules import karras_sigmas
from pdediff.core.types import expand_sigma
from pdediff.errors import PdediffError
from pdediff.generate import generate
from pdediff.io import FieldSpec
from pdediff.io.observations import observations_from_truth, write_observations
from pdediff.solve import solve
from pdediff.solve.experts import (
    check_expert_spec,
    compose_experts,
    expert_weights,
    parse_expert,
)
from pdediff.train import load_checkpoint

DT = torch.float64


def gaussian_denoiser(m: float, s: float):
    """Exact denoiser of N(m, s^2): D = m + s^2 / (s^2 + sigma^2) (x - m)."""

    def D(x, sigma, cond=None):
        return m + s**2 / (s**2 + expand_sigma(sigma, x) ** 2) * (x - m)

    return D


def tiny_spec(**changes) -> FieldSpec:
    base = {
        "variables": ("u",),
        "dims": ("y", "x"),
        "coords": {"y": [0.0, 1.0], "x": [0.0, 1.0]},
        "mean": (0.0,),
        "std": (1.0,),
    }
    return FieldSpec(**{**base, **changes})


@pytest.fixture(scope="module")
def obs():
    truth = generate("darcy", 4, 8, seed=0, progress=False).isel(sample=[3])
    return observations_from_truth(truth, ["u"], count=6, seed=0)[0]


# -- the product identity ----------------------------------------------------------------
def test_gaussian_experts_compose_to_the_product_with_langevin_correction():
    """N(m1, s1^2) N(m2, s2^2) ∝ N(m, q^2), 1/q^2 = 1/s1^2 + 1/s2^2, m = q^2 (m1/s1^2 + m2/s2^2).

    The summed scores are exactly the product's at sigma -> 0 but not at larger sigma
    (noising does not commute with the product), so the probability-flow ODE misses the
    product while Langevin corrector steps at each level recover it (Du et al. 2023).
    """
    (m1, s1), (m2, s2) = (0.5, 0.6), (-1.0, 1.3)
    q2 = 1 / (1 / s1**2 + 1 / s2**2)
    m, q = q2 * (m1 / s1**2 + m2 / s2**2), math.sqrt(q2)
    poe = product_of_experts([gaussian_denoiser(m1, s1), gaussian_denoiser(m2, s2)], [1.0, 1.0])
    x = torch.linspace(-3, 3, 7, dtype=DT).reshape(7, 1, 1, 1)
    product = gaussian_denoiser(m, q)
    for sig in (1e-3, 1e-2):
        sigma = torch.tensor(sig, dtype=DT)
        torch.testing.assert_close(poe(x, sigma), product(x, sigma), rtol=0, atol=30 * sig**4)

    n, sigmas = 4000, karras_sigmas(40, dtype=DT)
    gen = torch.Generator().manual_seed(0)
    x0 = sigmas[0] * torch.randn(n, 1, 1, 1, generator=gen, dtype=DT)
    out = sample_pc(poe, x0, sigmas, generator=gen, n_corrector=5).flatten()
    assert abs(out.mean().item() - m) < 4 * q / math.sqrt(n)
    assert abs(out.std().item() / q - 1) < 0.05
    ode = sample_heun(poe, x0, sigmas).flatten()
    assert ode.std().item() < 0.1 * q  # weights summing to 2: the ODE collapses


def test_identical_experts_with_weights_summing_to_one_are_the_model(checkpoint):
    main_model, spec, _ = load_checkpoint(checkpoint)
    composed, attrs = compose_experts(main_model, spec, [(checkpoint, 0.3), (checkpoint, 0.2)])
    assert attrs["main_weight"] == pytest.approx(0.5)
    assert [e["weight"] for e in json.loads(attrs["experts"])] == [0.3, 0.2]
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for sig in (0.05, 1.0, 40.0):
            sigma = torch.full((3,), sig)
            torch.testing.assert_close(composed(x, sigma), main_model(x, sigma))


# -- conditioning ------------------------------------------------------------------------
def test_conditioned_models_are_bound_with_cfg_before_composing(monkeypatch):
    """A conditioned expert gets its own condition and CFG; an unconditioned one gets None;
    the composition equals CFG applied on top of the product (both are affine)."""
    cond_spec = tiny_spec(conditions={"k": {"low": 1.0, "high": 5.0}})

    def conditioned(x, sigma, cond=None):
        v = cond["vector"][:, 0]
        if "drop" in cond:  # the learned null condition: 0
            v = torch.where(cond["drop"], 0.0, v)
        return 0.5 * x + 1.0 + v.reshape(-1, 1, 1, 1)

    def unconditioned(x, sigma, cond=None):
        assert cond is None, "an unconditioned expert must not see a condition"
        return 0.25 * x - 1.0

    models = {"narrow": (conditioned, cond_spec), "plain": (unconditioned, tiny_spec())}
    monkeypatch.setattr(
        pdediff.train, "load_checkpoint", lambda p, device="cpu": (*models[p], None)
    )
    cond = {"vector": torch.tensor([[0.5]])}  # k = 4 on [1, 5]
    composed, attrs = compose_experts(
        conditioned,
        cond_spec,
        [("narrow", 0.3), ("plain", 0.2)],
        cond=cond,
        condition={"k": 4.0},
        cfg_weight=2.0,
        members=2,
    )
    x, sigma = torch.randn(2, 1, 2, 2), torch.tensor(0.7)
    bound = {"vector": cond["vector"].expand(2, 1)}
    guided = cfg(conditioned, 2.0)(x, sigma, bound)
    expected = x + 0.5 * (guided - x) + 0.3 * (guided - x) + 0.2 * (unconditioned(x, sigma) - x)
    torch.testing.assert_close(composed(x, sigma, {"ignored": torch.zeros(2)}), expected)
    on_top = cfg(product_of_experts([conditioned, conditioned], [0.5, 0.3]), 2.0)(x, sigma, bound)
    torch.testing.assert_close(expected, on_top + 0.2 * (unconditioned(x, sigma) - x))

    with pytest.raises(PdediffError, match="missing condition.*expert narrow"):
        compose_experts(unconditioned, tiny_spec(), [("narrow", 0.5)])


def test_solve_with_a_conditioned_model_and_itself_as_expert_keeps_cfg(tmp_path):
    """Weights summing to 1 over copies of one conditioned model: the composed sample is the
    model's own CFG sample (CFG bound per model, then composed).  A 3-step model barely
    depends on k, so the CFG algebra itself is checked on the fakes above."""
    data = generate("helmholtz", 8, 8, seed=0, progress=False, param_ranges={"k": (1.0, 4.0)})
    config = {
        "model": {"backbone_kwargs": {"model_channels": 8, "channel_mult": [1, 2]}},
        "batch_size": 4,
        "steps": 3,
        "log_every": 3,
        "checkpoint_every": 3,
        "condition": ["k"],
    }
    model = tmp_path / "cond"
    pdediff.train.train(data, model, pdediff.train.TrainConfig.from_dict(config), progress=False)
    truth = generate("helmholtz", 1, 8, seed=7, progress=False, params={"k": 2.5})
    obs, _ = observations_from_truth(truth, ["u"], count=6, seed=0)
    kw = {"task": "inverse", "members": 2, "condition": {"k": 2.5}, "progress": False}
    kw["protocol"] = {"steps": 3, "cfg_weight": 1.5}
    plain = solve(model, obs, **kw)
    ds = solve(model, obs, experts=[(model, 0.5)], **kw)
    np.testing.assert_allclose(ds["a"], plain["a"], rtol=1e-4, atol=1e-4)
    assert ds.attrs["cfg_weight"] == 1.5 and json.loads(ds.attrs["condition"]) == {"k": 2.5}
    assert json.loads(ds.attrs["protocol"])["cfg_weight"] == 1.5


# -- checks and parsing ------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes, message",
    [
        ({"variables": ("v",)}, "variables"),
        ({"coords": {"y": [0.0, 2.0], "x": [0.0, 1.0]}}, "grid"),
        ({"mean": (0.1,)}, "normalisation.*same FieldSpec"),
        ({"std": (2.0,)}, "normalisation.*same FieldSpec"),
    ],
)
def test_an_expert_with_another_fieldspec_is_refused(changes, message):
    check_expert_spec(tiny_spec(), tiny_spec(attrs={"pde": "darcy"}), "same")
    with pytest.raises(PdediffError, match=f"expert narrow_run .*{message}"):
        check_expert_spec(tiny_spec(), tiny_spec(**changes), "narrow_run")


def test_parse_expert_and_weights():
    assert parse_expert("runs/narrow:0.3") == ("runs/narrow", 0.3)
    assert parse_expert("C:/runs/narrow:-0.5") == ("C:/runs/narrow", -0.5)
    for bad in ("runs/narrow", ":0.3", "runs/narrow:x"):
        with pytest.raises(PdediffError, match="DIR:WEIGHT"):
            parse_expert(bad)
    assert expert_weights([0.25, 0.25]) == [0.5, 0.25, 0.25]
    assert expert_weights([1.0], main_weight=1.0) == [1.0, 1.0]
    with pytest.raises(PdediffError, match="finite"):
        expert_weights([math.nan])


# -- solve and the CLI ---------------------------------------------------------------------
def test_solve_with_experts_records_them_and_refuses_a_mismatched_spec(checkpoint, obs, tmp_path):
    kw = {"task": "inverse", "members": 2, "protocol": {"steps": 3}, "progress": False}
    plain = solve(checkpoint, obs, **kw)
    ds = solve(checkpoint, obs, experts=[(checkpoint, 0.4)], **kw)
    assert json.loads(ds.attrs["experts"]) == [{"model": str(checkpoint), "weight": 0.4}]
    assert ds.attrs["main_weight"] == pytest.approx(0.6)
    np.testing.assert_allclose(ds["u"], plain["u"], rtol=1e-4, atol=1e-4)
    with pytest.raises(PdediffError, match="give experts"):
        solve(checkpoint, obs, main_weight=0.5, **kw)

    other = tmp_path / "other"
    shutil.copytree(checkpoint, other)
    spec = json.loads((other / "fieldspec.json").read_text())
    spec["std"] = [2 * s for s in spec["std"]]
    (other / "fieldspec.json").write_text(json.dumps(spec))
    with pytest.raises(PdediffError, match=f"expert {other} .*same FieldSpec"):
        solve(checkpoint, obs, experts=[(other, 0.5)], **kw)


def test_solve_cli_with_experts(checkpoint, obs, tmp_path, capsys):
    obs_path = write_observations(obs, tmp_path / "obs.nc")
    out = tmp_path / "post.nc"
    argv = ["solve", "--model", str(checkpoint), "--obs", str(obs_path), "--task", "inverse"]
    argv += ["--members", "2", "--steps", "2", "-o", str(out), "--quiet"]
    experts = ["--expert", f"{checkpoint}:0.5", "--expert", f"{checkpoint}:0.25"]
    assert main([*argv, *experts, "--main-weight", "1"]) == 0
    with xr.open_dataset(out) as ds:
        assert [e["weight"] for e in json.loads(ds.attrs["experts"])] == [0.5, 0.25]
        assert ds.attrs["main_weight"] == 1.0
    assert main([*argv, "--overwrite", "--expert", str(checkpoint)]) == 2
    assert "DIR:WEIGHT" in capsys.readouterr().err
