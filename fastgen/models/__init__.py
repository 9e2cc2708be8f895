"""The model zoo built on fastgen.nn.  So far: PixelCNN, GatedPixelCNN, PixelCNN++, MADE, WaveNet, NICE/RealNVP/Glow,
MAF/IAF and planar/radial flows, a DDPM UNet with its training losses and an NCSN score model (with incremental
sampling through ``fastgen.sampling``), a VAE (ELBO, IWAE, beta-VAE, SA-VAE refinement) and a small NVAE / VD-VAE
style hierarchical VAE (``train_step`` with gradient skipping), GANs (DCGAN, SNGAN, a small StyleGAN2; WGAN-GP and R1)
and energy-based models (EBM, JEM), and VQ-VAE / VQ-VAE-2 with Gated PixelCNN priors over their codes."""
from fastgen.models.ebm import EBM, JEM
from fastgen.models.flows import NICE, Glow, RealNVP
from fastgen.models.gan import DCGAN, SNGAN, StyleGAN2
from fastgen.models.hvae import HierarchicalVAE, train_step
from fastgen.models.made import MADE
from fastgen.models.maf import IAF, MAF, PlanarFlow, RadialFlow
from fastgen.models.pixelcnn import GatedPixelCNN, PixelCNN
from fastgen.models.pixelcnnpp import PixelCNNpp
from fastgen.models.pixelsnail import PixelSNAIL
from fastgen.models.transformer import LocalImageTransformer, VideoTransformer
from fastgen.models.unet import DDPM, NCSN, UNet
from fastgen.models.vae import VAE
from fastgen.models.vqvae import VQVAE, VQVAE2, fit_prior, make_prior
from fastgen.models.wavenet import WaveNet

__all__ = ["DDPM", "GatedPixelCNN", "Glow", "IAF", "MADE", "MAF", "NCSN", "NICE", "PixelCNN", "PixelCNNpp", "PlanarFlow",
           "RadialFlow", "RealNVP", "UNet", "WaveNet", "LocalImageTransformer", "PixelSNAIL", "VideoTransformer",
           "HierarchicalVAE", "VAE", "train_step",
           "DCGAN", "EBM", "JEM", "SNGAN", "StyleGAN2",
           "VQVAE", "VQVAE2", "fit_prior", "make_prior"]
