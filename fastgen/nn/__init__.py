"""Drop-in ``nn.Module`` layers backed by fastgen's kernels."""
from fastgen.nn import functional, latent
from fastgen.nn.attention import AttentionCache, BlockLocalAttention, SparseAttention
from fastgen.nn.conv import CausalConv1d, GatedMaskedConv2d, MaskedConv2d
from fastgen.nn.density_flows import FlowSample, IAFLayer, MAFLayer, PlanarLayer, RadialLayer
from fastgen.nn.latent import DiagonalGaussian
from fastgen.nn.made import GaussianMADE, GaussianMADEOutput
from fastgen.nn.flows import ActNorm, AdditiveCoupling, AffineCoupling, FlowSequential, InvConv1x1, Squeeze
from fastgen.nn.gan import ConditionalBatchNorm2d, ProjectionHead, SpectralNorm, spectral_norm
from fastgen.nn.invertible_backprop import InvertibleBackprop, invertible_backprop
from fastgen.nn.vq import VectorQuantizer
from fastgen.nn.pixelcnnpp import (DownRightShiftedConv, DownRightShiftedDeconv, DownShiftedConv, DownShiftedDeconv,
                                   GatedResnet, pack_cond_bias, pack_resnet_weights)

__all__ = ["ActNorm", "AdditiveCoupling", "AffineCoupling", "FlowSequential", "InvConv1x1", "InvertibleBackprop", "Squeeze",
           "CausalConv1d", "DownRightShiftedConv", "DownRightShiftedDeconv", "DownShiftedConv", "DownShiftedDeconv",
           "GatedMaskedConv2d", "GatedResnet", "MaskedConv2d", "functional", "pack_cond_bias", "pack_resnet_weights",
           "FlowSample", "GaussianMADE", "GaussianMADEOutput", "IAFLayer", "MAFLayer", "PlanarLayer", "RadialLayer",
           "DiagonalGaussian", "latent", "AttentionCache", "BlockLocalAttention", "SparseAttention", "VectorQuantizer",
           "ConditionalBatchNorm2d", "ProjectionHead", "SpectralNorm", "spectral_norm"]
