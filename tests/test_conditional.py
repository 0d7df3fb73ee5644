"""Conditioned models and classifier-free guidance: data with per-sample parameters, a
conditional training run, CFG at sampling, the condition in the PDE physics, errors, CLI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from conditioned import TINY, forward_with_every_node

from pdediff.cli import main
from pdediff.core.compose import cfg
from pdediff.errors import PdediffError, PdediffWarning
from pdediff.generate import draw_block, generate
from pdediff.inspection import pde_residuals
from pdediff.io import FieldSpec, open_fields, write_fields
from pdediff.io.conditions import encode_conditions
from pdediff.io.observations import observations_from_truth, write_observations
from pdediff.pde.registry import FAMILIES
from pdediff.solve import solve
from pdediff.solve.posterior import conditioned_denoiser
from pdediff.train import ConfigError, TrainConfig, read_checkpoint, train
from pdediff.train.checkpoint import read_tensors

RANGE = {"k": (1.0, 4.0)}  # below the first Dirichlet resonance of the 8x8 grid (k ~ 4.4)
TINY_TOML = """
batch_size = 4
log_every = 3
checkpoint_every = 3
[model.backbone_kwargs]
model_channels = 8
channel_mult = [1, 2]
"""


def tiny(**changes) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, **changes})


@pytest.fixture(scope="module")
def helmholtz():
    return generate("helmholtz", 12, 8, seed=0, progress=False, param_ranges=RANGE)


@pytest.fixture(scope="module")
def model(tmp_path_factory, helmholtz):
    """A Helmholtz (a, u) model conditioned on k, after 6 steps."""
    out = tmp_path_factory.mktemp("cond") / "run"
    train(helmholtz, out, tiny(steps=6, condition=["k"]), progress=False)
    return out


@pytest.fixture(scope="module")
def truth():
    """One Helmholtz sample at k = 2.5 (a test sample the model has not seen)."""
    return generate("helmholtz", 1, 8, seed=7, progress=False, params={"k": 2.5})


# -- data ---------------------------------------------------------------------------------
def test_param_range_is_reproducible_and_stored_per_sample(helmholtz):
    ds = helmholtz
    again = generate("helmholtz", 12, 8, seed=0, progress=False, param_ranges=RANGE, chunk=5)
    for v in ("a", "u", "k"):
        np.testing.assert_array_equal(ds[v].values, again[v].values)
    k = ds["k"].values
    assert ds["k"].dims == ("sample",) and ds["k"].attrs["long_name"]
    assert k.min() >= 1.0 and k.max() < 4.0 and len(set(k.tolist())) == k.size
    np.testing.assert_array_equal(ds.attrs["param_range_k"], [1.0, 4.0])
    assert "param_k" not in ds.attrs and ds.attrs["param_tau"] == 3.0
    # one sample alone (as a worker computes it) has the same value and fields
    one = draw_block("helmholtz", 8, {}, 0, 5, 6, ranges=RANGE)
    assert one["k"][0] == k[5] and np.array_equal(one["u"][0], ds["u"].values[5])
    # the coefficients are those of the same seed without a range: only k changes
    fixed = generate("helmholtz", 12, 8, seed=0, progress=False)
    np.testing.assert_array_equal(ds["a"].values, fixed["a"].values)
    assert not np.array_equal(ds["u"].values, fixed["u"].values)
    other = generate("helmholtz", 3, 8, seed=1, progress=False, param_ranges=RANGE)
    assert not np.array_equal(other["k"].values, k[:3])


def test_each_sample_is_solved_with_its_own_value(helmholtz, tmp_path):
    # float32 storage of exact solves: round-off, sample by sample with its own k
    exact = pde_residuals(helmholtz)
    assert exact.max() < 1e-5
    shuffled = helmholtz.assign(k=("sample", np.roll(helmholtz["k"].values, 1)))
    assert pde_residuals(shuffled).min() > 100 * exact.max()  # another sample's k: not solved
    back = open_fields(write_fields(helmholtz, tmp_path / "h.nc"))
    np.testing.assert_array_equal(back["k"].values, helmholtz["k"].values)
    np.testing.assert_array_equal(back.attrs["param_range_k"], [1.0, 4.0])


def test_bad_param_ranges():
    with pytest.raises(PdediffError, match="unknown parameter"):
        generate("helmholtz", 2, 8, progress=False, param_ranges={"kk": (1, 2)})
    with pytest.raises(PdediffError, match="LOW < HIGH"):
        generate("helmholtz", 2, 8, progress=False, param_ranges={"k": (2, 1)})
    with pytest.raises(PdediffError, match="both a value and a range"):
        generate("helmholtz", 2, 8, progress=False, params={"k": 2}, param_ranges=RANGE)
    with pytest.raises(PdediffError, match="changes the grid"):
        generate("helmholtz", 2, 8, progress=False, param_ranges={"length": (1, 2)})


# -- training -----------------------------------------------------------------------------
def test_conditional_training_records_the_condition_and_resumes(model, helmholtz, tmp_path):
    ckpt = read_checkpoint(model)
    meta = json.loads((model / "config.json").read_text())
    assert meta["train"]["condition"] == ["k"] and meta["train"]["p_uncond"] == 0.1
    assert meta["architecture"]["backbone_config"]["vector_dim"] == 1
    assert ckpt.fieldspec.conditions["k"]["low"] == 1.0
    assert ckpt.fieldspec.conditions["k"]["high"] == 4.0
    assert ckpt.fieldspec.variables == ("a", "u")
    # stopped at step 3 and resumed: the same weights as the uninterrupted run
    out = tmp_path / "resumed"
    train(helmholtz, out, tiny(steps=3, condition=["k"]), progress=False)
    train(helmholtz, out, tiny(steps=6, condition=["k"]), resume=True, progress=False)
    (a, _), (b, _) = read_tensors(model / "ema.safetensors"), read_tensors(out / "ema.safetensors")
    for name, t in a["module"].items():
        assert torch.equal(t, b["module"][name]), name
    with pytest.raises(ConfigError, match="condition"):
        train(helmholtz, out, tiny(steps=9), resume=True, progress=False)


def test_condition_config_errors(helmholtz, tmp_path):
    with pytest.raises(ConfigError, match="p_uncond"):
        tiny(p_uncond=0.2)  # no condition to drop
    with pytest.raises(ConfigError, match="p_uncond must be in"):
        tiny(condition=["k"], p_uncond=1.5)
    with pytest.raises(ConfigError, match="vector_dim"):
        tiny(condition=["k"], model={"backbone_kwargs": {"vector_dim": 2}})
    fixed = generate("helmholtz", 4, 8, progress=False)
    with pytest.raises(PdediffError, match="--param-range k=LOW:HIGH"):
        train(fixed, tmp_path / "x", tiny(steps=1, condition=["k"]), progress=False)
    with pytest.raises(PdediffError, match="one number per sample"):
        train(helmholtz, tmp_path / "y", tiny(steps=1, condition=["u"]), progress=False)


# -- sampling -----------------------------------------------------------------------------
def test_cfg_weight_zero_is_the_conditional_denoiser(model):
    ckpt = read_checkpoint(model)
    den = ckpt.denoiser()
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((3,), 0.7)
    vec = encode_conditions(ckpt.fieldspec.conditions, {"k": 2.5})[None]
    cond = {"vector": vec.expand(3, 1)}
    d_c = den(x, sigma, cond)
    assert torch.equal(conditioned_denoiser(den, {"vector": vec}, 0.0, 3)(x, sigma), d_c)
    assert torch.equal(cfg(den, 0.0)(x, sigma, cond), d_c)
    d_u = den(x, sigma, {**cond, "drop": torch.ones(3, dtype=torch.bool)})
    assert not torch.allclose(d_c, d_u)  # the condition changes the output
    guided = conditioned_denoiser(den, {"vector": vec}, 1.5, 3)(x, sigma)
    torch.testing.assert_close(guided, 2.5 * d_c - 1.5 * d_u, rtol=1e-5, atol=1e-5)
    assert vec.item() == pytest.approx(2 * (2.5 - 1) / 3 - 1)


def test_solve_with_a_condition_uses_it_in_the_physics(model, truth):
    obs, _ = observations_from_truth(truth, ["u"], count=6, seed=0)
    ds = solve(
        model,
        obs,
        task="inverse",
        members=2,
        protocol={"steps": 3, "cfg_weight": 1.5},
        condition={"k": 2.5},
        progress=False,
    )
    assert json.loads(ds.attrs["condition"]) == {"k": 2.5}
    assert ds.attrs["cfg_weight"] == 1.5 and json.loads(ds.attrs["protocol"])["cfg_weight"] == 1.5
    assert ds.attrs["param_k"] == 2.5
    # the default preset computes u with the reference solver, at the given k
    fam = FAMILIES["helmholtz"]
    spec = read_checkpoint(model).fieldspec
    fields = {f: torch.from_numpy(ds[f].values.astype(np.float64)) for f in ("a", "u")}
    assert fam.relative_residual(fields, spec.grid(), fam.params({"k": 2.5})).max() < 1e-5
    assert fam.relative_residual(fields, spec.grid(), fam.params({"k": 1.0})).min() > 1e-3


def test_condition_errors_and_out_of_range_warning(model, checkpoint, truth):
    obs, _ = observations_from_truth(truth, ["u"], count=6, seed=0)
    kw = {"task": "inverse", "members": 1, "protocol": {"steps": 2}, "progress": False}
    with pytest.raises(PdediffError, match=r"unknown condition\(s\) \['kk'\].*k in \[1, 4\]"):
        solve(model, obs, condition={"kk": 2.0}, **kw)
    with pytest.raises(PdediffError, match=r"missing condition\(s\) \['k'\]"):
        solve(model, obs, **kw)
    with pytest.raises(PdediffError, match="finite"):
        solve(model, obs, condition={"k": float("nan")}, **kw)
    with pytest.warns(PdediffWarning, match=r"k=6 is outside the training range \[1, 4\]"):
        solve(model, obs, condition={"k": 6.0}, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning inside the range
        solve(model, obs, condition={"k": 4.0}, **kw)
    # the unconditioned Darcy model of conftest
    darcy_obs, _ = observations_from_truth(
        generate("darcy", 1, 8, seed=1, progress=False), ["u"], count=4, seed=0
    )
    with pytest.raises(PdediffError, match="not conditioned"):
        solve(checkpoint, darcy_obs, condition={"k": 2.0}, **kw)
    with pytest.raises(PdediffError, match="cfg_weight = 1.5 needs a conditioned model"):
        solve(checkpoint, darcy_obs, **{**kw, "protocol": {"steps": 2, "cfg_weight": 1.5}})


# -- command line -------------------------------------------------------------------------
def test_cli_round_trip(tmp_path, truth, capsys):
    data, out, post = tmp_path / "h.nc", tmp_path / "ckpt", tmp_path / "post.nc"
    argv = ["generate", "helmholtz", "--n", "8", "--resolution", "8", "--seed", "2"]
    assert main([*argv, "--param-range", "k=1:4", "-o", str(data), "--quiet"]) == 0
    assert open_fields(data)["k"].size == 8
    assert main([*argv, "--param-range", "k=1-4", "-o", str(tmp_path / "x.nc")]) == 2
    assert "NAME=LOW:HIGH" in capsys.readouterr().err
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML)
    train_argv = ["train", "--data", str(data), "--out", str(out), "--config", str(config)]
    train_argv += ["--steps", "3", "--condition", "k", "--p-uncond", "0.2", "--quiet"]
    assert main(train_argv) == 0
    ckpt = read_checkpoint(out)
    assert ckpt.config.condition == ["k"] and ckpt.config.p_uncond == 0.2
    assert main([*train_argv, "--steps", "4", "--resume"]) == 0  # the same command, resumed
    assert main([*train_argv[:5], "--steps", "5", "--resume", "--quiet"]) == 0  # no flags
    assert read_checkpoint(out).step == 5 and read_checkpoint(out).config.p_uncond == 0.2
    obs, _ = observations_from_truth(truth, ["u"], count=6, seed=0)
    obs_path = write_observations(obs, tmp_path / "obs.nc")
    solve_argv = ["solve", "--model", str(out), "--obs", str(obs_path), "--task", "inverse"]
    solve_argv += ["--members", "2", "--steps", "2", "-o", str(post), "--quiet"]
    assert main([*solve_argv, "--condition", "k=2.5", "--cfg-weight", "1.5"]) == 0
    result = open_fields(post)
    assert json.loads(result.attrs["condition"]) == {"k": 2.5}
    assert result.attrs["cfg_weight"] == 1.5 and result.attrs["param_k"] == 2.5
    assert main([*solve_argv, "--overwrite"]) == 2
    assert "missing condition(s) ['k']" in capsys.readouterr().err
    assert main([*solve_argv, "--overwrite", "--condition", "k=6"]) == 0
    err = capsys.readouterr().err
    assert "warning: condition k=6 is outside the training range [1, 4]" in err


def test_fieldspec_round_trips_the_conditions(helmholtz):
    spec = FieldSpec.from_dataset(helmholtz, conditions=["k"])
    assert spec.variables == ("a", "u")
    back = FieldSpec.from_json(spec.to_json())
    assert back.conditions == spec.conditions and list(back.conditions) == ["k"]
    with pytest.raises(PdediffError, match="has no per-sample variable 'k'"):
        back.check_compatible(helmholtz.drop_vars("k"))


def test_evaluate_gives_each_sample_its_own_condition(model, checkpoint, truth):
    """A k-conditioned model is evaluated with each test sample's own k: the condition
    column records it and the classical forward baseline, given every node of ``a``,
    reproduces each sample's ``u`` exactly (the wrong k would not)."""
    from pdediff.sds import sds_solve
    from pdediff.solve.evaluate import evaluate

    ranged = generate("helmholtz", 2, 8, seed=3, progress=False, param_ranges=RANGE)
    conditions, exact = forward_with_every_node(model, ranged)
    for i in range(2):
        assert conditions[i] == pytest.approx({"k": float(ranged["k"].values[i])})
        assert exact[i] < 1e-6  # float32 storage of the data
    darcy = generate("darcy", 2, 8, seed=3, progress=False, param_ranges={"f": (0.5, 2)})
    with pytest.raises(PdediffError, match=r"varies the PDE parameter\(s\) \['f'\]"):
        evaluate(checkpoint, darcy, task="inverse", points=4, progress=False)
    obs, _ = observations_from_truth(truth, ["u"], count=6, seed=0)
    with pytest.raises(PdediffError, match="sds does not handle conditioned models"):
        sds_solve(model, obs, steps=1, progress=False)
