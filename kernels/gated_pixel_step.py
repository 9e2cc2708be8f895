"""The Gated PixelCNN's fused sampling kernels: one launch per pixel (``gated_pixel_step``) and
one per row (``gated_vertical_row``), so sampling an H x W image takes H * (W + 1) launches.

**The step.**  Every layer's horizontal stack, the head, the Gumbel-max draw and the new
pixel's embedding, in a single launch.

Per pixel (r, c), for a tile of BLOCK_B batch rows, with h_l the input of layer l at (r, c)
(h_0 = 0: the type-A first layer never sees the current pixel) and p_l its value at (r, c-1):

    [a, b] = p_l @ Wh[l, 0] + h_l @ Wh[l, 1] + v_l @ Wlink[l] + bh[l] + blink[l] + cond_h[l]
    h_{l+1} = tanh(a) * sigmoid(b) @ Wout[l] + bout[l] + (h_l if l > 0)
    logits  = relu(relu(h_L) @ W1 + b1) @ W2 + b2
    x       = argmax(logits * inv_temperature + gumbel)
    e       = embed(x)                          (the layer-0 input at (r, c) for later steps)

v_l is the row's vertical pre-activation at column c (computed once per row, by the row kernel).
At c = 0 the p_l are the zero padding of column -1: p_in is not read there, so the sampler needs
no per-row reset of its double buffer.
Shapes (fp32): p_in/p_out [L, B, CH] (double-buffered: p_out[l] <- h_l, p_out[0] <- e),
v [L, B, W, 2CH], cond_h [L, B, 2CH], Wh [L, 2, CH, 2CH], Wlink [L, 2CH, 2CH], Wout [L, CH, CH],
W1 [CH, HC], W2 [HC, LEVELS], embed_w/embed_b [CH] (all contiguous); gumbel [B, LEVELS] (any
strides); x_out [B] (int64, any stride: the step draws straight into the image, x[:, 0, r, c]);
e_row [B, W, CH] (any batch and column strides, channels contiguous: the embedding goes straight
into the row kernel's input buffer).  Grey images (one channel), 3x3 kernels.

**The row.**  The vertical stack of every layer for a whole row r, all W columns, in one launch
(it depends only on the rows above, so it is computed once per row, before the row's steps).
With u_l the input of layer l's vertical stack (u_0 = the embedded image) and taps (dr, dc),
dr in {-1, 0}, dc in {-1, 0, 1} -- the type-A first layer has only the row above (dr = -1):

    [a, b](r, c)  = sum over taps of u_l(r + dr, c + dc) @ Wv[l, tap] + bv[l]   -> v_out[l, :, c]
    u_{l+1}(r, c) = tanh(a + cond_v[l, :CH]) * sigmoid(b + cond_v[l, CH:])

Layer l + 1 reads u_{l+1} at columns c - 1 .. c + 1 of the row that layer l has just written:
the dependency runs along the row and across layers, so one program takes one image's whole
row through every layer, writes u_{l+1} to memory and synchronises its threads before layer
l + 1 reads it back shifted (the row is at most a few KB per layer: it stays in L1/L2).  A grid
over batch images only: images are independent.  Shapes (fp32, contiguous): vin [L, B, 2, W+2,
CH] -- u_l of rows r - 1 and r as a ring of two zero-padded rows (row r in slot r % 2; columns
-1 and W and, before row 0, the other slot stay zero) --, v_out [L, B, W, 2CH] (what the step
reads), cond_v [L, B, 2CH], Wv [L, 6, CH, 2CH] (tap t = (dr + 1) * 3 + dc + 1), bv [L, 2CH].
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
    x_out, sxb, e_row, seb, sew,
    B, L, c, W, LEVELS, inv_temperature, scale,
    CH: tl.constexpr, HC: tl.constexpr, LEVEL_BLOCK: tl.constexpr, BLOCK_B: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    ch = tl.arange(0, CH)
    ch2 = CH + ch                      # the gate half of a 2CH vector
    prev_ok = rows < B * (c > 0)       # column -1 is zero padding: p_in is not read at c = 0
    cur = tl.zeros((BLOCK_B, CH), dtype=tl.float32)
    for l in range(L):
        prev = load_rows(p_in + l * B * CH, rows, CH, ch, prev_ok)
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
    tl.store(x_out + rows * sxb, best_idx.to(tl.int64), mask=row_ok)
    value = best_idx.to(tl.float32) * scale - 1.0
    embedded = value[:, None] * tl.load(ew_ptr + ch)[None, :] + tl.load(eb_ptr + ch)[None, :]
    tl.store(p_out + rows[:, None] * CH + ch[None, :], embedded, mask=row_ok[:, None])
    tl.store(e_row + rows[:, None] * seb + c * sew + ch[None, :], embedded, mask=row_ok[:, None])


def gated_pixel_step(p_in, p_out, v, cond_h, weights, gumbel, x_out, e_row, c, inv_temperature, scale,
                     precision="ieee", block_b=16):
    """Launch one step; ``weights``: the twelve tensors of a ``GatedStepWeights``, in its order;
    x_out and e_row may be strided views (of the image and of the row kernel's input ring)."""
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
           (p_in, p_out, v, cond_h, *weights, gumbel, gumbel.stride(0), gumbel.stride(1), x_out, x_out.stride(0),
            e_row, e_row.stride(0), e_row.stride(1), B, L, c, W, levels, inv_temperature, scale),
           dict(CH=CH, HC=HC, LEVEL_BLOCK=max(16, min(128, triton.next_power_of_2(levels))), BLOCK_B=block_b,
                PRECISION=precision),
           x_out, num_warps=4, num_stages=stages, unspecialized=("c",))


@triton.jit(do_not_specialize=["r"])   # a new row every launch: no recompiles
def gated_vertical_row_kernel(
    vin, v_out, cond_ptr, wv_ptr, bv_ptr,
    B, L, r, W,
    CH: tl.constexpr, BLOCK_W: tl.constexpr, K_BLOCK: tl.constexpr, N_BLOCK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    b = tl.program_id(0)
    cols = tl.arange(0, BLOCK_W)
    col_ok = cols < W
    kk = tl.arange(0, K_BLOCK)
    nn = tl.arange(0, N_BLOCK)
    row_len = (W + 2) * CH             # one zero-padded row of one image's layer input
    cur_slot = r % 2
    for l in range(L):
        layer = vin + (l * B + b) * 2 * row_len
        # output channels in blocks of N_BLOCK (value half and its gate half together): the two
        # [BLOCK_W, N_BLOCK] accumulators, not [BLOCK_W, CH], bound the registers at CH = 128
        for n0 in range(0, CH, N_BLOCK):
            acc_a = tl.zeros((BLOCK_W, N_BLOCK), dtype=tl.float32)
            acc_b = tl.zeros((BLOCK_W, N_BLOCK), dtype=tl.float32)
            # taps 0..2 read row r - 1, taps 3..5 row r; the type-A first layer has only the former
            # (its row-r slot still holds row r - 2: it must not be read, not merely weighted by 0)
            for t in range(6 - 3 * (l == 0)):
                slot = tl.where(t < 3, 1 - cur_slot, cur_slot)
                src = layer + slot * row_len + (cols + t % 3)[:, None] * CH   # padded column c + dc + 1
                w = wv_ptr + (l * 6 + t) * CH * 2 * CH + n0
                for k0 in range(0, CH, K_BLOCK):
                    x = tl.load(src + (k0 + kk)[None, :], mask=col_ok[:, None], other=0.0)
                    w_k = w + (k0 + kk)[:, None] * 2 * CH + nn[None, :]
                    acc_a = tl.dot(x, tl.load(w_k), acc_a, input_precision=PRECISION)
                    acc_b = tl.dot(x, tl.load(w_k + CH), acc_b, input_precision=PRECISION)
            ch = n0 + nn
            acc_a += tl.load(bv_ptr + l * 2 * CH + ch)[None, :]
            acc_b += tl.load(bv_ptr + l * 2 * CH + CH + ch)[None, :]
            out = v_out + ((l * B + b) * W + cols[:, None]) * 2 * CH + ch[None, :]
            tl.store(out, acc_a, mask=col_ok[:, None])
            tl.store(out + CH, acc_b, mask=col_ok[:, None])
            if l + 1 < L:
                cond = cond_ptr + (l * B + b) * 2 * CH + ch
                a = acc_a + tl.load(cond)[None, :]
                g = acc_b + tl.load(cond + CH)[None, :]
                gated = (2 * tl.sigmoid(2 * a) - 1) * tl.sigmoid(g)     # tanh(a) * sigmoid(g)
                nxt = vin + ((l + 1) * B + b) * 2 * row_len + cur_slot * row_len
                tl.store(nxt + (cols + 1)[:, None] * CH + ch[None, :], gated, mask=col_ok[:, None])
        tl.debug_barrier()              # the whole row of u_{l+1} is written before any thread reads it shifted


def gated_vertical_row(vin, v_out, cond_v, weights, r, precision="ieee"):
    """Launch the vertical stack of row r; ``weights``: the two tensors of a
    ``GatedVerticalWeights`` (wv, bv).  Writes v_out and vin[1:, :, r % 2]."""
    wv, bv = weights
    L, B, _, W2, CH = vin.shape
    W = W2 - 2
    block_w = max(16, triton.next_power_of_2(W))
    # register budget: two [BLOCK_W, N_BLOCK] accumulators of <= 2048 elements each, and 8 warps
    # once the row is that wide (BLOCK_W = 32, CH = 128 in one block on 4 warps spills in exact
    # fp32, and 4 warps with N_BLOCK = 64 spill a little with TF32 on sm_80: fastgen compile-gate)
    n_block = min(CH, max(16, 2048 // block_w))
    warps = 8 if block_w * CH >= 4096 else 4
    # Direct launch (kernels/_launch.py) launches twice once per key: harmless, as the kernel
    # only reads vin[l + 1]'s row r after writing it in the same launch (and row r - 1, which
    # it never writes), so a second launch recomputes the same values.
    launch(gated_vertical_row_kernel, (B,), (vin, v_out, cond_v, wv, bv, B, L, r, W),
           dict(CH=CH, BLOCK_W=block_w, K_BLOCK=min(CH, 32), N_BLOCK=n_block, PRECISION=precision),
           v_out, num_warps=warps, num_stages=1, unspecialized=("r",))
