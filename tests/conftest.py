"""Fixtures shared by the test modules."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tensors in the tests are small: intra-op threads only add synchronisation, and on
    a loaded 2-core machine their spinning made some modules 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def load_benchmark():
    """``load(name)``: the script ``benchmarks/NAME.py`` as a module (the benchmark scripts
    are not a package; each import runs the file afresh)."""

    def load(name: str):
        path = BENCHMARKS / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A tiny Darcy (a, u) model at 8x8 after 10 training steps (12 samples, seed 0)."""
    from pdediff.generate import generate
    from pdediff.train import TrainConfig, train

    cfg = TrainConfig.from_dict(
        {
            "model": {"backbone_kwargs": {"model_channels": 8, "channel_mult": [1, 2]}},
            "optimizer": {"lr": 2e-3, "warmup_steps": 5},
            "batch_size": 4,
            "steps": 10,
            "log_every": 5,
            "checkpoint_every": 10,
        }
    )
    out = tmp_path_factory.mktemp("ckpt") / "run"
    train(generate("darcy", 12, 8, seed=0, progress=False), out, cfg, progress=False)
    return out


def neuraloperator_samples() -> Path:
    """The two real neuraloperator files of shared/ (beside the repository, as CI lays it)."""
    for root in (Path(__file__).resolve().parents[2], Path("/work")):
        folder = root / "shared" / "data" / "neuraloperator"
        if folder.exists():
            return folder
    raise FileNotFoundError("shared/data/neuraloperator not found beside the repository")
