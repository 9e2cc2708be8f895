"""Block-local attention over 1-D/2-D/3-D raster grids (Image Transformer, video transformers),
its incremental decoding step, and Sparse Transformer's strided/fixed attention."""
from fastgen.ops.block_local_attention.op import (block_local_attention, block_local_attention_decode,
                                                   sparse_attention)

__all__ = ["block_local_attention", "block_local_attention_decode", "sparse_attention"]
