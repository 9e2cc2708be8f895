"""The fused diffusion sampler step: checks, dispatch (reference or Triton), in-kernel noise.

``diffusion_step`` is one update of any sampler in ``fastgen.sampling.diffusion`` (DDPM,
DDIM, Euler, Heun, DPM-Solver++(2M), Langevin, predictor-corrector, probability-flow ODE,
SGLD) with classifier-free guidance, the prediction conversion ('eps' | 'x0' | 'v' | 'score')
and x0 clipping fused into one pass (``fastgen.kernels.diffusion_step``; reference:
``fastgen.ops.diffusion_step.reference.diffusion_step``).  ``score_noise_norms`` is the
per-sample reduction the predictor-corrector's Langevin step size needs (reference:
``reference.score_noise_norms``); ``corrector_coefficients`` goes on to that corrector's [B, 7]
per-sample coefficients on the device -- two small launches, no other op, given a
``corrector_workspace`` (reference: ``reference.corrector_coefficients``, i.e.
``langevin_corrector_coefficients`` of the norms).

Both are declared with ``fastgen.ops._define.define_op`` as ``torch.ops.fastgen.diffusion_step``
/ ``score_noise_norms`` (what torch.compile sees; eager calls skip the dispatcher).
``diffusion_step(..., into=)`` writes the step into buffers the caller owns instead of
allocating them: ``torch.ops.fastgen.diffusion_step_into``, which declares the writes in
``mutates_args`` -- what lets a sampling loop ping-pong two buffers and do no per-step work
but the one launch.  TF32: the
kernels are elementwise math and one reduction -- no ``tl.dot``, so no TF32 flag changes what
they compute.  They are declared ``tf32="matmul"`` because that flag's default (off, exact
fp32) is what the eager PyTorch update they replace computes, should a dot ever be added.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from fastgen.ops import _backend
from fastgen.ops._define import define_op
from fastgen.ops.diffusion_step import reference
from fastgen.ops.diffusion_step.bundles import CorrectorWorkspace, KeptStep, StepCoefficients

PREDICTIONS = ("eps", "x0", "v", "score")

# The kernels compute element indices in 32-bit integers (program id x block + lane).
_MAX_ELEMENTS = 2 ** 31 - 1


def _too_large(out: Tensor) -> Optional[str]:
    """Why the kernels cannot take a denoiser output this large (None if they can): ``out`` is
    the largest tensor they index ([2B, ...] with guidance, twice the channels with a learned
    variance)."""
    if out.numel() > _MAX_ELEMENTS:
        return f"the denoiser output has {out.numel()} elements; the kernels index at most 2^31 - 1"
    return None


def _check_tensor(name: str, value) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def _check_like(name: str, tensor: Optional[Tensor], x: Tensor) -> None:
    if tensor is not None and (tuple(tensor.shape) != tuple(x.shape) or tensor.device != x.device):
        raise ValueError(f"{name} must have the shape and device of x {tuple(x.shape)} {x.device}, "
                         f"got {tuple(tensor.shape)} {tensor.device}")


def _overlaps(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` may share an element: the same storage and overlapping byte spans
    (conservative for strided views that interleave without touching)."""
    if a.device != b.device or a.numel() == 0 or b.numel() == 0:
        return False
    if a.untyped_storage()._cdata != b.untyped_storage()._cdata:
        return False

    def span(t: Tensor) -> Tuple[int, int]:
        start = t.storage_offset() * t.element_size()
        extent = 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))
        return start, start + extent * t.element_size()
    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


def _check_into(into, keep, x: Tensor,
                reads: Sequence[Tuple[str, Optional[Tensor]]]) -> Tuple[Tensor, Optional[Tensor]]:
    """The caller's output buffers -> (y, kept or None), checked: like x (shape, dtype,
    device), contiguous (the kernel writes element i of the contiguous layout), and sharing no
    memory with any tensor the step reads (``reads``) or with each other.  Why no aliasing, not
    even into=x, although the update is elementwise (each element read, then written, by the
    same program): the registered op declares only its buffers as mutated, so torch.compile
    may assume the inputs unchanged -- a sampler ping-pongs two buffers instead."""
    if keep is not None:
        if not isinstance(into, tuple) or len(into) != 2:
            raise TypeError(f"with keep=, into must be a KeptStep(x_next, kept) of two buffers like x, "
                            f"got {type(into).__name__}")
        buffers = (("into.x_next", into[0]), ("into.kept", into[1]))
    else:
        if isinstance(into, tuple):
            raise TypeError("into is a pair of buffers but the step keeps nothing (keep=None): pass one tensor like x")
        buffers = (("into", into),)
    for name, buffer in buffers:
        _check_tensor(name, buffer)
        if tuple(buffer.shape) != tuple(x.shape) or buffer.dtype != x.dtype or buffer.device != x.device:
            raise ValueError(f"{name} must be a {x.dtype} tensor of x's shape {tuple(x.shape)} on {x.device}, got "
                             f"{buffer.dtype} {tuple(buffer.shape)} on {buffer.device}")
        if not buffer.is_contiguous():
            raise ValueError(f"{name} must be contiguous (the step writes it in x's contiguous layout), got strides "
                             f"{tuple(buffer.stride())}")
        if torch.compiler.is_compiling():         # fake tensors: torch.compile tracks the aliasing itself
            continue
        for read_name, read in reads:
            if read is not None and _overlaps(buffer, read):
                raise ValueError(f"{name} shares memory with {read_name}, which the step reads: pass a separate "
                                 f"buffer (a loop alternates two buffers, reading one and writing the other)")
    if keep is not None and not torch.compiler.is_compiling() and _overlaps(*into):
        raise ValueError("into.x_next and into.kept share memory: pass two separate buffers")
    return buffers[0][1], (buffers[1][1] if keep is not None else None)


def _check_per_sample(coefficients: Tensor, x: Tensor) -> None:
    # float64 rows only for float64 x, whose steps run on the reference in float64
    dtypes = (torch.float32, torch.float64) if x.dtype == torch.float64 else (torch.float32,)
    if tuple(coefficients.shape) != (x.shape[0], 7) or coefficients.dtype not in dtypes \
            or coefficients.device != x.device:
        what = "float32 (or, for float64 x, float64)" if x.dtype == torch.float64 else "float32"
        raise ValueError(f"per-sample coefficients must be a {what} tensor [{x.shape[0]}, 7] on {x.device}, got "
                         f"{coefficients.dtype} {tuple(coefficients.shape)} on {coefficients.device}")


def diffusion_step(x: Tensor, out: Tensor, coefficients: Union[StepCoefficients, Sequence[float], Tensor],
                   prediction: str = "eps", clip: bool = False, guidance: Optional[float] = None,
                   noise: Optional[Tensor] = None, seed: Optional[int] = None, offset: int = 0,
                   learned_variance: Optional[Sequence[float]] = None, threshold: Optional[float] = None,
                   backend: Optional[str] = None, aux: Optional[Tensor] = None,
                   keep: Optional[Sequence[float]] = None,
                   into: Optional[Union[Tensor, KeptStep]] = None) -> Union[Tensor, KeptStep]:
    """x_next = c_x0 x0 + c_eps eps + c_x x + c_aux aux + sigma z for x [B, ...] and denoiser
    output ``out`` [B, ...] ([2B, ...] = [cond; uncond] when ``guidance`` is a number w:
    (1 + w) cond - w uncond).  z: ``noise`` (a tensor like x), or, on the Triton backend,
    Philox normals drawn in the kernel from (``seed``, ``offset`` + element index).

    coefficients: a ``StepCoefficients`` (s0 = sqrt(abar_t), s1 = sqrt(1 - abar_t), c_x0, c_eps,
    c_x, sigma, c_aux) -- what ``fastgen.sampling.diffusion``'s coefficient functions return --
    or, as before it existed, a plain sequence of its first 6 (c_aux = 0) or all 7 numbers; or a
    float32 tensor [B, 7] on x's device with one row per sample (columns in ``COEFFICIENTS``
    order; float64 also accepted for float64 x; z is then always added: pass noise= or seed=).
    aux: a tensor like x weighted by c_aux (Heun's half step, DPM-Solver++'s previous x0).
    keep = (k_x0, k_x) (e.g. ``KeepCoefficients``): also return k_x0 x0 + k_x x, as
    ``KeptStep(x_next, kept)``.
    learned_variance = (log beta~, log beta) (``LearnedVariance``): ``out`` carries
    [prediction; v] on the channels and each element's sigma interpolates the two
    log-variances (Improved DDPM).  threshold = p: Imagen's dynamic thresholding at percentile p
    instead of ``clip``.  backend: None (automatic), 'reference' or 'triton'.
    into: write the step into these buffers and return them instead of allocating: a
    contiguous tensor like x (shape, dtype, device), or with ``keep`` a ``KeptStep`` of two;
    none may share memory with x, out, noise, aux or each other (ValueError otherwise) --
    alternate two buffers across steps.  The same numbers as the allocating step.
    dtypes: x float32/float16/bfloat16 on Triton (math in fp32), float64 on the reference (math
    in float64 end to end: the automatic choice sends float64 there, a forced Triton backend
    refuses it)."""
    _check_tensor("x", x)
    _check_tensor("out", out)
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    expected = [2 * x.shape[0] if guidance is not None else x.shape[0], *x.shape[1:]]
    if learned_variance is not None:
        expected[1] *= 2                        # [prediction; v] along the channels
    expected = tuple(expected)
    if tuple(out.shape) != expected:
        why = " (guidance needs [cond; uncond] outputs, twice the batch)" if guidance is not None else ""
        raise ValueError(f"the denoiser output has shape {tuple(out.shape)} but x has shape {tuple(x.shape)}{why}")
    if out.device != x.device:
        raise ValueError(f"out is on {out.device} but x is on {x.device}; they must match")
    per_sample = torch.is_tensor(coefficients)
    if per_sample:
        _check_per_sample(coefficients, x)
        if learned_variance is not None:   # the learned sigma would override a row's sigma = 0
            raise ValueError("learned_variance cannot be combined with per-sample coefficients")
        # The kernel reads the rows; the scalar arguments are placeholders.
        scalars = StepCoefficients(1.0, 1.0, 0.0, 0.0, 0.0, 0.0)
    else:
        scalars = StepCoefficients.of(coefficients)
        if scalars.c_aux != 0 and aux is None:
            raise ValueError("c_aux (coefficients[6]) is nonzero: pass aux=")
    _check_like("noise", noise, x)
    _check_like("aux", aux, x)
    if keep is not None and len(keep) != 2:
        raise ValueError(f"keep must be (k_x0, k_x), got {keep!r}")
    adds_noise = per_sample or scalars.sigma != 0
    if adds_noise and noise is None and seed is None:
        raise ValueError("this step adds noise (sigma > 0 or per-sample coefficients): pass noise= or seed=")
    scale = None
    if threshold is not None:     # Imagen's dynamic thresholding needs a per-sample percentile first
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be a percentile in (0, 1], got {threshold!r}")
        if per_sample:                # each sample's s0, s1, broadcast over its elements
            rows = coefficients.view(-1, 7, *[1] * (x.dim() - 1))
            s0, s1 = rows[:, 0], rows[:, 1]
        else:
            s0, s1 = scalars.s0, scalars.s1
        x0 = reference.diffusion_x0(x, out, s0, s1, prediction, guidance, learned_variance is not None)
        scale = reference.dynamic_threshold(x0, threshold)
    buffers = None
    if into is not None:
        buffers = _check_into(into, keep, x, (("x", x), ("out", out), ("noise", noise), ("aux", aux),
                                              ("the per-sample coefficients", coefficients if per_sample else None)))
    if _diffusion_step_kernel.backend(x, backend, unsupported=_too_large(out)) == "reference":
        if adds_noise and noise is None:
            raise ValueError("the reference backend needs an explicit noise tensor (seed= is Triton-only)")
        step = reference.diffusion_step(x, out, noise, coefficients if per_sample else scalars, prediction, clip,
                                        guidance, learned_variance, scale, aux, keep)
        if buffers is None:
            return step
        y, kept = buffers
        if keep is None:
            return y.copy_(step)
        return KeptStep(y.copy_(step.x_next), kept.copy_(step.kept))
    args = (x, out, noise, list(scalars), coefficients if per_sample else None, aux,
            None if keep is None else [float(k) for k in keep], prediction, clip,
            None if guidance is None else float(guidance), seed or 0, offset,
            None if learned_variance is None else [float(v) for v in learned_variance], scale)
    if buffers is None:
        y, kept = _diffusion_step_kernel(*args)
    else:
        _diffusion_step_into_kernel(*args, *buffers)
        y, kept = buffers
    return y if keep is None else KeptStep(y, kept)


def _diffusion_step_fake(x, out, noise, coefficients, per_sample, aux, keep, *options):
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    return y, (torch.empty_like(y) if keep is not None else x.new_empty(0))


@define_op("diffusion_step", family="diffusion_step", tf32="matmul", fake=_diffusion_step_fake)
def _diffusion_step_kernel(x: Tensor, out: Tensor, noise: Optional[Tensor], coefficients: List[float],
                           per_sample: Optional[Tensor], aux: Optional[Tensor], keep: Optional[List[float]],
                           prediction: str, clip: bool, guidance: Optional[float], seed: int, offset: int,
                           learned_variance: Optional[List[float]],
                           threshold_scale: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """One diffusion / score-based sampler step, fused (guidance, prediction, x0 clipping, update, noise).

    -> (y like x, kept like x -- or an empty tensor without ``keep``).  coefficients: the 7
    ``COEFFICIENTS`` (placeholders when ``per_sample`` [B, 7] is given)."""
    y = _backend.empty(*x.shape, dtype=x.dtype, device=x.device)
    kept = _backend.empty(*(x.shape if keep is not None else (0,)), dtype=x.dtype, device=x.device)
    _launch_step(x, out, noise, coefficients, per_sample, aux, keep, prediction, clip, guidance, seed, offset,
                 learned_variance, threshold_scale, y, kept if keep is not None else None)
    return y, kept


@define_op("diffusion_step_into", family="diffusion_step", tf32="matmul", mutates_args=("y", "kept"))
def _diffusion_step_into_kernel(x: Tensor, out: Tensor, noise: Optional[Tensor], coefficients: List[float],
                                per_sample: Optional[Tensor], aux: Optional[Tensor], keep: Optional[List[float]],
                                prediction: str, clip: bool, guidance: Optional[float], seed: int, offset: int,
                                learned_variance: Optional[List[float]], threshold_scale: Optional[Tensor],
                                y: Tensor, kept: Optional[Tensor]) -> None:
    """The diffusion sampler step written into the caller's buffers (a loop's ping-pong pair).

    y: contiguous, like x; kept: like x with ``keep`` (else None); neither shares memory with
    an input (``diffusion_step`` checks it) -- the only tensors written, as ``mutates_args`` says."""
    _launch_step(x, out, noise, coefficients, per_sample, aux, keep, prediction, clip, guidance, seed, offset,
                 learned_variance, threshold_scale, y, kept)


def _launch_step(x, out, noise, coefficients, per_sample, aux, keep, prediction, clip, guidance, seed, offset,
                 learned_variance, threshold_scale, y, kept):
    """The one launch both step ops make, into y (and kept, with ``keep``)."""
    from fastgen.kernels.diffusion_step import diffusion_step as launch
    x, out = x.contiguous(), out.contiguous()
    launch(x, out, None if noise is None else noise.contiguous(), y, coefficients, prediction, clip,
           guidance, seed, offset, learned_variance,
           None if threshold_scale is None else threshold_scale.float().contiguous(),
           aux=None if aux is None else aux.contiguous(),
           per_sample=None if per_sample is None else per_sample.contiguous(),
           kept=kept if keep is not None else None, keep=keep or (0.0, 0.0))


def _check_norms_inputs(name: str, out: Tensor, noise: Optional[Tensor], seed: Optional[int],
                        guidance: Optional[float]) -> int:
    """The checks of the norms' inputs (``score_noise_norms``, ``corrector_coefficients``) -> B."""
    _check_tensor("out", out)
    batch = out.shape[0] // (2 if guidance is not None else 1)
    if guidance is not None and out.shape[0] % 2:
        raise ValueError(f"guidance needs [cond; uncond] outputs (an even batch), got {tuple(out.shape)}")
    if noise is not None and (tuple(noise.shape) != (batch, *out.shape[1:]) or noise.device != out.device):
        raise ValueError(f"noise must have shape {(batch, *out.shape[1:])} on {out.device}, "
                         f"got {tuple(noise.shape)} on {noise.device}")
    if noise is None and seed is None:
        raise ValueError(f"{name} needs noise= or seed=")
    return batch


def score_noise_norms(out: Tensor, noise: Optional[Tensor] = None, seed: Optional[int] = None, offset: int = 0,
                      guidance: Optional[float] = None, backend: Optional[str] = None) -> Tensor:
    """Per-sample L2 norms -> [B, 2] float32 (float64 on the reference for float64 out or noise):
    (||out_b||, ||z_b||), out [B, ...] (guided like
    ``diffusion_step``: [2B, ...] = [cond; uncond] with ``guidance``), z = ``noise`` [B, ...] or,
    on the Triton backend, the Philox normals ``diffusion_step`` draws with the same
    (``seed``, ``offset``) -- so a corrector's step size sees exactly the z its update adds."""
    _check_norms_inputs("score_noise_norms", out, noise, seed, guidance)
    if _score_noise_norms_kernel.backend(out, backend, unsupported=_too_large(out)) == "reference":
        if noise is None:
            raise ValueError("the reference backend needs an explicit noise tensor (seed= is Triton-only)")
        return reference.score_noise_norms(out, noise, guidance)
    return _score_noise_norms_kernel(out, noise, None if guidance is None else float(guidance), seed or 0, offset)


@define_op("score_noise_norms", family="diffusion_step", tf32="matmul",
           fake=lambda out, noise, guidance, seed, offset: out.new_empty(
               out.shape[0] // (2 if guidance is not None else 1), 2, dtype=torch.float32))
def _score_noise_norms_kernel(out: Tensor, noise: Optional[Tensor], guidance: Optional[float], seed: int,
                              offset: int) -> Tensor:
    """Per-sample norms of the (guided) denoiser output and of z (the predictor-corrector's step size)."""
    from fastgen.kernels.diffusion_step import norms_blocks, score_noise_norms as launch
    out = out.contiguous()
    batch = out.shape[0] // (2 if guidance is not None else 1)
    sample_size = out[:batch].numel() // batch
    partial = _backend.empty(batch, norms_blocks(sample_size)[1], 2, dtype=torch.float32, device=out.device)
    launch(out, None if noise is None else noise.contiguous(), partial, sample_size, guidance, seed, offset)
    return partial.sum(dim=1).sqrt()       # a fixed-order sum: the same norms run to run



def corrector_workspace(x: Tensor) -> Optional[CorrectorWorkspace]:
    """Scratch for ``corrector_coefficients(..., workspace=)`` with x [B, ...]: partial
    [B, blocks, 2] and rows [B, 7], float32 on x's device (a loop allocates it once per run);
    None without Triton (only the reference runs, and it allocates its own)."""
    if _backend.triton_version() is None:
        return None
    from fastgen.kernels.diffusion_step import norms_blocks
    batch = x.shape[0]
    blocks = norms_blocks(x.numel() // max(batch, 1))[1]
    return CorrectorWorkspace(_backend.empty(batch, blocks, 2, dtype=torch.float32, device=x.device),
                              _backend.empty(batch, 7, dtype=torch.float32, device=x.device))


def _check_workspace(workspace, batch: int, sample_size: int, device: torch.device) -> None:
    from fastgen.kernels.diffusion_step import norms_blocks
    if not isinstance(workspace, tuple) or len(workspace) != 2:
        raise TypeError(f"workspace must be a CorrectorWorkspace(partial, rows) (corrector_workspace(x)), "
                        f"got {type(workspace).__name__}")
    expected = (("workspace.partial", (batch, norms_blocks(sample_size)[1], 2)), ("workspace.rows", (batch, 7)))
    for (name, shape), buffer in zip(expected, workspace):
        _check_tensor(name, buffer)
        if tuple(buffer.shape) != shape or buffer.dtype != torch.float32 or buffer.device != device \
                or not buffer.is_contiguous():
            raise ValueError(f"{name} must be a contiguous float32 tensor {list(shape)} on {device} "
                             f"(corrector_workspace(x)), got {buffer.dtype} {tuple(buffer.shape)} on {buffer.device}")


def corrector_coefficients(out: Tensor, snr: float, s0: float, s1: float, prediction: str,
                           noise: Optional[Tensor] = None, seed: Optional[int] = None, offset: int = 0,
                           guidance: Optional[float] = None, backend: Optional[str] = None,
                           workspace: Optional[CorrectorWorkspace] = None) -> Tensor:
    """The Langevin corrector's per-sample coefficients at the level (s0, s1) -> [B, 7] float32
    (float64 on the reference for float64 out or noise), columns in ``COEFFICIENTS`` order:
    e = 2 (snr ||z|| / max(||score||, 1e-12))^2, row = (s0, s1, 0, -e / s1, 1, sqrt(2e), 0), with
    ||score|| = ||out|| / s1 for prediction 'eps' and ||out|| for 'score' (Song et al. 2021,
    Algorithm 4/5; ``reference.langevin_corrector_coefficients``).  out, noise, seed, offset,
    guidance: as ``score_noise_norms`` (with ``seed`` the z the step then draws).

    Triton: the norms kernel's per-block sums, then one small kernel that reduces them and
    writes the rows -- two launches and, with ``workspace`` (``corrector_workspace(x)``, written
    and its ``rows`` returned), no other op.  The reference ignores ``workspace``."""
    batch = _check_norms_inputs("corrector_coefficients", out, noise, seed, guidance)
    if prediction not in ("eps", "score"):
        raise ValueError(f"the corrector reads the score from an 'eps' or 'score' prediction, got {prediction!r}")
    if _corrector_coefficients_kernel.backend(out, backend, unsupported=_too_large(out)) == "reference":
        if noise is None:
            raise ValueError("the reference backend needs an explicit noise tensor (seed= is Triton-only)")
        return reference.corrector_coefficients(out, noise, snr, s0, s1, prediction, guidance)
    args = (out, noise, None if guidance is None else float(guidance), seed or 0, offset, float(snr), float(s0),
            float(s1), prediction)
    if workspace is None:
        return _corrector_coefficients_kernel(*args)
    _check_workspace(workspace, batch, out.numel() // max(out.shape[0], 1), out.device)
    _corrector_coefficients_into_kernel(*args, *workspace)
    return workspace.rows


def _corrector_fake(out, noise, guidance, seed, offset, snr, s0, s1, prediction):
    return out.new_empty(out.shape[0] // (2 if guidance is not None else 1), 7, dtype=torch.float32)


@define_op("corrector_coefficients", family="diffusion_step", tf32="matmul", fake=_corrector_fake)
def _corrector_coefficients_kernel(out: Tensor, noise: Optional[Tensor], guidance: Optional[float], seed: int,
                                   offset: int, snr: float, s0: float, s1: float, prediction: str) -> Tensor:
    """The Langevin corrector's per-sample coefficients [B, 7] (norms, then rows: two launches)."""
    batch = out.shape[0] // (2 if guidance is not None else 1)
    workspace = corrector_workspace(out[:batch])
    _launch_corrector(out, noise, guidance, seed, offset, snr, s0, s1, prediction, *workspace)
    return workspace.rows


@define_op("corrector_coefficients_into", family="diffusion_step", tf32="matmul", mutates_args=("partial", "rows"))
def _corrector_coefficients_into_kernel(out: Tensor, noise: Optional[Tensor], guidance: Optional[float], seed: int,
                                        offset: int, snr: float, s0: float, s1: float, prediction: str,
                                        partial: Tensor, rows: Tensor) -> None:
    """The corrector's coefficients written into a loop's workspace: partial [B, blocks, 2], rows [B, 7]."""
    _launch_corrector(out, noise, guidance, seed, offset, snr, s0, s1, prediction, partial, rows)


def _launch_corrector(out, noise, guidance, seed, offset, snr, s0, s1, prediction, partial, rows):
    """The two launches of both corrector ops: the norms' partial sums, then the rows."""
    from fastgen.kernels.diffusion_step import corrector_coefficients as launch_rows, score_noise_norms as launch_norms
    out = out.contiguous()
    launch_norms(out, None if noise is None else noise.contiguous(), partial, out.numel() // out.shape[0], guidance,
                 seed, offset)
    launch_rows(partial, rows, snr, s0, s1, prediction)
