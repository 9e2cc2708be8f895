"""The conv family (masked_conv2d, causal_conv1d): the Triton kernels (interpreter on CPU) against the reference specification."""
import os

import pytest
import torch
import torch.nn.functional as F

from fastgen import ops
from fastgen.ops.conv import reference
from helpers import assert_close_rel, values_and_grads

CASES = [
    pytest.param(2, 6, 9, 7, 9, 3, "B", 1, 1, "raster", id="B2-Ci6-Co9-H7-W9-k3B"),
    pytest.param(1, 5, 4, 8, 5, 7, "A", 1, 1, "raster", id="B1-Ci5-Co4-H8-W5-k7A"),
    pytest.param(2, 6, 9, 6, 7, 5, "A", 3, 2, "raster", id="B2-Ci6-Co9-H6-W7-k5A-rgb-d2"),
    pytest.param(3, 3, 6, 5, 5, 3, "B", 3, 1, "raster", id="B3-Ci3-Co6-H5-W5-k3B-rgb"),
    pytest.param(2, 4, 8, 5, 6, 5, "A", 1, 1, "vertical", id="B2-Ci4-Co8-H5-W6-k5A-vertical"),
    pytest.param(2, 4, 8, 5, 6, 3, "B", 1, 3, "vertical", id="B2-Ci4-Co8-H5-W6-k3B-vertical-d3"),
    pytest.param(2, 4, 8, 5, 6, 3, "A", 1, 1, "horizontal", id="B2-Ci4-Co8-H5-W6-k3A-horizontal"),
    pytest.param(1, 70, 33, 3, 4, 3, "B", 1, 1, "raster", id="B1-Ci70-Co33-H3-W4-k3B-chunks"),
]


@pytest.mark.parametrize("B,c_in,c_out,H,W,k,mask_type,groups,dilation,stack", CASES)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_triton_matches_reference(B, c_in, c_out, H, W, k, mask_type, groups, dilation, stack, with_bias):
    x = torch.randn(B, c_in, H, W, requires_grad=True)
    w = (torch.randn(c_out, c_in, k, k) / k).requires_grad_()
    b = torch.randn(c_out, requires_grad=True) if with_bias else None
    args = (mask_type, groups, dilation, stack)
    inputs = [x, w] + ([b] if with_bias else [])

    def run(backend):
        return lambda x, w, *b: ops.masked_conv2d(x, w, b[0] if b else None, *args, backend=backend)

    y_ref, g_ref = values_and_grads(run("reference"), inputs)
    y, g = values_and_grads(run("triton"), inputs)
    assert y.shape == y_ref.shape
    assert_close_rel(y, y_ref, 1e-5, "y")
    for name, a, e in zip(["grad_x", "grad_w", "grad_b"], g, g_ref):
        assert_close_rel(a, e, 1e-5, name)


def test_masked_taps_of_weight_gradient_are_exactly_zero():
    x = torch.randn(2, 6, 6, 6)
    w = torch.randn(6, 6, 5, 5, requires_grad=True)
    y = ops.masked_conv2d(x, w, None, "A", 3, backend="triton")
    (gw,) = torch.autograd.grad(y.square().sum(), [w])
    mask = reference.pixelcnn_mask(6, 6, 5, "A", 3)
    assert (gw[mask == 0] == 0).all()
    assert (gw[mask == 1] != 0).all()


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "transposed_hw"])
def test_non_contiguous_inputs(layout):
    base = torch.randn(2, 10, 7, 9)
    if layout == "channels_last":
        x = base.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        x = base[:, ::2]
    else:
        x = base.transpose(2, 3).contiguous().transpose(2, 3)
    c_in = x.shape[1]
    w = torch.randn(8, c_in, 3, 3)
    y = ops.masked_conv2d(x, w, None, "B", backend="triton")
    assert_close_rel(y, reference.masked_conv2d(x, w, None, "B"), 1e-5)


def test_half_precision_under_interpreter():
    """fp16 runs through the same kernel (bf16 is checked on the GPU: numpy has no bf16)."""
    x = torch.randn(2, 8, 6, 6)
    w = torch.randn(8, 8, 3, 3) / 3
    y = ops.masked_conv2d(x.half(), w.half(), None, "B", backend="triton")
    assert y.dtype == torch.float16
    assert_close_rel(y.float(), reference.masked_conv2d(x, w, None, "B"), 1e-2)


def test_reference_is_conv2d_with_masked_weight():
    x, w, b = torch.randn(2, 6, 5, 7), torch.randn(9, 6, 5, 5), torch.randn(9)
    mask = reference.pixelcnn_mask(9, 6, 5, "A", 3)
    expected = F.conv2d(x, w * mask, b, padding=2)
    torch.testing.assert_close(reference.masked_conv2d(x, w, b, "A", 3), expected)


@pytest.mark.parametrize("mask_type,groups,dilation", [("A", 1, 1), ("B", 1, 2), ("A", 3, 1), ("B", 3, 1)])
def test_gradcheck_reference_float64(mask_type, groups, dilation):
    x = torch.randn(1, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: reference.masked_conv2d(x, w, b, mask_type, groups, dilation), (x, w, b))


def test_float64_runs_on_reference_and_forced_triton_refuses():
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    w = torch.randn(4, 4, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(ops.masked_conv2d(x, w), reference.masked_conv2d(x, w))
    with pytest.raises(RuntimeError, match="float64"):
        ops.masked_conv2d(x, w, backend="triton")


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("mask_type,groups", [("A", 1), ("B", 1), ("A", 3), ("B", 3)])
def test_causality(backend, mask_type, groups):
    """Perturbing input (r, c) never changes outputs at earlier raster positions; for type A
    not at (r, c) itself either.  With colour groups, at (r, c) output group g changes only
    if it may see the perturbed input group."""
    C, H, W, r, c = 6, 6, 7, 3, 4
    x = torch.randn(1, C, H, W)
    w = torch.randn(C, C, 3, 3)
    y0 = ops.masked_conv2d(x, w, None, mask_type, groups, backend=backend)
    for channel in range(C):
        x1 = x.clone()
        x1[0, channel, r, c] += 10.0
        diff = (ops.masked_conv2d(x1, w, None, mask_type, groups, backend=backend) - y0).abs()
        changed = diff.amax(1)[0] > 1e-4
        raster = torch.arange(H * W).view(H, W)
        assert not changed[raster < r * W + c].any()
        assert changed[raster > r * W + c].any()  # the perturbation does reach later pixels
        group_in = channel // (C // groups)
        delta = diff[0, :, r, c]
        for out_channel in range(C):
            group_out = out_channel // (C // groups)
            sees = group_in < group_out if mask_type == "A" else group_in <= group_out
            assert (delta[out_channel] > 1e-4) == sees, (channel, out_channel)


def test_opcheck():
    x = torch.randn(2, 4, 5, 6, requires_grad=True)
    w = torch.randn(6, 4, 3, 3, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    torch.library.opcheck(torch.ops.fastgen.masked_conv2d.default, (x, w, b, "A", 1, 1, "raster"))
    torch.library.opcheck(torch.ops.fastgen.masked_conv2d.default, (x, w, None, "B", 1, 2, "vertical"))


def test_torch_compile_fullgraph():
    x = torch.randn(2, 6, 5, 5, requires_grad=True)
    w = torch.randn(6, 6, 3, 3, requires_grad=True)
    f = torch.compile(lambda x, w: ops.masked_conv2d(x, w, None, "A", 3, backend="triton").relu(),
                      fullgraph=True, backend="aot_eager")
    y = f(x, w)
    y_ref = reference.masked_conv2d(x, w, None, "A", 3).relu()
    assert_close_rel(y, y_ref, 1e-5)
    g = torch.autograd.grad(y.sum(), (x, w))
    g_ref = torch.autograd.grad(y_ref.sum(), (x, w))
    for a, e in zip(g, g_ref):
        assert_close_rel(a, e, 1e-5)


def test_default_backend_on_cpu_is_reference(monkeypatch):
    monkeypatch.delenv("FASTGEN_BACKEND", raising=False)
    from fastgen.ops._backend import choose_backend
    assert choose_backend("masked_conv2d", torch.empty(1)) == "reference"
    monkeypatch.setenv("FASTGEN_BACKEND", "triton")
    assert choose_backend("masked_conv2d", torch.empty(1)) == "triton"
    monkeypatch.setenv("FASTGEN_BACKEND", "cuda")
    with pytest.raises(ValueError, match="FASTGEN_BACKEND"):
        choose_backend("masked_conv2d", torch.empty(1))


# ------------------------------------------------------------------ causal_conv1d


@pytest.mark.parametrize("B,c_in,c_out,T,k,dilation", [
    pytest.param(2, 5, 7, 33, 2, 1, id="B2-Ci5-Co7-T33-k2-d1"),
    pytest.param(1, 8, 8, 50, 2, 16, id="B1-Ci8-Co8-T50-k2-d16"),
    pytest.param(3, 6, 4, 17, 3, 4, id="B3-Ci6-Co4-T17-k3-d4"),
    pytest.param(2, 4, 6, 9, 3, 8, id="B2-Ci4-Co6-T9-k3-d8-field-past-start"),
    pytest.param(2, 3, 5, 12, 1, 1, id="B2-Ci3-Co5-T12-k1"),
    pytest.param(1, 70, 9, 20, 2, 2, id="B1-Ci70-Co9-T20-k2-d2-chunks"),
])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_causal_triton_matches_reference(B, c_in, c_out, T, k, dilation, with_bias):
    x = torch.randn(B, c_in, T, requires_grad=True)
    w = (torch.randn(c_out, c_in, k) / k).requires_grad_()
    b = torch.randn(c_out, requires_grad=True) if with_bias else None
    inputs = [x, w] + ([b] if with_bias else [])

    def run(backend):
        return lambda x, w, *b: ops.causal_conv1d(x, w, b[0] if b else None, dilation, backend=backend)

    y_ref, g_ref = values_and_grads(run("reference"), inputs)
    y, g = values_and_grads(run("triton"), inputs)
    assert y.shape == (B, c_out, T)
    assert_close_rel(y, y_ref, 1e-5, "y")
    for name, a, e in zip(["grad_x", "grad_w", "grad_b"], g, g_ref):
        assert_close_rel(a, e, 1e-5, name)


def test_causal_reference_matches_explicit_sum():
    """y[t] = b + sum_j W[:, :, j] x[t - (k-1-j) d], zero before the start."""
    x, w, b = torch.randn(2, 3, 11, dtype=torch.float64), torch.randn(4, 3, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    d = 2
    expected = b[None, :, None].repeat(2, 1, 11)
    for t in range(11):
        for j in range(3):
            s = t - (3 - 1 - j) * d
            if s >= 0:
                expected[:, :, t] += x[:, :, s] @ w[:, :, j].T
    torch.testing.assert_close(reference.causal_conv1d(x, w, b, d), expected)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_causal_conv1d_causality(backend):
    x = torch.randn(1, 4, 40)
    w = torch.randn(4, 4, 2)
    y0 = ops.causal_conv1d(x, w, None, 4, backend=backend)
    t = 17
    x1 = x.clone()
    x1[0, :, t] += 5.0
    changed = (ops.causal_conv1d(x1, w, None, 4, backend=backend) - y0).abs().amax(1)[0] > 1e-5
    assert not changed[:t].any()
    assert changed[t] and changed[t + 4]          # taps at 0 and -d
    assert not changed[t + 1:t + 4].any() and not changed[t + 5:].any()


def test_causal_channels_last_input_and_output_layout():
    x = torch.randn(2, 6, 25).transpose(1, 2).contiguous().transpose(1, 2)  # channel stride 1
    w = torch.randn(5, 6, 2)
    y = ops.causal_conv1d(x, w, None, 3, backend="triton")
    assert y.stride(1) == 1  # stays channels-last for the next layer
    assert_close_rel(y, reference.causal_conv1d(x, w, None, 3), 1e-5)


def test_causal_gradcheck_reference_float64():
    x = torch.randn(2, 3, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: reference.causal_conv1d(x, w, b, 3), (x, w, b))


def test_causal_opcheck():
    x = torch.randn(2, 4, 13, requires_grad=True)
    w = torch.randn(3, 4, 2, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    torch.library.opcheck(torch.ops.fastgen.causal_conv1d.default, (x, w, b, 2))
    torch.library.opcheck(torch.ops.fastgen.causal_conv1d.default, (x, w, None, 1))


def test_causal_torch_compile_fullgraph():
    x = torch.randn(2, 5, 9, requires_grad=True)
    w = torch.randn(7, 5, 2, requires_grad=True)
    f = torch.compile(lambda x, w: torch.tanh(ops.causal_conv1d(x, w, None, 2, backend="triton")),
                      fullgraph=True, backend="aot_eager")
    y = f(x, w)
    y_ref = torch.tanh(reference.causal_conv1d(x, w, None, 2))
    assert_close_rel(y, y_ref, 1e-5)
    for a, e in zip(torch.autograd.grad(y.sum(), (x, w)), torch.autograd.grad(y_ref.sum(), (x, w))):
        assert_close_rel(a, e, 1e-5)


# ------------------------------------------------------------------ autocast

def _conv_case(op):
    """(public op, its reference, x [B, C_in, ...], weight [C_out, C_in, k...], bias [C_out])."""
    if op == "masked_conv2d":
        return ops.masked_conv2d, reference.masked_conv2d, torch.randn(2, 4, 5, 6), torch.randn(6, 4, 3, 3) / 3
    return ops.causal_conv1d, reference.causal_conv1d, torch.randn(2, 4, 9), torch.randn(6, 4, 3) / 3


# The interpreter has no bf16 dots (numpy has no bf16): the Triton path is checked here under an
# fp16 autocast, under bf16 by test_autocast_bf16_on_the_gpu.
AUTOCAST_BACKENDS = [pytest.param("reference", torch.bfloat16, id="reference-bf16"),
                     pytest.param("triton", torch.float16, id="triton-fp16")]


@pytest.mark.parametrize("backend,dtype", AUTOCAST_BACKENDS)
@pytest.mark.parametrize("x_dtype", ["fp32", "autocast"], ids=["x-fp32", "x-from-an-autocast-layer"])
@pytest.mark.parametrize("op", ["masked_conv2d", "causal_conv1d"])
def test_autocast_casts_like_nn_conv(op, x_dtype, backend, dtype):
    """Under torch.autocast both ops do what nn.Conv2d does: x, weight and bias are cast to the
    autocast dtype, the output has it and is the op on the cast inputs (exactly, on the
    reference); the float32 parameters get float32 gradients through the casts."""
    fn, ref, x, w = _conv_case(op)
    x = x.to(dtype if x_dtype == "autocast" else torch.float32).requires_grad_()
    w, b = w.requires_grad_(), torch.randn(6, requires_grad=True)

    def under_autocast(x, w, b):
        with torch.autocast("cpu", dtype=dtype):
            return fn(x, w, b, backend=backend)

    y, grads = values_and_grads(under_autocast, [x, w, b])
    assert y.dtype == dtype
    assert [g.dtype for g in grads] == [x.dtype, torch.float32, torch.float32]
    cast = [t.detach().to(dtype).requires_grad_() for t in (x, w, b)]
    y_ref, grads_ref = values_and_grads(ref, cast)
    if backend == "reference":
        assert torch.equal(y, y_ref)
        assert all(torch.equal(g, e.to(g.dtype)) for g, e in zip(grads, grads_ref))
    else:
        assert_close_rel(y, y_ref, 1e-2, "y")
        for name, g, e in zip(["grad_x", "grad_w", "grad_b"], grads, grads_ref):
            assert_close_rel(g, e, 1e-2, name)


def test_autocast_rule_of_the_registered_op_and_under_torch_compile():
    """The registered op (what torch.compile sees) has the same rule at the Autocast dispatch
    key, and a compiled call of the public function follows it too."""
    x = torch.randn(2, 4, 5, 5)
    w = torch.randn(6, 4, 3, 3, requires_grad=True)
    want = reference.masked_conv2d(x.half(), w.detach().half(), None, "A")
    compiled = torch.compile(lambda x, w: ops.masked_conv2d(x, w, None, "A", backend="triton"),
                             fullgraph=True, backend="aot_eager")
    with torch.autocast("cpu", dtype=torch.float16):
        outs = [torch.ops.fastgen.masked_conv2d(x, w, None, "A", 1, 1, "raster"), compiled(x, w)]
    for y in outs:
        assert y.dtype == torch.float16
        assert_close_rel(y, want, 1e-2)
        assert torch.autograd.grad(y.float().sum(), w)[0].dtype == torch.float32


def test_autocast_leaves_float64_and_disabled_regions_alone():
    """As autocast itself: float64 inputs are not cast, and an op called where autocast is off
    runs in its inputs' dtype."""
    x, w = torch.randn(1, 3, 4, 4, dtype=torch.float64), torch.randn(3, 3, 3, 3, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ops.masked_conv2d(x, w).dtype == torch.float64
        with torch.autocast("cpu", enabled=False):
            assert ops.causal_conv1d(x[:, :, 0].float(), w[:, :, 0].float()).dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                    reason="bfloat16 dots need a GPU (the interpreter has no bfloat16)")
@pytest.mark.parametrize("op", ["masked_conv2d", "causal_conv1d"])
def test_autocast_bf16_on_the_gpu(op):
    """The Triton kernels under a CUDA bf16 autocast against the reference on the cast inputs."""
    fn, ref, x, w = _conv_case(op)
    x, w, b = x.cuda().requires_grad_(), w.cuda().requires_grad_(), torch.randn(6, device="cuda", requires_grad=True)

    def under_autocast(x, w, b):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return fn(x, w, b)

    y = under_autocast(x, w, b)
    assert y.dtype == torch.bfloat16
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, w, b), gy)
    assert all(g.dtype == torch.float32 for g in grads)
    cast = [t.detach().bfloat16().requires_grad_() for t in (x, w, b)]
    y_ref = ref(*cast)
    assert_close_rel(y.float(), y_ref.float(), 1e-2, "y")
    for name, g, e in zip(["grad_x", "grad_w", "grad_b"], grads, torch.autograd.grad(y_ref, cast, gy)):
        assert_close_rel(g, e.float(), 1e-2, name)
