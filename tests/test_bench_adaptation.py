"""benchmarks/adaptation_table.py runs end to end on a tiny setting (8x8 Darcy, one pool
size, one LoRA rank, a few steps) and writes the JSON it documents; --resume reuses every
part."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def script(load_benchmark):
    return load_benchmark("adaptation_table")


TINY = [
    "--resolution", "8", "--old-train", "8", "--pool-sizes", "3", "--test-samples", "2",
    "--channels", "8", "--channel-mult", "1", "2", "--base-steps", "3", "--base-batch", "4",
    "--ranks", "2", "--ft-steps", "2", "--ft-batch", "2", "--scratch-steps", "2",
    "--prior-samples", "2", "--prior-steps", "2", "--members", "2", "--steps", "2",
    "--points", "10", "--poe-correctors", "1",
]  # fmt: skip


def _finite_stats(node) -> int:
    """Count the ``{"mean", "std", "n"}`` stats under ``node``, asserting each is finite."""
    if isinstance(node, dict):
        if {"mean", "std", "n"} <= set(node):
            assert math.isfinite(node["mean"]) and math.isfinite(node["std"]) and node["n"] > 0
            return 1
        return sum(_finite_stats(v) for v in node.values())
    if isinstance(node, list):
        return sum(_finite_stats(v) for v in node)
    return 0


@pytest.fixture(scope="module")
def run(tmp_path_factory, script):
    folder = tmp_path_factory.mktemp("adapt")
    argv = [*TINY, "--work", str(folder / "work"), "--out", str(folder / "adapt.json")]
    return script, argv, script.main(argv), folder


def test_json_structure(run):
    _, _, result, folder = run
    doc = json.loads((folder / "adapt.json").read_text())
    assert {"command", "machine", "date", "settings", "regimes", "base", "runs", "poe"} <= set(doc)
    assert doc["regimes"]["new"]["tau"] == 8.0 and doc["regimes"]["old"]["tau"] == 3.0
    labels = [r["label"] for r in doc["runs"]]
    assert labels == ["n3_scratch", "n3_full", "n3_lora-r2", "n3_lora-r2-prior"]
    runs = {r["label"]: r for r in doc["runs"]}
    total = doc["base"]["parameters"]
    assert runs["n3_full"]["trainable_parameters"] == total
    assert runs["n3_scratch"]["trainable_parameters"] == total
    assert 0 < runs["n3_lora-r2"]["trainable_parameters"] < total
    assert runs["n3_lora-r2"]["prior_loss"] is None
    assert runs["n3_lora-r2-prior"]["prior_seconds"] > 0
    assert math.isfinite(runs["n3_lora-r2-prior"]["prior_loss"])
    assert all(r["seconds"] > 0 for r in doc["runs"])
    for entry in [doc["base"], *doc["runs"]]:
        for regime in ("new", "old"):
            inverse = entry["evals"][regime]["inverse"]
            forward = entry["evals"][regime]["forward"]
            assert inverse["complete"] and Path(inverse["table"]).is_file()
            assert inverse["scores"]["a"]["error_rate_mean"]["n"] == 2
            assert forward["scores"]["u"]["rel_l2_mean"]["n"] == 2
    assert doc["poe"]["methods"] == ["base", "small", "product-w0.5"]
    for task in ("inverse", "forward"):
        summary = doc["poe"]["tasks"][task]["summary"]
        assert set(summary) == set(doc["poe"]["methods"])
        assert all(s["a"]["rel_l2_mean"]["n"] == 2 for s in summary.values())
    table = json.loads(Path(doc["poe"]["tasks"]["inverse"]["table"]).read_text())
    assert table["protocol"]["sampler"] == "pc" and table["complete"]
    assert _finite_stats(doc) > 50
    assert doc["markdown"] == result["markdown"]
    assert "| 3 | lora | 2 | 1 |" in doc["markdown"]["adaptation"]


def test_new_test_set_is_relabelled_for_evaluate(run):
    from pdediff.io import open_fields

    _, _, result, _ = run
    true = open_fields(result["data"]["new_test"])
    scored = open_fields(result["data"]["new_test_eval"])
    assert true.attrs["param_tau"] == 8.0 and scored.attrs["param_tau"] == 3.0
    assert "benchmark_note" in scored.attrs and (true["a"] == scored["a"]).all()


def test_resume_reuses_everything(run, capsys):
    script, argv, result, _ = run
    with pytest.raises(SystemExit, match="--resume"):
        script.main(argv)
    again = script.main([*argv, "--resume"])
    assert again["base"]["status"] == "reused"
    assert {r["status"] for r in again["runs"]} == {"reused"}
    statuses = {e["status"] for r in again["runs"] for v in r["evals"].values() for e in v.values()}
    assert statuses == {"reused"}
    assert {t["status"] for t in again["poe"]["tasks"].values()} == {"reused"}
    assert again["markdown"] == result["markdown"]
    printed = capsys.readouterr().out
    assert "fine-tuning" not in printed and "product-w0.5" in printed


def test_only_prior_parameters_may_change(tmp_path, script):
    with pytest.raises(SystemExit, match="prior parameters"):
        script.main(["--work", str(tmp_path), "--out", "x.json", "--new-param", "a_high=20"])
