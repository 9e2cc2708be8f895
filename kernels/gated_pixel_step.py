"""One Gated PixelCNN sampling step -- every layer's horizontal stack, the head, the Gumbel-max
draw and the new pixel's embedding -- in a single launch.

Per pixel (r, c), for a tile of BLOCK_B batch rows, with h_l the input of layer l at (r, c)
(h_0 = 0: the type-A first layer never sees the current pixel) and p_l its value at (r, c-1):

    [a, b] = p_l @ Wh[l, 0] + h_l @ Wh[l, 1] + v_l @ Wlink[l] + bh[l] + blink[l] + cond_h[l]
    h_{l+1} = tanh(a) * sigmoid(b) @ Wout[l] + bout[l] + (h_l if l > 0)
    logits  = relu(relu(h_L) @ W1 + b1) @ W2 + b2
    x       = argmax(logits * inv_temperature + gumbel)
    e       = embed(x)                          (the layer-0 input at (r, c) for later steps)

v_l is the row's vertical pre-activation at column c (computed once per row elsewhere).
Shapes (fp32, contiguous): p_in/p_out [L, B, CH] (double-buffered: p_out[l] <- h_l, p_out[0] <- e),
v [L, B, W, 2CH], cond_h [L, B, 2CH], Wh [L, 2, CH, 2CH], Wlink [L, 2CH, 2CH], Wout [L, CH, CH],
W1 [CH, HC], W2 [HC, LEVELS], embed_w/embed_b [CH], gumbel [B, LEVELS] (any strides),
x_out [B] (int64), e_row [B, W, CH].  Grey images (one channel), 3x3 kernels.
"""
import triton
import triton.language as tl

from fastgen.kernels._launch import launch
from fastgen.kernels._tiles import gumbel_argmax_update, load_matrix, load_rows


@triton.jit
def _pre_activation(prev, cur, v_a, v_b, wh, wl, bh, bl, cond, rows, row_ok, cols, CH: tl.constexpr,
                    PRECISION: tl.constexpr):
    """Columns ``cols`` of one layer's horizontal pre-activation [BLOCK_B, CH]."""
    k = tl.arange(0, CH)
    second = CH * 2 * CH       # offset of the second [CH, 2CH] block (tap (r, c) / v's gate half)
    acc = tl.dot(prev, load_matrix(wh, 2 * CH, k, cols), input_precision=PRECISION)
    acc = tl.dot(cur, load_matrix(wh + second, 2 * CH, k, cols), acc, input_precision=PRECISION)
    acc = tl.dot(v_a, load_matrix(wl, 2 * CH, k, cols), acc, input_precision=PRECISION)
    acc = tl.dot(v_b, load_matrix(wl + second, 2 * CH, k, cols), acc, input_precision=PRECISION)
    acc += (tl.load(bh + cols) + tl.load(bl + cols))[None, :]
    return acc + load_rows(cond, rows, 2 * CH, cols, row_ok)


@triton.jit(do_not_specialize=["c"])   # a new column every launch: no recompiles
def gated_pixel_step_kernel(
    p_in, p_out, v_ptr, cond_ptr,
    wh_ptr, bh_ptr, wl_ptr, bl_ptr, wo_ptr, bo_ptr,
    w1_ptr, b1_ptr, w2_ptr, b2_ptr, ew_ptr, eb_ptr,
    g_ptr, sgb, sgl,
    x_out, e_row,
    B, L, c, W, LEVELS, inv_temperature, scale,
    CH: tl.constexpr, HC: tl.constexpr, LEVEL_BLOCK: tl.constexpr, BLOCK_B: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    ch = tl.arange(0, CH)
    ch2 = CH + ch                      # the gate half of a 2CH vector
    cur = tl.zeros((BLOCK_B, CH), dtype=tl.float32)
    for l in range(L):
        prev = load_rows(p_in + l * B * CH, rows, CH, ch, row_ok)
        v_base = v_ptr + (l * B * W + c) * 2 * CH
        v_a = load_rows(v_base, rows, W * 2 * CH, ch, row_ok)
        v_b = load_rows(v_base, rows, W * 2 * CH, ch2, row_ok)
        wh = wh_ptr + l * 2 * CH * 2 * CH
        wl = wl_ptr + l * 2 * CH * 2 * CH
        bh = bh_ptr + l * 2 * CH
        bl = bl_ptr + l * 2 * CH
        cond = cond_ptr + l * B * 2 * CH
        a = _pre_activation(prev, cur, v_a, v_b, wh, wl, bh, bl, cond, rows, row_ok, ch, CH, PRECISION)
        g = _pre_activation(prev, cur, v_a, v_b, wh, wl, bh, bl, cond, rows, row_ok, ch2, CH, PRECISION)
        gated = (2 * tl.sigmoid(2 * a) - 1) * tl.sigmoid(g)     # tanh(a) * sigmoid(g)
        out = tl.dot(gated, load_matrix(wo_ptr + l * CH * CH, CH, ch, ch), input_precision=PRECISION)
        out += tl.load(bo_ptr + l * CH + ch)[None, :]
        if l > 0:
            out += cur
            tl.store(p_out + l * B * CH + rows[:, None] * CH + ch[None, :], cur, mask=row_ok[:, None])
        cur = out

    hc = tl.arange(0, HC)
    hidden = tl.dot(tl.maximum(cur, 0.0), load_matrix(w1_ptr, HC, ch, hc), input_precision=PRECISION)
    hidden = tl.maximum(hidden + tl.load(b1_ptr + hc)[None, :], 0.0)
    best = tl.full((BLOCK_B,), float("-inf"), dtype=tl.float32)
    best_idx = tl.zeros((BLOCK_B,), dtype=tl.int32)
    for n0 in range(0, LEVELS, LEVEL_BLOCK):
        lv = n0 + tl.arange(0, LEVEL_BLOCK)
        lv_ok = lv < LEVELS
        w2 = tl.load(w2_ptr + hc[:, None] * LEVELS + lv[None, :], mask=lv_ok[None, :], other=0.0)
        logits = tl.dot(hidden, w2, input_precision=PRECISION) + tl.load(b2_ptr + lv, mask=lv_ok, other=0.0)[None, :]
        noise = tl.load(g_ptr + rows[:, None] * sgb + lv[None, :] * sgl, mask=row_ok[:, None] & lv_ok[None, :],
                        other=0.0)
        best, best_idx = gumbel_argmax_update(logits, noise, lv, lv_ok, inv_temperature, best, best_idx)
    tl.store(x_out + rows, best_idx.to(tl.int64), mask=row_ok)
    value = best_idx.to(tl.float32) * scale - 1.0
    embedded = value[:, None] * tl.load(ew_ptr + ch)[None, :] + tl.load(eb_ptr + ch)[None, :]
    tl.store(p_out + rows[:, None] * CH + ch[None, :], embedded, mask=row_ok[:, None])
    tl.store(e_row + (rows[:, None] * W + c) * CH + ch[None, :], embedded, mask=row_ok[:, None])


def gated_pixel_step(p_in, p_out, v, cond_h, weights, gumbel, x_out, e_row, c, inv_temperature, scale,
                     precision="ieee", block_b=16):
    """Launch one step; ``weights``: the twelve tensors of a ``GatedStepWeights``, in its order."""
    wh, bh, wl, bl, wo, bo, w1, b1, w2, b2, embed_w, embed_b = weights
    L, B, CH = p_in.shape
    W = v.shape[2]
    HC = w1.shape[1]
    levels = w2.shape[1]
    grid = (triton.cdiv(B, block_b),)
    # num_stages: Triton's default (3) software-pipelines the layer loop's weight loads, buffering
    # 3 layers of [CH, 2CH] tiles in shared memory: 343 KB at CH = 64, 1.27 MB at CH = 128 -- over
    # every GPU's per-block limit, so the launch would fail (fastgen compile-gate, sm_80/sm_90).
    # Unpipelined it takes 38 / 75 KB; at CH <= 32 the pipelined kernel fits and spills less.
    stages = 3 if CH <= 32 else 1
    # Direct launch (kernels/_launch.py): idempotent -- it reads p_in and writes p_out, x_out, e_row.
    launch(gated_pixel_step_kernel, grid,
           (p_in, p_out, v, cond_h, *weights, gumbel, gumbel.stride(0), gumbel.stride(1), x_out, e_row,
            B, L, c, W, levels, inv_temperature, scale),
           dict(CH=CH, HC=HC, LEVEL_BLOCK=max(16, min(128, triton.next_power_of_2(levels))), BLOCK_B=block_b,
                PRECISION=precision),
           x_out, num_warps=4, num_stages=stages, unspecialized=("c",))
