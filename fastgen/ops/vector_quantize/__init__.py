"""Vector quantization (VQ-VAE): the nearest-code search over codebook tiles, the quantized
vectors with the straight-through gradient and the two losses, and the EMA codebook update."""
from fastgen.ops.vector_quantize.bundles import VQOutput
from fastgen.ops.vector_quantize.op import ema_codebook_update, nearest_code, vector_quantize

__all__ = ["VQOutput", "ema_codebook_update", "nearest_code", "vector_quantize"]
