"""The named bundle ``pixelcnnpp_resnet_at`` takes: ``ResnetWeights``, one PixelCNN++ GatedResnet's
weights packed for the step (``fastgen.nn.pack_resnet_weights`` builds it)."""
from typing import NamedTuple, Optional

from torch import Tensor


class ResnetWeights(NamedTuple):
    """A GatedResnet's weights as the step reads them: every conv weight [out, in, KH, KW] as
    [KH * KW, in, out], taps row-major over the 2 x KW window (KW = 3 for a DownShiftedConv, 2
    for a DownRightShiftedConv), so that each tap is a GEMM operand.  C channels, A aux channels:

    w1     [2KW, 2C, C]    conv1, over concat_elu(x)
    b1     [C]
    w_aux  [2A, C] | None  the 1x1 conv over concat_elu(aux) (None without aux maps)
    b_aux  [C] | None
    w2     [2KW, 2C, 2C]   conv2, over concat_elu(mid): the value and gate halves
    b2     [2C]

    fp32 and contiguous for the Triton kernels (fp64 models keep fp64: they run the reference).
    """
    w1: Tensor
    b1: Tensor
    w_aux: Optional[Tensor]
    b_aux: Optional[Tensor]
    w2: Tensor
    b2: Tensor
