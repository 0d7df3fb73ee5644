"""Backbones: shapes, initialisation, conditioning and null conditions, batch independence,
gradients, resolution transfer (FNO), errors, config round trip, lazy import, dtypes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from pdediff.nets import BACKBONES, BackboneError, FNOBackbone, UNet, build_backbone

TINY_UNET = dict(model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_levels=(1,))
TINY_FNO = dict(width=8, modes=(6, 6), n_layers=2)
COND_ARGS = dict(vector_dim=3, num_labels=4, cond_channels=1)


def make(kind: str, in_ch: int = 2, out_ch: int = 2, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    base = TINY_UNET if kind == "unet" else TINY_FNO
    return BACKBONES[kind](in_ch, out_ch, **{**base, **kw})


def randomize(net: torch.nn.Module, seed: int = 1, std: float = 0.2) -> torch.nn.Module:
    """Give every parameter (the zero-initialised ones included) random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            p.add_(std * noise)
    return net


def make_cond(n: int, h: int = 16, w: int = 16, seed: int = 2) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "vector": torch.randn(n, 3, generator=gen),
        "label": torch.randint(0, 4, (n,), generator=gen),
        "fields": torch.randn(n, 1, h, w, generator=gen),
    }


def inputs(n: int = 3, c: int = 2, h: int = 16, w: int = 16, seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=gen), torch.randn(n, generator=gen)


KINDS = ["unet", "fno"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("h", "w", "in_ch", "out_ch"), [(16, 16, 2, 2), (32, 24, 3, 1)])
def test_output_shape(kind, h, w, in_ch, out_ch):
    net = make(kind, in_ch, out_ch)
    x, c = inputs(2, in_ch, h, w)
    assert net(x, c).shape == (2, out_ch, h, w)


def test_unet_three_levels_and_scalar_c_noise():
    net = UNet(1, 1, model_channels=8, channel_mult=(1, 2, 2), num_blocks=2, attn_levels=(2,))
    x = torch.randn(2, 1, 16, 12)
    assert net(x, torch.tensor(0.3)).shape == x.shape


@pytest.mark.parametrize("kind", KINDS)
def test_untrained_output_is_zero(kind):
    net = make(kind, **COND_ARGS)
    x, c = inputs()
    assert torch.count_nonzero(net(x, c, make_cond(3))) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_noise_label_changes_output_in_both_ranges(kind):
    net = randomize(make(kind)).eval()
    x, _ = inputs(1)
    for a, b in [(-1.0, 0.5), (10.0, 900.0)]:  # EDM ln(sigma)/4 range; VP [0, 999] range
        ya, yb = net(x, torch.tensor([a])), net(x, torch.tensor([b]))
        assert torch.isfinite(ya).all() and torch.isfinite(yb).all()
        assert (ya - yb).abs().max() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("key", ["vector", "label", "fields"])
def test_each_condition_changes_output(kind, key):
    net = randomize(make(kind, **COND_ARGS)).eval()
    x, c = inputs()
    cond, other = make_cond(3), make_cond(3, seed=7)
    changed = {**cond, key: other[key]}
    if key == "label":
        changed["label"] = (cond["label"] + 1) % 4
    diff = (net(x, c, cond) - net(x, c, changed)).abs().amax(dim=(1, 2, 3))
    assert (diff > 1e-4).all()


@pytest.mark.parametrize("kind", KINDS)
def test_drop_equals_null_condition(kind):
    net = randomize(make(kind, **COND_ARGS)).eval()
    x, c = inputs(4)
    cond = make_cond(4)
    drop = torch.tensor([True, False, True, False])
    mixed = net(x, c, {**cond, "drop": drop})
    null = net(x, c, None)  # absent conditions = the learned null condition
    full = net(x, c, cond)
    torch.testing.assert_close(mixed[drop], null[drop], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed[~drop], full[~drop], rtol=1e-5, atol=1e-6)
    assert (null - full).abs().max() > 1e-3
    all_dropped = net(x, c, {**cond, "drop": torch.ones(4, dtype=torch.bool)})
    torch.testing.assert_close(all_dropped, null, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_batch_independence(kind):
    net = randomize(make(kind, **COND_ARGS)).eval()
    x, c = inputs(4)
    cond = {**make_cond(4), "drop": torch.tensor([False, True, False, False])}
    full = net(x, c, cond)
    for i in range(4):
        one = {k: v[i : i + 1] for k, v in cond.items()}
        torch.testing.assert_close(net(x[i : i + 1], c[i : i + 1], one), full[i : i + 1])
    # Changing another sample leaves sample 0 unchanged.
    x2 = x.clone()
    x2[1:] = torch.randn_like(x2[1:]) * 10
    torch.testing.assert_close(net(x2, c, cond)[0], full[0])


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_parameter(kind):
    net = randomize(make(kind, **COND_ARGS)).train()
    x, c = inputs(2)
    cond = {**make_cond(2), "drop": torch.tensor([True, False])}
    net(x, c, cond).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


def test_gradients_at_init_reach_output_layer():
    # Zero-initialised last layers: at init only they get gradients (standard for
    # zero-init residual nets; the rest learns from the next step on).
    net = make("unet")
    x, c = inputs(2)
    (net(x, c) - 1.0).square().mean().backward()
    assert net.conv_out.weight.grad.abs().max() > 0
    assert net.conv_in.weight.grad.abs().max() == 0


@pytest.mark.parametrize(("grid", "tol"), [(True, 0.1), (False, 1e-2)])
def test_fno_same_weights_two_resolutions(grid, tol):
    net = randomize(make("fno", width=8, modes=(8, 8), grid=grid), std=0.1).eval()
    # A band-limited input sampled on 32x32 and on the even points (16x16).
    ii = torch.arange(32) / 32
    yy, xx = torch.meshgrid(ii, ii, indexing="ij")
    pi2 = 2 * torch.pi
    f = torch.stack([torch.sin(pi2 * xx) * torch.cos(pi2 * yy), torch.cos(pi2 * (xx + 2 * yy))])
    with torch.no_grad():
        fine = net(f[None], torch.tensor([0.1]))
        coarse = net(f[None, :, ::2, ::2], torch.tensor([0.1]))
    assert fine.shape == (1, 2, 32, 32) and coarse.shape == (1, 2, 16, 16)
    # Both are discretisations of one operator: they agree on the shared points up to the
    # aliasing of the pointwise nonlinearities (and of the non-periodic grid channels).
    rel = (fine[..., ::2, ::2] - coarse).norm() / fine.norm()
    assert rel < tol, float(rel)


def test_unet_rejects_indivisible_grid():
    net = UNet(2, 2, model_channels=8, channel_mult=(1, 2, 2), attn_levels=())
    with pytest.raises(BackboneError, match=r"divisible by 4.*\(1, 2, 18, 16\)"):
        net(torch.randn(1, 2, 18, 16), torch.zeros(1))


@pytest.mark.parametrize("kind", KINDS)
def test_bad_inputs_and_conditions(kind):
    net = make(kind, vector_dim=3)
    x, c = inputs(2)
    with pytest.raises(BackboneError, match="expects input of shape"):
        net(x[:, :1], c)
    with pytest.raises(BackboneError, match=r'cond\["vector"\] must have shape'):
        net(x, c, {"vector": torch.randn(2, 5)})
    with pytest.raises(BackboneError, match="cond_channels=0"):
        net(x, c, {"fields": torch.randn(2, 1, 16, 16)})
    with pytest.raises(BackboneError, match="unknown condition key"):
        net(x, c, {"field": torch.randn(2, 1, 16, 16)})
    with pytest.raises(BackboneError, match="c_noise has 3 values"):
        net(x, torch.zeros(3))


def test_bad_fields_shape():
    net = make("unet", cond_channels=2)
    x, c = inputs(2)
    with pytest.raises(BackboneError, match=r'cond\["fields"\] must have shape \(2, 2, 16, 16\)'):
        net(x, c, {"fields": torch.randn(2, 1, 16, 16)})


@pytest.mark.parametrize("kind", KINDS)
def test_build_backbone_round_trip(kind):
    net = randomize(make(kind, **COND_ARGS)).eval()
    config = json.loads(json.dumps(net.config))  # JSON turns tuples into lists
    clone = build_backbone(kind, **config)
    assert clone.config == net.config
    clone.load_state_dict(net.state_dict())
    clone.eval()
    x, c = inputs()
    cond = make_cond(3)
    torch.testing.assert_close(clone(x, c, cond), net(x, c, cond))


def test_build_backbone_errors():
    with pytest.raises(ValueError, match="unknown backbone 'resnet'.*fno.*unet"):
        build_backbone("resnet", in_channels=1, out_channels=1)
    with pytest.raises(ValueError, match="bad arguments for backbone 'unet'.*depth"):
        build_backbone("unet", in_channels=1, out_channels=1, depth=3)
    with pytest.raises(ValueError, match="bad arguments for backbone 'fno'"):
        build_backbone("fno", in_channels=1)
    with pytest.raises(ValueError, match="attn_levels"):
        build_backbone("unet", in_channels=1, out_channels=1, channel_mult=[1, 2])
    with pytest.raises(ValueError, match="modes must be two"):
        build_backbone("fno", in_channels=1, out_channels=1, modes=[4, 4, 4])
    with pytest.raises(ValueError, match="model_channels must be a positive"):
        build_backbone("unet", in_channels=1, out_channels=1, model_channels=0)


def test_import_does_not_load_neuralop():
    code = "import sys, pdediff.nets; assert 'neuralop' not in sys.modules, 'neuralop loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes(kind, dtype):
    net = randomize(make(kind, **COND_ARGS)).to(dtype).eval()
    x, c = inputs()
    cond = make_cond(3)
    y = net(x.to(dtype), c.to(dtype), {**cond, "vector": cond["vector"].to(dtype)})
    assert y.dtype == dtype and torch.isfinite(y).all()
    ref = randomize(make(kind, **COND_ARGS)).eval()(x, c, cond)
    torch.testing.assert_close(y.float(), ref, rtol=1e-3, atol=1e-4)


def test_fno_to_float64_keeps_complex_weights():
    net = randomize(make("fno"))
    before = {n: p.clone() for n, p in net.named_parameters() if p.is_complex()}
    assert before
    net.to(torch.float64)
    for name, p in net.named_parameters():
        if name in before:
            assert p.dtype == torch.complex64
            torch.testing.assert_close(p, before[name])
        else:
            assert p.dtype == torch.float64


def test_fno_grid_coarser_than_modes_and_odd_sizes():
    net = randomize(FNOBackbone(1, 1, width=8, modes=(12, 12), n_layers=1)).eval()
    for h, w in [(8, 8), (15, 17)]:
        y = net(torch.randn(2, 1, h, w), torch.zeros(2))
        assert y.shape == (2, 1, h, w) and torch.isfinite(y).all()
