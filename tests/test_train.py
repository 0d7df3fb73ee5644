"""Training: config files, loss decrease, checkpoints (round trip, corruption, mismatch),
exact resume, the ``pdediff train`` CLI and two-process DDP."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pdediff.train.loop as loop
from pdediff.cli import main
from pdediff.generate import generate
from pdediff.io import write_fields
from pdediff.train import (
    CheckpointError,
    ConfigError,
    TrainConfig,
    load_checkpoint,
    load_config,
    read_checkpoint,
    train,
)
from pdediff.train.checkpoint import (
    pack_state,
    read_tensors,
    recover,
    unpack_state,
    write_tensors,
)
from pdediff.train.distributed import state_digest

TINY = {
    "model": {"backbone_kwargs": {"model_channels": 8, "channel_mult": [1, 2]}},
    "optimizer": {"lr": 2e-3, "warmup_steps": 5},
    "batch_size": 4,
    "log_every": 2,
    "checkpoint_every": 5,
}
TINY_TOML = """
batch_size = 4
log_every = 2
checkpoint_every = 5
[model.backbone_kwargs]
model_channels = 8
channel_mult = [1, 2]
[optimizer]
lr = 2e-3
warmup_steps = 5
"""
TENSOR_FILES = ("model.safetensors", "ema.safetensors", "optimizer.safetensors")


def tiny(**changes) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, **changes})


@pytest.fixture(scope="module")
def darcy():
    return generate("darcy", 12, 8, seed=0, progress=False)


@pytest.fixture(scope="module")
def darcy_file(tmp_path_factory, darcy):
    return write_fields(darcy, tmp_path_factory.mktemp("data") / "darcy8.nc")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, darcy):
    """A checkpoint after 10 steps, and the TrainResult."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    return out, train(darcy, out, tiny(steps=10), progress=False)


def assert_same_tensors(a: Path, b: Path) -> None:
    for name in TENSOR_FILES:
        (sa, _), (sb, _) = read_tensors(a / name), read_tensors(b / name)
        ta, _ = pack_state(sa)
        tb, _ = pack_state(sb)
        assert ta.keys() == tb.keys(), name
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{name}: {k}"


# -- config -------------------------------------------------------------------------------
def test_config_files_and_unknown_keys(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(TINY_TOML)
    cfg = load_config(toml)
    assert cfg.batch_size == 4 and cfg.optimizer.lr == 2e-3
    assert cfg.model.backbone_kwargs == {"model_channels": 8, "channel_mult": [1, 2]}
    js = tmp_path / "c.json"
    js.write_text(json.dumps(cfg.to_dict()))
    assert load_config(js) == cfg

    toml.write_text("[optimizer]\nlrr = 1e-3\n")
    with pytest.raises(ConfigError, match=r"unknown key optimizer\.'lrr'"):
        load_config(toml)
    toml.write_text("batchsize = 4\n")
    with pytest.raises(ConfigError, match="unknown key 'batchsize'"):
        load_config(toml)
    toml.write_text('steps = "ten"\n')
    with pytest.raises(ConfigError, match="steps must be an integer"):
        load_config(toml)
    toml.write_text("ema_decay = 1.5\n")
    with pytest.raises(ConfigError, match="ema_decay"):
        load_config(toml)
    toml.write_text("[model.backbone_kwargs]\nin_channels = 3\n")
    with pytest.raises(ConfigError, match="set by the data"):
        load_config(toml)
    toml.write_text("steps = [")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        load_config(toml)


def test_unknown_backbone_kwarg_is_named(tmp_path, darcy):
    cfg = tiny(steps=1, model={"backbone_kwargs": {"model_chanels": 8}})
    with pytest.raises(ConfigError, match="model.backbone_kwargs.'model_chanels'"):
        train(darcy, tmp_path / "x", cfg, progress=False)
    cfg = tiny(steps=1, loss={"P_meen": 0.0})
    with pytest.raises(ConfigError, match="loss.'P_meen'"):
        train(darcy, tmp_path / "y", cfg, progress=False)
    cfg = tiny(steps=1, model={"backbone_kwargs": {"channel_mult": [1, 1, 1, 1, 1]}})
    with pytest.raises(ConfigError, match="cannot process fields of shape"):
        train(darcy, tmp_path / "z", cfg, progress=False)  # 8x8 is not divisible by 2^4


# -- training -----------------------------------------------------------------------------
def test_loss_decreases(tmp_path, darcy):
    cfg = tiny(steps=100, batch_size=8, log_every=20, checkpoint_every=100)
    result = train(darcy, tmp_path / "run", cfg, progress=False)
    losses = [r["loss"] for r in result.history]
    assert [r["step"] for r in result.history] == [20, 40, 60, 80, 100]
    assert losses[-1] < 0.85 * losses[0], losses
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    record = json.loads(lines[-1])
    assert set(record) >= {"step", "loss", "lr", "grad_norm", "samples_per_s", "time"}
    assert record["lr"] == pytest.approx(2e-3)


def test_batches_cover_each_epoch():
    s = loop.BatchSampler(10, 4, seed=3)
    seen = torch.cat([s.indices(k) for k in range(5)])  # 20 positions = 2 epochs
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert sorted(seen[10:].tolist()) == list(range(10))
    assert torch.equal(loop.BatchSampler(10, 4, seed=3).indices(3), s.indices(3))


# -- checkpoints --------------------------------------------------------------------------
def test_checkpoint_round_trip(trained, darcy):
    out, result = trained
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "fieldspec.json", "log.jsonl", "state.json", *TENSOR_FILES]
    )
    raw, spec, cfg = load_checkpoint(out, ema=False)
    assert cfg == tiny(steps=10)
    assert (
        spec.variables == ("a", "u") and spec.to_dict() == read_checkpoint(out).fieldspec.to_dict()
    )
    trained_state = result.model.state_dict()
    for k, v in raw.state_dict().items():
        assert torch.equal(v, trained_state[k]), k
    x = spec.to_tensor(darcy)[:3]
    sigma = torch.tensor([0.1, 1.0, 10.0])
    result.model.eval()
    with torch.no_grad():
        assert torch.equal(raw(x, sigma), result.model(x, sigma))
    ema_denoiser, _, _ = load_checkpoint(out)
    assert not torch.equal(ema_denoiser(x, sigma), raw(x, sigma))
    assert read_checkpoint(out).state["rank_digests"] == [state_digest(raw)]


def test_optimizer_state_packs_without_pickle(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.8, 0.99))
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = opt.state_dict()
    write_tensors(tmp_path / "o.safetensors", state, {"step": 1})
    back, meta = read_tensors(tmp_path / "o.safetensors")
    assert meta == {"step": 1}
    assert back["param_groups"] == state["param_groups"]  # tuples and int keys restored
    assert set(back["state"]) == {0, 1}
    for i in (0, 1):
        for k, v in state["state"][i].items():
            assert torch.equal(back["state"][i][k], v)
    tensors, skeleton = pack_state({"a": (1, 2.5, None), 3: [torch.ones(2)]})
    assert json.loads(json.dumps(skeleton)) == skeleton
    assert unpack_state(tensors, skeleton)["a"] == (1, 2.5, None)


def test_bad_checkpoints_give_clear_errors(trained, tmp_path):
    src, _ = trained

    def broken(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst

    d = broken("missing")
    (d / "ema.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing ema\.safetensors"):
        load_checkpoint(d)

    d = broken("truncated_json")
    text = (d / "config.json").read_text()
    (d / "config.json").write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        load_checkpoint(d)

    d = broken("corrupt_weights")
    blob = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(blob[: len(blob) // 3])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a readable"):
        load_checkpoint(d, ema=False)

    d = broken("mismatch")
    meta = json.loads((d / "config.json").read_text())
    meta["architecture"]["backbone_config"]["model_channels"] = 16
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"ema\.safetensors does not match.*shape"):
        load_checkpoint(d)

    d = broken("inconsistent")
    state = json.loads((d / "state.json").read_text())
    (d / "state.json").write_text(json.dumps({**state, "step": 99}))
    with pytest.raises(CheckpointError, match="inconsistent"):
        load_checkpoint(d)

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_interrupted_save_is_recovered(trained, tmp_path):
    src, _ = trained
    run = tmp_path / "run"
    shutil.copytree(src, tmp_path / ".run.old")  # a save stopped between its two renames
    (tmp_path / ".run.x1y2.tmp").mkdir()  # and a half-written one
    with pytest.raises(FileNotFoundError, match="backup of an interrupted save"):
        read_checkpoint(run)
    assert recover(run)
    assert read_checkpoint(run).step == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# -- resume -------------------------------------------------------------------------------
def test_resume_is_bit_identical(tmp_path, darcy, monkeypatch):
    straight = tmp_path / "straight"
    train(darcy, straight, tiny(steps=20), progress=False)

    # a run killed at step 13: its last checkpoint is step 10, its log reaches step 12
    resumed = tmp_path / "resumed"
    real_step = loop._train_step

    def killed_at_13(run, net, step, *args):
        if step == 13:
            raise KeyboardInterrupt
        return real_step(run, net, step, *args)

    monkeypatch.setattr(loop, "_train_step", killed_at_13)
    with pytest.raises(KeyboardInterrupt):
        train(darcy, resumed, tiny(steps=20), progress=False)
    monkeypatch.setattr(loop, "_train_step", real_step)
    assert read_checkpoint(resumed).step == 10

    with pytest.raises(ConfigError, match="different batch_size"):
        train(darcy, resumed, tiny(steps=20, batch_size=8), resume=True, progress=False)
    result = train(darcy, resumed, None, resume=True, progress=False)
    assert result.step == 20 and read_checkpoint(resumed).config == tiny(steps=20)
    assert_same_tensors(straight, resumed)

    def log(path: Path) -> list[tuple]:
        lines = (path / "log.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"], r["grad_norm"]) for r in map(json.loads, lines)]

    assert log(resumed) == log(straight)  # the lines past the checkpoint were replaced
    assert [s for s, _, _ in log(straight)] == sorted({*range(2, 21, 2), 5, 15})  # + saves


# -- CLI ----------------------------------------------------------------------------------
def test_cli_train(tmp_path, darcy_file, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_TOML)
    out = tmp_path / "ckpt"
    args = ["train", "--data", str(darcy_file), "--out", str(out), "--config", str(cfg)]
    assert main([*args, "--steps", "4", "--quiet", "--device", "cpu"]) == 0
    assert "trained" in capsys.readouterr().out
    assert read_checkpoint(out).step == 4

    assert main([*args, "--steps", "6", "--quiet"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert read_checkpoint(out).step == 4

    assert main(["train", "--data", str(darcy_file), "--out", str(out), "--resume",
                 "--steps", "6", "--quiet"]) == 0  # fmt: skip
    assert read_checkpoint(out).step == 6
    assert main([*args, "--resume", "--seed", "5", "--quiet"]) == 2
    assert "different seed" in capsys.readouterr().err

    assert main([*args, "--overwrite", "--steps", "2", "--batch-size", "2", "--quiet"]) == 0
    ckpt = read_checkpoint(out)
    assert ckpt.step == 2 and ckpt.config.batch_size == 2
    assert [json.loads(s)["step"] for s in (out / "log.jsonl").read_text().splitlines()] == [2]

    cfg.write_text("[optimizer]\nlrr = 1\n")
    assert main([*args, "--overwrite", "--quiet"]) == 2
    assert "unknown key optimizer.'lrr'" in capsys.readouterr().err


# -- DDP ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_stay_in_sync(tmp_path, darcy_file):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_TOML)
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "pdediff.cli", "train", "--data", str(darcy_file), "--out", str(out),
        "--config", str(cfg), "--steps", "6", "--device", "cpu", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr[:6000]
    assert proc.stdout.count("trained") == 1  # rank 0 reports
    ckpt = read_checkpoint(out)
    assert ckpt.step == 6 and ckpt.state["world_size"] == 2
    rank0, rank1 = ckpt.state["rank_digests"]
    assert rank0 == rank1
    raw, _, _ = load_checkpoint(out, ema=False)
    assert state_digest(raw) == rank1  # rank 0's saved weights are rank 1's weights
