"""The Gated PixelCNN fused sampling step: op and reference."""
from fastgen.ops.gated_pixel_step.op import gated_pixel_step

__all__ = ["gated_pixel_step"]
