"""Block-local and block-sparse attention in plain PyTorch: the specification of
``fastgen.ops.block_local_attention``, ``block_local_attention_decode`` and
``sparse_attention`` and their CPU path (differentiable by ordinary autograd).

Shapes (as for ``F.scaled_dot_product_attention``): q, k, v [B, heads, N, head_dim]; the output
[B, heads, N, head_dim].  Every op is "softmax(scale q k^T + mask) v" with a boolean mask
[N, N] (True = query row may attend key column) built once per configuration and device
(``block_local_mask``, ``sparse_mask``: these functions *are* the semantics) and cached.

**Block-local** (Parmar et al. 2018, Image Transformer's local 1D/2D attention; Weissenborn et
al. 2020, block-local video attention).  Tokens are laid out in raster order over ``grid`` =
(g0,), (g0, g1) or (g0, g1, g2) (the last axis fastest; N = prod(grid)).  ``block`` (same
length) tiles the grid from the origin; where a grid size is not a multiple of the block size
the last block along that axis is ragged (smaller).  Position p = (p0, p1, p2) is in block
c(p) = (p0 // b0, p1 // b1, p2 // b2).  Query p may attend key p' iff

    c(p') == c(p)                                                   (its own block), or
    memory = m >= 1 and c(p')[0] in [c(p)[0] - m, c(p)[0] - 1] and
        c(p')[i] == c(p)[i] for i >= 1                              (the m blocks before it
                                                                     along the first axis)
    and, with ``causal``, raster(p') <= raster(p).

The memory blocks lie entirely before the query's block in raster order (the first axis is the
slowest), so causality only cuts inside the query's own block.  Every query can attend at least
itself (causal) or its whole block (non-causal), so no softmax row is empty.

**Sparse Transformer** (Child et al. 2019), 1-D positions i (query) and j (key):

    strided, stride l:  (i - j) < l  or  (i - j) % l == 0    (|i - j| < l, (i - j) % l == 0
                                                               when not causal)
    fixed, block l, summary c:  j // l == i // l  or  j % l >= l - c
    and, with ``causal``, j <= i.
"""
import functools
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

PATTERNS = ("strided", "fixed")


def block_coordinates(grid: Sequence[int], block: Sequence[int], device=None) -> Tuple[Tensor, Tensor]:
    """(coords [N, d], block coords [N, d]) of every raster position (int64)."""
    n = math.prod(grid)
    flat = torch.arange(n, device=device)
    coords = []
    for size in reversed(grid):
        coords.append(flat % size)
        flat = flat // size
    coords = torch.stack(coords[::-1], dim=1)
    return coords, coords // torch.tensor(list(block), device=device)


@functools.lru_cache(maxsize=32)
def _block_local_mask(grid, block, causal, memory, device) -> Tensor:
    _, c = block_coordinates(grid, block, device)
    same_rest = (c[:, None, 1:] == c[None, :, 1:]).all(-1)          # [query, key]
    ahead = c[:, None, 0] - c[None, :, 0]                          # query block - key block, axis 0
    allowed = same_rest & ((ahead >= 0) & (ahead <= (memory or 0)))
    if causal:
        pos = torch.arange(math.prod(grid), device=device)
        allowed &= pos[:, None] >= pos[None, :]
    return allowed


def block_local_mask(grid: Sequence[int], block: Sequence[int], causal: bool = True, memory: Optional[int] = None,
                     device=None) -> Tensor:
    """[N, N] bool: True where query (row) may attend key (column) -- the module docstring's rule.
    Cached per configuration and device (do not modify the result)."""
    return _block_local_mask(tuple(int(g) for g in grid), tuple(int(b) for b in block), bool(causal),
                             int(memory or 0), torch.device(device or "cpu"))


@functools.lru_cache(maxsize=32)
def _sparse_mask(n, pattern, width, summary, causal, device) -> Tensor:
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    if pattern == "strided":
        d = i - j
        allowed = ((d.abs() < width) | (d % width == 0))
    else:
        allowed = (j // width == i // width) | (j % width >= width - summary)
    if causal:
        allowed &= j <= i
    return allowed


def sparse_mask(n: int, pattern: str, width: int, summary: int = 1, causal: bool = True, device=None) -> Tensor:
    """[n, n] bool mask of a Sparse Transformer pattern ('strided': width = stride l; 'fixed':
    width = block l, ``summary`` = c summary positions per block).  Cached; do not modify."""
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    return _sparse_mask(int(n), pattern, int(width), int(summary), bool(causal), torch.device(device or "cpu"))


def masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: Optional[float] = None) -> Tensor:
    """softmax(scale q k^T, over the keys ``mask`` allows) v, computed in float32 (float64 for
    float64 inputs), output in q's dtype.  Rows with no allowed key give 0."""
    compute = torch.promote_types(q.dtype, torch.float32)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = torch.matmul(q.to(compute), k.to(compute).transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return torch.matmul(p, v.to(compute)).to(q.dtype)


def block_local_attention(q: Tensor, k: Tensor, v: Tensor, grid: Sequence[int], block: Sequence[int],
                          causal: bool = True, memory: Optional[int] = None, scale: Optional[float] = None) -> Tensor:
    """Block-local attention (module docstring): q, k, v [B, heads, N, hd] -> [B, heads, N, hd]."""
    return masked_attention(q, k, v, block_local_mask(grid, block, causal, memory, q.device), scale)


def block_local_attention_decode(q: Tensor, k_cache: Tensor, v_cache: Tensor, index: int, grid: Sequence[int],
                                 block: Sequence[int], causal: bool = True, memory: Optional[int] = None,
                                 scale: Optional[float] = None) -> Tensor:
    """The row ``index`` of causal block-local attention: q [B, heads, 1, hd] against the caches
    [B, heads, N, hd] (only positions <= index are read) -> [B, heads, 1, hd]."""
    row = block_local_mask(grid, block, causal, memory, q.device)[index:index + 1, :index + 1]
    return masked_attention(q, k_cache[:, :, :index + 1], v_cache[:, :, :index + 1], row, scale)


def sparse_attention(q: Tensor, k: Tensor, v: Tensor, pattern: str, width: int, summary: int = 1,
                     causal: bool = True, scale: Optional[float] = None) -> Tensor:
    """Sparse Transformer attention (module docstring): q, k, v [B, heads, N, hd]."""
    return masked_attention(q, k, v, sparse_mask(q.shape[2], pattern, width, summary, causal, q.device), scale)


def sdpa_with_mask(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: Optional[float] = None) -> Tensor:
    """What a user writes first: SDPA with the dense boolean mask (the benchmark's baseline)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
