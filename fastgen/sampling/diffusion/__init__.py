"""Diffusion and score-based sampling loops with one fused kernel per step.

Every sampler's update -- DDPM / DDIM, Euler / Heun on Karras sigmas, DPM-Solver++(2M),
annealed Langevin, predictor-corrector (VE and VP), the probability-flow ODE and SGLD -- is
one ``fastgen.ops.diffusion_step`` (one Triton launch on the GPU): the generic
x_next = c_x0 x0 + c_eps eps + c_x x + c_aux aux + sigma z with the sampler's coefficients.

- ``schedules``: betas (linear, cosine), Karras and geometric sigmas, timestep spacings
  ('linspace' | 'leading' | 'trailing'), a discrete schedule's own sigmas;
- ``coefficients``: each sampler's update as a ``StepCoefficients`` (the math, one function
  per sampler);
- ``samplers``: ``sample`` (the entry point), the loops and the sampler ``REGISTRY``
  (``SAMPLERS`` are its names); ``checks``: its argument checks;
- ``diffusers``: ``DiffusersDenoiser`` (a diffusers UNet as a fastgen denoiser) and the
  schedule of a diffusers scheduler config (diffusers itself is never imported).

``from fastgen.sampling import diffusion as d; d.sample(denoiser, shape, "ddim", 50)``.
"""
from fastgen.ops.diffusion_step import (KeepCoefficients, KeptStep, LearnedVariance, StepCoefficients, diffusion_step,
                                        score_noise_norms)
from fastgen.sampling.diffusion.coefficients import (DpmSolverStep, ddim_coefficients, ddpm_coefficients,
                                                     denoised_coefficients, dpmpp2m_coefficients, euler_coefficients,
                                                     heun_correction_coefficients, heun_keep, langevin_coefficients,
                                                     langevin_corrector_coefficients, pf_ode_coefficients, sigma_read,
                                                     ve_predictor_coefficients)
from fastgen.sampling.diffusion.diffusers import DiffusersDenoiser, betas_from_config, prediction_from_config
from fastgen.sampling.diffusion.samplers import (PREDICTIONS, REGISTRY, SAMPLERS, VARIANCES, Denoise, PreparedLoop,
                                                 Sampler, SamplingOptions, langevin_corrector_step, sample)
from fastgen.sampling.diffusion.schedules import (SPACINGS, abar_of, cosine_betas, discrete_sigmas, geometric_sigmas,
                                                  karras_sigmas, karras_sigmas_of, linear_betas, respaced_timesteps,
                                                  schedule_sigmas)

__all__ = [
    "Denoise", "DiffusersDenoiser", "DpmSolverStep", "KeepCoefficients", "KeptStep", "LearnedVariance", "PREDICTIONS",
    "PreparedLoop", "REGISTRY", "SAMPLERS", "SPACINGS", "Sampler", "SamplingOptions", "StepCoefficients", "VARIANCES",
    "abar_of", "betas_from_config", "cosine_betas", "ddim_coefficients", "ddpm_coefficients", "denoised_coefficients",
    "diffusion_step", "discrete_sigmas", "dpmpp2m_coefficients", "euler_coefficients", "geometric_sigmas",
    "heun_correction_coefficients", "heun_keep", "karras_sigmas", "karras_sigmas_of", "langevin_coefficients",
    "langevin_corrector_coefficients", "langevin_corrector_step", "linear_betas", "pf_ode_coefficients",
    "prediction_from_config", "respaced_timesteps", "sample", "schedule_sigmas", "score_noise_norms", "sigma_read",
    "ve_predictor_coefficients",
]
