"""Fused WaveNet sampling steps: one launch per generated audio sample, or per block of samples.

- ``wavenet_step``: every WaveNet layer (with its queue), the head and the draw for one sample.
- ``wavenet_steps``: the same for T samples in one launch of a persistent kernel, each drawn
  code fed back as the next input on the device (small batches: no launch per sample).

References in ``fastgen.ops.wavenet_step.reference``, Triton kernels in
``fastgen.kernels.wavenet_step``; shapes are in the references' docstrings, the weights travel
as a ``WaveNetStepWeights``.  Sampling-only ops (no autograd) that write their outputs and
state in place (declared in ``mutates_args``).

Declared with ``fastgen.ops._define.define_op`` as ``torch.ops.fastgen.wavenet_step`` /
``wavenet_steps``.  TF32: the steps replace the unfused layers' matmuls, so they follow
``torch.backends.cuda.matmul.allow_tf32`` (``tf32="matmul"``; off by default: exact fp32 dots
for fp32 weights; 16-bit weights always take the tensor cores).
"""
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from fastgen.ops._define import define_op
from fastgen.ops.wavenet_step import reference
from fastgen.ops.wavenet_step.bundles import WaveNetStepWeights

WAVENET_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _bundle(op: str, weights: Sequence[Tensor]) -> WaveNetStepWeights:
    """``weights`` as a ``WaveNetStepWeights`` (the twelve tensors in its order are accepted too)."""
    if isinstance(weights, WaveNetStepWeights):
        return weights
    if not isinstance(weights, (list, tuple)) or len(weights) != len(WaveNetStepWeights._fields):
        got = len(weights) if isinstance(weights, (list, tuple)) else type(weights).__name__
        raise ValueError(f"{op}: weights must be a WaveNetStepWeights (WaveNet.packed_step_weights()), got {got}")
    return WaveNetStepWeights(*weights)


def _check(op: str, queue: Tensor, weights: WaveNetStepWeights, gterm: Tensor, local: Optional[Tensor],
           gumbel: Tensor, scratch: Tensor) -> None:
    """The dtype rules shared by both ops: TypeError naming the argument."""
    wdtype = weights.dtype
    if wdtype not in WAVENET_DTYPES:
        raise TypeError(f"{op}: weights must be float32, float16 or bfloat16, got {wdtype}")
    for name in WaveNetStepWeights.MATRICES:
        if getattr(weights, name).dtype != wdtype:
            raise TypeError(f"{op}: weight {name} is {getattr(weights, name).dtype}; every matrix must be "
                            f"{wdtype} like wtap")
    fp32 = [(name, getattr(weights, name)) for name in WaveNetStepWeights.BIASES]
    for name, tensor in [*fp32, ("gterm", gterm), ("gumbel", gumbel), ("local", local)]:
        if tensor is not None and tensor.dtype != torch.float32:
            raise TypeError(f"{op}: {name} must be float32 (biases and conditioning stay fp32), got {tensor.dtype}")
    for name, tensor in (("queue", queue), ("scratch", scratch)):
        if tensor.dtype != wdtype:
            raise TypeError(f"{op}: {name} must have the weights' dtype {wdtype}, got {tensor.dtype}")


def _unsupported(queue: Tensor, weights: WaveNetStepWeights, local: Optional[Tensor]) -> Optional[str]:
    """Why the Triton kernels cannot take these inputs, or None."""
    R, S = weights.wtap.shape[2], weights.w1.shape[0]
    LC = 0 if local is None else local.shape[-1]
    if not all(n >= 16 and n & (n - 1) == 0 for n in (R, S, *((LC,) if LC else ()))):
        # the kernels tile the residual, skip and local channels whole, as powers of two
        return f"residual, skip and local channels must be powers of two >= 16, got {R}, {S}, {LC}"
    if weights.dtype == torch.bfloat16 and not queue.is_cuda:
        return ("bfloat16 does not run in the Triton interpreter (numpy has no bfloat16); use "
                "backend='reference' on the CPU or a CUDA device")
    return None


@define_op("wavenet_step", family="wavenet_step", tf32="matmul", mutates_args=("code_out", "queue", "scratch"))
def _wavenet_step_kernel(prev: Tensor, code_out: Tensor, queue: Tensor, queue_offsets: Tensor, weights: List[Tensor],
                         gterm: Tensor, local_t: Optional[Tensor], gumbel: Tensor, scratch: Tensor, t: int,
                         cycle: int, kernel_size: int, inv_temperature: float) -> None:
    """WaveNet: one audio sample's layers, queue pushes, head and Gumbel-max draw in one launch."""
    from fastgen.kernels.wavenet_step import wavenet_step as launch
    w = WaveNetStepWeights(*weights)
    launch(prev, code_out, queue, queue_offsets, w, gterm, local_t, gumbel, scratch, t, cycle, kernel_size,
           inv_temperature, precision=_wavenet_step_kernel.precision(queue, w.dtype))


@define_op("wavenet_steps", family="wavenet_step", tf32="matmul", mutates_args=("codes_out", "queue", "scratch"))
def _wavenet_steps_kernel(prev: Tensor, codes_out: Tensor, queue: Tensor, queue_offsets: Tensor,
                          weights: List[Tensor], gterm: Tensor, local: Optional[Tensor], gumbel: Tensor,
                          scratch: Tensor, t0: int, cycle: int, kernel_size: int, inv_temperature: float) -> None:
    """WaveNet: a block of audio samples in one launch of a persistent kernel (codes fed back on chip)."""
    from fastgen.kernels.wavenet_step import wavenet_steps as launch
    w = WaveNetStepWeights(*weights)
    launch(prev, codes_out, queue, queue_offsets, w, gterm, local, gumbel, scratch, t0, cycle, kernel_size,
           inv_temperature, precision=_wavenet_steps_kernel.precision(queue, w.dtype))


def wavenet_step(prev: Tensor, code_out: Tensor, queue: Tensor, queue_offsets: Tensor,
                 weights: WaveNetStepWeights, gterm: Tensor, local_t: Optional[Tensor], gumbel: Tensor,
                 scratch: Tensor, t: int, cycle: int, kernel_size: int, inv_temperature: float,
                 backend: Optional[str] = None) -> None:
    """Draw sample t for every batch row: writes code_out [B] and pushes every layer's input
    into its queue slot t mod span.  See ``fastgen.ops.wavenet_step.reference.wavenet_step``
    (shapes, and the fp16/bf16 numerics: matrices, queue and scratch [B, S] in one dtype,
    everything else fp32).

    Backends: Triton on CUDA (and under TRITON_INTERPRET=1 when forced), the reference on the
    CPU.  The kernels need residual, skip and local channels that are powers of two >= 16 and
    cannot run bfloat16 in the interpreter; other inputs run on the reference, or raise a
    ValueError when the Triton backend was forced."""
    weights = _bundle("wavenet_step", weights)
    _check("wavenet_step", queue, weights, gterm, local_t, gumbel, scratch)
    why = _unsupported(queue, weights, local_t)
    if _wavenet_step_kernel.backend(queue, backend, unsupported=why) == "reference":
        codes, pushed = reference.wavenet_step(prev, queue, queue_offsets, t, cycle, kernel_size, weights,
                                               gterm, local_t, gumbel, inv_temperature)
        code_out.copy_(codes)
        reference.wavenet_push(queue, pushed, queue_offsets, t, cycle, kernel_size)
        return
    _wavenet_step_kernel(prev, code_out, queue, queue_offsets, list(weights), gterm, local_t, gumbel, scratch,
                         int(t), int(cycle), int(kernel_size), float(inv_temperature))


def wavenet_steps(prev: Tensor, codes_out: Tensor, queue: Tensor, queue_offsets: Tensor,
                  weights: WaveNetStepWeights, gterm: Tensor, local: Optional[Tensor], gumbel: Tensor,
                  scratch: Tensor, t0: int, cycle: int, kernel_size: int, inv_temperature: float,
                  backend: Optional[str] = None) -> None:
    """Draw samples t0 .. t0+T-1 for every batch row, each drawn code the next step's input, in
    one launch of the persistent kernel: prev [B] (codes before t0; not changed), codes_out
    [T, B] long (written), local [T, B, LC] fp32 or None, gumbel [T, B, A] fp32; the queue is
    updated in place as by T calls of ``wavenet_step``.  See
    ``fastgen.ops.wavenet_step.reference.wavenet_steps``; backends as ``wavenet_step``."""
    T = gumbel.shape[0] if gumbel.dim() == 3 else -1
    B = prev.shape[0] if prev.dim() == 1 else -1
    if gumbel.dim() != 3 or B < 0 or gumbel.shape[1] != B:
        raise ValueError(f"wavenet_steps: gumbel must be [T, B, levels] and prev [B], got {tuple(gumbel.shape)} "
                         f"and {tuple(prev.shape)}")
    if tuple(codes_out.shape) != (T, B) or codes_out.dtype != torch.long:
        raise ValueError(f"wavenet_steps: codes_out must be long [{T}, {B}], got {codes_out.dtype} "
                         f"{tuple(codes_out.shape)}")
    if local is not None and (local.dim() != 3 or local.shape[:2] != (T, B)):
        raise ValueError(f"wavenet_steps: local must be [{T}, {B}, local_channels], got {tuple(local.shape)}")
    weights = _bundle("wavenet_steps", weights)
    _check("wavenet_steps", queue, weights, gterm, local, gumbel, scratch)
    why = _unsupported(queue, weights, local)
    if _wavenet_steps_kernel.backend(queue, backend, unsupported=why) == "reference":
        codes, new_queue = reference.wavenet_steps(prev, queue, queue_offsets, t0, cycle, kernel_size, weights,
                                                   gterm, local, gumbel, inv_temperature)
        codes_out.copy_(codes)
        queue.copy_(new_queue)
        return
    # the kernel writes codes_out [T, B] densely: a strided view gets a dense buffer, copied back
    out = codes_out if codes_out.is_contiguous() else torch.empty_like(codes_out, memory_format=torch.contiguous_format)
    _wavenet_steps_kernel(prev.contiguous(), out, queue, queue_offsets, list(weights), gterm,
                          None if local is None else local.contiguous(), gumbel, scratch, int(t0), int(cycle),
                          int(kernel_size), float(inv_temperature))
    if out is not codes_out:
        codes_out.copy_(out)
