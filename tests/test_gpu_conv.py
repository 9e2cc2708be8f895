"""GPU checks of the conv kernels at the benchmark sizes (run by benchmarks/run_gpu.sh).

Tolerances follow the flash-attention rule: the kernel's error against a float64 reference
must be at most 2x the error of PyTorch's own computation in the same precision (cuDNN),
plus a small floor.
"""
import pytest
import torch

from fastgen import ops
from fastgen.ops.conv import reference

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytestmark = [pytest.mark.gpu, requires_cuda]


def _rel_err(a, ref):
    return ((a.double() - ref).norm() / ref.norm()).item()


def _check(fastgen_fn, ref_fn, inputs, dtype, floor):
    """Compare values and gradients of fastgen_fn(*inputs) with ref_fn in float64 and in dtype."""
    exact = [t.detach().double().requires_grad_() for t in inputs]
    low = [t.detach().to(dtype).requires_grad_() for t in inputs]
    ours_in = [t.detach().to(dtype).requires_grad_() for t in inputs]
    y64, y_torch, y_ours = ref_fn(*exact), ref_fn(*low), fastgen_fn(*ours_in)
    assert torch.isfinite(y_ours).all()
    gy = torch.randn_like(y64)
    g64 = torch.autograd.grad(y64, exact, gy)
    g_torch = torch.autograd.grad(y_torch, low, gy.to(dtype))
    g_ours = torch.autograd.grad(y_ours, ours_in, gy.to(dtype))
    for name, ours, torch_, ref in [("y", y_ours, y_torch, y64)] + [
            (f"grad[{i}]", a, b, c) for i, (a, b, c) in enumerate(zip(g_ours, g_torch, g64))]:
        err, base = _rel_err(ours, ref), _rel_err(torch_, ref)
        assert err <= 2 * base + floor, f"{name}: fastgen rel err {err:.2e} vs torch {base:.2e}"


@pytest.mark.parametrize("dtype,floor", [(torch.bfloat16, 2e-3), (torch.float16, 5e-4), (torch.float32, 1e-5)],
                         ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("k,mask_type,groups,dilation", [(7, "A", 1, 1), (3, "B", 1, 1), (5, "A", 3, 2), (3, "B", 3, 1)],
                         ids=["7A", "3B", "5A-rgb-d2", "3B-rgb"])
def test_masked_conv2d_gpu(k, mask_type, groups, dilation, dtype, floor):
    torch.backends.cudnn.allow_tf32 = False
    try:
        x = torch.randn(8, 96, 29, 31, device="cuda")
        w = torch.randn(120, 96, k, k, device="cuda") / (96 * k)
        b = torch.randn(120, device="cuda")
        _check(lambda x, w, b: ops.masked_conv2d(x, w, b, mask_type, groups, dilation),
               lambda x, w, b: reference.masked_conv2d(x, w, b, mask_type, groups, dilation),
               [x, w, b], dtype, floor)
    finally:
        torch.backends.cudnn.allow_tf32 = True


@pytest.mark.parametrize("dtype,floor", [(torch.bfloat16, 2e-3), (torch.float32, 1e-5)], ids=["bf16", "fp32"])
@pytest.mark.parametrize("k,dilation", [(2, 1), (2, 512), (3, 7)])
def test_causal_conv1d_gpu(k, dilation, dtype, floor):
    torch.backends.cudnn.allow_tf32 = False
    try:
        x = torch.randn(4, 136, 3001, device="cuda")
        w = torch.randn(200, 136, k, device="cuda") / (136 * k) ** 0.5
        b = torch.randn(200, device="cuda")
        _check(lambda x, w, b: ops.causal_conv1d(x, w, b, dilation),
               lambda x, w, b: reference.causal_conv1d(x, w, b, dilation), [x, w, b], dtype, floor)
    finally:
        torch.backends.cudnn.allow_tf32 = True


def test_tf32_follows_cudnn_flag():
    """With allow_tf32 (PyTorch's default for convs) fp32 is within TF32 error (1e-3)."""
    assert torch.backends.cudnn.allow_tf32
    x = torch.randn(8, 64, 16, 16, device="cuda")
    w = torch.randn(64, 64, 7, 7, device="cuda") / 64
    y = ops.masked_conv2d(x, w, None, "A")
    ref = reference.masked_conv2d(x.double(), w.double(), None, "A")
    assert _rel_err(y, ref) < 1e-3


def test_compile_no_graph_break():
    x = torch.randn(2, 16, 8, 8, device="cuda")
    w = torch.randn(16, 16, 3, 3, device="cuda")
    f = torch.compile(lambda x, w: ops.masked_conv2d(x, w, None, "B").relu(), fullgraph=True)
    # fp32 with TF32 on (PyTorch's default for convs): within 1e-3 of the float64 reference
    assert _rel_err(f(x, w), reference.masked_conv2d(x.double(), w.double(), None, "B").relu()) < 1e-3


def test_direct_launch_is_taken_and_agrees():
    """From the third call on, conv kernels launch their CompiledKernel directly
    (``fastgen.kernels._launch``); its first direct launch was checked bit for bit."""
    from fastgen.kernels import _launch
    x = torch.randn(4, 32, 16, 16, device="cuda", requires_grad=True)
    w = torch.randn(32, 32, 3, 3, device="cuda") / 32
    ys = []
    for _ in range(4):
        y = ops.masked_conv2d(x, w, None, "B")
        y.backward(torch.ones_like(y))
        ys.append(y.detach())
    assert not _launch._BROKEN, f"direct launch failed its check for {_launch._BROKEN}"
    assert _launch._COMPILED
    assert all(torch.equal(ys[0], y) for y in ys[1:])
