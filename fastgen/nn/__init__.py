"""Drop-in ``nn.Module`` layers backed by fastgen's kernels."""
from fastgen.nn import functional
from fastgen.nn.conv import CausalConv1d, GatedMaskedConv2d, MaskedConv2d

__all__ = ["CausalConv1d", "GatedMaskedConv2d", "MaskedConv2d", "functional"]
