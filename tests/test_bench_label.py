"""benchmarks/label_table.py runs end to end on a tiny setting (8x8 Poisson and Helmholtz,
one labelled model after 3 training steps) and writes the JSON it documents; a second run
reuses the data and the model."""

from __future__ import annotations

import json
import math

import pytest

from pdediff.io import open_fields
from pdediff.train import read_checkpoint

TINY = [
    "--resolution", "8", "--train-samples", "4", "--test-samples", "2", "--train-steps", "3",
    "--channels", "8", "--channel-mult", "1", "2", "--batch", "4", "--points", "10",
    "--members", "2", "--steps", "2", "--threads", "1", "--prior-samples", "2",
]  # fmt: skip
ROWS = {
    "joint, right label",
    "joint, swapped label",
    "solver, right label",
    "per-family, joint",
    "per-family, solver",
}


@pytest.fixture(scope="module")
def label_table(load_benchmark):
    return load_benchmark("label_table")


def test_label_table(label_table, tmp_path, capsys):
    work, out = tmp_path / "work", tmp_path / "labels.json"
    result = label_table.main(["--work", str(work), "--out", str(out), *TINY])
    doc = json.loads(out.read_text())
    assert doc["command"].startswith("python ") and doc["machine"]["cpu_count"] >= 1
    merged = open_fields(work / "train.nc")
    assert sorted(set(merged["pde"].values.tolist())) == ["helmholtz", "poisson"]
    assert read_checkpoint(work / "model").fieldspec.label["classes"] == ["helmholtz", "poisson"]
    for fam in ("poisson", "helmholtz"):  # one model per family on its part of the data
        spec = read_checkpoint(work / f"model_{fam}").fieldspec
        assert not spec.label and spec.attrs["pde"] == fam
    records = doc["records"]
    for task, baseline in (("forward", "interp-solve"), ("inverse", "pde-fit")):
        for fam, other in (("poisson", "helmholtz"), ("helmholtz", "poisson")):
            rows = {r["row"]: r for r in records if r["task"] == task and r["family"] == fam}
            assert set(rows) == ROWS | {baseline}
            assert rows["joint, swapped label"]["label"] == other
            assert rows["joint, right label"]["label"] == fam
            field = "u" if task == "forward" else "a"
            for r in rows.values():
                s = r["scores"][field]["rel_l2_mean"]
                assert s["n"] == 2 and math.isfinite(s["mean"])
            assert rows["solver, right label"]["preset"] == "pdediff"
            assert ("consistency_steps" in rows["solver, right label"]["protocol"]) == (
                task == "inverse"
            )
    assert (
        "| joint, swapped label |" in doc["markdown"] and doc["markdown"] in capsys.readouterr().out
    )
    assert result["records"] == records
    for label in ("poisson", "helmholtz"):  # the prior check: residuals under both families
        prior = doc["prior"][label]
        assert set(prior) == {"residual_poisson", "residual_helmholtz", "u_rms", "data_u_rms"}
        assert all(math.isfinite(v) and v >= 0 for v in prior.values())
    # a second run reuses the data and the trained model (resume: nothing retrained)
    states = [work / m / "state.json" for m in ("model", "model_poisson", "model_helmholtz")]
    stamps = [s.stat().st_mtime_ns for s in states]
    label_table.main(["--work", str(work), "--out", str(out), "--resume", *TINY])
    assert [s.stat().st_mtime_ns for s in states] == stamps
