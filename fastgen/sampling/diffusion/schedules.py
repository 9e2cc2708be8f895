"""Noise schedules: DDPM betas (linear, cosine), Karras and geometric sigma ladders, and the
respacing of a trained schedule's timesteps.  All float64 on the CPU: samplers read them as
Python numbers to compute each step's coefficients."""
import math
from typing import List

import numpy as np
import torch
from torch import Tensor


def linear_betas(timesteps: int = 1000, start: float = 1e-4, end: float = 0.02) -> Tensor:
    """Ho et al. 2020: betas [timesteps] evenly spaced from ``start`` to ``end``."""
    return torch.linspace(start, end, timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal 2021: betas [timesteps] of abar(t) = cos^2(((t/T) + s) / (1 + s) * pi/2)."""
    f = lambda t: math.cos((t / timesteps + s) / (1 + s) * math.pi / 2) ** 2   # noqa: E731
    return torch.tensor([min(1 - f(t + 1) / f(t), max_beta) for t in range(timesteps)], dtype=torch.float64)


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022: sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho, then 0
    -> [steps + 1]."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def geometric_sigmas(sigma_max: float, sigma_min: float, steps: int) -> Tensor:
    """``steps`` sigmas [steps] from ``sigma_max`` down to ``sigma_min``, evenly spaced in log
    (NCSN's annealing ladder; the VE SDE's discretisation)."""
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), steps, dtype=torch.float64)


def respaced_timesteps(timesteps: int, steps: int) -> List[int]:
    """``steps`` of the ``timesteps`` training steps, evenly spaced, descending (Nichol & Dhariwal)."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must lie in [1, {timesteps}] (the training timesteps), got {steps}")
    return [int(t) for t in np.linspace(0, timesteps - 1, steps).round()[::-1]]
