"""The diffusion sampling loop as users drive it: a torch.compile'd denoiser, the progress
callback, a trained UNet's shapes, the CUDA-graph path through the capture cache."""
import gc
import subprocess
import sys
import weakref

import pytest
import torch

from fastgen.models import UNet
from fastgen.sampling import diffusion
from fastgen.sampling.diffusion import samplers
from fastgen.sampling.graphs import EagerReplayBackend, GraphCache


def _unet():
    torch.manual_seed(0)
    return UNet(in_channels=1, channels=16, channel_mult=(1, 2), blocks=1, attention_at=(4,), image_size=8).eval()


def test_compiled_denoiser_gives_the_same_samples():
    """torch.compile'd denoisers plug into the loop unchanged (aot_eager here: no C compiler
    needed; the GPU suite compiles with inductor)."""
    unet = _unet()
    compiled = torch.compile(unet, backend="aot_eager", dynamic=False)
    run = lambda net: diffusion.sample(net, (2, 1, 8, 8), "ddim", steps=4, eta=1.0,
                                       generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(run(compiled), run(unet), rtol=1e-5, atol=1e-5)


def test_progress_is_called_once_per_step_with_the_current_x():
    unet, seen = _unet(), []
    out = diffusion.sample(unet, (2, 1, 8, 8), "ddpm", steps=5, generator=torch.Generator().manual_seed(1),
                           progress=lambda i, x: seen.append((i, x.clone())))
    assert [i for i, _ in seen] == list(range(5))
    torch.testing.assert_close(seen[-1][1], out)
    assert not torch.equal(seen[0][1], seen[-1][1])


def test_fused_step_under_autograd_refuses_backward_instead_of_dropping_the_gradient():
    """Eager calls skip the custom-op dispatcher only when autograd is not recording for an
    input; otherwise the registered op runs and backward says it has no formula."""
    from fastgen.ops.diffusion_step import diffusion_step
    x = torch.randn(2, 3, requires_grad=True)
    y = diffusion_step(x, torch.randn(2, 3), diffusion.ddim_coefficients(0.4, 0.7), backend="triton")
    with pytest.raises(RuntimeError, match="autograd"):
        y.sum().backward()
    with torch.no_grad():
        assert not diffusion_step(x, torch.randn(2, 3), diffusion.ddim_coefficients(0.4, 0.7),
                                  backend="triton").requires_grad


def test_diffusion_demo_runs(tmp_path, capsys):
    from fastgen import cli
    assert cli.main(["demo", "--model", "diffusion", "--steps", "5", "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert (tmp_path / "diffusion_samples.png").stat().st_size > 0
    assert "DPM-Solver++(2M), 20 steps" in capsys.readouterr().out


class _Conditioned(torch.nn.Module):
    """A tiny conditional eps-model whose samples show the condition: 0.1 x + scale * cond."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.05))

    def forward(self, x, t, cond):
        return 0.1 * x + self.scale * cond.view(-1, *[1] * (x.dim() - 1))


@pytest.mark.parametrize("sampler", ["ddpm", "pc_vp"])
def test_cuda_graph_loop_captures_once_and_replays_fresh_conditioning(monkeypatch, sampler):
    """cuda_graph=True through the one capture cache (its eager stand-in backend, so the CPU runs
    the graph path): a fresh cond tensor per call replays the one captured loop with the new
    values -- each result equals the eager loop's for that cond -- a weight update recaptures,
    and the cache does not keep the denoiser alive."""
    cache = GraphCache(backend=EagerReplayBackend())
    monkeypatch.setattr(samplers, "GRAPHS", cache)
    model = _Conditioned()
    run = lambda cond, **kw: diffusion.sample(model, (3, 2, 4, 4), sampler, 4, guidance=1.5, cond=cond,  # noqa: E731
                                              uncond=torch.zeros(3), seed=2, device="cpu", backend="triton", **kw)
    results = []
    for i in range(3):
        cond = torch.full((3,), float(i))                   # a new tensor every call
        graphed = run(cond, cuda_graph=True)
        assert torch.equal(graphed, run(cond.clone()))      # the eager path, same seed
        results.append(graphed)
    assert cache.captures == 1 and len(cache) == 1
    assert not torch.equal(results[0], results[2])          # the new conditioning was read
    with torch.no_grad():
        model.scale.add_(0.5)                               # new weights: a new capture
    assert torch.equal(run(torch.ones(3), cuda_graph=True), run(torch.ones(3)))
    assert cache.captures == 2
    model_ref = weakref.ref(model)
    del model, run
    gc.collect()
    assert model_ref() is None and len(cache) == 0


def test_cuda_graph_needs_a_seed_and_tensor_conditioning(monkeypatch):
    monkeypatch.setattr(samplers, "GRAPHS", GraphCache(backend=EagerReplayBackend()))
    den = lambda x, t, c: 0.1 * x   # noqa: E731
    with pytest.raises(ValueError, match="cuda_graph=True draws noise in the kernel: pass seed="):
        diffusion.sample(den, (2, 3), "ddim", 2, generator=torch.Generator().manual_seed(0), device="cpu",
                         cuda_graph=True)
    with pytest.raises(TypeError, match="cond must be a tensor, got list"):
        diffusion.sample(den, (2, 3), "ddim", 2, cond=[1, 2], seed=0, device="cpu", cuda_graph=True,
                         backend="triton")


def test_importing_diffusion_sampling_imports_no_model():
    """Sampling never imports models (DESIGN.md): the package needs only its own op."""
    code = ("import sys, fastgen.sampling.diffusion as d; d.sample; "
            "bad = [m for m in sys.modules if m.startswith('fastgen.models')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
