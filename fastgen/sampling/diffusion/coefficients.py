"""Each sampler's update as the coefficients of the one fused step
``fastgen.ops.diffusion_step``: x_next = c_x0 x0 + c_eps eps + c_x x + c_aux aux + sigma z,
with x0 / eps read from the denoiser output through s0 = sqrt(abar_t), s1 = sqrt(1 - abar_t)
(VE / score models: s0 = 1, s1 = sigma).  Every function states its sampler's math and returns
a ``StepCoefficients`` (Python numbers: kernel arguments, so nothing is synced per step); only
the Langevin corrector's step size depends on the sample and comes as a [B, 7] tensor
(``langevin_corrector_coefficients``, re-exported from the op's reference: on the Triton backend
one small kernel computes those rows from the norms' partial sums, no other op).

The samplers over sigmas (Euler, Heun, Langevin, the VE predictor, the probability-flow ODE)
work in the parametrisation x = x0 + sigma eps; ``sigma_read`` makes their coefficients read a
denoiser output of any prediction there.
"""
import math
from typing import NamedTuple, Optional

from fastgen.ops.diffusion_step import KeepCoefficients, StepCoefficients
# The Langevin corrector's per-sample rows [B, 7]: the one copy of that math is the reference of
# the op that computes them on the device (``fastgen.ops.diffusion_step.corrector_coefficients``).
from fastgen.ops.diffusion_step.reference import langevin_corrector_coefficients  # noqa: F401


class DpmSolverStep(NamedTuple):
    """One DPM-Solver++(2M) step: its coefficients and its h = lambda' - lambda, the next step's
    ``h_previous``."""
    coefficients: StepCoefficients
    h: float


def sigma_read(coefficients: StepCoefficients, sigma: float, prediction: str) -> StepCoefficients:
    """``coefficients`` of a step at noise level ``sigma`` of x = x0 + sigma eps, reading the
    denoiser output as ``prediction``:

    - 'x0', 'eps', 'score': s0 = 1, s1 = sigma, so x0 = out, x - sigma out, x + sigma^2 out;
    - 'v': the v of the variance-preserving sample x / sqrt(1 + sigma^2), v = alpha eps -
      sigma alpha x0 with alpha = 1 / sqrt(1 + sigma^2) (k-diffusion's VDenoiser with
      sigma_data = 1; diffusers' Euler / Heun v_prediction): x0 = alpha^2 x - sigma alpha v,
      read as s0 = alpha^2, s1 = sigma alpha.  The fused step recomputes eps from s0, s1, which
      then no longer give x = x0 + sigma eps, so the eps term is folded into the x0 and x terms
      first: c_eps eps = (c_eps / sigma)(x - x0)."""
    if prediction != "v":
        return coefficients._replace(s0=1.0, s1=sigma)
    alpha2 = 1 / (1 + sigma ** 2)
    fold = coefficients.c_eps / sigma
    return coefficients._replace(s0=alpha2, s1=sigma * math.sqrt(alpha2), c_x0=coefficients.c_x0 - fold, c_eps=0.0,
                                 c_x=coefficients.c_x + fold)


def ddpm_coefficients(abar_t: float, abar_prev: float, variance: str = "small") -> StepCoefficients:
    """Ancestral step from t to the previous kept step (respaced: beta = 1 - abar_t / abar_prev).
    variance 'small' = posterior beta~ (1 - abar_prev)/(1 - abar_t) beta, 'large' = beta."""
    beta = 1 - abar_t / abar_prev
    c_x0 = math.sqrt(abar_prev) * beta / (1 - abar_t)
    c_x = math.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar_t)
    var = beta * (1 - abar_prev) / (1 - abar_t) if variance == "small" else beta
    return StepCoefficients(s0=math.sqrt(abar_t), s1=math.sqrt(1 - abar_t), c_x0=c_x0, c_eps=0.0, c_x=c_x,
                            sigma=math.sqrt(var) if abar_prev < 1 else 0.0)


def ddim_coefficients(abar_t: float, abar_prev: float, eta: float = 0.0) -> StepCoefficients:
    """Song et al. 2021: x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - s^2) eps + s z,
    s = eta sqrt((1 - abar_prev)/(1 - abar_t)) sqrt(1 - abar_t/abar_prev)."""
    sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))
    return StepCoefficients(s0=math.sqrt(abar_t), s1=math.sqrt(1 - abar_t), c_x0=math.sqrt(abar_prev),
                            c_eps=math.sqrt(max(1 - abar_prev - sigma ** 2, 0.0)), c_x=0.0, sigma=sigma)


def euler_coefficients(s: float, s_next: float) -> StepCoefficients:
    """Karras Euler step on an x0 model D: x + (s' - s)(x - D)/s = (s'/s) x + (1 - s'/s) D."""
    return StepCoefficients(s0=1.0, s1=1.0, c_x0=1 - s_next / s, c_eps=0.0, c_x=s_next / s, sigma=0.0)


def heun_keep(s: float, s_next: float) -> KeepCoefficients:
    """What Heun's first stage keeps: x + (h/2) d with h = s' - s, d = (x - D)/s, as (k_x0, k_x)."""
    h = s_next - s
    return KeepCoefficients(k_x0=-h / (2 * s), k_x=1 + h / (2 * s))


def heun_correction_coefficients(s: float, s_next: float) -> StepCoefficients:
    """Heun's correction x + (h/2)(d + d'), d' = (x' - D')/s', on x = x' (the Euler step),
    out = D' and aux = x + (h/2) d (``heun_keep``): aux + (h / 2s') (x' - D')."""
    h = s_next - s
    return StepCoefficients(s0=1.0, s1=1.0, c_x0=-h / (2 * s_next), c_eps=0.0, c_x=h / (2 * s_next), sigma=0.0,
                            c_aux=1.0)


def dpmpp2m_coefficients(abar_t: float, abar_next: float, h_previous: Optional[float] = None) -> DpmSolverStep:
    """DPM-Solver++(2M) (Lu et al. 2022) from abar_t to abar_next, lambda = log(alpha/sigma),
    h = lambda' - lambda, r = h_previous / h:
    x' = sqrt((1 - abar')/(1 - abar)) x - sqrt(abar') expm1(-h) D,
    D = (1 + 1/(2r)) x0 - (1/(2r)) x0_previous (D = x0 on the first step); aux = x0_previous.
    -> ``DpmSolverStep(coefficients, h)``."""
    lam = lambda a: 0.5 * math.log(a / (1 - a))   # noqa: E731
    h = lam(abar_next) - lam(abar_t)
    phi = -math.sqrt(abar_next) * math.expm1(-h)
    c_x = math.sqrt((1 - abar_next) / (1 - abar_t))
    s0, s1 = math.sqrt(abar_t), math.sqrt(1 - abar_t)
    if h_previous is None:
        return DpmSolverStep(StepCoefficients(s0, s1, c_x0=phi, c_eps=0.0, c_x=c_x, sigma=0.0), h)
    r = h_previous / h
    return DpmSolverStep(StepCoefficients(s0, s1, c_x0=phi * (1 + 1 / (2 * r)), c_eps=0.0, c_x=c_x, sigma=0.0,
                                          c_aux=-phi / (2 * r)), h)


def denoised_coefficients(abar_t: float) -> StepCoefficients:
    """The step that lands on the x0 estimate itself (DPM-Solver++'s last step): x_next = x0."""
    return StepCoefficients(s0=math.sqrt(abar_t), s1=math.sqrt(1 - abar_t), c_x0=1.0, c_eps=0.0, c_x=0.0, sigma=0.0)


def langevin_coefficients(step: float, sigma: float = 1.0) -> StepCoefficients:
    """One Langevin step on a score model, x + (a/2) s + sqrt(a) z with a = ``step``; read as
    prediction 'score' at s1 = sigma (eps = -sigma s): c_eps = -a / (2 sigma)."""
    return StepCoefficients(s0=1.0, s1=sigma, c_x0=0.0, c_eps=-step / (2 * sigma), c_x=1.0, sigma=math.sqrt(step))


def ve_predictor_coefficients(s: float, s_next: float) -> StepCoefficients:
    """Reverse-diffusion predictor of the VE SDE: x + (s^2 - s'^2) score + sqrt(s^2 - s'^2) z
    (no noise onto s' = 0); prediction 'score' at s1 = s."""
    var = s ** 2 - s_next ** 2
    return StepCoefficients(s0=1.0, s1=s, c_x0=0.0, c_eps=-var / s, c_x=1.0,
                            sigma=math.sqrt(var) if s_next > 0 else 0.0)


def pf_ode_coefficients(s: float, s_next: float) -> StepCoefficients:
    """Euler on the VE probability-flow ODE dx/dsigma = -sigma score: x + (s' - s)(-s score)
    = x + (s' - s) eps with eps = -s score (prediction 'score' at s1 = s)."""
    return StepCoefficients(s0=1.0, s1=s, c_x0=0.0, c_eps=s_next - s, c_x=1.0, sigma=0.0)
