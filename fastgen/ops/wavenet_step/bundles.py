"""The named bundle ``wavenet_step`` / ``wavenet_steps`` take: ``WaveNetStepWeights``, a WaveNet's
weights packed for the fused step (``WaveNet.packed_step_weights`` builds it).  A named tuple,
so the kernels' launch wrapper still unpacks its twelve tensors in this order."""
from typing import NamedTuple

import torch
from torch import Tensor


class WaveNetStepWeights(NamedTuple):
    """A WaveNet's weights as the fused step reads them: contiguous, every 1x1 conv as an
    [in, out] GEMM operand.  L layers, k kernel size, R residual channels, S skip channels,
    A quantization levels, LC local-conditioning channels:

    embed  [A, R]         the input embedding (row = the previous code)
    wtap   [L, k, R, 2R]  the dilated convs' taps; tap j reads the input (k-1-j) d steps ago
    bconv  [L, 2R]        their biases
    wlc    [L, LC, 2R]    the local-conditioning 1x1 convs (zeros [L, 1, 2R] without local
                          conditioning)
    wres   [L, R, R]      the residual 1x1 convs
    bres   [L, R]
    wskip  [L, R, S]      the skip 1x1 convs
    bskip  [L, S]
    w1     [S, S]         the head's first 1x1 conv
    b1     [S]
    w2     [S, A]         the head's second 1x1 conv (the logits)
    b2     [A]

    The matrices (``MATRICES``) are fp32, fp16 or bf16 -- one dtype, the queues' -- and the
    biases (``BIASES``) always fp32.
    """
    embed: Tensor
    wtap: Tensor
    bconv: Tensor
    wlc: Tensor
    wres: Tensor
    bres: Tensor
    wskip: Tensor
    bskip: Tensor
    w1: Tensor
    b1: Tensor
    w2: Tensor
    b2: Tensor

    # (class attributes, not fields: which fields are stored in the weights' dtype, which in fp32)
    MATRICES = ("embed", "wtap", "wlc", "wres", "wskip", "w1", "w2")
    BIASES = ("bconv", "bres", "bskip", "b1", "b2")

    @property
    def dtype(self) -> torch.dtype:
        """The matrices' dtype: the dtype the queues and the scratch must have too."""
        return self.wtap.dtype
