"""fastgen.ops.pixelcnnpp_resnet_at: the Triton kernels (interpreter on the CPU) against the
reference, on random padded maps -- the one-launch step (a single position) and the two-launch
one (rows, and single positions of more than 32 batch rows); error handling and backend choice;
opcheck."""
import pytest
import torch

from fastgen.ops import pixelcnnpp_resnet_at
from fastgen.ops.pixelcnnpp_resnet import ResnetWeights, reference

CASES = [  # (batch, channels, aux channels, kernel width, j0, j1 or None = the whole row, cond)
    pytest.param(1, 16, (), 2, 3, 4, False, id="B1-C16-noaux-2x2-pixel"),
    pytest.param(5, 16, (16,), 2, 0, 1, True, id="B5-C16-aux16-2x2-first-pixel-cond"),
    pytest.param(5, 32, (32, 16), 2, 6, 7, True, id="B5-C32-aux32+16-2x2-last-pixel-cond"),
    pytest.param(1, 16, (16, 16), 2, 0, None, False, id="B1-C16-aux16+16-2x2-row"),
    pytest.param(5, 16, (), 3, 0, None, True, id="B5-C16-noaux-2x3-row-cond"),
    pytest.param(1, 32, (16,), 3, 0, None, False, id="B1-C32-aux16-2x3-row"),
    pytest.param(5, 16, (16, 32), 3, 2, 3, False, id="B5-C16-aux16+32-2x3-pixel"),
    pytest.param(33, 16, (16,), 2, 4, 5, True, id="B33-C16-aux16-2x2-pixel-cond-two-launches"),
]
H, W = 4, 7


def _map(B, C, g, poison=False):
    """A padded map [B, C, H + 1, W + 2]: zero padding, random inside (NaN where poisoned)."""
    data = torch.zeros(B, C, H + 1, W + 2)
    data[:, :, 1:, 1:-1] = float("nan") if poison else torch.randn(B, C, H, W, generator=g)
    return data


def _inputs(B, C, aux_channels, kw, cond, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = _map(B, C, g)
    aux = [_map(B, a, g) for a in aux_channels]
    A = sum(aux_channels)
    r = lambda *s: 0.1 * torch.randn(*s, generator=g)
    weights = ResnetWeights(r(2 * kw, 2 * C, C), r(C), r(2 * A, C) if A else None, r(C) if A else None,
                            r(2 * kw, 2 * C, 2 * C), r(2 * C))
    return x, aux, weights, (r(B, 2 * C) if cond else None)


@pytest.mark.parametrize("B, C, aux_channels, kw, j0, j1, cond", CASES)
def test_triton_matches_reference_and_writes_only_its_positions(B, C, aux_channels, kw, j0, j1, cond):
    x, aux, weights, cond_bias = _inputs(B, C, aux_channels, kw, cond)
    j1 = W if j1 is None else j1
    i = 2
    results = []
    for backend in ("reference", "triton"):
        mid = _map(B, C, torch.Generator().manual_seed(1))     # conv2 reads mid's earlier columns
        mid[:, :, i + 1, j0 + 1:j1 + 1] = float("nan")          # the positions to be written
        out = _map(B, C, None, poison=True)
        mid_before, out_before = mid.clone(), out.clone()
        pixelcnnpp_resnet_at(x, aux, mid, out, weights, cond_bias, i, j0, j1, 1, backend=backend)
        written = torch.zeros_like(out, dtype=torch.bool)
        written[:, :, i + 1, j0 + 1:j1 + 1] = True
        assert not out[written].isnan().any() and not mid[written].isnan().any()
        same = dict(rtol=0, atol=0, equal_nan=True)       # nothing else changed
        torch.testing.assert_close(out[~written], out_before[~written], **same)
        torch.testing.assert_close(mid[~written], mid_before[~written], **same)
        results.append((mid, out))
    (mid_ref, out_ref), (mid_tri, out_tri) = results
    torch.testing.assert_close(mid_tri, mid_ref, rtol=1e-5, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(out_tri, out_ref, rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("B, j0, j1, kernels", [
    (1, 3, 4, ["resnet_fused_kernel"]),
    (32, 3, 4, ["resnet_fused_kernel"]),
    (33, 3, 4, ["resnet_conv1_kernel", "resnet_conv2_gate_kernel"]),
    (1, 0, W, ["resnet_conv1_kernel", "resnet_conv2_gate_kernel"]),
], ids=["B1-pixel", "B32-pixel", "B33-pixel", "B1-row"])
def test_a_single_position_is_one_launch(B, j0, j1, kernels):
    """A single position of up to 32 batch rows (every ul step of the sampler) is one launch;
    rows and wider batches take conv1, then conv2 + gate (recorded, not run)."""
    from fastgen.kernels import _launch
    x, aux, weights, cond_bias = _inputs(B, 16, (16,), 2, True)
    seen = []
    with _launch.observe_launches(lambda launch: seen.append(launch.kernel.__name__), execute=False):
        pixelcnnpp_resnet_at(x, aux, torch.zeros_like(x), torch.zeros_like(x), weights, cond_bias, 1, j0, j1,
                             backend="triton")
    assert seen == kernels


def test_channels_last_maps_match_the_reference():
    """The kernels read and write the maps through their strides."""
    x, aux, weights, cond_bias = _inputs(3, 16, (16, 16), 2, True)
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)
    results = []
    for backend in ("reference", "triton"):
        mid, out = cl(_map(3, 16, torch.Generator().manual_seed(1))), cl(torch.zeros_like(x))
        pixelcnnpp_resnet_at(cl(x), [cl(a) for a in aux], mid, out, weights, cond_bias, 1, 4, 5, backend=backend)
        results.append((mid, out))
    for tri, ref in zip(*results):
        assert not tri.is_contiguous()
        torch.testing.assert_close(tri, ref, rtol=1e-5, atol=1e-5)


def test_untileable_channels_fall_back_unless_triton_is_forced():
    x, aux, weights, cond_bias = _inputs(2, 8, (8,), 2, True)
    mid, out = torch.zeros_like(x), torch.zeros_like(x)
    pixelcnnpp_resnet_at(x, aux, mid, out, weights, cond_bias, 0, 0, 1)       # automatic: the reference
    expected = out.clone()
    reference.pixelcnnpp_resnet_at(x, aux, mid, out, weights, cond_bias, 0, 0, 1, 1)
    assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="multiples of 16"):
        pixelcnnpp_resnet_at(x, aux, mid, out, weights, cond_bias, 0, 0, 1, backend="triton")


@pytest.mark.parametrize("change, error, match", [
    (lambda a: a.update(j1=W + 1), ValueError, "j1"),
    (lambda a: a.update(mid=a["mid"][:, :8]), ValueError, "mid must be"),
    (lambda a: a.update(cond_bias=torch.zeros(3, 32)), ValueError, "cond_bias"),
    (lambda a: a.update(weights=a["weights"]._replace(w_aux=None)), ValueError, "w_aux"),
    (lambda a: a.update(weights=a["weights"]._replace(w1=torch.zeros(5, 32, 16))), ValueError, "w1"),
    (lambda a: a.update(weights=tuple(a["weights"])), TypeError, "weights must be a ResnetWeights"),
])
def test_bad_inputs_raise_errors_naming_the_argument(change, error, match):
    x, aux, weights, cond_bias = _inputs(2, 16, (16,), 2, True)
    args = dict(x=x, aux=aux, mid=torch.zeros_like(x), out=torch.zeros_like(x), weights=weights,
                cond_bias=cond_bias, i=0, j0=0, j1=1)
    change(args)
    with pytest.raises(error, match=match):
        pixelcnnpp_resnet_at(**args, backend="triton")


def test_opcheck():
    """torch.library.opcheck (schema, fake tensor, declared in-place writes of mid and out)."""
    x, aux, weights, cond_bias = _inputs(2, 16, (16, 16), 2, True)
    mid, out = torch.zeros_like(x), torch.zeros_like(x)
    torch.library.opcheck(torch.ops.fastgen.pixelcnnpp_resnet_at.default,
                          (x, aux, mid, out, *weights, cond_bias, 1, 2, 3, 1))
    x, aux, weights, _ = _inputs(1, 16, (), 3, False)
    torch.library.opcheck(torch.ops.fastgen.pixelcnnpp_resnet_at.default,
                          (x, aux, torch.zeros_like(x), torch.zeros_like(x), *weights, None, 0, 0, W, 1))
