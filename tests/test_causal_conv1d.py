"""causal_conv1d: the Triton kernels (interpreter on CPU) against the reference specification."""
import pytest
import torch

from fastgen import ops
from fastgen.ops import reference
from helpers import assert_close_rel, values_and_grads


@pytest.mark.parametrize("B,c_in,c_out,T,k,dilation", [
    pytest.param(2, 5, 7, 33, 2, 1, id="B2-Ci5-Co7-T33-k2-d1"),
    pytest.param(1, 8, 8, 50, 2, 16, id="B1-Ci8-Co8-T50-k2-d16"),
    pytest.param(3, 6, 4, 17, 3, 4, id="B3-Ci6-Co4-T17-k3-d4"),
    pytest.param(2, 4, 6, 9, 3, 8, id="B2-Ci4-Co6-T9-k3-d8-field-past-start"),
    pytest.param(2, 3, 5, 12, 1, 1, id="B2-Ci3-Co5-T12-k1"),
    pytest.param(1, 70, 9, 20, 2, 2, id="B1-Ci70-Co9-T20-k2-d2-chunks"),
])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_triton_matches_reference(B, c_in, c_out, T, k, dilation, with_bias):
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


def test_reference_matches_explicit_sum():
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
def test_causality(backend):
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


def test_channels_last_input_and_output_layout():
    x = torch.randn(2, 6, 25).transpose(1, 2).contiguous().transpose(1, 2)  # channel stride 1
    w = torch.randn(5, 6, 2)
    y = ops.causal_conv1d(x, w, None, 3, backend="triton")
    assert y.stride(1) == 1  # stays channels-last for the next layer
    assert_close_rel(y, reference.causal_conv1d(x, w, None, 3), 1e-5)


def test_gradcheck_reference_float64():
    x = torch.randn(2, 3, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: reference.causal_conv1d(x, w, b, 3), (x, w, b))


def test_opcheck():
    x = torch.randn(2, 4, 13, requires_grad=True)
    w = torch.randn(3, 4, 2, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    torch.library.opcheck(torch.ops.fastgen.causal_conv1d.default, (x, w, b, 2))
    torch.library.opcheck(torch.ops.fastgen.causal_conv1d.default, (x, w, None, 1))


def test_torch_compile_fullgraph():
    x = torch.randn(2, 5, 9, requires_grad=True)
    w = torch.randn(7, 5, 2, requires_grad=True)
    f = torch.compile(lambda x, w: torch.tanh(ops.causal_conv1d(x, w, None, 2, backend="triton")),
                      fullgraph=True, backend="aot_eager")
    y = f(x, w)
    y_ref = torch.tanh(reference.causal_conv1d(x, w, None, 2))
    assert_close_rel(y, y_ref, 1e-5)
    for a, e in zip(torch.autograd.grad(y.sum(), (x, w)), torch.autograd.grad(y_ref.sum(), (x, w))):
        assert_close_rel(a, e, 1e-5)
