"""benchmarks/cascade_table.py on a tiny setting: an 8 -> 16 cascade and a direct model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

TINY = [
    "--grids", "8", "16",
    "--train-samples", "12",
    "--test-samples", "2",
    "--ref-samples", "4",
    "--channels", "8",
    "--channel-mult", "1", "2",
    "--batch", "4",
    "--base-steps", "3",
    "--sr-steps", "3",
    "--aug-levels", "0", "0.1",
    "--direct-model", "none",
    "--direct-budget",
    "--gen-samples", "3",
    "--members", "2",
    "--steps", "3",
    "--points", "20",
    "--inverse-weight", "1",
    "--forward-weight", "1",
    "--threads", "1",
]  # fmt: skip


def _numbers(x):
    """Every number in a nested JSON value."""
    if isinstance(x, dict):
        return [n for v in x.values() for n in _numbers(v)]
    if isinstance(x, list):
        return [n for v in x for n in _numbers(v)]
    return [x] if isinstance(x, int | float) and not isinstance(x, bool) else []


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("cascade_table")


@pytest.fixture(scope="module")
def run(bench, tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade_table")
    argv = [*TINY, "--work", str(root / "work"), "--out", str(root / "out.json")]
    first = bench.main(argv)
    return argv, first, json.loads((root / "out.json").read_text())


def test_table_structure_and_finite_numbers(run):
    _, result, saved = run
    assert {"command", "machine", "date", "settings", "models", "rows", "markdown"} <= set(saved)
    labels = [r["label"] for r in saved["rows"]]
    assert labels == ["direct (cascade's budget)", "cascade 8→16, s = 0", "cascade 8→16, s = 0.1"]
    models = saved["models"]
    assert models["base"]["grid"] == [8, 8] and models["direct"] is None
    assert [m["grid"] for m in models["sr"]] == [[16, 16]]
    assert models["sr"][0]["cascade"]["stage"] == "sr"
    assert models["direct_budget"]["step"] == 6  # base + SR steps
    cascade = saved["rows"][1]
    assert cascade["parameters"] == models["base"]["parameters"] + models["sr"][0]["parameters"]
    for row in saved["rows"]:
        gen = row["generation"]
        assert len(gen["spectra"]["a"]) == len(saved["reference_spectra"]["k"])
        assert all(math.isfinite(gen[k]) for k in ("spectrum_a", "spectrum_u"))
    assert saved["rows"][0]["generation"]["stages"] is None  # a direct model
    floor = saved["generation_floor"]
    assert floor["n"] == 3 and floor["residual"]["mean"] < 1e-4  # true pairs (float32 files)
    for row in saved["rows"][1:]:  # every stage with the asked steps, SR at the row's level
        stages = row["generation"]["stages"]
        assert [(s["grid"], s["steps"]) for s in stages] == [([8, 8], 3), ([16, 16], 3)]
        assert [s["aug_level"] for s in stages] == [None, row["aug_level"]]
    for task, field in (("inverse", "a"), ("forward", "u")):
        summary = saved["posterior"][task]["summary"]
        assert set(summary) == set(labels)
        for label in labels:
            entry = summary[label][field]
            assert entry["failed"] == 0 and entry["rel_l2_mean"]["n"] == 2
            assert entry["spectrum_member"]["mean"] >= 0
    assert "error_rate_mean" in saved["posterior"]["inverse"]["summary"][labels[0]]["a"]
    numbers = _numbers({k: saved[k] for k in ("models", "rows", "posterior")})
    assert numbers and all(math.isfinite(n) for n in numbers)
    assert "| cascade 8→16, s = 0.1 |" in result["markdown"]["posterior"]
    assert "| cascade 8→16, s = 0 |" in result["markdown"]["generation"]
    assert "| data (3 training fields) |" in result["markdown"]["generation"]


def test_resume_reuses_every_part(run, bench):
    argv, first, _ = run
    again = bench.main([*argv, "--resume"])
    assert {again["models"]["base"]["status"], again["models"]["sr"][0]["status"]} == {"reused"}
    assert all(r["generation"]["status"] == "reused" for r in again["rows"])
    assert {p["status"] for p in again["posterior"].values()} == {"reused"}
    assert again["markdown"] == first["markdown"]
    a = first["rows"][1]["generation"]["spectrum_a"]
    assert np.isclose(again["rows"][1]["generation"]["spectrum_a"], a)


def test_resume_goes_on_after_the_samples_done(run, bench):
    argv, first, _ = run
    table = Path(first["posterior"]["inverse"]["table"])
    doc = json.loads(table.read_text())  # as if killed after the first test sample
    doc.update(complete=False, samples_done=1, rows=[r for r in doc["rows"] if r["sample"] == 0])
    table.write_text(json.dumps(doc))
    again = bench.main([*argv, "--resume"])
    assert again["posterior"]["inverse"]["status"] == "continued"
    assert again["posterior"]["forward"]["status"] == "reused"
    summary = again["posterior"]["inverse"]["summary"]
    expected = first["posterior"]["inverse"]["summary"]
    for label, fields in expected.items():
        for name, metrics in fields.items():
            for metric in set(metrics) - {"seconds", "failed"}:  # the same samples, scores
                got, want = summary[label][name][metric], metrics[metric]
                assert np.isclose(got["mean"], want["mean"]) and got["n"] == want["n"]


def test_refusals(bench, tmp_path):
    out = ["--work", str(tmp_path / "w"), "--out", str(tmp_path / "o.json")]
    with pytest.raises(SystemExit, match="finest grid"):  # darcy64 is on 64 x 64
        bench.main(["--grids", "8", "16", *out])
    with pytest.raises(SystemExit, match="increasing"):
        bench.main(["--grids", "16", "8", "--direct-model", "none", *out])
