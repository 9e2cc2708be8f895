"""The Gated PixelCNN fused sampling step: op, reference and its weights bundle."""
from fastgen.ops.gated_pixel_step.bundles import GatedStepWeights
from fastgen.ops.gated_pixel_step.op import gated_pixel_step

__all__ = ["GatedStepWeights", "gated_pixel_step"]
