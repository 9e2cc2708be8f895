"""Diffusion sampling loops: schedules, DDPM / DDIM with one fused kernel per step, and
Euler / Heun on Karras sigmas.

The denoiser protocol: ``denoiser(x, t, cond=None)`` returns the model output for x [B, ...]
at timesteps t [B] (integer DDPM steps; sigmas for the Karras samplers), read as
``prediction='eps'|'x0'|'v'``.  With ``guidance=w`` the loop calls the denoiser once per step
on [x; x] with [cond; uncond] and combines (1 + w) cond - w uncond inside the fused step.

Noise: with ``generator`` every step's noise is drawn from it on the host (reproducible, and
what the tests use to match the reference exactly); with ``seed`` (Triton backend) it is
drawn inside the kernel with Philox from (seed, step) -- no host work per step, which is what
``cuda_graph=True`` (capture the whole loop, denoiser included, as one CUDA graph) needs.
"""
import math

import numpy as np
import torch

from fastgen.ops.diffusion import diffusion_step

SAMPLERS = ("ddpm", "ddim", "dpmpp2m", "euler", "heun", "langevin", "pc_ve", "pc_vp", "pf_ode", "sgld")


def linear_betas(timesteps=1000, start=1e-4, end=0.02):
    """Ho et al. 2020: betas evenly spaced from ``start`` to ``end``."""
    return torch.linspace(start, end, timesteps, dtype=torch.float64)


def cosine_betas(timesteps=1000, s=0.008, max_beta=0.999):
    """Nichol & Dhariwal 2021: abar(t) = cos^2(((t/T) + s) / (1 + s) * pi/2)."""
    f = lambda t: math.cos((t / timesteps + s) / (1 + s) * math.pi / 2) ** 2
    return torch.tensor([min(1 - f(t + 1) / f(t), max_beta) for t in range(timesteps)], dtype=torch.float64)


def karras_sigmas(steps, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """Karras et al. 2022: sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho, then 0."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def respaced_timesteps(timesteps, steps):
    """``steps`` of the ``timesteps`` training steps, evenly spaced, descending (Nichol & Dhariwal)."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must lie in [1, {timesteps}] (the training timesteps), got {steps}")
    return [int(t) for t in np.linspace(0, timesteps - 1, steps).round()[::-1]]


def ddpm_coefficients(abar_t, abar_prev, variance="small"):
    """Ancestral step from t to the previous kept step (respaced: beta = 1 - abar_t / abar_prev).
    variance 'small' = posterior beta~ (1 - abar_prev)/(1 - abar_t) beta, 'large' = beta."""
    beta = 1 - abar_t / abar_prev
    c_x0 = math.sqrt(abar_prev) * beta / (1 - abar_t)
    c_x = math.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar_t)
    var = beta * (1 - abar_prev) / (1 - abar_t) if variance == "small" else beta
    return (math.sqrt(abar_t), math.sqrt(1 - abar_t), c_x0, 0.0, c_x, math.sqrt(var) if abar_prev < 1 else 0.0)


def ddim_coefficients(abar_t, abar_prev, eta=0.0):
    """Song et al. 2021: x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - s^2) eps + s z,
    s = eta sqrt((1 - abar_prev)/(1 - abar_t)) sqrt(1 - abar_t/abar_prev)."""
    sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))
    return (math.sqrt(abar_t), math.sqrt(1 - abar_t), math.sqrt(abar_prev), math.sqrt(max(1 - abar_prev - sigma ** 2, 0.0)),
            0.0, sigma)


def _call(denoiser, x, t, cond, uncond, guidance):
    if guidance is None:
        return denoiser(x, t, cond) if cond is not None else denoiser(x, t)
    both = torch.cat([cond, uncond]) if cond is not None else None
    xx, tt = torch.cat([x, x]), torch.cat([t, t])
    return denoiser(xx, tt, both) if both is not None else denoiser(xx, tt)


@torch.no_grad()
def sample(denoiser, shape, sampler="ddim", steps=50, betas=None, eta=0.0, variance="small", prediction="eps",
           clip=False, guidance=None, cond=None, uncond=None, generator=None, seed=None, device=None,
           progress=None, cuda_graph=False, sigmas=None, backend=None, snr=0.16, corrector_steps=1,
           step_size=1e-3, threshold=None, timesteps=None):
    """Sample images of ``shape`` [B, ...] from ``denoiser``; returns the final x.

    sampler: 'ddpm' (ancestral; ``variance`` 'small'|'large'|'learned' -- the denoiser then
    returns [prediction; v] on the channels, Improved DDPM) or 'ddim' (``eta``) over
    ``steps`` respaced steps of ``betas`` (default: 1000 linear) -- one fused kernel per step;
    'dpmpp2m' (DPM-Solver++(2M), Lu et al. 2022) on the same schedule; 'euler' / 'heun' over
    Karras ``sigmas`` (default: ``karras_sigmas(steps)``; the denoiser gets sigma as t and
    must predict x0); 'langevin' (annealed Langevin dynamics, Song & Ermon 2019: the
    denoiser is a score model s(x, sigma), ``sigmas`` descending, ``steps`` per sigma);
    'pc_ve' (predictor-corrector for the VE SDE, Song et al. 2021: reverse-diffusion predictor
    and ``corrector_steps`` Langevin corrector steps at signal-to-noise ``snr`` over geometric
    ``sigmas``; score model s(x, sigma)); 'pc_vp' (the same for the VP SDE: the fused DDPM
    step as predictor, eps model); 'pf_ode' (Euler on the VE probability-flow ODE,
    dx/dsigma = -sigma s(x, sigma)); 'sgld' (stochastic gradient Langevin dynamics for an
    energy model, x += (step_size / 2) s(x) + sqrt(step_size) z, s = -grad E, ``steps`` steps).
    clip: clamp each step's x0 estimate to [-1, 1]; threshold=p: Imagen's dynamic thresholding
    instead.  timesteps: an explicit descending list instead of the even respacing (ddpm/ddim).  progress(i, x) is called after each step (not under cuda_graph).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if guidance is not None and (cond is None) != (uncond is None):
        raise ValueError("classifier-free guidance needs both cond and uncond (or neither)")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if sampler in ("euler", "heun"):
        return _karras(denoiser, shape, sampler, steps, sigmas, generator, device, progress, backend)
    if sampler == "langevin":
        return _annealed_langevin(denoiser, shape, steps, sigmas, generator, device, progress)
    if sampler == "dpmpp2m":
        return _dpmpp2m(denoiser, shape, steps, betas, prediction, generator, device, progress)
    if sampler in ("pc_ve", "pf_ode"):
        return _ve(denoiser, shape, sampler, steps, sigmas, snr, generator, device, progress, corrector_steps)
    if sampler == "sgld":
        return _sgld(denoiser, shape, steps, step_size, generator, device, progress)
    betas = linear_betas() if betas is None else torch.as_tensor(betas, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0).tolist()
    ts = respaced_timesteps(len(abar), steps) if timesteps is None else [int(t) for t in timesteps]
    x = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
    plan = []
    for i, t in enumerate(ts):
        abar_prev = abar[ts[i + 1]] if i + 1 < len(ts) else 1.0
        coefficients = (ddim_coefficients(abar[t], abar_prev, eta) if sampler == "ddim"
                        else ddpm_coefficients(abar[t], abar_prev, variance))
        plan.append((t, coefficients))
    t_tensors = [torch.full((shape[0],), t, dtype=torch.long, device=device) for t, _ in plan]
    # learned variance (Improved DDPM): the two log-variances each step interpolates
    log_variances = [None] * len(plan)
    if variance == "learned":
        if sampler != "ddpm":
            raise ValueError("variance='learned' is for the 'ddpm' sampler")
        for i, t in enumerate(ts):
            abar_prev = abar[ts[i + 1]] if i + 1 < len(ts) else 1.0
            beta = 1 - abar[t] / abar_prev
            small = beta * (1 - abar_prev) / (1 - abar[t])
            log_variances[i] = (math.log(max(small, 1e-20)), math.log(beta))

    def loop(x):
        for i, ((t, coefficients), t_tensor) in enumerate(zip(plan, t_tensors)):
            out = _call(denoiser, x, t_tensor, cond, uncond, guidance)
            channels = x.shape[1] * (2 if variance == "learned" else 1)
            if tuple(out.shape[1:]) != (channels, *x.shape[2:]):
                raise ValueError(f"denoiser output has shape {tuple(out.shape)}, x has {tuple(x.shape)}"
                                 + (" (variance='learned' needs [prediction; v]: twice the channels)"
                                    if variance == "learned" else ""))
            noise = None
            if coefficients[5] != 0 and seed is None:
                noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
            x = diffusion_step(x, out, coefficients, prediction, clip, guidance, noise=noise, seed=seed,
                               offset=i * x.numel(), learned_variance=log_variances[i], threshold=threshold,
                               backend=backend)
            if sampler == "pc_vp" and i + 1 < len(plan):
                x = _vp_corrector(denoiser, x, plan[i + 1], t_tensors[i + 1], snr, corrector_steps, generator)
            if progress is not None and not cuda_graph:
                progress(i, x)
        return x

    if not (cuda_graph and device.type == "cuda"):
        return loop(x)
    if seed is None:
        raise ValueError("cuda_graph=True draws noise in the kernel: pass seed= (not generator=)")
    # One captured graph per configuration, replayed on every later call with a new x_T.
    # (The Philox seed and the conditioning tensors are part of the configuration.)
    key = (id(denoiser), tuple(shape), sampler, tuple(ts), tuple(betas.tolist()), eta, variance, prediction, clip,
           threshold, guidance, id(cond), id(uncond), seed, str(device), backend)
    if key not in _GRAPHS:
        static_x = x.clone()
        loop(static_x.clone())                  # warm up outside the capture: compile, allocate
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = loop(static_x)
        _GRAPHS[key] = (graph, static_x, static_out, denoiser, cond, uncond)   # keep the ids alive
    graph, static_x, static_out = _GRAPHS[key][:3]
    static_x.copy_(x)
    graph.replay()
    return static_out.clone()


_GRAPHS = {}


def _karras(denoiser, shape, sampler, steps, sigmas, generator, device, progress, backend=None):
    """Euler / Heun (Karras et al. 2022, Algorithm 1 without churn) on x0-predicting denoisers.
    The Euler step x + (s' - s)(x - D)/s = (s'/s) x + (1 - s'/s) D is the fused diffusion step
    with an x0 prediction; Heun's correction stays in PyTorch."""
    sigmas = karras_sigmas(steps) if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float64)
    x = torch.randn(shape, generator=generator, dtype=torch.float32).to(device) * float(sigmas[0])
    sig = lambda s: torch.full((shape[0],), float(s), device=device)
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, sig(s))
        d = (x - denoised) / s
        # (s0, s1) only enter through eps, which has weight 0 here
        x_next = diffusion_step(x, denoised, (1.0, 1.0, 1 - s_next / s, 0.0, s_next / s, 0.0), "x0",
                                backend=backend)
        if sampler == "heun" and s_next > 0:
            d_next = (x_next - denoiser(x_next, sig(s_next))) / s_next
            x_next = x + (s_next - s) * (d + d_next) / 2
        x = x_next
        if progress is not None:
            progress(i, x)
    return x


def _x0_from(out, x, a, prediction):
    """The x0 estimate of a denoiser output at abar = a."""
    if prediction == "eps":
        return (x - math.sqrt(1 - a) * out) / math.sqrt(a)
    if prediction == "x0":
        return out
    return math.sqrt(a) * x - math.sqrt(1 - a) * out


def _dpmpp2m(denoiser, shape, steps, betas, prediction, generator, device, progress):
    """DPM-Solver++(2M): a second-order multistep solver of the probability-flow ODE in
    lambda = log(alpha / sigma), using the x0 predictions of the last two steps."""
    betas = linear_betas() if betas is None else torch.as_tensor(betas, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0).tolist()
    ts = respaced_timesteps(len(abar), steps)
    x = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
    lam = lambda a: 0.5 * math.log(a / (1 - a))
    previous_x0, previous_h = None, None
    for i, t in enumerate(ts):
        a = abar[t]
        x0 = _x0_from(denoiser(x, torch.full((shape[0],), t, dtype=torch.long, device=device)), x, a, prediction)
        if i + 1 == len(ts):
            x = x0                                   # the last step lands on the denoised image
        else:
            a_next = abar[ts[i + 1]]
            h = lam(a_next) - lam(a)
            d = x0
            if previous_x0 is not None:
                r = previous_h / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * previous_x0
            x = math.sqrt((1 - a_next) / (1 - a)) * x - math.sqrt(a_next) * math.expm1(-h) * d
            previous_x0, previous_h = x0, h
        if progress is not None:
            progress(i, x)
    return x


def _annealed_langevin(score, shape, steps, sigmas, generator, device, progress, step_size=2e-5):
    """x += (a_i / 2) s(x, sigma_i) + sqrt(a_i) z, ``steps`` times per sigma_i, with
    a_i = step_size * sigma_i^2 / sigma_L^2 (NCSN).  Default sigmas: 10 geometric, 1 .. 0.01."""
    sigmas = (torch.logspace(0, -2, 10, dtype=torch.float64) if sigmas is None
              else torch.as_tensor(sigmas, dtype=torch.float64))
    x = torch.rand(shape, generator=generator, dtype=torch.float32).to(device) * 2 - 1
    for i, sigma in enumerate(sigmas.tolist()):
        a = step_size * sigma ** 2 / float(sigmas[-1]) ** 2
        s = torch.full((shape[0],), sigma, device=device)
        for _ in range(steps):
            z = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
            x = x + a / 2 * score(x, s) + math.sqrt(a) * z
        if progress is not None:
            progress(i, x)
    return x


def _langevin_corrector(score_fn, x, snr, steps, generator):
    """Song et al. 2021, Algorithm 4/5: step e = 2 (snr ||z|| / ||score||)^2 per sample."""
    for _ in range(steps):
        score = score_fn(x)
        z = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device)
        norm = lambda v: v.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
        e = 2 * (snr * norm(z) / norm(score).clamp(min=1e-12)) ** 2
        x = x + e * score + (2 * e).sqrt() * z
    return x


def _vp_corrector(denoiser, x, plan_entry, t_tensor, snr, steps, generator):
    """Langevin correction at the next step's noise level; score = -eps / sqrt(1 - abar)."""
    s1 = plan_entry[1][1]                                          # sqrt(1 - abar_t)
    return _langevin_corrector(lambda v: -denoiser(v, t_tensor) / s1, x, snr, steps, generator)


def _ve(score, shape, sampler, steps, sigmas, snr, generator, device, progress, corrector_steps=1):
    """VE SDE sampling over descending sigmas (default: geometric 50 .. 0.01)."""
    sigmas = (torch.logspace(math.log10(50), -2, steps, dtype=torch.float64) if sigmas is None
              else torch.as_tensor(sigmas, dtype=torch.float64)).tolist()
    x = torch.randn(shape, generator=generator, dtype=torch.float32).to(device) * sigmas[0]
    sig = lambda s: torch.full((shape[0],), s, device=device)
    for i, s in enumerate(sigmas):
        s_next = sigmas[i + 1] if i + 1 < len(sigmas) else 0.0
        if sampler == "pf_ode":
            x = x + (s_next - s) * (-s * score(x, sig(s)))
        else:
            x = _langevin_corrector(lambda v: score(v, sig(s)), x, snr, corrector_steps, generator)
            var = s ** 2 - s_next ** 2
            x = x + var * score(x, sig(s))
            if s_next > 0:
                x = x + math.sqrt(var) * torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
        if progress is not None:
            progress(i, x)
    return x


def _sgld(score, shape, steps, step_size, generator, device, progress):
    """x <- x + (a / 2) s(x) + sqrt(a) z from uniform [-1, 1] noise; s(x) = -grad E(x)."""
    x = torch.rand(shape, generator=generator, dtype=torch.float32).to(device) * 2 - 1
    for i in range(steps):
        z = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
        x = x + step_size / 2 * score(x) + math.sqrt(step_size) * z
        if progress is not None:
            progress(i, x)
    return x
