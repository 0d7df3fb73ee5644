"""Label conditions: one model across PDE families (``pdediff merge``, ``train --label``),
the label at sampling, the family and parameters it selects, evaluation, errors, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conditioned import TINY, forward_with_every_node

from pdediff.cli import main
from pdediff.errors import DataError, PdediffError
from pdediff.generate import generate
from pdediff.io import FieldSpec, open_fields, write_fields
from pdediff.io.conditions import dataset_labels, label_classes, label_datasets, label_parts
from pdediff.io.observations import observations_from_truth
from pdediff.solve.api import condition_params, model_condition, model_family
from pdediff.train import TrainConfig, read_checkpoint, train


@pytest.fixture(scope="module")
def parts():
    """Poisson and Helmholtz (k = 2, not the default 1) data on one 8x8 grid."""
    poisson = generate("poisson", 6, 8, seed=0, progress=False)
    helmholtz = generate("helmholtz", 6, 8, seed=1, progress=False, params={"k": 2.0})
    return {"poisson": poisson, "helmholtz": helmholtz}


@pytest.fixture(scope="module")
def merged(parts):
    return label_datasets(parts, "pde")


@pytest.fixture(scope="module")
def model(tmp_path_factory, merged):
    out = tmp_path_factory.mktemp("label") / "run"
    train(merged, out, TrainConfig.from_dict({**TINY, "steps": 3, "label": "pde"}), progress=False)
    return out


# -- data ---------------------------------------------------------------------------------
def test_merge_labels_each_sample_and_keeps_each_family(parts, merged, tmp_path):
    assert merged.sizes["sample"] == 12
    assert list(merged["pde"].values) == ["poisson"] * 6 + ["helmholtz"] * 6
    np.testing.assert_array_equal(merged["u"].values[6:], parts["helmholtz"]["u"].values)
    assert "pde" not in merged.attrs and merged.attrs["param_tau"] == 3.0
    own = json.loads(merged.attrs["label_attrs"])
    assert own["helmholtz"]["pde"] == "helmholtz" and own["helmholtz"]["param_k"] == 2.0
    assert merged["x"].attrs == parts["poisson"]["x"].attrs  # coordinates keep their attrs
    write_fields(merged, tmp_path / "m.nc")
    back = open_fields(tmp_path / "m.nc")
    label = label_classes(back, "pde")
    assert label["classes"] == ["helmholtz", "poisson"]
    assert label["attrs"]["helmholtz"]["param_k"] == 2.0
    np.testing.assert_array_equal(dataset_labels(back, label).numpy(), [1] * 6 + [0] * 6)
    for fam, part in label_parts(back, "pde").items():  # the inverse of the merge
        np.testing.assert_array_equal(part["u"].values, parts[fam]["u"].values)
        assert part.attrs["pde"] == fam and "pde" not in part.variables


def test_merge_and_label_errors(parts, merged):
    with pytest.raises(DataError, match="two or more datasets"):
        label_datasets({"poisson": parts["poisson"]})
    darcy = generate("darcy", 2, 8, seed=0, progress=False).rename({"a": "k"})
    with pytest.raises(DataError, match="has fields"):
        label_datasets({"poisson": parts["poisson"], "darcy": darcy})
    coarse = generate("helmholtz", 2, 6, seed=0, progress=False)
    with pytest.raises(DataError, match="grids differ"):
        label_datasets({"poisson": parts["poisson"], "helmholtz": coarse})
    with pytest.raises(DataError, match="already has a variable 'pde'"):
        label_datasets({"a": merged, "b": merged})
    with pytest.raises(DataError, match="single value"):
        label_classes(merged.isel(sample=slice(0, 6)), "pde")
    label = label_classes(merged, "pde")
    other = merged.assign(pde=("sample", ["darcy"] * 12))
    with pytest.raises(DataError, match=r"value\(s\) \['darcy'\] the model was not trained on"):
        dataset_labels(other, label)


def test_fieldspec_round_trips_the_label(merged):
    spec = FieldSpec.from_dataset(merged, label="pde")
    back = FieldSpec.from_json(spec.to_json())
    assert back.label == spec.label and back.condition_names == ("pde",)
    with pytest.raises(PdediffError, match="has no per-sample variable 'pde'"):
        back.check_compatible(merged.drop_vars("pde"))


# -- training and sampling ----------------------------------------------------------------
def test_labelled_training_records_the_classes_and_resumes(model, merged):
    ckpt = read_checkpoint(model)
    assert ckpt.config.label == "pde" and ckpt.config.p_uncond == 0.1
    assert ckpt.fieldspec.label["classes"] == ["helmholtz", "poisson"]
    net = ckpt.denoiser(ema=False)  # the trained weights: the label reaches the output
    x = torch.randn(2, 2, 8, 8)
    sigma = torch.full((2,), 1.0)
    with torch.no_grad():
        first = net(x, sigma, {"label": torch.tensor([0, 0])})
        second = net(x, sigma, {"label": torch.tensor([1, 1])})
        null = net(x, sigma, {"label": torch.tensor([0, 0]), "drop": torch.ones(2, dtype=bool)})
    assert not torch.equal(first, second) and not torch.equal(first, null)
    train(
        merged,
        model,
        TrainConfig.from_dict({**TINY, "steps": 6, "label": "pde"}),
        resume=True,
        progress=False,
    )
    assert read_checkpoint(model).step == 6


def test_the_label_selects_the_family_and_its_parameters(model):
    spec = read_checkpoint(model).fieldspec
    cond = model_condition(spec, {"pde": "poisson"}, 0.0, "m")
    assert set(cond) == {"label"} and cond["label"].tolist() == [1]
    family = model_family(spec, {"pde": "helmholtz"})
    assert family.name == "helmholtz"
    assert condition_params(family, spec, {"pde": "helmholtz"})["k"] == 2.0
    assert model_family(spec, {"pde": "poisson"}).name == "poisson"
    with pytest.raises(PdediffError, match="missing condition 'pde'"):
        model_condition(spec, {}, 0.0, "m")
    with pytest.raises(PdediffError, match="'darcy' is not one of its classes"):
        model_condition(spec, {"pde": "darcy"}, 0.0, "m")
    with pytest.raises(PdediffError, match=r"unknown condition\(s\) \['k'\]"):
        model_condition(spec, {"pde": "poisson", "k": 2.0}, 0.0, "m")


def test_solve_uses_the_family_of_the_label(model, parts):
    from pdediff.solve import solve

    truth = parts["helmholtz"].isel(sample=[0])
    obs, _ = observations_from_truth(truth, ["u"], count=10, seed=0)
    post = solve(
        model,
        obs,
        task="inverse",
        members=2,
        protocol={"steps": 2},
        condition={"pde": "helmholtz"},
        progress=False,
    )
    assert post.attrs["solver"] == "helmholtz reference solver"
    assert json.loads(post.attrs["condition"]) == {"pde": "helmholtz"}
    # solver mode: each member's u solves the Helmholtz problem with k = 2 of its a
    from pdediff.metrics import residual_norm
    from pdediff.pde.registry import FAMILIES

    fam = FAMILIES["helmholtz"]
    fields = {f: post[f].transpose("member", "y", "x").values.astype(np.float64) for f in "au"}
    grid = read_checkpoint(model).fieldspec.grid()
    assert residual_norm(fam, fields, grid, fam.params({"k": 2.0})).relative.max() < 1e-4
    assert residual_norm(fam, fields, grid, fam.params({"k": 1.0})).relative.max() > 1e-2


def test_evaluate_gives_each_sample_its_class(model, merged):
    conditions, exact = forward_with_every_node(model, merged.isel(sample=[0, 11]))
    assert conditions == {0: {"pde": "poisson"}, 1: {"pde": "helmholtz"}}
    assert all(err < 1e-6 for err in exact.values()) and len(exact) == 2


# -- command line -------------------------------------------------------------------------
def test_cli_merge_train_and_solve_with_a_label(parts, tmp_path, capsys):
    for name, ds in parts.items():
        write_fields(ds, tmp_path / f"{name}.nc")
    files = [str(tmp_path / "poisson.nc"), str(tmp_path / "helmholtz.nc")]
    assert main(["merge", *files, "-o", str(tmp_path / "both.nc")]) == 0
    assert "12 samples labelled pde (poisson: 6, helmholtz: 6)" in capsys.readouterr().out
    assert main(["merge", *files, "-o", str(tmp_path / "x.nc"), "--values", "a", "a"]) == 2
    assert "repeat" in capsys.readouterr().err and not (tmp_path / "x.nc").exists()
    main(["inspect", str(tmp_path / "both.nc"), "--samples", "2"])
    out = capsys.readouterr().out
    assert "label pde: helmholtz 6, poisson 6" in out
    assert "PDE residual of pde = helmholtz" in out and "PDE residual of pde = poisson" in out
    run = tmp_path / "run"
    (tmp_path / "tiny.toml").write_text(
        "batch_size = 4\n[model.backbone_kwargs]\nmodel_channels = 8\nchannel_mult = [1, 2]\n"
    )
    main(
        [
            "train",
            "--data",
            str(tmp_path / "both.nc"),
            "--out",
            str(run),
            "--label",
            "pde",
            "--steps",
            "2",
            "--config",
            str(tmp_path / "tiny.toml"),
            "--quiet",
        ]
    )
    obs, _ = observations_from_truth(parts["poisson"].isel(sample=[0]), ["u"], count=8, seed=0)
    from pdediff.io.observations import write_observations

    write_observations(obs, tmp_path / "obs.nc")
    post = tmp_path / "post.nc"
    base = [
        "solve",
        "--model",
        str(run),
        "--obs",
        str(tmp_path / "obs.nc"),
        "--task",
        "inverse",
        "--members",
        "1",
        "--steps",
        "2",
        "--quiet",
        "-o",
        str(post),
    ]
    assert main([*base, "--condition", "pde=poisson"]) == 0
    assert open_fields(post).attrs["solver"] == "poisson reference solver"
    assert main([*base, "--condition", "pde=burgers", "--overwrite"]) == 2
    assert "'burgers' is not one of its classes" in capsys.readouterr().err
