"""GPU check of the fused Gated PixelCNN sampling step (run by benchmarks/run_gpu.sh)."""
import pytest
import torch

from fastgen.models import GatedPixelCNN
from fastgen.sampling import sample

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("levels,channels", [(256, 64), (17, 32)])
def test_fused_fast_sampler_matches_naive_on_gpu(levels, channels):
    torch.backends.cudnn.allow_tf32 = False          # exact fp32 on both paths
    try:
        torch.manual_seed(0)
        model = GatedPixelCNN((1, 10, 12), levels=levels, channels=channels, layers=4).cuda().eval()
        naive = sample(model, 8, method="naive", generator=torch.Generator().manual_seed(1))
        fast = sample(model, 8, method="fast", generator=torch.Generator().manual_seed(1))
        assert (naive == fast).float().mean() > 0.999  # ties decided by rounding are possible, not expected
    finally:
        torch.backends.cudnn.allow_tf32 = True


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_fused_wavenet_generation_matches_naive_on_gpu(kernel_size):
    from fastgen.models import WaveNet
    torch.backends.cudnn.allow_tf32 = False
    try:
        torch.manual_seed(0)
        model = WaveNet(layers=8, cycle=4, residual_channels=32, skip_channels=64, quantization=256,
                        kernel_size=kernel_size).cuda().eval()
        naive = model.generate(300, 4, method="naive", generator=torch.Generator().manual_seed(1), return_codes=True)
        fast = model.generate(300, 4, method="fast", generator=torch.Generator().manual_seed(1), return_codes=True)
        assert (naive == fast).float().mean() > 0.99
    finally:
        torch.backends.cudnn.allow_tf32 = True


def test_wavenet_cuda_graph_generation_matches_eager_on_gpu():
    from fastgen.models import WaveNet
    torch.manual_seed(0)
    model = WaveNet(layers=10, cycle=5, residual_channels=32, skip_channels=64, quantization=256).cuda().eval()
    eager = model.generate(700, 3, generator=torch.Generator().manual_seed(2), return_codes=True)
    graphed = model.generate(700, 3, generator=torch.Generator().manual_seed(2), return_codes=True, cuda_graph=True)
    assert torch.equal(eager, graphed)


def test_diffusion_fused_step_and_cuda_graph_loop_on_gpu():
    from fastgen.ops.diffusion import diffusion_step
    from fastgen.sampling import diffusion
    x, out, noise = (torch.randn(64, 3, 64, 64, device="cuda") for _ in range(3))
    coefficients = diffusion.ddpm_coefficients(0.4, 0.7)
    torch.testing.assert_close(diffusion_step(x, out, coefficients, noise=noise),
                               diffusion_step(x, out, coefficients, noise=noise, backend="reference"),
                               rtol=1e-5, atol=1e-5)
    den = lambda x, t: 0.1 * x
    eager = diffusion.sample(den, (8, 3, 16, 16), "ddpm", 20, seed=3)
    graphed = diffusion.sample(den, (8, 3, 16, 16), "ddpm", 20, seed=3, cuda_graph=True)
    torch.testing.assert_close(graphed, eager)


def test_gated_pixelcnn_cuda_graph_sampling_matches_eager_on_gpu():
    torch.manual_seed(0)
    model = GatedPixelCNN((1, 8, 8), levels=64, channels=32, layers=3, num_classes=4).cuda().eval()
    cond = torch.arange(4, device="cuda")
    eager = sample(model, 4, cond, generator=torch.Generator().manual_seed(3))
    graphed = sample(model, 4, cond, generator=torch.Generator().manual_seed(3), cuda_graph=True)
    again = sample(model, 4, cond, generator=torch.Generator().manual_seed(3), cuda_graph=True)   # replay
    assert torch.equal(eager, graphed) and torch.equal(graphed, again)


def test_pixelcnnpp_layer_cache_sampler_matches_naive_on_gpu():
    from fastgen.models import PixelCNNpp
    torch.backends.cudnn.allow_tf32 = False          # exact fp32 on both paths
    try:
        torch.manual_seed(0)
        model = PixelCNNpp((3, 8, 8), levels=256, channels=32, nr_resnet=2, nr_mix=5, num_classes=4).cuda().eval()
        cond = torch.arange(4, device="cuda")
        naive = sample(model, 4, cond, "naive", generator=torch.Generator().manual_seed(1))
        fast = sample(model, 4, cond, "fast", generator=torch.Generator().manual_seed(1))
        assert (naive == fast).float().mean() > 0.999  # ties decided by rounding are possible, not expected
    finally:
        torch.backends.cudnn.allow_tf32 = True
