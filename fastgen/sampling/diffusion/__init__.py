"""Diffusion and score-based sampling loops with one fused kernel per step.

Every sampler's update -- DDPM / DDIM, Euler / Heun on Karras sigmas, DPM-Solver++(2M),
annealed Langevin, predictor-corrector (VE and VP), the probability-flow ODE and SGLD -- is
one ``fastgen.ops.diffusion_step`` (one Triton launch on the GPU): the generic
x_next = c_x0 x0 + c_eps eps + c_x x + c_aux aux + sigma z with the sampler's coefficients.

- ``schedules``: betas (linear, cosine), Karras and geometric sigmas, timestep respacing;
- ``coefficients``: each sampler's update as a ``StepCoefficients`` (the math, one function
  per sampler);
- ``samplers``: ``sample`` (the entry point), the loops and the sampler ``REGISTRY``
  (``SAMPLERS`` are its names).

``from fastgen.sampling import diffusion as d; d.sample(denoiser, shape, "ddim", 50)``.
"""
from fastgen.ops.diffusion_step import (KeepCoefficients, KeptStep, LearnedVariance, StepCoefficients, diffusion_step,
                                        score_noise_norms)
from fastgen.sampling.diffusion.coefficients import (DpmSolverStep, ddim_coefficients, ddpm_coefficients,
                                                     denoised_coefficients, dpmpp2m_coefficients, euler_coefficients,
                                                     heun_correction_coefficients, heun_keep, langevin_coefficients,
                                                     langevin_corrector_coefficients, pf_ode_coefficients,
                                                     ve_predictor_coefficients)
from fastgen.sampling.diffusion.samplers import (REGISTRY, SAMPLERS, VARIANCES, Denoise, PreparedLoop, Sampler,
                                                 SamplingOptions, langevin_corrector_step, sample)
from fastgen.sampling.diffusion.schedules import (cosine_betas, geometric_sigmas, karras_sigmas, linear_betas,
                                                  respaced_timesteps)

__all__ = [
    "Denoise", "DpmSolverStep", "KeepCoefficients", "KeptStep", "LearnedVariance", "PreparedLoop", "REGISTRY",
    "SAMPLERS", "Sampler", "SamplingOptions", "StepCoefficients", "VARIANCES", "cosine_betas", "ddim_coefficients",
    "ddpm_coefficients", "denoised_coefficients", "diffusion_step", "dpmpp2m_coefficients", "euler_coefficients",
    "geometric_sigmas", "heun_correction_coefficients", "heun_keep", "karras_sigmas", "langevin_coefficients",
    "langevin_corrector_coefficients", "langevin_corrector_step", "linear_betas", "pf_ode_coefficients",
    "respaced_timesteps", "sample", "score_noise_norms", "ve_predictor_coefficients",
]
