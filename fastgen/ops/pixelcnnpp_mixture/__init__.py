"""PixelCNN++'s discretized mixture of logistics: the fused one-pixel draw (from the head's
parameters, or from the features under the head with the head fused in) and its reference (the
one copy of the mixture's math, which ``fastgen.models.PixelCNNpp`` uses too)."""
from fastgen.ops.pixelcnnpp_mixture.bundles import HeadWeights
from fastgen.ops.pixelcnnpp_mixture.op import pixelcnnpp_head_draw, pixelcnnpp_mixture_draw

__all__ = ["HeadWeights", "pixelcnnpp_head_draw", "pixelcnnpp_mixture_draw"]
