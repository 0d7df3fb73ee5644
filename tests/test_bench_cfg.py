"""benchmarks/cfg_table.py runs end to end on a tiny setting (8x8 Helmholtz, a model after 3
training steps, 2 members, 2 sampler steps, one sample per test k) and writes the JSON it
documents; --resume reuses every record; the k fits recover k from exact pairs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pdediff.generate import generate
from pdediff.pde.registry import FAMILIES

K_TEST = (2.5, 4.2)  # inside and outside the training range 1:4
LABELS = {
    "known-solver-w0",
    "known-solver-w1",
    "known-joint-w0",
    "known-joint-w1",
    "unknown-joint",
    "plugin-solver-w1",
}


@pytest.fixture(scope="module")
def cfg_table(load_benchmark):
    return load_benchmark("cfg_table")


def _finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def test_k_fits_recover_k_from_exact_pairs(cfg_table):
    ds = generate("helmholtz", 3, 16, seed=3, progress=False, params={"k": 2.5})
    a, u = (np.asarray(ds[f].values, np.float64) for f in ("a", "u"))
    grid = FAMILIES["helmholtz"].grid(16, {})
    params = {"alpha": 2.0, "tau": 3.0, "length": 1.0}
    np.testing.assert_allclose(cfg_table.fit_k(a, u, grid, params), 2.5, atol=5e-3)
    np.testing.assert_allclose(cfg_table.fit_k_residual(a, u, grid), 2.5, atol=1e-3)
    assert cfg_table.first_resonance(grid) == pytest.approx(math.sqrt(2) * math.pi, rel=0.02)
    post = cfg_table.k_posterior(np.array([2.0, 2.4, 2.6, 3.0]), 2.5)
    assert post["q05"] == 2.0 and post["q95"] == 3.0 and post["covered"] == 1.0
    assert cfg_table.k_posterior(np.array([3.0, 3.1]), 2.5)["covered"] == 0.0


def test_cfg_table(cfg_table, tmp_path, capsys):
    out = tmp_path / "cfg.json"
    argv = [
        "--out", str(out), "--resolution", "8", "--n-train", "12", "--train-steps", "3",
        "--channels", "8", "--batch-size", "4", "--k-test", *map(str, K_TEST),
        "--samples", "1", "--sensors", "0.5", "--members", "2", "--steps", "2",
        "--weights", "0", "1", "--plugin-weights", "1",
    ]  # fmt: skip
    result = cfg_table.main(argv)
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert {"command", "machine", "date", "settings", "training", "parts", "markdown"} <= set(doc)
    assert doc["training"]["step"] == 3 and doc["conditions"]["k"]["high"] == 4.0
    assert Path(doc["model"]) == tmp_path / "cfg" / "model"
    tasks = ("forward", "inverse")
    names = {f"k{k:g}_{t}_{label}" for k in K_TEST for t in tasks for label in LABELS}
    assert set(doc["parts"]) == names
    for name, part in doc["parts"].items():
        meta, (record,) = part["meta"], part["records"].values()
        assert part["summary"]["n"] == 1 and part["target"] == ("u" if "forward" in name else "a")
        for field in ("a", "u"):
            scores = record["scores"][field]
            assert all(_finite(scores[m]) for m in cfg_table.SCORES), (name, field, scores)
        assert _finite(record["k_posterior"]["mean"]) and len(record["k_posterior"]["members"]) == 2
        assert _finite(record["seconds"]) and record["obs_seed"] > 0
        protocol = meta["protocol"]
        assert protocol["steps"] == 2 and protocol["cfg_weight"] == meta["cfg_weight"]
        if meta["mode"] == "solver":
            assert protocol["consistency_steps"] == 10
        else:
            assert protocol["solver"] is False and protocol["pde_weight"] == 0.0
        k_test = meta["k_test"]
        outside = "outside the training range" in " ".join(record["warnings"])
        if meta["k"] == "true":
            assert record["condition"] == k_test and outside == (k_test > 4.0)
        elif meta["k"] == "none":
            assert record["condition"] is None and not record["warnings"]
        else:  # plug-in: the unknown row's posterior mean, clipped to the training range
            unknown = doc["parts"][name.replace("plugin-solver-w1", "unknown-joint")]
            k_hat = unknown["records"]["0"]["k_posterior"]["mean"]
            assert record["condition"] == pytest.approx(min(max(k_hat, 1.0), 4.0))
    # solver rows solve the PDE at their condition: the fit returns it
    solver = doc["parts"]["k2.5_inverse_known-solver-w1"]["records"]["0"]
    assert solver["k_posterior"]["mean"] == pytest.approx(2.5, abs=1e-2)
    assert set(doc["markdown"]) == {"2.5", "4.2"}
    assert doc["markdown"] == result["markdown"]
    assert all(table in printed for table in doc["markdown"].values())
    assert doc["markdown"]["2.5"].count("\n") == 2 + 2 * len(LABELS) - 1

    # an existing result: refused without --resume; --resume reuses every record
    with pytest.raises(SystemExit, match="--resume"):
        cfg_table.main(argv)
    again = cfg_table.main([*argv, "--resume"])
    assert again["parts"] == result["parts"]
