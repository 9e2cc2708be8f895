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


def test_cuda_graph_loop_replays_fresh_conditioning_on_gpu():
    """A new cond tensor per call replays the one captured graph (the loop reads cond / uncond
    from the graph's input buffers) and samples what the eager loop samples for that cond."""
    from fastgen.sampling.diffusion import samplers
    torch.manual_seed(0)
    unet = UNet(in_channels=1, channels=16, channel_mult=(1, 2), blocks=1, attention_at=(4,), image_size=8,
                num_classes=4).cuda().eval()
    captures = samplers.GRAPHS.captures
    results = []
    for label in range(3):
        cond = torch.full((4,), label, device="cuda")
        kw = dict(guidance=1.5, cond=cond, uncond=torch.full_like(cond, 4), seed=1)
        with torch.no_grad():
            graphed = diffusion.sample(unet, (4, 1, 8, 8), "pc_vp", 5, cuda_graph=True, **kw)
            eager = diffusion.sample(unet, (4, 1, 8, 8), "pc_vp", 5, **kw)
        torch.testing.assert_close(graphed, eager, rtol=1e-4, atol=1e-4)
        results.append(graphed)
    assert samplers.GRAPHS.captures - captures == 1
    assert not torch.allclose(results[0], results[2])
