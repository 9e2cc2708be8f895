"""fastgen ops, one folder per op family: ``fastgen/ops/<family>/`` holds the family's ops
(``op.py``) and its plain-PyTorch reference (``reference.py``: the specification and the CPU
path); its Triton kernels live in ``kernels/<family>.py`` (installed as ``fastgen.kernels``).
Every op is declared through ``fastgen.ops._define`` (see docs/architecture.md).

Each op is registered with ``torch.library`` (``torch.ops.fastgen.*``) with a fake
implementation for ``torch.compile`` and, where it trains, an autograd formula.
"""
from fastgen.ops._backend import use_backend
from fastgen.ops.block_local_attention import (block_local_attention, block_local_attention_decode,
                                                sparse_attention)
from fastgen.ops.conv import causal_conv1d, masked_conv2d, pixelcnn_mask
from fastgen.ops.diffusion_step import corrector_coefficients, diffusion_step, score_noise_norms
from fastgen.ops.flow_coupling import FlowOutput, affine_coupling
from fastgen.ops.gated_pixel_step import gated_pixel_step, gated_vertical_row
from fastgen.ops.pixelcnnpp_mixture import pixelcnnpp_head_draw, pixelcnnpp_mixture_draw
from fastgen.ops.pixelcnnpp_resnet import pixelcnnpp_resnet_at
from fastgen.ops.stylegan import (bias_act, downsample2d, modulated_conv2d, setup_filter, upfirdn2d,
                                   upsample2d)
from fastgen.ops.vector_quantize import VQOutput, ema_codebook_update, nearest_code, vector_quantize
from fastgen.ops.wavenet_step import wavenet_step, wavenet_steps

__all__ = ["block_local_attention", "block_local_attention_decode", "sparse_attention",
           "FlowOutput", "affine_coupling", "causal_conv1d", "corrector_coefficients", "diffusion_step", "gated_pixel_step", "gated_vertical_row", "masked_conv2d", "pixelcnn_mask",
           "pixelcnnpp_head_draw", "pixelcnnpp_mixture_draw", "pixelcnnpp_resnet_at", "score_noise_norms", "wavenet_step", "wavenet_steps",
           "bias_act", "downsample2d", "modulated_conv2d", "setup_filter", "upfirdn2d", "upsample2d",
           "VQOutput", "ema_codebook_update", "nearest_code", "vector_quantize", "use_backend"]
