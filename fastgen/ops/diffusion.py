"""The fused diffusion sampler step: checks, dispatch (reference or Triton), in-kernel noise.

``diffusion_step`` is one update of DDPM ancestral / DDIM sampling with classifier-free
guidance, the prediction conversion ('eps' | 'x0' | 'v') and x0 clipping fused into one pass
(``fastgen.kernels.diffusion_step``; reference: ``fastgen.ops.reference.diffusion_step``).
"""
from typing import List, Optional

import torch

from fastgen.ops import _backend, reference
from fastgen.ops._backend import choose_backend

PREDICTIONS = ("eps", "x0", "v")


def diffusion_step(x, out, coefficients, prediction="eps", clip=False, guidance=None, noise=None, seed=None,
                   offset=0, learned_variance=None, threshold=None, backend=None):
    """x_next = c_x0 x0 + c_eps eps + c_x x + sigma z for x [B, ...] and denoiser output ``out``
    ([2B, ...] = [cond; uncond] when ``guidance`` is a number).  z: ``noise`` (a tensor like
    x), or, on the Triton backend, Philox normals drawn in the kernel from (``seed``, ``offset``).
    coefficients = (sqrt(abar_t), sqrt(1 - abar_t), c_x0, c_eps, c_x, sigma).
    learned_variance = (log beta~, log beta): ``out`` carries [prediction; v] on the channels
    and each element's sigma interpolates the two log-variances (Improved DDPM).
    threshold = p: Imagen's dynamic thresholding at percentile p instead of ``clip``."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    expected = [2 * x.shape[0] if guidance is not None else x.shape[0], *x.shape[1:]]
    if learned_variance is not None:
        expected[1] *= 2                        # [prediction; v] along the channels
    expected = tuple(expected)
    if tuple(out.shape) != expected:
        raise ValueError(f"the denoiser output has shape {tuple(out.shape)} but x has shape {tuple(x.shape)}"
                         + (" (guidance needs [cond; uncond] outputs, twice the batch)" if guidance is not None else ""))
    sigma = coefficients[5]
    if noise is not None and noise.shape != x.shape:
        raise ValueError(f"noise must have the shape of x {tuple(x.shape)}, got {tuple(noise.shape)}")
    if sigma != 0 and noise is None and seed is None:
        raise ValueError("this step adds noise (sigma > 0): pass noise= or seed=")
    scale = None
    if threshold is not None:     # Imagen's dynamic thresholding needs a per-sample percentile first
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be a percentile in (0, 1], got {threshold!r}")
        x0 = reference.diffusion_x0(x, out, coefficients[0], coefficients[1], prediction, guidance,
                                    learned_variance is not None)
        scale = reference.dynamic_threshold(x0, threshold)
    use = choose_backend("diffusion_step", x, backend)
    if use == "reference":
        if sigma != 0 and noise is None:
            raise ValueError("the reference backend needs an explicit noise tensor (seed= is Triton-only)")
        return reference.diffusion_step(x, out, noise, coefficients, prediction, clip, guidance, learned_variance,
                                        scale)
    return torch.ops.fastgen.diffusion_step(x, out, noise, [float(c) for c in coefficients], prediction, clip,
                                            None if guidance is None else float(guidance), seed or 0, offset,
                                            None if learned_variance is None else [float(v) for v in learned_variance],
                                            scale)


@torch.library.custom_op("fastgen::diffusion_step", mutates_args=())
def _diffusion_step_op(x: torch.Tensor, out: torch.Tensor, noise: Optional[torch.Tensor], coefficients: List[float],
                       prediction: str, clip: bool, guidance: Optional[float], seed: int, offset: int,
                       learned_variance: Optional[List[float]], threshold_scale: Optional[torch.Tensor]) -> torch.Tensor:
    from fastgen.kernels.diffusion_step import diffusion_step as launch
    x, out = x.contiguous(), out.contiguous()
    y = _backend.empty(*x.shape, dtype=x.dtype, device=x.device)
    return launch(x, out, None if noise is None else noise.contiguous(), y, coefficients, prediction, clip,
                  guidance, seed, offset, learned_variance,
                  None if threshold_scale is None else threshold_scale.float().contiguous())


@_diffusion_step_op.register_fake
def _(x, out, noise, coefficients, prediction, clip, guidance, seed, offset, learned_variance, threshold_scale):
    return torch.empty_like(x, memory_format=torch.contiguous_format)
