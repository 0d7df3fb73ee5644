"""LoRA adapters (identity at init, training, merge, enable/disable, files, base-model
check, errors) and few-shot fine-tuning (LoRA and full, with and without prior
preservation, the ``pdediff finetune`` CLI)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch.nn.utils import parametrize

from pdediff.adapters import (
    LoRAError,
    add_lora,
    base_model_hash,
    count_parameters,
    finetune,
    load_adapted,
    load_lora,
    lora_layers,
    lora_parameters,
    lora_state_dict,
    merge_lora,
    remove_lora,
    save_lora,
    set_lora_enabled,
)
from pdediff.cli import main
from pdediff.errors import DataError
from pdediff.generate import generate
from pdediff.io import write_fields
from pdediff.train import load_checkpoint
from pdediff.train.config import build_denoiser

UNET = {
    "in_channels": 2,
    "out_channels": 2,
    "model_channels": 8,
    "channel_mult": [1, 2],
    "num_blocks": 1,
    "attn_levels": [1],
}


def tiny_denoiser(seed: int = 0) -> torch.nn.Module:
    """An 8x8 EDM denoiser with random (not zero-initialised) weights, so every layer
    matters."""
    torch.manual_seed(seed)
    model = build_denoiser("unet", UNET, "edm", {"sigma_data": 1.0})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 2, 8, 8, generator=g), torch.tensor([0.1, 1.0, 5.0])


def train_adapters(model: torch.nn.Module, steps: int = 3) -> None:
    x, sigma = inputs()
    opt = torch.optim.Adam(lora_parameters(model), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        ((model(x, sigma) - 1.0) ** 2).mean().backward()
        opt.step()


@pytest.fixture
def adapted():
    """(base model, adapted copy after 3 training steps, the base's hash)."""
    base = tiny_denoiser()
    model = copy.deepcopy(base)
    add_lora(model, rank=2)
    train_adapters(model)
    return base, model, base_model_hash(base)


def no_parametrizations(model: torch.nn.Module) -> bool:
    return not any(parametrize.is_parametrized(m) for m in model.modules())


# -- LoRA ---------------------------------------------------------------------------------
def test_lora_at_init_is_the_base_model_exactly():
    model = tiny_denoiser()
    x, sigma = inputs()
    with torch.no_grad():
        before = model(x, sigma)
    hash_before = base_model_hash(model)
    names = add_lora(model, rank=3, alpha=6.0)
    assert any(n.endswith(".qkv") for n in names) and any(n.endswith(".proj") for n in names)
    assert any(n.endswith(".film") for n in names)  # Linear layers too
    with torch.no_grad():
        assert torch.equal(model(x, sigma), before)
    assert base_model_hash(model) == hash_before
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    assert all(p.requires_grad for p in lora_parameters(model))


def test_trained_adapter_differs_merges_and_disables(adapted):
    base, model, base_hash = adapted
    x, sigma = inputs()
    with torch.no_grad():
        out_base, out_lora = base(x, sigma), model(x, sigma)
        assert not torch.allclose(out_lora, out_base)
        assert base_model_hash(model) == base_hash  # the base weights stayed frozen
        set_lora_enabled(model, False)
        assert torch.equal(model(x, sigma), out_base)
        set_lora_enabled(model, True)
        assert torch.equal(model(x, sigma), out_lora)
        merged = merge_lora(model)
        assert merged and no_parametrizations(model)
        torch.testing.assert_close(model(x, sigma), out_lora, rtol=1e-5, atol=1e-5)
    assert base_model_hash(model) != base_hash  # merged weights are another base


def test_remove_restores_the_base(adapted):
    base, model, _ = adapted
    x, sigma = inputs()
    remove_lora(model)
    assert no_parametrizations(model)
    with torch.no_grad():
        assert torch.equal(model(x, sigma), base(x, sigma))


def test_save_load_round_trip(adapted, tmp_path):
    base, model, base_hash = adapted
    path = save_lora(model, tmp_path / "few.safetensors", base_hash, {"note": "test"})
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["base_hash"] == base_hash and info["meta"] == {"note": "test"}
    assert set(info["layers"]) == set(lora_layers(model))
    fresh = copy.deepcopy(base)
    load_lora(fresh, path)
    x, sigma = inputs()
    with torch.no_grad():
        assert torch.equal(fresh(x, sigma), model(x, sigma))
    saved = lora_state_dict(model)
    assert all(torch.equal(saved[k], v) for k, v in lora_state_dict(fresh).items())


def test_load_onto_another_base_names_both_hashes(adapted, tmp_path):
    _, model, base_hash = adapted
    path = save_lora(model, tmp_path / "few.safetensors", base_hash)
    other = tiny_denoiser(seed=7)
    with pytest.raises(LoRAError) as err:
        load_lora(other, path)
    assert base_hash in str(err.value) and base_model_hash(other) in str(err.value)


def test_corrupt_adapter_file_is_detected(adapted, tmp_path):
    base, model, base_hash = adapted
    path = save_lora(model, tmp_path / "few.safetensors", base_hash)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(LoRAError, match="does not match its sidecar"):
        load_lora(copy.deepcopy(base), path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rank": 0}, "rank must be a positive integer"),
        ({"rank": -2}, "rank must be a positive integer"),
        ({"rank": 2.5}, "rank must be a positive integer"),
        ({"rank": 2, "alpha": 0.0}, "alpha must be a positive number"),
        ({"rank": 2, "targets": ["*.nope"]}, "'\\*.nope' matches no layer"),
        ({"rank": 2, "targets": "*.norm1"}, "GroupNorm"),
        ({"rank": 2, "targets": lambda n, m: False}, "select no layer"),
    ],
)
def test_bad_lora_settings(kwargs, message):
    with pytest.raises(LoRAError, match=message):
        add_lora(tiny_denoiser(), **kwargs)


def test_targets_and_double_adaptation():
    model = tiny_denoiser()
    names = add_lora(model, rank=2, targets="*.qkv")
    assert names and all(n.endswith(".qkv") for n in names)
    with pytest.raises(LoRAError, match="already has a parametrized weight"):
        add_lora(model, rank=2, targets="*.qkv")
    only_middle = add_lora(tiny_denoiser(), 2, targets="backbone.middle")
    assert only_middle and all(n.startswith("backbone.middle.") for n in only_middle)


def test_lora_trains_far_fewer_parameters():
    model = tiny_denoiser()
    full = count_parameters(model)
    add_lora(model, rank=1, targets=["*.conv1", "*.conv2", "*.qkv", "*.proj"])
    assert 0 < count_parameters(lora_parameters(model)) < 0.2 * full


# -- fine-tuning --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def few():
    """Three new 8x8 Darcy samples on the checkpoint fixture's grid."""
    return generate("darcy", 3, 8, seed=5, progress=False)


def test_finetune_lora_with_prior(checkpoint, few, tmp_path):
    out = tmp_path / "few.safetensors"
    result = finetune(
        checkpoint,
        few,
        out,
        rank=2,
        steps=3,
        batch_size=2,
        prior_weight=0.5,
        prior_samples=3,
        prior_steps=2,
        save_every=2,
        progress=False,
    )
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert 0 < result.trainable_parameters < result.total_parameters
    assert len(result.history) == 3 and math.isfinite(result.loss)
    assert math.isfinite(result.prior_loss) and result.prior_seconds > 0
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["meta"]["settings"]["prior_samples"] == 3 and info["meta"]["step"] == 3
    denoiser, spec = load_adapted(checkpoint, out)
    assert no_parametrizations(denoiser) and spec.variables == ("a", "u")
    x, sigma = torch.randn(2, 2, 8, 8), torch.tensor([0.5, 2.0])
    with torch.no_grad():
        torch.testing.assert_close(denoiser(x, sigma), result.model(x, sigma))
        base, _, _ = load_checkpoint(checkpoint)
        assert not torch.allclose(denoiser(x, sigma), base(x, sigma))


def test_finetune_without_prior_and_full(checkpoint, few, tmp_path):
    lora = finetune(
        checkpoint,
        few,
        tmp_path / "a.safetensors",
        rank=2,
        steps=2,
        batch_size=2,
        progress=False,
    )
    assert math.isnan(lora.prior_loss) and lora.prior_seconds < 0.1
    full = finetune(
        checkpoint,
        few,
        tmp_path / "full",
        method="full",
        steps=2,
        batch_size=2,
        prior_weight=1.0,
        prior_samples=2,
        prior_steps=2,
        progress=False,
    )
    assert full.trainable_parameters == full.total_parameters > lora.trainable_parameters
    denoiser, spec, config = load_checkpoint(tmp_path / "full")
    x, sigma = torch.randn(2, 2, 8, 8), torch.tensor([0.5, 2.0])
    with torch.no_grad():
        torch.testing.assert_close(denoiser(x, sigma), full.model(x, sigma))
    assert config.steps == 2


def test_finetune_refuses_bad_data_and_settings(checkpoint, tmp_path):
    other_grid = generate("darcy", 2, 16, seed=0, progress=False)
    with pytest.raises(DataError, match="do not fit the base model"):
        finetune(checkpoint, other_grid, tmp_path / "x.safetensors", steps=1, progress=False)
    few = generate("darcy", 2, 8, seed=0, progress=False)
    with pytest.raises(LoRAError, match="rank must be a positive integer"):
        finetune(checkpoint, few, tmp_path / "x.safetensors", rank=0, steps=1, progress=False)
    with pytest.raises(ValueError, match="prior_samples must be"):
        finetune(
            checkpoint,
            few,
            tmp_path / "x.safetensors",
            steps=1,
            prior_weight=1.0,
            prior_samples=0,
            progress=False,
        )
    with pytest.raises(ValueError, match="unknown fine-tuning method"):
        finetune(checkpoint, few, tmp_path / "x.safetensors", method="half", progress=False)


def test_cli_finetune(checkpoint, few, tmp_path, capsys):
    data = tmp_path / "few.nc"
    write_fields(few, data)
    out = tmp_path / "adapter.safetensors"
    args = ["finetune", "--base", str(checkpoint), "--data", str(data), "--out", str(out)]
    small = ["--steps", "2", "--batch-size", "2", "--quiet"]
    prior = ["--prior-weight", "1", "--prior-samples", "2", "--prior-steps", "2"]
    assert main([*args, "--lora-rank", "2", *small, *prior]) == 0
    assert "wrote" in capsys.readouterr().out and out.is_file()
    meta = json.loads(out.with_suffix(".json").read_text())["meta"]
    assert meta["command"].startswith("pdediff finetune")
    assert main([*args, "--lora-rank", "2", *small]) == 2
    assert "exists" in capsys.readouterr().err
    assert main([*args, "--lora-rank", "0", *small, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "rank must be a positive integer" in err and len(err.strip().splitlines()) == 1
    assert main([*args, "--lora-rank", "2", "--full", *small]) == 2
    assert "not both" in capsys.readouterr().err
    denoiser, _ = load_adapted(checkpoint, out)
    assert isinstance(denoiser, torch.nn.Module)
