"""Block-local and block-sparse attention: flash-attention-style kernels whose key loop visits
only the tiles the attention pattern allows (``fastgen.ops.block_local_attention``; the math in
``fastgen.ops.block_local_attention.reference``).

**Block-local.**  The grid is padded to 3 axes (g0, g1, g2) by trailing 1s (raster order and
the memory axis, axis 0, unchanged); a block (c0, c1, c2) has B0*B1*B2 *slots*, slot s =
(s0 B1 + s1) B2 + s2 at position (c0 B0 + s0, c1 B1 + s1, c2 B2 + s2) -- invalid past a ragged
grid edge.  Within one block, slot order is raster order, so causality inside the block is
the triangle "key slot <= query slot", and the block's memory blocks (c0 - m .. c0 - 1, c1,
c2) are entirely visible.  A program takes (one query tile of BLOCK_M slots of one block, one
batch*head); its rows are gathered through their raster positions (each row is head_dim
contiguous elements read through the tensors' strides: no permute copies) and its key loop
runs over exactly: every key tile of each memory block, then the own block's key tiles up to
the query tile's last slot (causal) or all of them.  Nothing else is read; fully masked tiles
are never visited (the only masked work is the diagonal tile and ragged slots).

Forward: online softmax in base 2 (scores scaled by scale*log2 e), fp32 accumulators, ``tl.dot``
with the op's dot precision; writes out and the per-row log-sum-exp (base 2) for backward.
Backward (flash-style recomputation): ``delta = rowsum(out * grad)`` (one small pass), then
one program per key tile accumulating dK, dV over the query tiles that see it (its own block
from the diagonal on, and the ``memory`` blocks after it along axis 0), and one per query tile
accumulating dQ over the forward's key tiles -- no atomics, every output tile written once.

Decode: one program per (batch, head) for the token at raster ``index``: its memory blocks'
keys and its block's keys up to index, in tiles of BLOCK_N (a vector q: no dot).

**Sparse (Sparse Transformer).**  Positions are 1-D; a per-query-tile list of key tiles (and its
transpose for dK/dV) that contain at least one allowed pair is built once on the host and
cached (``sparse_layout``); in each listed tile the exact pattern is applied element-wise.
"""
import functools

import torch
import triton
import triton.language as tl

from fastgen.kernels._launch import launch

LOG2E = 1.4426950408889634
NEG = tl.constexpr(-1.0e30)   # "minus infinity" of the running max: exp2(NEG - NEG) = 1, never NaN
PATTERNS = {"strided": 0, "fixed": 1}


# ------------------------------------------------------------------------ shared tile math

@triton.jit
def _attend(q, kt, v, m_i, l_i, acc, allowed, qk_scale, PRECISION: tl.constexpr):
    """One key tile of the online softmax: q [M, D], kt [D, N], v [N, D]; allowed [M, N]."""
    s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
    s = tl.where(allowed, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _probabilities(q, kt, lse, allowed, qk_scale, PRECISION: tl.constexpr):
    """P [M, N] recomputed from the saved base-2 log-sum-exp."""
    s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
    return tl.where(allowed, tl.exp2(s - lse[:, None]), 0.0)


@triton.jit
def _dkdv_step(q, do, lse, delta, kt, vt, allowed, dk, dv, qk_scale, PRECISION: tl.constexpr):
    """Add one query tile's contribution to dK, dV [N, D] (dK still without the scale)."""
    p = _probabilities(q, kt, lse, allowed, qk_scale, PRECISION)
    dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION)
    dp = tl.dot(do, vt, input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _dq_step(q, do, lse, delta, kt, vt, allowed, dq, qk_scale, PRECISION: tl.constexpr):
    """Add one key tile's contribution to dQ [M, D] (without the scale)."""
    p = _probabilities(q, kt, lse, allowed, qk_scale, PRECISION)
    dp = tl.dot(do, vt, input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PRECISION)


@triton.jit
def _rows(ptr, base, rows, stride, d, ok, D: tl.constexpr):
    """ptr[base + rows * stride + d] as [len(rows), len(d)]; rows not ok (and d >= D) read 0."""
    return tl.load(ptr + base + rows[:, None] * stride + d[None, :], mask=ok[:, None] & (d[None, :] < D), other=0.0)


@triton.jit
def _cols(ptr, base, rows, stride, d, ok, D: tl.constexpr):
    """The transposed tile [len(d), len(rows)]."""
    return tl.load(ptr + base + rows[None, :] * stride + d[:, None], mask=ok[None, :] & (d[:, None] < D), other=0.0)


@triton.jit
def _base(bh, H, sb, sh):
    b = (bh // H).to(tl.int64)
    return b * sb + (bh % H).to(tl.int64) * sh


# ------------------------------------------------------------------------------ block-local

@triton.jit
def _slots(c0, c1, c2, slots, G0, G1, G2, B0: tl.constexpr, B1: tl.constexpr, B2: tl.constexpr):
    """Raster positions of block (c0, c1, c2)'s ``slots`` and whether each exists."""
    s0 = slots // (B1 * B2)
    s1 = (slots // B2) % B1
    s2 = slots % B2
    p0 = c0 * B0 + s0
    p1 = c1 * B1 + s1
    p2 = c2 * B2 + s2
    ok = (slots < B0 * B1 * B2) & (p0 < G0) & (p1 < G1) & (p2 < G2)
    return (p0 * G1 + p1) * G2 + p2, ok


@triton.jit
def _block_of(pid, TILES: tl.constexpr, NB1, NB2):
    blk = pid // TILES
    return blk // (NB1 * NB2), (blk // NB2) % NB1, blk % NB2, pid % TILES


@triton.jit
def bla_fwd_kernel(q_ptr, sqb, sqh, sqn, k_ptr, skb, skh, skn, v_ptr, svb, svh, svn, o_ptr, sob, soh, son, lse_ptr,
                   H, N, G0, G1, G2, NB1, NB2, MEM, qk_scale,
                   B0: tl.constexpr, B1: tl.constexpr, B2: tl.constexpr, CAUSAL: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TILES_M: tl.constexpr, TILES_N: tl.constexpr,
                   D: tl.constexpr, HEAD: tl.constexpr, PRECISION: tl.constexpr):
    bh = tl.program_id(1)
    c0, c1, c2, tile = _block_of(tl.program_id(0), TILES_M, NB1, NB2)
    m_slots = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_q, ok_q = _slots(c0, c1, c2, m_slots, G0, G1, G2, B0, B1, B2)
    d = tl.arange(0, HEAD)
    q = _rows(q_ptr, _base(bh, H, sqb, sqh), rows_q, sqn, d, ok_q, D)
    k_base = _base(bh, H, skb, skh)
    v_base = _base(bh, H, svb, svh)
    m_i = tl.full([BLOCK_M], NEG, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD], tl.float32)
    n_mem = tl.minimum(c0, MEM)
    if CAUSAL:   # own key tiles up to the query tile's last slot
        own = tl.minimum((tile * BLOCK_M + BLOCK_M + BLOCK_N - 1) // BLOCK_N, TILES_N)
    else:
        own = TILES_N
    empty = c0 * B0 + (tile * BLOCK_M) // (B1 * B2) >= G0       # a tile past a ragged first axis
    total = tl.where(empty, 0, n_mem * TILES_N + own)
    for t in range(0, total):
        kc0 = c0 - n_mem + t // TILES_N
        n_slots = (t % TILES_N) * BLOCK_N + tl.arange(0, BLOCK_N)
        rows_k, ok_k = _slots(kc0, c1, c2, n_slots, G0, G1, G2, B0, B1, B2)
        kt = _cols(k_ptr, k_base, rows_k, skn, d, ok_k, D)
        v = _rows(v_ptr, v_base, rows_k, svn, d, ok_k, D)
        allowed = ok_k[None, :]
        if CAUSAL:
            allowed = allowed & ((kc0 < c0) | (n_slots[None, :] <= m_slots[:, None]))
        m_i, l_i, acc = _attend(q, kt, v, m_i, l_i, acc, allowed, qk_scale, PRECISION)
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    tl.store(o_ptr + _base(bh, H, sob, soh) + rows_q[:, None] * son + d[None, :], out.to(o_ptr.dtype.element_ty),
             mask=ok_q[:, None] & (d[None, :] < D))
    tl.store(lse_ptr + bh.to(tl.int64) * N + rows_q, m_i + tl.log2(l_safe), mask=ok_q)


@triton.jit
def delta_kernel(o_ptr, sob, soh, son, g_ptr, sgb, sgh, sgn, delta_ptr, H, N,
                 BLOCK: tl.constexpr, D: tl.constexpr, HEAD: tl.constexpr):
    """delta[bh, n] = sum_d out[bh, n, d] * grad[bh, n, d] (fp32)."""
    bh = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = rows < N
    d = tl.arange(0, HEAD)
    o = _rows(o_ptr, _base(bh, H, sob, soh), rows, son, d, ok, D).to(tl.float32)
    g = _rows(g_ptr, _base(bh, H, sgb, sgh), rows, sgn, d, ok, D).to(tl.float32)
    tl.store(delta_ptr + bh.to(tl.int64) * N + rows, tl.sum(o * g, 1), mask=ok)


@triton.jit
def bla_dkdv_kernel(q_ptr, sqb, sqh, sqn, k_ptr, skb, skh, skn, v_ptr, svb, svh, svn, g_ptr, sgb, sgh, sgn,
                    lse_ptr, delta_ptr, dk_ptr, dv_ptr, sdb, sdh, sdn,
                    H, N, G0, G1, G2, NB0, NB1, NB2, MEM, qk_scale, scale,
                    B0: tl.constexpr, B1: tl.constexpr, B2: tl.constexpr, CAUSAL: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TILES_M: tl.constexpr, TILES_N: tl.constexpr,
                    D: tl.constexpr, HEAD: tl.constexpr, PRECISION: tl.constexpr):
    bh = tl.program_id(1)
    c0, c1, c2, tile = _block_of(tl.program_id(0), TILES_N, NB1, NB2)
    n_slots = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_k, ok_k = _slots(c0, c1, c2, n_slots, G0, G1, G2, B0, B1, B2)
    d = tl.arange(0, HEAD)
    kt = _cols(k_ptr, _base(bh, H, skb, skh), rows_k, skn, d, ok_k, D)
    vt = _cols(v_ptr, _base(bh, H, svb, svh), rows_k, svn, d, ok_k, D)
    q_base = _base(bh, H, sqb, sqh)
    g_base = _base(bh, H, sgb, sgh)
    stats = bh.to(tl.int64) * N
    dk = tl.zeros([BLOCK_N, HEAD], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD], tl.float32)
    if CAUSAL:   # own query tiles from the one holding this key tile's first slot
        first = (tile * BLOCK_N) // BLOCK_M
    else:
        first = 0
    n_own = TILES_M - first
    n_after = tl.minimum(MEM, NB0 - 1 - c0)                      # blocks whose memory holds this one
    empty = c0 * B0 + (tile * BLOCK_N) // (B1 * B2) >= G0
    total = tl.where(empty, 0, n_own + n_after * TILES_M)
    for t in range(0, total):
        u = t - n_own
        mine = t < n_own
        qc0 = tl.where(mine, c0, c0 + 1 + u // TILES_M)
        q_tile = tl.where(mine, first + t, u % TILES_M)
        m_slots = q_tile * BLOCK_M + tl.arange(0, BLOCK_M)
        rows_q, ok_q = _slots(qc0, c1, c2, m_slots, G0, G1, G2, B0, B1, B2)
        q = _rows(q_ptr, q_base, rows_q, sqn, d, ok_q, D)
        do = _rows(g_ptr, g_base, rows_q, sgn, d, ok_q, D)
        lse = tl.load(lse_ptr + stats + rows_q, mask=ok_q, other=0.0)
        delta = tl.load(delta_ptr + stats + rows_q, mask=ok_q, other=0.0)
        allowed = ok_q[:, None] & ok_k[None, :]
        if CAUSAL:
            allowed = allowed & ((qc0 > c0) | (n_slots[None, :] <= m_slots[:, None]))
        dk, dv = _dkdv_step(q, do, lse, delta, kt, vt, allowed, dk, dv, qk_scale, PRECISION)
    out_base = _base(bh, H, sdb, sdh)
    ok = ok_k[:, None] & (d[None, :] < D)
    tl.store(dk_ptr + out_base + rows_k[:, None] * sdn + d[None, :], (dk * scale).to(dk_ptr.dtype.element_ty), mask=ok)
    tl.store(dv_ptr + out_base + rows_k[:, None] * sdn + d[None, :], dv.to(dv_ptr.dtype.element_ty), mask=ok)


@triton.jit
def bla_dq_kernel(q_ptr, sqb, sqh, sqn, k_ptr, skb, skh, skn, v_ptr, svb, svh, svn, g_ptr, sgb, sgh, sgn,
                  lse_ptr, delta_ptr, dq_ptr, sdb, sdh, sdn,
                  H, N, G0, G1, G2, NB1, NB2, MEM, qk_scale, scale,
                  B0: tl.constexpr, B1: tl.constexpr, B2: tl.constexpr, CAUSAL: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TILES_M: tl.constexpr, TILES_N: tl.constexpr,
                  D: tl.constexpr, HEAD: tl.constexpr, PRECISION: tl.constexpr):
    bh = tl.program_id(1)
    c0, c1, c2, tile = _block_of(tl.program_id(0), TILES_M, NB1, NB2)
    m_slots = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_q, ok_q = _slots(c0, c1, c2, m_slots, G0, G1, G2, B0, B1, B2)
    d = tl.arange(0, HEAD)
    q = _rows(q_ptr, _base(bh, H, sqb, sqh), rows_q, sqn, d, ok_q, D)
    do = _rows(g_ptr, _base(bh, H, sgb, sgh), rows_q, sgn, d, ok_q, D)
    stats = bh.to(tl.int64) * N
    lse = tl.load(lse_ptr + stats + rows_q, mask=ok_q, other=0.0)
    delta = tl.load(delta_ptr + stats + rows_q, mask=ok_q, other=0.0)
    k_base = _base(bh, H, skb, skh)
    v_base = _base(bh, H, svb, svh)
    dq = tl.zeros([BLOCK_M, HEAD], tl.float32)
    n_mem = tl.minimum(c0, MEM)
    if CAUSAL:
        own = tl.minimum((tile * BLOCK_M + BLOCK_M + BLOCK_N - 1) // BLOCK_N, TILES_N)
    else:
        own = TILES_N
    empty = c0 * B0 + (tile * BLOCK_M) // (B1 * B2) >= G0
    total = tl.where(empty, 0, n_mem * TILES_N + own)
    for t in range(0, total):
        kc0 = c0 - n_mem + t // TILES_N
        n_slots = (t % TILES_N) * BLOCK_N + tl.arange(0, BLOCK_N)
        rows_k, ok_k = _slots(kc0, c1, c2, n_slots, G0, G1, G2, B0, B1, B2)
        kt = _cols(k_ptr, k_base, rows_k, skn, d, ok_k, D)
        vt = _cols(v_ptr, v_base, rows_k, svn, d, ok_k, D)
        allowed = ok_q[:, None] & ok_k[None, :]
        if CAUSAL:
            allowed = allowed & ((kc0 < c0) | (n_slots[None, :] <= m_slots[:, None]))
        dq = _dq_step(q, do, lse, delta, kt, vt, allowed, dq, qk_scale, PRECISION)
    tl.store(dq_ptr + _base(bh, H, sdb, sdh) + rows_q[:, None] * sdn + d[None, :], (dq * scale).to(dq_ptr.dtype.element_ty),
             mask=ok_q[:, None] & (d[None, :] < D))


@triton.jit
def bla_decode_kernel(q_ptr, sqb, sqh, k_ptr, skb, skh, skn, v_ptr, svb, svh, svn, o_ptr, sob, soh,
                      H, index, G1, G2, MEM, qk_scale,
                      B0: tl.constexpr, B1: tl.constexpr, B2: tl.constexpr, BLOCK_N: tl.constexpr,
                      TILES_N: tl.constexpr, D: tl.constexpr, HEAD: tl.constexpr):
    bh = tl.program_id(0)
    p2 = index % G2
    p1 = (index // G2) % G1
    p0 = index // (G1 * G2)
    c0, c1, c2 = p0 // B0, p1 // B1, p2 // B2
    slot_q = ((p0 - c0 * B0) * B1 + (p1 - c1 * B1)) * B2 + (p2 - c2 * B2)
    d = tl.arange(0, HEAD)
    q = tl.load(q_ptr + _base(bh, H, sqb, sqh) + d, mask=d < D, other=0.0).to(tl.float32)
    k_base = _base(bh, H, skb, skh)
    v_base = _base(bh, H, svb, svh)
    n_mem = tl.minimum(c0, MEM)
    m_i = NEG
    l_i = 0.0
    acc = tl.zeros([HEAD], tl.float32)
    G0 = (index // (G1 * G2)) + B0 * (MEM + 1)          # rows past the cache are never reached
    for t in range(0, n_mem * TILES_N + slot_q // BLOCK_N + 1):
        kc0 = c0 - n_mem + t // TILES_N
        n_slots = (t % TILES_N) * BLOCK_N + tl.arange(0, BLOCK_N)
        rows_k, ok_k = _slots(kc0, c1, c2, n_slots, G0, G1, G2, B0, B1, B2)
        limit = tl.where(kc0 < c0, B0 * B1 * B2, slot_q + 1)       # memory blocks: all; own: up to index
        ok_k = ok_k & (n_slots < limit)
        k = _rows(k_ptr, k_base, rows_k, skn, d, ok_k, D).to(tl.float32)
        v = _rows(v_ptr, v_base, rows_k, svn, d, ok_k, D).to(tl.float32)
        s = tl.where(ok_k, tl.sum(q[None, :] * k, 1) * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new)
        l_i = l_i * alpha + tl.sum(p, 0)
        acc = acc * alpha + tl.sum(p[:, None] * v, 0)
        m_i = m_new
    tl.store(o_ptr + _base(bh, H, sob, soh) + d, (acc / l_i).to(o_ptr.dtype.element_ty), mask=d < D)


# --------------------------------------------------------------------------------- sparse

@triton.jit
def _pattern(i, j, N, WIDTH, SUMMARY, PATTERN: tl.constexpr, CAUSAL: tl.constexpr):
    """[M, N] allowed pairs of query positions i [M, 1] and key positions j [1, N]."""
    if PATTERN == 0:
        dist = i - j
        if CAUSAL:
            near = dist < WIDTH
        else:
            near = (dist < WIDTH) & (dist > -WIDTH)
        allowed = near | (dist % WIDTH == 0)
    else:
        allowed = (j // WIDTH == i // WIDTH) | (j % WIDTH >= WIDTH - SUMMARY)
    if CAUSAL:
        allowed = allowed & (j <= i)
    return allowed & (j < N) & (i < N)


@triton.jit
def sparse_fwd_kernel(q_ptr, sqb, sqh, sqn, k_ptr, skb, skh, skn, v_ptr, svb, svh, svn, o_ptr, sob, soh, son, lse_ptr,
                      lut_ptr, count_ptr, LUT_STRIDE, H, N, WIDTH, SUMMARY, qk_scale,
                      PATTERN: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      D: tl.constexpr, HEAD: tl.constexpr, PRECISION: tl.constexpr):
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    rows_q = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    ok_q = rows_q < N
    d = tl.arange(0, HEAD)
    q = _rows(q_ptr, _base(bh, H, sqb, sqh), rows_q, sqn, d, ok_q, D)
    k_base = _base(bh, H, skb, skh)
    v_base = _base(bh, H, svb, svh)
    m_i = tl.full([BLOCK_M], NEG, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD], tl.float32)
    for c in range(0, tl.load(count_ptr + tile)):
        rows_k = tl.load(lut_ptr + tile * LUT_STRIDE + c) * BLOCK_N + tl.arange(0, BLOCK_N)
        ok_k = rows_k < N
        kt = _cols(k_ptr, k_base, rows_k, skn, d, ok_k, D)
        v = _rows(v_ptr, v_base, rows_k, svn, d, ok_k, D)
        allowed = _pattern(rows_q[:, None], rows_k[None, :], N, WIDTH, SUMMARY, PATTERN, CAUSAL)
        m_i, l_i, acc = _attend(q, kt, v, m_i, l_i, acc, allowed, qk_scale, PRECISION)
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    tl.store(o_ptr + _base(bh, H, sob, soh) + rows_q[:, None] * son + d[None, :],
             (acc / l_safe[:, None]).to(o_ptr.dtype.element_ty), mask=ok_q[:, None] & (d[None, :] < D))
    tl.store(lse_ptr + bh.to(tl.int64) * N + rows_q, m_i + tl.log2(l_safe), mask=ok_q)


@triton.jit
def sparse_dkdv_kernel(q_ptr, sqb, sqh, sqn, k_ptr, skb, skh, skn, v_ptr, svb, svh, svn, g_ptr, sgb, sgh, sgn,
                       lse_ptr, delta_ptr, dk_ptr, dv_ptr, sdb, sdh, sdn, lut_ptr, count_ptr, LUT_STRIDE,
                       H, N, WIDTH, SUMMARY, qk_scale, scale,
                       PATTERN: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       D: tl.constexpr, HEAD: tl.constexpr, PRECISION: tl.constexpr):
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    rows_k = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    ok_k = rows_k < N
    d = tl.arange(0, HEAD)
    kt = _cols(k_ptr, _base(bh, H, skb, skh), rows_k, skn, d, ok_k, D)
    vt = _cols(v_ptr, _base(bh, H, svb, svh), rows_k, svn, d, ok_k, D)
    q_base = _base(bh, H, sqb, sqh)
    g_base = _base(bh, H, sgb, sgh)
    stats = bh.to(tl.int64) * N
    dk = tl.zeros([BLOCK_N, HEAD], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD], tl.float32)
    for c in range(0, tl.load(count_ptr + tile)):
        rows_q = tl.load(lut_ptr + tile * LUT_STRIDE + c) * BLOCK_M + tl.arange(0, BLOCK_M)
        ok_q = rows_q < N
        q = _rows(q_ptr, q_base, rows_q, sqn, d, ok_q, D)
        do = _rows(g_ptr, g_base, rows_q, sgn, d, ok_q, D)
        lse = tl.load(lse_ptr + stats + rows_q, mask=ok_q, other=0.0)
        delta = tl.load(delta_ptr + stats + rows_q, mask=ok_q, other=0.0)
        allowed = _pattern(rows_q[:, None], rows_k[None, :], N, WIDTH, SUMMARY, PATTERN, CAUSAL)
        dk, dv = _dkdv_step(q, do, lse, delta, kt, vt, allowed, dk, dv, qk_scale, PRECISION)
    out_base = _base(bh, H, sdb, sdh)
    ok = ok_k[:, None] & (d[None, :] < D)
    tl.store(dk_ptr + out_base + rows_k[:, None] * sdn + d[None, :], (dk * scale).to(dk_ptr.dtype.element_ty), mask=ok)
    tl.store(dv_ptr + out_base + rows_k[:, None] * sdn + d[None, :], dv.to(dv_ptr.dtype.element_ty), mask=ok)


@triton.jit
def sparse_dq_kernel(q_ptr, sqb, sqh, sqn, k_ptr, skb, skh, skn, v_ptr, svb, svh, svn, g_ptr, sgb, sgh, sgn,
                     lse_ptr, delta_ptr, dq_ptr, sdb, sdh, sdn, lut_ptr, count_ptr, LUT_STRIDE,
                     H, N, WIDTH, SUMMARY, qk_scale, scale,
                     PATTERN: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     D: tl.constexpr, HEAD: tl.constexpr, PRECISION: tl.constexpr):
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    rows_q = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    ok_q = rows_q < N
    d = tl.arange(0, HEAD)
    q = _rows(q_ptr, _base(bh, H, sqb, sqh), rows_q, sqn, d, ok_q, D)
    do = _rows(g_ptr, _base(bh, H, sgb, sgh), rows_q, sgn, d, ok_q, D)
    stats = bh.to(tl.int64) * N
    lse = tl.load(lse_ptr + stats + rows_q, mask=ok_q, other=0.0)
    delta = tl.load(delta_ptr + stats + rows_q, mask=ok_q, other=0.0)
    k_base = _base(bh, H, skb, skh)
    v_base = _base(bh, H, svb, svh)
    dq = tl.zeros([BLOCK_M, HEAD], tl.float32)
    for c in range(0, tl.load(count_ptr + tile)):
        rows_k = tl.load(lut_ptr + tile * LUT_STRIDE + c) * BLOCK_N + tl.arange(0, BLOCK_N)
        ok_k = rows_k < N
        kt = _cols(k_ptr, k_base, rows_k, skn, d, ok_k, D)
        vt = _cols(v_ptr, v_base, rows_k, svn, d, ok_k, D)
        allowed = _pattern(rows_q[:, None], rows_k[None, :], N, WIDTH, SUMMARY, PATTERN, CAUSAL)
        dq = _dq_step(q, do, lse, delta, kt, vt, allowed, dq, qk_scale, PRECISION)
    tl.store(dq_ptr + _base(bh, H, sdb, sdh) + rows_q[:, None] * sdn + d[None, :], (dq * scale).to(dq_ptr.dtype.element_ty),
             mask=ok_q[:, None] & (d[None, :] < D))


# ------------------------------------------------------------------------- host wrappers

def _pad3(values):
    values = [int(x) for x in values]
    return values + [1] * (3 - len(values))


def _pow2(n):
    return 1 << max(0, int(n) - 1).bit_length()


def head_block(D):
    """The padded head dim: a power of two >= 16 (tl.dot's smallest K)."""
    return max(16, _pow2(D))


def tiles(block, D, dtype=torch.bfloat16, backward=False):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for blocks of ``block`` slots, head dim D.
    Sized by the compile gate (no spills on sm_80 / sm_90): 64-slot tiles for 16-bit inputs,
    32 for fp32 (operands of an exact dot take twice the registers: 8 warps, one stage), a
    quarter of that in the backward at head dim 128; the backward at 8 warps and one pipeline stage (and dK/dV with
    query tiles of half the key tile, dQ with key tiles of half the query tile:
    ``block_local_backward``); 8 warps forward at head dim 128."""
    slots = 1
    for b in block:
        slots *= int(b)
    largest = 64 if dtype != torch.float32 else 32
    if backward and head_block(D) >= 128:
        largest //= 4                  # dK/dV keep two [tile, 128] fp32 accumulators and four operands
    tile = min(largest, max(16, _pow2(slots)))
    if backward:
        # the backward's live state (q, do, k, v tiles, dk/dv or dq accumulators) spills at 4 warps
        # or with a second pipeline stage on sm_80 (the compile gate): 8 warps, one stage
        return tile, tile, (8 if tile >= 32 else 4), 1
    if dtype == torch.float32:
        # exact fp32 operands spill at 4 warps on sm_80 or sm_90 under triton 3.6 (the gate)
        return tile, tile, 8, 1
    return tile, tile, (8 if tile >= 64 and head_block(D) >= 128 else 4), 2


def _strides(t):
    return (t.stride(0), t.stride(1), t.stride(2))


def _geometry(grid, block, D, dtype=torch.bfloat16, backward=False):
    G, Bk = _pad3(grid), _pad3(block)
    NB = [-(-g // b) for g, b in zip(G, Bk)]
    BLOCK_M, BLOCK_N, warps, stages = tiles(Bk, D, dtype, backward)
    slots = Bk[0] * Bk[1] * Bk[2]
    return G, Bk, NB, BLOCK_M, BLOCK_N, -(-slots // BLOCK_M), -(-slots // BLOCK_N), warps, stages


def block_local_forward(q, k, v, out, lse, grid, block, causal, memory, scale, precision):
    """Launch the forward: q, k, v, out [B, H, N, D] (last dim contiguous), lse [B, H, N] fp32."""
    B, H, N, D = q.shape
    G, Bk, NB, BM, BN, TM, TN, warps, stages = _geometry(grid, block, D, q.dtype)
    launch(bla_fwd_kernel, (NB[0] * NB[1] * NB[2] * TM, B * H),
           (q, *_strides(q), k, *_strides(k), v, *_strides(v), out, *_strides(out), lse,
            H, N, G[0], G[1], G[2], NB[1], NB[2], int(memory), float(scale) * LOG2E),
           dict(B0=Bk[0], B1=Bk[1], B2=Bk[2], CAUSAL=bool(causal), BLOCK_M=BM, BLOCK_N=BN, TILES_M=TM, TILES_N=TN,
                D=D, HEAD=head_block(D), PRECISION=precision), out, num_warps=warps, num_stages=stages)


def _delta(out, grad, delta):
    B, H, N, D = out.shape
    BLOCK = 64
    launch(delta_kernel, (triton.cdiv(N, BLOCK), B * H),
           (out, *_strides(out), grad, *_strides(grad), delta, H, N),
           dict(BLOCK=BLOCK, D=D, HEAD=head_block(D)), delta, num_warps=4, num_stages=1)


def block_local_backward(q, k, v, out, grad, lse, delta, dq, dk, dv, grid, block, causal, memory, scale, precision):
    """Launch the backward: delta = rowsum(out * grad) into ``delta`` [B, H, N] fp32, then dK/dV
    and dQ (dq, dk, dv [B, H, N, D] contiguous, overwritten)."""
    B, H, N, D = q.shape
    G, Bk, NB, BM, BN, TM, TN, warps, stages = _geometry(grid, block, D, q.dtype, backward=True)
    _delta(out, grad, delta)
    common = dict(B0=Bk[0], B1=Bk[1], B2=Bk[2], CAUSAL=bool(causal), BLOCK_M=BM, BLOCK_N=BN, TILES_M=TM,
                  TILES_N=TN, D=D, HEAD=head_block(D), PRECISION=precision)
    inputs = (q, *_strides(q), k, *_strides(k), v, *_strides(v), grad, *_strides(grad), lse, delta)
    n_blocks = NB[0] * NB[1] * NB[2]
    # dK/dV hold two [BN, D] fp32 accumulators while streaming q and dO: query tiles of half the
    # key tile keep that under 255 registers on sm_80 (the compile gate; 64/64 spilled there)
    BM_kv = max(16, BN // 2)
    kv = dict(common, BLOCK_M=BM_kv, TILES_M=-(-(Bk[0] * Bk[1] * Bk[2]) // BM_kv))
    launch(bla_dkdv_kernel, (n_blocks * TN, B * H),
           (*inputs, dk, dv, *_strides(dk), H, N, G[0], G[1], G[2], NB[0], NB[1], NB[2], int(memory),
            float(scale) * LOG2E, float(scale)), kv, dk, num_warps=warps, num_stages=stages)
    # dQ likewise streams key tiles of half the query tile (64/64 spilled on sm_80, triton 3.6)
    BN_q = max(16, BM // 2)
    q_kw = dict(common, BLOCK_N=BN_q, TILES_N=-(-(Bk[0] * Bk[1] * Bk[2]) // BN_q))
    launch(bla_dq_kernel, (n_blocks * TM, B * H),
           (*inputs, dq, *_strides(dq), H, N, G[0], G[1], G[2], NB[1], NB[2], int(memory),
            float(scale) * LOG2E, float(scale)), q_kw, dq, num_warps=warps, num_stages=stages)


def block_local_decode(q, k_cache, v_cache, out, index, grid, block, memory, scale):
    """Launch the decoding step: q, out [B, H, 1, D], caches [B, H, N, D]; one program per (b, h)."""
    B, H, _, D = q.shape
    G, Bk, NB, BM, BN, TM, TN, warps, stages = _geometry(grid, block, D, q.dtype)
    launch(bla_decode_kernel, (B * H,),
           (q, q.stride(0), q.stride(1), k_cache, *_strides(k_cache), v_cache, *_strides(v_cache),
            out, out.stride(0), out.stride(1), H, int(index), G[1], G[2], int(memory), float(scale) * LOG2E),
           dict(B0=Bk[0], B1=Bk[1], B2=Bk[2], BLOCK_N=BN, TILES_N=TN, D=D, HEAD=head_block(D)), out,
           num_warps=4, num_stages=2)


SPARSE_TILE = 64


def sparse_tiles(N, dtype=torch.bfloat16):
    """(BLOCK_M, BLOCK_N) of the sparse kernels for sequences of N tokens (32 for fp32)."""
    tile = min(SPARSE_TILE if dtype != torch.float32 else 32, max(16, _pow2(N)))
    return tile, tile


@functools.lru_cache(maxsize=16)
def sparse_layout(N, pattern, width, summary, causal, BLOCK_M, BLOCK_N, device):
    """The block-sparse layout of a pattern, built once per configuration and device:
    (lut [n_q_tiles, max] int32 key tiles per query tile, counts [n_q_tiles] int32,
     lut_t [n_k_tiles, max_t] query tiles per key tile, counts_t [n_k_tiles]).
    Computed from the dense mask one query tile row at a time (on the device)."""
    if torch.device(device).type == "meta":         # the compile gate: shapes only
        return tuple(t.to("meta") for t in sparse_layout(N, pattern, width, summary, causal, BLOCK_M, BLOCK_N,
                                                         torch.device("cpu")))
    tm, tn = -(-N // BLOCK_M), -(-N // BLOCK_N)
    j = torch.arange(tn * BLOCK_N, device=device)[None, :]
    rows = []
    chunk = max(1, (1 << 22) // (tn * BLOCK_N * BLOCK_M))     # query tiles per step: ~4M mask entries
    for start in range(0, tm, chunk):
        stop = min(tm, start + chunk)
        i = torch.arange(start * BLOCK_M, stop * BLOCK_M, device=device)[:, None]
        if pattern == "strided":
            dist = i - j
            allowed = (dist < width) if causal else (dist.abs() < width)
            allowed = allowed | (dist % width == 0)
        else:
            allowed = (j // width == i // width) | (j % width >= width - summary)
        if causal:
            allowed = allowed & (j <= i)
        allowed = allowed & (j < N) & (i < N)
        rows.append(allowed.view(stop - start, BLOCK_M, tn, BLOCK_N).any(3).any(1))
    layout = torch.cat(rows)                                     # [tm, tn] bool

    def table(layout):
        counts = layout.sum(1).to(torch.int32)
        width_ = max(1, int(counts.max()))
        order = torch.argsort((~layout).to(torch.int8), dim=1, stable=True)[:, :width_]
        return order.to(torch.int32).contiguous(), counts.contiguous()
    lut, counts = table(layout)
    lut_t, counts_t = table(layout.t())
    return lut, counts, lut_t, counts_t


def _sparse_common(q, pattern, causal, precision, backward=False):
    B, H, N, D = q.shape
    BM, BN = sparse_tiles(N, q.dtype)
    warps = 8 if BM >= 64 and (backward or head_block(D) >= 128) else 4
    return BM, BN, warps, dict(PATTERN=PATTERNS[pattern], CAUSAL=bool(causal), BLOCK_M=BM, BLOCK_N=BN, D=D,
                               HEAD=head_block(D), PRECISION=precision)


def sparse_forward(q, k, v, out, lse, pattern, width, summary, causal, scale, precision):
    """Launch the sparse forward (q, k, v, out [B, H, N, D]; lse [B, H, N] fp32)."""
    B, H, N, D = q.shape
    BM, BN, warps, const = _sparse_common(q, pattern, causal, precision)
    lut, counts, _, _ = sparse_layout(N, pattern, int(width), int(summary), bool(causal), BM, BN, q.device)
    launch(sparse_fwd_kernel, (lut.shape[0], B * H),
           (q, *_strides(q), k, *_strides(k), v, *_strides(v), out, *_strides(out), lse, lut, counts, lut.shape[1],
            H, N, int(width), int(summary), float(scale) * LOG2E), const, out, num_warps=warps, num_stages=2)


def sparse_backward(q, k, v, out, grad, lse, delta, dq, dk, dv, pattern, width, summary, causal, scale, precision):
    """Launch the sparse backward (as ``block_local_backward``)."""
    B, H, N, D = q.shape
    BM, BN, warps, const = _sparse_common(q, pattern, causal, precision, backward=True)
    lut, counts, lut_t, counts_t = sparse_layout(N, pattern, int(width), int(summary), bool(causal), BM, BN,
                                                 q.device)
    _delta(out, grad, delta)
    inputs = (q, *_strides(q), k, *_strides(k), v, *_strides(v), grad, *_strides(grad), lse, delta)
    tail = (H, N, int(width), int(summary), float(scale) * LOG2E, float(scale))
    launch(sparse_dkdv_kernel, (lut_t.shape[0], B * H),
           (*inputs, dk, dv, *_strides(dk), lut_t, counts_t, lut_t.shape[1], *tail), const, dk,
           num_warps=warps, num_stages=1)
    launch(sparse_dq_kernel, (lut.shape[0], B * H),
           (*inputs, dq, *_strides(dq), lut, counts, lut.shape[1], *tail), const, dq,
           num_warps=warps, num_stages=1)
