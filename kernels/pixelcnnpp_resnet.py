"""PixelCNN++'s GatedResnet at a few output positions (one row, columns j0 .. j1 - 1): the
sampling cache's per-pixel / per-row step (``fastgen.ops.pixelcnnpp_resnet_at``): one launch
(``resnet_fused_kernel``) for a single position of up to 32 batch rows -- every step of the
``ul`` stream when sampling -- and two (conv1, then conv2 + gate) for a row of the ``u`` stream.

Maps are zero-padded buffers [B, ch, h + 1, w + 2] (position (i, j) at [b, c, i + 1, j + 1]),
read and written through their strides.  The kernels are implicit GEMMs: M = the (batch,
column) output positions (m = b * NP + (j - j0), NP = j1 - j0, padded to BLOCK_M >= 16 with
masks), K = taps x 2 Cin (concat_elu doubles the channels), N = output channels (a grid axis).

    resnet_conv1: mid[b, :, i, j] = sum_tap concat_elu(x[b, :, window(tap)]) @ W1[tap] + b1
                                    (+ concat_elu(aux[b, :, i, j]) @ Waux + baux)
    resnet_conv2_gate: [a, g] = sum_tap concat_elu(mid[b, :, window(tap)]) @ W2[tap] + b2 (+ cond[b])
                       out[b, :, i, j] = x[b, :, i, j] + a * sigmoid(g)
    resnet_fused: both in one launch (below)

Tap (dr, dc) of a 2 x KW window reads data row i + dr, data column j + 1 - LEFT + dc.  Packed
weights (fp32, contiguous): W1 [2KW, 2Cin, Cout], W2 [2KW, 2C, 2C], Waux [2A, C]; rows < Cin of
a tap multiply elu(v), rows >= Cin multiply elu(-v) -- both computed from one load of v.

Why one launch is possible (the dependency argument).  conv2 at (i, j) reads mid at rows i - 1
and i, columns j - LEFT .. j - LEFT + KW - 1.  Row i - 1 of mid is final: an earlier step wrote
it.  In row i, the columns outside j0 .. j1 - 1 are final too (written by an earlier step, or
the zero padding) -- the op's contract (``reference.pixelcnnpp_resnet_at``).  Only the row-i
columns inside j0 .. j1 - 1 are computed by this very step, and conv1 there reads x and the aux
maps alone, never mid.  So a program does not wait for another one's mid: it *recomputes* conv1
(+ aux) at each row-i tap's new columns, in registers, one BLOCK_K slice of mid's channels at a
time, and feeds each slice straight into conv2's dot; the programs with pid_n == 0 also store
the slice into ``mid`` (read by later steps).  It never reads mid where it writes it, so the
launch can be repeated (kernels/_launch.py's direct-launch check).  For a ``ul`` pixel (2x2
window, LEFT = 1, NP = 1) only the tap (1, 1) is new: conv1 once per program, and each of the
C / BLOCK_N programs does so -- C / BLOCK_N times conv1's weight reads (from L2 after the first),
paid to save a launch (a graph node ~1 us, an eager launch ~14 us on an H100; not timed on a GPU
yet).  The kernel handles any j0 .. j1 (a tap whose columns are all final skips conv1), but the
launcher sends it single positions only: for a ``u`` row (2x3, every column new) each of the 3
row-i taps recomputes conv1, and at 160 channels that spilled 5.5 KB per thread on sm_90 (255
registers, 4 warps) -- u rows are 1/W of the pixels' steps, so they keep the two kernels.
"""
import triton
import triton.language as tl

from fastgen.kernels._launch import launch
from fastgen.kernels._tiles import load_matrix


@triton.jit
def _elu(v):
    # exp of the clamped value: the branch tl.where discards must not overflow for large v
    return tl.where(v > 0, v, tl.exp(tl.minimum(v, 0.0)) - 1.0)


@triton.jit
def _load_concat_elu(src, sb, sc, b, cs, m_ok):
    """(elu(v), elu(-v)) for v = src[b, cs]: [BLOCK_M, BLOCK_K] each, from one load (``src``
    [BLOCK_M, 1] already points at each position's row and column).  Masked positions read 0,
    and elu(0) = 0: they add nothing."""
    v = tl.load(src + b[:, None] * sb + cs[None, :] * sc, mask=m_ok[:, None], other=0.0).to(tl.float32)
    return _elu(v), _elu(-v)


@triton.jit
def _dot_pair(acc, pos, neg, w, w_stride, second, kk, ns, PRECISION: tl.constexpr):
    """acc + pos @ w[kk, ns] + neg @ w[second + kk, ns] (``w`` points at the weight row that
    multiplies the first loaded channel; rows ``second`` further multiply its elu(-v))."""
    acc = tl.dot(pos, load_matrix(w, w_stride, kk, ns), acc, input_precision=PRECISION)
    return tl.dot(neg, load_matrix(w + second * w_stride, w_stride, kk, ns), acc, input_precision=PRECISION)


@triton.jit
def _window_conv(acc, acc2, src_ptr, sb, sc, sh, sw, b, i, j, m_ok, w_ptr, CIN, COUT, ns, ns2,
                 KW: tl.constexpr, LEFT: tl.constexpr, BLOCK_K: tl.constexpr, TWO: tl.constexpr,
                 PRECISION: tl.constexpr):
    """acc + the shifted 2 x KW conv of concat_elu(src) at positions (i, j) (data rows i, i + 1,
    data columns j + 1 - LEFT .. j - LEFT + KW), weight w_ptr [2KW, 2CIN, COUT], columns ns --
    and, when TWO, acc2 + the same on columns ns2, from the same loads of src."""
    kk = tl.arange(0, BLOCK_K)
    for dr in tl.static_range(2):
        for dc in tl.static_range(KW):
            src = src_ptr + (i + dr) * sh + (j + 1 - LEFT + dc)[:, None] * sw
            w_tap = w_ptr + (dr * KW + dc) * 2 * CIN * COUT
            for k0 in range(0, CIN, BLOCK_K):
                pos, neg = _load_concat_elu(src, sb, sc, b, k0 + kk, m_ok)
                acc = _dot_pair(acc, pos, neg, w_tap + k0 * COUT, COUT, CIN, kk, ns, PRECISION)
                if TWO:
                    acc2 = _dot_pair(acc2, pos, neg, w_tap + k0 * COUT, COUT, CIN, kk, ns2, PRECISION)
    return acc, acc2


@triton.jit
def _conv1(x_ptr, sxb, sxc, sxh, sxw, a1_ptr, sa1b, sa1c, sa1h, sa1w, a2_ptr, sa2b, sa2c, sa2h, sa2w,
           w_ptr, b_ptr, wa_ptr, ba_ptr, b, i, j, ok, CIN, A1, A2, COUT, ns,
           KW: tl.constexpr, LEFT: tl.constexpr, NUM_AUX: tl.constexpr, BLOCK_M: tl.constexpr,
           BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """conv1(concat_elu(x)) + b1 (+ nin(concat_elu(cat(aux1, aux2))) + baux) at positions (b, i, j),
    output channels ns: [BLOCK_M, BLOCK_N] fp32.  Rows not ``ok`` read nothing (their values are
    the biases: callers mask them)."""
    kk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc, _ = _window_conv(acc, acc, x_ptr, sxb, sxc, sxh, sxw, b, i, j, ok, w_ptr, CIN, COUT, ns, ns, KW, LEFT,
                          BLOCK_K, False, PRECISION)
    acc += tl.load(b_ptr + ns)[None, :]
    if NUM_AUX > 0:
        # nin(concat_elu(cat(aux1, aux2))) at (i, j): Waux rows [0, A1) and [A1, A) multiply
        # elu(aux1) and elu(aux2), rows A + the same offsets elu(-aux1) and elu(-aux2)
        A = A1 + A2
        src = a1_ptr + (i + 1) * sa1h + (j + 1)[:, None] * sa1w
        for k0 in range(0, A1, BLOCK_K):
            pos, neg = _load_concat_elu(src, sa1b, sa1c, b, k0 + kk, ok)
            acc = _dot_pair(acc, pos, neg, wa_ptr + k0 * COUT, COUT, A, kk, ns, PRECISION)
        if NUM_AUX > 1:
            src = a2_ptr + (i + 1) * sa2h + (j + 1)[:, None] * sa2w
            for k0 in range(0, A2, BLOCK_K):
                pos, neg = _load_concat_elu(src, sa2b, sa2c, b, k0 + kk, ok)
                acc = _dot_pair(acc, pos, neg, wa_ptr + (A1 + k0) * COUT, COUT, A, kk, ns, PRECISION)
        acc += tl.load(ba_ptr + ns)[None, :]
    return acc


@triton.jit(do_not_specialize=["i", "j0"])   # a new position every launch: no recompiles
def resnet_conv1_kernel(
    x_ptr, sxb, sxc, sxh, sxw,
    a1_ptr, sa1b, sa1c, sa1h, sa1w,
    a2_ptr, sa2b, sa2c, sa2h, sa2w,
    mid_ptr, smb, smc, smh, smw,
    w_ptr, b_ptr, wa_ptr, ba_ptr,
    i, j0, NP, M, CIN, A1, A2, COUT,
    KW: tl.constexpr, LEFT: tl.constexpr, NUM_AUX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < M
    b = m // NP
    j = j0 + m % NP
    ns = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = _conv1(x_ptr, sxb, sxc, sxh, sxw, a1_ptr, sa1b, sa1c, sa1h, sa1w, a2_ptr, sa2b, sa2c, sa2h, sa2w,
                 w_ptr, b_ptr, wa_ptr, ba_ptr, b, i, j, m_ok, CIN, A1, A2, COUT, ns,
                 KW, LEFT, NUM_AUX, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)
    dst = mid_ptr + b[:, None] * smb + ns[None, :] * smc + (i + 1) * smh + (j + 1)[:, None] * smw
    tl.store(dst, acc.to(mid_ptr.dtype.element_ty), mask=m_ok[:, None])


@triton.jit
def _gate_store(a, g, x_ptr, sxb, sxc, sxh, sxw, out_ptr, sob, soc, soh, sow, b_ptr, cond_ptr, b, i, j, m_ok,
                ns, gs, C, HAS_COND: tl.constexpr):
    """out[b, ns, i, j] = x + (a + b2 + cond) * sigmoid(g + b2' + cond')."""
    a += tl.load(b_ptr + ns)[None, :]
    g += tl.load(b_ptr + gs)[None, :]
    if HAS_COND:
        a += tl.load(cond_ptr + b[:, None] * 2 * C + ns[None, :], mask=m_ok[:, None], other=0.0)
        g += tl.load(cond_ptr + b[:, None] * 2 * C + gs[None, :], mask=m_ok[:, None], other=0.0)
    pos = (i + 1) * sxh + (j + 1)[:, None] * sxw
    x = tl.load(x_ptr + b[:, None] * sxb + ns[None, :] * sxc + pos, mask=m_ok[:, None], other=0.0).to(tl.float32)
    y = x + a * tl.sigmoid(g)
    dst = out_ptr + b[:, None] * sob + ns[None, :] * soc + (i + 1) * soh + (j + 1)[:, None] * sow
    tl.store(dst, y.to(out_ptr.dtype.element_ty), mask=m_ok[:, None])


@triton.jit(do_not_specialize=["i", "j0"])
def resnet_conv2_gate_kernel(
    mid_ptr, smb, smc, smh, smw,
    x_ptr, sxb, sxc, sxh, sxw,
    out_ptr, sob, soc, soh, sow,
    w_ptr, b_ptr, cond_ptr,
    i, j0, NP, M, C,
    KW: tl.constexpr, LEFT: tl.constexpr, HAS_COND: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < M
    b = m // NP
    j = j0 + m % NP
    ns = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)     # output channels of the a half
    gs = C + ns                                                  # and their gates
    # Each program owns matching a and gate columns (two accumulators fed by the same loads of
    # mid), so the gate is applied in registers.
    zero = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    a, g = _window_conv(zero, zero, mid_ptr, smb, smc, smh, smw, b, i, j, m_ok, w_ptr, C, 2 * C, ns, gs, KW, LEFT,
                        BLOCK_K, True, PRECISION)
    _gate_store(a, g, x_ptr, sxb, sxc, sxh, sxw, out_ptr, sob, soc, soh, sow, b_ptr, cond_ptr, b, i, j, m_ok,
                ns, gs, C, HAS_COND)


@triton.jit(do_not_specialize=["i", "j0"])
def resnet_fused_kernel(
    x_ptr, sxb, sxc, sxh, sxw,
    a1_ptr, sa1b, sa1c, sa1h, sa1w,
    a2_ptr, sa2b, sa2c, sa2h, sa2w,
    mid_ptr, smb, smc, smh, smw,
    out_ptr, sob, soc, soh, sow,
    w1_ptr, b1_ptr, wa_ptr, ba_ptr, w2_ptr, b2_ptr, cond_ptr,
    i, j0, NP, M, C, A1, A2,
    KW: tl.constexpr, LEFT: tl.constexpr, NUM_AUX: tl.constexpr, HAS_COND: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    """The whole GatedResnet in one launch (the module docstring's dependency argument): conv2's
    row-(i - 1) taps from the final mid map; each row-i tap from mid where its column lies outside
    j0 .. j1 - 1 and from conv1 recomputed here where it lies inside."""
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < M
    b = m // NP
    j = j0 + m % NP
    ns = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)     # output channels of the a half
    gs = C + ns                                                  # and their gates
    kk = tl.arange(0, BLOCK_K)
    zero = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # taps (0, dc): mid's row i - 1 (data row i), final
    a, g = zero, zero
    for dc in tl.static_range(KW):
        src = mid_ptr + i * smh + (j + 1 - LEFT + dc)[:, None] * smw
        w_tap = w2_ptr + dc * 4 * C * C
        for k0 in range(0, C, BLOCK_K):
            pos, neg = _load_concat_elu(src, smb, smc, b, k0 + kk, m_ok)
            a = _dot_pair(a, pos, neg, w_tap + k0 * 2 * C, 2 * C, C, kk, ns, PRECISION)
            g = _dot_pair(g, pos, neg, w_tap + k0 * 2 * C, 2 * C, C, kk, gs, PRECISION)
    # taps (1, dc): mid's row i at columns jj
    for dc in tl.static_range(KW):
        jj = j + dc - LEFT
        new = m_ok & (jj >= j0) & (jj < j0 + NP)      # computed by this step: recomputed here
        old = m_ok & ((jj < j0) | (jj >= j0 + NP))    # final (or the zero padding): loaded
        # does any position's column fall inside j0 .. j1 - 1? (never for a ul pixel's left tap)
        any_new = (dc - LEFT < NP) & (LEFT - dc < NP)
        src = mid_ptr + (i + 1) * smh + (jj + 1)[:, None] * smw
        w_tap = w2_ptr + (KW + dc) * 4 * C * C
        for k0 in range(0, C, BLOCK_K):
            v = tl.load(src + b[:, None] * smb + (k0 + kk)[None, :] * smc, mask=old[:, None], other=0.0)
            v = v.to(tl.float32)
            if any_new:
                h = _conv1(x_ptr, sxb, sxc, sxh, sxw, a1_ptr, sa1b, sa1c, sa1h, sa1w, a2_ptr, sa2b, sa2c, sa2h,
                           sa2w, w1_ptr, b1_ptr, wa_ptr, ba_ptr, b, i, jj, new, C, A1, A2, C, k0 + kk,
                           KW, LEFT, NUM_AUX, BLOCK_M, BLOCK_K, BLOCK_K, PRECISION)
                h = h.to(mid_ptr.dtype.element_ty)      # what the map holds (and a later step reads)
                if dc == LEFT:                          # jj == j: each new position once
                    dst = mid_ptr + b[:, None] * smb + (k0 + kk)[None, :] * smc + (i + 1) * smh + (j + 1)[:, None] * smw
                    if tl.program_id(1) == 0:                   # (the other column blocks hold the same h)
                        tl.store(dst, h, mask=new[:, None])
                v = tl.where(new[:, None], h.to(tl.float32), v)
            pos = _elu(v)
            neg = _elu(-v)
            a = _dot_pair(a, pos, neg, w_tap + k0 * 2 * C, 2 * C, C, kk, ns, PRECISION)
            g = _dot_pair(g, pos, neg, w_tap + k0 * 2 * C, 2 * C, C, kk, gs, PRECISION)
    _gate_store(a, g, x_ptr, sxb, sxc, sxh, sxw, out_ptr, sob, soc, soh, sow, b2_ptr, cond_ptr, b, i, j, m_ok,
                ns, gs, C, HAS_COND)


def _block(n):
    """The widest tile of 64 / 32 / 16 that divides n (callers check n % 16 == 0)."""
    return 64 if n % 64 == 0 else (32 if n % 32 == 0 else 16)


FUSED_MAX_M = 32     # batch rows up to which a single position's step is one launch (one M tile)
FUSED_WARPS = 8      # 8 warps and 16-wide K slices: no spills at 160 channels on sm_80 / sm_90
                     # (4 warps spilled, and 8 with 32-wide slices still did, at fp32 / ieee)


def resnet_at(x, aux, mid, out, w1, b1, w_aux, b_aux, w2, b2, cond_bias, i, j0, j1, left, precision="ieee"):
    """Launch the step: ``resnet_fused_kernel`` for a single position (j1 = j0 + 1) of at most
    FUSED_MAX_M batch rows (a ``ul`` step when sampling), else conv1 and conv2 + gate (shapes:
    ``fastgen.ops.pixelcnnpp_resnet.reference.pixelcnnpp_resnet_at``; channels multiples of 16,
    fp32 weights, cond_bias [B, 2C] contiguous fp32 or None)."""
    B, C = x.shape[:2]
    kw = w1.shape[0] // 2
    NP = j1 - j0
    M = B * NP
    block_m = 16 if M <= 16 else 32     # tl.dot wants >= 16 rows; masks cover the padding
    a1 = aux[0] if len(aux) > 0 else x  # unused pointers when absent (NUM_AUX says so)
    a2 = aux[1] if len(aux) > 1 else x
    A1 = a1.shape[1] if len(aux) > 0 else 0
    A2 = a2.shape[1] if len(aux) > 1 else 0
    block_k = min(_block(C), _block(A1) if A1 else 64, _block(A2) if A2 else 64)
    block_n = _block(C)
    grid = (triton.cdiv(M, block_m), C // block_n)
    w_aux = b1 if w_aux is None else w_aux
    b_aux = b1 if b_aux is None else b_aux
    cond = b2 if cond_bias is None else cond_bias
    if NP == 1 and M <= FUSED_MAX_M:
        # 16-wide output slices: 32 spilled on sm_90 under triton 3.6 (fp32 operands, TF32)
        grid = (triton.cdiv(M, block_m), C // 16)
        block_n = 16
        # Direct launch (kernels/_launch.py) is safe: it reads mid only where it does not write it
        # (and writes the same values again when launched twice), and never reads out.
        launch(resnet_fused_kernel, grid,
               (x, *x.stride(), a1, *a1.stride(), a2, *a2.stride(), mid, *mid.stride(), out, *out.stride(),
                w1, b1, w_aux, b_aux, w2, b2, cond, i, j0, NP, M, C, A1, A2),
               dict(KW=kw, LEFT=left, NUM_AUX=len(aux), HAS_COND=cond_bias is not None, BLOCK_M=block_m,
                    BLOCK_N=block_n, BLOCK_K=16, PRECISION=precision),
               out, num_warps=FUSED_WARPS, num_stages=1, unspecialized=("i", "j0"))
        return
    # Direct launches are safe: each kernel writes one map it does not read.
    launch(resnet_conv1_kernel, grid,
           (x, *x.stride(), a1, *a1.stride(), a2, *a2.stride(), mid, *mid.stride(),
            w1, b1, w_aux, b_aux, i, j0, NP, M, C, A1, A2, C),
           dict(KW=kw, LEFT=left, NUM_AUX=len(aux), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                PRECISION=precision),
           mid, num_warps=4, unspecialized=("i", "j0"))
    launch(resnet_conv2_gate_kernel, grid,
           (mid, *mid.stride(), x, *x.stride(), out, *out.stride(), w2, b2, cond, i, j0, NP, M, C),
           dict(KW=kw, LEFT=left, HAS_COND=cond_bias is not None, BLOCK_M=block_m, BLOCK_N=block_n,
                BLOCK_K=_block(C), PRECISION=precision),
           out, num_warps=4, unspecialized=("i", "j0"))
