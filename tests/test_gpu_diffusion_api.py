"""GPU: a torch.compile'd (inductor) UNet inside the CUDA-graph-captured sampling loop."""
import pytest
import torch

from fastgen.models import UNet
from fastgen.sampling import diffusion

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_inductor_compiled_denoiser_in_a_cuda_graph_loop():
    torch.manual_seed(0)
    unet = UNet(in_channels=3, channels=32, channel_mult=(1, 2), blocks=1, attention_at=(8,), image_size=16)
    unet = unet.cuda().eval()
    compiled = torch.compile(unet, dynamic=False)
    with torch.no_grad():
        eager = diffusion.sample(unet, (4, 3, 16, 16), "ddim", steps=10, eta=1.0, seed=5)
        graphed = diffusion.sample(compiled, (4, 3, 16, 16), "ddim", steps=10, eta=1.0, seed=5, cuda_graph=True)
    torch.testing.assert_close(graphed, eager, rtol=2e-3, atol=2e-3)   # inductor reorders fp32 sums; TF32 convs
