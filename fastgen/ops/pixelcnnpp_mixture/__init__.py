"""PixelCNN++'s discretized mixture of logistics: the fused one-pixel draw and its reference (the
one copy of the mixture's math, which ``fastgen.models.PixelCNNpp`` uses too)."""
from fastgen.ops.pixelcnnpp_mixture.op import pixelcnnpp_mixture_draw

__all__ = ["pixelcnnpp_mixture_draw"]
