"""Plain-PyTorch references of the diffusion step family: the specification of
``diffusion_step``, ``score_noise_norms`` and ``corrector_coefficients`` (the CPU path and the
tests call them; ``fastgen.sampling.diffusion`` exports ``langevin_corrector_coefficients``
from here, its one copy).

Precision: float64 inputs are computed in float64 end to end (the reference is their only
backend); every other dtype is computed in float32, as the kernels do.
"""
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from fastgen.ops.diffusion_step.bundles import KeptStep, StepCoefficients


def compute_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    """float64 if any of ``tensors`` is float64, else float32: the dtype the reference computes in."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def dynamic_threshold(x0: Tensor, percentile: float) -> Tensor:
    """Imagen's dynamic thresholding scale per sample: s = max(1, percentile of |x0|) -> [B]
    (float64 for float64 x0, else float32)."""
    return torch.quantile(x0.abs().flatten(1).to(compute_dtype(x0)), percentile, dim=1).clamp(min=1.0)


def _prediction_to_x0(x32, out, s0, s1, prediction):
    """x0 from a denoiser output read as 'eps' | 'x0' | 'v' | 'score' (Tweedie: x0 = (x + s1^2 s) / s0)."""
    if prediction == "eps":
        return (x32 - s1 * out) / s0
    if prediction == "x0":
        return out
    if prediction == "v":
        return s0 * x32 - s1 * out
    return (x32 + s1 * s1 * out) / s0


def guided(out: Tensor, w: float) -> Tensor:
    """Classifier-free guidance: out = [cond; uncond] on the batch -> (1 + w) cond - w uncond."""
    cond, uncond = out.chunk(2)
    return (1.0 + w) * cond - w * uncond


def diffusion_x0(x: Tensor, out: Tensor, s0: Union[float, Tensor], s1: Union[float, Tensor], prediction: str = "eps",
                 guidance: Optional[float] = None, learned_variance: bool = False) -> Tensor:
    """The x0 estimate a diffusion step starts from (after guidance), before any clipping."""
    dtype = compute_dtype(x)
    out = out.to(dtype)
    if learned_variance:
        out = out.chunk(2, dim=1)[0]
    if guidance is not None:
        out = guided(out, guidance)
    return _prediction_to_x0(x.to(dtype), out, s0, s1, prediction)


def diffusion_step(x: Tensor, out: Tensor, noise: Optional[Tensor],
                   coefficients: Union[StepCoefficients, Sequence[float], Tensor], prediction: str = "eps",
                   clip: bool = False, guidance: Optional[float] = None,
                   learned_variance: Optional[Sequence[float]] = None, threshold_scale: Optional[Tensor] = None,
                   aux: Optional[Tensor] = None,
                   keep: Optional[Sequence[float]] = None) -> Union[Tensor, KeptStep]:
    """One diffusion / score-based sampler step (the math of kernels/diffusion_step.py).

    x: [B, ...]; out: the denoiser output [B, ...] ([2B, ...] = [cond; uncond] with
    ``guidance`` w: out = (1 + w) cond - w uncond); prediction 'eps' | 'x0' | 'v' | 'score';
    coefficients: a ``StepCoefficients`` (s0 = sqrt(abar_t), s1 = sqrt(1 - abar_t), c_x0, c_eps,
    c_x, sigma, c_aux), a plain sequence of its first 6 or all 7 numbers, or a [B, 7] tensor of
    them per sample; noise: like x (used when sigma > 0, always with a tensor); aux: like x,
    weighted by c_aux.  learned_variance = (log beta~, log beta): out has twice x's channels,
    [prediction; v], and sigma^2 = exp(f log beta + (1 - f) log beta~), f = (v + 1) / 2, per
    element (Nichol & Dhariwal 2021).  threshold_scale [B]: dynamic thresholding (Saharia et al.
    2022), x0 -> clamp(x0, -s, s) / s, instead of ``clip``.
    -> y = c_x0 x0 + c_eps eps + c_x x + c_aux aux + sigma noise, with x0 clipped to [-1, 1] if
    ``clip`` and eps = (x - s0 x0) / s1 recomputed from the (clipped) x0; with keep = (k_x0, k_x)
    -> ``KeptStep(y, k_x0 x0 + k_x x)``, the quantity a multistep sampler carries to its next step.
    Computed in float64 for float64 x (every input is then read in float64), else in float32;
    returned in x's dtype.
    """
    dtype = compute_dtype(x)
    per_sample = torch.is_tensor(coefficients)
    if per_sample:    # one row per sample, broadcast over the other dimensions
        columns = coefficients.to(dtype).view(x.shape[0], 7, *[1] * (x.dim() - 1)).unbind(1)
    else:
        columns = StepCoefficients.of(coefficients)
    s0, s1, c_x0, c_eps, c_x, sigma, c_aux = columns
    x32, out = x.to(dtype), out.to(dtype)
    v = None
    if learned_variance is not None:     # out = [prediction; v] along the channels (Improved DDPM)
        out, v = out.chunk(2, dim=1)
    if guidance is not None:
        out = guided(out, guidance)
        v = v.chunk(2)[0] if v is not None else None
    if v is not None and (per_sample or sigma != 0):
        log_small, log_large = learned_variance
        frac = (v + 1) / 2
        sigma = torch.exp(0.5 * (frac * log_large + (1 - frac) * log_small))
    x0 = _prediction_to_x0(x32, out, s0, s1, prediction)
    if threshold_scale is not None:      # dynamic thresholding: clamp to [-s, s], then divide by s
        scale = threshold_scale.view(-1, *[1] * (x.dim() - 1))
        x0 = torch.maximum(torch.minimum(x0, scale), -scale) / scale
    elif clip:
        x0 = x0.clamp(-1.0, 1.0)
    eps = (x32 - s0 * x0) / s1
    y = c_x0 * x0 + c_eps * eps + c_x * x32
    if aux is not None:
        y = y + c_aux * aux.to(dtype)
    if torch.is_tensor(sigma) or sigma != 0:
        y = y + sigma * noise.to(dtype)
    if keep is None:
        return y.to(x.dtype)
    k_x0, k_x = keep
    return KeptStep(y.to(x.dtype), (k_x0 * x0 + k_x * x32).to(x.dtype))


def score_noise_norms(out: Tensor, noise: Tensor, guidance: Optional[float] = None) -> Tensor:
    """Per-sample L2 norms for the predictor-corrector's step size -> [B, 2] (float64 if out or
    noise is float64, else float32): (||out_b||, ||z_b||), with out [B, ...] guided as in
    ``diffusion_step`` ([2B, ...] = [cond; uncond] with ``guidance``) and z = noise [B, ...]."""
    dtype = compute_dtype(out, noise)
    out = out.to(dtype)
    if guidance is not None:
        out = guided(out, guidance)
    return torch.stack([out.flatten(1).norm(dim=1), noise.to(dtype).flatten(1).norm(dim=1)], dim=1)


def langevin_corrector_coefficients(norms: Tensor, snr: float, s0: float, s1: float, prediction: str) -> Tensor:
    """Song et al. 2021, Algorithm 4/5: x + e score + sqrt(2e) z per sample with
    e = 2 (snr ||z|| / ||score||)^2; norms [B, 2] = (||out||, ||z||) from ``score_noise_norms``.
    score = -eps / s1, so ||score|| = ||out|| / s1 for an eps model and ||out|| for a score model
    (clamped to >= 1e-12: a zero score gives a huge, finite step).
    -> [B, 7] per-sample coefficients in norms' dtype, columns in ``StepCoefficients`` order
    (computed on the device: no host sync)."""
    score_norm = norms[:, 0] / s1 if prediction == "eps" else norms[:, 0]
    e = 2 * (snr * norms[:, 1] / score_norm.clamp(min=1e-12)) ** 2
    one, zero = torch.ones_like(e), torch.zeros_like(e)
    #                   s0        s1        c_x0  c_eps    c_x  sigma          c_aux
    return torch.stack([one * s0, one * s1, zero, -e / s1, one, (2 * e).sqrt(), zero], dim=1)


def corrector_coefficients(out: Tensor, noise: Tensor, snr: float, s0: float, s1: float, prediction: str,
                           guidance: Optional[float] = None) -> Tensor:
    """The Langevin corrector's per-sample rows [B, 7] from the denoiser output out [B, ...]
    ([2B, ...] guided) and z = noise [B, ...]: ``langevin_corrector_coefficients`` of
    ``score_noise_norms`` (float64 if out or noise is float64, else float32)."""
    return langevin_corrector_coefficients(score_noise_norms(out, noise, guidance), snr, s0, s1, prediction)
