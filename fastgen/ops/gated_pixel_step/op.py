"""The fused Gated PixelCNN sampling step: every layer's horizontal stack, the head, the
Gumbel-max draw and the embedding of the drawn value for one pixel (grey images, 3x3 kernels)
in one launch.  Reference: ``fastgen.ops.gated_pixel_step.reference``; kernel:
``fastgen.kernels.gated_pixel_step``.  Sampling only (no autograd); writes its outputs in place
(declared in ``mutates_args``).
"""
from typing import List

import torch

from fastgen.ops._backend import choose_backend, eager_or_registered, requested_backend
from fastgen.ops.gated_pixel_step import reference


def _gated_pixel_step_impl(p_in: torch.Tensor, p_out: torch.Tensor, v: torch.Tensor, cond_h: torch.Tensor,
                           weights: List[torch.Tensor], gumbel: torch.Tensor, x_out: torch.Tensor,
                           e_row: torch.Tensor, c: int, inv_temperature: float, scale: float) -> None:
    from fastgen.kernels.gated_pixel_step import gated_pixel_step as launch
    exact = not (p_in.is_cuda and torch.backends.cuda.matmul.allow_tf32)
    launch(p_in, p_out, v, cond_h, weights, gumbel, x_out, e_row, c, inv_temperature, scale,
           precision="ieee" if exact else "tf32")


# the registered op, for torch.compile (eager calls: ``eager_or_registered``)
_gated_pixel_step_op = torch.library.custom_op("fastgen::gated_pixel_step",
                                               mutates_args=("p_out", "x_out", "e_row"))(_gated_pixel_step_impl)


def _power_of_two(n):
    return n >= 16 and n & (n - 1) == 0


def gated_pixel_step(p_in, p_out, v, cond_h, weights, gumbel, x_out, e_row, c, inv_temperature, scale,
                     backend=None):
    """Draw column c of the current row for every batch row; writes x_out [B], p_out
    [L, B, CH] and e_row[:, c] [B, CH].  See ``fastgen.ops.gated_pixel_step.reference.gated_pixel_step``."""
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
    step = eager_or_registered("gated_pixel_step", _gated_pixel_step_impl)
    step(p_in, p_out, v, cond_h, list(weights), gumbel, x_out, e_row, c, float(inv_temperature), float(scale))
