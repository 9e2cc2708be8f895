"""The named bundle ``gated_pixel_step`` takes: ``GatedStepWeights``, a Gated PixelCNN's weights
packed for the fused step (``GatedPixelCNN.packed_step_weights`` builds it).  A plain tuple, so
the kernel's launch takes its twelve tensors in this order."""
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
