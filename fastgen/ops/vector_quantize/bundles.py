"""What vector quantization returns."""
from typing import NamedTuple

from torch import Tensor


class VQOutput(NamedTuple):
    """``indices``: int64, the nearest code of each vector ([N] for z [N, D]; [B, *spatial] from
    ``fastgen.nn.VectorQuantizer`` on [B, D, *spatial]); ``quantized``: the code vectors in z's
    shape and dtype, with the straight-through gradient (value q, gradient passed to z
    unchanged); ``commitment_loss``: beta mean((z - sg(q))^2), differentiable w.r.t. z;
    ``codebook_loss``: mean((sg(z) - q)^2), differentiable w.r.t. the codebook.  The losses are
    float32 scalars (float64 for float64 inputs)."""
    indices: Tensor
    quantized: Tensor
    commitment_loss: Tensor
    codebook_loss: Tensor
