"""What a flow layer returns: the transformed tensor and the per-sample log-determinant."""
from typing import NamedTuple

from torch import Tensor


class FlowOutput(NamedTuple):
    """``out``: the transformed tensor (shape and dtype of the input); ``logdet``: [B] float32
    (float64 for float64 inputs on the reference),
    log |det d out / d in| per sample (for an inverse, the log-det of the inverse map)."""
    out: Tensor
    logdet: Tensor
