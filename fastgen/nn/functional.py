"""Functional forms of the fastgen layers (the ops, re-exported for ``torch.nn.functional`` habits).

- ``masked_conv2d(x, weight, bias=None, mask_type='B', color_groups=1, dilation=1, stack='raster')``
- ``causal_conv1d(x, weight, bias=None, dilation=1)``
- ``gated_activation(a) = tanh(a[:, :C]) * sigmoid(a[:, C:])`` over the channel dimension
- ``mu_law_encode`` / ``mu_law_decode``: audio in [-1, 1] <-> integer codes in [0, levels)
"""
import math

import torch
from torch import Tensor

from fastgen.ops import causal_conv1d, masked_conv2d, pixelcnn_mask


def gated_activation(a: Tensor) -> Tensor:
    """a: [B, 2C, ...] -> [B, C, ...] = tanh(first half) * sigmoid(second half)."""
    value, gate = a.chunk(2, dim=1)
    return torch.tanh(value) * torch.sigmoid(gate)


def mu_law_encode(audio: Tensor, levels: int = 256) -> Tensor:
    """audio in [-1, 1] -> long codes in [0, levels): y = sign(x) ln(1 + mu|x|) / ln(1 + mu),
    mu = levels - 1, then y quantized uniformly (ITU-T G.711 companding, as in WaveNet)."""
    mu = levels - 1
    x = audio.clamp(-1.0, 1.0)
    y = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    return ((y + 1) / 2 * mu + 0.5).floor().long().clamp(0, mu)


def mu_law_decode(codes: Tensor, levels: int = 256) -> Tensor:
    """Inverse of ``mu_law_encode`` (up to quantization): codes -> audio in [-1, 1]."""
    mu = levels - 1
    y = codes.float() * (2.0 / mu) - 1.0
    return torch.sign(y) * torch.expm1(y.abs() * math.log1p(mu)) / mu


__all__ = ["causal_conv1d", "gated_activation", "masked_conv2d", "mu_law_decode", "mu_law_encode",
           "pixelcnn_mask"]
