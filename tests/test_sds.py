"""Score distillation: the SDS gradient on an analytic denoiser, mode seeking on a Gaussian
prior, the renderers (resolution transfer, ellipse gradients, exact physics), observation
terms, and the CLI on the tiny session model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from pdediff.cli import main
from pdediff.core.guidance import ObservationTerm
from pdediff.errors import PdediffError
from pdediff.generate import generate
from pdediff.io import FieldSpec
from pdediff.io.observations import observations_from_truth, write_observations
from pdediff.pde.registry import FAMILIES
from pdediff.sds import (
    WEIGHTINGS,
    EllipseRenderer,
    NeuralField,
    PhysicsRenderer,
    PixelRenderer,
    build_renderer,
    sds_optimize,
    sds_surrogate,
)


def gaussian_denoiser(x, sigma, cond=None):
    """Exact denoiser of the prior N(0, I): E[x0 | x] = x / (1 + sigma^2)."""
    s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return x / (1 + s**2)


@pytest.fixture(scope="module")
def darcy():
    return generate("darcy", 6, 9, seed=0, progress=False)


@pytest.mark.parametrize("weighting", ["sigma2", "sigma", "uniform"])
def test_surrogate_gradient_is_the_sds_formula(weighting):
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(2, 2, 8, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(g.shape, generator=gen, dtype=torch.float64)
    sigma = torch.tensor([0.3, 1.7], dtype=torch.float64)
    loss, denoised = sds_surrogate(g, gaussian_denoiser, sigma, eps, weighting)
    (grad,) = torch.autograd.grad(loss.sum(), g)
    s = sigma.reshape(-1, 1, 1, 1)
    d = (g.detach() + s * eps) / (1 + s**2)  # D(g + sigma eps, sigma) by hand
    w = WEIGHTINGS[weighting](sigma).reshape(-1, 1, 1, 1)
    expected = -w * (d - g.detach()) / s**2  # descent moves g towards D
    torch.testing.assert_close(denoised, d)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


def test_sds_on_a_gaussian_prior_drives_an_identity_renderer_to_the_mode():
    renderer = PixelRenderer((1, 8, 8), init=3.0)
    result = sds_optimize(renderer, gaussian_denoiser, steps=300, lr=0.05, generator=1)
    assert result.fields.shape == (1, 1, 8, 8)
    assert result.fields.abs().mean() < 0.2  # from 3 to about 0 (Adam noise ~ lr), the mode
    assert len(result.loss) == 300 and len(result.history["sigma"]) == 300
    sigmas = np.asarray(result.history["sigma"])
    assert sigmas.min() >= 0.02 and sigmas.max() <= 3.0 and result.seconds > 0
    # annealed: noise levels decrease geometrically from sigma_max to sigma_min
    annealed = sds_optimize(
        PixelRenderer((1, 4, 4), 1.0), gaussian_denoiser, steps=5, schedule="anneal"
    )
    np.testing.assert_allclose(annealed.history["sigma"], np.geomspace(3.0, 0.02, 5))


def test_neural_field_renders_one_function_at_two_resolutions():
    spec_coords = {"y": np.linspace(0, 2.0, 33), "x": np.linspace(0, 2.0, 33)}
    field = NeuralField(2, spec_coords, seed=3)
    coarse = field()
    fine = field.render((65, 65))
    assert coarse.shape == (1, 2, 33, 33) and fine.shape == (1, 2, 65, 65)
    # the 65-point grid holds the 33 points: same function, same values there
    torch.testing.assert_close(fine[..., ::2, ::2], coarse, rtol=1e-5, atol=1e-6)
    # smooth: the new midpoints are close to the mean of their neighbours
    mid = fine[..., 1::2, ::2]
    interp = 0.5 * (fine[..., :-1:2, ::2] + fine[..., 2::2, ::2])
    assert (mid - interp).abs().max() < 0.1 * (fine.max() - fine.min())
    # rendering on explicit physical coordinates is the same as rendering by shape
    torch.testing.assert_close(field.render(spec_coords), coarse)
    with torch.no_grad():
        half = field.render({"y": np.linspace(0, 1.0, 17), "x": np.linspace(0, 1.0, 17)})
    torch.testing.assert_close(half, coarse[..., :17, :17], rtol=1e-5, atol=1e-6)


def test_ellipse_gradients_match_finite_differences():
    renderer = EllipseRenderer((16, 16), 2, a_low=3.0, a_high=12.0, tau=0.05, seed=0).double()
    a = renderer.coefficient()
    assert a.min() >= 3.0 and a.max() <= 12.0 and a.max() > 8.0
    weights = torch.linspace(0, 1, 256, dtype=torch.float64).reshape(16, 16)

    def objective() -> torch.Tensor:
        return (renderer() * weights).sum()

    for param in (renderer.centre, renderer.log_axes, renderer.angle):
        (grad,) = torch.autograd.grad(objective(), param)
        assert grad.abs().max() > 1e-3
        h = 1e-6
        for idx in [(0, 0), (1, 1)] if param.ndim == 2 else [(0,), (1,)]:
            with torch.no_grad():
                param[idx] += h
                up = objective()
                param[idx] -= 2 * h
                down = objective()
                param[idx] += h
            fd = (up - down) / (2 * h)
            torch.testing.assert_close(grad[idx], fd, rtol=1e-5, atol=1e-7)


def test_physics_renderer_satisfies_darcy_and_passes_gradients(darcy):
    spec = FieldSpec.from_dataset(darcy, ["a", "u"])
    family = FAMILIES["darcy"]
    coef = EllipseRenderer.from_spec(spec, "a", 3, seed=1)
    renderer = PhysicsRenderer(coef, family, spec).double()
    x = renderer()
    assert x.shape == (1, 2, 9, 9)
    phys = spec.denormalise(x)
    fields = {"a": phys[:, 0], "u": phys[:, 1]}
    terms = family.terms(fields, spec.grid(), {})
    residual = sum(terms.values())
    scale = terms["-div(a grad u)"].abs().max()
    assert residual.abs().max() < 1e-10 * scale
    assert phys[:, 1, 0].abs().max() == 0  # u = 0 on the boundary
    # observations of u reach the shape parameters through the adjoint solve
    loss = x[0, 1, 4, 4]
    loss.backward()
    assert coef.centre.grad is not None and coef.centre.grad.abs().max() > 0
    # a neural-field coefficient out of Darcy's range is clipped, the pair still exact
    nf = PhysicsRenderer(NeuralField(1, spec, seed=0), family, spec)
    a = spec.denormalise(nf())[:, 0]
    assert a.min() >= 3.0 - 1e-4 and a.max() <= 12.0 + 1e-4


def test_physics_renderer_rejects_families_without_solver(darcy):
    spec = FieldSpec.from_dataset(darcy, ["a", "u"])
    with pytest.raises(PdediffError, match="differentiable solver"):
        PhysicsRenderer(NeuralField(1, spec), FAMILIES["burgers"], spec)
    with pytest.raises(PdediffError, match="reference solver"):
        build_renderer("physics-ellipses", spec, None)


def test_observation_term_reduces_the_misfit():
    rows, cols = torch.tensor([1, 3, 6, 2]), torch.tensor([2, 5, 1, 6])
    y = torch.tensor([[1.5, -1.0, 2.0, 0.5]])

    def observe(x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, rows, cols]

    def misfit(x: torch.Tensor) -> float:
        return float((observe(x.detach()) - y).norm())

    renderer = NeuralField(1, (8, 8), seed=0)
    before = misfit(renderer())
    term = ObservationTerm(observe, y, name="obs")
    result = sds_optimize(
        renderer, gaussian_denoiser, steps=150, lr=0.02, guidance_terms=[(term, 5.0)], generator=0
    )
    assert misfit(result.fields) < 0.3 * before
    assert set(result.history) == {"sigma", "sds", "obs", "total"}
    with pytest.raises(PdediffError, match="unknown SDS weighting"):
        sds_optimize(renderer, gaussian_denoiser, steps=1, weighting="nope")
    with pytest.raises(PdediffError, match="sigma_min"):
        sds_optimize(renderer, gaussian_denoiser, steps=1, sigma_min=0.0)


def test_non_finite_loss_names_the_step():
    def broken(x, sigma, cond=None):
        return x * float("nan")

    with pytest.raises(FloatingPointError, match="step 0.*sds"):
        sds_optimize(PixelRenderer((1, 4, 4)), broken, steps=2)


@pytest.mark.parametrize("renderer", ["physics-ellipses", "ellipses", "neural-field"])
def test_cli_round_trip(checkpoint, tmp_path, capsys, renderer):
    truth = generate("darcy", 1, 8, seed=5, progress=False)
    obs, _ = observations_from_truth(truth, ["u"], count=6, seed=0)
    obs_path = write_observations(obs, tmp_path / "obs.nc")
    out = tmp_path / "sds.nc"
    argv = ["sds", "--model", str(checkpoint), "--obs", str(obs_path)]
    argv += ["--renderer", renderer, "--steps", "3", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    assert "observation RMSE u" in capsys.readouterr().out
    ds = xr.open_dataset(out, engine="h5netcdf")
    assert ds["a"].dims == ("sample", "y", "x") and ds["u"].shape == (1, 8, 8)
    assert ds.sizes["step"] == 3 and ds.sizes["n_obs_u"] == 6
    assert ds.attrs["renderer"] == renderer and ds.attrs["method"] == "sds"
    if renderer == "physics-ellipses":
        a = ds["a"].values[0]
        assert a.min() >= 3.0 - 1e-4 and a.max() <= 12.0 + 1e-4
        ref = FAMILIES["darcy"].solve(
            {"a": a.astype(np.float64)}, FAMILIES["darcy"].make_grid(8, {}), {}
        )
        np.testing.assert_allclose(ds["u"].values[0], ref["u"], rtol=1e-4, atol=1e-6)
    ds.close()
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err


def test_cli_errors_leave_no_output(checkpoint, tmp_path, capsys):
    truth = generate("darcy", 1, 8, seed=5, progress=False).rename({"u": "p"})
    obs, _ = observations_from_truth(truth, ["p"], count=4, seed=0)
    obs_path = write_observations(obs, tmp_path / "obs.nc")
    out = tmp_path / "bad.nc"
    argv = ["sds", "--model", str(checkpoint), "--obs", str(obs_path), "--out", str(out)]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'p'" in err and "pdediff sds: error" in err
    assert not out.exists()
    good, _ = observations_from_truth(truth.rename({"p": "u"}), ["u"], count=4, seed=0)
    good_path = write_observations(good, tmp_path / "good.nc")
    argv = ["sds", "--model", str(checkpoint), "--obs", str(good_path), "--out", str(out)]
    assert main([*argv, "--steps", "0", "--quiet"]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err and not out.exists()
