"""The SDS table script of benchmarks/ runs end to end on the tiny 8x8 Darcy model (2 samples,
every renderer, 3 SDS steps, a 2-member posterior of 2 steps and pde-fit) and writes the
JSON it documents; --resume reuses every fit and the posterior table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pdediff.generate import generate
from pdediff.io import write_fields


@pytest.fixture(scope="module")
def sds_table(load_benchmark):
    return load_benchmark("sds_table")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_fields(
        generate("darcy", 3, 8, seed=1, progress=False),
        tmp_path_factory.mktemp("bench_sds") / "test.nc",
    )


def _finite(x) -> bool:
    """Every number in a nested structure is finite (``None`` marks a score left out)."""
    if isinstance(x, dict):
        return all(_finite(v) for v in x.values())
    if isinstance(x, list):
        return all(_finite(v) for v in x)
    return not isinstance(x, float) or math.isfinite(x)


def test_nearest_upsample_nests_the_grid(sds_table):
    x = np.arange(9.0).reshape(3, 3)
    up = sds_table.nearest_upsample(x, 2)
    assert up.shape == (5, 5)
    np.testing.assert_array_equal(up[::2, ::2], x)
    np.testing.assert_array_equal(up[1], up[0])  # a midpoint row takes the lower node
    up3 = sds_table.nearest_upsample(x, 3)
    assert up3.shape == (7, 7) and up3[0, 2] == x[0, 1] and up3[0, 1] == x[0, 0]


def test_sds_table(sds_table, checkpoint, data, tmp_path, capsys):
    out = tmp_path / "sds.json"
    argv = [
        "--model", str(checkpoint), "--data", str(data), "--samples", "2", "--points", "10",
        "--steps", "3", "--members", "2", "--posterior-steps", "2", "--out", str(out),
    ]  # fmt: skip
    result = sds_table.main(argv)
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert {"command", "machine", "date", "settings", "fit_settings", "posterior"} <= set(doc)
    assert {"fits", "summary", "transfer", "markdown"} <= set(doc)
    assert doc["markdown"] == result["markdown"]
    assert doc["markdown"]["comparison"] in printed and doc["markdown"]["transfer"] in printed
    assert doc["fit_settings"]["sds"]["steps"] == 3
    renderers = list(sds_table.RENDERERS)
    assert sorted((f["sample"], f["renderer"]) for f in doc["fits"]) == sorted(
        (i, r) for i in range(2) for r in renderers
    )
    for fit in doc["fits"]:
        assert not fit["error"] and _finite(fit)
        assert fit["n_obs"] == {"u": 10} and fit["seconds"] > 0
        a = fit["scores"]["a"]
        assert 0 <= a["error_rate_mean"] <= 1 and a["error_rate_member"] == a["error_rate_mean"]
        assert fit["residual"] >= 0
        has_field = fit["renderer"] in ("neural-field", "physics-neural-field")
        assert (fit["transfer"] is not None) == has_field
        if has_field:
            t = fit["transfer"]
            assert t["fine_shape"] == [15, 15] and t["agreement_max_abs"] < 1e-4
            assert t["agreement_flip_rate"] == 0
            assert t["error_rate_coarse"] == pytest.approx(a["error_rate_mean"])
        if fit["renderer"].startswith("physics"):
            assert fit["residual"] < 1e-3  # the pair solves the discrete PDE
    assert set(doc["transfer"]) == {"neural-field", "physics-neural-field"}
    methods = {"diffusion", "pde-fit", *(f"sds:{r}" for r in renderers)}
    assert set(doc["summary"]) == methods
    for m in methods:
        a = doc["summary"][m]["a"]
        assert a["error_rate_mean"]["n"] == 2 and _finite(a)
        assert doc["summary"][m]["u"]["rel_l2_mean"]["n"] == 2
    post = doc["posterior"]
    assert post["complete"] and post["status"] == "ran" and post["protocol"]["steps"] == 2
    assert Path(post["table"]) == tmp_path / "sds" / "posterior.json"
    posterior = json.loads(Path(post["table"]).read_text())
    assert posterior["points"] == 10 and posterior["task"] == "inverse"

    again = sds_table.main([*argv, "--resume"])
    assert again["posterior"]["status"] == "reused"
    assert again["fits"] == doc["fits"]  # nothing refitted
    assert "] sample " not in capsys.readouterr().out  # no progress line of a fit
    with pytest.raises(SystemExit, match="--resume"):
        sds_table.main(argv)
