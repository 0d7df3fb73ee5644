"""benchmarks/latent_table.py runs end to end on a tiny setting (16x16 Darcy, autoencoders
x2 and x4, a few steps) and writes the JSON it documents; --resume reuses every part and
redoes what a changed setting touches."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

TINY = [
    "--resolutions", "16", "--factors", "2", "4", "--train-samples", "12",
    "--test-samples", "2", "--vae-channels", "4", "--vae-steps", "3", "--vae-batch", "4",
    "--channels", "8", "--channel-mult", "1", "2", "--latent-steps", "3",
    "--pixel-steps", "3", "--batch", "4", "--members", "2", "--steps", "2",
    "--points", "20", "--threads", "1",
]  # fmt: skip
LABELS = ["pixel", "latent-x2", "latent-x4"]


@pytest.fixture(scope="module")
def script(load_benchmark):
    return load_benchmark("latent_table")


@pytest.fixture(scope="module")
def run(tmp_path_factory, script):
    folder = tmp_path_factory.mktemp("latent")
    argv = [*TINY, "--work", str(folder / "work"), "--out", str(folder / "latent.json")]
    return script, argv, script.main(argv), folder


def _finite_stats(node) -> int:
    """Count the ``{"mean", "std", "n"}`` stats under ``node``, asserting each is finite."""
    if isinstance(node, dict):
        if {"mean", "std", "n"} <= set(node):
            assert math.isfinite(node["mean"]) and math.isfinite(node["std"]) and node["n"] > 0
            return 1
        return sum(_finite_stats(v) for v in node.values())
    return 0


def test_json_structure(run):
    _, _, result, folder = run
    doc = json.loads((folder / "latent.json").read_text())
    assert {"command", "machine", "date", "settings", "resolutions", "markdown"} <= set(doc)
    part = doc["resolutions"]["16"]
    assert list(part["autoencoders"]) == ["x2", "x4"]
    for factor, grid in (("x2", [8, 8]), ("x4", [4, 4])):
        vae = part["autoencoders"][factor]
        assert vae["latent_shape"] == grid and vae["settings"]["kl_weight"] == 1e-6
        test = vae["test"]
        values = [*test["relative_l2"].values(), test["error_rate_a"]]
        values += [test["residual"]["original"], test["residual"]["reconstructed"]]
        assert test["samples"] == 2 and all(math.isfinite(v) and v >= 0 for v in values)
        assert 0 < vae["decoder_parameters"] < vae["parameters"]
    models = part["models"]
    assert list(models) == LABELS
    assert models["latent-x2"]["autoencoder_digest"] == part["autoencoders"]["x2"]["digest"]
    # the same UNet: the counts differ only by the input and output convolutions
    assert (
        abs(models["pixel"]["parameters"] - models["latent-x4"]["parameters"])
        < 0.05 * (models["pixel"]["parameters"])
    )
    for label in LABELS:
        for task, target in (("inverse", "a"), ("forward", "u")):
            done = part["posterior"][label][task]
            table = json.loads(Path(done["table"]).read_text())
            assert table["complete"] and table["samples_done"] == 2
            scores = done["scores"]
            assert scores["failed"] == 0 and scores[target]["rel_l2_mean"]["n"] == 2
            assert scores[target]["residual"]["n"] == 2
            per = scores["seconds_per_member"]["mean"]
            assert per == pytest.approx(scores[target]["seconds"]["mean"] / 2)
        assert part["posterior"][label]["inverse"]["scores"]["a"]["error_rate_mean"]["n"] == 2
    assert _finite_stats(doc["resolutions"]) >= 3 * 2 * 12  # models x tasks x stats
    assert doc["markdown"] == result["markdown"]
    assert "| 16² | x4 | 4x4 |" in doc["markdown"]["autoencoders"]
    assert "| 16² | latent-x2 |" in doc["markdown"]["posterior"]


def test_same_sensors_for_every_model(run):
    _, _, result, _ = run
    part = result["resolutions"]["16"]
    seeds = {
        label: [r["obs_seed"] for r in json.loads(Path(d["table"]).read_text())["rows"]]
        for label, d in ((k, v["inverse"]) for k, v in part["posterior"].items())
    }
    assert seeds["pixel"] == seeds["latent-x2"] == seeds["latent-x4"]


def test_resume_reuses_everything(run, capsys):
    script, argv, result, _ = run
    with pytest.raises(SystemExit, match="--resume"):
        script.main(argv)
    capsys.readouterr()
    again = script.main([*argv, "--resume"])
    part = again["resolutions"]["16"]
    assert part["data"]["status"] == "reused"
    assert {v["status"] for v in part["autoencoders"].values()} == {"reused"}
    assert {v["status"] for v in part["models"].values()} == {"reused"}
    assert {d["status"] for v in part["posterior"].values() for d in v.values()} == {"reused"}
    assert again["markdown"] == result["markdown"]
    assert "training" not in capsys.readouterr().out


def test_resume_redoes_only_what_changed(run, tmp_path):
    script, argv, _, _ = run
    out = str(tmp_path / "changed.json")
    again = script.main([*argv, "--resume", "--steps", "3", "--out", out])
    part = again["resolutions"]["16"]
    assert {v["status"] for v in part["models"].values()} == {"reused"}
    assert {d["status"] for v in part["posterior"].values() for d in v.values()} == {"ran"}


def test_bad_factor(tmp_path, script):
    with pytest.raises(SystemExit, match="multiples"):
        script.main(["--work", str(tmp_path / "w"), "--out", "x.json", "--resolutions", "20"])
