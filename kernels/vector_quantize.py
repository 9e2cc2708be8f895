"""Vector quantization: the nearest-code search and the EMA codebook update
(``fastgen.ops.nearest_code`` / ``vector_quantize`` / ``ema_codebook_update``; the math in
``fastgen.ops.vector_quantize.reference``).

**Search** (``nearest_codes``).  For z [N, D] and a codebook c [K, D], per row n

    index[n] = argmin_k ||z_n - c_k||^2 = argmin_k ( ||c_k||^2 - 2 z_n . c_k )

(||z_n||^2 is the same for every k, so it is left out).  Program p owns BLOCK_N rows: it loads
their z tile [BLOCK_N, BLOCK_D] once, then walks the codebook in tiles of BLOCK_K codes; each
tile's scores are one ``tl.dot`` [BLOCK_N, BLOCK_D] x [BLOCK_D, BLOCK_K] with float32
accumulation (``PRECISION``: "ieee" or "tf32" for fp32 operands; 16-bit operands multiply on
the tensor cores), minus twice that plus the code norms (``code_norms``, float32, computed once
per call).  A running (min, argmin) per row is kept across tiles, so the N x K distances never
exist anywhere -- extra memory is the K norms.

Ties go to the **lowest index**: within a tile ``tl.min(..., return_indices=True)`` breaks ties
to the left (lower k), and across tiles the running minimum is replaced only on a strictly
smaller score (earlier tiles hold lower indices).  A NaN score counts as -inf, so a row whose
best score is not finite (a non-finite z row, or a non-finite code) gets index -1: the op turns
that into a ValueError.

**EMA update** (``ema_update``), van den Oord et al. 2017 (appendix), Razavi et al. 2019:

    cluster_size <- decay cluster_size + (1 - decay) N_k        N_k = #{n : index[n] = k}
    embed_sum    <- decay embed_sum    + (1 - decay) S_k        S_k = sum_{index[n] = k} z_n
    n_k = (cluster_size_k + eps) / (n + K eps) * n,   n = sum_k cluster_size_k   (Laplace smoothing)
    codebook_k = embed_sum_k / n_k

in three launches: ``ema_decay_kernel`` scales the state in place, ``ema_scatter_kernel`` adds
(1 - decay) z_n and (1 - decay) into row index[n] with float32 **atomics** (so the summation
order, and the last bits of the state, vary from run to run; the per-code sums are otherwise
exact float32 sums), one PyTorch reduction sums cluster_size into n, and
``ema_finalize_kernel`` writes the codebook.  Indices outside [0, K) are skipped by the
scatter (the op checks them before it launches).  The in-place kernels launch with
``inplace=True`` (``kernels/_launch.py``: never launched twice to check a direct launch).
"""
import triton
import triton.language as tl

from fastgen.kernels._launch import launch

MAX_D = 256                  # the search keeps a [BLOCK_N, D] tile of z resident
EMA_ELEMENTS = 4096          # [rows, BLOCK_D] elements per program of the EMA kernels (32 a thread)


def block_d(D: int) -> int:
    """The padded feature width the kernels tile D with (a power of two, >= 16 for tl.dot)."""
    return max(16, triton.next_power_of_2(D))


def search_config(D: int, element_size: int, precision: str):
    """(BLOCK_N, BLOCK_K, num_warps, num_stages) of the search for a feature width D, operand
    element size (bytes) and dot precision.  The z tile stays resident across the loop and the
    codebook tiles are pipelined, so the tiles shrink as D grows (shared memory: BLOCK_N BD +
    stages BLOCK_K BD elements); exact fp32 ("ieee") dots run on the CUDA cores with the
    accumulator and both operands in registers, hence smaller tiles there.  Every
    configuration is compiled by the compile gate (no spills on sm_80 / sm_90)."""
    BD = block_d(D)
    if precision == "ieee" and element_size == 4:
        return (64, 32, 4, 2) if BD <= 64 else (32, 32, 4, 2)
    if BD <= 64:
        return 128, 64, 4, 3
    if BD <= 128:
        return 128, 64, 8, 3
    return 64, 64, 8, 2


@triton.jit
def code_norms_kernel(c_ptr, scn, scd, out_ptr, K, D, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[k] = ||c_k||^2 in float32 (of the codes' values in their own dtype)."""
    ks = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    ds = tl.arange(0, BLOCK_D)
    ok = ks < K
    c = tl.load(c_ptr + ks.to(tl.int64)[:, None] * scn + ds[None, :] * scd,
                mask=ok[:, None] & (ds < D)[None, :], other=0.0).to(tl.float32)
    tl.store(out_ptr + ks, tl.sum(c * c, axis=1), mask=ok)


@triton.jit
def vq_search_kernel(z_ptr, szn, szd, c_ptr, scn, scd, norm_ptr, idx_ptr, N, K, D,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                     PRECISION: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ds = tl.arange(0, BLOCK_D)
    d_ok = ds < D
    row_ok = rows < N
    z = tl.load(z_ptr + rows.to(tl.int64)[:, None] * szn + ds[None, :] * szd,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    best = tl.full([BLOCK_N], float("inf"), tl.float32)
    best_idx = tl.full([BLOCK_N], -1, tl.int32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        c = tl.load(c_ptr + ks.to(tl.int64)[:, None] * scn + ds[None, :] * scd,
                    mask=k_ok[:, None] & d_ok[None, :], other=0.0)
        dot = tl.dot(z, tl.trans(c), input_precision=PRECISION)            # [BLOCK_N, BLOCK_K] fp32
        norms = tl.load(norm_ptr + ks, mask=k_ok, other=float("inf"))
        score = norms[None, :] - 2.0 * dot
        score = tl.where(score != score, float("-inf"), score)            # NaN -> -inf: flagged below
        tile_min, tile_arg = tl.min(score, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = tile_min < best                                           # strict: earlier tiles win ties
        best = tl.where(better, tile_min, best)
        best_idx = tl.where(better, tile_arg + k0, best_idx)
    finite = (best > float("-inf")) & (best < float("inf"))
    tl.store(idx_ptr + rows, tl.where(finite, best_idx, -1).to(tl.int64), mask=row_ok)


@triton.jit
def ema_decay_kernel(cs_ptr, es_ptr, K, D, decay, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """cluster_size *= decay, embed_sum *= decay (contiguous float32 state), in place."""
    ks = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    ds = tl.arange(0, BLOCK_D)
    ok = ks < K
    tl.store(cs_ptr + ks, tl.load(cs_ptr + ks, mask=ok, other=0.0) * decay, mask=ok)
    offs = ks.to(tl.int64)[:, None] * D + ds[None, :]
    m = ok[:, None] & (ds < D)[None, :]
    tl.store(es_ptr + offs, tl.load(es_ptr + offs, mask=m, other=0.0) * decay, mask=m)


@triton.jit
def ema_scatter_kernel(z_ptr, szn, szd, idx_ptr, cs_ptr, es_ptr, N, K, D, weight,
                       BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """cluster_size[index[n]] += weight, embed_sum[index[n]] += weight z_n (float32 atomics)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ds = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    k = tl.load(idx_ptr + rows, mask=row_ok, other=-1)
    ok = row_ok & (k >= 0) & (k < K)
    m = ok[:, None] & (ds < D)[None, :]
    z = tl.load(z_ptr + rows.to(tl.int64)[:, None] * szn + ds[None, :] * szd, mask=m, other=0.0).to(tl.float32)
    tl.atomic_add(cs_ptr + k, tl.where(ok, weight, 0.0), mask=ok, sem="relaxed")
    tl.atomic_add(es_ptr + k.to(tl.int64)[:, None] * D + ds[None, :], z * weight, mask=m, sem="relaxed")


@triton.jit
def ema_finalize_kernel(cs_ptr, es_ptr, n_ptr, out_ptr, K, D, epsilon,
                        BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """codebook_k = embed_sum_k / ((cluster_size_k + eps) / (n + K eps) * n)."""
    ks = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    ds = tl.arange(0, BLOCK_D)
    ok = ks < K
    n = tl.load(n_ptr)
    smoothed = (tl.load(cs_ptr + ks, mask=ok, other=0.0) + epsilon) / (n + K * epsilon) * n
    offs = ks.to(tl.int64)[:, None] * D + ds[None, :]
    m = ok[:, None] & (ds < D)[None, :]
    tl.store(out_ptr + offs, tl.load(es_ptr + offs, mask=m, other=0.0) / smoothed[:, None], mask=m)


def code_norms(codebook, out):
    """out [K] float32 (written) = the squared norms of codebook [K, D] (any strides)."""
    K, D = codebook.shape
    launch(code_norms_kernel, (triton.cdiv(K, 32),), (codebook, *codebook.stride(), out, K, D),
           dict(BLOCK_K=32, BLOCK_D=block_d(D)), out, num_warps=4, num_stages=1)


def nearest_codes(z, codebook, norms, indices, precision: str):
    """indices [N] int64 (written) = the nearest code per row of z [N, D] (any strides) in
    codebook [K, D] (any strides, z's dtype), norms [K] float32 from ``code_norms``; -1 where
    the best score is not finite.  precision: "ieee" | "tf32" (fp32 operands only)."""
    N, D = z.shape
    K = codebook.shape[0]
    BLOCK_N, BLOCK_K, warps, stages = search_config(D, z.element_size(), precision)
    # Direct launch (kernels/_launch.py) is safe: it reads z, the codebook and the norms and
    # overwrites indices.
    launch(vq_search_kernel, (triton.cdiv(N, BLOCK_N),),
           (z, *z.stride(), codebook, *codebook.stride(), norms, indices, N, K, D),
           dict(BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, BLOCK_D=block_d(D), PRECISION=precision),
           indices, num_warps=warps, num_stages=stages)


def ema_update(cluster_size, embed_sum, z, indices, decay: float, epsilon: float, codebook):
    """The EMA codebook update (module docstring).  cluster_size [K], embed_sum [K, D]:
    contiguous float32 state, updated in place; z [N, D] (any strides, float dtype); indices
    [N] int64; codebook [K, D] float32 contiguous (written).  Four launches: decay, scatter,
    the sum n of cluster_size (a PyTorch reduction into one float32), finalize."""
    K, D = embed_sum.shape
    N = z.shape[0]
    BD = block_d(D)
    rows = max(1, EMA_ELEMENTS // BD)      # codes (decay, finalize) or rows of z (scatter) per program
    launch(ema_decay_kernel, (triton.cdiv(K, rows),), (cluster_size, embed_sum, K, D, float(decay)),
           dict(BLOCK_K=rows, BLOCK_D=BD), embed_sum, num_warps=4, num_stages=1, inplace=True)
    if N:
        launch(ema_scatter_kernel, (triton.cdiv(N, rows),),
               (z, *z.stride(), indices, cluster_size, embed_sum, N, K, D, float(1.0 - decay)),
               dict(BLOCK_N=rows, BLOCK_D=BD), embed_sum, num_warps=4, num_stages=1, inplace=True)
    n = cluster_size.sum(0, keepdim=True)
    # Direct launch is safe: it reads the state and n and overwrites the codebook.
    launch(ema_finalize_kernel, (triton.cdiv(K, rows),),
           (cluster_size, embed_sum, n, codebook, K, D, float(epsilon)),
           dict(BLOCK_K=rows, BLOCK_D=BD), codebook, num_warps=4, num_stages=1)
