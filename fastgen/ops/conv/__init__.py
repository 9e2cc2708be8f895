"""Masked 2-D and causal 1-D convolutions (PixelCNN, WaveNet training): ops and reference."""
from fastgen.ops.conv.op import causal_conv1d, masked_conv2d
from fastgen.ops.conv.reference import STACKS, pixelcnn_mask

__all__ = ["causal_conv1d", "masked_conv2d", "pixelcnn_mask", "STACKS"]
