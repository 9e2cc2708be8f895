"""Sampling a diffusers UNet with fastgen's samplers.  diffusers stays an optional dependency:
nothing here imports it -- the adapter only calls the model, and a scheduler's configuration is
read as a plain dict (``scheduler.config`` or the ``scheduler_config.json`` of a checkpoint).

- ``betas_from_config(config)``: the beta schedule [T] a diffusers scheduler config describes;
- ``prediction_from_config(config)``: its ``prediction_type`` as fastgen's prediction name;
- ``DiffusersDenoiser(unet, config)``: a ``UNet2DModel`` / ``UNet2DConditionModel``-style
  callable (``unet(x, t, ...).sample``) as a fastgen denoiser that carries its schedule
  (``betas``, ``prediction``), which ``sample`` uses when not told otherwise::

      from fastgen.sampling import diffusion
      denoiser = diffusion.DiffusersDenoiser(unet, scheduler.config)
      images = diffusion.sample(denoiser, (4, 3, 64, 64), "dpmpp2m", 20, seed=0)

Timesteps and noise levels: the samplers over a discrete schedule (ddpm, ddim, dpmpp2m,
pc_vp) call the denoiser with integer timesteps, which go to the UNet as they are; the samplers
over sigmas (euler, heun, ...) call it with sigma, x = x0 + sigma eps, and the adapter calls the
UNet as diffusers' EulerDiscreteScheduler does: on x / sqrt(1 + sigma^2) at the (fractional)
timestep whose sigma_t = sqrt((1 - abar_t) / abar_t) is sigma.
"""
import inspect
from typing import Any, Dict, Mapping, Optional

import torch
from torch import Tensor, nn

from fastgen.sampling.diffusion.schedules import check_betas, cosine_betas, discrete_sigmas

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
SIGMA_TO_T = ("log", "linear")
COND_ARGUMENTS = ("encoder_hidden_states", "class_labels")


def betas_from_config(config: Mapping[str, Any]) -> Tensor:
    """The betas [T] (float64) of a diffusers scheduler config: ``trained_betas`` if set, else
    ``beta_schedule`` over ``num_train_timesteps`` (default 1000) from ``beta_start`` (1e-4) to
    ``beta_end`` (0.02):

    - 'linear': evenly spaced;
    - 'scaled_linear' (Stable Diffusion): sqrt(beta) evenly spaced, squared;
    - 'squaredcos_cap_v2': the cosine schedule (``cosine_betas``, Nichol & Dhariwal 2021).

    The values are those diffusers computes, in float32, as float64; keys missing from the dict
    take DDPMScheduler's defaults (other schedulers' differ: Heun's beta range is
    0.00085 .. 0.012 -- pass ``scheduler.config``, which has every key).  Schedules rescaled to
    zero terminal SNR (``rescale_betas_zero_snr``) have abar_T = 0, an infinite noise level that
    fastgen's samplers cannot start from: refused."""
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict (a diffusers scheduler's .config), got {type(config).__name__}")
    if config.get("rescale_betas_zero_snr"):
        raise ValueError("config: rescale_betas_zero_snr=True makes the last abar 0 (infinite noise); "
                         "fastgen's samplers need abar > 0 at every timestep")
    if config.get("trained_betas") is not None:
        return check_betas(torch.tensor(config["trained_betas"], dtype=torch.float32).double())
    T = config.get("num_train_timesteps", 1000)
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"config['num_train_timesteps'] must be a positive int, got {T!r}")
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    schedule = config.get("beta_schedule", "linear")
    if schedule == "linear":
        betas = torch.linspace(start, end, T, dtype=torch.float32)
    elif schedule == "scaled_linear":
        betas = torch.linspace(start ** 0.5, end ** 0.5, T, dtype=torch.float32) ** 2
    elif schedule == "squaredcos_cap_v2":
        betas = cosine_betas(T).float()
    else:
        raise ValueError(f"config['beta_schedule'] must be one of {BETA_SCHEDULES}, got {schedule!r}")
    return check_betas(betas.double())


def prediction_from_config(config: Mapping[str, Any]) -> str:
    """fastgen's prediction name for a diffusers config's ``prediction_type`` (default
    'epsilon'): 'epsilon' -> 'eps', 'v_prediction' -> 'v', 'sample' -> 'x0'."""
    kind = config.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"config['prediction_type'] must be one of {tuple(PREDICTION_TYPES)}, got {kind!r}")
    return PREDICTION_TYPES[kind]


def _sigma_to_t_from_config(config: Optional[Mapping[str, Any]]) -> str:
    """'linear' for the config of a scheduler over sigmas (one with a ``use_karras_sigmas`` or
    ``interpolation_type`` key: Euler, Heun, ...) that takes sigma_t linearly interpolated at its
    timesteps (``interpolation_type`` 'linear' or absent, no Karras / exponential / beta
    sigmas); 'log' otherwise (diffusers' and k-diffusion's sigma -> t for Karras sigmas)."""
    if config is None or not ({"use_karras_sigmas", "interpolation_type"} & set(config)):
        return "log"
    if config.get("interpolation_type", "linear") != "linear":
        return "log"
    if any(config.get(key) for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")):
        return "log"
    return "linear"


class DiffusersDenoiser(nn.Module):
    """A diffusers-style UNet as a fastgen denoiser, ``denoiser(x, t, cond=None)`` -> the UNet's
    output [B, C, ...] (its prediction, ``self.prediction``).

    model: called as ``model(x, t, **{cond_argument: cond})``; its output's ``.sample`` is read
      (or the first element of a tuple, or the tensor itself).
    config: a diffusers scheduler config dict: ``betas`` and ``prediction`` are read from it
      unless given (``betas_from_config``, ``prediction_from_config``).
    betas: [T] the training schedule (default: from config); prediction: 'eps' | 'v' | 'x0'.
    cond_argument: the keyword the condition goes to (default: 'encoder_hidden_states' if the
      model's forward takes it, else 'class_labels' if it takes that).
    learned_variance: keep a learned-variance output's extra channels (for ``variance='learned'``
      with 'ddpm'); by default an output with twice x's channels is cut to its first half, the
      prediction, as diffusers' schedulers other than DDPM do.
    sigma_to_t: how a noise level sigma becomes a timestep: 'log' (interpolating t linearly in
      log sigma_t, k-diffusion's and diffusers' rule for Karras sigmas) or 'linear' (in sigma_t:
      the inverse of the linear interpolation diffusers' Euler and Heun use for their default
      sigmas); default from config (``_sigma_to_t_from_config``), else 'log'.  Integer grids give
      the integer timesteps either way.
    """

    def __init__(self, model: nn.Module, config: Optional[Mapping[str, Any]] = None, betas: Optional[Any] = None,
                 prediction: Optional[str] = None, cond_argument: Optional[str] = None,
                 learned_variance: bool = False, sigma_to_t: Optional[str] = None) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be callable (a diffusers UNet), got {type(model).__name__}")
        if config is not None and not isinstance(config, Mapping):
            raise TypeError(f"config must be a dict (a diffusers scheduler's .config), got {type(config).__name__}")
        self.model = model
        if betas is None:
            betas = betas_from_config(config or {})
        self.betas = check_betas(betas)                    # float64 [T] on the CPU: not a buffer
        if prediction is None:
            prediction = prediction_from_config(config or {})
        if prediction not in ("eps", "v", "x0"):
            raise ValueError(f"prediction must be 'eps', 'v' or 'x0', got {prediction!r}")
        self.prediction = prediction
        self.cond_argument = cond_argument or self._cond_argument(model)
        self.learned_variance = bool(learned_variance)
        sigma_to_t = sigma_to_t or _sigma_to_t_from_config(config)
        if sigma_to_t not in SIGMA_TO_T:
            raise ValueError(f"sigma_to_t must be one of {SIGMA_TO_T}, got {sigma_to_t!r}")
        self.sigma_to_t = sigma_to_t
        self._tables: Dict[torch.device, Tensor] = {}

    @staticmethod
    def _cond_argument(model) -> Optional[str]:
        try:
            parameters = inspect.signature(model.forward if hasattr(model, "forward") else model).parameters
        except (TypeError, ValueError):
            return None
        return next((name for name in COND_ARGUMENTS if name in parameters), None)

    def timestep_of(self, sigma: Tensor) -> Tensor:
        """The fractional training timestep t [B] (float64) whose sigma_t is ``sigma`` [B],
        interpolated by ``sigma_to_t`` between integer timesteps.  Noise levels outside the
        schedule's [sigma_0, sigma_{T-1}] are clamped to its ends, as k-diffusion's discrete
        schedules do (checking would cost a host sync per step): give the samplers over sigmas
        sigmas within that range (``karras_sigmas_of``, ``schedule_sigmas``)."""
        table = self._tables.get(sigma.device)
        if table is None:
            table = discrete_sigmas(self.betas)
            table = (table.log() if self.sigma_to_t == "log" else table).to(sigma.device)
            self._tables[sigma.device] = table
        value = sigma.to(torch.float64)
        value = value.log() if self.sigma_to_t == "log" else value
        upper = torch.searchsorted(table, value).clamp(1, len(table) - 1)     # table[upper - 1] < value <= table[upper]
        low, high = table[upper - 1], table[upper]
        return (upper - 1) + ((value - low) / (high - low)).clamp(0, 1)

    def forward(self, x: Tensor, t: Tensor, cond: Optional[Any] = None) -> Tensor:
        """x [B, C, ...] at t [B]: integer timesteps (called as they are) or noise levels sigma
        (float: the UNet sees x / sqrt(1 + sigma^2) at ``timestep_of(sigma)``) -> [B, C, ...]."""
        if t.is_floating_point():
            dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
            sigma = t.to(dtype).view(-1, *[1] * (x.dim() - 1))
            x_in = (x.to(dtype) / (sigma ** 2 + 1) ** 0.5).to(x.dtype)
            timestep = self.timestep_of(t).to(dtype)
        else:
            x_in, timestep = x, t
        model_dtype = getattr(self.model, "dtype", None)
        if isinstance(model_dtype, torch.dtype) and model_dtype.is_floating_point:
            x_in = x_in.to(model_dtype)
        kwargs = {}
        if cond is not None:
            if self.cond_argument is None:
                raise ValueError("cond was given but the model takes neither encoder_hidden_states nor class_labels: "
                                 "pass DiffusersDenoiser(..., cond_argument=<its keyword>)")
            kwargs[self.cond_argument] = cond
        out = self.model(x_in, timestep, **kwargs)
        if hasattr(out, "sample"):
            out = out.sample
        elif isinstance(out, (tuple, list)):
            out = out[0]
        if not self.learned_variance and out.dim() > 1 and out.shape[1] == 2 * x.shape[1]:
            out = out[:, :x.shape[1]]                   # [prediction; variance]: keep the prediction
        return out

    def extra_repr(self) -> str:
        return (f"T={len(self.betas)}, prediction={self.prediction!r}, cond_argument={self.cond_argument!r}, "
                f"sigma_to_t={self.sigma_to_t!r}")

