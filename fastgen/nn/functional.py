"""Functional forms of the fastgen layers (the ops, re-exported for ``torch.nn.functional`` habits).

- ``masked_conv2d(x, weight, bias=None, mask_type='B', color_groups=1, dilation=1, stack='raster')``
- ``causal_conv1d(x, weight, bias=None, dilation=1)``
- ``gated_activation(a) = tanh(a[:, :C]) * sigmoid(a[:, C:])`` over the channel dimension
"""
import torch

from fastgen.ops import causal_conv1d, masked_conv2d, pixelcnn_mask


def gated_activation(a):
    """a: [B, 2C, ...] -> [B, C, ...] = tanh(first half) * sigmoid(second half)."""
    value, gate = a.chunk(2, dim=1)
    return torch.tanh(value) * torch.sigmoid(gate)


__all__ = ["causal_conv1d", "gated_activation", "masked_conv2d", "pixelcnn_mask"]
