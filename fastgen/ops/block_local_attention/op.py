"""Block-local attention (Image Transformer / video transformer local blocks), its incremental
decoding step, and Sparse Transformer attention: checks, dispatch, autograd.

- ``block_local_attention(q, k, v, grid, block, causal, memory, scale)`` -> [B, heads, N, hd]
- ``block_local_attention_decode(q, k_cache, v_cache, index, grid, block, ...)`` -> [B, heads, 1, hd]
- ``sparse_attention(q, k, v, pattern, stride=|block=, summary, causal, scale)`` -> [B, heads, N, hd]

The math (and which key each query may attend) is in ``fastgen.ops.block_local_attention.
reference``; the kernels in ``fastgen.kernels.block_local_attention``: flash-attention style
(online softmax, fp32 accumulation, the log-sum-exp saved for a recomputing backward) whose
key loop visits only the tiles the block structure allows -- a query tile of a block reads its
own block's key tiles up to the diagonal and its memory blocks' tiles, gathered row by row
through the tensors' strides (no permute copies).  Sparse patterns iterate a per-query-tile
list of key tiles built once on the host and cached.

Declared with ``fastgen.ops._define`` as ``torch.ops.fastgen.block_local_attention``,
``block_local_attention_decode`` and ``sparse_attention`` (+ ``_backward`` for the two that
train).  TF32: ``tf32="matmul"`` -- they replace SDPA's matmuls, so fp32 inputs multiply in
TF32 exactly when ``torch.backends.cuda.matmul.allow_tf32`` is set.
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from fastgen.ops import _backend
from fastgen.ops._define import define_autograd, define_op
from fastgen.ops.block_local_attention import reference

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_HEAD_DIM = 128
_MAX_BATCH_HEADS = 65535        # the kernels' second grid axis


# ----------------------------------------------------------------------------- checks

def _check_qkv(op: str, q: Tensor, k: Tensor, v: Tensor, names=("q", "k", "v")) -> None:
    for name, t in zip(names, (q, k, v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{op}: {name} must be [B, heads, N, head_dim], got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be floating point, got {t.dtype}")
    for name, t in zip(names[1:], (k, v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but q has {q.dtype}; they must match")
        if t.device != q.device:
            raise ValueError(f"{op}: {name} is on {t.device} but q on {q.device}; they must match")


def _int_tuple(op: str, name: str, value) -> Tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        raise TypeError(f"{op}: {name} must be a tuple of 1, 2 or 3 ints, got {value!r}")
    return tuple(int(x) for x in value)


def _check_geometry(op: str, n: int, grid, block, memory) -> Tuple[Tuple[int, ...], Tuple[int, ...], int]:
    """(grid, block, memory as an int, 0 = none), or a ValueError/TypeError naming the argument."""
    grid = _int_tuple(op, "grid", grid)
    if not 1 <= len(grid) <= 3 or any(g < 1 for g in grid):
        raise ValueError(f"{op}: grid must be 1, 2 or 3 positive sizes, got {grid}")
    if math.prod(grid) != n:
        raise ValueError(f"{op}: grid {grid} has {math.prod(grid)} positions but the sequence has N = {n} tokens "
                         "(q.shape[2]); prod(grid) must equal N")
    if not isinstance(block, (tuple, list)) or len(block) != len(grid):
        raise ValueError(f"{op}: block must be a tuple of {len(grid)} ints (one per grid axis) for grid {grid}, "
                         f"got {block!r}")
    block = _int_tuple(op, "block", block)
    for axis, (b, g) in enumerate(zip(block, grid)):
        if not 1 <= b <= g:
            raise ValueError(f"{op}: block {block} does not fit grid {grid}: block[{axis}] must be in 1..{g}, got {b}")
    if memory is None:
        memory = 0
    if not isinstance(memory, int) or isinstance(memory, bool) or memory < 0:
        raise ValueError(f"{op}: memory must be None or an int >= 1 (blocks before along the first grid axis), "
                         f"got {memory!r}")
    return grid, block, memory


def _check_scale(op: str, scale) -> None:
    if scale is not None and (not isinstance(scale, (int, float)) or isinstance(scale, bool)
                              or not math.isfinite(scale)):
        raise ValueError(f"{op}: scale must be None or a finite number, got {scale!r}")


def _unsupported(q: Tensor, n_keys: int, dots: bool = True) -> Optional[str]:
    if q.dtype not in _DTYPES:
        return f"q, k, v must be float32/float16/bfloat16, got {q.dtype}"
    if dots and q.dtype == torch.bfloat16 and q.device.type == "cpu" and _backend.interpreting():
        return "bfloat16 tl.dot does not run in the Triton interpreter (numpy has no bfloat16); it is tested on the GPU"
    if q.shape[-1] > _MAX_HEAD_DIM:
        return f"head_dim must be at most {_MAX_HEAD_DIM}, got {q.shape[-1]}"
    if q.shape[0] * q.shape[1] > _MAX_BATCH_HEADS:
        return f"B * heads must be at most {_MAX_BATCH_HEADS}, got {q.shape[0] * q.shape[1]}"
    if n_keys * q.shape[-1] >= 2 ** 31:
        return "one head's N * head_dim must be below 2^31"
    return None


def _last_contiguous(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _scale(q: Tensor, scale: Optional[float]) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


# ------------------------------------------------------------------ block-local attention

def _bla_fake(q, k, v, grid, block, causal, memory, scale):
    return q.new_empty(q.shape)


@define_op("block_local_attention", family="block_local_attention", tf32="matmul", fake=_bla_fake)
def _bla_kernel(q: Tensor, k: Tensor, v: Tensor, grid: List[int], block: List[int], causal: bool, memory: int,
                scale: float) -> Tensor:
    """Block-local attention over a raster grid (flash-style, only the allowed key tiles)."""
    return _bla_forward_kernel(q, k, v, grid, block, causal, memory, scale)[0]


def _bla_forward_kernel(q, k, v, grid, block, causal, memory, scale):
    from fastgen.kernels.block_local_attention import block_local_forward
    B, H, N, D = q.shape
    out = _backend.empty(B, H, N, D, dtype=q.dtype, device=q.device)
    lse = _backend.empty(B, H, N, dtype=torch.float32, device=q.device)
    block_local_forward(q, k, v, out, lse, grid, block, causal, memory, scale,
                        _bla_kernel.precision(q))
    return out, lse


def _bla_forward(q, k, v, grid, block, causal, memory, scale):
    out, lse = _bla_forward_kernel(q, k, v, grid, block, causal, memory, scale)
    return out, (q, k, v, out, lse)


def _bla_grads(grad, q, k, v, out, lse, grid, block, causal, memory, scale):
    from fastgen.kernels.block_local_attention import block_local_backward
    B, H, N, D = q.shape
    grad = _last_contiguous(grad)
    dq = _backend.empty(B, H, N, D, dtype=q.dtype, device=q.device)
    dk = _backend.empty(B, H, N, D, dtype=k.dtype, device=k.device)
    dv = _backend.empty(B, H, N, D, dtype=v.dtype, device=v.device)
    delta = _backend.empty(B, H, N, dtype=torch.float32, device=q.device)
    block_local_backward(q, k, v, out, grad, lse, delta, dq, dk, dv, grid, block, causal, memory, scale,
                         _bla_kernel.precision(q))
    return dq, dk, dv


def _bla_backward_op(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, grid: List[int], block: List[int],
                     causal: bool, memory: int, scale: float) -> List[Tensor]:
    out, lse = _bla_forward_kernel(q, k, v, grid, block, causal, memory, scale)
    return list(_bla_grads(grad, q, k, v, out, lse, grid, block, causal, memory, scale))


def _bla_backward(grad, saved, args, needs):
    dq, dk, dv = _bla_grads(grad, *saved, *args[3:])
    return tuple(g if need else None for g, need in zip((dq, dk, dv), needs))


define_autograd(_bla_kernel, tensor_inputs=3, forward=_bla_forward, backward=_bla_backward,
                backward_op=_bla_backward_op,
                backward_fake=lambda grad, q, k, v, *args: [torch.empty_like(q), torch.empty_like(k),
                                                            torch.empty_like(v)])


def block_local_attention(q: Tensor, k: Tensor, v: Tensor, grid: Sequence[int], block: Sequence[int],
                          causal: bool = True, memory: Optional[int] = None, scale: Optional[float] = None,
                          backend: Optional[str] = None) -> Tensor:
    """Attention within local blocks of a 1-D, 2-D or 3-D raster grid -> [B, heads, N, head_dim].

    q, k, v: [B, heads, N, head_dim] as for ``F.scaled_dot_product_attention`` (any strides; a
    last dim that is not contiguous is copied).  Tokens are in raster order over ``grid`` (1, 2
    or 3 sizes, the last fastest, prod(grid) = N); ``block`` (one size per grid axis, each
    <= the grid's) tiles the grid from the origin, ragged at the far edges.  Query p attends
    key p' iff p' is in p's block, or (``memory`` = m >= 1) in one of the m blocks before p's
    block along the FIRST grid axis (same block coordinates on the other axes: Image
    Transformer's local 1D/2D attention with memory); with ``causal`` also raster(p') <=
    raster(p).  out = softmax(scale q k^T over the allowed keys) v, scale default
    1/sqrt(head_dim).  The exact rule: ``reference.block_local_mask``.

    Differentiable in q, k, v.  Backends: Triton on CUDA (and under TRITON_INTERPRET=1 when
    forced) for float32/float16/bfloat16 and head_dim <= 128; the reference otherwise (float64,
    head_dim > 128: a forced Triton backend raises a ValueError with the reason).  fp32 uses
    TF32 dots exactly when ``torch.backends.cuda.matmul.allow_tf32`` is set."""
    op = "block_local_attention"
    _check_qkv(op, q, k, v)
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"{op}: q, k and v must have the same shape [B, heads, N, head_dim], got "
                         f"{tuple(q.shape)}, {tuple(k.shape)} and {tuple(v.shape)}")
    grid, block, memory = _check_geometry(op, q.shape[2], grid, block, memory)
    _check_scale(op, scale)
    if _bla_kernel.backend(q, backend, unsupported=_unsupported(q, q.shape[2])) == "reference":
        return reference.block_local_attention(q, k, v, grid, block, causal, memory, scale)
    q, k, v = _last_contiguous(q), _last_contiguous(k), _last_contiguous(v)
    return _bla_kernel(q, k, v, list(grid), list(block), bool(causal), memory, _scale(q, scale))


# ------------------------------------------------------------------------------ decoding

@define_op("block_local_attention_decode", family="block_local_attention", tf32="matmul",
           fake=lambda q, k_cache, v_cache, index, grid, block, memory, scale: q.new_empty(q.shape))
def _decode_kernel(q: Tensor, k_cache: Tensor, v_cache: Tensor, index: int, grid: List[int], block: List[int],
                   memory: int, scale: float) -> Tensor:
    """One causal block-local attention row (incremental decoding against a KV cache)."""
    from fastgen.kernels.block_local_attention import block_local_decode
    B, H, _, D = q.shape
    out = _backend.empty(B, H, 1, D, dtype=q.dtype, device=q.device)
    block_local_decode(q, k_cache, v_cache, out, index, grid, block, memory, scale)
    return out


def block_local_attention_decode(q: Tensor, k_cache: Tensor, v_cache: Tensor, index: int, grid: Sequence[int],
                                 block: Sequence[int], causal: bool = True, memory: Optional[int] = None,
                                 scale: Optional[float] = None, backend: Optional[str] = None) -> Tensor:
    """Incremental decoding: the causal block-local attention output of the token at raster
    position ``index`` -> [B, heads, 1, head_dim].

    q: [B, heads, 1, head_dim], the new token's query; k_cache, v_cache: [B, heads, N,
    head_dim] whose entries at positions <= index are filled (the new token's key and value
    included; later entries are never read).  Equals ``block_local_attention(q_all, k_cache,
    v_cache, grid, block, True, memory, scale)[:, :, index:index + 1]``.  The kernel runs one
    program per (batch, head) and reads only the allowed keys: the token's block up to index
    and its memory blocks.  Causal only (non-causal decoding would need future tokens)."""
    op = "block_local_attention_decode"
    _check_qkv(op, q, k_cache, v_cache, ("q", "k_cache", "v_cache"))
    if not causal:
        raise ValueError(f"{op}: causal must be True: incremental decoding of non-causal attention would read "
                         "tokens that are not generated yet")
    B, H, one, D = q.shape
    if one != 1:
        raise ValueError(f"{op}: q must be [B, heads, 1, head_dim] (one new token), got shape {tuple(q.shape)}")
    if k_cache.shape != v_cache.shape or k_cache.shape[:2] != (B, H) or k_cache.shape[3] != D:
        raise ValueError(f"{op}: k_cache and v_cache must be [B, heads, N, head_dim] = [{B}, {H}, N, {D}] for q "
                         f"{tuple(q.shape)}, got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    N = k_cache.shape[2]
    grid, block, memory = _check_geometry(op, N, grid, block, memory)
    _check_scale(op, scale)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < N:
        raise ValueError(f"{op}: index must be an int in 0..{N - 1} (the new token's raster position), got {index!r}")
    if _decode_kernel.backend(q, backend, unsupported=_unsupported(q, N, dots=False)) == "reference":
        return reference.block_local_attention_decode(q, k_cache, v_cache, index, grid, block, True, memory, scale)
    q, k_cache, v_cache = _last_contiguous(q), _last_contiguous(k_cache), _last_contiguous(v_cache)
    return _decode_kernel(q, k_cache, v_cache, index, list(grid), list(block), memory, _scale(q, scale))


# ------------------------------------------------------------------------ sparse attention

def _sparse_fake(q, k, v, pattern, width, summary, causal, scale):
    return q.new_empty(q.shape)


@define_op("sparse_attention", family="block_local_attention", tf32="matmul", fake=_sparse_fake)
def _sparse_kernel(q: Tensor, k: Tensor, v: Tensor, pattern: str, width: int, summary: int, causal: bool,
                   scale: float) -> Tensor:
    """Sparse Transformer attention (strided / fixed), block-sparse over a cached tile layout."""
    return _sparse_forward_kernel(q, k, v, pattern, width, summary, causal, scale)[0]


def _sparse_forward_kernel(q, k, v, pattern, width, summary, causal, scale):
    from fastgen.kernels.block_local_attention import sparse_forward
    B, H, N, D = q.shape
    out = _backend.empty(B, H, N, D, dtype=q.dtype, device=q.device)
    lse = _backend.empty(B, H, N, dtype=torch.float32, device=q.device)
    sparse_forward(q, k, v, out, lse, pattern, width, summary, causal, scale, _sparse_kernel.precision(q))
    return out, lse


def _sparse_grads(grad, q, k, v, out, lse, pattern, width, summary, causal, scale):
    from fastgen.kernels.block_local_attention import sparse_backward
    B, H, N, D = q.shape
    grad = _last_contiguous(grad)
    dq = _backend.empty(B, H, N, D, dtype=q.dtype, device=q.device)
    dk = _backend.empty(B, H, N, D, dtype=k.dtype, device=k.device)
    dv = _backend.empty(B, H, N, D, dtype=v.dtype, device=v.device)
    delta = _backend.empty(B, H, N, dtype=torch.float32, device=q.device)
    sparse_backward(q, k, v, out, grad, lse, delta, dq, dk, dv, pattern, width, summary, causal, scale,
                    _sparse_kernel.precision(q))
    return dq, dk, dv


def _sparse_backward_op(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, pattern: str, width: int, summary: int,
                        causal: bool, scale: float) -> List[Tensor]:
    out, lse = _sparse_forward_kernel(q, k, v, pattern, width, summary, causal, scale)
    return list(_sparse_grads(grad, q, k, v, out, lse, pattern, width, summary, causal, scale))


def _sparse_backward(grad, saved, args, needs):
    dq, dk, dv = _sparse_grads(grad, *saved, *args[3:])
    return tuple(g if need else None for g, need in zip((dq, dk, dv), needs))


def _sparse_forward(q, k, v, pattern, width, summary, causal, scale):
    out, lse = _sparse_forward_kernel(q, k, v, pattern, width, summary, causal, scale)
    return out, (q, k, v, out, lse)


define_autograd(_sparse_kernel, tensor_inputs=3, forward=_sparse_forward,
                backward=_sparse_backward, backward_op=_sparse_backward_op,
                backward_fake=lambda grad, q, k, v, *args: [torch.empty_like(q), torch.empty_like(k),
                                                            torch.empty_like(v)])


def sparse_attention(q: Tensor, k: Tensor, v: Tensor, pattern: str = "strided", stride: Optional[int] = None,
                     block: Optional[int] = None, summary: int = 1, causal: bool = True,
                     scale: Optional[float] = None, backend: Optional[str] = None) -> Tensor:
    """Sparse Transformer attention (Child et al. 2019) over a 1-D sequence -> [B, heads, N, hd].

    q, k, v: [B, heads, N, head_dim].  pattern 'strided' (needs ``stride`` = l): query i attends
    key j iff i - j < l (the previous l positions) or (i - j) % l == 0 (every l-th before it);
    'fixed' (needs ``block`` = l; ``summary`` = c, default 1): j // l == i // l (its block) or
    j % l >= l - c (the last c positions of every block).  ``causal``: also j <= i (without it
    the strided window is |i - j| < l).  The masks: ``reference.sparse_mask``.

    Differentiable in q, k, v; backends and TF32 as ``block_local_attention``."""
    op = "sparse_attention"
    _check_qkv(op, q, k, v)
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"{op}: q, k and v must have the same shape [B, heads, N, head_dim], got "
                         f"{tuple(q.shape)}, {tuple(k.shape)} and {tuple(v.shape)}")
    if pattern not in reference.PATTERNS:
        raise ValueError(f"{op}: pattern must be one of {reference.PATTERNS}, got {pattern!r}")
    name, width = ("stride", stride) if pattern == "strided" else ("block", block)
    other = "block" if pattern == "strided" else "stride"
    if (block if pattern == "strided" else stride) is not None:
        raise ValueError(f"{op}: pattern {pattern!r} takes {name}=, not {other}=")
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"{op}: pattern {pattern!r} needs {name} = an int >= 1, got {width!r}")
    if not isinstance(summary, int) or isinstance(summary, bool) or not 1 <= summary <= width:
        raise ValueError(f"{op}: summary must be an int in 1..{width} (summary positions per block), got {summary!r}")
    _check_scale(op, scale)
    if _sparse_kernel.backend(q, backend, unsupported=_unsupported(q, q.shape[2])) == "reference":
        return reference.sparse_attention(q, k, v, pattern, width, summary, causal, scale)
    q, k, v = _last_contiguous(q), _last_contiguous(k), _last_contiguous(v)
    return _sparse_kernel(q, k, v, pattern, width, summary, bool(causal), _scale(q, scale))
