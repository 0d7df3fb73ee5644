"""Cascades: grid transfer, conditioning augmentation, SR training, cascade sampling, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr

from pdediff.cascade import (
    CascadeError,
    augment,
    cascade_solve,
    downsample,
    gaussian_blur,
    sr_conditioning,
    upsample,
)
from pdediff.cli import main
from pdediff.errors import DataError, PdediffWarning
from pdediff.generate import generate
from pdediff.io.fieldspec import FieldSpec
from pdediff.io.observations import observations_from_truth, write_observations
from pdediff.io.store import write_fields
from pdediff.solve import solve
from pdediff.train import CascadeConfig, ConfigError, TrainConfig, read_checkpoint, train

TINY = {
    "model": {"backbone_kwargs": {"model_channels": 8, "channel_mult": [1, 2]}},
    "optimizer": {"lr": 2e-3, "warmup_steps": 5},
    "batch_size": 4,
    "steps": 10,
    "log_every": 5,
    "checkpoint_every": 10,
}
SR = {"stage": "sr", "from_shape": [8, 8], "to_shape": [16, 16], "aug_noise_max": 0.2}


@pytest.fixture(scope="module")
def high():
    return generate("darcy", 12, 16, seed=0, progress=False)


@pytest.fixture(scope="module")
def stages(high, tmp_path_factory):
    """A tiny 8x8 base model (on the downsampled data) and an 8 -> 16 SR stage."""
    root = tmp_path_factory.mktemp("cascade")
    train(downsample(high, 8), root / "base", TrainConfig.from_dict(TINY), progress=False)
    sr = TrainConfig.from_dict({**TINY, "cascade": {**SR, "aug_blur": 0.5}})
    train(high, root / "sr", sr, progress=False)
    return root / "base", root / "sr"


@pytest.fixture(scope="module")
def obs():
    truth = generate("darcy", 1, 16, seed=5, progress=False)
    return observations_from_truth(truth, ["u"], 40, seed=0)[0]


# -- grid transfer and augmentation ---------------------------------------------------------
def test_augment_at_zero_is_the_identity():
    x = torch.randn(3, 2, 8, 8)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(augment(x, 0.0, 0.0, g), x)
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())  # no draw
    y = augment(x, torch.tensor([0.0, 0.3, 0.0]), torch.tensor([0.0, 0.0, 1.0]), g)
    assert torch.equal(y[0], x[0]) and not torch.equal(y[1], x[1]) and not torch.equal(y[2], x[2])
    with pytest.raises(DataError, match=">= 0"):
        augment(x, -0.1)


def test_blur_keeps_constants_and_zero_sigma():
    ones = torch.ones(2, 1, 8, 8)
    assert torch.allclose(gaussian_blur(ones, torch.tensor([0.5, 3.0])), ones, atol=1e-6)
    assert torch.allclose(gaussian_blur(ones, 2.0, periodic=True), ones, atol=1e-6)
    x = torch.randn(2, 1, 8, 8)
    blurred = gaussian_blur(x, torch.tensor([0.0, 1.0]))
    assert torch.equal(blurred[0], x[0]) and blurred[1].std() < x[1].std()


def test_upsample_of_a_linear_field_is_exact():
    y, x = np.meshgrid(np.linspace(0, 1, 8), np.linspace(0, 1, 8), indexing="ij")
    yf, xf = np.meshgrid(np.linspace(0, 1, 16), np.linspace(0, 1, 16), indexing="ij")
    field = torch.tensor(2 + 3 * x - 0.5 * y)[None, None]
    fine = upsample(field, 16)
    np.testing.assert_allclose(fine[0, 0].numpy(), 2 + 3 * xf - 0.5 * yf, atol=1e-12)
    # on node grids it is bilinear interpolation with align_corners=True
    ref = F.interpolate(field, size=(16, 16), mode="bilinear", align_corners=True)
    assert torch.allclose(fine, ref, atol=1e-12)
    with pytest.raises(DataError, match="smaller"):
        upsample(field, 4)


def test_downsample_shapes_on_the_node_grids():
    x = torch.randn(2, 3, 17, 17)
    assert torch.equal(downsample(x, 9), x[..., ::2, ::2])  # nested node grids: subsampling
    p = torch.randn(2, 3, 16, 16)
    assert torch.equal(downsample(p, 8, periodic=True), p[..., ::2, ::2])  # periodic 2n -> n
    fine = torch.randn(2, 3, 16, 16)
    d = downsample(fine, 8)  # pdediff's 2^k node grids do not nest: interpolation
    assert d.shape == (2, 3, 8, 8)
    corners = (..., [0, 0, -1, -1], [0, -1, 0, -1])
    assert torch.equal(d[corners], fine[corners])  # boundary nodes stay where they are
    assert upsample(downsample(torch.ones(1, 1, 16, 16), 8), 16).sub(1).abs().max() < 1e-6


def test_downsample_dataset_keeps_the_convention(high):
    low = downsample(high, 8)
    assert low.a.shape == (12, 8, 8) and low.attrs["pde"] == "darcy"
    np.testing.assert_allclose(low.x.values, np.linspace(0, 1, 8))
    assert low.x.attrs == high.x.attrs
    assert np.array_equal(low.u.values[:, 0], np.zeros((12, 8), np.float32))  # Dirichlet u = 0
    burgers = downsample(generate("burgers", 2, 16, seed=0, progress=False), 8)
    np.testing.assert_allclose(burgers.x.values, np.arange(8) / 8)  # periodic x
    np.testing.assert_allclose(burgers.t.values, np.linspace(0, 1, 8))  # node t


# -- training a super-resolution stage ----------------------------------------------------
def test_sr_stage_records_its_settings(stages):
    ckpt = read_checkpoint(stages[1])
    assert ckpt.config.cascade == CascadeConfig(**{**SR, "aug_blur": 0.5})
    net = ckpt.architecture.backbone_config
    assert net["cond_channels"] == 2 and net["vector_dim"] == 1
    meta = json.loads((stages[1] / "config.json").read_text())
    assert meta["train"]["cascade"]["stage"] == "sr"
    assert read_checkpoint(stages[0]).config.cascade.stage == "base"


def test_sr_stage_resumes_exactly(high, tmp_path):
    config = TrainConfig.from_dict({**TINY, "steps": 4, "checkpoint_every": 2, "cascade": SR})
    whole = train(high, tmp_path / "whole", config, progress=False).model.state_dict()
    train(high, tmp_path / "cut", config.replace(steps=2), progress=False)
    resumed = train(high, tmp_path / "cut", config, resume=True, progress=False).model
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in whole.items())


def test_sr_hook_makes_the_conditioning(high):
    spec = FieldSpec.from_dataset(high)
    hook = sr_conditioning(CascadeConfig(**SR), spec)
    x0 = spec.to_tensor(high)[:4]
    cond = hook(x0, {"vector": torch.ones(4, 1)}, torch.Generator().manual_seed(0))
    assert cond["fields"].shape == x0.shape and cond["vector"].shape == (4, 2)
    s = cond["vector"][:, 1]
    assert (
        torch.all(s >= 0)
        and torch.all(s <= 0.2)
        and torch.equal(cond["vector"][:, 0], torch.ones(4))
    )
    plain = sr_conditioning(CascadeConfig(**{**SR, "aug_noise_max": 0.0}), spec)
    clean = plain(x0, None, torch.Generator())["fields"]
    assert torch.allclose(clean, upsample(downsample(x0, 8), 16))
    with pytest.raises(ConfigError, match="--to"):
        sr_conditioning(CascadeConfig(**{**SR, "to_shape": [32, 32]}), spec)


@pytest.mark.parametrize(
    ("cascade", "match"),
    [
        ({"stage": "sr"}, "needs cascade.from_shape"),
        ({**SR, "from_shape": [16, 16]}, "coarser"),
        ({"stage": "base", "aug_noise_max": 0.1}, "super-resolution"),
        ({"stage": "top"}, "cascade.stage"),
    ],
)
def test_cascade_config_errors(cascade, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict({"cascade": cascade})


# -- sampling a cascade -------------------------------------------------------------------
def test_cascade_solve_end_to_end_and_guidance(stages, obs):
    kwargs = dict(task="inverse", members=4, steps=6, aug_level=0.1, preset="joint", progress=False)
    free = cascade_solve(
        stages, obs, protocol={"default_obs_weight": 0.0, "pde_weight": 0}, **kwargs
    )
    guided = cascade_solve(
        stages, obs, protocol={"default_obs_weight": 10.0, "pde_weight": 0}, **kwargs
    )
    assert guided.u.shape == (4, 16, 16) and "u_std" in guided and "obs_u" in guided
    records = json.loads(guided.attrs["stages"])
    assert [r["grid"] for r in records] == [[8, 8], [16, 16]]
    assert records[1]["aug_level"] == 0.1 and records[1]["kind"] == "sr"
    assert guided.attrs["obs_rmse_u"] < 0.5 * free.attrs["obs_rmse_u"]  # at the top stage
    assert guided.attrs["stage0_obs_rmse_u"] < free.attrs["stage0_obs_rmse_u"]


def test_cascade_base_stage_samples_as_solve(stages, obs):
    one = cascade_solve(stages[:1], obs, members=2, steps=3, progress=False)
    ref = solve(stages[0], obs, task="inverse", members=2, protocol={"steps": 3}, progress=False)
    assert np.array_equal(one.a.values, ref.a.values) and np.array_equal(one.u.values, ref.u.values)
    # steps given in the protocol only are the steps of every stage (not the preset's)
    via = cascade_solve(stages[:1], obs, members=2, protocol={"steps": 3}, progress=False)
    assert np.array_equal(via.a.values, ref.a.values)


def test_cascade_pde_guidance_and_aug_warning(stages, obs):
    with pytest.warns(PdediffWarning, match="outside the levels"):
        ds = cascade_solve(
            stages, obs, members=2, steps=3, aug_level=0.5, preset="joint", progress=False
        )
    assert [r["pde_guidance"] for r in json.loads(ds.attrs["stages"])] == ["darcy", "darcy"]


def test_cascade_errors(stages, obs):
    base, sr = stages
    with pytest.raises(CascadeError, match="first stage must be a base"):
        cascade_solve([sr, base], obs, steps=2, progress=False)
    with pytest.raises(CascadeError, match="not a super-resolution stage"):
        cascade_solve([base, base], obs, steps=2, progress=False)
    with pytest.raises(CascadeError, match="do not chain"):
        cascade_solve([base, sr, sr], obs, steps=2, progress=False)
    with pytest.raises(CascadeError, match="aug_level gives 2 values"):
        cascade_solve([base, sr], obs, steps=2, aug_level=[0.1, 0.1], progress=False)


# -- command line -------------------------------------------------------------------------
def test_cli_round_trip(stages, high, obs, tmp_path, capsys):
    data, obs_file, sr = tmp_path / "high.nc", tmp_path / "obs.nc", tmp_path / "sr"
    write_fields(high, data)
    write_observations(obs, obs_file)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**TINY, "steps": 2}))
    args = ["train", "--data", str(data), "--out", str(sr), "--config", str(config)]
    sr_flags = ["--stage", "sr", "--from", "8", "--to", "16", "--aug-noise-max", "0.3"]
    assert main([*args, *sr_flags, "--quiet"]) == 0
    assert read_checkpoint(sr).config.cascade.aug_noise_max == 0.3
    assert main([*args, "--aug-blur", "0.5", "--overwrite"]) == 2
    assert "add --stage sr" in capsys.readouterr().err
    out = tmp_path / "post.nc"
    solve_args = ["solve-cascade", "--stages", str(stages[0]), str(sr), "--obs", str(obs_file)]
    run = [*solve_args, "--steps", "2", "--members", "2", "--aug-level", "0.1", "-o", str(out)]
    assert main([*run, "--quiet"]) == 0
    with xr.open_dataset(out) as ds:
        assert ds.u.shape == (2, 16, 16) and ds.attrs["model"] == str(sr)
    assert main(run) == 2 and "exists" in capsys.readouterr().err
    swapped = ["solve-cascade", "--stages", str(sr), str(stages[0]), "--obs", str(obs_file)]
    assert main([*swapped, "-o", str(tmp_path / "x.nc")]) == 2
    assert "first stage must be a base model" in capsys.readouterr().err


def test_solve_refuses_a_super_resolution_stage(stages, obs):
    from pdediff.errors import PdediffError

    with pytest.raises(PdediffError, match="cascade stage: it needs the stage below"):
        solve(stages[1], obs, task="inverse", members=1, progress=False)
