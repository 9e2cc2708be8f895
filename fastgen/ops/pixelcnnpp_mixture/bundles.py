"""The named bundle ``pixelcnnpp_head_draw`` takes: ``HeadWeights``, PixelCNN++'s output head (the
1x1 conv after an elu) packed for the fused draw (``fastgen.nn.pack_head_weights`` builds it)."""
from typing import NamedTuple

from torch import Tensor


class HeadWeights(NamedTuple):
    """The head ``Conv2d(F, P, 1)`` as the draw reads it (fp32 and contiguous for the kernel;
    fp64 models keep fp64 and draw on the reference):

    weight [F, P]   the conv's weight [P, F, 1, 1] transposed: params = elu(features) @ weight + bias
    bias   [P]
    """
    weight: Tensor
    bias: Tensor
