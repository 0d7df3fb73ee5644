"""The solver table and ablation scripts of benchmarks/ run end to end on the tiny 8x8
Darcy model (2 samples, 2 members, 2 steps, one value per sub-study) and write the JSON
they document; --resume reuses complete tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pdediff.generate import generate
from pdediff.io import write_fields


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_fields(
        generate("darcy", 3, 8, seed=1, progress=False),
        tmp_path_factory.mktemp("bench") / "test.nc",
    )


@pytest.fixture(scope="module")
def fno_dirs(tmp_path_factory):
    from pdediff.baselines import train_fno_baseline

    train = generate("darcy", 8, 8, seed=2, progress=False)
    tiny = {"sensors": 10, "steps": 2, "width": 8, "modes": 4, "n_layers": 2, "batch_size": 4}
    folder = tmp_path_factory.mktemp("fno")
    return {
        task: str(train_fno_baseline(train, src, tgt, seed=0, **tiny).save(folder / task))
        for task, (src, tgt) in {"forward": ("a", "u"), "inverse": ("u", "a")}.items()
    }


def test_solver_table(checkpoint, data, fno_dirs, tmp_path, capsys, load_benchmark):
    solver_table = load_benchmark("solver_table")
    out = tmp_path / "table.json"
    argv = [
        "--model", str(checkpoint), "--data", str(data), "--family", "darcy",
        "--samples", "2", "--dp-samples", "1", "--members", "2", "--sensors", "10", "0.2",
        "--steps", "2", "--dp-steps", "3", "--protocol-json", '{"joint": {"pde_weight": 1.0}}',
        "--baseline-options-json", '{"pde-fit": {"max_iter": 5}}',
        "--fno-forward", fno_dirs["forward"], "--fno-inverse", fno_dirs["inverse"],
        "--exact-members", "3", "--out", str(out),
    ]  # fmt: skip
    result = solver_table.main(argv)
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert {"command", "machine", "date", "settings", "protocol_overrides", "parts", "rows"} <= set(
        doc
    )
    assert doc["markdown"] == result["markdown"] and doc["markdown"] in printed
    rows = {(r["sensors"], r["row"]) for r in doc["rows"]}
    assert rows == {(s, r) for s in ("p10", "f0.2") for r in solver_table.ROWS}
    # five rows of both tasks, and the exact Darcy prior's of the forward task
    assert len(doc["parts"]) == 2 * (2 * 5 + 1)
    assert all(p["complete"] for p in doc["parts"].values())
    for name, part in doc["parts"].items():
        assert Path(part["table"]).is_file() and Path(part["table"]).stem == name
        assert Path(part["table"]).parent == tmp_path / "table"
    parts = doc["parts"]
    assert parts["forward_p10_pdediff"]["protocol"]["steps"] == 2
    assert parts["forward_p10_pdediff"]["nfe"] == {"sampler": 3, "total": 4}  # heun: 2*2-1, +1
    assert parts["inverse_f0.2_diffusionpde"]["protocol"]["steps"] == 3
    assert parts["inverse_f0.2_diffusionpde"]["samples"] == 1
    # the 2000-step row draws one sample per scene (--dp-members 1), the others --members
    members = {n: json.loads(Path(p["table"]).read_text())["members"] for n, p in parts.items()}
    assert {m for n, m in members.items() if "diffusionpde" in n} == {1}
    assert members["inverse_p10_pdediff"] == 2
    exact = json.loads(Path(parts["forward_p10_exact-prior"]["table"]).read_text())["rows"]
    assert {r["members"] for r in exact if r["field"] == "u"} == {3}
    assert parts["forward_p10_joint"]["protocol"]["pde_weight"] == 1.0
    assert parts["inverse_p10_classical"]["methods"] == ["pde-fit"]
    assert doc["protocol_overrides"]["diffusionpde"] == {"steps": 3}
    by_row = {(r["sensors"], r["row"]): r for r in doc["rows"]}
    fwd, inv = by_row[("p10", "pdediff")]["forward"], by_row[("p10", "pdediff")]["inverse"]
    assert fwd["field"] == "u" and inv["field"] == "a" and fwd["n"] == 2 and fwd["nfe"] == 4
    assert inv["error_rate_mean"]["n"] == 2 and inv["coverage90"] is not None
    assert by_row[("f0.2", "diffusionpde")]["inverse"]["n"] == 1
    # single-member errors beside the ensemble mean's, for the comparison with that row
    assert inv["error_rate_member"]["n"] == 2 and fwd["rel_l2_member"]["n"] == 2
    header = doc["markdown"].splitlines()[0]
    assert "inv a member %" in header and "fwd u member %" in header
    assert by_row[("p10", "fno")]["forward"]["method"] == "fno"
    assert by_row[("p10", "classical")]["forward"]["method"] == "interp-solve"
    assert "diffusion (joint)" in printed and "fno" in printed
    # every row paired with pdediff on their common samples, the 2000-step row twice
    pairs = {(q["task"], q["sensors"], q["row"], q["metric"]): q for q in doc["paired"]}
    assert len(pairs) == 2 * (2 * (4 + 1) + 1)
    assert pairs[("forward", "p10", "exact-prior", "rel_l2_mean")]["n"] == 2
    q = pairs[("inverse", "p10", "classical", "error_rate_mean")]
    assert q["n"] == 2 and q["method"] == "pde-fit" and 0 <= q["pdediff_better"] <= 2
    assert q["difference"] == pytest.approx(q["other"] - q["pdediff"])
    assert pairs[("forward", "f0.2", "diffusionpde", "rel_l2_member")]["n"] == 1
    assert "Paired with pdediff" in printed

    # existing tables: refused without --resume; --resume reuses them all
    with pytest.raises(SystemExit, match="--resume"):
        solver_table.main(argv)
    again = solver_table.main([*argv, "--resume"])
    assert {p["status"] for p in again["parts"].values()} == {"reused"}
    assert again["rows"] == result["rows"]
    # a call with some rows keeps the others in the summary, in the same order
    some = solver_table.main([*argv, "--resume", "--rows", "classical", "--sensors", "10"])
    status = {name: p["status"] for name, p in some["parts"].items()}
    assert status.pop("forward_p10_classical") == status.pop("inverse_p10_classical") == "reused"
    assert set(status.values()) == {"kept"} and len(status) == 20
    assert some["rows"] == result["rows"]
    assert json.loads(out.read_text())["rows"] == result["rows"]
    # more samples: each part continues from the samples it has (the 2000-step row, capped
    # at --dp-samples 1, is complete already)
    more = list(argv)
    more[more.index("--samples") + 1] = "3"
    extended = solver_table.main([*more, "--resume"])
    status = {name: p["status"] for name, p in extended["parts"].items()}
    assert {s for n, s in status.items() if "diffusionpde" not in n} == {"continued"}
    assert {s for n, s in status.items() if "diffusionpde" in n} == {"reused"}
    part = json.loads(Path(extended["parts"]["inverse_p10_pdediff"]["table"]).read_text())
    assert part["samples_done"] == 3 and part["resumed"][0]["samples"] == [0, 2]


def test_solver_table_joint_task(checkpoint, data, tmp_path, load_benchmark):
    """--tasks joint (every field observed; Burgers has no other task): one column group
    for the joint task, no classical row (no classical method solves it), and
    --dp-samples 0 leaves the 2000-step row out; --joint-samples runs the joint preset's row
    on fewer samples."""
    solver_table = load_benchmark("solver_table")
    argv = [
        "--model", str(checkpoint), "--data", str(data), "--family", "darcy", "--tasks", "joint",
        "--samples", "2", "--joint-samples", "1", "--dp-samples", "0", "--members", "2",
        "--sensors", "10", "--steps", "2", "--out", str(tmp_path / "joint.json"),
    ]  # fmt: skip
    result = solver_table.main(argv)
    assert sorted(result["parts"]) == ["joint_p10_joint", "joint_p10_pdediff"]
    assert [result["parts"][f"joint_p10_{r}"]["samples"] for r in ("joint", "pdediff")] == [1, 2]
    assert all(set(r) >= {"joint"} and "forward" not in r for r in result["rows"])
    header = result["markdown"].splitlines()[0]
    assert "joint a error rate %" in header and "joint a rel L2 %" in header
    assert "fwd" not in header and "n joint" in header


def test_solver_table_side_by_side(checkpoint, data, tmp_path, monkeypatch, load_benchmark):
    """Two calls of other rows on one --out: a part that the other call finishes while this
    one runs is in the summary this one writes last (it re-reads the others' parts)."""
    solver_table = load_benchmark("solver_table")
    out = tmp_path / "side.json"
    argv = [
        "--model", str(checkpoint), "--data", str(data), "--family", "darcy", "--samples", "1",
        "--members", "2", "--sensors", "10", "--steps", "2", "--tasks", "inverse",
        "--baseline-options-json", '{"pde-fit": {"max_iter": 3}}', "--resume", "--out", str(out),
    ]  # fmt: skip
    solver_table.main([*argv, "--rows", "pdediff"])
    run_part, calls = solver_table.run_part, []

    def with_other_call(*args, **kwargs):
        calls.append(args[0].stem)
        if len(calls) == 1:  # the other call runs (and writes the summary) during this part
            solver_table.main([*argv, "--rows", "joint"])
        return run_part(*args, **kwargs)

    monkeypatch.setattr(solver_table, "run_part", with_other_call)
    last = solver_table.main([*argv, "--rows", "classical"])
    names = ["inverse_p10_pdediff", "inverse_p10_joint", "inverse_p10_classical"]
    assert sorted(json.loads(out.read_text())["parts"]) == sorted(names)
    assert {p["status"] for n, p in last["parts"].items() if n != names[2]} == {"kept"}
    assert {r["row"] for r in last["rows"]} == {"pdediff", "joint", "classical"}
    assert calls == ["inverse_p10_classical", "inverse_p10_joint"]


def test_ablations(checkpoint, data, tmp_path, capsys, load_benchmark):
    ablations = load_benchmark("ablations")
    out = tmp_path / "abl.json"
    argv = [
        "--model", str(checkpoint), "--data", str(data), "--samples", "2", "--members", "2",
        "--steps", "2", "--sensors", "10", "--tasks", "inverse", "--samplers", "euler",
        "--steps-list", "3", "--fractions", "0.1", "--noise-levels", "0.03",
        "--members-list", "3", "--out", str(out),
    ]  # fmt: skip
    result = ablations.main(argv)
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert {"command", "machine", "date", "settings", "studies", "markdown", "field_std"} <= set(
        doc
    )
    studies = doc["studies"]
    assert list(studies) == ["pde", "steps", "fraction", "noise", "members"]
    assert [p["label"] for p in studies["pde"]["points"]] == [
        "joint-obs-only",
        "joint-obs+pde",
        "pdediff-solver",
    ]
    pde = {p["label"]: p for p in studies["pde"]["points"]}
    assert pde["joint-obs-only"]["protocol"]["pde_weight"] == 0.0
    assert pde["joint-obs+pde"]["protocol"]["pde_weight"] > 0
    (steps,) = studies["steps"]["points"]
    assert steps["protocol"]["sampler"] == "euler" and steps["nfe"] == {"sampler": 3, "total": 5}
    (frac,) = studies["fraction"]["points"]
    assert frac["fraction"] == 0.1 and frac["points"] is None
    (noise,) = studies["noise"]["points"]
    assert noise["noise_level"] == 0.03
    assert noise["noise_std"]["u"] == pytest.approx(0.03 * doc["field_std"]["u"])
    (members,) = studies["members"]["points"]
    assert members["members"] == 3 and members["protocol"]["steps"] == 2
    for points in studies.values():
        for p in points["points"]:
            assert p["complete"] and p["n"] == 2 and p["field"] == "a"
            assert {"rel_l2_mean", "error_rate_mean", "crps", "coverage90", "spread_skill"} <= set(
                p["scores"]
            )
            assert Path(p["table"]).is_file()
    # the same sensors at every point of a study (seeds (seed, i))
    tables = [json.loads(Path(p["table"]).read_text()) for p in studies["pde"]["points"]]
    seeds = [[r["obs_seed"] for r in t["rows"]] for t in tables]
    assert seeds[0] == seeds[1] == seeds[2]
    assert result["markdown"]["members"] in printed and "calibration" in printed

    one = ablations.main([*argv[:-2], "--study", "e", "--out", str(tmp_path / "e.json")])
    assert list(one["studies"]) == ["members"]


def test_tune_guidance_writes_the_best_weight(checkpoint, data, tmp_path, load_benchmark):
    import shutil

    from pdediff.solve.api import resolve_protocol

    model = tmp_path / "model"
    shutil.copytree(checkpoint, model)
    argv = ["--model", str(model), "--data", str(data), "--samples", "1", "--members", "2"]
    argv += ["--steps", "2", "--points", "6", "--weights", "1", "5", "--threads", "1"]
    record = load_benchmark("tune_guidance").main([*argv, "--out", str(tmp_path / "tune.json")])
    for task in ("inverse", "forward"):
        points = record["sweeps"][task]["points"]
        assert [p["weight"] for p in points] == [1.0, 5.0]
        best = min(points, key=lambda p: p["score"])["weight"]
        assert resolve_protocol(model, "pdediff", task).default_obs_weight == best
    stored = json.loads((model / "guidance.json").read_text())
    assert stored["tuning"]["inverse"]["settings"]["samples"] == 1
    assert stored["pdediff"]["inverse"]["steps"] == 2
    assert json.loads((tmp_path / "tune.json").read_text())["machine"]["cpu_count"] >= 1


def test_tune_guidance_grid_of_protocol_fields(checkpoint, data, tmp_path, load_benchmark):
    import shutil

    from pdediff.solve.api import resolve_protocol

    model = tmp_path / "model"
    shutil.copytree(checkpoint, model)
    argv = ["--model", str(model), "--data", str(data), "--samples", "1", "--members", "2"]
    argv += ["--steps", "2", "--points", "6", "--weights", "1", "--tasks", "inverse"]
    argv += ["--grid", "consistency_steps=0,3", "--set", "consistency_lr=0.05"]
    tune = load_benchmark("tune_guidance")
    out = ["--threads", "1", "--out", str(tmp_path / "tune.json")]
    record = tune.main([*argv, *out])
    points = record["sweeps"]["inverse"]["points"]
    assert [p["settings"]["consistency_steps"] for p in points] == [0, 3]
    assert all(set(p["calibration"]) == {"coverage90", "spread_skill"} for p in points)
    best = min(points, key=lambda p: p["score"])["settings"]
    protocol = resolve_protocol(model, "pdediff", "inverse")
    assert protocol.consistency_steps == best["consistency_steps"]
    assert protocol.consistency_lr == 0.05
    # --resume reuses the measured points (saved after each one) and runs only new ones
    grid = ["--grid", "consistency_steps=0,3,5"]
    again = tune.main([*argv[:-4], *grid, *argv[-2:], *out, "--resume"])
    new = again["sweeps"]["inverse"]["points"]
    assert new[:2] == points and new[2]["settings"]["consistency_steps"] == 5


def test_tune_guidance_scores_several_sensor_counts(
    checkpoint, data, tmp_path, load_benchmark, monkeypatch
):
    """``--points 6 3``: each setting is scored at both counts and ranked by the geometric
    mean of the two scores (here a setting best at 6 sensors but bad at 3 loses)."""
    tune = load_benchmark("tune_guidance")
    calls = []

    def fake(args, task, protocol, points):
        calls.append((protocol["default_obs_weight"], points))
        w = protocol["default_obs_weight"]
        value = {(1.0, 6): 0.01, (1.0, 3): 0.9, (5.0, 6): 0.02, (5.0, 3): 0.3}[(w, points)]
        return value, "rel_l2_mean of a", {"coverage90": 0.9, "spread_skill": 1.0}

    monkeypatch.setattr(tune, "evaluate_point", fake)
    argv = ["--model", str(checkpoint), "--data", str(data), "--points", "6", "3"]
    argv += ["--weights", "1", "5", "--tasks", "inverse", "--dry-run"]
    record = tune.main([*argv, "--out", str(tmp_path / "tune.json")])
    assert calls == [(1.0, 6), (1.0, 3), (5.0, 6), (5.0, 3)]
    points = record["sweeps"]["inverse"]["points"]
    assert [p["score"] for p in points] == pytest.approx([math.sqrt(0.009), math.sqrt(0.006)])
    assert points[1]["per_points"]["3"]["score"] == 0.3
    assert record["sweeps"]["inverse"]["best"]["weight"] == 5.0

    # written: the overall best, and the best at each count for solves near that count
    import shutil

    from pdediff.solve.api import resolve_protocol

    model = tmp_path / "model"
    shutil.copytree(checkpoint, model)
    argv[argv.index(str(checkpoint))] = str(model)
    argv.remove("--dry-run")
    tune.main([*argv, "--out", str(tmp_path / "tune2.json")])
    stored = json.loads((model / "guidance.json").read_text())["pdediff"]["inverse"]
    assert stored["by_points"] == {
        "6": {"default_obs_weight": 1.0},
        "3": {"default_obs_weight": 5.0},
    }
    weight = {n: resolve_protocol(model, "pdediff", "inverse", points=n).default_obs_weight
              for n in (None, 2, 3, 4, 5, 6, 100)}  # fmt: skip
    # nearest in ratio: 4 < sqrt(18) = 4.24 < 5
    assert weight == {None: 5.0, 2: 5.0, 3: 5.0, 4: 5.0, 5: 1.0, 6: 1.0, 100: 1.0}


def test_factor_speed(tmp_path, load_benchmark):
    out = tmp_path / "factor.json"
    result = load_benchmark("factor_speed").main(
        ["--resolutions", "9", "14", "--repeats", "1", "--out", str(out)]
    )
    assert json.loads(out.read_text())["rows"] == result["rows"]
    assert [r["used"] for r in result["rows"]] == ["band", "band"]
    assert all(r["max_difference"] < 1e-12 and r["band_ms"] > 0 for r in result["rows"])


def test_fno_models_train_what_solver_table_loads(data, tmp_path, load_benchmark):
    out, save = tmp_path / "fno.json", tmp_path / "fno"
    argv = [
        "--train", str(data), "--save", str(save), "--sensors", "10", "0.2", "--steps", "2",
        "--width", "8", "--modes", "4", "--layers", "2", "--batch-size", "2", "--out", str(out),
    ]  # fmt: skip
    result = load_benchmark("fno_models").main(argv)
    saved = {Path(r["model"]).name: (r["source"], r["target"]) for r in result["rows"]}
    assert saved == {
        "forward_p10": ("a", "u"), "inverse_p10": ("u", "a"),
        "forward_f0.2": ("a", "u"), "inverse_f0.2": ("u", "a"),
    }  # fmt: skip
    assert all((save / name).is_dir() for name in saved)
    again = load_benchmark("fno_models").main(argv)  # saved models are kept, not retrained
    assert again["rows"] == result["rows"] == json.loads(out.read_text())["rows"]
