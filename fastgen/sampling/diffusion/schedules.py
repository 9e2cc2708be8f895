"""Noise schedules: DDPM betas (linear, cosine), Karras and geometric sigma ladders, the
timestep spacings of a trained schedule ('linspace' | 'leading' | 'trailing', as diffusers
names them), and the sigmas of a discrete schedule.  All float64 on the CPU: samplers read
them as Python numbers to compute each step's coefficients.

The spacings, for T training timesteps and n sampling steps (descending; diffusers' names and
sequences, Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
Table 2):

- 'linspace': round(linspace(0, T - 1, n)), e.g. T = 1000, n = 4: 999, 666, 333, 0.  With
  n = 1 the one step starts at T - 1 (diffusers' linspace gives t = 0, which evaluates the
  model only at the clean end and returns roughly x_T): 999.
- 'leading': k (T // n) + offset for k = n - 1 .. 0 (diffusers' ``steps_offset``; Stable
  Diffusion uses 1), e.g. 750, 500, 250, 0.
- 'trailing': round(T - k T / n) - 1 for k = 0 .. n - 1, e.g. 999, 749, 499, 249.

The Karras samplers (Euler, Heun) step over sigmas, not timesteps: ``schedule_sigmas`` gives
the sigmas sigma_t = sqrt((1 - abar_t) / abar_t) of a discrete schedule at a spacing's
timesteps (unrounded for 'linspace', interpolated linearly in t, as diffusers'
EulerDiscreteScheduler / HeunDiscreteScheduler do), and ``karras_sigmas_of`` the Karras ramp
over the schedule's own sigma range (diffusers' ``use_karras_sigmas=True``).
"""
import math
from typing import Any, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

SPACINGS = ("linspace", "leading", "trailing")


def linear_betas(timesteps: int = 1000, start: float = 1e-4, end: float = 0.02) -> Tensor:
    """Ho et al. 2020: betas [timesteps] evenly spaced from ``start`` to ``end``."""
    return torch.linspace(start, end, timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal 2021: betas [timesteps] of abar(t) = cos^2(((t/T) + s) / (1 + s) * pi/2)."""
    f = lambda t: math.cos((t / timesteps + s) / (1 + s) * math.pi / 2) ** 2   # noqa: E731
    return torch.tensor([min(1 - f(t + 1) / f(t), max_beta) for t in range(timesteps)], dtype=torch.float64)


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022: sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho, then 0
    -> [steps + 1].  One step (n = 1) goes from sigma_max to 0."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def geometric_sigmas(sigma_max: float, sigma_min: float, steps: int) -> Tensor:
    """``steps`` sigmas [steps] from ``sigma_max`` down to ``sigma_min``, evenly spaced in log
    (NCSN's annealing ladder; the VE SDE's discretisation)."""
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), steps, dtype=torch.float64)


def check_betas(betas: Any) -> Tensor:
    """``betas`` as a float64 tensor [T], checked: one dimension, at least one value, every
    value in (0, 1) (a beta of 1 makes abar 0 -- an infinite noise level; 0 makes the first
    step divide by 1 - abar = 0).  Raises ValueError / TypeError naming ``betas``."""
    try:
        values = torch.as_tensor(betas, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"betas must be a 1-D sequence or tensor of numbers, got {type(betas).__name__}") from None
    if values.dim() != 1 or values.numel() == 0:
        raise ValueError(f"betas must be 1-D with at least one value, got shape {tuple(values.shape)}")
    bad = ~((values > 0) & (values < 1))      # also catches NaN
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"betas must lie in (0, 1), got betas[{i}] = {values[i].item()!r}")
    return values.cpu()


def abar_of(betas: Any) -> Tensor:
    """abar_t = prod_{s <= t} (1 - beta_s) -> float64 [T]."""
    return torch.cumprod(1 - check_betas(betas), 0)


def discrete_sigmas(betas: Any) -> Tensor:
    """The noise levels of a discrete VP schedule in the Karras / VE parametrisation
    x = x0 + sigma eps: sigma_t = sqrt((1 - abar_t) / abar_t) -> float64 [T], increasing in t."""
    abar = abar_of(betas)
    return ((1 - abar) / abar).sqrt()


def _spaced(T: int, steps: int, spacing: str, offset: int, integer: bool) -> np.ndarray:
    """The spacing's timesteps, descending, as floats (rounded to integers unless ``integer`` is
    False, which leaves 'linspace' unrounded)."""
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise TypeError(f"steps must be an int, got {type(steps).__name__}")
    if not 1 <= steps <= T:
        raise ValueError(f"steps must lie in [1, {T}] (the training timesteps), got {steps}")
    if offset and spacing != "leading":
        raise ValueError(f"offset (diffusers' steps_offset) applies to spacing='leading', got spacing={spacing!r}")
    if spacing == "linspace":
        if steps == 1:
            return np.array([T - 1.0])
        ts = np.linspace(0, T - 1, steps)[::-1]
        return ts.round() if integer else ts
    if spacing == "leading":
        ts = (np.arange(steps) * (T // steps))[::-1] + offset
        if ts[0] > T - 1 or offset < 0:
            raise ValueError(f"offset={offset} puts the leading timesteps outside [0, {T - 1}]")
        return ts.astype(np.float64)
    return np.round(T - np.arange(steps) * (T / steps)) - 1


def respaced_timesteps(timesteps: int, steps: int, spacing: str = "linspace", offset: int = 0) -> List[int]:
    """``steps`` of the ``timesteps`` training steps, descending, spaced by ``spacing`` (see the
    module docstring for the sequences; 'linspace' is Nichol & Dhariwal's even respacing).
    ``offset``: added to every 'leading' timestep (diffusers' ``steps_offset``)."""
    return [int(t) for t in _spaced(timesteps, steps, spacing, offset, integer=True)]


def check_timesteps(timesteps: Any, T: int) -> List[int]:
    """An explicit list of timesteps, checked against a schedule of T training steps: integers
    (integer-valued floats accepted), strictly descending (so no duplicates), within [0, T - 1],
    at least one.  Raises ValueError / TypeError naming ``timesteps``."""
    try:
        values = torch.as_tensor(timesteps).flatten().tolist()
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"timesteps must be a sequence of ints, got {type(timesteps).__name__}") from None
    if torch.as_tensor(timesteps).dim() != 1 or not values:
        raise ValueError(f"timesteps must be a non-empty 1-D sequence of ints, got {timesteps!r}")
    if any(isinstance(v, bool) or not float(v).is_integer() for v in values):
        raise TypeError(f"timesteps must be integers (training timesteps), got {values}")
    ts = [int(v) for v in values]
    if min(ts) < 0 or max(ts) > T - 1:
        raise ValueError(f"timesteps must lie in [0, {T - 1}] (the schedule has {T} training steps), got {ts}")
    for a, b in zip(ts, ts[1:]):
        if b == a:
            raise ValueError(f"timesteps must not repeat a value, got {a} twice in {ts}")
        if b > a:
            raise ValueError(f"timesteps must be strictly descending (noisiest first), got {a} then {b} in {ts}")
    return ts


def schedule_sigmas(betas: Any, steps: Optional[int] = None, spacing: str = "linspace", offset: int = 0,
                    timesteps: Optional[Sequence[int]] = None) -> Tensor:
    """The Karras samplers' sigmas for a discrete schedule: sigma_t (``discrete_sigmas``) at the
    ``spacing``'s timesteps for ``steps`` steps -- 'linspace' unrounded, sigma interpolated
    linearly in t between training steps (diffusers' EulerDiscreteScheduler and
    HeunDiscreteScheduler with ``interpolation_type='linear'``) -- or at explicit integer
    ``timesteps``; then 0 -> float64 [n + 1]."""
    table = discrete_sigmas(betas)
    T = len(table)
    if timesteps is not None:
        ts = np.array(check_timesteps(timesteps, T), dtype=np.float64)
    else:
        ts = _spaced(T, steps, spacing, offset, integer=False)
    sigmas = np.interp(ts, np.arange(T), table.numpy())
    return torch.cat([torch.from_numpy(sigmas), torch.zeros(1, dtype=torch.float64)])


def karras_sigmas_of(betas: Any, steps: int, rho: float = 7.0) -> Tensor:
    """Karras sigmas over a discrete schedule's own noise range: from sigma_max = sigma_{T-1} down
    to sigma_min = sigma_0 (``discrete_sigmas``), then 0 -> float64 [steps + 1] (k-diffusion's
    ``get_sigmas_karras(n, model.sigma_min, model.sigma_max)``; diffusers' ``use_karras_sigmas``
    with its default 'linspace' spacing)."""
    table = discrete_sigmas(betas)
    return karras_sigmas(steps, sigma_min=table[0].item(), sigma_max=table[-1].item(), rho=rho)
