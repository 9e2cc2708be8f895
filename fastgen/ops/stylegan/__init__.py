"""StyleGAN2's custom ops (bias_act, upfirdn2d, modulated_conv2d) with StyleGAN2-ADA's
arguments and semantics, as Triton kernels that need no build step; plus the filter helpers
(setup_filter, upsample2d, downsample2d)."""
from fastgen.ops.stylegan.op import bias_act, downsample2d, modulated_conv2d, upfirdn2d, upsample2d
from fastgen.ops.stylegan.reference import ACTIVATIONS, setup_filter

__all__ = ["ACTIVATIONS", "bias_act", "downsample2d", "modulated_conv2d", "setup_filter", "upfirdn2d", "upsample2d"]
