"""The diffusion sampling loop as users drive it: a torch.compile'd denoiser, the progress
callback, a trained UNet's shapes."""
import torch

from fastgen.models import UNet
from fastgen.sampling import diffusion


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
    import pytest

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
