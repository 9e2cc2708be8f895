"""fastgen.ops.affine_coupling: the fused coupling transform (Triton under the CPU interpreter)
against its reference -- values, log-dets and gradients for every scale, checkerboard parity and
direction, channel-slice (strided) inputs, 16-bit inputs with a float32 log-det --, the
reference against the brute-force Jacobian, inverse(forward) = identity, opcheck, torch.compile,
and errors naming the argument."""
import pytest
import torch

from fastgen import ops
from fastgen.ops.flow_coupling import reference

SCALES = ["sigmoid", "exp_tanh", "additive"]


def _inputs(scale, shape=(3, 4, 5, 6), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g).to(dtype)
    h_channels = shape[1] if scale == "additive" else 2 * shape[1]
    h = (2.0 * torch.randn(shape[0], h_channels, *shape[2:], generator=g)).to(dtype)   # scales far from 1
    return x, h


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("checkerboard", [None, 0, 1])
@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_triton_matches_reference_values_and_gradients(scale, checkerboard, inverse):
    x, h = _inputs(scale)
    x.requires_grad_(True)
    h.requires_grad_(True)
    g = torch.Generator().manual_seed(1)
    grad_out, grad_logdet = torch.randn(x.shape, generator=g), torch.randn(x.shape[0], generator=g)
    results = {}
    for backend in ("triton", "reference"):
        out, logdet = ops.affine_coupling(x, h, scale, checkerboard, inverse, backend=backend)
        assert logdet.dtype == torch.float32 and logdet.shape == (x.shape[0],)
        grads = torch.autograd.grad((out * grad_out).sum() + (logdet * grad_logdet).sum(), (x, h))
        results[backend] = (out, logdet, *grads)
    for got, want in zip(results["triton"], results["reference"]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_reference_logdet_is_the_jacobian_logdet():
    """Every scale and mask, both directions, in float64: logdet = log |det d out / d x|."""
    for scale in SCALES:
        for checkerboard in (None, 1):
            for inverse in (False, True):
                x, h = _inputs(scale, shape=(1, 2, 3, 2))
                x, h = x.double(), h.double()
                jac = torch.func.jacrev(lambda v: reference.affine_coupling(v, h, scale, checkerboard, inverse).out)(x)
                jac = jac.reshape(x.numel(), x.numel())
                want = torch.linalg.slogdet(jac).logabsdet
                got = reference.affine_coupling(x, h, scale, checkerboard, inverse).logdet
                torch.testing.assert_close(got, want.view(1), rtol=1e-10, atol=1e-10)


def test_reference_gradcheck_in_float64():
    for scale in SCALES:
        x, h = _inputs(scale, shape=(2, 2, 2, 3))
        x, h = x.double().requires_grad_(), h.double().requires_grad_()
        assert torch.autograd.gradcheck(lambda x, h: reference.affine_coupling(x, h, scale, 0, False), (x, h))
        assert torch.autograd.gradcheck(lambda x, h: reference.affine_coupling(x, h, scale, None, True), (x, h))


@pytest.mark.parametrize("scale", SCALES)
def test_inverse_undoes_forward(scale):
    x, h = _inputs(scale)
    for checkerboard in (None, 0):
        y = ops.affine_coupling(x, h, scale, checkerboard, backend="triton")
        back = ops.affine_coupling(y.out, h, scale, checkerboard, inverse=True, backend="triton")
        torch.testing.assert_close(back.out, x, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(back.logdet, -y.logdet, rtol=1e-6, atol=1e-5)


def test_checkerboard_passes_its_parity_through():
    x, h = _inputs("sigmoid")
    out = ops.affine_coupling(x, h, "sigmoid", checkerboard=1, backend="triton").out
    keep = reference.checkerboard_mask(x.shape[2:], 1)
    assert torch.equal(out[..., keep], x[..., keep])
    assert (out[..., ~keep] - x[..., ~keep]).abs().min() > 0


def test_channel_slices_of_one_tensor():
    """The Glow layout: x_b = x[:, C:] and h the conditioner's output, without copies in the op."""
    x, h = _inputs("sigmoid", shape=(2, 8, 4, 4))
    half = x[:, 4:]
    h = h[:, :8]
    want = reference.affine_coupling(half.contiguous(), h.contiguous(), "sigmoid")
    got = ops.affine_coupling(half, h, "sigmoid", backend="triton")
    torch.testing.assert_close(got.out, want.out)
    torch.testing.assert_close(got.logdet, want.logdet)
    # a vector flow's inputs [B, D]
    v, hv = _inputs("exp_tanh", shape=(5, 7))
    torch.testing.assert_close(ops.affine_coupling(v, hv, "exp_tanh", backend="triton").out,
                               reference.affine_coupling(v, hv, "exp_tanh").out)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_inputs_float32_logdet(dtype):
    x, h = _inputs("sigmoid", dtype=dtype)
    got = ops.affine_coupling(x, h, "sigmoid", backend="triton")
    want = reference.affine_coupling(x, h, "sigmoid")
    assert got.out.dtype == dtype and got.logdet.dtype == torch.float32
    torch.testing.assert_close(got.out, want.out)
    torch.testing.assert_close(got.logdet, want.logdet, rtol=1e-5, atol=1e-4)


def test_blocks_and_partial_logdets_across_samples():
    """More than one block per sample (N = 2 * 30 * 30 > 1024) and uneven tails."""
    x, h = _inputs("exp_tanh", shape=(2, 2, 30, 30))
    got = ops.affine_coupling(x, h, "exp_tanh", backend="triton")
    want = reference.affine_coupling(x, h, "exp_tanh")
    torch.testing.assert_close(got.out, want.out)
    torch.testing.assert_close(got.logdet, want.logdet, rtol=1e-5, atol=1e-4)


def test_opcheck():
    x, h = _inputs("sigmoid", shape=(2, 2, 3, 4))
    x.requires_grad_(True)
    h.requires_grad_(True)
    torch.library.opcheck(torch.ops.fastgen.affine_coupling.default, (x, h, "sigmoid", -1, False))
    torch.library.opcheck(torch.ops.fastgen.affine_coupling.default, (x, h, "exp_tanh", 0, True))


def test_torch_compile_fullgraph():
    x, h = _inputs("sigmoid", shape=(2, 2, 4, 4))
    h.requires_grad_(True)
    f = torch.compile(lambda x, h: ops.affine_coupling(x, h, "sigmoid", backend="triton").logdet.sum(),
                      fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(f(x, h), h)[0]
    want = torch.autograd.grad(reference.affine_coupling(x, h, "sigmoid").logdet.sum(), h)[0]
    torch.testing.assert_close(got, want)


def test_float64_on_triton_is_refused_with_the_reason():
    x, h = _inputs("sigmoid", dtype=torch.float64)
    with pytest.raises(ValueError, match="float32/float16/bfloat16"):
        ops.affine_coupling(x, h, backend="triton")
    assert ops.affine_coupling(x, h).out.dtype == torch.float64      # the reference takes it


@pytest.mark.parametrize("call, message", [
    (lambda x, h: ops.affine_coupling(x, h, scale="exp"), "scale must be one of"),
    (lambda x, h: ops.affine_coupling(x, h[:, :5]), r"h must be \(3, 8, 5, 6\)"),
    (lambda x, h: ops.affine_coupling(x, h, scale="additive"), r"h must be \(3, 4, 5, 6\) \(t\)"),
    (lambda x, h: ops.affine_coupling(x, h, checkerboard=2), "checkerboard must be None, 0 or 1"),
    (lambda x, h: ops.affine_coupling(x[..., 0], h[..., 0], checkerboard=0), "needs images"),
    (lambda x, h: ops.affine_coupling(x.long(), h), "floating point"),
    (lambda x, h: ops.affine_coupling(x.numpy(), h), "x must be a torch.Tensor"),
])
def test_bad_input_errors(call, message):
    x, h = _inputs("sigmoid")
    with pytest.raises((ValueError, TypeError), match=message):
        call(x, h)
