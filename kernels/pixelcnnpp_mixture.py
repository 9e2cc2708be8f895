"""PixelCNN++'s discretized mixture of logistics drawn for one pixel in one launch
(``fastgen.ops.pixelcnnpp_mixture_draw``; the math, with the parameter layout, in
``fastgen.ops.pixelcnnpp_mixture.reference``; Salimans et al. 2017).

One program per batch row b.  For each colour channel j in turn (a static loop: G's and B's
means read the channels drawn before them), over chunks of BLOCK_L levels:

    lp[v, k]  = log_w[k] + log P_k(v)                    (a [BLOCK_L, BLOCK_MIX] tile)
    score[v]  = logsumexp_k lp[v, k] / temperature + gumbel[b, j, v]
    value     = argmax_v score                           (running over the chunks; first on ties)

then values[b, j] = value, scaled[b, j] = level_values[value] (the drawn channel's x for the next
channels' means).  Pointers and strides: params [B, P], gumbel [B, C, L], values [B, C] (int64),
scaled [B, C]; level_values [L] contiguous.  Everything is fp32 in registers; no dots.

With HEAD (``fastgen.ops.pixelcnnpp_head_draw``) the kernel also runs the network's head, the
1x1 conv after an elu: p_ptr then points at the features [B, F] under the head (any strides),
and each group of NR_MIX parameters it reads is computed instead of loaded,

    params[b, q] = sum_f elu(features[b, f]) * head_w[f, q] + head_b[q]

(head_w [F, P], head_b [P] contiguous fp32; a [BLOCK_F, BLOCK_MIX] tile per chunk of features,
reduced over f -- one row per program, so no dots).  Two torch ops per pixel fewer.
"""
import triton
import triton.language as tl

from fastgen.kernels._launch import launch
from fastgen.kernels._math import log1p, tanh


@triton.jit
def _softplus(x):
    # torch's softplus (beta 1, threshold 20): x above 20, log1p(exp(x)) below
    return tl.where(x > 20.0, x, log1p(tl.exp(tl.minimum(x, 20.0))))


@triton.jit
def _param(p_row, spp, index, k, k_ok, hw_ptr, hb_ptr, F, P, HEAD: tl.constexpr, BLOCK_F: tl.constexpr):
    """params[b, index + k] (k < NR_MIX): loaded, or with HEAD computed by the head from the
    features at p_row (stride spp)."""
    if HEAD:
        q = index + k
        acc = tl.load(hb_ptr + q, mask=k_ok, other=0.0)
        for f0 in range(0, F, BLOCK_F):
            f = f0 + tl.arange(0, BLOCK_F)
            f_ok = f < F
            v = tl.load(p_row + f * spp, mask=f_ok, other=0.0).to(tl.float32)
            e = tl.where(v > 0, v, tl.exp(tl.minimum(v, 0.0)) - 1.0)        # elu (elu(0) = 0: masked add 0)
            w = tl.load(hw_ptr + f[:, None] * P + q[None, :], mask=f_ok[:, None] & k_ok[None, :], other=0.0)
            acc += tl.sum(e[:, None] * w, axis=0)
        return acc
    else:
        return tl.load(p_row + (index + k) * spp, mask=k_ok, other=0.0).to(tl.float32)


@triton.jit
def mixture_draw_kernel(
    p_ptr, spb, spp,
    g_ptr, sgb, sgc, sgl,
    lv_ptr,
    v_ptr, svb, svc,
    s_ptr, ssb, ssc,
    hw_ptr, hb_ptr, F, P,
    LEVELS, NR_MIX, half, log_half_bins, temperature,
    C: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_MIX: tl.constexpr, HEAD: tl.constexpr, BLOCK_F: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    p_row = p_ptr + b * spb
    k = tl.arange(0, BLOCK_MIX)
    k_ok = k < NR_MIX
    # log_softmax of the mixture logits, as torch computes it: (x - max) - log(sum exp(x - max))
    logit = tl.where(k_ok, _param(p_row, spp, 0, k, k_ok, hw_ptr, hb_ptr, F, P, HEAD, BLOCK_F), float("-inf"))
    shifted = logit - tl.max(logit, axis=0)
    log_w = shifted - tl.log(tl.sum(tl.where(k_ok, tl.exp(shifted), 0.0), axis=0))
    x0 = 0.0    # the drawn R and G, scaled (read by the coupled means)
    x1 = 0.0
    for j in tl.static_range(C):
        mean = _param(p_row, spp, NR_MIX + j * NR_MIX, k, k_ok, hw_ptr, hb_ptr, F, P, HEAD, BLOCK_F)
        if j == 1:
            coeff = _param(p_row, spp, NR_MIX + 2 * C * NR_MIX, k, k_ok, hw_ptr, hb_ptr, F, P, HEAD, BLOCK_F)
            mean = mean + tanh(coeff) * x0
        if j == 2:
            coeff = _param(p_row, spp, NR_MIX + (2 * C + 1) * NR_MIX, k, k_ok, hw_ptr, hb_ptr, F, P, HEAD, BLOCK_F)
            mean = mean + tanh(coeff) * x0
            coeff = _param(p_row, spp, NR_MIX + (2 * C + 2) * NR_MIX, k, k_ok, hw_ptr, hb_ptr, F, P, HEAD, BLOCK_F)
            mean = mean + tanh(coeff) * x1
        log_s = _param(p_row, spp, NR_MIX + (C + j) * NR_MIX, k, k_ok, hw_ptr, hb_ptr, F, P, HEAD, BLOCK_F)
        log_s = tl.maximum(log_s, -7.0)
        inv_s = tl.exp(-log_s)
        best = tl.full((), float("-inf"), tl.float32)
        best_idx = tl.full((), 0, tl.int32)
        for l0 in range(0, LEVELS, BLOCK_L):
            lv = l0 + tl.arange(0, BLOCK_L)
            lv_ok = lv < LEVELS
            centred = tl.load(lv_ptr + lv, mask=lv_ok, other=0.0).to(tl.float32)[:, None] - mean[None, :]
            plus = inv_s[None, :] * (centred + half)
            minus = inv_s[None, :] * (centred - half)
            # (sigmoid below -80 is < 2e-35, lost next to any mass >= 1e-5 the branch keeps: the
            # clamp changes nothing but keeps exp(-x) finite)
            cdf_delta = tl.sigmoid(tl.maximum(plus, -80.0)) - tl.sigmoid(tl.maximum(minus, -80.0))
            mid = inv_s[None, :] * centred
            log_pdf_mid = mid - log_s[None, :] - 2.0 * _softplus(mid)
            log_mass = tl.where(cdf_delta > 1e-5, tl.log(tl.maximum(cdf_delta, 1e-12)), log_pdf_mid - log_half_bins)
            log_p = tl.where(lv[:, None] == 0, plus - _softplus(plus),
                             tl.where(lv[:, None] == LEVELS - 1, -_softplus(minus), log_mass))
            lp = tl.where(k_ok[None, :], log_w[None, :] + log_p, float("-inf"))
            top = tl.max(lp, axis=1)
            lse = tl.log(tl.sum(tl.exp(lp - top[:, None]), axis=1)) + top
            noise = tl.load(g_ptr + b * sgb + j * sgc + lv * sgl, mask=lv_ok, other=0.0)
            # IEEE division, as torch divides the logits by the temperature (``/`` may approximate)
            score = tl.where(lv_ok, tl.math.div_rn(lse, temperature) + noise, float("-inf"))
            chunk_best = tl.max(score, axis=0)
            chunk_idx = tl.argmax(score, axis=0) + l0
            take = chunk_best > best       # strictly: an earlier chunk keeps a tie, as torch.argmax
            best = tl.where(take, chunk_best, best)
            best_idx = tl.where(take, chunk_idx, best_idx)
        x = tl.load(lv_ptr + best_idx).to(tl.float32)
        tl.store(v_ptr + b * svb + j * svc, best_idx.to(tl.int64))
        tl.store(s_ptr + b * ssb + j * ssc, x.to(s_ptr.dtype.element_ty))
        if j == 0:
            x0 = x
        if j == 1:
            x1 = x


def block_sizes(levels, nr_mix):
    """(BLOCK_L, BLOCK_MIX): the mixture as a power-of-two tile >= 16, levels in chunks of at most
    64 (a [64, 16] tile is 8 fp32 values per thread at 4 warps, with ~10 live temporaries)."""
    block_mix = max(16, triton.next_power_of_2(nr_mix))
    block_l = max(16, min(64, triton.next_power_of_2(levels), 1024 // block_mix))
    return block_l, block_mix


BLOCK_F = 32             # features per chunk of the head's reduction ([32, BLOCK_MIX] weight tiles)
# With the head: 8 warps, 1 stage -- no spills on sm_80 / sm_90 at 160 features (4 warps spilled
# 12-16 B on sm_90 with 3 stages or 1, 64- or 32-wide chunks).


def mixture_draw(params, gumbel, level_values, values, scaled, nr_mix, half, log_half_bins, temperature,
                 head_w=None, head_b=None):
    """Launch the draw (shapes in the module docstring; nr_mix <= 64, fp32 params, 32-bit offsets).
    With head_w [F, P] and head_b [P], ``params`` holds the head's features [B, F] instead."""
    B, C, levels = gumbel.shape
    block_l, block_mix = block_sizes(levels, nr_mix)
    head = head_w is not None
    F, P = head_w.shape if head else (0, 0)
    # Direct launch (kernels/_launch.py) is safe: the kernel reads params (or the features and
    # the head), gumbel and level_values and overwrites values and scaled, which it does not read.
    launch(mixture_draw_kernel, (B,),
           (params, *params.stride(), gumbel, *gumbel.stride(), level_values, values, *values.stride(),
            scaled, *scaled.stride(), head_w if head else params, head_b if head else params, F, P,
            levels, nr_mix, half, log_half_bins, temperature),
           dict(C=C, BLOCK_L=block_l, BLOCK_MIX=block_mix, HEAD=head, BLOCK_F=BLOCK_F if head else 16),
           values, num_warps=8 if head else 4, num_stages=1 if head else 3)
