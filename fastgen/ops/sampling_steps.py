"""Fused sampling steps: one launch per generated pixel or audio sample.

- ``gated_pixel_step``: every layer's horizontal stack, the head, the Gumbel-max draw and the
  embedding of the drawn value for one pixel of a Gated PixelCNN (grey images, 3x3 kernels).
- ``wavenet_step``: every WaveNet layer (with its queue), the head and the draw for one sample.

References in ``fastgen.ops.reference``, Triton kernels in ``fastgen.kernels``; shapes are in
the references' docstrings.  Sampling-only ops (no autograd) that write their outputs and
state in place (declared in ``mutates_args``).
"""
from typing import List, Optional

import torch

from fastgen.ops import reference
from fastgen.ops._backend import choose_backend, requested_backend


@torch.library.custom_op("fastgen::gated_pixel_step", mutates_args=("p_out", "x_out", "e_row"))
def _gated_pixel_step_op(p_in: torch.Tensor, p_out: torch.Tensor, v: torch.Tensor, cond_h: torch.Tensor,
                         weights: List[torch.Tensor], gumbel: torch.Tensor, x_out: torch.Tensor,
                         e_row: torch.Tensor, c: int, inv_temperature: float, scale: float) -> None:
    from fastgen.kernels.gated_pixel_step import gated_pixel_step as launch
    exact = not (p_in.is_cuda and torch.backends.cuda.matmul.allow_tf32)
    launch(p_in, p_out, v, cond_h, weights, gumbel, x_out, e_row, c, inv_temperature, scale,
           precision="ieee" if exact else "tf32")


def _power_of_two(n):
    return n >= 16 and n & (n - 1) == 0


def gated_pixel_step(p_in, p_out, v, cond_h, weights, gumbel, x_out, e_row, c, inv_temperature, scale,
                     backend=None):
    """Draw column c of the current row for every batch row; writes x_out [B], p_out
    [L, B, CH] and e_row[:, c] [B, CH].  See ``fastgen.ops.reference.gated_pixel_step``."""
    CH, HC = p_in.shape[2], weights[6].shape[1]
    if not (_power_of_two(CH) and _power_of_two(HC)):
        # the kernel tiles CH and the head width as powers of two >= 16
        if requested_backend(backend) == "triton":
            raise ValueError(f"gated_pixel_step on Triton needs channels and head channels that are powers "
                             f"of two >= 16, got {CH} and {HC}")
        backend = "reference"
    if choose_backend("gated_pixel_step", p_in, backend) == "reference":
        x, p_new, e = reference.gated_pixel_step(p_in, v, cond_h, weights, gumbel, c, inv_temperature, scale)
        x_out.copy_(x)
        p_out.copy_(p_new)
        e_row[:, c] = e
        return
    torch.ops.fastgen.gated_pixel_step(p_in, p_out, v, cond_h, list(weights), gumbel, x_out, e_row, c,
                                       float(inv_temperature), float(scale))


@torch.library.custom_op("fastgen::wavenet_step", mutates_args=("code_out", "queue", "scratch"))
def _wavenet_step_op(prev: torch.Tensor, code_out: torch.Tensor, queue: torch.Tensor, queue_offsets: torch.Tensor,
                     weights: List[torch.Tensor], gterm: torch.Tensor, local_t: Optional[torch.Tensor],
                     gumbel: torch.Tensor, scratch: torch.Tensor, t: int, cycle: int, kernel_size: int,
                     inv_temperature: float) -> None:
    from fastgen.kernels.wavenet_step import wavenet_step as launch
    exact = not (prev.is_cuda and torch.backends.cuda.matmul.allow_tf32)
    launch(prev, code_out, queue, queue_offsets, weights, gterm, local_t, gumbel, scratch, t, cycle,
           kernel_size, inv_temperature, precision="ieee" if exact else "tf32")


def wavenet_step(prev, code_out, queue, queue_offsets, weights, gterm, local_t, gumbel, scratch, t, cycle,
                 kernel_size, inv_temperature, backend=None):
    """Draw sample t for every batch row: writes code_out [B] and pushes every layer's input
    into its queue slot t mod span.  See ``fastgen.ops.reference.wavenet_step``."""
    R, S = weights[1].shape[2], weights[8].shape[0]
    LC = 0 if local_t is None else local_t.shape[1]
    if not (_power_of_two(R) and _power_of_two(S) and (LC == 0 or _power_of_two(LC))):
        if requested_backend(backend) == "triton":
            raise ValueError(f"wavenet_step on Triton needs residual, skip and local channels that are "
                             f"powers of two >= 16, got {R}, {S}, {LC}")
        backend = "reference"
    if choose_backend("wavenet_step", queue, backend) == "reference":
        codes, pushed = reference.wavenet_step(prev, queue, queue_offsets, t, cycle, kernel_size, weights,
                                               gterm, local_t, gumbel, inv_temperature)
        code_out.copy_(codes)
        for layer in range(pushed.shape[0]):
            span = 2 ** (layer % cycle) * (kernel_size - 1)
            queue[int(queue_offsets[layer]) + t % span] = pushed[layer]
        return
    torch.ops.fastgen.wavenet_step(prev, code_out, queue, queue_offsets, list(weights), gterm, local_t, gumbel,
                                   scratch, t, cycle, kernel_size, float(inv_temperature))
