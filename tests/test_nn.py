"""fastgen.nn layers: drop-in behaviour, causality and the Gated PixelCNN's missing blind spot."""
import pytest
import torch
import torch.nn.functional as F

from fastgen import nn as fnn
from fastgen.ops.conv import reference
from helpers import assert_close_rel


def test_masked_conv2d_is_a_drop_in_for_conv2d():
    conv = torch.nn.Conv2d(6, 9, 5, padding=2)
    layer = fnn.MaskedConv2d(6, 9, 5, mask_type="A", color_groups=3)
    layer.load_state_dict(conv.state_dict())       # same names and shapes
    assert set(layer.state_dict()) == {"weight", "bias"}
    assert layer.mask.shape == (9, 6, 5, 5)
    torch.testing.assert_close(layer.mask, reference.pixelcnn_mask(9, 6, 5, "A", 3))
    x = torch.randn(2, 6, 7, 8)
    torch.testing.assert_close(layer(x), F.conv2d(x, conv.weight * layer.mask, conv.bias, padding=2))
    assert "mask_type='A'" in repr(layer)


def test_masked_conv2d_dilation_padding():
    layer = fnn.MaskedConv2d(4, 4, 3, dilation=3, bias=False)
    assert layer.padding == (3, 3) and layer.bias is None
    x = torch.randn(1, 4, 9, 9)
    torch.testing.assert_close(layer(x), F.conv2d(x, layer.weight * layer.mask, None, padding=3, dilation=3))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_causal_conv1d_layer(monkeypatch, backend):
    monkeypatch.setenv("FASTGEN_BACKEND", backend)
    layer = fnn.CausalConv1d(4, 6, 2, dilation=4)
    plain = torch.nn.Conv1d(4, 6, 2, dilation=4)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(2, 4, 21)
    assert_close_rel(layer(x), plain(F.pad(x, (4, 0))), 1e-5)


def _gated_stack(channels=4, layers=4, cond_channels=None):
    torch.manual_seed(1)
    return torch.nn.ModuleList(
        [fnn.GatedMaskedConv2d(channels, 3, "A", cond_channels)]
        + [fnn.GatedMaskedConv2d(channels, 3, "B", cond_channels) for _ in range(layers - 1)])


def _run_stack(stack, x, cond=None):
    v = h = x
    for layer in stack:
        v, h = layer(v, h, cond)
    return h


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_gated_stack_is_causal_and_has_no_blind_spot(monkeypatch, backend):
    monkeypatch.setenv("FASTGEN_BACKEND", backend)
    stack = _gated_stack()
    x = torch.randn(1, 4, 9, 9, requires_grad=True)
    r, c = 5, 4
    (grad,) = torch.autograd.grad(_run_stack(stack, x)[0, :, r, c].sum(), [x])
    seen = grad.abs().sum(1)[0] > 0
    raster = torch.arange(81).view(9, 9)
    assert not seen[raster >= r * 9 + c].any(), "output depends on the current or a later pixel"
    # no blind spot: the upper-right neighbours a plain PixelCNN misses are seen
    for rr, cc in [(r - 1, c + 1), (r - 1, c + 3), (r - 2, c + 3), (r - 3, c + 2), (r, c - 1), (r, c - 3)]:
        assert seen[rr, cc], f"blind spot at ({rr}, {cc})"


def test_gated_layer_backends_agree_with_conditioning(monkeypatch):
    stack = _gated_stack(cond_channels=3, layers=2)
    x, cond = torch.randn(2, 4, 6, 7), torch.randn(2, 3)
    monkeypatch.setenv("FASTGEN_BACKEND", "reference")
    expected = _run_stack(stack, x, cond)
    monkeypatch.setenv("FASTGEN_BACKEND", "triton")
    assert_close_rel(_run_stack(stack, x, cond), expected, 1e-5)
    # conditioning changes the output
    assert (_run_stack(stack, x, cond + 1) - expected).abs().max() > 1e-3


def test_training_a_masked_layer_reduces_loss(monkeypatch):
    """A few Adam steps through the Triton path fit a target: gradients flow into the weights."""
    monkeypatch.setenv("FASTGEN_BACKEND", "triton")
    torch.manual_seed(0)
    layer = fnn.MaskedConv2d(3, 3, 3, "B", color_groups=3)
    x = torch.randn(4, 3, 6, 6)
    target = reference.masked_conv2d(x, torch.randn(3, 3, 3, 3), None, "B", 3)
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    losses = []
    for _ in range(15):
        loss = (layer(x) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
