"""The fused diffusion sampler step: checks, dispatch (reference or Triton), in-kernel noise.

``diffusion_step`` is one update of any sampler in ``fastgen.sampling.diffusion`` (DDPM,
DDIM, Euler, Heun, DPM-Solver++(2M), Langevin, predictor-corrector, probability-flow ODE,
SGLD) with classifier-free guidance, the prediction conversion ('eps' | 'x0' | 'v' | 'score')
and x0 clipping fused into one pass (``fastgen.kernels.diffusion_step``; reference:
``fastgen.ops.diffusion_step.reference.diffusion_step``).  ``score_noise_norms`` is the per-sample reduction
the predictor-corrector's Langevin step size needs (reference: ``reference.score_noise_norms``).
"""
from typing import List, Optional, Tuple

import torch

from fastgen.ops import _backend
from fastgen.ops.diffusion_step import reference
from fastgen.ops._backend import choose_backend, eager_or_registered

PREDICTIONS = ("eps", "x0", "v", "score")
COEFFICIENTS = ("s0", "s1", "c_x0", "c_eps", "c_x", "sigma", "c_aux")


def _check_like(name, tensor, x):
    if tensor is not None and (tuple(tensor.shape) != tuple(x.shape) or tensor.device != x.device):
        raise ValueError(f"{name} must have the shape and device of x {tuple(x.shape)} {x.device}, "
                         f"got {tuple(tensor.shape)} {tensor.device}")


def diffusion_step(x, out, coefficients, prediction="eps", clip=False, guidance=None, noise=None, seed=None,
                   offset=0, learned_variance=None, threshold=None, backend=None, aux=None, keep=None):
    """x_next = c_x0 x0 + c_eps eps + c_x x + c_aux aux + sigma z for x [B, ...] and denoiser
    output ``out`` ([2B, ...] = [cond; uncond] when ``guidance`` is a number).  z: ``noise`` (a
    tensor like x), or, on the Triton backend, Philox normals drawn in the kernel from
    (``seed``, ``offset`` + element index).
    coefficients = (sqrt(abar_t), sqrt(1 - abar_t), c_x0, c_eps, c_x, sigma[, c_aux]) as numbers,
    or a float32 tensor [B, 7] on x's device with one row per sample (``COEFFICIENTS`` order;
    z is then always added: pass noise= or seed=).  aux: a tensor like x weighted by c_aux
    (Heun's half step, DPM-Solver++'s previous x0).  keep = (k_x0, k_x): also return
    k_x0 x0 + k_x x, i.e. (x_next, kept).
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
    per_sample = torch.is_tensor(coefficients)
    if per_sample:
        if tuple(coefficients.shape) != (x.shape[0], 7) or coefficients.dtype != torch.float32 \
                or coefficients.device != x.device:
            raise ValueError(f"per-sample coefficients must be a float32 tensor [{x.shape[0]}, 7] on {x.device}, got "
                             f"{coefficients.dtype} {tuple(coefficients.shape)} on {coefficients.device}")
        if learned_variance is not None:   # the learned sigma would override a row's sigma = 0
            raise ValueError("learned_variance cannot be combined with per-sample coefficients")
        scalars = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # unused by the kernel: it reads the rows
    else:
        if len(coefficients) not in (6, 7):
            raise ValueError(f"coefficients must be {COEFFICIENTS[:6]} or {COEFFICIENTS}, "
                             f"got {len(coefficients)} values")
        scalars = [float(c) for c in coefficients] + [0.0] * (7 - len(coefficients))
        if scalars[6] != 0 and aux is None:
            raise ValueError("c_aux (coefficients[6]) is nonzero: pass aux=")
    _check_like("noise", noise, x)
    _check_like("aux", aux, x)
    if keep is not None and len(keep) != 2:
        raise ValueError(f"keep must be (k_x0, k_x), got {keep!r}")
    adds_noise = per_sample or scalars[5] != 0
    if adds_noise and noise is None and seed is None:
        raise ValueError("this step adds noise (sigma > 0 or per-sample coefficients): pass noise= or seed=")
    scale = None
    if threshold is not None:     # Imagen's dynamic thresholding needs a per-sample percentile first
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be a percentile in (0, 1], got {threshold!r}")
        s0, s1 = ((coefficients[:, 0].view(-1, *[1] * (x.dim() - 1)), coefficients[:, 1].view(-1, *[1] * (x.dim() - 1)))
                  if per_sample else scalars[:2])
        x0 = reference.diffusion_x0(x, out, s0, s1, prediction, guidance, learned_variance is not None)
        scale = reference.dynamic_threshold(x0, threshold)
    use = choose_backend("diffusion_step", x, backend)
    if use == "reference":
        if adds_noise and noise is None:
            raise ValueError("the reference backend needs an explicit noise tensor (seed= is Triton-only)")
        return reference.diffusion_step(x, out, noise, coefficients if per_sample else scalars, prediction, clip,
                                        guidance, learned_variance, scale, aux, keep)
    y, kept = eager_or_registered("diffusion_step", _diffusion_step_impl)(
        x, out, noise, scalars, coefficients if per_sample else None, aux,
        None if keep is None else [float(k) for k in keep], prediction, clip,
        None if guidance is None else float(guidance), seed or 0, offset,
        None if learned_variance is None else [float(v) for v in learned_variance], scale)
    return y if keep is None else (y, kept)


def _diffusion_step_impl(x: torch.Tensor, out: torch.Tensor, noise: Optional[torch.Tensor],
                         coefficients: List[float], per_sample: Optional[torch.Tensor], aux: Optional[torch.Tensor],
                         keep: Optional[List[float]], prediction: str, clip: bool, guidance: Optional[float],
                         seed: int, offset: int, learned_variance: Optional[List[float]],
                         threshold_scale: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> (y like x, kept like x, or an empty tensor without ``keep``)."""
    from fastgen.kernels.diffusion_step import diffusion_step as launch
    x, out = x.contiguous(), out.contiguous()
    y = _backend.empty(*x.shape, dtype=x.dtype, device=x.device)
    kept = _backend.empty(*(x.shape if keep is not None else (0,)), dtype=x.dtype, device=x.device)
    launch(x, out, None if noise is None else noise.contiguous(), y, coefficients, prediction, clip,
           guidance, seed, offset, learned_variance,
           None if threshold_scale is None else threshold_scale.float().contiguous(),
           aux=None if aux is None else aux.contiguous(),
           per_sample=None if per_sample is None else per_sample.contiguous(),
           kept=kept if keep is not None else None, keep=keep or (0.0, 0.0))
    return y, kept


# the registered op, for torch.compile (eager calls: ``eager_or_registered``)
_diffusion_step_op = torch.library.custom_op("fastgen::diffusion_step", mutates_args=())(_diffusion_step_impl)


@_diffusion_step_op.register_fake
def _(x, out, noise, coefficients, per_sample, aux, keep, prediction, clip, guidance, seed, offset, learned_variance,
      threshold_scale):
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    return y, (torch.empty_like(y) if keep is not None else x.new_empty(0))


def score_noise_norms(out, noise=None, seed=None, offset=0, guidance=None, backend=None):
    """Per-sample L2 norms -> [B, 2] float32: (||out_b||, ||z_b||), out [B, ...] (guided like
    ``diffusion_step``: [2B, ...] = [cond; uncond] with ``guidance``), z = ``noise`` [B, ...] or,
    on the Triton backend, the Philox normals ``diffusion_step`` draws with the same
    (``seed``, ``offset``) -- so a corrector's step size sees exactly the z its update adds."""
    batch = out.shape[0] // (2 if guidance is not None else 1)
    if guidance is not None and out.shape[0] % 2:
        raise ValueError(f"guidance needs [cond; uncond] outputs (an even batch), got {tuple(out.shape)}")
    if noise is not None and (tuple(noise.shape) != (batch, *out.shape[1:]) or noise.device != out.device):
        raise ValueError(f"noise must have shape {(batch, *out.shape[1:])} on {out.device}, "
                         f"got {tuple(noise.shape)} on {noise.device}")
    if noise is None and seed is None:
        raise ValueError("score_noise_norms needs noise= or seed=")
    use = choose_backend("diffusion_step", out, backend)
    if use == "reference":
        if noise is None:
            raise ValueError("the reference backend needs an explicit noise tensor (seed= is Triton-only)")
        return reference.score_noise_norms(out, noise, guidance)
    norms = eager_or_registered("score_noise_norms", _score_noise_norms_impl)
    return norms(out, noise, None if guidance is None else float(guidance), seed or 0, offset)


def _score_noise_norms_impl(out: torch.Tensor, noise: Optional[torch.Tensor], guidance: Optional[float], seed: int,
                            offset: int) -> torch.Tensor:
    from fastgen.kernels.diffusion_step import norms_blocks, score_noise_norms as launch
    out = out.contiguous()
    batch = out.shape[0] // (2 if guidance is not None else 1)
    sample_size = out[:batch].numel() // batch
    partial = _backend.empty(batch, norms_blocks(sample_size)[1], 2, dtype=torch.float32, device=out.device)
    launch(out, None if noise is None else noise.contiguous(), partial, sample_size, guidance, seed, offset)
    return partial.sum(dim=1).sqrt()       # a fixed-order sum: the same norms run to run


# the registered op, for torch.compile (eager calls: ``eager_or_registered``)
_score_noise_norms_op = torch.library.custom_op("fastgen::score_noise_norms",
                                                mutates_args=())(_score_noise_norms_impl)


@_score_noise_norms_op.register_fake
def _(out, noise, guidance, seed, offset):
    return out.new_empty(out.shape[0] // (2 if guidance is not None else 1), 2, dtype=torch.float32)
