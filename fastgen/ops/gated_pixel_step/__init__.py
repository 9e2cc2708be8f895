"""The Gated PixelCNN fused sampling ops -- the per-pixel step and the per-row vertical stack --
their reference and their weights bundles."""
from fastgen.ops.gated_pixel_step.bundles import GatedStepWeights, GatedVerticalWeights
from fastgen.ops.gated_pixel_step.op import gated_pixel_step, gated_vertical_row

__all__ = ["GatedStepWeights", "GatedVerticalWeights", "gated_pixel_step", "gated_vertical_row"]
