"""The fused Gated PixelCNN sampling ops (grey images, 3x3 kernels):

- ``gated_pixel_step``: every layer's horizontal stack, the head, the Gumbel-max draw and the
  embedding of the drawn value for one pixel, in one launch;
- ``gated_vertical_row``: every layer's vertical stack for one row, in one launch.

Reference: ``fastgen.ops.gated_pixel_step.reference``; kernels:
``fastgen.kernels.gated_pixel_step``.  Sampling only (no autograd); they write their outputs in
place (declared in ``mutates_args``).

Declared with ``fastgen.ops._define.define_op`` as ``torch.ops.fastgen.gated_pixel_step`` and
``torch.ops.fastgen.gated_vertical_row``.  TF32: the step replaces the unfused layers' 1x1 convs
and head, evaluated as matmuls, so it follows ``torch.backends.cuda.matmul.allow_tf32``
(``tf32="matmul"``; off by default: exact fp32); the row replaces the vertical stack's masked
3x3 convolutions, so it follows ``torch.backends.cudnn.allow_tf32`` like ``nn.Conv2d``
(``tf32="conv"``).
"""
from typing import List, Optional

import torch
from torch import Tensor

from fastgen.ops._define import define_op
from fastgen.ops.gated_pixel_step import reference
from fastgen.ops.gated_pixel_step.bundles import GatedStepWeights, GatedVerticalWeights


@define_op("gated_pixel_step", family="gated_pixel_step", tf32="matmul", mutates_args=("p_out", "x_out", "e_row"))
def _gated_pixel_step_kernel(p_in: Tensor, p_out: Tensor, v: Tensor, cond_h: Tensor, weights: List[Tensor],
                             gumbel: Tensor, x_out: Tensor, e_row: Tensor, c: int, inv_temperature: float,
                             scale: float) -> None:
    """Gated PixelCNN: one pixel's layers, head, Gumbel-max draw and embedding in one launch."""
    from fastgen.kernels.gated_pixel_step import gated_pixel_step as launch
    launch(p_in, p_out, v, cond_h, weights, gumbel, x_out, e_row, c, inv_temperature, scale,
           precision=_gated_pixel_step_kernel.precision(p_in))


def _shape(name: str, t: Tensor, expected: tuple, legend: str, op: str = "gated_pixel_step") -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor {legend}, got {type(t).__name__}")
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{op}: {name} must be {legend} = {list(expected)}, got {list(t.shape)}")


def _check(p_in, p_out, v, cond_h, weights, gumbel, x_out, e_row, c):
    """ValueError/TypeError naming the argument for inputs no backend can run."""
    if not isinstance(weights, GatedStepWeights):
        raise TypeError(f"gated_pixel_step: weights must be a GatedStepWeights (GatedPixelCNN.packed_step_weights()), "
                        f"got {type(weights).__name__}")
    if not isinstance(p_in, Tensor) or p_in.dim() != 3:
        raise ValueError(f"gated_pixel_step: p_in must be a 3-D tensor [L, B, CH], got {getattr(p_in, 'shape', p_in)}")
    L, B, CH = p_in.shape
    W = v.shape[2] if isinstance(v, Tensor) and v.dim() == 4 else -1
    HC, levels = weights.w1.shape[-1], weights.w2.shape[-1]
    _shape("p_out", p_out, (L, B, CH), "[L, B, CH]")
    _shape("v", v, (L, B, W, 2 * CH), "[L, B, W, 2CH]")
    _shape("cond_h", cond_h, (L, B, 2 * CH), "[L, B, 2CH]")
    for name, expected, legend in (("wh", (L, 2, CH, 2 * CH), "[L, 2, CH, 2CH]"), ("bh", (L, 2 * CH), "[L, 2CH]"),
                                   ("wl", (L, 2 * CH, 2 * CH), "[L, 2CH, 2CH]"), ("bl", (L, 2 * CH), "[L, 2CH]"),
                                   ("wo", (L, CH, CH), "[L, CH, CH]"), ("bo", (L, CH), "[L, CH]"),
                                   ("w1", (CH, HC), "[CH, HC]"), ("b1", (HC,), "[HC]"),
                                   ("w2", (HC, levels), "[HC, LEVELS]"), ("b2", (levels,), "[LEVELS]"),
                                   ("embed_w", (CH,), "[CH]"), ("embed_b", (CH,), "[CH]")):
        _shape(f"weights.{name}", getattr(weights, name), expected, legend)
    _shape("gumbel", gumbel, (B, levels), "[B, LEVELS]")
    _shape("x_out", x_out, (B,), "[B]")
    _shape("e_row", e_row, (B, W, CH), "[B, W, CH]")
    if x_out.dtype != torch.long:
        raise TypeError(f"gated_pixel_step: x_out must be int64, got {x_out.dtype}")
    if not 0 <= c < W:
        raise ValueError(f"gated_pixel_step: column c must lie in [0, {W}), got {c}")


def _unsupported(p_in: Tensor, weights: GatedStepWeights, dense: tuple, e_row: Tensor) -> Optional[str]:
    """Why the kernel cannot take these inputs, or None."""
    CH, HC = p_in.shape[2], weights.w1.shape[1]
    if not all(n >= 16 and n & (n - 1) == 0 for n in (CH, HC)):
        # the kernel tiles CH and the head width as powers of two >= 16
        return f"channels and head channels must be powers of two >= 16, got {CH} and {HC}"
    if any(t.dtype != torch.float32 or not t.is_contiguous() for t in (*dense, *weights)):
        return "p_in, p_out, v, cond_h and the weights must be contiguous float32"
    if e_row.dtype != torch.float32 or e_row.stride(2) != 1:
        return "e_row must be float32 with contiguous channels (any batch and column strides)"
    return None


def gated_pixel_step(p_in: Tensor, p_out: Tensor, v: Tensor, cond_h: Tensor, weights: GatedStepWeights,
                     gumbel: Tensor, x_out: Tensor, e_row: Tensor, c: int, inv_temperature: float, scale: float,
                     backend: Optional[str] = None) -> None:
    """Draw column c of the current row for every batch row; writes x_out [B] (long), p_out
    [L, B, CH] and e_row[:, c] [B, CH], in place.

    p_in: [L, B, CH] layer inputs at (r, c-1), not read at c = 0 (column -1 is zero padding);
    v: [L, B, W, 2CH]; cond_h: [L, B, 2CH]; weights: ``GatedStepWeights``; gumbel: [B, LEVELS]
    (any strides); x_out: [B] (any stride: e.g. the image's ``x[:, 0, r, c]``, so the sampler
    copies nothing); e_row: [B, W, CH] (any batch and column strides, e.g. a row of
    ``gated_vertical_row``'s vin).  Math in ``fastgen.ops.gated_pixel_step.reference``.

    Backends: Triton on CUDA (and under TRITON_INTERPRET=1 when forced), the reference on the
    CPU.  The kernel needs channels and head channels that are powers of two >= 16 and
    contiguous fp32 tensors (e_row: contiguous channels); other inputs run on the reference, or
    raise a ValueError when the Triton backend was forced."""
    _check(p_in, p_out, v, cond_h, weights, gumbel, x_out, e_row, c)
    why = _unsupported(p_in, weights, (p_in, p_out, v, cond_h), e_row)
    if _gated_pixel_step_kernel.backend(p_in, backend, unsupported=why) == "reference":
        x, p_new, e = reference.gated_pixel_step(p_in, v, cond_h, weights, gumbel, c, inv_temperature, scale)
        x_out.copy_(x)
        p_out.copy_(p_new)
        e_row[:, c] = e
        return
    _gated_pixel_step_kernel(p_in, p_out, v, cond_h, list(weights), gumbel, x_out, e_row, int(c),
                             float(inv_temperature), float(scale))


@define_op("gated_vertical_row", family="gated_pixel_step", tf32="conv", mutates_args=("vin", "v_out"))
def _gated_vertical_row_kernel(vin: Tensor, v_out: Tensor, cond_v: Tensor, weights: List[Tensor], r: int) -> None:
    """Gated PixelCNN: every layer's vertical stack for one row in one launch."""
    from fastgen.kernels.gated_pixel_step import gated_vertical_row as launch
    launch(vin, v_out, cond_v, weights, r, precision=_gated_vertical_row_kernel.precision(vin))


def _check_row(vin, v_out, cond_v, weights, r):
    """ValueError/TypeError naming the argument for inputs no backend can run."""
    op = "gated_vertical_row"
    if not isinstance(weights, GatedVerticalWeights):
        raise TypeError(f"{op}: weights must be a GatedVerticalWeights (GatedPixelCNN.packed_vertical_weights()), "
                        f"got {type(weights).__name__}")
    if not isinstance(vin, Tensor) or vin.dim() != 5 or vin.shape[2] != 2 or vin.shape[3] < 3:
        raise ValueError(f"{op}: vin must be a 5-D tensor [L, B, 2, W+2, CH] (a ring of two padded rows), "
                         f"got {list(getattr(vin, 'shape', [type(vin).__name__]))}")
    L, B, _, W2, CH = vin.shape
    _shape("v_out", v_out, (L, B, W2 - 2, 2 * CH), "[L, B, W, 2CH]", op)
    _shape("cond_v", cond_v, (L, B, 2 * CH), "[L, B, 2CH]", op)
    _shape("weights.wv", weights.wv, (L, 6, CH, 2 * CH), "[L, 6, CH, 2CH]", op)
    _shape("weights.bv", weights.bv, (L, 2 * CH), "[L, 2CH]", op)
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise ValueError(f"{op}: row r must be an int >= 0, got {r!r}")


def gated_vertical_row(vin: Tensor, v_out: Tensor, cond_v: Tensor, weights: GatedVerticalWeights, r: int,
                       backend: Optional[str] = None) -> None:
    """Every layer's vertical stack for row r of every image; writes v_out [L, B, W, 2CH] (the
    pre-activations ``gated_pixel_step`` reads as v) and vin[1:, :, r % 2, 1:W+1] (the next
    layers' inputs of row r), in place.

    vin: [L, B, 2, W+2, CH] the vertical stacks' inputs as a ring of two zero-padded rows (row r
    in slot r % 2; vin[0] is the embedded image, whose row r - 1 the steps of that row wrote);
    cond_v: [L, B, 2CH]; weights: ``GatedVerticalWeights``.  Math in
    ``fastgen.ops.gated_pixel_step.reference.gated_vertical_row``.

    Backends as ``gated_pixel_step``: the kernel needs CH a power of two >= 16 and contiguous
    fp32 tensors."""
    _check_row(vin, v_out, cond_v, weights, r)
    CH = vin.shape[4]
    why = None
    if not (CH >= 16 and CH & (CH - 1) == 0):
        why = f"channels must be a power of two >= 16, got {CH}"   # the kernel tiles CH
    elif any(t.dtype != torch.float32 or not t.is_contiguous() for t in (vin, v_out, cond_v, *weights)):
        why = "vin, v_out, cond_v and the weights must be contiguous float32"
    if _gated_vertical_row_kernel.backend(vin, backend, unsupported=why) == "reference":
        v, u = reference.gated_vertical_row(vin, weights, cond_v, r)
        v_out.copy_(v)
        vin[1:, :, r % 2, 1:-1] = u
        return
    _gated_vertical_row_kernel(vin, v_out, cond_v, list(weights), int(r))
