"""fastgen's samplers with diffusers-style models and schedules.

Without diffusers: the adapter (``DiffusersDenoiser``) around a stand-in with diffusers' call
convention (``unet(sample, timestep, class_labels=...).sample``), reading a scheduler config
dict.  With diffusers installed (it is optional, and not in the test extra): the same random
``UNet2DModel`` and x_T through fastgen's samplers and diffusers' schedulers, grids aligned --
relative L2 difference <= 1e-5 in float32 -- and the spacings, betas and sigmas against
diffusers' own.
"""
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fastgen.sampling import diffusion
from fastgen.sampling.diffusion import DiffusersDenoiser, betas_from_config, prediction_from_config

MU, STD = 0.3, 0.5


def _relative_l2(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# --- reading a scheduler config ----------------------------------------------------------------

def test_betas_from_config():
    assert torch.equal(betas_from_config({}), torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32).double())
    sd = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    expected = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32) ** 2
    assert torch.equal(betas_from_config(sd), expected.double())
    cosine = betas_from_config(dict(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2"))
    assert torch.equal(cosine, diffusion.cosine_betas(50).float().double())
    assert betas_from_config(dict(trained_betas=[0.1, 0.2])).tolist() == pytest.approx([0.1, 0.2])
    assert prediction_from_config({}) == "eps" and prediction_from_config({"prediction_type": "v_prediction"}) == "v"
    assert prediction_from_config({"prediction_type": "sample"}) == "x0"
    with pytest.raises(ValueError, match=r"config\['beta_schedule'\] must be one of"):
        betas_from_config(dict(beta_schedule="sigmoid"))
    with pytest.raises(ValueError, match="rescale_betas_zero_snr=True"):
        betas_from_config(dict(rescale_betas_zero_snr=True))
    with pytest.raises(ValueError, match=r"config\['num_train_timesteps'\] must be a positive int"):
        betas_from_config(dict(num_train_timesteps=0))
    with pytest.raises(ValueError, match=r"config\['prediction_type'\] must be one of"):
        prediction_from_config(dict(prediction_type="eps"))
    with pytest.raises(TypeError, match="config must be a dict"):
        betas_from_config([("beta_schedule", "linear")])


def test_importing_the_adapter_imports_no_diffusers():
    code = "import sys, fastgen.sampling.diffusion as d; d.DiffusersDenoiser; assert 'diffusers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the adapter with a stand-in UNet ------------------------------------------------------------

class StandInUNet(nn.Module):
    """diffusers' UNet2DModel call convention around the exact model of N(MU, STD^2) data for a
    VP schedule: ``forward(sample, timestep, class_labels=None)`` -> an object with ``.sample``
    (eps, v or x0).  Fractional timesteps read abar(t) = 1 / (1 + sigma(t)^2) with sigma(t)
    interpolated linearly in log sigma (what the adapter's 'log' sigma_to_t inverts).  Records
    its calls; a class label c adds 0.1 c to the output."""

    def __init__(self, betas, prediction="eps", channels=None):
        super().__init__()
        self.log_sigmas = diffusion.discrete_sigmas(betas).log()
        self.prediction, self.channels, self.calls = prediction, channels, []

    def _abar(self, t):
        t = t.double()
        low = t.floor().long().clamp(max=len(self.log_sigmas) - 2)
        log_sigma = torch.lerp(self.log_sigmas[low], self.log_sigmas[low + 1], t - low)
        return 1 / (1 + (2 * log_sigma).exp())

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        self.calls.append(SimpleNamespace(x=sample, t=timestep, class_labels=class_labels))
        a = self._abar(timestep).view(-1, *[1] * (sample.dim() - 1)).to(sample.dtype)
        eps = (1 - a).sqrt() * (sample - a.sqrt() * MU) / (a * STD ** 2 + 1 - a)
        x0 = (sample - (1 - a).sqrt() * eps) / a.sqrt()
        out = {"eps": eps, "v": a.sqrt() * eps - (1 - a).sqrt() * x0, "x0": x0}[self.prediction]
        if class_labels is not None:
            out = out + 0.1 * class_labels.view(-1, *[1] * (sample.dim() - 1))
        if self.channels:                                     # a learned-variance head: [prediction; v]
            out = torch.cat([out, torch.zeros_like(out)], dim=1)
        return SimpleNamespace(sample=out)


def _exact_x0(x, s):
    """The same data's E[x0 | x] at noise level sigma of x = x0 + sigma eps."""
    return MU + STD ** 2 / (STD ** 2 + s.view(-1, *[1] * (x.dim() - 1)) ** 2) * (x - MU)


def test_adapter_passes_integer_timesteps_and_scales_sigma_inputs():
    betas = diffusion.linear_betas()
    unet = StandInUNet(betas)
    den = DiffusersDenoiser(unet, {"beta_schedule": "linear"})
    assert den.prediction == "eps" and den.cond_argument == "class_labels" and den.sigma_to_t == "log"
    x = torch.randn(2, 3, 4, 4)
    den(x, torch.tensor([999, 10]))
    assert torch.equal(unet.calls[-1].x, x) and unet.calls[-1].t.tolist() == [999, 10]
    table = diffusion.discrete_sigmas(betas)
    sigma = torch.tensor([table[500].item(), 3.0])
    den(x, sigma.float())
    call = unet.calls[-1]
    torch.testing.assert_close(call.x, x / (1 + sigma.float().view(-1, 1, 1, 1) ** 2).sqrt())
    assert call.t.dtype == torch.float32 and abs(call.t[0].item() - 500) < 1e-3
    fractional = call.t[1].item()
    low = math.floor(fractional)
    w = fractional - low                                        # log sigma interpolates to log 3
    assert math.isclose((1 - w) * table[low].log().item() + w * table[low + 1].log().item(), math.log(3.0),
                        rel_tol=1e-5)
    linear = DiffusersDenoiser(unet, betas=betas, sigma_to_t="linear")
    t = linear.timestep_of(torch.tensor([3.0], dtype=torch.float64)).item()
    low, w = math.floor(t), t - math.floor(t)
    assert math.isclose((1 - w) * table[low].item() + w * table[low + 1].item(), 3.0, rel_tol=1e-12)
    own = diffusion.discrete_sigmas(den.betas)                 # the config's (float32-valued) betas
    for adapter in (den, linear):
        assert torch.equal(adapter.timestep_of(own[[0, 1, 998, 999]]) if adapter is den else
                           adapter.timestep_of(table[[0, 1, 998, 999]]),
                           torch.tensor([0.0, 1.0, 998.0, 999.0], dtype=torch.float64))
    assert den.timestep_of(torch.tensor([1e-6, 1e6])).tolist() == [0.0, 999.0]       # clamped to the schedule


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m", "euler", "heun", "pf_ode"])
def test_adapter_samples_what_the_exact_denoiser_samples(sampler, prediction):
    """A VP model of any prediction behind the adapter: the discrete samplers give what the
    exact eps-model gives, the samplers over sigmas what the exact x0 / score model gives."""
    config = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  prediction_type={"eps": "epsilon", "v": "v_prediction", "x0": "sample"}[prediction])
    betas = betas_from_config(config)
    den = DiffusersDenoiser(StandInUNet(betas, prediction), config)
    abar = torch.cumprod(1 - betas, 0)

    def eps(x, t):
        a = abar[t].view(-1, 1).float()
        return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * STD ** 2 + 1 - a)
    score = lambda x, s: (_exact_x0(x, s) - x) / s.view(-1, 1) ** 2     # noqa: E731
    # pf_ode: sigmas within the schedule's range (the adapter clamps t to [0, T - 1])
    extra = dict(sigmas=diffusion.karras_sigmas_of(betas, 6)[:-1]) if sampler == "pf_ode" else {}
    run = lambda d, **kw: diffusion.sample(d, (3, 5), sampler, 6, device="cpu",  # noqa: E731
                                           generator=torch.Generator().manual_seed(0), **extra, **kw)
    if sampler in ("ddim", "dpmpp2m"):
        expected = run(eps, betas=betas)
    elif sampler == "pf_ode":
        expected = run(score)
    else:
        expected = run(_exact_x0, betas=betas)       # Karras sigmas over the schedule's own range
    torch.testing.assert_close(run(den), expected, rtol=1e-4, atol=1e-4)


def test_adapter_routes_cond_and_cuts_learned_variance_channels():
    betas = diffusion.linear_betas()
    unet = StandInUNet(betas, channels=True)
    den = DiffusersDenoiser(unet, betas=betas)
    cond, uncond = torch.tensor([1, 2]), torch.tensor([0, 0])
    x = diffusion.sample(den, (2, 3), "ddim", 3, guidance=2.0, cond=cond, uncond=uncond, device="cpu")
    assert x.shape == (2, 3) and unet.calls[0].class_labels.tolist() == [1, 2, 0, 0]
    full = DiffusersDenoiser(unet, betas=betas, learned_variance=True)
    assert full(torch.zeros(2, 3), torch.tensor([5, 5])).shape == (2, 6)
    ddpm = diffusion.sample(full, (2, 3), "ddpm", 3, variance="learned", generator=torch.Generator().manual_seed(0),
                            device="cpu")
    assert torch.isfinite(ddpm).all()

    class TextUNet(nn.Module):
        def forward(self, sample, timestep, encoder_hidden_states=None):
            return (sample * 0 + encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1),)
    text = DiffusersDenoiser(TextUNet(), betas=betas)
    assert text.cond_argument == "encoder_hidden_states"
    assert text(torch.zeros(2, 3), torch.tensor([1, 1]), torch.ones(2, 77, 8)).tolist() == [[1.0] * 3] * 2
    with pytest.raises(ValueError, match="prediction must be 'eps', 'v' or 'x0'"):
        DiffusersDenoiser(unet, betas=betas, prediction="score")
    with pytest.raises(ValueError, match="sigma_to_t must be one of"):
        DiffusersDenoiser(unet, betas=betas, sigma_to_t="cubic")
    with pytest.raises(TypeError, match="model must be callable"):
        DiffusersDenoiser("unet", betas=betas)
    with pytest.raises(ValueError, match="cond was given but the model takes neither"):
        DiffusersDenoiser(lambda x, t: x, betas=betas)(torch.zeros(1, 2), torch.tensor([3]), torch.ones(1))


# --- against diffusers itself ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def unet(diffusers):
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                  block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                  up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                                  attention_head_dim=8)
    return model.eval()


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_spacings_are_diffusers_spacings(diffusers, spacing):
    for steps in (1, 7, 20, 33, 50, 999):
        for offset in ((0, 1) if spacing == "leading" else (0,)):
            scheduler = diffusers.DDIMScheduler(timestep_spacing=spacing, steps_offset=offset)
            scheduler.set_timesteps(steps)
            expected = scheduler.timesteps.tolist()
            if spacing == "linspace" and steps == 1:
                expected = [999]                     # fastgen's one step starts at T - 1, not at t = 0
            assert diffusion.respaced_timesteps(1000, steps, spacing, offset) == expected, (steps, offset)


def test_betas_and_sigmas_are_diffusers_values(diffusers):
    for schedule in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        scheduler = diffusers.DDPMScheduler(beta_schedule=schedule)
        assert torch.equal(betas_from_config(scheduler.config), scheduler.betas.double()), schedule
    config = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    betas = betas_from_config(config)
    for spacing in ("linspace", "leading", "trailing"):
        euler = diffusers.EulerDiscreteScheduler(timestep_spacing=spacing, **config)
        euler.set_timesteps(12)
        # (diffusers' abar is a float32 cumulative product: ~1e-5 relative at the smallest sigma)
        torch.testing.assert_close(diffusion.schedule_sigmas(betas, 12, spacing).float(), euler.sigmas,
                                   rtol=3e-5, atol=0)
    karras = diffusers.EulerDiscreteScheduler(use_karras_sigmas=True, **config)
    karras.set_timesteps(12)
    torch.testing.assert_close(diffusion.karras_sigmas_of(betas, 12).float(), karras.sigmas, rtol=3e-5, atol=0)


def _diffusers_loop(scheduler, unet, x, scale_input=False):
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t) if scale_input else x
        x = scheduler.step(unet(model_input, t).sample, t, x).prev_sample
    return x


@pytest.mark.parametrize("name,sampler,kw", [
    ("DDIMScheduler", "ddim", dict(set_alpha_to_one=True, clip_sample=False)),
    ("DDIMScheduler-v", "ddim", dict(set_alpha_to_one=True, clip_sample=False, prediction_type="v_prediction",
                                     timestep_spacing="trailing")),
    ("DPMSolverMultistepScheduler", "dpmpp2m", {}),
    ("EulerDiscreteScheduler", "euler", {}),
    ("EulerDiscreteScheduler-karras", "euler", dict(use_karras_sigmas=True)),
    ("EulerDiscreteScheduler-v", "euler", dict(prediction_type="v_prediction", timestep_spacing="trailing")),
    ("HeunDiscreteScheduler", "heun", {}),
], ids=lambda v: v if isinstance(v, str) else "")
def test_same_samples_as_diffusers(diffusers, unet, name, sampler, kw):
    """The same UNet and x_T, the scheduler's grid given to fastgen (timesteps= for the discrete
    samplers, sigmas= for Euler / Heun): relative L2 difference <= 1e-5 in float32."""
    config = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", **kw)
    scheduler = getattr(diffusers, name.split("-")[0])(**config)
    steps = 20
    scheduler.set_timesteps(steps)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
    with torch.no_grad():
        expected = _diffusers_loop(scheduler, unet, x_T.clone(), scale_input=sampler in ("euler", "heun"))
    denoiser = DiffusersDenoiser(unet, scheduler.config)
    if sampler in ("euler", "heun"):
        grid = dict(sigmas=torch.unique_consecutive(scheduler.sigmas))
    else:
        grid = dict(timesteps=scheduler.timesteps.tolist())
    got = diffusion.sample(denoiser, None, sampler, x_T=x_T, device="cpu", **grid)
    assert _relative_l2(got, expected) <= 1e-5, _relative_l2(got, expected)
