"""FNO baseline: it learns (the loss falls; with every node observed it beats the training
mean on Poisson), predictions have the documented shapes and input forms, save/load and
training are reproducible, and bad input gives clear errors.  Tiny nets on 16^2 grids."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pdediff.baselines.fno import (
    FNOBaseline,
    random_masks,
    sensor_count,
    train_fno_baseline,
)
from pdediff.errors import PdediffError
from pdediff.generate import generate
from pdediff.metrics import relative_l2
from pdediff.train.checkpoint import CheckpointError

RES = 16
TINY = {"width": 8, "modes": 6, "n_layers": 2, "batch_size": 8, "lr": 3e-3}


@pytest.fixture(scope="module")
def darcy():
    return generate("darcy", 32, RES, seed=1000, progress=False)


@pytest.fixture(scope="module")
def trained(darcy):
    return train_fno_baseline(darcy, "a", "u", sensors=40, steps=60, seed=0, **TINY)


def _sensors(n: int, m: int, seed: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(RES * RES, m, replace=False) for _ in range(n)])


def _at(fields: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.take_along_axis(fields.reshape(len(fields), -1), idx, axis=1)


# ------------------------------------------------------------------------------ learning


def test_loss_decreases(trained):
    losses = [h["loss"] for h in trained.history]
    assert len(losses) == 20 and trained.history[-1]["step"] == 60
    assert losses[-1] < 0.8 * losses[0]
    assert trained.config["train"]["n_train"] == 32 and trained.config["sensors"] == 40


def test_all_points_observed_beats_training_mean_on_poisson():
    train = generate("poisson", 64, RES, seed=1000, progress=False)
    test = generate("poisson", 16, RES, seed=0, progress=False)
    model = train_fno_baseline(
        train, "a", "u", sensors=1.0, steps=150, seed=0, width=16, modes=8, batch_size=8, lr=3e-3
    )
    full = np.ones((16, RES, RES), dtype=bool)
    err = relative_l2(model.predict(full, test["a"].values), test["u"].values).mean()
    mean_field = np.broadcast_to(train["u"].values.mean(axis=0), (16, RES, RES))
    err_mean = relative_l2(mean_field, test["u"].values).mean()
    assert err_mean > 0.9  # the mean of a zero-mean source's solutions says nothing
    assert err < 0.5 * err_mean


# ---------------------------------------------------------------------------- prediction


def test_predict_shapes_and_input_forms(trained, darcy):
    a = darcy["a"].values[:4].astype(np.float64)
    idx = _sensors(4, 40)
    batch = trained.predict(idx, _at(a, idx))
    assert batch.shape == (4, RES, RES) and batch.dtype == np.float64
    assert np.all(np.isfinite(batch))
    single = trained.predict(idx[1], a[1].ravel()[idx[1]])
    assert single.shape == (RES, RES)
    np.testing.assert_allclose(single, batch[1], rtol=1e-5, atol=1e-7)

    masks = np.zeros((4, RES * RES), dtype=bool)
    np.put_along_axis(masks, idx, True, axis=1)
    masks = masks.reshape(4, RES, RES)
    np.testing.assert_allclose(trained.predict(masks, a), batch, rtol=1e-6, atol=1e-8)
    hidden = np.where(masks, a, np.nan)  # a masked field: only the sensed nodes are read
    np.testing.assert_allclose(trained.predict(masks, hidden), batch, rtol=1e-6, atol=1e-8)
    one = trained.predict(masks[2], a[2][masks[2]])  # mask + values in its C order
    np.testing.assert_allclose(one, batch[2], rtol=1e-5, atol=1e-7)


def test_prediction_in_physical_units(trained, darcy):
    # u is ~5e-3 with std ~4e-3: an output left normalised would be off ~100-fold
    pred = trained.predict(np.ones((RES, RES), dtype=bool), darcy["a"].values[0])
    assert relative_l2(pred[None], darcy["u"].values[:1])[0] < 1.0


@pytest.mark.parametrize("family", ["darcy", "poisson", "helmholtz"])
@pytest.mark.parametrize(("source", "target"), [("a", "u"), ("u", "a")])
def test_forward_and_inverse_for_each_family(family, source, target):
    ds = generate(family, 8, RES, seed=3, progress=False)
    model = train_fno_baseline(ds, source, target, sensors=0.1, steps=2, seed=0, **TINY)
    assert (model.source, model.target) == (source, target)
    assert model.config["sensors"] == round(0.1 * RES * RES)
    idx = _sensors(2, 26)
    pred = model.predict(idx, _at(ds[source].values[:2], idx))
    assert pred.shape == (2, RES, RES) and np.all(np.isfinite(pred))


def test_any_two_fields_navier_stokes_names(darcy):
    ds = darcy.isel(sample=slice(0, 8)).rename({"a": "w0", "u": "w"})
    model = train_fno_baseline(ds, "w0", "w", sensors=30, steps=2, seed=0, **TINY)
    assert model.spec.variables == ("w0", "w")


# ------------------------------------------------------------------ saving, determinism


def test_save_load_round_trip(trained, darcy, tmp_path):
    path = trained.save(tmp_path / "fno")
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "fieldspec.json",
        "model.safetensors",
    ]
    loaded = FNOBaseline.load(path)
    idx = _sensors(3, 40)
    values = _at(darcy["a"].values[:3], idx)
    np.testing.assert_array_equal(loaded.predict(idx, values), trained.predict(idx, values))
    assert loaded.spec == trained.spec
    assert loaded.config == json.loads(json.dumps(trained.config))


def test_training_is_deterministic_given_the_seed(darcy):
    state = torch.random.get_rng_state()
    runs = [
        train_fno_baseline(darcy, "u", "a", sensors=20, steps=8, seed=s, **TINY) for s in (7, 7, 8)
    ]
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    idx = _sensors(2, 20)
    preds = [r.predict(idx, _at(darcy["u"].values[:2], idx)) for r in runs]
    np.testing.assert_array_equal(preds[0], preds[1])
    assert runs[0].history == runs[1].history
    assert not np.allclose(preds[0], preds[2])


def test_sensor_helpers():
    assert sensor_count(500, 1024) == 500
    assert sensor_count(0.03, 1024) == 31
    assert sensor_count(1.0, 256) == 256
    g = torch.Generator().manual_seed(0)
    masks = random_masks(5, 100, 7, g)
    assert masks.shape == (5, 100) and torch.all(masks.sum(dim=1) == 7)
    assert set(masks.unique().tolist()) == {0.0, 1.0}


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"source": "b"}, "no field 'b'"),
        ({"source": "u", "target": "u"}, "must differ"),
        ({"sensors": 0}, "between 1 and"),
        ({"sensors": 257}, "between 1 and"),
        ({"sensors": 1.5}, "fraction"),
        ({"sensors": "many"}, "count"),
        ({"steps": 0}, "steps"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"modes": (4, 4, 4)}, "modes"),
        ({"padding": 1.0}, "padding"),
        ({"lr": -1.0}, "lr"),
    ],
)
def test_bad_training_arguments(darcy, kwargs, match):
    args = {"sensors": 10, "steps": 1, **TINY, **kwargs}
    with pytest.raises(PdediffError, match=match):
        train_fno_baseline(darcy, **args)


def test_bad_prediction_input(trained):
    values = np.ones(10)
    with pytest.raises(PdediffError, match="out of range"):
        trained.predict(np.arange(250, 260), values)
    with pytest.raises(PdediffError, match="duplicates"):
        trained.predict(np.zeros(10, dtype=int), values)
    with pytest.raises(PdediffError, match="10 sensors .* shape \\(9,\\)"):
        trained.predict(np.arange(10), np.ones(9))
    with pytest.raises(PdediffError, match="mask of 'a' has shape"):
        trained.predict(np.ones((4, 8, 8), dtype=bool)[0], np.ones(64))
    with pytest.raises(PdediffError, match="batch of them"):
        trained.predict(np.zeros((2, 2, 5), dtype=int), np.ones((2, 2, 5)))
    with pytest.raises(PdediffError, match="2 cases"):
        trained.predict(np.stack([np.arange(10)] * 2), np.ones((3, 10)))
    with pytest.raises(PdediffError, match="NaN"):
        trained.predict(np.arange(10), np.full(10, np.nan))
    with pytest.raises(PdediffError, match="no sensors"):
        trained.predict(np.zeros((RES, RES), dtype=bool), np.zeros((RES, RES)))
    with pytest.raises(PdediffError, match="batch_size"):
        trained.predict(np.arange(10), values, batch_size=0)


def test_load_errors(trained, tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        FNOBaseline.load(tmp_path / "nothing")
    path = trained.save(tmp_path / "fno")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "format": "other"}))
    with pytest.raises(CheckpointError, match="not an FNO baseline"):
        FNOBaseline.load(path)
    (path / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "net"}))
    with pytest.raises(CheckpointError, match="bad 'net'"):
        FNOBaseline.load(path)
    config["net"]["hidden_channels"] = 12
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not fit the FNO"):
        FNOBaseline.load(path)
