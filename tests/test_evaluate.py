"""Evaluation on a test set: the table of a tiny trained model and the baselines, the same
observations for every method, the JSON and CSV files, the CLI and bad input."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

import pdediff.solve.evaluate as evaluate_module
from pdediff.baselines import interpolate_then_solve, pde_constrained_fit
from pdediff.cli import main
from pdediff.errors import PdediffError
from pdediff.generate import generate
from pdediff.io import write_fields
from pdediff.metrics import relative_l2
from pdediff.pde.registry import FAMILIES
from pdediff.solve import solve
from pdediff.solve.evaluate import (
    COLUMNS,
    check_methods,
    draw_observations,
    evaluate,
    sample_seeds,
)
from pdediff.train import read_checkpoint

FAST = {"points": 10, "members": 2, "protocol": {"steps": 3}, "samples": 2, "progress": False}
METHODS = {"forward": ("diffusion", "interp-solve"), "inverse": ("diffusion", "pde-fit")}


@pytest.fixture(scope="module")
def test_set():
    return generate("darcy", 3, 8, seed=1, progress=False)


@pytest.fixture(scope="module")
def tables(checkpoint, test_set):
    """The forward and inverse tables with every method that solves the task."""
    return {
        task: evaluate(checkpoint, test_set, task=task, methods=methods, **FAST)
        for task, methods in METHODS.items()
    }


@pytest.mark.parametrize("task", ["forward", "inverse"])
def test_table_has_a_row_per_method_sample_and_field(tables, task):
    result = tables[task]
    rows = result.rows
    assert len(rows) == len(METHODS[task]) * 2 * 2  # methods x samples x fields (a, u)
    assert all(tuple(r) == COLUMNS for r in rows)
    assert {(r["method"], r["sample"], r["field"]) for r in rows} == {
        (m, i, f) for m in METHODS[task] for i in (0, 1) for f in ("a", "u")
    }
    observed = "a" if task == "forward" else "u"
    for r in rows:
        assert r["observed"] == (r["field"] == observed)
        assert r["n_obs"] == (10 if r["observed"] else 0)
        assert r["error"] == "" and 0 <= r["rel_l2_mean"] < np.inf and r["seconds"] >= 0
        assert (r["error_rate_mean"] is not None) == (r["field"] == "a")  # Darcy a only
        assert 0 <= r["residual"] < np.inf and r["crps"] >= 0
        ensemble = r["method"] == "diffusion"
        assert r["members"] == (2 if ensemble else 1)
        assert (r["coverage90"] is not None) == ensemble
        assert (r["spread_skill"] is not None) == ensemble
    # classical solves satisfy the discrete PDE (data insertion aside)
    baseline = [r for r in rows if r["method"] != "diffusion"]
    assert max(r["residual"] for r in baseline) < 1e-8
    summary = result.summary()
    assert set(summary) == set(METHODS[task])
    assert summary["diffusion"]["a"]["rel_l2_mean"]["n"] == 2
    assert set(summary[METHODS[task][1]]["u"]) >= {"rel_l2_mean", "crps", "failed"}
    assert "coverage90" not in summary[METHODS[task][1]]["u"]
    hist = result.rank_histograms
    assert set(hist) == {"diffusion"}
    for f in ("a", "u"):
        assert hist["diffusion"][f].shape == (3,) and hist["diffusion"][f].sum() == 2 * 64
    assert result.meta["complete"] and result.meta["samples_done"] == 2
    text = result.format()
    assert text.splitlines()[0].startswith("method") and len(text.splitlines()) == 5


def test_every_method_gets_the_same_observations(checkpoint, test_set, tables):
    spec = read_checkpoint(checkpoint).fieldspec
    fam, grid = FAMILIES["darcy"], spec.grid()
    for task, result in tables.items():
        for i in (0, 1):
            obs = draw_observations(test_set, spec, task, i, 0, points=10)
            rows = {(r["method"], r["field"]): r for r in result.rows if r["sample"] == i}
            assert {r["obs_seed"] for r in rows.values()} == {sample_seeds(0, i)[0]}
            truth = test_set.isel(sample=[i])
            # the baseline rerun on these observations gives the table's numbers ...
            f = obs.fields["a" if task == "forward" else "u"]
            idx = np.ravel_multi_index(
                [np.searchsorted(spec.coords[d], f.positions[d]) for d in spec.dims], spec.shape
            )
            if task == "forward":
                est = interpolate_then_solve(fam, grid, None, idx, f.values)
                name = "interp-solve"
            else:
                est = pde_constrained_fit(fam, grid, None, idx, f.values)
                name = "pde-fit"
            expected = relative_l2(est["u"][None], truth["u"].values)[0]
            assert rows[(name, "u")]["rel_l2_mean"] == pytest.approx(expected, rel=1e-12)
            # ... and so does the posterior, sampled with the sample's seed
            post = solve(
                checkpoint, obs, task=task, members=2, protocol={"steps": 3},
                seed=sample_seeds(0, i)[1], progress=False,
            )  # fmt: skip
            expected = relative_l2(post["u_mean"].values[None], truth["u"].values)[0]
            assert rows[("diffusion", "u")]["rel_l2_mean"] == pytest.approx(expected, rel=1e-5)
    # a field's sensors do not depend on the task; samples get different sensors
    inv = draw_observations(test_set, spec, "inverse", 0, 0, points=10).fields["u"]
    joint = draw_observations(test_set, spec, "joint", 0, 0, points=10).fields["u"]
    other = draw_observations(test_set, spec, "inverse", 1, 0, points=10).fields["u"]
    assert all(np.array_equal(inv.positions[d], joint.positions[d]) for d in ("x", "y"))
    assert not np.array_equal(inv.positions["x"], other.positions["x"])
    noisy = draw_observations(test_set, spec, "inverse", 0, 0, points=10, noise_std=0.1)
    assert np.array_equal(noisy.fields["u"].positions["y"], inv.positions["y"])
    assert not np.allclose(noisy.fields["u"].values, inv.values)


def test_the_same_seed_gives_the_same_table(checkpoint, test_set, tables):
    again = evaluate(checkpoint, test_set, task="inverse", methods=METHODS["inverse"], **FAST)

    def scores(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert scores(again.rows) == scores(tables["inverse"].rows)
    other = evaluate(
        checkpoint, test_set, task="inverse", methods=["pde-fit"], **{**FAST, "samples": 1},
        seed=1,
    )  # fmt: skip
    assert other.rows[0]["obs_seed"] != again.rows[0]["obs_seed"]


def test_json_and_csv_are_written_and_agree(checkpoint, test_set, tmp_path):
    out = tmp_path / "table.json"
    result = evaluate(
        checkpoint, test_set, task="forward", methods=METHODS["forward"], out=out, **FAST
    )
    doc = json.loads(out.read_text())
    assert doc["complete"] and doc["task"] == "forward" and doc["seed"] == 0
    assert doc["model"] == str(checkpoint) and doc["data"] == "<in-memory Dataset>"
    assert doc["protocol"]["steps"] == 3 and doc["points"] == 10 and doc["pde"] == "darcy"
    # how the test set was made, so that a table on a file no longer at hand can be redone
    assert doc["data_history"].endswith("generate darcy n=3 resolution=8 seed=1")
    assert (
        doc["rank_histogram"]["diffusion"]["u"] == result.rank_histograms["diffusion"]["u"].tolist()
    )
    with open(tmp_path / "table.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(doc["rows"]) == 8 and tuple(csv_rows[0]) == COLUMNS
    for c, j in zip(csv_rows, doc["rows"], strict=True):
        assert c["method"] == j["method"] and int(c["sample"]) == j["sample"]
        for k in ("rel_l2_mean", "crps", "coverage90", "error_rate_mean"):
            assert (c[k] == "") if j[k] is None else float(c[k]) == j[k]
    rel = [r["rel_l2_mean"] for r in doc["rows"] if r["method"] == "interp-solve"]
    rel_u = rel[1::2]  # rows go a, u per sample
    stats = doc["summary"]["interp-solve"]["u"]["rel_l2_mean"]
    assert stats["mean"] == pytest.approx(np.mean(rel_u)) and stats["n"] == 2
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_a_crash_keeps_the_samples_done_and_failures_are_rows(
    checkpoint, test_set, tmp_path, monkeypatch
):
    calls = []
    real = evaluate_module._evaluate_sample

    def crash_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    def failing_fit(ctx, obs):
        raise PdediffError("did not converge")

    monkeypatch.setattr(evaluate_module, "_evaluate_sample", crash_on_second)
    monkeypatch.setattr(evaluate_module, "_run_pde_fit", failing_fit)
    out = tmp_path / "t.json"
    with pytest.raises(RuntimeError):
        evaluate(checkpoint, test_set, task="inverse", methods=["pde-fit"], out=out, **FAST)
    doc = json.loads(out.read_text())
    assert not doc["complete"] and doc["samples_done"] == 1 and len(doc["rows"]) == 2
    assert doc["rows"][0]["error"] == "PdediffError: did not converge"
    assert doc["rows"][0]["rel_l2_mean"] is None
    assert doc["summary"]["pde-fit"]["u"]["failed"] == 1
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 3


def test_resume_continues_a_table_and_equals_a_fresh_run(checkpoint, test_set, tmp_path):
    """An interrupted or shorter table is continued: its samples are kept (their rows,
    timings included, and rank histograms), the rest evaluated; the scores are those of
    one fresh run over all samples."""
    kw = {**FAST, "task": "inverse", "methods": ["diffusion"], "samples": 1}
    out = tmp_path / "t.json"
    first = evaluate(checkpoint, test_set, out=out, **kw)
    resumed = evaluate(checkpoint, test_set, out=out, resume=True, **(kw | {"samples": 3}))
    fresh = evaluate(checkpoint, test_set, **(kw | {"samples": 3}))
    assert resumed.rows[:2] == first.rows  # kept as they were, seconds included
    assert [r["sample"] for r in resumed.rows] == [0, 0, 1, 1, 2, 2]
    scores = [k for k in COLUMNS if k != "seconds"]
    assert [[r[k] for k in scores] for r in resumed.rows] == [
        [r[k] for k in scores] for r in fresh.rows
    ]
    for name, counts in fresh.rank_histograms["diffusion"].items():
        np.testing.assert_array_equal(resumed.rank_histograms["diffusion"][name], counts)
    doc = json.loads(out.read_text())
    assert doc["complete"] and doc["samples_done"] == 3
    assert doc["resumed"] == [{"samples": [0, 1], "created": first.meta["created"]} | {
        "command": None, "pdediff": first.meta["pdediff"]}]  # fmt: skip
    # a table made with other settings, or with more samples done, is not continued
    with pytest.raises(PdediffError, match="other members"):
        evaluate(checkpoint, test_set, out=out, resume=True, **(kw | {"members": 3}))
    with pytest.raises(PdediffError, match="3 samples done, more than the 2"):
        evaluate(checkpoint, test_set, out=out, resume=True, **(kw | {"samples": 2}))
    # a table older than a column (here "condition") gets it empty
    doc = json.loads(out.read_text())
    doc["rows"] = [r for r in doc["rows"] if r["sample"] < 2]  # as if stopped after two
    for row in doc["rows"]:
        del row["condition"]
    doc["samples_done"], doc["complete"], doc["rank_histogram"] = 2, False, {}
    out.write_text(json.dumps(doc))
    longer = evaluate(checkpoint, test_set, out=out, resume=True, **(kw | {"samples": 3}))
    assert {r["condition"] for r in longer.rows} == {""}
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 1 + 6
    # resume without a table starts one
    new = evaluate(checkpoint, test_set, out=tmp_path / "new.json", resume=True, **kw)
    assert new.meta["samples_done"] == 1 and "resumed" not in new.meta


def test_table_protocol_is_the_one_tuned_for_its_sensor_count(checkpoint, test_set, tmp_path):
    """A model tuned at several sensor counts (``by_points`` in guidance.json): the table
    records the settings of the count nearest to the draw's (each sample's solve resolves
    the same ones, tested in test_solve)."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(checkpoint, model)
    entry = {"default_obs_weight": 7.0, "by_points": {"10": {"steps": 2}, "40": {"steps": 4}}}
    (model / "guidance.json").write_text(json.dumps({"pdediff": {"inverse": entry}}))
    kw = {**FAST, "task": "inverse", "samples": 1, "protocol": {}}
    for where, steps in ((dict(points=12), 2), (dict(points=None, fraction=0.5), 4)):
        table = evaluate(model, test_set, **(kw | where))
        assert table.meta["protocol"]["steps"] == steps
        assert table.meta["protocol"]["default_obs_weight"] == 7.0


def test_cli_end_to_end(checkpoint, test_set, tmp_path, capsys):
    data = write_fields(test_set, tmp_path / "test.nc")
    out = tmp_path / "table.json"
    argv = [
        "evaluate", "--model", str(checkpoint), "--data", str(data), "--task", "inverse",
        "--fraction", "0.2", "--members", "2", "--steps", "2", "--samples", "1",
        "--methods", "diffusion,pde-fit", "--seed", "3", "--out", str(out), "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "diffusion" in printed and "pde-fit" in printed and "rel L2 mean %" in printed
    doc = json.loads(out.read_text())
    assert doc["command"].startswith("pdediff evaluate --model")
    assert doc["fraction"] == 0.2 and doc["seed"] == 3 and doc["data"] == str(data)
    assert {r["n_obs"] for r in doc["rows"] if r["observed"]} == {13}  # round(0.2 * 64)
    assert (tmp_path / "table.csv").exists()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "--resume" in err and err.count("\n") == 1
    assert main([*argv, "--overwrite"]) == 0
    more = list(argv)
    more[more.index("--samples") + 1] = "2"
    assert main([*more, "--resume"]) == 0
    doc = json.loads(out.read_text())
    assert doc["samples_done"] == 2 and doc["resumed"][0]["samples"] == [0, 1]
    assert doc["resumed"][0]["command"].startswith("pdediff evaluate")
    with pytest.raises(SystemExit):  # one or the other
        main([*more, "--resume", "--overwrite"])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"methods": "diffusion,magic"}, "unknown method 'magic'"),
        ({"methods": "pde-fit"}, "method 'pde-fit' does not solve the forward task"),
        ({"task": "inverse", "methods": "interp-solve"}, "'interp-solve' does not solve the"),
        ({"data": "poisson"}, "holds 'poisson' data but the model was trained on 'darcy'"),
        ({"data": "no-u"}, r"lacks variable\(s\) \['u'\]"),
        ({"data": "other-f"}, r"PDE parameters .* differ .*'f': \(1.0, 2.0\)"),
        ({"data": "no-pde", "methods": "interp-solve"}, "names no known PDE family"),
        ({"samples": "5"}, "samples must be between 1 and 3"),
        ({"out": "table.txt"}, "must be a .json file"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    checkpoint, test_set, tmp_path, capsys, change, message
):
    no_pde = test_set.copy()
    del no_pde.attrs["pde"]
    datasets = {
        "darcy": test_set,
        "poisson": generate("poisson", 2, 8, seed=0, progress=False),
        "no-u": test_set.drop_vars("u"),
        "other-f": test_set.assign_attrs(param_f=2.0),
        "no-pde": no_pde,
    }
    data = write_fields(datasets[change.get("data", "darcy")], tmp_path / "data.nc")
    argv = [
        "evaluate", "--model", str(checkpoint), "--data", str(data),
        "--task", change.get("task", "forward"), "--methods", change.get("methods", "diffusion"),
        "--points", "5", "--members", "2", "--steps", "2", "--quiet",
        "--out", str(tmp_path / change.get("out", "table.json")),
    ]  # fmt: skip
    if "samples" in change:
        argv += ["--samples", change["samples"]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("pdediff evaluate: error: ") and err.count("\n") == 1
    assert re.search(message, err), err
    assert not list(tmp_path.glob("table.*"))


def test_check_methods_knows_which_family_each_baseline_solves():
    assert check_methods(["diffusion", "diffusion"], "joint", None) == ("diffusion",)
    assert check_methods(["interp-solve"], "joint", FAMILIES["helmholtz"]) == ("interp-solve",)
    with pytest.raises(PdediffError, match="helmholtz, navier_stokes test set.*burgers"):
        check_methods(["interp-solve"], "forward", FAMILIES["burgers"])
    assert check_methods(["pde-fit"], "inverse", FAMILIES["navier_stokes"]) == ("pde-fit",)
    with pytest.raises(PdediffError, match="unknown task"):
        check_methods(["diffusion"], "backward", None)
    with pytest.raises(PdediffError, match="no method"):
        check_methods([], "forward", None)


def test_cli_interrupt_keeps_the_samples_done(checkpoint, test_set, tmp_path, capsys, monkeypatch):
    real = evaluate_module._evaluate_sample

    def interrupt_second(result, ctx, ds, index, *args):
        if index == 1:
            raise KeyboardInterrupt
        return real(result, ctx, ds, index, *args)

    monkeypatch.setattr(evaluate_module, "_evaluate_sample", interrupt_second)
    data = write_fields(test_set, tmp_path / "test.nc")
    out = tmp_path / "t.json"
    argv = [
        "evaluate", "--model", str(checkpoint), "--data", str(data), "--task", "forward",
        "--points", "10", "--methods", "interp-solve", "--out", str(out), "--quiet",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 130
    assert f"the samples done are in {out}" in capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["samples_done"] == 1 and not doc["complete"] and len(doc["rows"]) == 2


# ------------------------------------------------------------------------------ the FNO


@pytest.fixture(scope="module")
def fno_models(tmp_path_factory):
    """Tiny FNO baselines on 8x8 Darcy, a few steps each: forward (a -> u), inverse (u -> a)."""
    from pdediff.baselines import train_fno_baseline

    train = generate("darcy", 8, 8, seed=2, progress=False)
    tiny = {"sensors": 10, "steps": 3, "width": 8, "modes": 4, "n_layers": 2, "batch_size": 4}
    folder = tmp_path_factory.mktemp("fno")
    return {
        task: train_fno_baseline(train, src, tgt, seed=0, **tiny).save(folder / task)
        for task, (src, tgt) in {"forward": ("a", "u"), "inverse": ("u", "a")}.items()
    }


@pytest.mark.parametrize("task", ["forward", "inverse"])
def test_fno_method_predicts_from_the_same_sensors(checkpoint, test_set, fno_models, task):
    from pdediff.baselines import FNOBaseline
    from pdediff.baselines.classical import fill_field

    options = {"fno": {"model": fno_models[task]}}
    result = evaluate(
        checkpoint, test_set, task=task, methods=["fno", "diffusion"],
        baseline_options=options, **FAST,
    )  # fmt: skip
    spec = read_checkpoint(checkpoint).fieldspec
    fno = FNOBaseline.load(fno_models[task])
    source, target = ("a", "u") if task == "forward" else ("u", "a")
    for i in (0, 1):
        rows = {(r["method"], r["field"]): r for r in result.rows if r["sample"] == i}
        assert rows[("fno", "a")]["obs_seed"] == rows[("diffusion", "a")]["obs_seed"]
        f = draw_observations(test_set, spec, task, i, 0, points=10).fields[source]
        idx = evaluate_module.grid_indices(f, spec, source)
        truth = test_set.isel(sample=[i])
        pred = fno.predict(idx, f.values)
        expected = relative_l2(pred[None], truth[target].values)[0]
        assert rows[("fno", target)]["rel_l2_mean"] == pytest.approx(expected, rel=1e-9)
        filled = fill_field(spec.grid(), idx, np.asarray(f.values, np.float64))
        expected = relative_l2(filled[None], truth[source].values)[0]
        assert rows[("fno", source)]["rel_l2_mean"] == pytest.approx(expected, rel=1e-9)
        assert rows[("fno", "a")]["error_rate_mean"] is not None
        assert rows[("fno", target)]["members"] == 1 and rows[("fno", target)]["error"] == ""
        assert rows[("fno", target)]["coverage90"] is None
    assert result.meta["baseline_options"] == {"fno": {"model": str(fno_models[task])}}
    assert set(result.summary()) == {"fno", "diffusion"}


def test_fno_method_needs_the_model_of_the_task(checkpoint, test_set, fno_models):
    with pytest.raises(PdediffError, match="--fno-model DIR"):
        evaluate(checkpoint, test_set, task="forward", methods=["fno"], **FAST)
    wrong = {"fno": {"model": fno_models["inverse"]}}
    with pytest.raises(PdediffError, match="maps 'u' -> 'a', but the forward task observes"):
        evaluate(
            checkpoint, test_set, task="forward", methods=["fno"], baseline_options=wrong, **FAST
        )
    with pytest.raises(PdediffError, match="does not solve the joint task"):
        check_methods(["fno"], "joint", FAMILIES["darcy"])
    assert check_methods(["fno"], "forward", FAMILIES["burgers"]) == ("fno",)


def test_cli_fno_model(checkpoint, test_set, fno_models, tmp_path, capsys):
    data = write_fields(test_set, tmp_path / "test.nc")
    out = tmp_path / "table.json"
    argv = [
        "evaluate", "--model", str(checkpoint), "--data", str(data), "--task", "inverse",
        "--points", "10", "--samples", "1", "--methods", "fno", "--out", str(out), "--quiet",
    ]  # fmt: skip
    assert main(argv) == 2
    assert "--fno-model" in capsys.readouterr().err
    assert main([*argv, "--fno-model", str(fno_models["inverse"])]) == 0
    assert "fno" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["methods"] == ["fno"] and len(doc["rows"]) == 2
    assert doc["baseline_options"]["fno"]["model"] == str(fno_models["inverse"])


def test_only_tables_with_the_diffusion_method_record_a_protocol(checkpoint, test_set, tables):
    """The baselines do not use the protocol, so a change of the model's guidance does not
    make their tables stale (``--resume`` reuses them)."""
    alone = evaluate(checkpoint, test_set, task="forward", methods=["interp-solve"], **FAST)
    assert alone.meta["protocol"] is None
    assert tables["forward"].meta["protocol"]["steps"] == 3
