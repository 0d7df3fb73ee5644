"""Observation operators (adjoints, interpolation) and observation files (formats, checks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from pdediff.errors import DataError
from pdediff.io import FieldSpec, make_dataset
from pdediff.io.observations import (
    FieldObservations,
    Observations,
    build_operator,
    observations_from_truth,
    read_observations,
    write_observations,
)
from pdediff.operators import (
    MaskObservation,
    PointObservation,
    StackedObservation,
    column_mask,
    random_points,
    sensor_columns,
)
from pdediff.pde.base import FieldInfo, Grid, node_grid

F64 = torch.float64


def _grids():
    """(coords, periodic) cases: 2-D closed, 2-D periodic, space-time (Burgers), 1-D, 3-D."""
    return {
        "closed": ({"y": np.linspace(0, 1, 6), "x": np.linspace(-1, 2, 7)}, ()),
        "periodic": ({"y": np.arange(5) * 0.2, "x": np.arange(8) * 0.25}, ("y", "x")),
        "burgers": ({"t": np.linspace(0, 1, 5), "x": np.arange(6) / 6}, ("x",)),
        "1d": ({"x": np.linspace(0, 3, 9)}, ()),
        "3d": (
            {"z": np.linspace(0, 1, 3), "y": np.linspace(0, 1, 4), "x": np.arange(5) / 5},
            ("x",),
        ),
    }


def _random_positions(coords, periodic, m, rng):
    """Points in the domain; periodic dims also beyond one period (they wrap)."""
    out = {}
    for d, c in coords.items():
        lo, hi = c[0], c[-1]
        if d in periodic:
            h = c[1] - c[0]
            lo, hi = lo - 2.0, hi + h + 2.0
        out[d] = rng.uniform(lo, hi, m)
    return out


def _adjoint_gap(op, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *op.input_shape, generator=g, dtype=F64)
    y = torch.randn(n, op.num_observations, generator=g, dtype=F64)
    lhs = (op.forward(x) * y).sum()
    rhs = (x * op.adjoint(y)).sum()
    return float(abs(lhs - rhs) / (abs(lhs) + abs(rhs) + 1e-300))


def _mask_op(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(2, *shape, generator=g) < 0.3
    return MaskObservation(mask, channels=[2, 0], num_channels=3)


# ----------------------------------------------------------------------------------------
# Operators


@pytest.mark.parametrize("case", list(_grids()))
def test_adjoint_identity_every_operator(case):
    coords, periodic = _grids()[case]
    rng = np.random.default_rng(1)
    point = PointObservation(coords, _random_positions(coords, periodic, 40, rng), 1, 3, periodic)
    shape = point.grid_shape
    mask = _mask_op(shape)
    stacked = StackedObservation([point, mask, point])
    for op in (point, mask, stacked):
        assert _adjoint_gap(op) < 1e-13
        # the dense matrix agrees with forward and its transpose with the adjoint
        a = op.matrix()
        x = torch.randn(2, *op.input_shape, dtype=F64)
        y = torch.randn(2, op.num_observations, dtype=F64)
        torch.testing.assert_close(op(x), x.reshape(2, -1) @ a.T)
        torch.testing.assert_close(op.adjoint(y).reshape(2, -1), y @ a)


@pytest.mark.parametrize("case", list(_grids()))
def test_exact_at_grid_points(case):
    coords, periodic = _grids()[case]
    shape = tuple(len(c) for c in coords.values())
    idx = random_points(shape, min(10, np.prod(shape)), generator=3)
    pos = {d: c[idx[:, k].numpy()] for k, (d, c) in enumerate(coords.items())}
    op = PointObservation(coords, pos, 0, 2, periodic)
    x = torch.randn(2, 2, *shape, dtype=F64)
    expected = x[(slice(None), 0, *idx.T)]
    assert torch.equal(op(x), expected)  # bit-exact: the other weights are exactly 0
    # a mask with the same points gives the same values (in C order, as random_points)
    mask = torch.zeros(1, *shape, dtype=torch.bool)
    mask[(0, *idx.T)] = True
    assert torch.equal(MaskObservation(mask, 0, 2)(x), expected)


def test_bilinear_exact_for_multilinear_functions():
    coords = {"y": np.linspace(0, 2, 9), "x": np.linspace(-1, 1, 13)}
    ym, xm = np.meshgrid(*coords.values(), indexing="ij")

    def f(y, x):
        return 1 + 2 * x + 3 * y + 4 * x * y

    rng = np.random.default_rng(0)
    pos = {"y": rng.uniform(0, 2, 300), "x": rng.uniform(-1, 1, 300)}
    op = PointObservation(coords, pos)
    field = torch.as_tensor(f(ym, xm))[None, None]
    np.testing.assert_allclose(op(field)[0].numpy(), f(pos["y"], pos["x"]), rtol=0, atol=1e-12)
    # 1-D: linear interpolation, exact for affine functions
    op1 = PointObservation({"x": coords["x"]}, {"x": pos["x"]})
    vals = op1(torch.as_tensor(1 - 3 * coords["x"])[None, None])[0].numpy()
    np.testing.assert_allclose(vals, 1 - 3 * pos["x"], atol=1e-12)


def test_periodic_wrap():
    coords = {"x": np.arange(8) / 8}
    x = torch.randn(1, 1, 8, dtype=F64)
    base = np.array([0.0, 0.3, 0.9375, 0.99])
    ops = [PointObservation(coords, {"x": base + shift}, periodic=["x"]) for shift in (0, 1, -3)]
    values = [op(x) for op in ops]
    torch.testing.assert_close(values[1], values[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(values[2], values[0], rtol=0, atol=1e-12)
    # between the last node (7/8) and the period end the interpolant joins node 7 to node 0
    mid = PointObservation(coords, {"x": [15 / 16]}, periodic=["x"])(x)
    torch.testing.assert_close(mid[0, 0], 0.5 * (x[0, 0, 7] + x[0, 0, 0]))


def test_outside_domain_error_names_point_and_domain():
    coords = {"y": np.linspace(0, 1, 5), "x": np.linspace(0, 1, 5)}
    with pytest.raises(
        DataError, match=r"observation 1 at \(y=0.5, x=1.2\) is outside.*x in \[0, 1\]"
    ):
        PointObservation(coords, {"y": [0.1, 0.5], "x": [0.2, 1.2]})
    # rounding-level excursions (float32 storage) are moved onto the boundary
    op = PointObservation(coords, {"y": [1 + 1e-9], "x": [np.float32(1.0)]})
    x = torch.randn(1, 1, 5, 5, dtype=F64)
    assert op(x)[0, 0] == x[0, 0, -1, -1]
    # a periodic dim accepts any position
    PointObservation(coords | {"x": np.arange(5) / 5}, {"y": [0.5], "x": [7.3]}, periodic=["x"])
    with pytest.raises(DataError, match="not finite"):
        PointObservation(coords, {"y": [np.nan], "x": [0.1]})
    with pytest.raises(DataError, match="grid mismatch"):
        PointObservation(coords, {"t": [0.1], "x": [0.1]})


def test_forward_is_differentiable_and_checks_shapes():
    coords = {"y": np.linspace(0, 1, 4), "x": np.linspace(0, 1, 4)}
    op = PointObservation(coords, {"y": [0.2, 0.7], "x": [0.5, 0.1]}, 0, 2)
    x = torch.randn(2, 2, 4, 4, requires_grad=True)
    y = torch.randn(2, 2)
    (op(x) * y).sum().backward()
    torch.testing.assert_close(x.grad, op.adjoint(y))  # gradient of <Ax, y> is A^T y
    with pytest.raises(ValueError, match="expected"):
        op(torch.zeros(2, 1, 4, 4))


def test_random_points_and_sensor_columns():
    a = random_points((16, 16), 50, generator=7)
    b = random_points((16, 16), 50, generator=7)
    assert torch.equal(a, b) and not torch.equal(a, random_points((16, 16), 50, generator=8))
    assert len({tuple(p) for p in a.tolist()}) == 50 and int(a.max()) < 16
    with pytest.raises(ValueError, match="distinct"):
        random_points((4, 4), 17)
    cols = sensor_columns(128, 5)
    assert cols.tolist() == [0, 25, 51, 76, 102]
    mask = column_mask((10, 128), cols)
    op = MaskObservation(mask[None], 0, 1)
    assert op.num_observations == 50
    x = torch.randn(1, 1, 10, 128)
    torch.testing.assert_close(op(x).reshape(10, 5), x[0, 0][:, cols])


@settings(max_examples=40, deadline=None)
@given(
    nx=st.integers(2, 7),
    ny=st.integers(2, 7),
    m=st.integers(1, 30),
    periodic_x=st.booleans(),
    channel=st.integers(0, 1),
    seed=st.integers(0, 2**31 - 1),
)
def test_adjoint_identity_property(nx, ny, m, periodic_x, channel, seed):
    rng = np.random.default_rng(seed)
    coords = {"y": np.sort(rng.uniform(-2, 2, ny)) + np.arange(ny), "x": np.arange(nx) * 0.3}
    periodic = ("x",) if periodic_x else ()
    pos = _random_positions(coords, periodic, m, rng)
    # include some grid nodes and boundary points
    pos["y"][:1] = coords["y"][-1]
    op = PointObservation(coords, pos, channel, 2, periodic)
    assert _adjoint_gap(op, seed=seed % 1000) < 1e-12
    assert torch.allclose(op.weight.sum(1), torch.ones(m, dtype=F64))


# ----------------------------------------------------------------------------------------
# Files


def _truth(n=12, seed=0):
    rng = np.random.default_rng(seed)
    grid = node_grid(n, ("y", "x"), 1.0)
    info = {"a": FieldInfo("permeability", "1", "coefficient"), "u": FieldInfo("pressure", "1")}
    fields = {"a": rng.normal(3, 2, (2, n, n)), "u": rng.normal(-1, 0.1, (2, n, n))}
    return make_dataset(fields, grid, pde="darcy", info=info, dtype=np.float64)


def _assert_same(a: Observations, b: Observations):
    assert set(a.fields) == set(b.fields)
    for name, fa in a.fields.items():
        fb = b.fields[name]
        for d in fa.positions:
            np.testing.assert_array_equal(fa.positions[d], fb.positions[d])
        np.testing.assert_array_equal(fa.values, fb.values)
        if fa.std is None:
            assert fb.std is None
        else:
            np.testing.assert_array_equal(fa.std, fb.std)


@pytest.mark.parametrize("suffix", [".nc", ".zarr", ".csv"])
@pytest.mark.parametrize("shared", [False, True])
def test_round_trip(tmp_path, suffix, shared):
    obs, _ = observations_from_truth(_truth(), ["a", "u"], 20, seed=1, noise_std={"u": 0.01})
    if shared:  # both fields at the same points: one row per point in the file
        obs.fields["a"].positions = dict(obs.fields["u"].positions)
    path = write_observations(obs, tmp_path / f"obs{suffix}")
    back = read_observations(path)
    _assert_same(obs, back)
    assert back.units == obs.units and back.source == str(path)
    with pytest.raises(FileExistsError):
        write_observations(obs, path)


def test_csv_missing_cells_units_and_comments(tmp_path):
    path = tmp_path / "obs.csv"
    path.write_text(
        "# sensors of run 7\n"
        "x [1], y, a, u, u_std\n"
        "0.5, 0.25, 1.5, , \n"
        "0.1, 0.2, , 2.0, 0.1\n"
        "\n"
        "0.3, 0.4, 3.0, 4.0, 0.2\n"
    )
    obs = read_observations(path)
    np.testing.assert_array_equal(obs.fields["a"].values, [1.5, 3.0])
    np.testing.assert_array_equal(obs.fields["a"].positions["x"], [0.5, 0.3])
    assert obs.fields["a"].std is None
    np.testing.assert_array_equal(obs.fields["u"].values, [2.0, 4.0])
    np.testing.assert_array_equal(obs.fields["u"].std, [0.1, 0.2])
    assert obs.units == {"x": "1"}


def test_gridded_nan_file(tmp_path):
    truth = _truth(8)
    obs_grid = truth.isel(sample=[0]).copy(deep=True)
    keep = np.zeros((8, 8), dtype=bool)
    keep[2, 3] = keep[5, 1] = keep[7, 7] = True
    obs_grid["u"] = obs_grid["u"].where(keep)
    obs_grid["a"] = obs_grid["a"].where(~keep)
    obs_grid["u_std"] = xr.DataArray(0.05)
    path = tmp_path / "grid.nc"
    obs_grid.to_netcdf(path, engine="h5netcdf")
    obs = read_observations(path)
    assert obs.fields["u"].size == 3 and obs.fields["a"].size == 61
    np.testing.assert_array_equal(obs.fields["u"].std, [0.05] * 3)
    spec = FieldSpec.from_dataset(truth)
    model = build_operator(obs, spec, normalised=False)
    x = spec.to_tensor(truth.isel(sample=[0]), normalise=False, dtype=F64)
    torch.testing.assert_close(model.operator(x)[0], model.y, rtol=0, atol=1e-12)
    # a gridded file on another grid is refused
    coarse = truth.isel(sample=[0], x=slice(0, None, 2), y=slice(0, None, 2))
    with pytest.raises(DataError, match="grid mismatch"):
        build_operator(_read_grid(coarse, tmp_path / "coarse.nc"), spec)
    with pytest.raises(DataError, match="2 samples"):
        _read_grid(truth, tmp_path / "two.nc")


def _read_grid(ds, path):
    ds.to_netcdf(path, engine="h5netcdf")
    return read_observations(path)


def test_observations_from_truth_protocol():
    truth = _truth(16)
    a, clean_a = observations_from_truth(truth, ["a", "u"], 40, seed=3, noise_std=0.1)
    b, _ = observations_from_truth(truth, ["a", "u"], 40, seed=3, noise_std=0.1)
    c, _ = observations_from_truth(truth, ["a", "u"], 40, seed=4, noise_std=0.1)
    _assert_same(a, b)
    assert not np.array_equal(a.fields["u"].values, c.fields["u"].values)
    for name, f in a.fields.items():
        pts = set(zip(f.positions["y"], f.positions["x"], strict=True))
        assert len(pts) == 40  # distinct grid points
        assert np.all(np.isin(f.positions["x"], truth["x"].values))
        np.testing.assert_allclose(f.std, 0.1)
        assert 0.02 < np.std(f.values - clean_a[name]) < 0.2
    # noiseless observations are the truth at those points, and the same points
    d, clean_d = observations_from_truth(truth, ["a", "u"], fraction=40 / 256, seed=3)
    assert d.fields["u"].std is None
    np.testing.assert_array_equal(d.fields["u"].values, clean_d["u"])
    np.testing.assert_array_equal(d.fields["u"].positions["x"], a.fields["u"].positions["x"])


def test_observations_from_truth_columns_burgers():
    t, x = np.linspace(0, 1, 10), np.arange(16) / 16
    grid = Grid({"t": t, "x": x}, periodic=frozenset({"x"}))
    u = np.random.default_rng(0).normal(size=(1, 10, 16))
    truth = make_dataset({"u": u}, grid, pde="burgers", dtype=np.float64)
    obs, _ = observations_from_truth(truth, ["u"], 4, layout="columns")
    assert obs.fields["u"].size == 40
    assert sorted(set(obs.fields["u"].positions["x"])) == [0.0, 0.25, 0.5, 0.75]
    spec = FieldSpec.from_dataset(truth)
    model = build_operator(obs, spec)
    xn = spec.to_tensor(truth, dtype=F64)
    torch.testing.assert_close(model.operator(xn)[0], model.y, rtol=0, atol=1e-12)


def test_build_operator_normalised_matches_physical():
    truth = _truth(10)
    spec = FieldSpec.from_dataset(truth)
    rng = np.random.default_rng(2)
    obs = Observations(
        {
            "u": FieldObservations({"y": rng.random(30), "x": rng.random(30)}, rng.random(30), 0.2),
            "a": FieldObservations({"y": rng.random(15), "x": rng.random(15)}, rng.random(15)),
        }
    )
    phys = build_operator(obs, spec, normalised=False)
    norm = build_operator(obs, spec)
    assert phys.operator.slices() == {"u": slice(0, 30), "a": slice(30, 45)}
    x = spec.to_tensor(truth, normalise=False, dtype=F64)
    xn = spec.normalise(x)
    # A(x) - y in physical units equals s_c (A(x_n) - y_n) channel by channel
    s = torch.tensor([spec.std[1]] * 30 + [spec.std[0]] * 15, dtype=F64)
    torch.testing.assert_close(phys.operator(x) - phys.y, s * (norm.operator(xn) - norm.y))
    torch.testing.assert_close(phys.std, s * norm.std)
    assert float(phys.std[:30].min()) == 0.2 and float(phys.std[30:].max()) == 0.0


def _obs(values=(1.0, 2.0), std=None, x=(0.1, 0.5), y=(0.2, 0.3), name="u"):
    return Observations({name: FieldObservations({"y": y, "x": x}, values, std)}, source="s.nc")


@pytest.mark.parametrize(
    ("obs", "match"),
    [
        (
            _obs(name="v"),
            r"observed variable\(s\) \['v'\] in s.nc are not fields of the model; "
            r"the model has \['a', 'u'\]",
        ),
        (_obs(x=(0.1, 1.5)), r"field 'u' in s.nc: observation 1 at \(y=0.3, x=1.5\) is outside"),
        (_obs(values=(1.0, np.nan)), r"value of observation 1 is nan.*must be finite"),
        (_obs(values=(np.inf, 1.0)), r"value of observation 0 is inf"),
        (_obs(x=(np.nan, 0.1)), r"position x of observation 0 is nan"),
        (_obs(std=(0.1, -0.2)), r"noise level u_std of observation 1 is negative"),
        (_obs(values=(), x=(), y=()), r"no observations in s.nc"),
        (
            Observations({"u": FieldObservations({"t": [0.1], "x": [0.2]}, [1.0])}),
            r"positioned in \['t', 'x'\] but the model's grid dims are \['y', 'x'\]: grid mismatch",
        ),
        (
            Observations(
                {"u": FieldObservations({"y": [0.1], "x": [0.2]}, [1.0])}, units={"x": "km"}
            ),
            r"coordinate 'x' of the observations has units 'km', the model's has '1'",
        ),
        (
            Observations(
                {"u": FieldObservations({"y": [0.1], "x": [0.2]}, [1.0])}, units={"u": "Pa"}
            ),
            r"variable 'u' of the observations has units 'Pa'.*units mismatch",
        ),
    ],
)
def test_bad_input_messages(obs, match):
    spec = FieldSpec.from_dataset(_truth(6))
    with pytest.raises(DataError, match=match):
        build_operator(obs, spec)


def test_bad_files(tmp_path):
    cases = {
        "nan.csv": ("x,y,u\n0.1,0.2,nan\n", r"line 2, column 'u': 'nan' is NaN/inf"),
        "text.csv": ("x,y,u\n0.1,0.2,abc\n", r"'abc' is not a number"),
        "neg.csv": ("x,y,u,u_std\n0.1,0.2,1,-1\n", r"u_std of observation 0 is negative"),
        "gap.csv": ("x,y,u,u_std\n0.1,0.2,1,\n", r"u_std is empty on data row 1"),
        "nopos.csv": ("a,u\n1,2\n", r"no position column"),
        "empty.csv": ("x,y,u\n0.1,0.2,\n", r"no observations"),
        "orphan.csv": ("x,y,u,v_std\n0.1,0.2,1,1\n", r"noise level\(s\) \['v_std'\]"),
        "short.csv": ("x,y,u\n0.1,0.2\n", r"line 2: 2 cells, the header has 3"),
    }
    for name, (text, match) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=match):
            read_observations(tmp_path / name)
    ds = xr.Dataset(
        {"u": ("obs", [1.0, np.inf])}, coords={"x": ("obs", [0.1, 0.2]), "y": ("obs", [0, 0])}
    )
    ds.to_netcdf(tmp_path / "inf.nc", engine="h5netcdf")
    with pytest.raises(DataError, match=r"inf.nc: value of observation 1 is inf"):
        read_observations(tmp_path / "inf.nc")


def test_operator_plugs_into_observation_term():
    from pdediff.core.guidance import ObservationTerm

    truth = _truth(8)
    spec = FieldSpec.from_dataset(truth)
    obs, _ = observations_from_truth(truth, ["a", "u"], 10, seed=0)
    model = build_operator(obs, spec)
    term = ObservationTerm(model.operator, model.y)
    xn = spec.to_tensor(truth.isel(sample=[0])).requires_grad_(True)
    loss = term.loss(xn)
    assert loss.shape == (1,) and float(loss.detach()) < 1e-9
    loss.sum().backward()  # the gradient reaches the fields through the gather
    assert xn.grad is not None
