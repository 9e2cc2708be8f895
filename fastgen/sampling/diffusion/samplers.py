"""The sampling loops: ``sample`` and the sampler ``REGISTRY`` it dispatches through.

Every sampler's update is one ``fastgen.ops.diffusion_step`` (one Triton launch on the GPU)
with the coefficients of ``fastgen.sampling.diffusion.coefficients``; the Langevin corrector
adds one small reduction first (``score_noise_norms``: its step size follows the norms).

A sampler is registered as a ``Sampler``: ``build(options)`` turns the options of one
``sample`` call into a ``PreparedLoop`` -- x_T, drawn now, and ``loop(x_T, denoise)``, the
steps, which read nothing per call but x_T and the conditioning ``denoise`` carries.  That
split is what lets ``cuda_graph=True`` capture the loop once (``fastgen.sampling.graphs``) and
replay it with a new x_T and new cond / uncond tensors copied into the graph's input buffers.

Noise: with ``generator`` every step's noise is drawn from it on the host (reproducible, and
what the tests use to match the reference exactly); with ``seed`` (Triton backend) it is drawn
inside the kernel with Philox from (seed, offset) -- no host work per step, which is what a
captured loop needs.
"""
import dataclasses
import functools
import math
import weakref
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from fastgen.ops.diffusion_step import KeepCoefficients, LearnedVariance, StepCoefficients, diffusion_step, \
    score_noise_norms
from fastgen.sampling.diffusion.coefficients import (ddim_coefficients, ddpm_coefficients, denoised_coefficients,
                                                     dpmpp2m_coefficients, euler_coefficients,
                                                     heun_correction_coefficients, heun_keep, langevin_coefficients,
                                                     langevin_corrector_coefficients, pf_ode_coefficients,
                                                     ve_predictor_coefficients)
from fastgen.sampling.diffusion.schedules import geometric_sigmas, karras_sigmas, linear_betas, respaced_timesteps
from fastgen.sampling.graphs import GRAPHS, weights_version

VARIANCES = ("small", "large", "learned")
NCSN_STEP_SIZE = 2e-5      # annealed Langevin's step size at the smallest sigma (Song & Ermon 2019)


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """What one ``sample`` call asked for, as the samplers' ``build`` functions read it (see
    ``sample`` for each option's meaning)."""
    shape: Tuple[int, ...]                       # x: [B, ...]
    steps: int
    device: torch.device
    generator: Optional[torch.Generator]         # x_T, and step noise when ``seed`` is None
    seed: Optional[int]                          # step noise drawn in the kernel (Philox)
    backend: Optional[str]
    guidance: Optional[float]
    prediction: str
    clip: bool
    threshold: Optional[float]
    betas: Optional[Any]
    eta: float
    variance: str
    timesteps: Optional[Sequence[int]]
    sigmas: Optional[Any]
    snr: float
    corrector_steps: int
    step_size: float
    progress: Optional[Callable[[int, Tensor], None]]


class Denoise:
    """The denoiser as the loops call it.  ``denoise(x, t)``: the model output for x [B, ...] at
    t [B], with ``cond`` passed on, or -- with ``guidance`` -- one call on [x; x] with
    [cond; uncond] -> [2B, ...] (``diffusion_step`` combines the halves).  ``denoise(x)``: a
    score model of x alone (sgld), called without time or condition."""

    def __init__(self, model: Callable[..., Tensor], cond: Optional[Tensor], uncond: Optional[Tensor],
                 guidance: Optional[float]):
        self.model, self.cond, self.uncond, self.guidance = model, cond, uncond, guidance

    def __call__(self, x: Tensor, t: Optional[Tensor] = None) -> Tensor:
        if t is None:
            return self.model(x)
        if self.guidance is None:
            return self.model(x, t, self.cond) if self.cond is not None else self.model(x, t)
        xx, tt = torch.cat([x, x]), torch.cat([t, t])
        if self.cond is None:
            return self.model(xx, tt)
        return self.model(xx, tt, torch.cat([self.cond, self.uncond]))


class PreparedLoop(NamedTuple):
    """A sampler ready to run: x_T [B, ...] and loop(x_T, denoise) -> the final x [B, ...]."""
    x_T: Tensor
    loop: Callable[[Tensor, Denoise], Tensor]


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A registered sampler: ``build`` prepares its loop; ``check`` (optional) rejects options
    only this sampler cannot take, before anything is drawn."""
    build: Callable[[SamplingOptions], PreparedLoop]
    check: Optional[Callable[[SamplingOptions], None]] = None


class _StepNoise:
    """Where each fused step's z comes from: the host ``generator`` (an explicit tensor per draw),
    or Philox in the kernel from (seed, offset) with a fresh offset per draw.  A loop makes a
    new one per run, so every run (and a CUDA-graph capture) draws the same offsets."""

    def __init__(self, options: SamplingOptions):
        self.shape, self.generator, self.seed, self.device = options.shape, options.generator, options.seed, \
            options.device
        self.draws = 0

    def draw(self) -> Dict[str, Any]:
        """Keyword arguments for ``diffusion_step`` / ``score_noise_norms``: noise= or seed=, offset=."""
        if self.seed is not None:
            kw = dict(seed=self.seed, offset=self.draws * math.prod(self.shape))
        else:
            kw = dict(noise=torch.randn(self.shape, generator=self.generator, dtype=torch.float32).to(self.device))
        self.draws += 1
        return kw


def _normal_x_T(options: SamplingOptions) -> Tensor:
    return torch.randn(options.shape, generator=options.generator, dtype=torch.float32).to(options.device)


def _uniform_x_T(options: SamplingOptions) -> Tensor:
    return torch.rand(options.shape, generator=options.generator, dtype=torch.float32).to(options.device) * 2 - 1


def _per_sample(options: SamplingOptions, values: Sequence[float], dtype: Optional[torch.dtype] = None) -> list:
    """Each value as a [B] tensor on the device (the denoiser's t), made once, outside the loop."""
    return [torch.full((options.shape[0],), v, dtype=dtype, device=options.device) for v in values]


def langevin_corrector_step(x: Tensor, out: Tensor, s0: float, s1: float, prediction: str, snr: float,
                            noise: Optional[Tensor] = None, seed: Optional[int] = None, offset: int = 0,
                            guidance: Optional[float] = None, backend: Optional[str] = None) -> Tensor:
    """One Langevin corrector step (``langevin_corrector_coefficients``) for x [B, ...] and the
    model output ``out`` [B, ...] ([2B, ...] guided) at the level (s0, s1): the per-sample norms
    of the score and of z (one reduction; with ``seed`` the same Philox z the update then
    draws), then the fused update -> x [B, ...]."""
    norms = score_noise_norms(out, noise=noise, seed=seed, offset=offset, guidance=guidance, backend=backend)
    coefficients = langevin_corrector_coefficients(norms, snr, s0, s1, prediction)
    return diffusion_step(x, out, coefficients, prediction, guidance=guidance, noise=noise, seed=seed, offset=offset,
                          backend=backend)


# ------------------------------------------------------------------------------ samplers

def _ddpm_step(abar_t: float, abar_prev: float, options: SamplingOptions) -> StepCoefficients:
    return ddpm_coefficients(abar_t, abar_prev, options.variance)


def _ddim_step(abar_t: float, abar_prev: float, options: SamplingOptions) -> StepCoefficients:
    return ddim_coefficients(abar_t, abar_prev, options.eta)


def _respaced(options: SamplingOptions, step: Callable[[float, float, SamplingOptions], StepCoefficients],
              corrector: bool = False, learned_variance: bool = False) -> PreparedLoop:
    """DDPM ancestral / DDIM over respaced timesteps of ``betas``: ``step`` gives each step's
    coefficients; ``corrector`` (pc_vp) adds Langevin corrector steps at each next level;
    ``learned_variance``: whether variance='learned' (Improved DDPM) is allowed."""
    betas = linear_betas() if options.betas is None else torch.as_tensor(options.betas, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0).tolist()
    ts = (respaced_timesteps(len(abar), options.steps) if options.timesteps is None
          else [int(t) for t in options.timesteps])
    x = _normal_x_T(options)
    abar_prev = [abar[ts[i + 1]] if i + 1 < len(ts) else 1.0 for i in range(len(ts))]
    plan = [step(abar[t], prev, options) for t, prev in zip(ts, abar_prev)]
    t_tensors = _per_sample(options, ts, torch.long)
    learned = options.variance == "learned"
    log_variances = [None] * len(plan)    # learned variance: the two log-variances each step interpolates
    if learned:
        if not learned_variance:
            raise ValueError("variance='learned' is for the 'ddpm' sampler")
        for i, t in enumerate(ts):
            beta = 1 - abar[t] / abar_prev[i]
            small = beta * (1 - abar_prev[i]) / (1 - abar[t])
            log_variances[i] = LearnedVariance(math.log(max(small, 1e-20)), math.log(beta))
    kw = dict(clip=options.clip, guidance=options.guidance, threshold=options.threshold, backend=options.backend)

    def loop(x, denoise):
        noise = _StepNoise(options)
        for i, (coefficients, t) in enumerate(zip(plan, t_tensors)):
            out = denoise(x, t)
            channels = x.shape[1] * (2 if learned else 1)
            if tuple(out.shape[1:]) != (channels, *x.shape[2:]):
                raise ValueError(f"denoiser output has shape {tuple(out.shape)}, x has {tuple(x.shape)}"
                                 + (" (variance='learned' needs [prediction; v]: twice the channels)"
                                    if learned else ""))
            x = diffusion_step(x, out, coefficients, options.prediction, learned_variance=log_variances[i], **kw,
                               **(noise.draw() if coefficients.sigma else {}))
            if corrector and i + 1 < len(plan):
                level = plan[i + 1]                  # s0, s1 = sqrt(abar), sqrt(1 - abar) of the next level
                for _ in range(options.corrector_steps):
                    out = denoise(x, t_tensors[i + 1])
                    x = langevin_corrector_step(x, out, level.s0, level.s1, options.prediction, options.snr,
                                                guidance=options.guidance, backend=options.backend, **noise.draw())
            if options.progress is not None:
                options.progress(i, x)
        return x
    return PreparedLoop(x, loop)


def _karras(options: SamplingOptions, second_order: bool) -> PreparedLoop:
    """Euler / Heun (Karras et al. 2022, Algorithm 1 without churn) on x0-predicting denoisers.
    Heun's first stage keeps x + (h/2) d for its correction (``heun_correction_coefficients``)."""
    sigmas = (karras_sigmas(options.steps) if options.sigmas is None
              else torch.as_tensor(options.sigmas, dtype=torch.float64)).tolist()
    x = _normal_x_T(options) * sigmas[0]
    sig = _per_sample(options, sigmas)
    kw = dict(clip=options.clip, threshold=options.threshold, guidance=options.guidance, backend=options.backend)

    def loop(x, denoise):
        for i in range(len(sigmas) - 1):
            s, s_next = sigmas[i], sigmas[i + 1]
            heun = second_order and s_next > 0         # the last step onto sigma = 0 stays Euler
            step = diffusion_step(x, denoise(x, sig[i]), euler_coefficients(s, s_next), "x0",
                                  keep=heun_keep(s, s_next) if heun else None, **kw)
            if heun:
                x_next, half = step
                x = diffusion_step(x_next, denoise(x_next, sig[i + 1]), heun_correction_coefficients(s, s_next),
                                   "x0", aux=half, **kw)
            else:
                x = step
            if options.progress is not None:
                options.progress(i, x)
        return x
    return PreparedLoop(x, loop)


def _dpmpp2m(options: SamplingOptions) -> PreparedLoop:
    """DPM-Solver++(2M): a second-order multistep solver of the probability-flow ODE in
    lambda = log(alpha / sigma), using the x0 predictions of the last two steps
    (``dpmpp2m_coefficients``); each step keeps its x0 for the next."""
    betas = linear_betas() if options.betas is None else torch.as_tensor(options.betas, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0).tolist()
    ts = respaced_timesteps(len(abar), options.steps)
    x = _normal_x_T(options)
    t_tensors = _per_sample(options, ts, torch.long)
    kw = dict(clip=options.clip, threshold=options.threshold, guidance=options.guidance, backend=options.backend)
    keep_x0 = KeepCoefficients(k_x0=1.0, k_x=0.0)

    def loop(x, denoise):
        previous_x0, previous_h = None, None
        for i, t in enumerate(ts):
            out = denoise(x, t_tensors[i])
            if i + 1 == len(ts):                     # the last step lands on the denoised image
                x = diffusion_step(x, out, denoised_coefficients(abar[t]), options.prediction, **kw)
            else:
                step = dpmpp2m_coefficients(abar[t], abar[ts[i + 1]], previous_h)
                previous_h = step.h
                x, previous_x0 = diffusion_step(x, out, step.coefficients, options.prediction, aux=previous_x0,
                                                keep=keep_x0, **kw)
            if options.progress is not None:
                options.progress(i, x)
        return x
    return PreparedLoop(x, loop)


def _annealed_langevin(options: SamplingOptions) -> PreparedLoop:
    """x += (a_i / 2) s(x, sigma_i) + sqrt(a_i) z, ``steps`` times per sigma_i, with
    a_i = NCSN_STEP_SIZE * sigma_i^2 / sigma_L^2 (NCSN).  Default sigmas: 10 geometric, 1 .. 0.01."""
    sigmas = (geometric_sigmas(1.0, 0.01, 10) if options.sigmas is None
              else torch.as_tensor(options.sigmas, dtype=torch.float64)).tolist()
    x = _uniform_x_T(options)
    sig = _per_sample(options, sigmas)

    def loop(x, denoise):
        noise = _StepNoise(options)
        for i, sigma in enumerate(sigmas):
            coefficients = langevin_coefficients(NCSN_STEP_SIZE * sigma ** 2 / sigmas[-1] ** 2, sigma)
            for _ in range(options.steps):
                x = diffusion_step(x, denoise(x, sig[i]), coefficients, "score", guidance=options.guidance,
                                   backend=options.backend, **noise.draw())
            if options.progress is not None:
                options.progress(i, x)
        return x
    return PreparedLoop(x, loop)


def _ve_sigmas(options: SamplingOptions) -> list:
    """The VE SDE's descending sigmas (default: ``steps`` geometric, 50 .. 0.01)."""
    return (geometric_sigmas(50.0, 0.01, options.steps) if options.sigmas is None
            else torch.as_tensor(options.sigmas, dtype=torch.float64)).tolist()


def _pc_ve(options: SamplingOptions) -> PreparedLoop:
    """Predictor-corrector for the VE SDE (Song et al. 2021): at each sigma, ``corrector_steps``
    Langevin corrector steps at signal-to-noise ``snr``, then the reverse-diffusion predictor."""
    sigmas = _ve_sigmas(options)
    x = _normal_x_T(options) * sigmas[0]
    sig = _per_sample(options, sigmas)

    def loop(x, denoise):
        noise = _StepNoise(options)
        for i, s in enumerate(sigmas):
            s_next = sigmas[i + 1] if i + 1 < len(sigmas) else 0.0
            for _ in range(options.corrector_steps):
                x = langevin_corrector_step(x, denoise(x, sig[i]), 1.0, s, "score", options.snr,
                                            guidance=options.guidance, backend=options.backend, **noise.draw())
            coefficients = ve_predictor_coefficients(s, s_next)
            x = diffusion_step(x, denoise(x, sig[i]), coefficients, "score", guidance=options.guidance,
                               backend=options.backend, **(noise.draw() if coefficients.sigma else {}))
            if options.progress is not None:
                options.progress(i, x)
        return x
    return PreparedLoop(x, loop)


def _pf_ode(options: SamplingOptions) -> PreparedLoop:
    """Euler on the VE probability-flow ODE, dx/dsigma = -sigma s(x, sigma): deterministic."""
    sigmas = _ve_sigmas(options)
    x = _normal_x_T(options) * sigmas[0]
    sig = _per_sample(options, sigmas)

    def loop(x, denoise):
        for i, s in enumerate(sigmas):
            s_next = sigmas[i + 1] if i + 1 < len(sigmas) else 0.0
            x = diffusion_step(x, denoise(x, sig[i]), pf_ode_coefficients(s, s_next), "score",
                               guidance=options.guidance, backend=options.backend)
            if options.progress is not None:
                options.progress(i, x)
        return x
    return PreparedLoop(x, loop)


def _sgld(options: SamplingOptions) -> PreparedLoop:
    """x <- x + (a / 2) s(x) + sqrt(a) z from uniform [-1, 1] noise; s(x) = -grad E(x)."""
    x = _uniform_x_T(options)
    coefficients = langevin_coefficients(options.step_size)

    def loop(x, denoise):
        noise = _StepNoise(options)
        for i in range(options.steps):
            x = diffusion_step(x, denoise(x), coefficients, "score", backend=options.backend, **noise.draw())
            if options.progress is not None:
                options.progress(i, x)
        return x
    return PreparedLoop(x, loop)


def _check_sgld(options: SamplingOptions) -> None:
    if options.guidance is not None:
        raise ValueError("guidance is not supported by the 'sgld' sampler (its score model takes no condition)")


def _check_pc_vp(options: SamplingOptions) -> None:
    if options.prediction not in ("eps", "score"):
        raise ValueError(f"the 'pc_vp' corrector needs prediction='eps' (or 'score'), got {options.prediction!r}")


REGISTRY: Dict[str, Sampler] = {
    "ddpm": Sampler(functools.partial(_respaced, step=_ddpm_step, learned_variance=True)),
    "ddim": Sampler(functools.partial(_respaced, step=_ddim_step)),
    "dpmpp2m": Sampler(_dpmpp2m),
    "euler": Sampler(functools.partial(_karras, second_order=False)),
    "heun": Sampler(functools.partial(_karras, second_order=True)),
    "langevin": Sampler(_annealed_langevin),
    "pc_ve": Sampler(_pc_ve),
    "pc_vp": Sampler(functools.partial(_respaced, step=_ddpm_step, corrector=True), check=_check_pc_vp),
    "pf_ode": Sampler(_pf_ode),
    "sgld": Sampler(_sgld, check=_check_sgld),
}
SAMPLERS = tuple(REGISTRY)


# ------------------------------------------------------------------------------ sample

def _as_key(values) -> Optional[tuple]:
    return None if values is None else tuple(float(v) for v in torch.as_tensor(values).flatten().tolist())


def _graph_config(sampler: str, options: SamplingOptions, denoiser, inputs: Dict[str, Tensor]) -> tuple:
    """What a captured loop depends on besides its static inputs: every option (the per-step
    coefficients and the Philox seed are baked into the graph as kernel arguments), the static
    inputs' shapes and dtypes (never which tensors they are), and the denoiser's weight versions."""
    return (sampler, options.shape, options.steps, _as_key(options.betas), _as_key(options.sigmas),
            _as_key(options.timesteps), options.eta, options.variance, options.prediction, options.clip,
            options.threshold, options.guidance, options.seed, str(options.device), options.backend, options.snr,
            options.corrector_steps, options.step_size,
            tuple((name, tuple(t.shape), t.dtype, str(t.device)) for name, t in inputs.items()),
            weights_version(denoiser) if isinstance(denoiser, torch.nn.Module) else None)


@torch.no_grad()
def sample(denoiser: Callable[..., Tensor], shape: Sequence[int], sampler: str = "ddim", steps: int = 50,
           betas: Optional[Any] = None, eta: float = 0.0, variance: str = "small", prediction: str = "eps",
           clip: bool = False, guidance: Optional[float] = None, cond: Optional[Tensor] = None,
           uncond: Optional[Tensor] = None, generator: Optional[torch.Generator] = None, seed: Optional[int] = None,
           device: Optional[Any] = None, progress: Optional[Callable[[int, Tensor], None]] = None,
           cuda_graph: bool = False, sigmas: Optional[Any] = None, backend: Optional[str] = None, snr: float = 0.16,
           corrector_steps: int = 1, step_size: float = 1e-3, threshold: Optional[float] = None,
           timesteps: Optional[Sequence[int]] = None) -> Tensor:
    """Sample images of ``shape`` [B, ...] from ``denoiser``; returns the final x [B, ...].

    The denoiser protocol: ``denoiser(x, t, cond=None)`` returns the model output for x [B, ...]
    at timesteps t [B] (integer DDPM steps; sigmas for the Karras and score samplers), read as
    ``prediction='eps'|'x0'|'v'`` (score samplers: the score).  With ``guidance=w`` the loop
    calls the denoiser once per step on [x; x] with [cond; uncond] and combines
    (1 + w) cond - w uncond inside the fused step.

    sampler (``SAMPLERS``): 'ddpm' (ancestral; ``variance`` 'small'|'large'|'learned' -- the
    denoiser then returns [prediction; v] on the channels, Improved DDPM) or 'ddim' (``eta``)
    over ``steps`` respaced steps of ``betas`` (default: 1000 linear); 'dpmpp2m'
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
    seed): the whole loop is captured once per configuration (``fastgen.sampling.graphs``) and
    replayed; x_T, cond and uncond (tensors) are copied into the graph's inputs on every call,
    so new conditioning replays the same graph.
    progress(i, x) is called after each step (not under cuda_graph).
    """
    spec = REGISTRY.get(sampler)
    if spec is None:
        raise ValueError(f"sampler must be one of {tuple(REGISTRY)}, got {sampler!r}")
    if guidance is not None and (cond is None) != (uncond is None):
        raise ValueError("classifier-free guidance needs both cond and uncond (or neither)")
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(seed)     # x_T from the seed too
    options = SamplingOptions(
        shape=tuple(shape), steps=steps, device=device, generator=generator, seed=seed, backend=backend,
        guidance=guidance, prediction=prediction, clip=clip, threshold=threshold, betas=betas, eta=eta,
        variance=variance, timesteps=timesteps, sigmas=sigmas, snr=snr, corrector_steps=corrector_steps,
        step_size=step_size, progress=None if cuda_graph else progress)
    if spec.check is not None:
        spec.check(options)
    x_T, loop = spec.build(options)
    if not (cuda_graph and GRAPHS.supports(device)):
        return loop(x_T, Denoise(denoiser, cond, uncond, guidance))
    if seed is None:
        raise ValueError("cuda_graph=True draws noise in the kernel: pass seed= (not generator=)")
    for name, value in (("cond", cond), ("uncond", uncond)):
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"cuda_graph=True copies {name} into the graph's input buffers: {name} must be a "
                            f"tensor, got {type(value).__name__}")
    # The captured loop reads x_T, cond and uncond only from the graph's static buffers (``run``):
    # a later call with a new x_T or new conditioning tensors of the same shapes replays it.
    inputs = {name: value for name, value in (("x_T", x_T), ("cond", cond), ("uncond", uncond)) if value is not None}
    model = weakref.ref(denoiser)       # the cache holds owners weakly: so must what it keeps of ``run``

    def run(buffers: Dict[str, Tensor]) -> Tensor:
        return loop(buffers["x_T"], Denoise(model(), buffers.get("cond"), buffers.get("uncond"), guidance))

    config = _graph_config(sampler, options, denoiser, inputs)
    return GRAPHS.replay(denoiser, config, inputs, run).clone()
