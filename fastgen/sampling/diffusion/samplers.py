"""The sampling loops: ``sample`` and the sampler ``REGISTRY`` it dispatches through.

Every sampler's update is one ``fastgen.ops.diffusion_step`` (one Triton launch on the GPU)
with the coefficients of ``fastgen.sampling.diffusion.coefficients``; the Langevin corrector
adds two small launches first (``corrector_coefficients``: the per-sample norms, then its step
sizes from them, written into a workspace the loop allocates once per run) -- 3 launches and no
other op per corrector step (was 3 + 17 small torch ops building the [B, 7] rows).

No per-step work but that launch (``tests/test_launch_budgets.py`` counts it): every step
writes into buffers the loop allocates once per run (``_PingPong``: two for x, two more for
the kept tensor of DPM-Solver++ and Heun, alternating so that no step writes what it reads),
and the denoiser's t for every step is one table [steps, B] made before the loop, each step
passing a row of it (a view).

A sampler is registered as a ``Sampler``: ``build(options)`` turns the options of one
``sample`` call into a ``PreparedLoop`` -- x_T (given, or drawn now) and ``loop(x_T, denoise)``,
the steps, which read nothing per call but x_T and the conditioning ``denoise`` carries.  That
split is what lets ``cuda_graph=True`` capture the loop once (``fastgen.sampling.graphs``) and
replay it with a new x_T and new cond / uncond tensors copied into the graph's input buffers.
A ``Sampler`` also lists the sampler-specific arguments of ``sample`` it reads and the
predictions it can read: ``sample`` refuses any other, naming the argument and the sampler,
so no argument is silently ignored.

Noise: with ``generator`` every step's noise is drawn from it on the host (reproducible, and
what the tests use to match the reference exactly); with ``seed`` (Triton backend) it is drawn
inside the kernel with Philox from (seed, offset) -- no host work per step, which is what a
captured loop needs.  Host noise is drawn in float32 whatever the ``dtype`` (and cast for
float64), so every dtype starts from the same x_T and adds the same z for one generator.
"""
import dataclasses
import functools
import math
import weakref
from typing import Any, Callable, Dict, FrozenSet, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from fastgen.ops.diffusion_step import CorrectorWorkspace, KeepCoefficients, KeptStep, LearnedVariance, \
    StepCoefficients, corrector_coefficients, corrector_workspace, diffusion_step
from fastgen.sampling.diffusion import checks
from fastgen.sampling.diffusion.coefficients import (ddim_coefficients, ddpm_coefficients, denoised_coefficients,
                                                     dpmpp2m_coefficients, euler_coefficients,
                                                     heun_correction_coefficients, heun_keep, langevin_coefficients,
                                                     pf_ode_coefficients,
                                                     sigma_read, ve_predictor_coefficients)
from fastgen.sampling.diffusion.schedules import (SPACINGS, abar_of, check_betas, check_timesteps, geometric_sigmas,
                                                  karras_sigmas, karras_sigmas_of, linear_betas, respaced_timesteps,
                                                  schedule_sigmas)
from fastgen.sampling.graphs import GRAPHS, weights_version

VARIANCES = ("small", "large", "learned")
PREDICTIONS = ("eps", "x0", "v", "score")
NCSN_STEP_SIZE = 2e-5      # annealed Langevin's step size at the smallest sigma (Song & Ermon 2019)
DEFAULT_STEPS = 50


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """What one ``sample`` call asked for, checked and with the defaults filled in, as the
    samplers' ``build`` functions read it (see ``sample`` for each option's meaning)."""
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
    betas: Optional[Tensor]                      # float64 [T], checked; None: the sampler's default
    eta: float
    variance: str
    timesteps: Optional[Tuple[int, ...]]         # checked: descending, in range
    sigmas: Optional[Tensor]                     # float64, checked: decreasing
    snr: float
    corrector_steps: int
    step_size: float
    progress: Optional[Callable[[int, Tensor], None]]
    dtype: torch.dtype = torch.float32
    spacing: Optional[str] = None
    x_T: Optional[Tensor] = None                 # the starting sample, on device, in dtype


class Denoise:
    """The denoiser as the loops call it.  ``denoise(x, t)``: the model output for x [B, ...] at
    t [B], with ``cond`` passed on, or -- with ``guidance`` (which ``sample`` accepts only with
    both cond and uncond) -- one call on [x; x] with [cond; uncond] -> [2B, ...]
    (``diffusion_step`` combines the halves); t may then already be [t; t] [2B] (the loops pass
    rows of a doubled timestep table), and [cond; uncond] is joined once, when this is made
    (inside the loop: a captured graph joins its static buffers on every replay), so a guided
    step's only extra op is [x; x].  ``denoise(x)``: a score model of x alone (sgld), called
    without time or condition."""

    def __init__(self, model: Callable[..., Tensor], cond: Optional[Tensor], uncond: Optional[Tensor],
                 guidance: Optional[float]):
        self.model, self.cond, self.uncond, self.guidance = model, cond, uncond, guidance
        self.both = torch.cat([cond, uncond]) if guidance is not None else None

    def __call__(self, x: Tensor, t: Optional[Tensor] = None) -> Tensor:
        if t is None:
            return self.model(x)
        if self.guidance is None:
            return self.model(x, t, self.cond) if self.cond is not None else self.model(x, t)
        if t.shape[0] != 2 * x.shape[0]:
            t = torch.cat([t, t])
        return self.model(torch.cat([x, x]), t, self.both)


class PreparedLoop(NamedTuple):
    """A sampler ready to run: x_T [B, ...] and loop(x_T, denoise) -> the final x [B, ...]."""
    x_T: Tensor
    loop: Callable[[Tensor, Denoise], Tensor]


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A registered sampler: ``build`` prepares its loop; ``check`` (optional) rejects options
    only this sampler cannot take, before anything is drawn.  ``arguments``: the
    sampler-specific arguments of ``sample`` it reads (``OPTIONAL_ARGUMENTS``; any other one
    given is refused); ``predictions``: what it can read the denoiser's output as, and
    ``prediction`` its default."""
    build: Callable[[SamplingOptions], PreparedLoop]
    check: Optional[Callable[[SamplingOptions], None]] = None
    arguments: FrozenSet[str] = frozenset()
    predictions: Tuple[str, ...] = PREDICTIONS
    prediction: str = "eps"


# The arguments of ``sample`` that only some samplers read.
OPTIONAL_ARGUMENTS = ("betas", "eta", "variance", "timesteps", "spacing", "sigmas", "clip", "threshold", "guidance",
                      "cond", "uncond", "snr", "corrector_steps", "step_size")


class _StepNoise:
    """Where each fused step's z comes from: the host ``generator`` (an explicit tensor per draw),
    or Philox in the kernel from (seed, offset) with a fresh offset per draw.  A loop makes a
    new one per run, so every run (and a CUDA-graph capture) draws the same offsets."""

    def __init__(self, options: SamplingOptions):
        self.shape, self.generator, self.seed, self.device = options.shape, options.generator, options.seed, \
            options.device
        # float32 draws (the same z for every dtype), read in float64 by float64 steps
        self.dtype = torch.float64 if options.dtype == torch.float64 else torch.float32
        self.draws = 0

    def draw(self) -> Dict[str, Any]:
        """Keyword arguments for ``diffusion_step`` / ``score_noise_norms``: noise= or seed=, offset=."""
        if self.seed is not None:
            kw = dict(seed=self.seed, offset=self.draws * math.prod(self.shape))
        else:
            z = torch.randn(self.shape, generator=self.generator, dtype=torch.float32)
            kw = dict(noise=z.to(self.device, self.dtype))
        self.draws += 1
        return kw


def _normal_x_T(options: SamplingOptions, scale: float = 1.0) -> Tensor:
    """x_T: the given one as it is, else standard normal (times ``scale``, the first sigma of
    the samplers over sigmas), drawn in float32 from the generator."""
    if options.x_T is not None:
        return options.x_T
    x = torch.randn(options.shape, generator=options.generator, dtype=torch.float32).to(options.device, options.dtype)
    return x * scale if scale != 1.0 else x


def _uniform_x_T(options: SamplingOptions) -> Tensor:
    if options.x_T is not None:
        return options.x_T
    x = torch.rand(options.shape, generator=options.generator, dtype=torch.float32).to(options.device, options.dtype)
    return x * 2 - 1


def _per_sample(options: SamplingOptions, values: Sequence[float], dtype: Optional[torch.dtype] = None) -> Tensor:
    """The denoiser's t for every step: one table [len(values), B] on the device, row i = value
    i for each sample, made once outside the loop (a few ops however many steps); step i passes
    the row ``table[i]``, a view -- nothing per step.  With guidance the rows are [t; t] [2B],
    what the guided call on [x; x] takes (``Denoise``).  Noise levels (no ``dtype``) are
    float32, or float64 when sampling in float64 (each value rounded as ``torch.full`` would)."""
    if dtype is None:
        dtype = torch.float64 if options.dtype == torch.float64 else torch.float32
    column = torch.tensor(list(values), dtype=dtype)
    batch = options.shape[0] * (2 if options.guidance is not None else 1)
    return column[:, None].expand(-1, batch).contiguous().to(options.device)


class _PingPong:
    """Two buffers like x that a loop's steps write in turn (``diffusion_step(..., into=)``): a
    step reads the buffer the previous one wrote and writes the other, so no step writes what
    it reads (the op refuses that) and the loop allocates nothing per step.  Made inside
    ``loop``, once per run: under ``cuda_graph=True`` the captured graph owns them (the same
    memory on every replay), and every run returns an x of its own.  With ``progress`` there
    are none (``next`` gives None: the steps allocate), so the callback gets an x it may keep."""

    def __init__(self, like: Tensor, options: SamplingOptions):
        self.buffers = None if options.progress is not None else \
            [torch.empty(like.shape, dtype=like.dtype, device=like.device) for _ in range(2)]
        self.turn = 0

    def next(self) -> Optional[Tensor]:
        """The buffer the next step writes (None: allocate)."""
        if self.buffers is None:
            return None
        self.turn ^= 1
        return self.buffers[self.turn]


def _into_kept(xs: _PingPong, kept: _PingPong) -> Optional[KeptStep]:
    """``into=`` of a step with ``keep``: the next buffers of both pairs (None: allocate)."""
    return None if xs.buffers is None else KeptStep(xs.next(), kept.next())


def langevin_corrector_step(x: Tensor, out: Tensor, s0: float, s1: float, prediction: str, snr: float,
                            noise: Optional[Tensor] = None, seed: Optional[int] = None, offset: int = 0,
                            guidance: Optional[float] = None, backend: Optional[str] = None,
                            into: Optional[Tensor] = None, workspace: Optional[CorrectorWorkspace] = None) -> Tensor:
    """One Langevin corrector step (``langevin_corrector_coefficients``) for x [B, ...] and the
    model output ``out`` [B, ...] ([2B, ...] guided) at the level (s0, s1): the per-sample rows
    [B, 7] from the norms of the score and of z (``corrector_coefficients``; with ``seed`` the
    same Philox z the update then draws), then the fused update -> x [B, ...] (written into
    ``into``, a buffer like x, when given: ``diffusion_step``).  prediction: 'eps' or 'score'.
    On Triton three launches (norms, rows, update) and, with ``into`` and ``workspace``
    (``corrector_workspace(x)``, scratch for the rows), no other op."""
    rows = corrector_coefficients(out, snr, s0, s1, prediction, noise=noise, seed=seed, offset=offset,
                                  guidance=guidance, backend=backend, workspace=workspace)
    rows = rows.to(torch.float64 if x.dtype == torch.float64 else torch.float32)    # no op when it is already
    return diffusion_step(x, out, rows, prediction, guidance=guidance, noise=noise, seed=seed, offset=offset,
                          backend=backend, into=into)


def _corrector_workspace(x: Tensor, xs: "_PingPong") -> Optional[CorrectorWorkspace]:
    """A loop's corrector scratch, made once per run beside its ping-pong buffers (None without
    them, under ``progress``: each step then allocates)."""
    return None if xs.buffers is None else corrector_workspace(x)


# ------------------------------------------------------------------------------ samplers

def _ddpm_step(abar_t: float, abar_prev: float, options: SamplingOptions) -> StepCoefficients:
    return ddpm_coefficients(abar_t, abar_prev, options.variance)


def _ddim_step(abar_t: float, abar_prev: float, options: SamplingOptions) -> StepCoefficients:
    return ddim_coefficients(abar_t, abar_prev, options.eta)


def _schedule(options: SamplingOptions) -> Tuple[list, list]:
    """(abar [T], the timesteps to visit, descending) of a sampler over a discrete schedule:
    ``timesteps`` as given, else ``steps`` of them by ``spacing`` (default 'linspace')."""
    abar = abar_of(linear_betas() if options.betas is None else options.betas).tolist()
    ts = list(options.timesteps) if options.timesteps is not None else \
        respaced_timesteps(len(abar), options.steps, options.spacing or "linspace")
    return abar, ts


def _respaced(options: SamplingOptions, step: Callable[[float, float, SamplingOptions], StepCoefficients],
              corrector: bool = False, learned_variance: bool = False) -> PreparedLoop:
    """DDPM ancestral / DDIM over respaced timesteps of ``betas``: ``step`` gives each step's
    coefficients, from each timestep to the next one visited (to abar = 1 after the last:
    the step lands on the x0 estimate); ``corrector`` (pc_vp) adds Langevin corrector steps at
    each next level; ``learned_variance``: whether variance='learned' (Improved DDPM) is allowed."""
    abar, ts = _schedule(options)
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
        noise, xs = _StepNoise(options), _PingPong(x, options)
        workspace = _corrector_workspace(x, xs) if corrector and options.corrector_steps else None
        for i, coefficients in enumerate(plan):
            out = denoise(x, t_tensors[i])
            channels = x.shape[1] * (2 if learned else 1)
            if tuple(out.shape[1:]) != (channels, *x.shape[2:]):
                raise ValueError(f"denoiser output has shape {tuple(out.shape)}, x has {tuple(x.shape)}"
                                 + (" (variance='learned' needs [prediction; v]: twice the channels)"
                                    if learned else ""))
            x = diffusion_step(x, out, coefficients, options.prediction, learned_variance=log_variances[i], **kw,
                               **(noise.draw() if coefficients.sigma else {}), into=xs.next())
            if corrector and i + 1 < len(plan):
                level = plan[i + 1]                  # s0, s1 = sqrt(abar), sqrt(1 - abar) of the next level
                for _ in range(options.corrector_steps):
                    out = denoise(x, t_tensors[i + 1])
                    x = langevin_corrector_step(x, out, level.s0, level.s1, options.prediction, options.snr,
                                                guidance=options.guidance, backend=options.backend, **noise.draw(),
                                                into=xs.next(), workspace=workspace)
            if options.progress is not None:
                options.progress(i, x)
        return x
    return PreparedLoop(x, loop)


def _karras_sigmas(options: SamplingOptions) -> list:
    """Euler / Heun's sigmas: ``sigmas`` as given; else the schedule's sigmas at ``timesteps`` or
    at the ``spacing``'s timesteps (``schedule_sigmas``); else Karras sigmas over the range of
    ``betas`` when given (``karras_sigmas_of``), or over EDM's 0.002 .. 80."""
    if options.sigmas is not None:
        return options.sigmas.tolist()
    betas = linear_betas() if options.betas is None else options.betas
    if options.timesteps is not None:
        return schedule_sigmas(betas, timesteps=options.timesteps).tolist()
    if options.spacing is not None:
        return schedule_sigmas(betas, options.steps, options.spacing).tolist()
    if options.betas is not None:
        return karras_sigmas_of(options.betas, options.steps).tolist()
    return karras_sigmas(options.steps).tolist()


def _karras(options: SamplingOptions, second_order: bool) -> PreparedLoop:
    """Euler / Heun (Karras et al. 2022, Algorithm 1 without churn) in x = x0 + sigma eps, the
    denoiser called with sigma and read as ``prediction`` (``sigma_read``; default x0).  Heun's
    first stage keeps x + (h/2) d for its correction (``heun_correction_coefficients``); the last
    step onto sigma = 0 is an Euler step."""
    sigmas = _karras_sigmas(options)
    x = _normal_x_T(options, sigmas[0])
    sig = _per_sample(options, sigmas)
    prediction = options.prediction
    kw = dict(clip=options.clip, threshold=options.threshold, guidance=options.guidance, backend=options.backend)

    def loop(x, denoise):
        xs, halves = _PingPong(x, options), _PingPong(x, options) if second_order else None
        for i in range(len(sigmas) - 1):
            s, s_next = sigmas[i], sigmas[i + 1]
            heun = second_order and s_next > 0         # the last step onto sigma = 0 stays Euler
            step = diffusion_step(x, denoise(x, sig[i]), sigma_read(euler_coefficients(s, s_next), s, prediction),
                                  prediction, keep=heun_keep(s, s_next) if heun else None, **kw,
                                  into=_into_kept(xs, halves) if heun else xs.next())
            if heun:
                x_next, half = step
                correction = sigma_read(heun_correction_coefficients(s, s_next), s_next, prediction)
                x = diffusion_step(x_next, denoise(x_next, sig[i + 1]), correction, prediction, aux=half, **kw,
                                   into=xs.next())
            else:
                x = step
            if options.progress is not None:
                options.progress(i, x)
        return x
    return PreparedLoop(x, loop)


def _dpmpp2m(options: SamplingOptions) -> PreparedLoop:
    """DPM-Solver++(2M): a second-order multistep solver of the probability-flow ODE in
    lambda = log(alpha / sigma), using the x0 predictions of the last two steps
    (``dpmpp2m_coefficients``); each step keeps its x0 for the next; the last step lands on
    the x0 estimate at the last timestep."""
    abar, ts = _schedule(options)
    x = _normal_x_T(options)
    t_tensors = _per_sample(options, ts, torch.long)
    kw = dict(clip=options.clip, threshold=options.threshold, guidance=options.guidance, backend=options.backend)
    keep_x0 = KeepCoefficients(k_x0=1.0, k_x=0.0)

    def loop(x, denoise):
        previous_x0, previous_h = None, None
        xs, x0s = _PingPong(x, options), _PingPong(x, options)    # x0s: this step's x0, the last one's
        for i, t in enumerate(ts):
            out = denoise(x, t_tensors[i])
            if i + 1 == len(ts):                     # the last step lands on the denoised image
                x = diffusion_step(x, out, denoised_coefficients(abar[t]), options.prediction, **kw, into=xs.next())
            else:
                step = dpmpp2m_coefficients(abar[t], abar[ts[i + 1]], previous_h)
                previous_h = step.h
                x, previous_x0 = diffusion_step(x, out, step.coefficients, options.prediction, aux=previous_x0,
                                                keep=keep_x0, **kw, into=_into_kept(xs, x0s))
            if options.progress is not None:
                options.progress(i, x)
        return x
    return PreparedLoop(x, loop)


def _annealed_langevin(options: SamplingOptions) -> PreparedLoop:
    """x += (a_i / 2) s(x, sigma_i) + sqrt(a_i) z, ``steps`` times per sigma_i, with
    a_i = NCSN_STEP_SIZE * sigma_i^2 / sigma_L^2 (NCSN).  Default sigmas: 10 geometric, 1 .. 0.01."""
    sigmas = (geometric_sigmas(1.0, 0.01, 10) if options.sigmas is None else options.sigmas).tolist()
    x = _uniform_x_T(options)
    sig = _per_sample(options, sigmas)

    def loop(x, denoise):
        noise, xs = _StepNoise(options), _PingPong(x, options)
        for i, sigma in enumerate(sigmas):
            coefficients = sigma_read(langevin_coefficients(NCSN_STEP_SIZE * sigma ** 2 / sigmas[-1] ** 2, sigma),
                                      sigma, options.prediction)
            for _ in range(options.steps):
                x = diffusion_step(x, denoise(x, sig[i]), coefficients, options.prediction, guidance=options.guidance,
                                   backend=options.backend, **noise.draw(), into=xs.next())
            if options.progress is not None:
                options.progress(i, x)
        return x
    return PreparedLoop(x, loop)


def _ve_sigmas(options: SamplingOptions) -> list:
    """The VE SDE's descending sigmas (default: ``steps`` geometric, 50 .. 0.01)."""
    return (geometric_sigmas(50.0, 0.01, options.steps) if options.sigmas is None else options.sigmas).tolist()


def _pc_ve(options: SamplingOptions) -> PreparedLoop:
    """Predictor-corrector for the VE SDE (Song et al. 2021): at each sigma, ``corrector_steps``
    Langevin corrector steps at signal-to-noise ``snr``, then the reverse-diffusion predictor."""
    sigmas = _ve_sigmas(options)
    x = _normal_x_T(options, sigmas[0])
    sig = _per_sample(options, sigmas)
    prediction = options.prediction

    def loop(x, denoise):
        noise, xs = _StepNoise(options), _PingPong(x, options)
        workspace = _corrector_workspace(x, xs) if options.corrector_steps else None
        for i, s in enumerate(sigmas):
            s_next = sigmas[i + 1] if i + 1 < len(sigmas) else 0.0
            for _ in range(options.corrector_steps):
                x = langevin_corrector_step(x, denoise(x, sig[i]), 1.0, s, prediction, options.snr,
                                            guidance=options.guidance, backend=options.backend, **noise.draw(),
                                            into=xs.next(), workspace=workspace)
            coefficients = sigma_read(ve_predictor_coefficients(s, s_next), s, prediction)
            x = diffusion_step(x, denoise(x, sig[i]), coefficients, prediction, guidance=options.guidance,
                               backend=options.backend, **(noise.draw() if coefficients.sigma else {}),
                               into=xs.next())
            if options.progress is not None:
                options.progress(i, x)
        return x
    return PreparedLoop(x, loop)


def _pf_ode(options: SamplingOptions) -> PreparedLoop:
    """Euler on the VE probability-flow ODE, dx/dsigma = -sigma s(x, sigma): deterministic."""
    sigmas = _ve_sigmas(options)
    x = _normal_x_T(options, sigmas[0])
    sig = _per_sample(options, sigmas)

    def loop(x, denoise):
        xs = _PingPong(x, options)
        for i, s in enumerate(sigmas):
            s_next = sigmas[i + 1] if i + 1 < len(sigmas) else 0.0
            coefficients = sigma_read(pf_ode_coefficients(s, s_next), s, options.prediction)
            x = diffusion_step(x, denoise(x, sig[i]), coefficients, options.prediction, guidance=options.guidance,
                               backend=options.backend, into=xs.next())
            if options.progress is not None:
                options.progress(i, x)
        return x
    return PreparedLoop(x, loop)


def _sgld(options: SamplingOptions) -> PreparedLoop:
    """x <- x + (a / 2) s(x) + sqrt(a) z from uniform [-1, 1] noise; s(x) = -grad E(x)."""
    x = _uniform_x_T(options)
    coefficients = langevin_coefficients(options.step_size)

    def loop(x, denoise):
        noise, xs = _StepNoise(options), _PingPong(x, options)
        for i in range(options.steps):
            x = diffusion_step(x, denoise(x), coefficients, "score", backend=options.backend, **noise.draw(),
                               into=xs.next())
            if options.progress is not None:
                options.progress(i, x)
        return x
    return PreparedLoop(x, loop)


_GUIDED = frozenset({"guidance", "cond", "uncond"})
_DISCRETE = frozenset({"betas", "timesteps", "spacing", "clip", "threshold"}) | _GUIDED
_CORRECTOR = frozenset({"snr", "corrector_steps"})
_VE = frozenset({"sigmas"}) | _GUIDED

REGISTRY: Dict[str, Sampler] = {
    "ddpm": Sampler(functools.partial(_respaced, step=_ddpm_step, learned_variance=True),
                    arguments=_DISCRETE | {"variance"}),
    "ddim": Sampler(functools.partial(_respaced, step=_ddim_step), arguments=_DISCRETE | {"eta"}),
    "dpmpp2m": Sampler(_dpmpp2m, arguments=_DISCRETE),
    "euler": Sampler(functools.partial(_karras, second_order=False), arguments=_DISCRETE | {"sigmas"},
                     prediction="x0"),
    "heun": Sampler(functools.partial(_karras, second_order=True), arguments=_DISCRETE | {"sigmas"},
                    prediction="x0"),
    "langevin": Sampler(_annealed_langevin, arguments=_VE, prediction="score"),
    # the corrector's step size reads ||score|| from ||out||: eps or score models only
    "pc_ve": Sampler(_pc_ve, arguments=_VE | _CORRECTOR, predictions=("score", "eps"), prediction="score"),
    "pc_vp": Sampler(functools.partial(_respaced, step=_ddpm_step, corrector=True),
                     arguments=_DISCRETE | _CORRECTOR | {"variance"}, predictions=("eps", "score")),
    "pf_ode": Sampler(_pf_ode, arguments=_VE, prediction="score"),
    # an energy model's score s(x) = -grad E(x), called without time or condition
    "sgld": Sampler(_sgld, arguments=frozenset({"step_size"}), predictions=("score",), prediction="score"),
}
SAMPLERS = tuple(REGISTRY)


def _users(argument: str) -> Tuple[str, ...]:
    return tuple(name for name, spec in REGISTRY.items() if argument in spec.arguments)


# ------------------------------------------------------------------------------ sample

def _as_key(values) -> Optional[tuple]:
    return None if values is None else tuple(float(v) for v in torch.as_tensor(values).flatten().tolist())


def _graph_config(sampler: str, options: SamplingOptions, denoiser, inputs: Dict[str, Tensor]) -> tuple:
    """What a captured loop depends on besides its static inputs: every option (the per-step
    coefficients and the Philox seed are baked into the graph as kernel arguments), the static
    inputs' shapes and dtypes (never which tensors they are), and the denoiser's weight versions."""
    return (sampler, options.shape, options.steps, _as_key(options.betas), _as_key(options.sigmas),
            _as_key(options.timesteps), options.spacing, options.eta, options.variance, options.prediction,
            options.clip, options.threshold, options.guidance, options.seed, str(options.device), options.dtype,
            options.backend, options.snr, options.corrector_steps, options.step_size,
            tuple((name, tuple(t.shape), t.dtype, str(t.device)) for name, t in inputs.items()),
            weights_version(denoiser) if isinstance(denoiser, torch.nn.Module) else None)


def _resolve_steps(sampler: str, steps: Optional[int], timesteps: Optional[list],
                   sigmas: Optional[Tensor]) -> int:
    """The number of steps: ``steps``, or what ``timesteps`` / ``sigmas`` imply (which ``steps``
    must then agree with).  For 'langevin', ``steps`` counts the steps at each sigma."""
    if steps is not None:
        steps = checks.check_int("steps", steps, 1)
    implied, source = None, None
    if timesteps is not None:
        implied, source = len(timesteps), f"timesteps ({len(timesteps)} values)"
    elif sigmas is not None and sampler in ("euler", "heun"):
        implied, source = len(sigmas) - 1, f"sigmas ({len(sigmas)} values, the last one the end point)"
    elif sigmas is not None and sampler in ("pc_ve", "pf_ode"):
        implied, source = len(sigmas), f"sigmas ({len(sigmas)} values)"
    if implied is None:
        return DEFAULT_STEPS if steps is None else steps
    if steps is not None and steps != implied:
        raise ValueError(f"steps={steps} disagrees with {source}, which make {implied} steps of the {sampler!r} "
                         f"sampler: pass one or the other")
    return implied


def _resolve_prediction(sampler: str, spec: Sampler, prediction: Optional[str], denoiser) -> str:
    """``prediction``, else the denoiser's own ``prediction`` attribute (a scheduled denoiser
    such as ``DiffusersDenoiser``), else the sampler's default; checked against the sampler."""
    source = "prediction"
    if prediction is None and isinstance(getattr(denoiser, "prediction", None), str):
        prediction, source = denoiser.prediction, "the denoiser's prediction"
    if prediction is None:
        return spec.prediction
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if prediction not in spec.predictions:
        why = {"pc_ve": " (its corrector's step size reads ||score|| from the output)",
               "pc_vp": " (its corrector's step size reads ||score|| from the output)",
               "sgld": " (it samples an energy model through its score)"}.get(sampler, "")
        raise ValueError(f"{source}={prediction!r} is not supported by the {sampler!r} sampler{why}; it reads "
                         f"{spec.predictions}")
    return prediction


@torch.no_grad()
def sample(denoiser: Callable[..., Tensor], shape: Optional[Sequence[int]] = None, sampler: str = "ddim",
           steps: Optional[int] = None, betas: Optional[Any] = None, eta: Optional[float] = None,
           variance: Optional[str] = None, prediction: Optional[str] = None, clip: bool = False,
           guidance: Optional[float] = None, cond: Optional[Tensor] = None, uncond: Optional[Tensor] = None,
           generator: Optional[torch.Generator] = None, seed: Optional[int] = None, device: Optional[Any] = None,
           progress: Optional[Callable[[int, Tensor], None]] = None, cuda_graph: bool = False,
           sigmas: Optional[Any] = None, backend: Optional[str] = None, snr: Optional[float] = None,
           corrector_steps: Optional[int] = None, step_size: Optional[float] = None,
           threshold: Optional[float] = None, timesteps: Optional[Sequence[int]] = None,
           spacing: Optional[str] = None, x_T: Optional[Tensor] = None,
           dtype: Optional[torch.dtype] = None) -> Tensor:
    """Sample images of ``shape`` [B, ...] from ``denoiser``; returns the final x [B, ...].

    The denoiser protocol: ``denoiser(x, t, cond=None)`` returns the model output for x [B, ...]
    at t [B]: integer training timesteps (long) for the samplers over a discrete schedule
    (ddpm, ddim, dpmpp2m, pc_vp), noise levels sigma (float) for the others, read as
    ``prediction``.  With ``guidance=w`` the loop calls the denoiser once per step on [x; x]
    with [cond; uncond] and combines (1 + w) cond - w uncond inside the fused step.  A denoiser
    may carry its schedule: its ``betas`` [T] and ``prediction`` attributes are used when those
    arguments are not given (``DiffusersDenoiser`` does).

    sampler (``SAMPLERS``):
      'ddpm' (ancestral; ``variance`` 'small' (default) | 'large' | 'learned' -- the denoiser
      then returns [prediction; v] on the channels, Improved DDPM), 'ddim' (Song et al. 2021
      eq. 12, ``eta`` >= 0, default 0) and 'dpmpp2m' (DPM-Solver++(2M), Lu et al. 2022) over
      ``steps`` timesteps of ``betas`` (default: 1000 linear), spaced by ``spacing``
      'linspace' (default) | 'leading' | 'trailing' (``schedules``: the sequences, as in
      diffusers; one step goes from t = T - 1 to the x0 estimate), or an explicit descending
      ``timesteps`` list; each step goes to the next listed timestep, the last onto the x0
      estimate.
      'euler' / 'heun' (Karras et al. 2022, Algorithm 1 without churn) over ``sigmas``
      (descending, ending in 0 to land on the data), default: Karras sigmas over the range of
      ``betas`` when given (else EDM's 0.002 .. 80), or with ``spacing`` / ``timesteps`` the
      schedule's own sigmas at those timesteps; the denoiser gets sigma, x = x0 + sigma eps,
      and predicts x0 unless ``prediction`` says otherwise ('v': of x / sqrt(1 + sigma^2)).
      'langevin' (annealed Langevin dynamics, Song & Ermon 2019: ``sigmas`` descending,
      ``steps`` per sigma, x += (a/2) s + sqrt(a) z, a = 2e-5 sigma^2 / sigma_L^2); 'pc_ve'
      (predictor-corrector for the VE SDE, Song et al. 2021: ``corrector_steps`` (default 1)
      Langevin corrector steps at signal-to-noise ``snr`` (default 0.16), then the
      reverse-diffusion predictor, over geometric ``sigmas``); 'pf_ode' (Euler on the VE
      probability-flow ODE, dx/dsigma = -sigma s(x, sigma)) -- score models s(x, sigma) unless
      ``prediction`` says otherwise; 'pc_vp' (the same predictor-corrector for the VP SDE: the
      fused DDPM step as predictor, eps model); 'sgld' (stochastic gradient Langevin dynamics
      for an energy model, x += (step_size / 2) s(x) + sqrt(step_size) z, s = -grad E,
      ``steps`` steps, step_size default 1e-3; the denoiser is called as s(x)).
    Every argument a sampler does not read is refused with a ValueError naming it: each is
    honoured by every sampler that accepts it.  steps (default 50) must agree with
    ``timesteps`` / ``sigmas`` when those are given.
    prediction: 'eps' | 'x0' | 'v' | 'score' (which ones each sampler reads: ``REGISTRY``).
    clip: clamp each step's x0 estimate to [-1, 1]; threshold=p: Imagen's dynamic thresholding
    instead (samplers over a discrete schedule, euler, heun).
    x_T: the starting sample [B, ...] (used as given: scaled by the first sigma for the samplers
    over sigmas; e.g. a noised image for SDEdit), instead of drawing it.  dtype: float32
    (default, or x_T's dtype), float64 (computed in float64 end to end, on the reference),
    float16 / bfloat16 (x kept in 16 bits between steps; each step's math in float32).
    generator: x_T and every step's noise drawn on the host; seed: step noise drawn in the
    kernel (Triton backend), and x_T from ``torch.Generator().manual_seed(seed)`` unless a
    generator is given -- the same seed gives the same samples.  cuda_graph=True (CUDA, with
    seed): the whole loop is captured once per configuration (``fastgen.sampling.graphs``) and
    replayed; x_T, cond and uncond (tensors) are copied into the graph's inputs on every call,
    so new conditioning replays the same graph.
    progress(i, x) is called after each step (refused with cuda_graph=True).
    """
    spec = REGISTRY.get(sampler)
    if spec is None:
        raise ValueError(f"sampler must be one of {tuple(REGISTRY)}, got {sampler!r}")
    given = dict(betas=betas, eta=eta, variance=variance, timesteps=timesteps, spacing=spacing, sigmas=sigmas,
                 clip=clip or None, threshold=threshold, guidance=guidance, cond=cond, uncond=uncond, snr=snr,
                 corrector_steps=corrector_steps, step_size=step_size)
    for name, value in given.items():
        if value is not None and name not in spec.arguments:
            raise ValueError(f"{name} is not supported by the {sampler!r} sampler (it is an argument of "
                             f"{', '.join(repr(s) for s in _users(name))})")
    if guidance is not None:
        guidance = checks.check_number("guidance", guidance)
        if cond is None or uncond is None:
            raise ValueError("classifier-free guidance needs both cond and uncond: guidance=w calls the denoiser on "
                             "[cond; uncond] and combines the two outputs")
    elif uncond is not None:
        raise ValueError("uncond is only used by classifier-free guidance: pass guidance= too (or drop uncond)")
    if progress is not None and cuda_graph:
        raise ValueError("progress is not called under cuda_graph=True (the whole loop is one captured graph): "
                         "pass one or the other")
    if threshold is not None and not 0 < checks.check_number("threshold", threshold) <= 1:
        raise ValueError(f"threshold must be a percentile in (0, 1], got {threshold!r}")
    if variance is not None and variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    if spacing is not None and spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if timesteps is not None and spacing is not None:
        raise ValueError("pass timesteps= or spacing=, not both (timesteps lists the steps itself)")
    if sigmas is not None and ({"timesteps", "spacing"} & {k for k, v in given.items() if v is not None}):
        raise ValueError("pass sigmas= or timesteps= / spacing=, not both (they each choose the noise levels)")
    checks.check_x_T(x_T)
    checks.check_dtype(dtype)
    shape = checks.check_shape(shape, x_T)
    if betas is None and "betas" in spec.arguments and getattr(denoiser, "betas", None) is not None:
        betas = denoiser.betas              # a scheduled denoiser's own schedule
    betas = None if betas is None else check_betas(betas)
    if timesteps is not None:
        timesteps = tuple(check_timesteps(timesteps, 1000 if betas is None else len(betas)))
    if sigmas is not None:
        sigmas = checks.check_sigmas(sigmas, sampler, final_zero=sampler in ("euler", "heun"))
    steps = _resolve_steps(sampler, steps, timesteps, sigmas)
    device = torch.device(device or (x_T.device if x_T is not None else
                                     ("cuda" if torch.cuda.is_available() else "cpu")))
    dtype = dtype or (x_T.dtype if x_T is not None else torch.float32)
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(seed)     # x_T from the seed too
    options = SamplingOptions(
        shape=shape, steps=steps, device=device, generator=generator, seed=seed, backend=backend,
        guidance=guidance, prediction=_resolve_prediction(sampler, spec, prediction, denoiser), clip=bool(clip),
        threshold=threshold, betas=betas,
        eta=0.0 if eta is None else checks.check_number("eta", eta, non_negative=True),
        variance=variance or "small", timesteps=timesteps, sigmas=sigmas,
        snr=0.16 if snr is None else checks.check_number("snr", snr, positive=True),
        corrector_steps=1 if corrector_steps is None else checks.check_int("corrector_steps", corrector_steps, 0),
        step_size=1e-3 if step_size is None else checks.check_number("step_size", step_size, positive=True),
        progress=progress, dtype=dtype, spacing=spacing,
        x_T=None if x_T is None else x_T.to(device=device, dtype=dtype))
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
