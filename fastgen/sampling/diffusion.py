"""Diffusion and score-based sampling loops with one fused kernel per step.

Every sampler's update -- DDPM / DDIM, Euler / Heun on Karras sigmas, DPM-Solver++(2M),
annealed Langevin, predictor-corrector (VE and VP), the probability-flow ODE and SGLD -- is
one ``fastgen.ops.diffusion_step`` (one Triton launch on the GPU): the generic
x_next = c_x0 x0 + c_eps eps + c_x x + c_aux aux + sigma z with the sampler's coefficients
(the ``*_coefficients`` functions below state each sampler's math).  The Langevin corrector
adds one small reduction first (``score_noise_norms``: its step size follows the norms).

The denoiser protocol: ``denoiser(x, t, cond=None)`` returns the model output for x [B, ...]
at timesteps t [B] (integer DDPM steps; sigmas for the Karras and score samplers), read as
``prediction='eps'|'x0'|'v'`` (score samplers: the score).  With ``guidance=w`` the loop
calls the denoiser once per step on [x; x] with [cond; uncond] and combines
(1 + w) cond - w uncond inside the fused step.

Noise: with ``generator`` every step's noise is drawn from it on the host (reproducible, and
what the tests use to match the reference exactly); with ``seed`` (Triton backend) it is
drawn inside the kernel with Philox from (seed, offset) -- no host work per step, which is what
``cuda_graph=True`` (capture the whole loop, denoiser included, as one CUDA graph) needs.
"""
import math

import numpy as np
import torch

from fastgen.ops.diffusion_step import diffusion_step, score_noise_norms

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


def euler_coefficients(s, s_next):
    """Karras Euler step on an x0 model D: x + (s' - s)(x - D)/s = (s'/s) x + (1 - s'/s) D."""
    return (1.0, 1.0, 1 - s_next / s, 0.0, s_next / s, 0.0)


def heun_keep(s, s_next):
    """What Heun's first stage keeps: x + (h/2) d with h = s' - s, d = (x - D)/s, as (k_x0, k_x)."""
    h = s_next - s
    return (-h / (2 * s), 1 + h / (2 * s))


def heun_correction_coefficients(s, s_next):
    """Heun's correction x + (h/2)(d + d'), d' = (x' - D')/s', on x = x' (the Euler step),
    out = D' and aux = x + (h/2) d (``heun_keep``): aux + (h / 2s') (x' - D')."""
    h = s_next - s
    return (1.0, 1.0, -h / (2 * s_next), 0.0, h / (2 * s_next), 0.0, 1.0)


def dpmpp2m_coefficients(abar_t, abar_next, h_previous=None):
    """DPM-Solver++(2M) (Lu et al. 2022) from abar_t to abar_next, lambda = log(alpha/sigma),
    h = lambda' - lambda, r = h_previous / h:
    x' = sqrt((1 - abar')/(1 - abar)) x - sqrt(abar') expm1(-h) D,
    D = (1 + 1/(2r)) x0 - (1/(2r)) x0_previous (D = x0 on the first step); aux = x0_previous.
    -> (coefficients, h)."""
    lam = lambda a: 0.5 * math.log(a / (1 - a))
    h = lam(abar_next) - lam(abar_t)
    phi = -math.sqrt(abar_next) * math.expm1(-h)
    c_x = math.sqrt((1 - abar_next) / (1 - abar_t))
    s0, s1 = math.sqrt(abar_t), math.sqrt(1 - abar_t)
    if h_previous is None:
        return (s0, s1, phi, 0.0, c_x, 0.0, 0.0), h
    r = h_previous / h
    return (s0, s1, phi * (1 + 1 / (2 * r)), 0.0, c_x, 0.0, -phi / (2 * r)), h


def langevin_coefficients(step, sigma=1.0):
    """One Langevin step on a score model, x + (a/2) s + sqrt(a) z with a = ``step``; read as
    prediction 'score' at s1 = sigma (eps = -sigma s): c_eps = -a / (2 sigma)."""
    return (1.0, sigma, 0.0, -step / (2 * sigma), 1.0, math.sqrt(step))


def ve_predictor_coefficients(s, s_next):
    """Reverse-diffusion predictor of the VE SDE: x + (s^2 - s'^2) score + sqrt(s^2 - s'^2) z
    (no noise onto s' = 0); prediction 'score' at s1 = s."""
    var = s ** 2 - s_next ** 2
    return (1.0, s, 0.0, -var / s, 1.0, math.sqrt(var) if s_next > 0 else 0.0)


def pf_ode_coefficients(s, s_next):
    """Euler on the VE probability-flow ODE dx/dsigma = -sigma score: x + (s' - s)(-s score)
    = x + (s' - s) eps with eps = -s score (prediction 'score' at s1 = s)."""
    return (1.0, s, 0.0, s_next - s, 1.0, 0.0)


def langevin_corrector_coefficients(norms, snr, s0, s1, prediction):
    """Song et al. 2021, Algorithm 4/5: x + e score + sqrt(2e) z per sample with
    e = 2 (snr ||z|| / ||score||)^2; norms [B, 2] = (||out||, ||z||) from ``score_noise_norms``.
    score = -eps / s1, so ||score|| = ||out|| / s1 for an eps model and ||out|| for a score model.
    -> [B, 7] per-sample coefficients (computed on the device: no host sync)."""
    score_norm = norms[:, 0] / s1 if prediction == "eps" else norms[:, 0]
    e = 2 * (snr * norms[:, 1] / score_norm.clamp(min=1e-12)) ** 2
    one, zero = torch.ones_like(e), torch.zeros_like(e)
    return torch.stack([one * s0, one * s1, zero, -e / s1, one, (2 * e).sqrt(), zero], dim=1)


def _call(denoiser, x, t, cond, uncond, guidance):
    if guidance is None:
        return denoiser(x, t, cond) if cond is not None else denoiser(x, t)
    both = torch.cat([cond, uncond]) if cond is not None else None
    xx, tt = torch.cat([x, x]), torch.cat([t, t])
    return denoiser(xx, tt, both) if both is not None else denoiser(xx, tt)


class _StepNoise:
    """Where each fused step's z comes from: the host ``generator`` (an explicit tensor per draw),
    or Philox in the kernel from (seed, offset) with a fresh offset per draw.  A loop makes a
    new one per run, so every run (and a CUDA-graph capture) draws the same offsets."""

    def __init__(self, shape, generator, seed, device):
        self.shape, self.generator, self.seed, self.device = shape, generator, seed, device
        self.draws = 0

    def draw(self):
        """Keyword arguments for ``diffusion_step`` / ``score_noise_norms``: noise= or seed=, offset=."""
        if self.seed is not None:
            kw = dict(seed=self.seed, offset=self.draws * math.prod(self.shape))
        else:
            kw = dict(noise=torch.randn(self.shape, generator=self.generator, dtype=torch.float32).to(self.device))
        self.draws += 1
        return kw


def _as_key(values):
    return None if values is None else tuple(float(v) for v in torch.as_tensor(values).flatten().tolist())


@torch.no_grad()
def sample(denoiser, shape, sampler="ddim", steps=50, betas=None, eta=0.0, variance="small", prediction="eps",
           clip=False, guidance=None, cond=None, uncond=None, generator=None, seed=None, device=None,
           progress=None, cuda_graph=False, sigmas=None, backend=None, snr=0.16, corrector_steps=1,
           step_size=1e-3, threshold=None, timesteps=None):
    """Sample images of ``shape`` [B, ...] from ``denoiser``; returns the final x.

    sampler: 'ddpm' (ancestral; ``variance`` 'small'|'large'|'learned' -- the denoiser then
    returns [prediction; v] on the channels, Improved DDPM) or 'ddim' (``eta``) over
    ``steps`` respaced steps of ``betas`` (default: 1000 linear); 'dpmpp2m'
    (DPM-Solver++(2M), Lu et al. 2022) on the same schedule; 'euler' / 'heun' over Karras
    ``sigmas`` (default: ``karras_sigmas(steps)``; the denoiser gets sigma as t and must
    predict x0); 'langevin' (annealed Langevin dynamics, Song & Ermon 2019: the denoiser is
    a score model s(x, sigma), ``sigmas`` descending, ``steps`` per sigma, x += (a/2) s + sqrt(a) z,
    a = 2e-5 sigma^2 / sigma_L^2); 'pc_ve' (predictor-corrector for the VE SDE, Song et al.
    2021: ``corrector_steps`` Langevin corrector steps at signal-to-noise ``snr``, then the
    reverse-diffusion predictor, over geometric ``sigmas``; score model s(x, sigma)); 'pc_vp'
    (the same for the VP SDE: the fused DDPM step as predictor, eps model); 'pf_ode' (Euler on
    the VE probability-flow ODE, dx/dsigma = -sigma s(x, sigma)); 'sgld' (stochastic gradient
    Langevin dynamics for an energy model, x += (step_size / 2) s(x) + sqrt(step_size) z,
    s = -grad E, ``steps`` steps; the denoiser is called as s(x)).  Every step's update is one
    fused kernel on the Triton backend.
    clip: clamp each step's x0 estimate to [-1, 1]; threshold=p: Imagen's dynamic thresholding
    instead (ddpm, ddim, dpmpp2m, euler, heun).  timesteps: an explicit descending list instead
    of the even respacing (ddpm/ddim/pc_vp).  guidance: every sampler but sgld.
    generator: x_T and every step's noise drawn on the host; seed: step noise drawn in the
    kernel (Triton backend), and x_T from ``torch.Generator().manual_seed(seed)`` unless a
    generator is given -- the same seed gives the same samples.  cuda_graph=True (CUDA, with
    seed): the whole loop is captured once per configuration and replayed.
    progress(i, x) is called after each step (not under cuda_graph).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if guidance is not None and (cond is None) != (uncond is None):
        raise ValueError("classifier-free guidance needs both cond and uncond (or neither)")
    if guidance is not None and sampler == "sgld":
        raise ValueError("guidance is not supported by the 'sgld' sampler (its score model takes no condition)")
    if sampler == "pc_vp" and prediction not in ("eps", "score"):
        raise ValueError(f"the 'pc_vp' corrector needs prediction='eps' (or 'score'), got {prediction!r}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(seed)     # x_T from the seed too
    call = lambda x, t: _call(denoiser, x, t, cond, uncond, guidance)
    common = dict(shape=shape, generator=generator, seed=seed, device=device, backend=backend, guidance=guidance,
                  progress=None if cuda_graph else progress)
    if sampler in ("euler", "heun"):
        x, loop = _karras(call, sampler, steps, sigmas, clip, threshold, **common)
    elif sampler == "langevin":
        x, loop = _annealed_langevin(call, steps, sigmas, **common)
    elif sampler == "dpmpp2m":
        x, loop = _dpmpp2m(call, steps, betas, prediction, clip, threshold, **common)
    elif sampler in ("pc_ve", "pf_ode"):
        x, loop = _ve(call, sampler, steps, sigmas, snr, corrector_steps, **common)
    elif sampler == "sgld":
        x, loop = _sgld(denoiser, steps, step_size, **common)
    else:
        x, loop = _ddpm_ddim(call, sampler, steps, betas, eta, variance, prediction, clip, threshold, timesteps, snr,
                             corrector_steps, **common)

    if not (cuda_graph and device.type == "cuda"):
        return loop(x)
    if seed is None:
        raise ValueError("cuda_graph=True draws noise in the kernel: pass seed= (not generator=)")
    # One captured graph per configuration, replayed on every later call with a new x_T.  The
    # per-step coefficients are kernel arguments (baked into the graph), the corrector's step
    # sizes device tensors; the Philox seed and the conditioning tensors are part of the key.
    key = (id(denoiser), tuple(shape), sampler, steps, _as_key(betas), _as_key(sigmas), _as_key(timesteps), eta,
           variance, prediction, clip, threshold, guidance, id(cond), id(uncond), seed, str(device), backend, snr,
           corrector_steps, step_size)
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


def _ddpm_ddim(call, sampler, steps, betas, eta, variance, prediction, clip, threshold, timesteps, snr,
               corrector_steps, shape, generator, seed, device, backend, guidance, progress):
    """DDPM ancestral / DDIM (and pc_vp: DDPM predictor + Langevin corrector at the next level)."""
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
        noise = _StepNoise(shape, generator, seed, device)
        for i, ((t, coefficients), t_tensor) in enumerate(zip(plan, t_tensors)):
            out = call(x, t_tensor)
            channels = x.shape[1] * (2 if variance == "learned" else 1)
            if tuple(out.shape[1:]) != (channels, *x.shape[2:]):
                raise ValueError(f"denoiser output has shape {tuple(out.shape)}, x has {tuple(x.shape)}"
                                 + (" (variance='learned' needs [prediction; v]: twice the channels)"
                                    if variance == "learned" else ""))
            x = diffusion_step(x, out, coefficients, prediction, clip, guidance, learned_variance=log_variances[i],
                               threshold=threshold, backend=backend, **(noise.draw() if coefficients[5] else {}))
            if sampler == "pc_vp" and i + 1 < len(plan):
                s0, s1 = plan[i + 1][1][:2]                   # sqrt(abar), sqrt(1 - abar) of the next level
                for _ in range(corrector_steps):
                    out = call(x, t_tensors[i + 1])
                    x = langevin_corrector_step(x, out, s0, s1, prediction, snr, guidance=guidance, backend=backend,
                                                **noise.draw())
            if progress is not None:
                progress(i, x)
        return x
    return x, loop


def langevin_corrector_step(x, out, s0, s1, prediction, snr, noise=None, seed=None, offset=0, guidance=None,
                            backend=None):
    """One Langevin corrector step (``langevin_corrector_coefficients``) for x [B, ...] and the
    model output ``out`` at the level (s0, s1): the per-sample norms of the score and of z (one
    reduction; with ``seed`` the same Philox z the update then draws), then the fused update."""
    norms = score_noise_norms(out, noise=noise, seed=seed, offset=offset, guidance=guidance, backend=backend)
    coefficients = langevin_corrector_coefficients(norms, snr, s0, s1, prediction)
    return diffusion_step(x, out, coefficients, prediction, guidance=guidance, noise=noise, seed=seed, offset=offset,
                          backend=backend)


def _karras(call, sampler, steps, sigmas, clip, threshold, shape, generator, seed, device, backend, guidance,
            progress):
    """Euler / Heun (Karras et al. 2022, Algorithm 1 without churn) on x0-predicting denoisers.
    Heun's first stage keeps x + (h/2) d for its correction (``heun_correction_coefficients``)."""
    sigmas = (karras_sigmas(steps) if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float64)).tolist()
    x = torch.randn(shape, generator=generator, dtype=torch.float32).to(device) * sigmas[0]
    sig = [torch.full((shape[0],), s, device=device) for s in sigmas]
    kw = dict(clip=clip, threshold=threshold, guidance=guidance, backend=backend)

    def loop(x):
        for i in range(len(sigmas) - 1):
            s, s_next = sigmas[i], sigmas[i + 1]
            heun = sampler == "heun" and s_next > 0
            step = diffusion_step(x, call(x, sig[i]), euler_coefficients(s, s_next), "x0",
                                  keep=heun_keep(s, s_next) if heun else None, **kw)
            if heun:
                x_next, half = step
                x = diffusion_step(x_next, call(x_next, sig[i + 1]), heun_correction_coefficients(s, s_next), "x0",
                                   aux=half, **kw)
            else:
                x = step
            if progress is not None:
                progress(i, x)
        return x
    return x, loop


def _dpmpp2m(call, steps, betas, prediction, clip, threshold, shape, generator, seed, device, backend, guidance,
             progress):
    """DPM-Solver++(2M): a second-order multistep solver of the probability-flow ODE in
    lambda = log(alpha / sigma), using the x0 predictions of the last two steps
    (``dpmpp2m_coefficients``); each step keeps its x0 for the next."""
    betas = linear_betas() if betas is None else torch.as_tensor(betas, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0).tolist()
    ts = respaced_timesteps(len(abar), steps)
    x = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
    t_tensors = [torch.full((shape[0],), t, dtype=torch.long, device=device) for t in ts]
    kw = dict(clip=clip, threshold=threshold, guidance=guidance, backend=backend)

    def loop(x):
        previous_x0, previous_h = None, None
        for i, t in enumerate(ts):
            a = abar[t]
            out = call(x, t_tensors[i])
            if i + 1 == len(ts):                     # the last step lands on the denoised image
                x = diffusion_step(x, out, (math.sqrt(a), math.sqrt(1 - a), 1.0, 0.0, 0.0, 0.0), prediction, **kw)
            else:
                coefficients, previous_h = dpmpp2m_coefficients(a, abar[ts[i + 1]], previous_h)
                x, previous_x0 = diffusion_step(x, out, coefficients, prediction, aux=previous_x0, keep=(1.0, 0.0),
                                                **kw)
            if progress is not None:
                progress(i, x)
        return x
    return x, loop


def _annealed_langevin(call, steps, sigmas, shape, generator, seed, device, backend, guidance, progress,
                       step_size=2e-5):
    """x += (a_i / 2) s(x, sigma_i) + sqrt(a_i) z, ``steps`` times per sigma_i, with
    a_i = step_size * sigma_i^2 / sigma_L^2 (NCSN).  Default sigmas: 10 geometric, 1 .. 0.01."""
    sigmas = (torch.logspace(0, -2, 10, dtype=torch.float64) if sigmas is None
              else torch.as_tensor(sigmas, dtype=torch.float64)).tolist()
    x = torch.rand(shape, generator=generator, dtype=torch.float32).to(device) * 2 - 1
    sig = [torch.full((shape[0],), s, device=device) for s in sigmas]

    def loop(x):
        noise = _StepNoise(shape, generator, seed, device)
        for i, sigma in enumerate(sigmas):
            coefficients = langevin_coefficients(step_size * sigma ** 2 / sigmas[-1] ** 2, sigma)
            for _ in range(steps):
                x = diffusion_step(x, call(x, sig[i]), coefficients, "score", guidance=guidance, backend=backend,
                                   **noise.draw())
            if progress is not None:
                progress(i, x)
        return x
    return x, loop


def _ve(call, sampler, steps, sigmas, snr, corrector_steps, shape, generator, seed, device, backend, guidance,
        progress):
    """VE SDE sampling over descending sigmas (default: geometric 50 .. 0.01): 'pc_ve'
    (Langevin corrector, then reverse-diffusion predictor) or 'pf_ode' (Euler on the ODE)."""
    sigmas = (torch.logspace(math.log10(50), -2, steps, dtype=torch.float64) if sigmas is None
              else torch.as_tensor(sigmas, dtype=torch.float64)).tolist()
    x = torch.randn(shape, generator=generator, dtype=torch.float32).to(device) * sigmas[0]
    sig = [torch.full((shape[0],), s, device=device) for s in sigmas]
    kw = dict(guidance=guidance, backend=backend)

    def loop(x):
        noise = _StepNoise(shape, generator, seed, device)
        for i, s in enumerate(sigmas):
            s_next = sigmas[i + 1] if i + 1 < len(sigmas) else 0.0
            if sampler == "pf_ode":
                x = diffusion_step(x, call(x, sig[i]), pf_ode_coefficients(s, s_next), "score", **kw)
            else:
                for _ in range(corrector_steps):
                    x = langevin_corrector_step(x, call(x, sig[i]), 1.0, s, "score", snr, guidance=guidance,
                                                backend=backend, **noise.draw())
                coefficients = ve_predictor_coefficients(s, s_next)
                x = diffusion_step(x, call(x, sig[i]), coefficients, "score", **kw,
                                   **(noise.draw() if coefficients[5] else {}))
            if progress is not None:
                progress(i, x)
        return x
    return x, loop


def _sgld(score, steps, step_size, shape, generator, seed, device, backend, guidance, progress):
    """x <- x + (a / 2) s(x) + sqrt(a) z from uniform [-1, 1] noise; s(x) = -grad E(x)."""
    x = torch.rand(shape, generator=generator, dtype=torch.float32).to(device) * 2 - 1
    coefficients = langevin_coefficients(step_size)

    def loop(x):
        noise = _StepNoise(shape, generator, seed, device)
        for i in range(steps):
            x = diffusion_step(x, score(x), coefficients, "score", backend=backend, **noise.draw())
            if progress is not None:
                progress(i, x)
        return x
    return x, loop
