"""StyleGAN2's ops -- bias_act, upfirdn2d, modulated_conv2d -- on Triton (the CPU interpreter)
against their references: values and gradients (second order for bias_act and upfirdn2d, as R1
and path-length regularisation need) for every activation and clamp setting, up/down factors
1/2/4, every padding form, separable and 2-D filters, flip_filter, non-contiguous inputs, fp32
and bf16; the references against the definitions written out by hand, gradcheck /
gradgradcheck in float64, opcheck, torch.compile, and errors naming the argument."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

from fastgen import ops
from fastgen.ops.stylegan import reference as R

ACTS = list(R.ACTIVATIONS)


def _rand(*shape, seed=0, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g)).to(dtype)


def _close(got, want, dtype=torch.float32, what=""):
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got.float(), want.float(), **tol, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------------- bias_act

@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("clamp", [None, 0.5], ids=["noclamp", "clamp0.5"])
def test_bias_act_values_and_gradients(act, clamp):
    x = _rand(3, 5, 4, 3, scale=2.0).requires_grad_()
    b = _rand(5, seed=1).requires_grad_()
    gy = _rand(3, 5, 4, 3, seed=2)
    out = {}
    for backend in ("triton", "reference"):
        y = ops.bias_act(x, b, act=act, clamp=clamp, backend=backend)
        out[backend] = (y, *torch.autograd.grad(y, (x, b), gy))
    for got, want, what in zip(out["triton"], out["reference"], ("y", "dx", "db")):
        _close(got, want, what=f"{act} {what}")


@pytest.mark.parametrize("act", ACTS)
def test_bias_act_second_order_on_triton(act):
    """d/d(x, b) of <v, dL/dx>: the R1-style double backward through the backward kernels."""
    clamp = 0.7 if act in ("lrelu", "tanh", "swish") else None
    results = {}
    for backend in ("triton", "reference"):
        x = _rand(2, 3, 5, scale=1.5).requires_grad_()
        b = _rand(3, seed=1).requires_grad_()
        gy = _rand(2, 3, 5, seed=2).requires_grad_()
        y = ops.bias_act(x, b, act=act, alpha=0.3, gain=1.3, clamp=clamp, backend=backend)
        gx, gb = torch.autograd.grad(y, (x, b), gy, create_graph=True)
        v = _rand(2, 3, 5, seed=3)
        penalty = (gx * v).sum() + gb.square().sum()
        results[backend] = torch.autograd.grad(penalty, (x, b, gy), allow_unused=True)
    for got, want, what in zip(results["triton"], results["reference"], ("x", "b", "gy")):
        if want is None:
            assert got is None or got.abs().max() == 0
            continue
        _close(got, want, what=f"{act} d2/d{what}")


@pytest.mark.parametrize("act", ACTS)
def test_bias_act_reference_gradgradcheck(act):
    x = _rand(2, 3, 2, dtype=torch.float64, scale=1.5).requires_grad_()
    b = _rand(3, seed=1, dtype=torch.float64).requires_grad_()
    for clamp in (None, 0.8):
        f = lambda x, b: R.bias_act(x, b, 1, act, None, None, clamp)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, b))
        assert torch.autograd.gradgradcheck(f, (x, b))


@pytest.mark.parametrize("act", ACTS)
def test_bias_act_derivative_formulas_match_autograd(act):
    """The kernels' D(ref) and D'(ref) (reference.bias_act_derivative) against autograd, float64."""
    z = torch.linspace(-2.5, 2.5, 41, dtype=torch.float64).requires_grad_()
    alpha, gain, clamp = R.resolve_act(act, None, 1.3, 1.9)
    y = R.bias_act(z, None, 0, act, alpha, gain, clamp)
    d1 = torch.autograd.grad(y.sum(), z, create_graph=True)[0]
    d2 = torch.autograd.grad(d1.sum(), z)[0] if d1.requires_grad else torch.zeros_like(z)   # linear: constant
    ref = z if R.ACTIVATIONS[act].ref == "x" else y
    torch.testing.assert_close(R.bias_act_derivative(ref.detach(), act, alpha, gain, clamp, 1), d1.detach())
    if R.ACTIVATIONS[act].ref == "x":
        torch.testing.assert_close(R.bias_act_derivative(ref.detach(), act, alpha, gain, clamp, 2), d2)
    else:    # through y: d(D)/dz = D'(y) * dy/dz
        torch.testing.assert_close(R.bias_act_derivative(ref.detach(), act, alpha, gain, clamp, 2) * d1.detach(), d2)


def test_bias_act_defaults_dims_and_layouts():
    x = _rand(4, 3, 6, scale=2.0)
    # StyleGAN2-ADA's defaults: lrelu alpha 0.2 gain sqrt(2); relu gain sqrt(2); linear gain 1
    want = torch.where(x >= 0, x, 0.2 * x) * math.sqrt(2)
    _close(ops.bias_act(x, act="lrelu", backend="triton"), want)
    _close(ops.bias_act(x, act="relu", backend="triton"), x.relu() * math.sqrt(2))
    _close(ops.bias_act(x, backend="triton"), x)
    # dim: the bias along the last axis, negative dim; a non-contiguous (transposed) x
    b = _rand(6, seed=1)
    _close(ops.bias_act(x, b, dim=-1, act="tanh", backend="triton"), torch.tanh(x + b))
    xt = x.transpose(0, 2)          # [6, 3, 4], non-contiguous
    b3 = _rand(3, seed=2)
    _close(ops.bias_act(xt, b3, dim=1, act="elu", clamp=1.0, backend="triton"),
           R.bias_act(xt.contiguous(), b3, 1, "elu", clamp=1.0))
    # 2-D [N, C] (a mapping network's fully connected layer)
    z = _rand(5, 7, seed=3)
    bz = _rand(7, seed=4)
    _close(ops.bias_act(z, bz, act="lrelu", backend="triton"), R.bias_act(z, bz, 1, "lrelu"))


def test_bias_act_bf16():
    x = _rand(2, 8, 3, 5, dtype=torch.bfloat16, scale=2.0).requires_grad_()
    b = _rand(8, seed=1, dtype=torch.bfloat16).requires_grad_()
    gy = _rand(2, 8, 3, 5, seed=2, dtype=torch.bfloat16)
    got = ops.bias_act(x, b, act="lrelu", clamp=256, backend="triton")
    want = R.bias_act(x, b, 1, "lrelu", clamp=256)
    assert got.dtype == torch.bfloat16
    _close(got, want, torch.bfloat16)
    g_got = torch.autograd.grad(got, (x, b), gy)
    g_want = torch.autograd.grad(want, (x, b), gy)
    for a, c in zip(g_got, g_want):
        _close(a, c, torch.bfloat16)


def test_bias_act_torch_compile_fullgraph():
    x = _rand(2, 4, 3, 3, scale=2.0).requires_grad_()
    b = _rand(4, seed=1).requires_grad_()

    def f(x, b):
        return ops.bias_act(x, b, act="lrelu", clamp=0.9, backend="triton").square().sum()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(x, b), (x, b))
    want = torch.autograd.grad(R.bias_act(x, b, 1, "lrelu", clamp=0.9).square().sum(), (x, b))
    for a, c in zip(got, want):
        _close(a, c)


# --------------------------------------------------------------------------------- upfirdn2d

def _naive_upfirdn2d(x, f, up, down, pad, flip, gain):
    """The definition, one output at a time (float64, tiny inputs)."""
    (ux, uy), (dx, dy), (x0, x1, y0, y1) = up, down, pad
    N, C, H, W = x.shape
    if f.dim() == 1:
        f2 = f[:, None] * f[None, :]
    else:
        f2 = f
    f2 = f2 * gain
    fh, fw = f2.shape
    k = f2 if flip else f2.flip(0, 1)
    OH, OW = (H * uy + y0 + y1 - fh) // dy + 1, (W * ux + x0 + x1 - fw) // dx + 1
    out = torch.zeros(N, C, OH, OW, dtype=torch.float64)
    for oy in range(OH):
        for ox in range(OW):
            for i in range(fh):
                for j in range(fw):
                    u, v = oy * dy + i - y0, ox * dx + j - x0      # position in the upsampled image
                    if u % uy or v % ux or not (0 <= u // uy < H and 0 <= v // ux < W):
                        continue
                    out[:, :, oy, ox] += k[i, j] * x[:, :, u // uy, v // ux].double()
    return out


@pytest.mark.parametrize("f_shape, up, down, pad, flip", [
    ((4,), (2, 2), (1, 1), (2, 1, 2, 1), False),
    ((3, 2), (1, 2), (2, 1), (1, -1, 0, 2), True),
    ((4, 4), (1, 1), (2, 2), (1, 1, 1, 1), False),
], ids=["sep-up2", "2d-mixed", "2d-down2"])
def test_upfirdn2d_reference_is_the_definition(f_shape, up, down, pad, flip):
    x = _rand(1, 2, 5, 4, dtype=torch.float64)
    f = _rand(*f_shape, seed=1, dtype=torch.float64)
    got = R.upfirdn2d(x, f, up, down, pad, flip, 1.5)
    torch.testing.assert_close(got, _naive_upfirdn2d(x, f, up, down, pad, flip, 1.5))


UPFIRDN_CASES = [
    # f shape, up, down, padding, flip_filter, gain
    pytest.param((4,), 2, 1, (2, 1), False, 4.0, id="sep4-up2-pad_pxpy"),
    pytest.param((4, 4), 2, 1, (2, 1, 2, 1), True, 4.0, id="2d4x4-up2-pad4-flip"),
    pytest.param((4,), 1, 2, (1, 1, 1, 1), False, 1.0, id="sep4-down2-pad4"),
    pytest.param((3, 5), 1, 2, 2, False, 1.0, id="2d3x5-down2-padint"),
    pytest.param((4,), 4, 1, (2, 1, 1, 2), False, 16.0, id="sep4-up4"),
    pytest.param((2, 3), 1, 4, (1, 0, 2, 1), True, 1.0, id="2d2x3-down4-flip"),
    pytest.param((5,), (2, 1), (1, 2), (1, 3, 0, 2), False, 2.0, id="sep5-upx2-downy2"),
    pytest.param((4, 4), 2, 2, (1, 2, 2, 1), False, 4.0, id="2d-up2-down2"),
    pytest.param((3, 3), 1, 1, (-1, 2, 1, -1), True, 0.5, id="2d3x3-negpad"),
    pytest.param(None, 2, 1, (0, 1, 0, 1), False, 1.0, id="nofilter-up2"),
]


@pytest.mark.parametrize("f_shape, up, down, padding, flip, gain", UPFIRDN_CASES)
def test_upfirdn2d_values_and_gradients(f_shape, up, down, padding, flip, gain):
    x = _rand(2, 3, 5, 7).requires_grad_()
    f = None if f_shape is None else _rand(*f_shape, seed=1).abs() + 0.1
    out = {}
    for backend in ("triton", "reference"):
        y = ops.upfirdn2d(x, f, up, down, padding, flip, gain, backend=backend)
        gy = _rand(*y.shape, seed=2)
        out[backend] = (y, torch.autograd.grad(y, x, gy)[0])
    for got, want, what in zip(out["triton"], out["reference"], ("y", "dx")):
        _close(got, want, what=what)


def test_upfirdn2d_second_order_and_non_contiguous():
    """Double backward on Triton (the gradient of the gradient is upfirdn2d again) and a strided x."""
    f = R.setup_filter([1, 3, 3, 1])
    base = _rand(2, 7, 6, 3)
    results = {}
    for backend in ("triton", "reference"):
        x = base.permute(0, 3, 1, 2).requires_grad_()          # [2, 3, 7, 6], non-contiguous
        y = ops.upfirdn2d(x, f, up=2, padding=(2, 1, 2, 1), gain=4, backend=backend)
        gy = _rand(*y.shape, seed=2).requires_grad_()
        gx = torch.autograd.grad(y, x, gy, create_graph=True)[0]
        v = _rand(*gx.shape, seed=3)
        results[backend] = (y, gx, torch.autograd.grad((gx * v).sum(), gy)[0])
    for got, want, what in zip(results["triton"], results["reference"], ("y", "dx", "d2/dgy")):
        _close(got, want, what=what)


def test_upfirdn2d_reference_gradgradcheck():
    x = _rand(1, 1, 4, 3, dtype=torch.float64).requires_grad_()
    for f, up, down, pad in ((_rand(3, seed=1, dtype=torch.float64), 2, 1, (1, 1, 2, 0)),
                             (_rand(2, 3, seed=2, dtype=torch.float64), 1, 2, (1, 1, 1, 1))):
        fn = lambda x: R.upfirdn2d(x, f, up, down, pad, False, 2.0)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


def test_upfirdn2d_bf16_and_helpers():
    x = _rand(2, 4, 6, 5, dtype=torch.bfloat16)
    f = R.setup_filter([1, 3, 3, 1])
    _close(ops.upfirdn2d(x, f, up=2, padding=(2, 1, 2, 1), gain=4, backend="triton"),
           R.upfirdn2d(x, f, 2, 1, (2, 1, 2, 1), False, 4), torch.bfloat16)
    # upsample2d / downsample2d keep a constant's level and have the expected sizes
    ones = torch.ones(1, 1, 6, 6)
    up = ops.upsample2d(ones, f, backend="triton")
    assert up.shape == (1, 1, 12, 12)
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.ones(1, 1, 8, 8))
    down = ops.downsample2d(ones, f, backend="triton")
    assert down.shape == (1, 1, 3, 3)
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.ones(1, 1, 1, 1))
    # setup_filter: normalised outer product, separable from 8 taps, gain
    assert R.setup_filter([1, 3, 3, 1]).shape == (4, 4)
    assert R.setup_filter([1] * 8).shape == (8,)
    torch.testing.assert_close(R.setup_filter([1, 2, 1], gain=4).sum(), torch.tensor(4.0))


# -------------------------------------------------------------------------- modulated_conv2d

def _modconv_by_definition(x, weight, styles, demodulate, up, down, padding, f, noise, flip_weight):
    """Per-sample weights and conv2d_resample spelled out sample by sample (float64)."""
    pad = R.conv2d_resample_padding(f, up, down, R.parse_padding(padding))
    outs = []
    for n in range(x.shape[0]):
        w = weight.double() * styles[n].double()[None, :, None, None]
        if demodulate:
            w = w / (w.square().sum((1, 2, 3), keepdim=True) + 1e-8).sqrt()
        if not flip_weight:
            w = w.flip(2, 3)
        z = R.upfirdn2d(x[n:n + 1].double(), f if up > 1 else None, up, 1, pad, False, up * up)
        z = F.conv2d(z, w)
        if down > 1:
            z = R.upfirdn2d(z, f, 1, down, 0, False, 1)
        outs.append(z)
    y = torch.cat(outs)
    return y + noise.double() if noise is not None else y


@pytest.mark.parametrize("up, down, f", [(1, 1, None), (2, 1, [1, 3, 3, 1]), (1, 2, [1, 3, 3, 1]), (2, 2, [1, 2, 1]),
                                         (4, 1, [1, 3, 3, 1]), (1, 2, None)],
                         ids=["plain", "up2", "down2", "up2down2", "up4", "down2-nofilter"])
def test_modulated_conv2d_reference_is_the_definition(up, down, f):
    x = _rand(2, 3, 6, 5, dtype=torch.float64)
    w = _rand(4, 3, 3, 3, seed=1, dtype=torch.float64)
    s = _rand(2, 3, seed=2, dtype=torch.float64)
    f = None if f is None else R.setup_filter(f).double()
    for demodulate, flip_weight in ((True, True), (False, False)):
        got = R.modulated_conv2d(x, w, s, demodulate, up, down, 1, f, None, flip_weight)
        want = _modconv_by_definition(x, w, s, demodulate, up, down, 1, f, None, flip_weight)
        torch.testing.assert_close(got, want)


MODCONV_CASES = [
    pytest.param(1, 1, 1, True, True, True, (3, 3), id="plain-3x3-demod-noise"),
    pytest.param(1, 1, (0, 1, 1, 0), False, False, False, (3, 2), id="plain-3x2-asympad-nodemod-flip"),
    pytest.param(2, 1, 1, True, False, True, (3, 3), id="up2-demod-flipweight-noise"),
    pytest.param(1, 2, 1, True, True, False, (3, 3), id="down2-demod"),
    pytest.param(1, 1, 0, True, True, False, (1, 1), id="1x1-torgb"),
    pytest.param(2, 2, 1, False, True, False, (3, 3), id="up2down2"),
]


@pytest.mark.parametrize("up, down, padding, demodulate, flip_weight, noise, k", MODCONV_CASES)
def test_modulated_conv2d_values_and_gradients(up, down, padding, demodulate, flip_weight, noise, k):
    f = R.setup_filter([1, 3, 3, 1])
    x = _rand(2, 5, 6, 7).requires_grad_()
    w = _rand(6, 5, *k, seed=1).requires_grad_()
    s = (_rand(2, 5, seed=2) + 1).requires_grad_()
    out = {}
    for backend in ("triton", "reference"):
        y = ops.modulated_conv2d(x, w, s, demodulate, up, down, padding, f, None, flip_weight, backend=backend)
        inputs = [x, w, s]
        if noise:
            nz = _rand(2, 1, *y.shape[2:], seed=4).requires_grad_()
            y = ops.modulated_conv2d(x, w, s, demodulate, up, down, padding, f, nz, flip_weight, backend=backend)
            inputs.append(nz)
        gy = _rand(*y.shape, seed=3)
        out[backend] = (y, *torch.autograd.grad(y, inputs, gy))
    for got, want, what in zip(out["triton"], out["reference"], ("y", "dx", "dweight", "dstyles", "dnoise")):
        _close(got, want, what=what)


def test_modulated_conv2d_non_contiguous_16_bit_and_wide_channels():
    """A channels-last x, fp16 (bf16 dots need a GPU: the interpreter has no bfloat16; the GPU
    suite runs this test with bf16 too), and more channels than one K / N tile."""
    x = _rand(2, 6, 5, 40, seed=0).permute(0, 3, 1, 2)        # [2, 40, 6, 5] non-contiguous
    w = _rand(36, 40, 3, 3, seed=1)
    s = _rand(2, 40, seed=2) + 1
    got = ops.modulated_conv2d(x, w, s, padding=1, backend="triton")
    _close(got, R.modulated_conv2d(x, w, s, padding=1))
    on_gpu = x.device.type == "cuda"
    for dtype in (torch.float16, torch.bfloat16) if on_gpu else (torch.float16,):
        xb, wb = x.to(dtype).requires_grad_(), w.to(dtype).requires_grad_()
        sb = s.clone().requires_grad_()
        got = ops.modulated_conv2d(xb, wb, sb, padding=1, backend="triton")
        assert got.dtype == dtype
        xr, wr, sr = x.clone().requires_grad_(), w.clone().requires_grad_(), s.clone().requires_grad_()
        want = R.modulated_conv2d(xr, wr, sr, padding=1)
        _close(got, want, dtype)
        gy = _rand(*got.shape, seed=3)
        grads = torch.autograd.grad(got, (xb, wb, sb), gy.to(dtype))
        want_grads = torch.autograd.grad(want, (xr, wr, sr), gy)
        for a, c, what in zip(grads, want_grads, ("dx", "dweight", "dstyles")):
            torch.testing.assert_close(a.float(), c, rtol=2e-2, atol=2e-2 * c.abs().max().item(), msg=what)
    if not on_gpu:
        with pytest.raises(ValueError, match="bfloat16 tl.dot does not run in the Triton interpreter"):
            ops.modulated_conv2d(x.bfloat16(), w.bfloat16(), s, padding=1, backend="triton")


@pytest.mark.parametrize("up, down", [(1, 1), pytest.param(2, 1, marks=pytest.mark.slow),
                                      pytest.param(1, 2, marks=pytest.mark.slow)], ids=["plain", "up2", "down2"])
def test_modulated_conv2d_reference_gradcheck(up, down):
    f = R.setup_filter([1, 3, 3, 1]).double()
    x = _rand(1, 2, 3, 3, dtype=torch.float64).requires_grad_()
    w = _rand(2, 2, 3, 3, seed=1, dtype=torch.float64).requires_grad_()
    s = (_rand(1, 2, seed=2, dtype=torch.float64) + 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, s: R.modulated_conv2d(x, w, s, True, up, down, 1, f), (x, w, s))


def test_modulated_conv2d_double_backward_is_refused_on_triton_not_wrong():
    """A second derivative through the Triton conv (create_graph=True, e.g. path-length
    regularisation) raises -- its kernel gradients carry no graph, and PyTorch would otherwise
    return second derivatives missing those terms -- while the reference gives them."""
    x = _rand(2, 3, 5, 5).requires_grad_()
    w = _rand(4, 3, 3, 3, seed=1).requires_grad_()
    s = (_rand(2, 3, seed=2) + 1).requires_grad_()

    def second_order(backend):
        y = ops.modulated_conv2d(x, w, s, padding=1, backend=backend)
        gx, = torch.autograd.grad((y * y).sum(), x, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), w)[0]

    with pytest.raises(RuntimeError, match="not differentiable"):
        second_order("triton")
    assert second_order("reference").abs().sum() > 0
    # first order on Triton is unaffected
    y = ops.modulated_conv2d(x, w, s, padding=1, backend="triton")
    assert torch.autograd.grad(y.sum(), w)[0].shape == w.shape


# --------------------------------------------------------------------------- registration

def test_opcheck_bias_act_and_upfirdn2d():
    x = _rand(2, 3, 4, 5).requires_grad_()
    b = _rand(3, seed=1).requires_grad_()
    torch.library.opcheck(torch.ops.fastgen.bias_act.default, (x, b, "lrelu", 0.2, math.sqrt(2), 0.5, 1))
    torch.library.opcheck(torch.ops.fastgen.bias_act.default, (x, None, "swish", 0.0, 1.0, -1.0, 1))
    f = R.setup_filter([1, 3, 3, 1])
    torch.library.opcheck(torch.ops.fastgen.upfirdn2d.default, (x, f, 2, 2, 1, 1, 2, 1, 2, 1, False, 4.0))


def test_opcheck_modulated_conv():
    x = _rand(1, 2, 3, 4).requires_grad_()
    w = _rand(3, 2, 3, 3, seed=2).requires_grad_()
    s = (_rand(1, 2, seed=3) + 1).requires_grad_()
    d = R.demodulation(w, s).detach().requires_grad_()
    torch.library.opcheck(torch.ops.fastgen.stylegan_conv.default, (x, w, s, d, 1, 1, 1, 1, 3, 4, True))


@pytest.mark.parametrize("call, message", [
    (lambda x: ops.bias_act(x, act="gelu"), "act must be one of"),
    (lambda x: ops.bias_act(x, torch.zeros(4)), r"b must have shape \[3\]"),
    (lambda x: ops.bias_act(x, dim=4), "dim must be an int"),
    (lambda x: ops.bias_act(x.long()), "x must be floating point"),
    (lambda x: ops.bias_act(x, clamp=float("nan")), "clamp must be a finite number"),
    (lambda x: ops.upfirdn2d(x[0], None), r"x must be \[N, C, H, W\]"),
    (lambda x: ops.upfirdn2d(x, torch.ones(2, 2, 2)), "f must be"),
    (lambda x: ops.upfirdn2d(x, None, up=0), "up must be a positive int"),
    (lambda x: ops.upfirdn2d(x, None, padding=(1, 2, 3)), "padding must be"),
    (lambda x: ops.upfirdn2d(x, torch.ones(9, 9)), "the output would be"),
    (lambda x: ops.modulated_conv2d(x, torch.ones(4, 2, 3, 3), torch.ones(2, 3)), r"weight must be \[C_out, 3"),
    (lambda x: ops.modulated_conv2d(x, torch.ones(4, 3, 3, 3), torch.ones(3, 3)), r"styles must be \[2, 3\]"),
    (lambda x: ops.modulated_conv2d(x, torch.ones(4, 3, 3, 3), torch.ones(2, 3), up=(2, 2)), "up must be"),
    (lambda x: ops.modulated_conv2d(x, torch.ones(4, 3, 9, 9), torch.ones(2, 3)), "the output would be"),
    (lambda x: ops.modulated_conv2d(x.numpy(), torch.ones(4, 3, 3, 3), torch.ones(2, 3)), "x must be a torch.Tensor"),
])
def test_bad_input_errors(call, message):
    x = _rand(2, 3, 4, 5)
    with pytest.raises((ValueError, TypeError), match=message):
        call(x)


def test_float64_on_triton_is_refused_with_the_reason():
    x = _rand(2, 3, 4, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="float32/float16/bfloat16"):
        ops.bias_act(x, backend="triton")
    assert ops.upfirdn2d(x, None).dtype == torch.float64        # the reference takes it


# ------------------------------------------------------------------------------ autocast
# The interpreter has no bf16 dots (numpy has no bf16): the conv's Triton path is checked here
# under an fp16 autocast, under bf16 by test_modulated_conv2d_autocast_bf16_on_the_gpu.

@pytest.mark.parametrize("backend,dtype", [pytest.param("reference", torch.bfloat16, id="reference-bf16"),
                                           pytest.param("triton", torch.float16, id="triton-fp16")])
@pytest.mark.parametrize("x_dtype", ["fp32", "autocast"], ids=["x-fp32", "x-from-an-autocast-layer"])
def test_modulated_conv2d_under_autocast_casts_like_conv2d(backend, dtype, x_dtype):
    """modulated_conv2d does what nn.Conv2d does under autocast: x, weight and styles are cast to
    the autocast dtype (noise and the filter are used as given), the output has that dtype and is
    the op on the cast inputs; float32 weight and styles get float32 gradients."""
    f = R.setup_filter([1, 3, 3, 1])
    x = _rand(2, 3, 4, 5, dtype=dtype if x_dtype == "autocast" else torch.float32).requires_grad_()
    w = _rand(4, 3, 3, 3, seed=1).requires_grad_()
    s = (_rand(2, 3, seed=2) + 1).requires_grad_()
    noise = _rand(2, 1, 8, 10, seed=3)
    with torch.autocast("cpu", dtype=dtype):
        y = ops.modulated_conv2d(x, w, s, up=2, padding=1, resample_filter=f, noise=noise, flip_weight=False,
                                 backend=backend)
    assert y.dtype == dtype and y.shape == (2, 4, 8, 10)
    gy = _rand(*y.shape, seed=4, dtype=dtype)
    grads = torch.autograd.grad(y, (x, w, s), gy)
    assert [g.dtype for g in grads] == [x.dtype, torch.float32, torch.float32]
    cast = [t.detach().to(dtype).requires_grad_() for t in (x, w, s)]
    want = R.modulated_conv2d(*cast, True, 2, 1, 1, f, noise, False)
    want_grads = torch.autograd.grad(want, cast, gy)
    if backend == "reference":
        assert torch.equal(y, want) and all(torch.equal(g, c.to(g.dtype)) for g, c in zip(grads, want_grads))
    else:
        _close(y, want, dtype, "y")
        for g, c, what in zip(grads, want_grads, ("dx", "dweight", "dstyles")):
            torch.testing.assert_close(g.float(), c.float(), rtol=2e-2, atol=2e-2 * c.abs().max().item(), msg=what)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=["x-fp32", "x-bf16"])
def test_bias_act_and_upfirdn2d_under_autocast_keep_their_dtype(backend, x_dtype):
    """bias_act and upfirdn2d are not cast (like PyTorch's elementwise ops): under autocast they
    return x's dtype and exactly what they return outside it -- also on the reference, whose
    float32 F.conv2d autocast would otherwise lower; a float32 bias gets a float32 gradient."""
    f = R.setup_filter([1, 3, 3, 1])
    x = _rand(2, 3, 6, 5, dtype=x_dtype, scale=2.0).requires_grad_()
    b = _rand(3, seed=1).requires_grad_()

    def run():
        y = ops.bias_act(x, b, act="lrelu", clamp=2.0, backend=backend)
        z = ops.upfirdn2d(y, f, up=2, padding=(2, 1, 2, 1), gain=4, backend=backend)
        return (y, z, *torch.autograd.grad(z, (x, b), _rand(*z.shape, seed=2, dtype=x_dtype)))

    plain = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = run()
    assert [t.dtype for t in autocast] == [x_dtype, x_dtype, x_dtype, torch.float32]
    assert all(torch.equal(a, p) for a, p in zip(autocast, plain))


def test_stylegan_registered_ops_follow_the_same_rules():
    """The registered ops (what torch.compile sees) have the rules at the Autocast dispatch key."""
    x, w, s = _rand(1, 2, 3, 4), _rand(3, 2, 3, 3, seed=2), _rand(1, 2, seed=3) + 1
    with torch.autocast("cpu", dtype=torch.float16):
        y = torch.ops.fastgen.stylegan_conv(x, w, s, None, 1, 1, 1, 1, 3, 4, True)
        z = torch.ops.fastgen.upfirdn2d(x, R.setup_filter([1, 3, 3, 1]), 2, 2, 1, 1, 2, 1, 2, 1, False, 4.0)
    assert y.dtype == torch.float16 and z.dtype == torch.float32
    _close(y, R.modulated_conv2d(x.half(), w.half(), s.half(), False, padding=1), torch.float16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                    reason="bfloat16 dots need a GPU (the interpreter has no bfloat16)")
def test_modulated_conv2d_autocast_bf16_on_the_gpu():
    """The Triton kernels (conv, upfirdn2d, bias_act) under a CUDA bf16 autocast, as StyleGAN2's
    layers call them, against the reference on the cast inputs."""
    f = R.setup_filter([1, 3, 3, 1]).cuda()
    x = _rand(2, 8, 4, 4).cuda().requires_grad_()
    w = _rand(16, 8, 3, 3, seed=1).cuda().requires_grad_()
    s = (_rand(2, 8, seed=2) + 1).cuda().requires_grad_()
    b = _rand(16, seed=3).cuda().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = ops.modulated_conv2d(x, w, s, up=2, padding=1, resample_filter=f, flip_weight=False)
        y = ops.bias_act(y, b, act="lrelu")
    assert y.dtype == torch.bfloat16
    gy = _rand(*y.shape, seed=4).cuda().bfloat16()
    grads = torch.autograd.grad(y, (x, w, s, b), gy)
    assert all(g.dtype == torch.float32 for g in grads)
    cast = [t.detach().bfloat16().requires_grad_() for t in (x, w, s)]
    bb = b.detach().clone().requires_grad_()
    want = R.bias_act(R.modulated_conv2d(*cast, True, 2, 1, 1, f, None, False), bb, 1, "lrelu")
    _close(y, want, torch.bfloat16, "y")
    for g, c, what in zip(grads, torch.autograd.grad(want, (*cast, bb), gy), ("dx", "dweight", "dstyles", "db")):
        torch.testing.assert_close(g.float(), c.float(), rtol=2e-2, atol=2e-2 * c.abs().max().item(), msg=what)
