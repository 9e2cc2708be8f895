"""Implicit-GEMM convolution over an explicit list of kernel taps.

Every convolution fastgen ships -- masked 2-D convs (PixelCNN), causal dilated 1-D
convs (WaveNet) and the input gradients of both -- is one computation:

    y[b, h, w, n] = bias[n] + sum_t sum_c x[b, h + dy_t, w + dx_t, c] * W[t, c, n]

with ``x`` read as zero outside the image.  The taps every fastgen mask keeps are a run of
consecutive positions of the kernel window in raster order, so a tap is five integers
(``Taps``): tap t sits at flat window position f = first + t of a window ``width`` wide,
and reads offset

    dy_t = sign * (f // width - centre_y) * dilation,   dx_t = sign * (f % width - centre_x) * dilation

(``sign = -1`` mirrors the taps, which is how the input gradient is computed).  Computing
offsets from integers instead of loading them keeps the main loop free of dependent loads,
so Triton can software-pipeline it.  Listing only kept taps is what makes a 7x7 type-A
masked conv do 24/49 of the dense work; a causal 1-D conv is the case ``H == 1``.

The weight gradient is the same sum read the other way round:

    gW[t, c, n] = sum_{b, h, w} x[b, h + dy_t, w + dx_t, c] * gy[b, h, w, n]

Kernels here are dumb on purpose: pointers, strides, block sizes.  Shape checks,
weight packing and autograd live in ``fastgen/ops``.
"""
import os
from typing import Any, Dict, NamedTuple, Optional, Tuple

import triton
import triton.language as tl
from torch import Tensor

from fastgen.kernels._launch import launch

# The interpreter runs every config it is given, and FASTGEN_AUTOTUNE=0 (tests) asks for
# no tuning: then the first config of each space, a good default, is the only one.
_ONE_CONFIG = (os.environ.get("TRITON_INTERPRET", "0") == "1"
               or os.environ.get("FASTGEN_AUTOTUNE", "1") == "0")


def _configs(space):
    if _ONE_CONFIG:
        space = space[:1]
    return [triton.Config(kw, num_warps=w, num_stages=s) for kw, w, s in space]


_FWD_SPACE = [
    (dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64), 8, 3),
    (dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64), 4, 4),
    (dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64), 4, 4),
    (dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64), 4, 4),
    (dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64), 8, 3),
    (dict(BLOCK_M=256, BLOCK_N=128, BLOCK_K=64), 8, 3),
    (dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32), 4, 4),
]


@triton.autotune(configs=_configs(_FWD_SPACE), key=["C_IN", "C_OUT", "T", "M", "W"])
@triton.jit
def tap_conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr,
    M, H, W, C_IN, C_OUT, T,
    TAP0, KW, CY, CX, DIL, SIGN,   # tap t -> window position TAP0 + t (see module docstring)
    sxb, sxh, sxw, sxc,          # x: [B, H, W, C_IN] strides
    swt, swc, swn,               # W: [T, C_IN, C_OUT] strides
    syb, syh, syw, syn,          # y: [B, H, W, C_OUT] strides
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)   # flat pixel index b*H*W + h*W + w
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < C_OUT
    b = offs_m // (H * W)
    h = (offs_m // W) % H
    w = offs_m % W
    x_row = x_ptr + b.to(tl.int64) * sxb

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_chunks = tl.cdiv(C_IN, BLOCK_K)
    # One flat loop over (tap, channel chunk) so the compiler can software-pipeline it.
    for it in range(0, T * k_chunks):
        t = it // k_chunks
        c0 = (it - t * k_chunks) * BLOCK_K
        f = TAP0 + t
        dy = SIGN * (f // KW - CY) * DIL
        dx = SIGN * (f % KW - CX) * DIL
        hh = h + dy
        ww = w + dx
        row_ok = m_ok & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        offs_c = c0 + tl.arange(0, BLOCK_K)
        c_ok = offs_c < C_IN
        a = tl.load(x_row[:, None] + (hh * sxh + ww * sxw)[:, None] + offs_c[None, :] * sxc,
                    mask=row_ok[:, None] & c_ok[None, :], other=0.0)
        wt = tl.load(w_ptr + t * swt + offs_c[:, None] * swc + offs_n[None, :] * swn,
                     mask=c_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, wt, acc, input_precision=PRECISION)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y_off = b.to(tl.int64) * syb + h * syh + w * syw
    tl.store(y_ptr + y_off[:, None] + offs_n[None, :] * syn,
             acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


_WGRAD_SPACE = [
    (dict(BLOCK_C=128, BLOCK_N=128, BLOCK_M=64), 8, 3),
    (dict(BLOCK_C=64, BLOCK_N=128, BLOCK_M=64), 4, 4),
    (dict(BLOCK_C=128, BLOCK_N=64, BLOCK_M=64), 4, 4),
    (dict(BLOCK_C=64, BLOCK_N=64, BLOCK_M=64), 4, 4),
    (dict(BLOCK_C=128, BLOCK_N=128, BLOCK_M=32), 8, 4),
]


@triton.autotune(configs=_configs(_WGRAD_SPACE), key=["C_IN", "C_OUT", "T", "M", "W", "M_PER_SPLIT"])
@triton.jit
def tap_conv_wgrad_kernel(
    x_ptr, gy_ptr, gw_ptr,
    M, H, W, C_IN, C_OUT, T, M_PER_SPLIT,
    TAP0, KW, CY, CX, DIL,
    sxb, sxh, sxw, sxc,          # x:  [B, H, W, C_IN] strides
    sgb, sgh, sgw, sgn,          # gy: [B, H, W, C_OUT] strides
    PRECISION: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """Partial weight gradient of one split of the pixels: gw[split, t, c, n] (fp32)."""
    pid_c = tl.program_id(0)
    pid_n = tl.program_id(1)
    t = tl.program_id(2) % T
    split = tl.program_id(2) // T
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ok = offs_c < C_IN
    n_ok = offs_n < C_OUT
    dy = ((TAP0 + t) // KW - CY) * DIL
    dx = ((TAP0 + t) % KW - CX) * DIL

    acc = tl.zeros((BLOCK_C, BLOCK_N), dtype=tl.float32)
    m_start = split * M_PER_SPLIT
    m_end = tl.minimum(M, m_start + M_PER_SPLIT)
    for m0 in range(m_start, m_end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < m_end
        b = offs_m // (H * W)
        h = (offs_m // W) % H
        w = offs_m % W
        hh = h + dy
        ww = w + dx
        row_ok = m_ok & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        b64 = b.to(tl.int64)
        xt = tl.load(x_ptr + (b64 * sxb + hh * sxh + ww * sxw)[None, :] + offs_c[:, None] * sxc,
                     mask=c_ok[:, None] & row_ok[None, :], other=0.0)
        g = tl.load(gy_ptr + (b64 * sgb + h * sgh + w * sgw)[:, None] + offs_n[None, :] * sgn,
                    mask=m_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(xt, g, acc, input_precision=PRECISION)

    out = gw_ptr + ((split * T + t) * C_IN + offs_c[:, None]).to(tl.int64) * C_OUT + offs_n[None, :]
    tl.store(out, acc, mask=c_ok[:, None] & n_ok[None, :])


class Taps(NamedTuple):
    """Kept taps t = 0..T-1 at window positions first + t (raster order, window ``width``
    wide, centre at (centre_y, centre_x)); offsets are scaled by ``dilation``."""
    first: int
    width: int
    centre_y: int
    centre_x: int
    dilation: int


def tap_conv_forward(x: Tensor, w_packed: Tensor, taps: Taps, bias: Optional[Tensor], y: Tensor,
                     precision: str, mirror: bool = False) -> Tensor:
    """Launch the forward sum.  x: [B, H, W, C_IN], w_packed: [T, C_IN, C_OUT],
    taps: ``Taps``; ``mirror`` negates every offset (the input gradient);
    bias: [C_OUT] or None, y: [B, H, W, C_OUT] (written);
    precision: how tl.dot multiplies fp32 inputs, "ieee" or "tf32" (ignored for 16-bit)."""
    B, H, W, C_IN = x.shape
    T, _, C_OUT = w_packed.shape
    M = B * H * W

    def grid(meta: Dict[str, Any]) -> Tuple[int, int]:
        return (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(C_OUT, meta["BLOCK_N"]))

    # tune_key: what determines the autotuner's choice (its key arguments and the dtypes)
    key = (C_IN, C_OUT, T, M, W, x.dtype, w_packed.dtype, y.dtype, bias is not None, precision)
    launch(tap_conv_fwd_kernel, grid,
           (x, w_packed, bias if bias is not None else y, y,
            M, H, W, C_IN, C_OUT, T, *taps, -1 if mirror else 1,
            *x.stride(), *w_packed.stride(), *y.stride()),
           dict(HAS_BIAS=bias is not None, PRECISION=precision), y, tune_key=key)
    return y


def tap_conv_weight_grad(x: Tensor, gy: Tensor, taps: Taps, partial: Tensor, precision: str) -> Tensor:
    """Launch the weight-gradient sum into ``partial: fp32 [S, T, C_IN, C_OUT]`` (S pixel
    splits, summed by the caller).  x: [B, H, W, C_IN], gy: [B, H, W, C_OUT]."""
    B, H, W, C_IN = x.shape
    S, T, _, C_OUT = partial.shape
    M = B * H * W
    if partial.numel() == 0:  # no taps (a 1x1 type-A mask): nothing to launch
        return partial
    m_per_split = triton.cdiv(triton.cdiv(M, S), 256) * 256  # a multiple of every BLOCK_M

    def grid(meta: Dict[str, Any]) -> Tuple[int, int, int]:
        return (triton.cdiv(C_IN, meta["BLOCK_C"]), triton.cdiv(C_OUT, meta["BLOCK_N"]), T * S)

    key = (C_IN, C_OUT, T, M, W, m_per_split, x.dtype, gy.dtype, precision)
    launch(tap_conv_wgrad_kernel, grid,
           (x, gy, partial, M, H, W, C_IN, C_OUT, T, m_per_split, *taps, *x.stride(), *gy.stride()),
           dict(PRECISION=precision), partial, tune_key=key)
    return partial
