"""Exported models: the slim directory, loading it for sampling, what it refuses, the model
card generated from the checkpoint, ``pdediff export``, the command and machine recorded by
``pdediff train``, and :func:`pdediff.models.shipped_model`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import pdediff.models as models
from pdediff.cli import main
from pdediff.errors import PdediffError
from pdediff.generate import generate
from pdediff.io import write_fields
from pdediff.train import CheckpointError, load_checkpoint, read_checkpoint, train
from pdediff.train.export import export_model

SLIM = [
    "MODEL_CARD.md",
    "card.json",
    "config.json",
    "ema.safetensors",
    "fieldspec.json",
    "log.jsonl",
    "state.json",
]
TINY_TOML = """
batch_size = 4
steps = 2
log_every = 1
checkpoint_every = 2
[model.backbone_kwargs]
model_channels = 8
channel_mult = [1, 2]
"""

#: A made-up `pdediff evaluate` document (the numbers only need to reach the card).
EVALUATION = {
    "command": "pdediff evaluate --model m --data test.nc --task forward --out e.json",
    "model": "m",
    "data": "test.nc",
    "data_history": "2026-12-08T00:42:21Z pdediff 0.1.0: generate darcy n=4 resolution=8 seed=7",
    "task": "forward",
    "points": 500,
    "members": 8,
    "samples": 4,
    "samples_done": 4,
    "complete": True,
    "summary": {
        "diffusion": {
            "u": {
                "failed": 0,
                "rel_l2_mean": {"mean": 0.0123, "std": 0.004, "n": 4},
                "crps": {"mean": 0.5, "std": 0.1, "n": 4},
            }
        }
    },
    "rank_histogram": {"diffusion": {"u": [1, 2, 3]}},
    "rows": [{"method": "diffusion"}],
}


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported") / "tiny"
    return export_model(checkpoint, out, name="tiny")


@pytest.fixture(scope="module")
def darcy_file(tmp_path_factory):
    ds = generate("darcy", 12, 8, seed=0, progress=False)
    return write_fields(ds, tmp_path_factory.mktemp("data") / "darcy8.nc")


def card(folder: Path) -> tuple[dict, str]:
    return json.loads((folder / "card.json").read_text()), (folder / "MODEL_CARD.md").read_text()


# -- the slim directory -------------------------------------------------------------------
def test_export_is_slim_and_samples_like_the_ema_model(checkpoint, exported):
    assert sorted(p.name for p in exported.iterdir()) == SLIM
    for name in ("config.json", "fieldspec.json", "ema.safetensors", "log.jsonl"):
        assert (exported / name).read_bytes() == (checkpoint / name).read_bytes(), name
    ckpt = read_checkpoint(exported)
    assert ckpt.exported and not read_checkpoint(checkpoint).exported
    assert ckpt.state["exported"]["from"] == str(checkpoint)

    full, spec, config = load_checkpoint(checkpoint)
    slim, slim_spec, slim_config = load_checkpoint(exported)
    assert slim_spec.to_dict() == spec.to_dict() and slim_config == config
    x = torch.randn(3, len(spec.variables), *spec.shape, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.05, 1.0, 20.0])
    assert torch.equal(slim(x, sigma), full(x, sigma))


def test_slim_model_refuses_raw_weights_and_resume(exported, tmp_path):
    with pytest.raises(CheckpointError, match=r"raw \(non-EMA\) weights .* exported model"):
        load_checkpoint(exported, ema=False)
    data = generate("darcy", 12, 8, seed=0, progress=False)
    with pytest.raises(CheckpointError, match="cannot resume training from .* not a training"):
        train(data, exported, resume=True, progress=False)

    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    (broken / "ema.safetensors").unlink()
    with pytest.raises(CheckpointError, match="complete exported pdediff model: missing ema"):
        load_checkpoint(broken)


def test_training_checkpoint_still_needs_every_file(checkpoint, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(checkpoint, d)
    (d / "optimizer.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"complete pdediff checkpoint: missing optimizer"):
        read_checkpoint(d)


# -- the card -----------------------------------------------------------------------------
def test_card_comes_from_the_checkpoint(checkpoint, exported):
    facts, text = card(exported)
    ckpt = read_checkpoint(checkpoint)
    t = facts["training"]
    assert (t["seed"], t["steps"], t["batch_size"]) == (0, 10, 4)
    assert t["samples_seen"] == ckpt.state["samples_seen"] == 40
    assert t["epochs"] == pytest.approx(40 / 12)
    assert t["elapsed_seconds"] == ckpt.state["elapsed"]
    logged = [
        json.loads(line)["loss"] for line in (checkpoint / "log.jsonl").read_text().splitlines()
    ]
    assert t["final_loss"]["mean"] == pytest.approx(sum(logged[-5:]) / len(logged[-5:]))
    parameters = sum(p.numel() for p in ckpt.build().parameters())
    assert facts["architecture"]["parameters"] == parameters
    assert facts["fields"]["pde"] == "darcy" and facts["fields"]["shape"] == [8, 8]
    assert facts["fields"]["params"]["tau"] == ckpt.fieldspec.attrs["param_tau"]
    assert [v["name"] for v in facts["fields"]["variables"]] == ["a", "u"]

    assert text.startswith("# tiny\n")
    assert f"{parameters:,} parameters" in text
    assert "- Seed: 0" in text and "- Steps: 10 trained" in text and "- Batch size: 4" in text
    assert "Command: not recorded." in text  # the fixture trained through the Python API
    assert "Recipe: not recorded." in text and "No evaluation recorded." in text
    assert "generate darcy n=12 resolution=8 seed=0" in text  # the data's history attribute


def test_card_with_command_recipe_and_metrics(checkpoint, tmp_path):
    table = tmp_path / "eval.json"
    table.write_text(json.dumps(EVALUATION))
    out = export_model(
        checkpoint,
        tmp_path / "m",
        name="m",
        command="pdediff train --data d.nc --out run --config tiny.toml",
        data_recipe="pdediff generate darcy --n 12 --resolution 8 -o d.nc",
        metrics=table,
    )
    facts, text = card(out)
    assert facts["training"]["command_from"] == "export"
    assert "```\npdediff train --data d.nc --out run --config tiny.toml\n```" in text
    assert "```\npdediff generate darcy --n 12 --resolution 8 -o d.nc\n```" in text
    assert "| method | field | n | rel_l2_mean | crps |" in text
    assert "| diffusion | u | 4 | 0.01230 ± 0.004 | 0.5000 ± 0.1 |" in text
    assert "samples done: 4 of 4" in text and f"file: {table}" in text
    assert "- test data made by: 2026-12-08T00:42:21Z pdediff 0.1.0: generate darcy n=4" in text
    (evaluation,) = facts["metrics"]
    assert "rows" not in evaluation and evaluation["summary"] == EVALUATION["summary"]

    same = export_model(checkpoint, tmp_path / "m2", name="m2", metrics=EVALUATION)
    assert card(same)[0]["metrics"][0]["summary"] == EVALUATION["summary"]

    with pytest.raises(PdediffError, match="not an evaluation table"):
        export_model(checkpoint, tmp_path / "m3", name="m3", metrics={"rows": []})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_model(checkpoint, tmp_path / "m3", name="m3", metrics=tmp_path / "none.json")
    assert not (tmp_path / "m3").exists()


def test_overwrite_protection(checkpoint, exported, tmp_path):
    out = tmp_path / "model"
    export_model(checkpoint, out, name="a")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        export_model(checkpoint, out, name="b")
    assert card(out)[0]["name"] == "a"
    export_model(checkpoint, out, name="b", overwrite=True)
    assert card(out)[0]["name"] == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary left

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(PdediffError, match="not an exported pdediff model; refusing"):
        export_model(checkpoint, other, name="c", overwrite=True)
    assert (other / "notes.txt").read_text() == "mine"
    with pytest.raises(PdediffError, match="is the checkpoint being exported"):
        export_model(checkpoint, checkpoint, name="c", overwrite=True)
    with pytest.raises(PdediffError, match="model name"):
        export_model(checkpoint, tmp_path / "d", name="no spaces")


# -- command line -------------------------------------------------------------------------
def test_train_records_command_and_machine_for_the_card(darcy_file, tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_TOML)
    run = tmp_path / "run"
    first = ["train", "--data", str(darcy_file), "--out", str(run), "--config", str(cfg)]
    assert main([*first, "--quiet"]) == 0
    state = read_checkpoint(run).state
    command = "pdediff " + " ".join([*first, "--quiet"])
    assert state["command"] == command and state["commands"] == [command]
    machine = state["machine"]
    assert machine["device"] == "cpu" and machine["cpu_count"] >= 1 and machine["platform"]

    again = ["train", "--data", str(darcy_file), "--out", str(run), "--resume", "--steps", "4"]
    assert main([*again, "--quiet"]) == 0
    state = read_checkpoint(run).state
    assert state["step"] == 4 and state["command"] == command
    assert state["commands"] == [command, "pdediff " + " ".join([*again, "--quiet"])]

    out = tmp_path / "model"
    assert main(["export", str(run), str(out), "--name", "tiny"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    facts, text = card(out)
    assert facts["training"]["command"] == command and f"```\n{command}\n```" in text
    assert "--resume --steps 4" in text and "- Machine: platform " in text


def test_cli_export_round_trip(checkpoint, tmp_path, capsys):
    table = tmp_path / "eval.json"
    table.write_text(json.dumps(EVALUATION))
    out = tmp_path / "cli"
    args = ["export", str(checkpoint), str(out), "--name", "tiny", "--metrics", str(table)]
    recipe = ["--data-recipe", "pdediff generate darcy -o d.nc", "--command", "pdediff train x"]
    assert main([*args, *recipe]) == 0
    assert "MODEL_CARD.md" in capsys.readouterr().out
    facts, text = card(out)
    assert facts["training"]["command"] == "pdediff train x"
    assert facts["data"]["recipe"] == "pdediff generate darcy -o d.nc"
    assert "| diffusion | u |" in text
    denoiser, _, _ = load_checkpoint(out)
    assert not any(p.requires_grad for p in denoiser.parameters())

    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("pdediff export: error:") and "pass --overwrite" in err
    assert err.count("\n") == 1
    assert main([*args, "--overwrite"]) == 0
    assert main(["export", str(tmp_path / "nowhere"), str(tmp_path / "x"), "--name", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


# -- shipped models -----------------------------------------------------------------------
def test_shipped_model_errors_and_lookup(exported, tmp_path, monkeypatch):
    with pytest.raises(models.ShippedModelError, match=r"no shipped model named 'nope'.*darcy64"):
        models.shipped_model("nope")

    monkeypatch.setattr(models, "SHIPPED", {"ghost": "ghost", "tiny": "tiny"})
    monkeypatch.setattr(models, "_ROOT", tmp_path)
    with pytest.raises(models.ShippedModelError, match="'ghost' are missing from this install"):
        models.shipped_model("ghost")
    shutil.copytree(exported, tmp_path / "tiny")
    assert models.shipped_model("tiny") == tmp_path / "tiny"
    load_checkpoint(models.shipped_model("tiny"))


def test_export_carries_tuned_guidance_and_several_evaluations(checkpoint, tmp_path):
    import shutil

    src = tmp_path / "ckpt"
    shutil.copytree(checkpoint, src)
    tuned = {
        "pdediff": {"inverse": {"default_obs_weight": 300.0}},
        "tuning": {
            "inverse": {
                "command": "python benchmarks/tune_guidance.py ...",
                "sweep": {"points": [{"weight": 300.0, "score": 0.05, "metric": "err"}]},
            },
            "forward": {
                "command": "python benchmarks/tune_guidance.py --points 500 31 ...",
                "sweep": {
                    "points": [
                        {"weight": 30.0, "score": 0.06, "metric": "err"}
                        | {"per_points": {"500": {"score": 0.01}, "31": {"score": 0.36}}}
                    ]
                },
            },
        },
    }
    (src / "guidance.json").write_text(json.dumps(tuned))
    inverse = {**EVALUATION, "task": "inverse"}
    out = export_model(src, tmp_path / "m", name="m", metrics=[EVALUATION, inverse])
    assert json.loads((out / "guidance.json").read_text()) == tuned
    facts, text = card(out)
    assert [m.get("task") for m in facts["metrics"]] == [EVALUATION.get("task"), "inverse"]
    assert text.count("## Evaluation") == 2
    assert 'task inverse: {"default_obs_weight": 300.0}' in text and "300: 5.00 %" in text
    assert "30: 6.00 % (500: 1.00 %, 31: 36.00 %)" in text
    assert "forward sweep (err, geometric mean over the sensor counts" in text


@pytest.mark.parametrize("name", sorted(models.SHIPPED))
def test_every_shipped_model_loads_with_its_card_and_guidance(name):
    """Each shipped model: its family's fields on its grid, a card that matches its state,
    and tuned guidance for every task the demo runs."""
    from pdediff.demo import demo_tasks
    from pdediff.models import shipped_model
    from pdediff.pde.registry import FAMILIES
    from pdediff.solve.api import resolve_protocol
    from pdediff.train import load_checkpoint

    path = shipped_model(name)
    denoiser, spec, _ = load_checkpoint(path)
    family = FAMILIES[spec.attrs["pde"]]
    assert name.startswith(family.name)
    assert spec.shape == (int(name[len(family.name) :]),) * 2
    assert list(spec.variables) == list(family.fields)
    x = torch.zeros(1, len(spec.variables), *spec.shape)
    assert denoiser(x, torch.tensor([1.0])).shape == x.shape
    card_facts = json.loads((path / "card.json").read_text())
    assert card_facts["training"]["steps"] == json.loads((path / "state.json").read_text())["step"]
    for task in demo_tasks(spec):  # tuned weights, read by solve
        assert (
            "default_obs_weight"
            in json.loads((path / "guidance.json").read_text())["pdediff"][task]
        )
        assert resolve_protocol(path, "pdediff", task).default_obs_weight > 0
