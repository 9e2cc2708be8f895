"""One WaveNet generation step -- every layer, the output head, the Gumbel-max draw -- in a
single launch, for a tile of BLOCK_B batch rows (the queues of Paine et al. 2016 in HBM).

For layer l with dilation d = 2^(l mod CYCLE), kernel K and input h (h_0 = embed(previous)):

    z = h @ Wtap[l, K-1] + sum_j queue_l[t - (K-1-j) d] @ Wtap[l, j] + b[l] + g[l] + local_t @ Wlc[l]
    u = tanh(z[:R]) * sigmoid(z[R:]);  skip += u @ Wskip[l] + bskip[l];  push h;  h += u @ Wres[l] + bres[l]
    logits = relu(relu(skip) @ W1 + b1) @ W2 + b2;  code = argmax(logits * inv_temperature + gumbel)

Queues: one ring of d (K-1) slots per layer, all in ``queue [slots, B, R]`` from row
``queue_offsets[l]``; slot (t mod span) is overwritten with h after it has been read.
Shapes (fp32, contiguous): embed [A, R], wtap [L, K, R, 2R], bconv [L, 2R], gterm [L, B, 2R],
wlc [L, LC, 2R], local_t [B, LC], wres [L, R, R], bres [L, R], wskip [L, R, S], bskip [L, S],
w1 [S, S], b1 [S], w2 [S, A], b2 [A], gumbel [B, A] (any strides), scratch [B, S].
"""
import triton
import triton.language as tl

from fastgen.kernels._tiles import gumbel_argmax_update, load_matrix, load_rows


@triton.jit
def _gate_half(h, queue_ptr, qoff, span, t, d, wtap, bconv, gterm, local, wlc, rows, row_ok, B, cols,
               R: tl.constexpr, K: tl.constexpr, LC: tl.constexpr, PRECISION: tl.constexpr):
    """Columns ``cols`` of one layer's dilated-conv pre-activation [BLOCK_B, R]."""
    r = tl.arange(0, R)
    acc = tl.dot(h, load_matrix(wtap + (K - 1) * R * 2 * R, 2 * R, r, cols), input_precision=PRECISION)
    for j in tl.static_range(K - 1):
        slot = ((t - (K - 1 - j) * d) % span + span) % span
        past = load_rows(queue_ptr + (qoff + slot) * B * R, rows, R, r, row_ok)
        acc = tl.dot(past, load_matrix(wtap + j * R * 2 * R, 2 * R, r, cols), acc, input_precision=PRECISION)
    if LC > 0:
        acc = tl.dot(local, load_matrix(wlc, 2 * R, tl.arange(0, LC), cols), acc, input_precision=PRECISION)
    acc += tl.load(bconv + cols)[None, :]
    return acc + load_rows(gterm, rows, 2 * R, cols, row_ok)


@triton.jit
def wavenet_step_kernel(
    prev_ptr, code_out, embed_ptr, queue_ptr, qoff_ptr,
    wtap_ptr, bconv_ptr, gterm_ptr, wlc_ptr, local_ptr,
    wres_ptr, bres_ptr, wskip_ptr, bskip_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
    g_ptr, sgb, sga, scratch_ptr,
    B, L, t, CYCLE, A, inv_temperature,
    R: tl.constexpr, S: tl.constexpr, K: tl.constexpr, LC: tl.constexpr,
    LEVEL_BLOCK: tl.constexpr, S_BLOCK: tl.constexpr, BLOCK_B: tl.constexpr, PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    r = tl.arange(0, R)
    s = tl.arange(0, S)
    prev = tl.load(prev_ptr + rows, mask=row_ok, other=0)
    h = tl.load(embed_ptr + prev[:, None] * R + r[None, :], mask=row_ok[:, None], other=0.0)
    local = tl.zeros((BLOCK_B, 16), dtype=tl.float32)
    if LC > 0:
        local = load_rows(local_ptr, rows, LC, tl.arange(0, LC), row_ok)
    skip = tl.zeros((BLOCK_B, S), dtype=tl.float32)
    for l in range(L):
        d = 1 << (l % CYCLE)
        span = d * (K - 1)
        qoff = tl.load(qoff_ptr + l)
        wtap = wtap_ptr + l * K * R * 2 * R
        bconv = bconv_ptr + l * 2 * R
        gterm = gterm_ptr + l * B * 2 * R
        wlc = wlc_ptr + l * LC * 2 * R
        # (explicit arguments, not a starred tuple: older Triton front ends reject *args)
        a = _gate_half(h, queue_ptr, qoff, span, t, d, wtap, bconv, gterm, local, wlc, rows, row_ok, B,
                       r, R, K, LC, PRECISION)
        g = _gate_half(h, queue_ptr, qoff, span, t, d, wtap, bconv, gterm, local, wlc, rows, row_ok, B,
                       R + r, R, K, LC, PRECISION)
        u = (2 * tl.sigmoid(2 * a) - 1) * tl.sigmoid(g)                 # tanh(a) * sigmoid(g)
        skip = tl.dot(u, load_matrix(wskip_ptr + l * R * S, S, r, s), skip, input_precision=PRECISION)
        skip += tl.load(bskip_ptr + l * S + s)[None, :]
        tl.debug_barrier()          # every thread has read this layer's queue before h overwrites a slot
        tl.store(queue_ptr + (qoff + t % span) * B * R + rows[:, None] * R + r[None, :], h, mask=row_ok[:, None])
        h = h + tl.dot(u, load_matrix(wres_ptr + l * R * R, R, r, r), input_precision=PRECISION)
        h += tl.load(bres_ptr + l * R + r)[None, :]

    # head: hidden = relu(relu(skip) @ W1 + b1) goes through scratch memory so that the logits
    # can be accumulated over S in chunks (whole S x S and S x A tiles would not fit on chip)
    skip = tl.maximum(skip, 0.0)
    for n0 in range(0, S, S_BLOCK):
        cols = n0 + tl.arange(0, S_BLOCK)
        hidden = tl.dot(skip, load_matrix(w1_ptr, S, s, cols), input_precision=PRECISION)
        hidden = tl.maximum(hidden + tl.load(b1_ptr + cols)[None, :], 0.0)
        tl.store(scratch_ptr + rows[:, None] * S + cols[None, :], hidden, mask=row_ok[:, None])
    tl.debug_barrier()
    best = tl.full((BLOCK_B,), float("-inf"), dtype=tl.float32)
    best_idx = tl.zeros((BLOCK_B,), dtype=tl.int32)
    for a0 in range(0, A, LEVEL_BLOCK):
        lv = a0 + tl.arange(0, LEVEL_BLOCK)
        lv_ok = lv < A
        logits = tl.zeros((BLOCK_B, LEVEL_BLOCK), dtype=tl.float32)
        for k0 in range(0, S, S_BLOCK):
            ks = k0 + tl.arange(0, S_BLOCK)
            hidden = load_rows(scratch_ptr, rows, S, ks, row_ok)
            w2 = tl.load(w2_ptr + ks[:, None] * A + lv[None, :], mask=lv_ok[None, :], other=0.0)
            logits = tl.dot(hidden, w2, logits, input_precision=PRECISION)
        logits += tl.load(b2_ptr + lv, mask=lv_ok, other=0.0)[None, :]
        noise = tl.load(g_ptr + rows[:, None] * sgb + lv[None, :] * sga, mask=row_ok[:, None] & lv_ok[None, :],
                        other=0.0)
        best, best_idx = gumbel_argmax_update(logits, noise, lv, lv_ok, inv_temperature, best, best_idx)
    tl.store(code_out + rows, best_idx.to(tl.int64), mask=row_ok)


def wavenet_step(prev, code_out, queue, queue_offsets, weights, gterm, local_t, gumbel, scratch, t, cycle,
                 kernel_size, inv_temperature, precision="ieee", block_b=16):
    """Launch one step; ``weights`` = (embed, wtap, bconv, wlc, wres, bres, wskip, bskip, w1, b1, w2, b2)."""
    embed, wtap, bconv, wlc, wres, bres, wskip, bskip, w1, b1, w2, b2 = weights
    B = prev.shape[0]
    L, _, R, _ = wtap.shape
    S, A = w1.shape[0], w2.shape[1]
    LC = 0 if local_t is None else local_t.shape[1]
    grid = (triton.cdiv(B, block_b),)
    wavenet_step_kernel[grid](
        prev, code_out, embed, queue, queue_offsets, wtap, bconv, gterm, wlc,
        local_t if local_t is not None else gterm, wres, bres, wskip, bskip, w1, b1, w2, b2,
        gumbel, gumbel.stride(0), gumbel.stride(1), scratch,
        B, L, t, cycle, A, inv_temperature,
        R=R, S=S, K=kernel_size, LC=LC, LEVEL_BLOCK=max(16, min(128, triton.next_power_of_2(A))),
        S_BLOCK=min(64, S), BLOCK_B=block_b, PRECISION=precision, num_warps=4,
    )
