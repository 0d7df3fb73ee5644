"""Latent diffusion: field autoencoder, latent datasets, latent posterior sampling, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import xarray as xr

from pdediff.cli import main
from pdediff.errors import DataError, PdediffError
from pdediff.generate import generate
from pdediff.io.fieldspec import FieldSpec
from pdediff.io.observations import observations_from_truth, write_observations
from pdediff.io.store import open_fields, write_fields
from pdediff.latent import (
    Autoencoder,
    FieldAutoencoder,
    autoencoder_for,
    check_latent_spec,
    decode_dataset,
    encode_dataset,
    kl_divergence,
    latent_solve,
    load_autoencoder,
    save_autoencoder,
    train_autoencoder,
)
from pdediff.train import CheckpointError, TrainConfig, train

TINY_LDM = {
    "model": {"backbone_kwargs": {"model_channels": 8, "channel_mult": [1, 2]}},
    "optimizer": {"lr": 2e-3, "warmup_steps": 5},
    "batch_size": 8,
    "log_every": 50,
    "checkpoint_every": 100,
}


@pytest.fixture(scope="module")
def darcy():
    return generate("darcy", 24, 16, seed=0, progress=False)


@pytest.fixture(scope="module")
def trained(darcy, tmp_path_factory):
    """A tiny x4 autoencoder of 16x16 Darcy fields (150 steps) and its result."""
    out = tmp_path_factory.mktemp("ae") / "ae"
    result = train_autoencoder(
        darcy, out, steps=150, batch_size=8, lr=2e-3, base_channels=8, progress=False
    )
    return out, result


@pytest.fixture(scope="module")
def ldm(trained, darcy, tmp_path_factory):
    """A tiny latent diffusion model trained on the autoencoder's latents (100 steps)."""
    ae = load_autoencoder(trained[0])
    out = tmp_path_factory.mktemp("ldm") / "ldm"
    cfg = TrainConfig.from_dict({**TINY_LDM, "steps": 100})
    train(encode_dataset(ae, darcy), out, cfg, progress=False)
    return out


def _fresh(darcy, downsample: int = 4, seed: int = 0) -> Autoencoder:
    spec = FieldSpec.from_dataset(darcy)
    torch.manual_seed(seed)
    net = autoencoder_for(spec, downsample=downsample, base_channels=8).eval()
    return Autoencoder(net, spec, scale_factor=0.5, step=3)


# -- network --------------------------------------------------------------------------------
@pytest.mark.parametrize(("downsample", "latent"), [(4, 4), (8, 2)])
def test_encoder_decoder_shapes(downsample, latent):
    net = FieldAutoencoder(2, latent_channels=3, downsample=downsample, base_channels=8)
    x = torch.randn(5, 2, 16, 16)
    mean, logvar = net.encode(x)
    assert mean.shape == logvar.shape == (5, 3, latent, latent)
    assert net.decode(mean).shape == x.shape
    x_hat, _, _ = net(x, torch.Generator().manual_seed(0))
    assert x_hat.shape == x.shape
    strided = [m for m in net.encoder.modules() if getattr(m, "stride", None) == (2, 2)]
    assert len(strided) == int(math.log2(downsample))


def test_bad_grid_and_settings():
    net = FieldAutoencoder(2, downsample=8, base_channels=8)
    with pytest.raises(DataError, match="not a multiple of the downsampling factor 8"):
        net.encode(torch.zeros(1, 2, 12, 12))
    with pytest.raises(DataError, match=r"\(N, 2, H, W\)"):
        net.encode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(PdediffError, match="downsample must be"):
        FieldAutoencoder(2, downsample=3)
    with pytest.raises(PdediffError, match="latent_channels must be a positive integer"):
        FieldAutoencoder(2, latent_channels=0)


def test_kl_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    torch.testing.assert_close(kl_divergence(mean, logvar), expected)
    assert torch.equal(
        kl_divergence(torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)), torch.zeros(2)
    )


# -- saving and loading -----------------------------------------------------------------------
def test_save_load_round_trip(darcy, tmp_path):
    ae = _fresh(darcy)
    save_autoencoder(ae, tmp_path / "ae")
    back = load_autoencoder(tmp_path / "ae")
    x = ae.spec.to_tensor(darcy.isel(sample=slice(0, 3)))
    with torch.no_grad():
        assert torch.equal(back.encode(x), ae.encode(x))
        assert torch.equal(back.decode(ae.encode(x)), ae.decode(ae.encode(x)))
    assert back.scale_factor == 0.5 and back.step == 3
    assert back.spec == ae.spec and back.digest() == ae.digest()
    save_autoencoder(ae, tmp_path / "ae")  # replaces in place, no leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ae"]


def test_corrupt_or_missing_files(darcy, tmp_path):
    path = tmp_path / "ae"
    save_autoencoder(_fresh(darcy), path)
    weights = path / "autoencoder.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="autoencoder.safetensors"):
        load_autoencoder(path)
    weights.write_bytes(good)
    config = path / "config.json"
    text = config.read_text()
    config.write_text(text[:20])
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        load_autoencoder(path)
    config.write_text(json.dumps({**json.loads(text), "format": "pdediff-checkpoint"}))
    with pytest.raises(CheckpointError, match="not a pdediff autoencoder config"):
        load_autoencoder(path)
    config.write_text(text)
    (path / "fieldspec.json").unlink()
    with pytest.raises(CheckpointError, match="missing fieldspec.json"):
        load_autoencoder(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_autoencoder(tmp_path / "nothing")


def test_weights_of_another_architecture(darcy, tmp_path):
    save_autoencoder(_fresh(darcy, downsample=8), tmp_path / "ae")
    config = json.loads((tmp_path / "ae/config.json").read_text())
    config["architecture"]["downsample"] = 4
    config["architecture"]["channel_mult"] = [1, 2, 4]
    (tmp_path / "ae/config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not match the network"):
        load_autoencoder(tmp_path / "ae")


# -- training -------------------------------------------------------------------------------
def test_training_reduces_reconstruction_loss(trained):
    out, result = trained
    first = np.mean([h["reconstruction"] for h in result.history[:5]])
    last = np.mean([h["reconstruction"] for h in result.history[-5:]])
    assert last < 0.5 * first
    assert sorted(p.name for p in out.iterdir()) == [
        "autoencoder.safetensors",
        "config.json",
        "fieldspec.json",
    ]
    assert set(result.reconstruction) == {"a", "u"}
    assert all(0 < e < 1 for e in result.reconstruction.values())
    res = result.residual
    assert res["pde"] == "darcy" and res["original"] < 1e-3 < res["reconstructed"]
    ae = load_autoencoder(out)
    assert ae.step == 150 and ae.scale_factor == pytest.approx(result.scale_factor)
    assert ae.evaluation["relative_l2"] == result.reconstruction
    assert ae.evaluation["samples"] == 2  # 10 % of 24 held out


def test_train_refuses_existing_output_and_bad_settings(darcy, trained):
    with pytest.raises(FileExistsError, match="--overwrite"):
        train_autoencoder(darcy, trained[0], steps=1, progress=False)
    with pytest.raises(PdediffError, match="lr must be"):
        train_autoencoder(darcy, trained[0].parent / "x", steps=1, lr=-1.0, progress=False)
    with pytest.raises(DataError, match="at least 2"):
        train_autoencoder(darcy.isel(sample=[0]), trained[0].parent / "y", steps=1, progress=False)


# -- latents ----------------------------------------------------------------------------------
def test_encode_dataset_trains_a_latent_model(trained, darcy, tmp_path):
    ae = load_autoencoder(trained[0])
    z = encode_dataset(ae, darcy)
    assert list(z.data_vars) == ["z0", "z1", "z2", "z3"]
    assert dict(z.sizes) == {"sample": 24, "latent_y": 4, "latent_x": 4}
    assert z.attrs["autoencoder"] == str(trained[0])
    assert z.attrs["scale_factor"] == pytest.approx(ae.scale_factor)
    assert z.attrs["pde"] == "unknown" and z.attrs["latent_of_pde"] == "darcy"
    values = np.stack([z[v].values for v in z.data_vars])
    assert values.std() == pytest.approx(1.0, rel=0.2)  # unit std from the scale factor
    cfg = TrainConfig.from_dict({**TINY_LDM, "steps": 3})
    result = train(z, tmp_path / "ldm", cfg, progress=False)
    assert result.step == 3 and math.isfinite(result.loss)
    fields = decode_dataset(ae, z.isel(sample=slice(0, 2)))
    assert fields["u"].shape == (2, 16, 16) and set(fields.data_vars) == {"a", "u"}


def test_latent_model_of_another_autoencoder_is_refused(ldm, darcy):
    from pdediff.train import read_checkpoint

    spec = read_checkpoint(ldm).fieldspec
    other = _fresh(darcy, seed=1)
    with pytest.raises(DataError, match="latents of another autoencoder"):
        check_latent_spec(spec, other)
    with pytest.raises(DataError, match="grid"):
        check_latent_spec(spec, _fresh(darcy, downsample=8))


# -- latent posterior sampling ---------------------------------------------------------------
@pytest.fixture(scope="module")
def observations():
    truth = generate("darcy", 1, 16, seed=5, progress=False)
    obs, _ = observations_from_truth(truth, ["a", "u"], count=30, seed=1)
    return obs


def _misfit(post, obs, field: str) -> float:
    """RMS over members of the decoded field minus the observations (at grid nodes)."""
    o = obs.fields[field]
    at = post[field].sel(
        y=xr.DataArray(o.positions["y"], dims="k"),
        x=xr.DataArray(o.positions["x"], dims="k"),
        method="nearest",
    )
    return float(np.sqrt(((at.values - o.values) ** 2).mean()))


def test_latent_solve_guidance_reduces_misfit(ldm, trained, observations):
    kw = {"task": "inverse", "members": 3, "steps": 12, "seed": 0, "progress": False}
    free = latent_solve(ldm, trained[0], observations, obs_weight=0.0, **kw)
    guided = latent_solve(ldm, trained[0], observations, **kw)
    assert _misfit(guided, observations, "u") < 0.7 * _misfit(free, observations, "u")
    assert guided.attrs["obs_rmse_u"] == pytest.approx(_misfit(guided, observations, "u"), rel=1e-4)
    assert guided["u"].dims == ("member", "y", "x") and guided.sizes["member"] == 3
    assert {"a_mean", "a_std", "u_mean", "u_std", "obs_u"} <= set(guided.data_vars)
    assert "obs_a" not in guided  # the inverse task uses the solution's observations
    assert guided.attrs["autoencoder"] == str(trained[0])
    assert json.loads(guided.attrs["obs_weight"]) == {"a": 10.0, "u": 10.0}


def test_latent_solve_pde_term_and_errors(ldm, trained, observations):
    post = latent_solve(
        ldm,
        trained[0],
        observations,
        task="joint",
        members=2,
        steps=4,
        pde_weight=1.0,
        progress=False,
    )
    assert np.isfinite(post["a"].values).all() and "obs_a" in post
    with pytest.raises(PdediffError, match="unknown field"):
        latent_solve(ldm, trained[0], observations, obs_weight={"q": 1.0}, progress=False)


# -- command line ----------------------------------------------------------------------------
def test_cli_round_trip(darcy, ldm, trained, observations, tmp_path, capsys):
    data, ae = tmp_path / "d.nc", tmp_path / "ae"
    write_fields(darcy, data)
    argv = ["train-autoencoder", "--data", str(data), "--out", str(ae), "--steps", "3"]
    argv += ["--batch-size", "4", "--base-channels", "8", "--downsample", "8", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "held-out relative L2" in printed and "darcy" in printed
    assert main(argv) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err
    assert load_autoencoder(ae).net.downsample == 8

    latents = tmp_path / "z.nc"
    assert main(["encode", "--autoencoder", str(ae), "--data", str(data), "-o", str(latents)]) == 0
    z = open_fields(latents)
    assert dict(z.sizes) == {"sample": 24, "latent_y": 2, "latent_x": 2}

    obs, post = tmp_path / "obs.nc", tmp_path / "post.nc"
    write_observations(observations, obs)
    argv = ["solve-latent", "--model", str(ldm), "--autoencoder", str(trained[0]), "--obs"]
    argv += [str(obs), "--task", "inverse", "--members", "2", "--steps", "3", "-o", str(post)]
    assert main([*argv, "--quiet", "--obs-weight", "u=5"]) == 0
    assert "wrote" in capsys.readouterr().out
    result = open_fields(post)
    assert result["u"].shape == (2, 16, 16)
    assert json.loads(result.attrs["obs_weight"])["u"] == 5.0
    bad = ["solve-latent", "--model", str(ldm), "--autoencoder", str(ae), "--obs", str(obs)]
    assert main([*bad, "-o", str(tmp_path / "p2.nc"), "--quiet"]) == 2  # AE of other latents
    assert "`pdediff encode` output of this autoencoder" in capsys.readouterr().err
