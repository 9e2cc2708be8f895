"""The named bundles the family's ops take: ``GatedStepWeights`` (``gated_pixel_step``) and
``GatedVerticalWeights`` (``gated_vertical_row``), a Gated PixelCNN's weights packed for the fused
step and row (``GatedPixelCNN.packed_step_weights`` / ``packed_vertical_weights`` build them).
Plain tuples, so the kernels' launches take their tensors in this order."""
from typing import NamedTuple

from torch import Tensor


class GatedStepWeights(NamedTuple):
    """A Gated PixelCNN's weights as the fused step reads them: fp32, contiguous, every conv
    weight as an [in, out] GEMM operand.  L layers, CH channels, HC head channels, LEVELS
    values per pixel:

    wh       [L, 2, CH, 2CH]  the horizontal stack's taps at (r, c-1) and (r, c) (the second
                              is zero in the type-A first layer, which never sees the pixel)
    bh       [L, 2CH]         its bias
    wl       [L, 2CH, 2CH]    the 1x1 link from the vertical to the horizontal stack
    bl       [L, 2CH]
    wo       [L, CH, CH]      the horizontal stack's 1x1 output conv
    bo       [L, CH]
    w1       [CH, HC]         the head's first 1x1 conv
    b1       [HC]
    w2       [HC, LEVELS]     the head's second 1x1 conv (the logits)
    b2       [LEVELS]
    embed_w  [CH]             the 1x1 embedding of a grey pixel scaled to [-1, 1]
    embed_b  [CH]
    """
    wh: Tensor
    bh: Tensor
    wl: Tensor
    bl: Tensor
    wo: Tensor
    bo: Tensor
    w1: Tensor
    b1: Tensor
    w2: Tensor
    b2: Tensor
    embed_w: Tensor
    embed_b: Tensor


class GatedVerticalWeights(NamedTuple):
    """A Gated PixelCNN's vertical stacks as the fused row op reads them: fp32, contiguous, every
    tap an [in, out] GEMM operand.  L layers, CH channels:

    wv  [L, 6, CH, 2CH]  the 3x3 vertical conv's taps (dr, dc), t = (dr + 1) * 3 + dc + 1, dr in
                         {-1, 0} (the row above, the row itself), dc in {-1, 0, 1}; the masked taps
                         (row r in the type-A first layer) are zero
    bv  [L, 2CH]         its bias
    """
    wv: Tensor
    bv: Tensor
