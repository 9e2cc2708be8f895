"""Diffusion sampling: the fused step against its reference, DDIM determinism, and a known-
Gaussian check -- with the exact denoiser of Gaussian data every sampler must reproduce the
data's mean and standard deviation."""
import math

import pytest
import torch

from fastgen.ops.diffusion_step import diffusion_step
from fastgen.sampling import diffusion

MU, STD = 0.3, 0.5     # data: x0 ~ N(MU, STD^2) in every dimension


def gaussian_eps(x, t, abar):
    """E[eps | x_t] for Gaussian data: x_t ~ N(sqrt(a) MU, a STD^2 + 1 - a)."""
    a = abar[t].view(-1, *[1] * (x.dim() - 1)).float()
    return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * STD ** 2 + 1 - a)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("guided", [False, True])
def test_fused_step_matches_reference(prediction, clip, guided):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 5, 7, generator=g)
    out = torch.randn(6 if guided else 3, 2, 5, 7, generator=g)
    noise = torch.randn(3, 2, 5, 7, generator=g)
    coefficients = diffusion.ddpm_coefficients(0.4, 0.7)
    kw = dict(prediction=prediction, clip=clip, guidance=1.5 if guided else None, noise=noise)
    expected = diffusion_step(x, out, coefficients, backend="reference", **kw)
    got = diffusion_step(x, out, coefficients, backend="triton", **kw)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_in_kernel_philox_noise_is_standard_normal_and_reproducible():
    x = torch.zeros(64, 64)
    out = torch.zeros(64, 64)
    coefficients = (1.0, 1.0, 0.0, 0.0, 0.0, 1.0)                 # y = z
    z1 = diffusion_step(x, out, coefficients, seed=7, backend="triton")
    z2 = diffusion_step(x, out, coefficients, seed=7, backend="triton")
    z3 = diffusion_step(x, out, coefficients, seed=7, offset=x.numel(), backend="triton")
    assert torch.equal(z1, z2) and not torch.equal(z1, z3)
    assert abs(z1.mean().item()) < 0.05 and abs(z1.std().item() - 1) < 0.05


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_ddim_eta0_is_deterministic_and_backends_agree(backend):
    abar = torch.cumprod(1 - diffusion.linear_betas(), 0)
    den = lambda x, t: gaussian_eps(x, t, abar)
    a = diffusion.sample(den, (4, 3, 4, 4), "ddim", 10, generator=torch.Generator().manual_seed(1), device="cpu",
                         backend=backend)
    b = diffusion.sample(den, (4, 3, 4, 4), "ddim", 10, generator=torch.Generator().manual_seed(1), device="cpu",
                         backend="reference")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler,steps,kw", [
    ("ddpm", 200, dict(variance="small")),
    ("ddpm", 200, dict(variance="large")),
    ("ddim", 50, dict(eta=0.0)),
    ("ddim", 50, dict(eta=1.0)),
    ("euler", 60, {}),
    ("heun", 30, {}),
    ("dpmpp2m", 60, {}),
    ("langevin", 100, dict(sigmas=torch.logspace(0, -2, 8))),
    ("pc_ve", 200, {}),
    ("pc_vp", 200, {}),
    ("pf_ode", 400, {}),
    ("sgld", 3000, dict(step_size=0.01)),
], ids=["ddpm-small", "ddpm-large", "ddim", "ddim-eta1", "euler", "heun", "dpmpp2m", "langevin", "pc-ve", "pc-vp",
        "pf-ode", "sgld"])
def test_known_gaussian_moments(sampler, steps, kw):
    betas = diffusion.cosine_betas(1000)
    abar = torch.cumprod(1 - betas, 0)
    if sampler in ("euler", "heun"):
        den = lambda x, s: MU + STD ** 2 / (STD ** 2 + s.view(-1, 1) ** 2) * (x - MU)     # exact E[x0 | x]
    elif sampler in ("langevin", "pc_ve", "pf_ode"):
        den = lambda x, s: -(x - MU) / (STD ** 2 + s.view(-1, 1) ** 2)                  # exact score
    elif sampler == "sgld":
        den = lambda x: -(x - MU) / STD ** 2                                            # -grad E of the data
    else:
        den = lambda x, t: gaussian_eps(x, t, abar)
    # The predictor-corrector step size follows ||z|| / ||score||, which only concentrates in
    # many dimensions (Song et al. use it on images): give those samplers 64-dimensional data.
    shape = (250, 64) if sampler.startswith("pc") else (4000, 4)
    if sampler in ("ddpm", "ddim", "dpmpp2m", "pc_vp"):      # the samplers over a discrete schedule
        kw = dict(kw, betas=betas)
    x = diffusion.sample(den, shape, sampler, steps, generator=torch.Generator().manual_seed(0), device="cpu", **kw)
    standard_error = STD / math.sqrt(x.numel())
    assert abs(x.mean().item() - MU) < 4 * standard_error + 0.01
    assert abs(x.std().item() - STD) < 0.05 * STD + 0.01, (x.mean().item(), x.std().item())


def test_samplers_are_the_registry_names():
    """One place to add a sampler: ``SAMPLERS`` is derived from the registry (same order as before)."""
    assert diffusion.SAMPLERS == tuple(diffusion.REGISTRY) == (
        "ddpm", "ddim", "dpmpp2m", "euler", "heun", "langevin", "pc_ve", "pc_vp", "pf_ode", "sgld")
    assert all(isinstance(spec, diffusion.Sampler) for spec in diffusion.REGISTRY.values())


def test_classifier_free_guidance_calls_the_denoiser_once_per_step():
    calls = []

    def den(x, t, cond):
        calls.append(x.shape[0])
        return x * 0 + cond.view(-1, 1)

    cond, uncond = torch.ones(2), torch.zeros(2)
    diffusion.sample(den, (2, 3), "ddim", 5, guidance=2.0, cond=cond, uncond=uncond,
                     generator=torch.Generator().manual_seed(0), device="cpu")
    assert calls == [4] * 5


def test_errors():
    den = lambda x, t: x
    with pytest.raises(ValueError, match=r"steps must lie in \[1, 1000\]"):
        diffusion.sample(den, (2, 3), "ddim", 1001, device="cpu")
    with pytest.raises(ValueError, match="sampler must be one of"):
        diffusion.sample(den, (2, 3), "plms", 10, device="cpu")
    with pytest.raises(ValueError, match="denoiser output has shape"):
        diffusion.sample(lambda x, t: x[:, :2], (2, 3), "ddim", 10, device="cpu")
    with pytest.raises(ValueError, match="needs both cond and uncond"):
        diffusion.sample(den, (2, 3), "ddim", 10, guidance=1.0, cond=torch.ones(2), device="cpu")
    with pytest.raises(ValueError, match="variance must be one of"):
        diffusion.sample(den, (2, 3), "ddpm", 10, variance="smal", device="cpu")
    with pytest.raises(ValueError, match="variance is not supported by the 'ddim' sampler"):
        diffusion.sample(den, (2, 3), "ddim", 10, variance="learned", device="cpu")
    with pytest.raises(ValueError, match="variance='learned' is for the 'ddpm' sampler"):
        diffusion.sample(den, (2, 3), "pc_vp", 10, variance="learned", device="cpu")
    with pytest.raises(ValueError, match="prediction must be one of"):
        diffusion_step(torch.zeros(2), torch.zeros(2), (1, 1, 1, 0, 0, 0), prediction="epsilon")
    with pytest.raises(ValueError, match="pass noise= or seed="):
        diffusion_step(torch.zeros(2), torch.zeros(2), (1, 1, 1, 0, 0, 0.5))


def test_unet_ddpm_training_on_digits_and_guided_sampling():
    from fastgen.data import load_digits
    from fastgen.models import DDPM, UNet
    torch.manual_seed(0)
    data = load_digits("train")
    x0 = data.images[:256].float() / 8 - 1                       # 17 levels -> [-1, 1]
    labels = data.labels[:256]
    unet = UNet(in_channels=1, channels=16, channel_mult=(1, 2), blocks=1, attention_at=(4,), image_size=8,
                dropout=0.0, num_classes=10)
    ddpm = DDPM(unet, cond_drop=0.1)
    opt = torch.optim.Adam(unet.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for step in range(60):
        pick = torch.randint(256, (64,), generator=g)
        loss = ddpm.loss(x0[pick], labels[pick], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10
    unet.eval()
    cond = torch.arange(4)
    images = diffusion.sample(unet, (4, 1, 8, 8), "ddim", 10, guidance=2.0, cond=cond, uncond=torch.full_like(cond, 10),
                              generator=torch.Generator().manual_seed(1), device="cpu", clip=True)
    assert images.shape == (4, 1, 8, 8) and torch.isfinite(images).all()


def test_unet_errors():
    from fastgen.models import DDPM, UNet
    unet = UNet(in_channels=1, channels=8, channel_mult=(1,), blocks=1, attention_at=(), image_size=8)
    with pytest.raises(ValueError, match=r"t must have shape \[2\]"):
        unet(torch.zeros(2, 1, 8, 8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="unconditional"):
        unet(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="prediction must be"):
        DDPM(unet, prediction="score")


def test_dpmpp2m_is_second_order_and_ddim_first_order():
    """Halving the step size cuts the std error of the Gaussian check ~4x (2M) vs ~2x (DDIM)."""
    betas = diffusion.cosine_betas(1000)
    abar = torch.cumprod(1 - betas, 0)
    den = lambda x, t: gaussian_eps(x, t, abar)
    err = {}
    for sampler in ("dpmpp2m", "ddim"):
        for steps in (25, 50):
            x = diffusion.sample(den, (2000, 4), sampler, steps, betas=betas,
                                 generator=torch.Generator().manual_seed(0), device="cpu")
            err[sampler, steps] = abs(x.std().item() - STD)
    assert err["dpmpp2m", 25] / err["dpmpp2m", 50] > 3.0
    assert 1.5 < err["ddim", 25] / err["ddim", 50] < 3.0


@pytest.mark.parametrize("guided", [False, True])
def test_fused_step_learned_variance_matches_reference(guided):
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(3, 2, 4, 5, generator=g), torch.randn(3, 2, 4, 5, generator=g)
    out = torch.randn(6 if guided else 3, 4, 4, 5, generator=g)
    out[:, 2:] = out[:, 2:].tanh()                                  # v in [-1, 1]
    kw = dict(guidance=1.0 if guided else None, noise=noise, learned_variance=(math.log(0.01), math.log(0.05)))
    coefficients = diffusion.ddpm_coefficients(0.4, 0.7)
    torch.testing.assert_close(diffusion_step(x, out, coefficients, backend="triton", **kw),
                               diffusion_step(x, out, coefficients, backend="reference", **kw), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("v,fixed", [(-1.0, "small"), (1.0, "large")])
def test_learned_variance_endpoints_are_the_fixed_variances(v, fixed):
    abar = torch.cumprod(1 - diffusion.linear_betas(), 0)
    eps = lambda x, t: gaussian_eps(x, t, abar)
    with_v = lambda x, t: torch.cat([eps(x, t), torch.full_like(x, v)], dim=1)
    a = diffusion.sample(with_v, (64, 4), "ddpm", 20, variance="learned", generator=torch.Generator().manual_seed(0),
                         device="cpu")
    b = diffusion.sample(eps, (64, 4), "ddpm", 20, variance=fixed, generator=torch.Generator().manual_seed(0),
                         device="cpu")
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_hybrid_loss_trains_the_variance_channels():
    from fastgen.models import DDPM, UNet
    torch.manual_seed(0)
    unet = UNet(in_channels=1, channels=8, channel_mult=(1,), blocks=1, attention_at=(), image_size=8,
                dropout=0.0, out_channels=2)
    ddpm = DDPM(unet, learned_variance=True, vlb_weight=1.0)
    x0 = torch.rand(16, 1, 8, 8) * 2 - 1
    loss = ddpm.loss(x0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    loss.backward()
    assert unet.out[2].weight.grad[1].abs().sum() > 0             # the v channel gets a gradient
    with pytest.raises(ValueError, match="learned_variance is implemented for prediction='eps'"):
        DDPM(unet, prediction="v", learned_variance=True)


def test_ncsn_denoising_score_matching_trains_and_samples():
    from fastgen.data import load_digits
    from fastgen.models import NCSN, UNet
    torch.manual_seed(0)
    x = load_digits("train").images[:128].float() / 8 - 1
    ncsn = NCSN(UNet(in_channels=1, channels=16, channel_mult=(1, 2), blocks=1, attention_at=(), image_size=8,
                     dropout=0.0), sigmas=torch.logspace(0, -1.5, 6))
    opt = torch.optim.Adam(ncsn.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        loss = ncsn.loss(x[torch.randint(128, (32,), generator=g)], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10])
    ncsn.eval()
    images = diffusion.sample(ncsn, (2, 1, 8, 8), "pc_ve", 6, sigmas=ncsn.sigmas, generator=g, device="cpu")
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()
    with pytest.raises(ValueError, match=r"sigma must have shape \[2\]"):
        ncsn(torch.zeros(2, 1, 8, 8), torch.ones(3))


@pytest.mark.parametrize("guided", [False, True])
def test_dynamic_thresholding_fused_matches_reference_and_bounds_x0(guided):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 6, 6, generator=g) * 3
    out = torch.randn(8 if guided else 4, 3, 6, 6, generator=g)
    coefficients = (0.3, math.sqrt(1 - 0.09), 1.0, 0.0, 0.0, 0.0)   # y = thresholded x0
    kw = dict(guidance=0.5 if guided else None, threshold=0.9)
    ref = diffusion_step(x, out, coefficients, backend="reference", **kw)
    torch.testing.assert_close(diffusion_step(x, out, coefficients, backend="triton", **kw), ref, rtol=1e-5, atol=1e-5)
    assert ref.abs().max() <= 1.0 + 1e-6
    raw = diffusion_step(x, out, coefficients, backend="reference", guidance=kw["guidance"])
    assert raw.abs().max() > 1.5                                      # thresholding did something
    with pytest.raises(ValueError, match="threshold must be a percentile"):
        diffusion_step(x, out, coefficients, threshold=1.5, guidance=kw["guidance"])


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_against_diffusers_schedulers(sampler):
    """Same eps-model, same timesteps, same noise: fastgen's fused loop and diffusers agree."""
    diffusers = pytest.importorskip("diffusers")
    abar = torch.cumprod(1 - diffusion.linear_betas(), 0)
    den = lambda x, t: gaussian_eps(x, t, abar)
    shape, steps = (8, 3, 4, 4), 20
    if sampler == "ddim":
        scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                                            set_alpha_to_one=True)
    else:
        scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                                            variance_type="fixed_small")
    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g)
    for t in scheduler.timesteps:
        out = den(x, torch.full((shape[0],), int(t)))
        kw = {"eta": 0.0} if sampler == "ddim" else {}
        x = scheduler.step(out, t, x, generator=g, **kw).prev_sample
    ours = diffusion.sample(den, shape, sampler, steps, timesteps=scheduler.timesteps.tolist(),
                            generator=torch.Generator().manual_seed(3), device="cpu", backend="triton")
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_euler_fused_step_matches_reference_backend():
    den = lambda x, s: MU + STD ** 2 / (STD ** 2 + s.view(-1, 1) ** 2) * (x - MU)
    a = diffusion.sample(den, (64, 4), "euler", 12, generator=torch.Generator().manual_seed(0), device="cpu",
                         backend="triton")
    b = diffusion.sample(den, (64, 4), "euler", 12, generator=torch.Generator().manual_seed(0), device="cpu",
                         backend="reference")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# --- float64 end to end: each deterministic sampler against the paper's update, written out here ----

def _eps64(abar):
    """A nonlinear eps-model (the Gaussian data's exact eps plus a tanh term), in x's dtype."""
    def eps(x, t):
        a = abar[t].view(-1, *[1] * (x.dim() - 1)).to(x.dtype)
        return (1 - a).sqrt() * ((x - a.sqrt() * MU) / (a * STD ** 2 + 1 - a) + 0.1 * torch.tanh(x))
    return eps


def _x0_64(x, s):
    """A nonlinear x0-model D(x; sigma) for the Karras samplers, in x's dtype."""
    s = s.view(-1, *[1] * (x.dim() - 1)).to(x.dtype)
    return MU + STD ** 2 / (STD ** 2 + s ** 2) * (x - MU) + 0.05 * torch.sin(x) / (1 + s)


def _x_T(shape, seed, scale=1.0):
    """What ``sample`` draws as x_T from ``torch.Generator().manual_seed(seed)``: float32 normals,
    in float64 (times the first sigma for the samplers over sigmas)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).double() * scale


def _ddim_eq12(eps, x, ts, abar, eta=0.0, generator=None):
    """Song et al. 2021, eq. 12: x_prev = sqrt(a_prev) (x - sqrt(1 - a) eps) / sqrt(a)
    + sqrt(1 - a_prev - s^2) eps + s z, s = eta sqrt((1 - a_prev)/(1 - a)) sqrt(1 - a/a_prev);
    a_prev = 1 after the last timestep."""
    for i, t in enumerate(ts):
        a = abar[t].item()
        a_prev = abar[ts[i + 1]].item() if i + 1 < len(ts) else 1.0
        e = eps(x, torch.full((x.shape[0],), t))
        x0 = (x - math.sqrt(1 - a) * e) / math.sqrt(a)
        s = eta * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(1 - a / a_prev)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - s ** 2) * e
        if s > 0:
            x = x + s * torch.randn(x.shape, generator=generator, dtype=torch.float32).double()
    return x


def _dpm_solver_pp_2m(eps, x, ts, abar):
    """Lu et al. 2022, DPM-Solver++(2M), Algorithm 2 over t_0 > ... > t_{M-1}, with alpha_t =
    sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t), x_theta the
    data prediction: x_{t_1} = (sigma_1 / sigma_0) x_{t_0} - alpha_1 (e^{-h_1} - 1) x_theta(t_0);
    for i >= 2, r_i = h_{i-1} / h_i, D_i = (1 + 1/(2 r_i)) x_theta(t_{i-1}) - 1/(2 r_i)
    x_theta(t_{i-2}), x_{t_i} = (sigma_i / sigma_{i-1}) x_{t_{i-1}} - alpha_i (e^{-h_i} - 1) D_i.
    Then the final step to sigma = 0 is first order: x = x_theta(t_{M-1}) (as in diffusers and
    k-diffusion; the second-order D diverges there)."""
    alpha = lambda t: math.sqrt(abar[t].item())            # noqa: E731
    sigma = lambda t: math.sqrt(1 - abar[t].item())        # noqa: E731
    lam = lambda t: math.log(alpha(t) / sigma(t))          # noqa: E731

    def data(x, t):
        return (x - sigma(t) * eps(x, torch.full((x.shape[0],), t))) / alpha(t)

    previous, h_previous = None, None
    for i in range(1, len(ts)):
        s, t = ts[i - 1], ts[i]
        x_theta = data(x, s)
        h = lam(t) - lam(s)
        D = x_theta if previous is None else \
            (1 + 1 / (2 * (h_previous / h))) * x_theta - 1 / (2 * (h_previous / h)) * previous
        x = sigma(t) / sigma(s) * x - alpha(t) * (math.exp(-h) - 1) * D
        previous, h_previous = x_theta, h
    return data(x, ts[-1])


def _karras_algorithm_1(D, x, sigmas, heun):
    """Karras et al. 2022, Algorithm 1 (deterministic, S_churn = 0): d = (x - D(x; s)) / s,
    x' = x + (s' - s) d; Heun (s' != 0): d' = (x' - D(x'; s')) / s', x' = x + (s' - s)(d + d') / 2."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        d = (x - D(x, torch.full((x.shape[0],), s, dtype=torch.float64))) / s
        x_next = x + (s_next - s) * d
        if heun and s_next != 0:
            d_next = (x_next - D(x_next, torch.full((x.shape[0],), s_next, dtype=torch.float64))) / s_next
            x_next = x + (s_next - s) * (d + d_next) / 2
        x = x_next
    return x


FP64 = dict(rtol=0.0, atol=1e-12)


@pytest.mark.parametrize("eta", [0.0, 1.0], ids=["eta0", "eta1"])
def test_float64_ddim_is_eq_12(eta):
    betas = diffusion.cosine_betas(1000)
    abar = torch.cumprod(1 - betas, 0)
    eps, shape, steps = _eps64(abar), (3, 2, 4, 5), 8
    got = diffusion.sample(eps, shape, "ddim", steps, betas=betas, eta=eta, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(0), device="cpu")
    assert got.dtype == torch.float64
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float32).double()
    expected = _ddim_eq12(eps, x, diffusion.respaced_timesteps(1000, steps), abar, eta, g)
    torch.testing.assert_close(got, expected, **FP64)
    fp32 = diffusion.sample(eps, shape, "ddim", steps, betas=betas, eta=eta, generator=torch.Generator().manual_seed(0),
                            device="cpu")
    assert fp32.dtype == torch.float32 and (fp32.double() - expected).abs().max() > 1e-9   # fp32 is not exact


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_float64_dpmpp2m_is_algorithm_2(spacing):
    abar = torch.cumprod(1 - diffusion.linear_betas(), 0)
    eps, shape, steps = _eps64(abar), (3, 7), 9
    got = diffusion.sample(eps, shape, "dpmpp2m", steps, spacing=spacing, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(1), device="cpu")
    ts = diffusion.respaced_timesteps(1000, steps, spacing)
    torch.testing.assert_close(got, _dpm_solver_pp_2m(eps, _x_T(shape, 1), ts, abar), **FP64)


@pytest.mark.parametrize("sampler", ["euler", "heun"])
@pytest.mark.parametrize("prediction", ["x0", "eps", "v", "score"])
def test_float64_euler_and_heun_are_karras_algorithm_1(sampler, prediction):
    """The x0 model, or the same model as an eps / v / score model in x = x0 + sigma eps (v of
    x / sqrt(1 + sigma^2)): every prediction reproduces Algorithm 1 on D."""
    def model(x, s):
        D, s_ = _x0_64(x, s), s.view(-1, 1).to(x.dtype)
        eps = (x - D) / s_
        alpha = 1 / (1 + s_ ** 2).sqrt()
        return {"x0": D, "eps": eps, "v": alpha * eps - s_ * alpha * D, "score": -eps / s_}[prediction]
    shape, steps = (4, 6), 7
    sigmas = diffusion.karras_sigmas(steps).tolist()
    got = diffusion.sample(model, shape, sampler, steps, prediction=prediction, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(2), device="cpu")
    expected = _karras_algorithm_1(_x0_64, _x_T(shape, 2, sigmas[0]), sigmas, heun=sampler == "heun")
    torch.testing.assert_close(got, expected, **FP64)


def test_float64_probability_flow_ode_is_euler_on_dx_dsigma():
    """x' = x + (s' - s)(-s score(x, s)), over the sigmas then onto 0."""
    score = lambda x, s: -(x - MU) / (STD ** 2 + s.view(-1, 1) ** 2) + 0.01 * torch.cos(x)   # noqa: E731
    sigmas = [5.0, 2.0, 0.7, 0.2, 0.05]
    got = diffusion.sample(score, (3, 5), "pf_ode", sigmas=sigmas, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(3), device="cpu")
    x = _x_T((3, 5), 3, sigmas[0])
    for s, s_next in zip(sigmas, sigmas[1:] + [0.0]):
        x = x + (s_next - s) * (-s * score(x, torch.full((3,), s, dtype=torch.float64)))
    torch.testing.assert_close(got, x, **FP64)


def test_float64_stochastic_samplers_compute_in_float64():
    """ddpm / pc_vp / pc_ve / langevin in float64: finite, float64, and within fp32 rounding of
    the float32 run from the same generator (the same x_T and z: noise is drawn in float32)."""
    abar = torch.cumprod(1 - diffusion.linear_betas(), 0)
    score = lambda x, s: -(x - MU) / (STD ** 2 + s.view(-1, 1) ** 2)   # noqa: E731
    for sampler, den, kw in [("ddpm", _eps64(abar), {}), ("pc_vp", _eps64(abar), {}), ("pc_ve", score, {}),
                             ("langevin", score, dict(sigmas=[1.0, 0.5]))]:
        run = lambda dtype: diffusion.sample(den, (2, 16), sampler, 4, dtype=dtype, device="cpu",  # noqa: E731
                                             generator=torch.Generator().manual_seed(4), **kw)
        x64, x32 = run(torch.float64), run(torch.float32)
        assert x64.dtype == torch.float64 and torch.isfinite(x64).all()
        torch.testing.assert_close(x32.double(), x64, rtol=1e-3, atol=1e-3)
