"""GPU checks of the flow kernels at the benchmark sizes (run by benchmarks/run_gpu.sh): the fused
coupling against a float64 reference -- its error at most 2x PyTorch's own in the same precision
plus a floor -- and a Glow whose log-likelihood and gradients on Triton equal the reference
backend's."""
import pytest
import torch

from fastgen import ops
from fastgen.bench.flows import eager_glow_coupling
from fastgen.models import Glow

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytestmark = [pytest.mark.gpu, requires_cuda]


def _rel_err(a, ref):
    return ((a.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.mark.parametrize("dtype,floor", [(torch.bfloat16, 2e-3), (torch.float16, 5e-4), (torch.float32, 1e-6)],
                         ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("B,C,H", [(64, 48, 32), (64, 96, 16)])
def test_coupling_at_glow_shapes(dtype, floor, B, C, H):
    g = torch.Generator().manual_seed(0)
    x_b, h = torch.randn(B, C // 2, H, H, generator=g), torch.randn(B, C, H, H, generator=g)
    grad_y = torch.randn(B, C // 2, H, H, generator=g)

    def run(fn, dt, device):
        x = x_b.to(device, dt).requires_grad_()
        hh = h.to(device, dt).requires_grad_()
        y, logdet = fn(x, hh)
        grads = torch.autograd.grad((y, logdet), (x, hh), (grad_y.to(device, dt), torch.ones_like(logdet)))
        return [y, logdet, *grads]
    exact = run(eager_glow_coupling, torch.float64, "cuda")
    torch_low = run(eager_glow_coupling, dtype, "cuda")
    ours = run(lambda x, hh: ops.affine_coupling(x, hh, "sigmoid"), dtype, "cuda")
    assert ours[1].dtype == torch.float32
    for name, a, b, ref in zip(("y", "logdet", "grad x_b", "grad h"), ours, torch_low, exact):
        err, base = _rel_err(a, ref), _rel_err(b, ref)
        assert err <= 2 * base + floor, f"{name}: fastgen rel err {err:.2e} vs torch {base:.2e}"


def test_glow_on_triton_equals_reference_backend(monkeypatch):
    torch.manual_seed(0)
    model = Glow((3, 16, 16), levels=2, steps=4, hidden=64, num_classes=10).cuda()
    images = torch.randint(0, 256, (16, 3, 16, 16), device="cuda")
    labels = torch.arange(16, device="cuda") % 10
    with torch.no_grad():
        model.loss(images, labels)
    results = {}
    for backend in ("triton", "reference"):
        monkeypatch.setenv("FASTGEN_BACKEND", backend)
        loss = model.loss(images, labels, torch.Generator(device="cuda").manual_seed(1))
        results[backend] = (loss, torch.autograd.grad(loss, list(model.parameters())))
    torch.testing.assert_close(results["triton"][0], results["reference"][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(results["triton"][1], results["reference"][1]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
