"""Self-attention layers over ``fastgen.ops``' block-local and sparse attention, drop-ins for
``nn.MultiheadAttention(dim, heads, batch_first=True)`` used as self-attention.

Both layers hold the parameters of ``nn.MultiheadAttention`` under the same names and shapes
(``in_proj_weight [3*dim, dim]``, ``in_proj_bias [3*dim]``, ``out_proj.weight [dim, dim]``,
``out_proj.bias [dim]``), so they load its state dict and the reverse, and compute

    forward(x [B, N, dim]) -> [B, N, dim]
    q, k, v = split(x @ in_proj_weight.T + in_proj_bias) into ``heads`` heads of dim // heads
    o = attention(q, k, v) with the layer's pattern, softmax scale 1 / sqrt(dim // heads)
    out = dropout(merge_heads(o)) @ out_proj.weight.T + out_proj.bias

i.e. ``nn.MultiheadAttention(x, x, x, attn_mask=~allowed)[0]`` where ``allowed[p, p']`` is the
layer's pattern -- except for dropout: the fused ops have no dropout on the attention
probabilities, so ``dropout`` drops elements of the merged heads (before ``out_proj``).

Incremental decoding (autoregressive sampling): ``new_cache(B)`` gives an ``AttentionCache``
(k, v ``[B, heads, N, head_dim]``) and ``step(x_t [B, 1, dim], cache, index)`` computes the
output of token ``index`` given the tokens before it, writing its key and value into the cache
in place: equal to row ``index`` of ``forward`` on the whole sequence once steps 0..index ran.
"""
import math
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fastgen.ops import block_local_attention, block_local_attention_decode, sparse_attention
from fastgen.ops.block_local_attention.reference import PATTERNS, masked_attention, sparse_mask


class AttentionCache(NamedTuple):
    """One attention layer's KV cache while decoding: ``k``, ``v`` ``[B, heads, N, head_dim]``;
    position i holds token i's key and value once ``step(..., index=i)`` has run (written in
    place), zeros before."""
    k: Tensor
    v: Tensor


def _ints(name: str, value: Union[int, Sequence[int]]) -> Tuple[int, ...]:
    value = (value,) if isinstance(value, int) else tuple(value)
    if not 1 <= len(value) <= 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                           for v in value):
        raise ValueError(f"{name} must be 1 to 3 positive ints, got {value!r}")
    return value


class _SelfAttention(nn.Module):
    """What both layers share: nn.MultiheadAttention's parameters, the projections, the checks
    and the KV cache.  A subclass gives ``seq_len`` and ``_attend`` / ``_attend_one``."""

    def __init__(self, dim: int, heads: int, dropout: float, device=None, dtype=None) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not isinstance(heads, int) or heads < 1 or dim % heads:
            raise ValueError(f"heads must be a positive int dividing dim = {dim}, got {heads!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.embed_dim, self.num_heads, self.head_dim, self.dropout = dim, heads, dim // heads, float(dropout)
        factory = {"device": device, "dtype": dtype}
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim, **factory))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim, **factory))
        self.out_proj = nn.Linear(dim, dim, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.MultiheadAttention's initialisation: Xavier-uniform in-projection, zero biases."""
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    seq_len: int  # N, the length every input must have

    def _check(self, x: Tensor, tokens: int, what: str) -> None:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"{what} must be a floating tensor [B, {tokens}, {self.embed_dim}], "
                            f"got {getattr(x, 'dtype', type(x))}")
        if x.dim() != 3 or x.shape[1] != tokens or x.shape[2] != self.embed_dim:
            raise ValueError(f"{what} must have shape [B, {tokens}, {self.embed_dim}] ([B, tokens, dim]), "
                             f"got {tuple(x.shape)}")
        if x.dtype != self.in_proj_weight.dtype or x.device != self.in_proj_weight.device:
            raise ValueError(f"{what} is {x.dtype} on {x.device} but the layer's weights are "
                             f"{self.in_proj_weight.dtype} on {self.in_proj_weight.device}")

    def _heads(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """x [B, n, dim] -> q, k, v [B, heads, n, head_dim] (strided views of one projection)."""
        B, n, _ = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(B, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def _merge(self, o: Tensor) -> Tensor:
        """o [B, heads, n, head_dim] -> out_proj(dropout(o as [B, n, dim]))."""
        B, _, n, _ = o.shape
        o = o.transpose(1, 2).reshape(B, n, self.embed_dim)
        return self.out_proj(F.dropout(o, self.dropout, self.training))

    def forward(self, x: Tensor) -> Tensor:
        """x [B, N, dim] -> [B, N, dim] (self-attention with the layer's pattern)."""
        self._check(x, self.seq_len, "x")
        return self._merge(self._attend(*self._heads(x)))

    def new_cache(self, batch: int, device=None, dtype=None) -> AttentionCache:
        """An empty (zero) ``AttentionCache`` for ``batch`` sequences, on the layer's device and
        dtype unless given."""
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        shape = (batch, self.num_heads, self.seq_len, self.head_dim)
        device = device or self.in_proj_weight.device
        dtype = dtype or self.in_proj_weight.dtype
        return AttentionCache(torch.zeros(shape, device=device, dtype=dtype),
                              torch.zeros(shape, device=device, dtype=dtype))

    def step(self, x_t: Tensor, cache: AttentionCache, index: int) -> Tensor:
        """The output [B, 1, dim] of token ``index`` (x_t [B, 1, dim]) given tokens 0..index-1,
        whose keys and values ``cache`` holds; writes token index's key and value into
        ``cache.k`` / ``cache.v`` at position ``index`` (in place).  Causal layers only."""
        if not self.causal:
            raise ValueError("step needs a causal layer (causal=True): a non-causal token attends to later ones")
        self._check(x_t, 1, "x_t")
        if not isinstance(cache, AttentionCache):
            raise TypeError(f"cache must be an AttentionCache (layer.new_cache(batch)), got {type(cache).__name__}")
        shape = (x_t.shape[0], self.num_heads, self.seq_len, self.head_dim)
        if tuple(cache.k.shape) != shape or tuple(cache.v.shape) != shape:
            raise ValueError(f"cache.k and cache.v must have shape {shape} ([B, heads, N, head_dim]), "
                             f"got {tuple(cache.k.shape)} and {tuple(cache.v.shape)}")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < self.seq_len:
            raise ValueError(f"index must be an int in [0, {self.seq_len}), got {index!r}")
        q, k, v = self._heads(x_t)
        cache.k[:, :, index] = k[:, :, 0]
        cache.v[:, :, index] = v[:, :, 0]
        return self._merge(self._attend_one(q, cache, index))


class BlockLocalAttention(_SelfAttention):
    """Block-local self-attention (Image Transformer's local 1-D/2-D attention, the block-local
    video transformer of Weissenborn et al. 2020) over ``fastgen.ops.block_local_attention``.

    The N = prod(grid) tokens of x [B, N, dim] lie in raster order over ``grid`` (1 to 3 ints);
    ``block`` (same length) tiles the grid (the last blocks along an axis may be ragged).  Token
    p attends token p' iff they share a block, or (``memory`` = m >= 1) p' lies in one of the m
    blocks before p's along the first grid axis; ``causal`` also requires raster(p') <=
    raster(p).  A block covering the whole grid with causal=True is full causal attention.
    See the module docstring for the projections, dropout and ``step``.
    """

    def __init__(self, dim: int, heads: int, grid: Union[int, Sequence[int]], block: Union[int, Sequence[int]],
                 causal: bool = True, memory: Optional[int] = None, dropout: float = 0.0, device=None,
                 dtype=None) -> None:
        super().__init__(dim, heads, dropout, device, dtype)
        self.grid, self.block = _ints("grid", grid), _ints("block", block)
        if len(self.block) != len(self.grid):
            raise ValueError(f"block must have one size per grid axis ({len(self.grid)}), got {self.block!r}")
        if any(b > g for b, g in zip(self.block, self.grid)):
            raise ValueError(f"block {self.block} must not exceed grid {self.grid} along any axis")
        if memory is not None and (not isinstance(memory, int) or memory < 0):
            raise ValueError(f"memory must be None or an int >= 0 (blocks before along the first axis), got {memory!r}")
        self.causal, self.memory = bool(causal), memory
        self.seq_len = math.prod(self.grid)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return block_local_attention(q, k, v, self.grid, self.block, causal=self.causal, memory=self.memory)

    def _attend_one(self, q: Tensor, cache: AttentionCache, index: int) -> Tensor:
        return block_local_attention_decode(q, cache.k, cache.v, index, self.grid, self.block, causal=self.causal,
                                            memory=self.memory)

    def extra_repr(self) -> str:
        return (f"dim={self.embed_dim}, heads={self.num_heads}, grid={self.grid}, block={self.block}, "
                f"causal={self.causal}, memory={self.memory}, dropout={self.dropout}")


class SparseAttention(_SelfAttention):
    """Sparse Transformer self-attention (Child et al. 2019) over ``fastgen.ops.sparse_attention``,
    over a 1-D sequence of ``seq_len`` tokens, x [B, seq_len, dim].

    pattern 'strided' (``stride`` = l): token i attends j iff i - j < l or (i - j) % l == 0;
    'fixed' (``block`` = l, ``summary`` = c): j // l == i // l or j % l >= l - c; ``causal`` also
    requires j <= i (without it the strided window is |i - j| < l).  The paper splits each
    pattern into two components spread over heads or layers; here every head attends their
    union (its "merged" variant).
    ``step``: there is no sparse decode kernel yet, so it applies the pattern's row to the cached
    keys with the plain-PyTorch ``masked_attention`` of the op's reference (O(index) per token).
    See the module docstring for the projections and dropout.
    """

    def __init__(self, dim: int, heads: int, seq_len: int, pattern: str = "strided", stride: Optional[int] = None,
                 block: Optional[int] = None, summary: int = 1, causal: bool = True, dropout: float = 0.0,
                 device=None, dtype=None) -> None:
        super().__init__(dim, heads, dropout, device, dtype)
        if pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
        name, width, other = ("stride", stride, block) if pattern == "strided" else ("block", block, stride)
        if other is not None:
            raise ValueError(f"pattern {pattern!r} takes {name}=, not {'block' if name == 'stride' else 'stride'}=")
        for arg, value in (("seq_len", seq_len), (name, width), ("summary", summary)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{arg} must be a positive int, got {value!r}")
        if summary > width:
            raise ValueError(f"summary ({summary}) must not exceed {name} ({width})")
        self.seq_len, self.pattern, self.stride, self.block, self.summary = seq_len, pattern, stride, block, summary
        self.causal = bool(causal)

    @property
    def _width(self) -> int:
        return self.stride if self.pattern == "strided" else self.block

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return sparse_attention(q, k, v, self.pattern, stride=self.stride, block=self.block, summary=self.summary,
                                causal=self.causal)

    def _attend_one(self, q: Tensor, cache: AttentionCache, index: int) -> Tensor:
        row = sparse_mask(self.seq_len, self.pattern, self._width, self.summary, True, q.device)
        return masked_attention(q, cache.k[:, :, :index + 1], cache.v[:, :, :index + 1],
                                row[index:index + 1, :index + 1])

    def extra_repr(self) -> str:
        width = f"stride={self.stride}" if self.pattern == "strided" else f"block={self.block}, summary={self.summary}"
        return (f"dim={self.embed_dim}, heads={self.num_heads}, seq_len={self.seq_len}, pattern={self.pattern!r}, "
                f"{width}, causal={self.causal}, dropout={self.dropout}")
