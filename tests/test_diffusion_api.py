"""The diffusion sampling loop as users drive it: a torch.compile'd denoiser, the progress
callback, a trained UNet's shapes, the CUDA-graph path through the capture cache."""
import gc
import math
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


@pytest.mark.parametrize("sampler", diffusion.SAMPLERS)
def test_loop_buffers_give_the_samples_of_fresh_outputs(sampler):
    """The loops write every step into two buffers they alternate; with ``progress`` they
    allocate each step instead, so the callback may keep x without cloning it.  The same
    samples either way; the kept x's are left as they were; each run returns its own tensor."""
    den = (lambda x: -x) if sampler == "sgld" else (lambda x, t: 0.1 * x + 1e-3 * t.view(-1, 1, 1, 1))
    kw = dict(corrector_steps=2) if sampler in ("pc_ve", "pc_vp") else {}
    run = lambda **more: diffusion.sample(den, (2, 1, 4, 4), sampler, 3, backend="triton", device="cpu",
                                          generator=torch.Generator().manual_seed(2), **kw, **more)
    kept, copies = [], []
    fresh = run(progress=lambda i, x: (kept.append(x), copies.append(x.clone())))
    first, second = run(), run()
    torch.testing.assert_close(first, fresh, rtol=0, atol=0)
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    assert first.data_ptr() != second.data_ptr()
    for x, copy in zip(kept, copies):
        torch.testing.assert_close(x, copy, rtol=0, atol=0)


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


# --- x_T, dtype, one step -------------------------------------------------------------------------

MU, STD = 0.3, 0.5
ABAR = torch.cumprod(1 - diffusion.linear_betas(), 0)


def _eps(x, t):
    """The exact eps-model of N(MU, STD^2) data, plus a nonlinear term."""
    a = ABAR[t].view(-1, *[1] * (x.dim() - 1)).to(x.dtype)
    return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * STD ** 2 + 1 - a) + 0.05 * torch.tanh(x)


def _x0(x, s):
    s = s.view(-1, *[1] * (x.dim() - 1)).to(x.dtype)
    return MU + STD ** 2 / (STD ** 2 + s ** 2) * (x - MU)


def _score(x, s):
    return -(x - MU) / (STD ** 2 + s.view(-1, *[1] * (x.dim() - 1)).to(x.dtype) ** 2)


@pytest.mark.parametrize("sampler,den,scale", [("ddim", _eps, None), ("dpmpp2m", _eps, None), ("euler", _x0, 80.0),
                                               ("heun", _x0, 80.0), ("pf_ode", _score, 50.0)])
def test_x_T_is_the_starting_sample(sampler, den, scale):
    """x_T= starts the loop from the given sample, used as given: the same as drawing it (scaled
    by the first sigma for the samplers over sigmas); shape may then be omitted."""
    shape = (3, 2, 4)
    drawn = diffusion.sample(den, shape, sampler, 5, generator=torch.Generator().manual_seed(1), device="cpu")
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * (scale or 1.0)
    torch.testing.assert_close(diffusion.sample(den, None, sampler, 5, x_T=x_T), drawn, rtol=0, atol=0)
    other = diffusion.sample(den, shape, sampler, 5, x_T=x_T + 1, device="cpu")
    assert not torch.allclose(other, drawn)


def test_x_T_with_step_noise_from_the_generator():
    """With x_T given nothing is drawn for it: a stochastic sampler's step noise is the
    generator's first draws."""
    x_T = torch.randn(2, 6)
    a = diffusion.sample(_eps, None, "ddpm", 4, x_T=x_T, generator=torch.Generator().manual_seed(2))
    b = diffusion.sample(_eps, None, "ddpm", 4, x_T=x_T, generator=torch.Generator().manual_seed(2))
    c = diffusion.sample(_eps, None, "ddpm", 4, x_T=x_T, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m", "euler", "pc_vp"])
def test_dtype_carries_x_through_the_loop(sampler, dtype):
    """dtype= (or x_T's dtype): the result and every x the denoiser sees are in it; the same
    generator gives the same samples as float32 within the dtype's rounding.  (Not Heun in 16
    bits: its correction onto a small sigma' multiplies the 16-bit rounding of x' by
    |h| / (2 sigma'), ~100 onto Karras' 0.002 -- as it does in any sampler that keeps x in 16 bits.)"""
    den = _x0 if sampler == "euler" else _eps
    seen = set()

    def model(x, t):
        seen.add(x.dtype)
        return den(x, t)
    run = lambda dtype: diffusion.sample(model, (2, 3, 4), sampler, 4, dtype=dtype, device="cpu",  # noqa: E731
                                         generator=torch.Generator().manual_seed(4))
    x32 = run(torch.float32)
    seen.clear()
    x = run(dtype)
    assert x.dtype == dtype and seen == {dtype}
    tolerance = 1e-4 if dtype == torch.float64 else 0.1
    torch.testing.assert_close(x.float(), x32, rtol=tolerance, atol=tolerance)
    from_x_T = diffusion.sample(model, None, sampler, 4, x_T=torch.zeros(2, 3, 4, dtype=dtype),
                                generator=torch.Generator().manual_seed(4))
    assert from_x_T.dtype == dtype


def test_one_step_goes_from_the_last_timestep_to_the_x0_estimate():
    """steps=1 evaluates t = T - 1 (not t = 0, which returned roughly x_T) and lands on that
    step's x0 estimate -- for ddim, ddpm and dpmpp2m alike."""
    for sampler in ("ddim", "ddpm", "dpmpp2m"):
        seen = []

        def model(x, t):
            seen.append(t.tolist())
            return _eps(x, t)
        x_T = torch.randn(2, 5, generator=torch.Generator().manual_seed(5))
        x = diffusion.sample(model, None, sampler, 1, x_T=x_T)
        assert seen == [[999, 999]]
        a = ABAR[999].item()
        expected = (x_T - math.sqrt(1 - a) * _eps(x_T, torch.full((2,), 999))) / math.sqrt(a)
        torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5)
    assert diffusion.karras_sigmas(1).tolist() == [80.0, 0.0]             # euler / heun: sigma_max to 0


# --- every argument honoured or refused ------------------------------------------------------------

def test_timesteps_are_honoured_by_dpmpp2m():
    seen = []

    def model(x, t):
        seen.append(int(t[0]))
        return _eps(x, t)
    run = lambda **kw: diffusion.sample(model, (2, 4), "dpmpp2m", generator=torch.Generator().manual_seed(0),  # noqa
                                        device="cpu", **kw)
    a = run(steps=5)
    seen.clear()
    b = run(timesteps=[980, 700, 420, 140, 20])
    assert seen == [980, 700, 420, 140, 20] and not torch.allclose(a, b)


@pytest.mark.parametrize("prediction", ["eps", "v", "score"])
def test_prediction_is_honoured_by_euler_and_heun(prediction):
    """The same model as eps / v / score gives the x0 model's samples (within fp32 rounding);
    read as x0 instead, it gives something else."""
    def model(x, s):
        D, s_ = _x0(x, s), s.view(-1, 1)
        eps = (x - D) / s_
        alpha = 1 / (1 + s_ ** 2).sqrt()
        return {"eps": eps, "v": alpha * eps - s_ * alpha * D, "score": -eps / s_}[prediction]
    for sampler in ("euler", "heun"):
        run = lambda den, **kw: diffusion.sample(den, (3, 4), sampler, 6, device="cpu",  # noqa: E731
                                                 generator=torch.Generator().manual_seed(1), **kw)
        expected = run(_x0)
        torch.testing.assert_close(run(model, prediction=prediction), expected, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(run(model, prediction="x0"), expected, atol=1e-2)


@pytest.mark.parametrize("sampler", ["langevin", "pf_ode"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_prediction_is_honoured_by_the_score_samplers(sampler, prediction):
    def model(x, s):
        s_ = s.view(-1, 1)
        eps = -s_ * _score(x, s)
        D = x - s_ * eps
        alpha = 1 / (1 + s_ ** 2).sqrt()
        return {"eps": eps, "x0": D, "v": alpha * eps - s_ * alpha * D}[prediction]
    kw = dict(sigmas=[2.0, 1.0, 0.5]) if sampler == "langevin" else {}
    run = lambda den, **extra: diffusion.sample(den, (3, 4), sampler, 3, device="cpu",  # noqa: E731
                                                generator=torch.Generator().manual_seed(1), **kw, **extra)
    torch.testing.assert_close(run(model, prediction=prediction), run(_score), rtol=1e-4, atol=1e-4)


def test_steps_must_agree_with_sigmas_and_timesteps():
    sigmas = diffusion.karras_sigmas(4)
    a = diffusion.sample(_x0, (2, 3), "euler", sigmas=sigmas, generator=torch.Generator().manual_seed(0))
    b = diffusion.sample(_x0, (2, 3), "euler", 4, sigmas=sigmas, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"steps=10 disagrees with sigmas \(5 values"):
        diffusion.sample(_x0, (2, 3), "euler", 10, sigmas=sigmas)
    with pytest.raises(ValueError, match=r"steps=3 disagrees with timesteps \(2 values\)"):
        diffusion.sample(_eps, (2, 3), "ddim", 3, timesteps=[500, 10])
    with pytest.raises(ValueError, match=r"steps=2 disagrees with sigmas \(3 values\)"):
        diffusion.sample(_score, (2, 3), "pf_ode", 2, sigmas=[3.0, 1.0, 0.1])


def test_betas_are_honoured_by_euler_and_heun():
    """Karras sigmas over the schedule's own range (sigma_t = sqrt((1 - abar_t) / abar_t))."""
    betas = diffusion.cosine_betas(1000)
    got = diffusion.sample(_x0, (2, 3), "euler", 6, betas=betas, generator=torch.Generator().manual_seed(0))
    sigmas = diffusion.karras_sigmas_of(betas, 6)
    table = diffusion.discrete_sigmas(betas)
    assert math.isclose(sigmas[0], table[-1]) and math.isclose(sigmas[-2], table[0]) and sigmas[-1] == 0
    torch.testing.assert_close(got, diffusion.sample(_x0, (2, 3), "euler", sigmas=sigmas,
                                                     generator=torch.Generator().manual_seed(0)))
    assert not torch.allclose(got, diffusion.sample(_x0, (2, 3), "euler", 6, generator=torch.Generator().manual_seed(0)))


def test_spacing_gives_the_documented_sequences():
    assert diffusion.respaced_timesteps(1000, 4, "linspace") == [999, 666, 333, 0]
    assert diffusion.respaced_timesteps(1000, 4, "leading") == [750, 500, 250, 0]
    assert diffusion.respaced_timesteps(1000, 4, "leading", offset=1) == [751, 501, 251, 1]
    assert diffusion.respaced_timesteps(1000, 4, "trailing") == [999, 749, 499, 249]
    assert diffusion.respaced_timesteps(1000, 1) == [999]
    seen = []
    diffusion.sample(lambda x, t: seen.append(int(t[0])) or x * 0, (1, 2), "ddim", 4, spacing="trailing")
    assert seen == [999, 749, 499, 249]
    # euler / heun: the schedule's sigmas at the spacing's timesteps ('linspace' unrounded), then 0
    sigmas = diffusion.schedule_sigmas(diffusion.linear_betas(), 3, "linspace")
    table = diffusion.discrete_sigmas(diffusion.linear_betas())
    assert torch.allclose(sigmas, torch.stack([table[999], (table[499] + table[500]) / 2, table[0],
                                               torch.zeros((), dtype=torch.float64)]))


@pytest.mark.parametrize("argument", list(samplers.OPTIONAL_ARGUMENTS))
def test_every_sampler_specific_argument_is_refused_where_it_is_not_read(argument):
    value = {"betas": diffusion.linear_betas(), "eta": 0.5, "variance": "large", "timesteps": [900, 100],
             "spacing": "trailing", "sigmas": [1.0, 0.5], "clip": True, "threshold": 0.9, "guidance": 1.0,
             "cond": torch.zeros(2), "uncond": torch.zeros(2), "snr": 0.1, "corrector_steps": 2,
             "step_size": 0.01}[argument]
    refused = [name for name, spec in diffusion.REGISTRY.items() if argument not in spec.arguments]
    assert refused, argument
    for sampler in refused:
        with pytest.raises(ValueError, match=f"{argument} is not supported by the '{sampler}' sampler"):
            diffusion.sample(lambda x, t=None: x, (2, 3), sampler, 2, device="cpu", **{argument: value})


def test_bad_arguments_name_themselves():
    den = lambda x, t: x * 0   # noqa: E731
    cases = [
        (TypeError, "shape must be a tuple of ints", dict(shape=16)),
        (ValueError, "shape must be a non-empty tuple of positive ints", dict(shape=(0, 3))),
        (ValueError, "shape is required unless x_T", dict(shape=None)),
        (ValueError, "classifier-free guidance needs both cond and uncond", dict(guidance=3.0)),
        (ValueError, "classifier-free guidance needs both cond and uncond", dict(guidance=3.0, cond=torch.ones(2))),
        (ValueError, "uncond is only used by classifier-free guidance", dict(cond=torch.ones(2),
                                                                             uncond=torch.ones(2))),
        (ValueError, "eta must be >= 0, got -1", dict(eta=-1)),
        (ValueError, r"betas must lie in \(0, 1\), got betas\[2\] = 1.0", dict(betas=[0.1, 0.5, 1.0])),
        (ValueError, r"betas must lie in \(0, 1\), got betas\[0\] = 0.0", dict(betas=[0.0, 0.5])),
        (ValueError, r"betas must be 1-D", dict(betas=[[0.1]])),
        (ValueError, "timesteps must be strictly descending", dict(timesteps=[10, 500, 900])),
        (ValueError, "timesteps must not repeat a value", dict(timesteps=[900, 500, 500])),
        (ValueError, r"timesteps must lie in \[0, 999\]", dict(timesteps=[1000, 10])),
        (ValueError, r"timesteps must lie in \[0, 999\]", dict(timesteps=[10, -1])),
        (ValueError, "timesteps must be a non-empty", dict(timesteps=[])),
        (TypeError, "timesteps must be integers", dict(timesteps=[900.5, 10])),
        (ValueError, r"timesteps must lie in \[0, 9\] \(the schedule has 10", dict(timesteps=[20, 1],
                                                                                  betas=[0.1] * 10)),
        (ValueError, r"steps must lie in \[1, 1000\]", dict(steps=1001, spacing="leading")),
        (ValueError, "steps must be >= 1", dict(steps=0)),
        (TypeError, "steps must be an int", dict(steps=2.5)),
        (ValueError, "spacing must be one of", dict(spacing="uniform")),
        (ValueError, "pass timesteps= or spacing=, not both", dict(timesteps=[5, 1], spacing="leading")),
        (ValueError, "prediction must be one of", dict(prediction="epsilon")),
        (TypeError, "dtype must be one of", dict(dtype=torch.int32)),
        (TypeError, "x_T must be a torch.Tensor", dict(x_T=[[0.0]])),
        (TypeError, "x_T must be a floating-point tensor", dict(x_T=torch.zeros(2, 3, dtype=torch.long))),
        (ValueError, r"x_T has shape \(2, 4\) but shape is \(2, 3\)", dict(x_T=torch.zeros(2, 4))),
        (TypeError, "guidance must be a number", dict(guidance="3", cond=torch.ones(2), uncond=torch.ones(2))),
        (ValueError, r"threshold must be a percentile in \(0, 1\]", dict(threshold=1.5)),
        (ValueError, "progress is not called under cuda_graph=True", dict(progress=print, cuda_graph=True, seed=0)),
    ]
    for error, message, kw in cases:
        kw = {"shape": (2, 3), "steps": 3, **kw}
        with pytest.raises(error, match=message):
            diffusion.sample(den, kw.pop("shape"), "ddim", device="cpu", **kw)
    sampler_cases = [
        ("euler", ValueError, "sigmas must be strictly decreasing", dict(sigmas=[1.0, 2.0, 0.0])),
        ("euler", ValueError, r"sigmas for the 'euler' sampler must be 1-D with at least 2", dict(sigmas=[1.0])),
        ("pf_ode", ValueError, r"sigmas for the 'pf_ode' sampler must be > 0", dict(sigmas=[1.0, 0.0])),
        ("euler", ValueError, "pass sigmas= or timesteps= / spacing=, not both", dict(sigmas=[1.0, 0.0],
                                                                                       spacing="leading")),
        ("pc_ve", ValueError, r"prediction='x0' is not supported by the 'pc_ve' sampler", dict(prediction="x0")),
        ("sgld", ValueError, r"prediction='eps' is not supported by the 'sgld' sampler", dict(prediction="eps")),
        ("pc_ve", ValueError, "snr must be > 0", dict(snr=0.0)),
        ("pc_ve", ValueError, "corrector_steps must be >= 0", dict(corrector_steps=-1)),
        ("sgld", ValueError, "step_size must be > 0", dict(step_size=-0.1)),
        ("ddpm", ValueError, "variance must be one of", dict(variance="fixed_small")),
    ]
    for sampler, error, message, kw in sampler_cases:
        with pytest.raises(error, match=message):
            diffusion.sample(den, (2, 3), sampler, device="cpu", **kw)


def test_a_denoiser_can_carry_its_schedule_and_prediction():
    """``betas`` / ``prediction`` attributes of the denoiser are used unless the arguments are
    given (a scheduled denoiser such as DiffusersDenoiser)."""
    betas = diffusion.cosine_betas(500)
    abar = torch.cumprod(1 - betas, 0)

    class VModel:
        prediction = "v"

        def __init__(self):
            self.betas = betas

        def __call__(self, x, t):
            a = abar[t].view(-1, 1).float()
            eps = (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * STD ** 2 + 1 - a)
            return a.sqrt() * eps - (1 - a).sqrt() * (x - (1 - a).sqrt() * eps) / a.sqrt()

    def eps_model(x, t):
        a = abar[t].view(-1, 1).float()
        return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * STD ** 2 + 1 - a)
    run = lambda den, **kw: diffusion.sample(den, (3, 4), "dpmpp2m", 8, device="cpu",  # noqa: E731
                                             generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(run(VModel()), run(eps_model, betas=betas), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"the denoiser's prediction='v' is not supported by the 'pc_vp'"):
        diffusion.sample(VModel(), (3, 4), "pc_vp", 2, device="cpu")
