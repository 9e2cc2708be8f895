"""Fused WaveNet sampling steps: one launch per generated audio sample, or per block of samples.

- ``wavenet_step``: every WaveNet layer (with its queue), the head and the draw for one sample.
- ``wavenet_steps``: the same for T samples in one launch of a persistent kernel, each drawn
  code fed back as the next input on the device (small batches: no launch per sample).

References in ``fastgen.ops.wavenet_step.reference``, Triton kernels in
``fastgen.kernels.wavenet_step``; shapes are in the references' docstrings.  Sampling-only ops
(no autograd) that write their outputs and state in place (declared in ``mutates_args``).
"""
from typing import List, Optional

import torch

from fastgen.ops._backend import choose_backend, eager_or_registered, requested_backend
from fastgen.ops.wavenet_step import reference


def _power_of_two(n):
    return n >= 16 and n & (n - 1) == 0


_WAVENET_MATRICES = {0: "embed", 1: "wtap", 3: "wlc", 4: "wres", 6: "wskip", 8: "w1", 10: "w2"}
_WAVENET_FP32 = {2: "bconv", 5: "bres", 7: "bskip", 9: "b1", 11: "b2"}
WAVENET_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Batches up to this size generate with the persistent kernel by default on CUDA (one launch
# per block of samples instead of one per sample).  Both kernels use the same grid
# (cdiv(B, 16) programs); the threshold is a conservative choice, not yet measured on a GPU.
WAVENET_PERSISTENT_MAX_BATCH = 64


def wavenet_persistent_preferred(batch, device):
    """Whether ``generate``/``stream`` use ``wavenet_steps`` (persistent) over ``wavenet_step``
    (one launch per sample) when the caller leaves ``persistent=None``: small batches on CUDA."""
    return torch.device(device).type == "cuda" and batch <= WAVENET_PERSISTENT_MAX_BATCH


def _wavenet_checks(op, queue, weights, gterm, local, gumbel, scratch, backend):
    """Dtype and layout checks shared by the WaveNet ops; -> the backend ('reference' | 'triton')."""
    if len(weights) != 12:
        raise ValueError(f"{op}: weights must be the 12 tensors of WaveNet.packed_step_weights, got {len(weights)}")
    wdtype = weights[1].dtype
    if wdtype not in WAVENET_DTYPES:
        raise TypeError(f"{op}: weights must be float32, float16 or bfloat16, got {wdtype}")
    for i, name in _WAVENET_MATRICES.items():
        if weights[i].dtype != wdtype:
            raise TypeError(f"{op}: weight {name} is {weights[i].dtype}; every matrix must be {wdtype} like wtap")
    for name, tensor in [*((n, weights[i]) for i, n in _WAVENET_FP32.items()), ("gterm", gterm),
                         ("gumbel", gumbel), ("local", local)]:
        if tensor is not None and tensor.dtype != torch.float32:
            raise TypeError(f"{op}: {name} must be float32 (biases and conditioning stay fp32), got {tensor.dtype}")
    for name, tensor in (("queue", queue), ("scratch", scratch)):
        if tensor.dtype != wdtype:
            raise TypeError(f"{op}: {name} must have the weights' dtype {wdtype}, got {tensor.dtype}")
    R, S = weights[1].shape[2], weights[8].shape[0]
    LC = 0 if local is None else local.shape[-1]
    if not (_power_of_two(R) and _power_of_two(S) and (LC == 0 or _power_of_two(LC))):
        if requested_backend(backend) == "triton":
            raise ValueError(f"{op} on Triton needs residual, skip and local channels that are "
                             f"powers of two >= 16, got {R}, {S}, {LC}")
        backend = "reference"
    chosen = choose_backend(op, queue, backend)
    if chosen == "triton" and wdtype == torch.bfloat16 and not queue.is_cuda:
        raise ValueError(f"{op}: bfloat16 does not run in the Triton interpreter (numpy has no bfloat16); "
                         "use backend='reference' on the CPU or a CUDA device")
    return chosen


def _dot_precision(tensor, weights):
    """How the WaveNet kernels' dots multiply: exact fp32 ("ieee") for fp32 weights unless TF32
    matmuls are allowed; 16-bit weights pass Triton's default ("tf32"), the setting the conv
    kernels' 16-bit dots were verified with on a GPU (it only affects fp32 operands)."""
    exact = weights[1].dtype == torch.float32 and not (tensor.is_cuda and torch.backends.cuda.matmul.allow_tf32)
    return "ieee" if exact else "tf32"


def _wavenet_step_impl(prev: torch.Tensor, code_out: torch.Tensor, queue: torch.Tensor,
                       queue_offsets: torch.Tensor, weights: List[torch.Tensor], gterm: torch.Tensor,
                       local_t: Optional[torch.Tensor], gumbel: torch.Tensor, scratch: torch.Tensor, t: int,
                       cycle: int, kernel_size: int, inv_temperature: float) -> None:
    from fastgen.kernels.wavenet_step import wavenet_step as launch
    launch(prev, code_out, queue, queue_offsets, weights, gterm, local_t, gumbel, scratch, t, cycle,
           kernel_size, inv_temperature, precision=_dot_precision(prev, weights))


def wavenet_step(prev, code_out, queue, queue_offsets, weights, gterm, local_t, gumbel, scratch, t, cycle,
                 kernel_size, inv_temperature, backend=None):
    """Draw sample t for every batch row: writes code_out [B] and pushes every layer's input
    into its queue slot t mod span.  See ``fastgen.ops.wavenet_step.reference.wavenet_step`` (shapes, and
    the fp16/bf16 numerics: matrices, queue and scratch in one dtype, everything else fp32)."""
    if _wavenet_checks("wavenet_step", queue, weights, gterm, local_t, gumbel, scratch, backend) == "reference":
        codes, pushed = reference.wavenet_step(prev, queue, queue_offsets, t, cycle, kernel_size, weights,
                                               gterm, local_t, gumbel, inv_temperature)
        code_out.copy_(codes)
        reference.wavenet_push(queue, pushed, queue_offsets, t, cycle, kernel_size)
        return
    step = eager_or_registered("wavenet_step", _wavenet_step_impl)
    step(prev, code_out, queue, queue_offsets, list(weights), gterm, local_t, gumbel, scratch, t, cycle, kernel_size,
         float(inv_temperature))


def _wavenet_steps_impl(prev: torch.Tensor, codes_out: torch.Tensor, queue: torch.Tensor,
                        queue_offsets: torch.Tensor, weights: List[torch.Tensor], gterm: torch.Tensor,
                        local: Optional[torch.Tensor], gumbel: torch.Tensor, scratch: torch.Tensor, t0: int,
                        cycle: int, kernel_size: int, inv_temperature: float) -> None:
    from fastgen.kernels.wavenet_step import wavenet_steps as launch
    launch(prev, codes_out, queue, queue_offsets, weights, gterm, local, gumbel, scratch, t0, cycle,
           kernel_size, inv_temperature, precision=_dot_precision(prev, weights))


def wavenet_steps(prev, codes_out, queue, queue_offsets, weights, gterm, local, gumbel, scratch, t0, cycle,
                  kernel_size, inv_temperature, backend=None):
    """Draw samples t0 .. t0+T-1 for every batch row, each drawn code the next step's input, in
    one launch of the persistent kernel: prev [B] (codes before t0; not changed), codes_out
    [T, B] long (written), local [T, B, LC] fp32 or None, gumbel [T, B, A] fp32; the queue is
    updated in place as by T calls of ``wavenet_step``.  See ``fastgen.ops.wavenet_step.reference.wavenet_steps``."""
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
    if _wavenet_checks("wavenet_steps", queue, weights, gterm, local, gumbel, scratch, backend) == "reference":
        codes, new_queue = reference.wavenet_steps(prev, queue, queue_offsets, t0, cycle, kernel_size, weights,
                                                   gterm, local, gumbel, inv_temperature)
        codes_out.copy_(codes)
        queue.copy_(new_queue)
        return
    out = codes_out if codes_out.is_contiguous() else torch.empty_like(codes_out, memory_format=torch.contiguous_format)
    steps = eager_or_registered("wavenet_steps", _wavenet_steps_impl)
    steps(prev.contiguous(), out, queue, queue_offsets, list(weights), gterm,
          None if local is None else local.contiguous(), gumbel, scratch, t0, cycle, kernel_size, float(inv_temperature))
    if out is not codes_out:
        codes_out.copy_(out)


# The registered ops (what torch.compile traces; eager calls run the _impl functions through
# ``eager_or_registered``).  Both WaveNet ops only write their arguments in place (declared in
# mutates_args) and return nothing, so their fake implementations have nothing to build.
_wavenet_step_op = torch.library.custom_op("fastgen::wavenet_step",
                                           mutates_args=("code_out", "queue", "scratch"))(_wavenet_step_impl)


@_wavenet_step_op.register_fake
def _wavenet_step_fake(prev, code_out, queue, queue_offsets, weights, gterm, local_t, gumbel, scratch, t, cycle,
                       kernel_size, inv_temperature):
    return None


_wavenet_steps_op = torch.library.custom_op("fastgen::wavenet_steps",
                                            mutates_args=("codes_out", "queue", "scratch"))(_wavenet_steps_impl)


@_wavenet_steps_op.register_fake
def _wavenet_steps_fake(prev, codes_out, queue, queue_offsets, weights, gterm, local, gumbel, scratch, t0, cycle,
                        kernel_size, inv_temperature):
    return None
