"""The coupling transform of normalizing flows, forward and backward, one pass each
(``fastgen.ops.affine_coupling``; the math in ``fastgen.ops.flow_coupling.reference``).

Per sample b the transformed half x[b] and the conditioner output h[b] are flat runs of N =
C * positions elements (h: s then t, 2N elements; the additive scale: t only, N elements).
Program (block, b) takes BLOCK elements of sample b:

    forward   y = f(s) x + t                 partial[b, block] = sum log f(s)
    inverse   x = (y - t) / f(s)             partial[b, block] = -sum log f(s)

and the op sums the partials per sample (deterministic, float32; no atomics).  The backward
recomputes f from the saved inputs -- nothing else is kept between the passes -- with
d = (log f)'(s):  forward: gx = gy f,  gt = gy,  gs = d (gy x f + g_logdet);
inverse (out = (y - t) / f): gy = gout / f,  gt = -gout / f,  gs = -d (gout out + g_logdet).
Positions the checkerboard keeps ((i + j) % 2 == CHECKER, i = row, j = column of a position
p = i W + j) pass through: gx = gy, gs = gt = 0.  Everything is float32 in registers; loads
and stores in the tensors' dtypes; per-sample offsets in 64 bits.

SCALE: 0 sigmoid(s + 2), 1 exp(tanh(s)), 2 additive (f = 1).  CHECKER: -1 none, else the parity.
"""
import triton
import triton.language as tl

from fastgen.kernels._launch import launch
from fastgen.kernels._math import log_sigmoid, tanh

SCALES = {"sigmoid": 0, "exp_tanh": 1, "additive": 2}
BLOCK = 1024


@triton.jit
def _scale(s, SCALE: tl.constexpr):
    """(f, log f, d log f / ds) of the raw log-scale s."""
    if SCALE == 0:
        log_f = log_sigmoid(s + 2.0)
        f = tl.exp(log_f)
        d = 1.0 - f                       # (log sigmoid)'(z) = 1 - sigmoid(z)
    elif SCALE == 1:
        log_f = tanh(s)
        f = tl.exp(log_f)
        d = 1.0 - log_f * log_f
    else:
        log_f = tl.zeros_like(s)
        f = log_f + 1.0
        d = log_f
    return f, log_f, d


@triton.jit
def _kept(offs, POSITIONS, W, CHECKER: tl.constexpr):
    """True where the checkerboard passes the element through (all False without one)."""
    p = offs % POSITIONS
    return ((p // W + p % W) % 2) == CHECKER


@triton.jit
def coupling_fwd_kernel(x_ptr, sxb, h_ptr, shb, y_ptr, syb, partial_ptr, N, POSITIONS, W, n_blocks,
                        SCALE: tl.constexpr, CHECKER: tl.constexpr, INVERSE: tl.constexpr,
                        BLOCK: tl.constexpr):
    blk = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    x = tl.load(x_ptr + b * sxb + offs, mask=ok, other=0.0).to(tl.float32)
    if SCALE == 2:
        s = tl.zeros([BLOCK], tl.float32)
        t = tl.load(h_ptr + b * shb + offs, mask=ok, other=0.0).to(tl.float32)
    else:
        s = tl.load(h_ptr + b * shb + offs, mask=ok, other=0.0).to(tl.float32)
        t = tl.load(h_ptr + b * shb + N + offs, mask=ok, other=0.0).to(tl.float32)
    f, log_f, d = _scale(s, SCALE)
    if CHECKER >= 0:
        keep = _kept(offs, POSITIONS, W, CHECKER)
        f = tl.where(keep, 1.0, f)
        log_f = tl.where(keep, 0.0, log_f)
        t = tl.where(keep, 0.0, t)
    if INVERSE:
        y = (x - t) / f
        log_f = -log_f
    else:
        y = x * f + t
    tl.store(y_ptr + b * syb + offs, y.to(y_ptr.dtype.element_ty), mask=ok)
    tl.store(partial_ptr + b * n_blocks + blk, tl.sum(tl.where(ok, log_f, 0.0), axis=0))


@triton.jit
def coupling_bwd_kernel(x_ptr, sxb, h_ptr, shb, g_ptr, sgb, gld_ptr, gx_ptr, sgxb, gh_ptr, sghb,
                        N, POSITIONS, W,
                        SCALE: tl.constexpr, CHECKER: tl.constexpr, INVERSE: tl.constexpr,
                        BLOCK: tl.constexpr):
    blk = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    x = tl.load(x_ptr + b * sxb + offs, mask=ok, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + b * sgb + offs, mask=ok, other=0.0).to(tl.float32)
    g_logdet = tl.load(gld_ptr + b).to(tl.float32)
    if SCALE == 2:
        s = tl.zeros([BLOCK], tl.float32)
        t_off = 0
    else:
        s = tl.load(h_ptr + b * shb + offs, mask=ok, other=0.0).to(tl.float32)
        t_off = N
    f, log_f, d = _scale(s, SCALE)
    if INVERSE:
        t = tl.load(h_ptr + b * shb + t_off + offs, mask=ok, other=0.0).to(tl.float32)
        out = (x - t) / f
        gx = g / f
        gt = -gx
        gs = -d * (g * out + g_logdet)
    else:
        gx = g * f
        gt = g
        gs = d * (g * x * f + g_logdet)
    if CHECKER >= 0:
        keep = _kept(offs, POSITIONS, W, CHECKER)
        gx = tl.where(keep, g, gx)
        gt = tl.where(keep, 0.0, gt)
        gs = tl.where(keep, 0.0, gs)
    tl.store(gx_ptr + b * sgxb + offs, gx.to(gx_ptr.dtype.element_ty), mask=ok)
    tl.store(gh_ptr + b * sghb + t_off + offs, gt.to(gh_ptr.dtype.element_ty), mask=ok)
    if SCALE != 2:
        tl.store(gh_ptr + b * sghb + offs, gs.to(gh_ptr.dtype.element_ty), mask=ok)


def coupling_forward(x, h, y, partial, scale, checker, inverse, positions, width):
    """Launch the forward: x, y [B, N] and h [B, 2N] (or [B, N] additive) as per-sample flat
    runs (row strides only), partial [B, n_blocks] float32 contiguous."""
    B, N = x.shape
    n_blocks = triton.cdiv(N, BLOCK)
    # Direct launch (kernels/_launch.py) is safe: it reads x and h and overwrites y and partial.
    launch(coupling_fwd_kernel, (n_blocks, B),
           (x, x.stride(0), h, h.stride(0), y, y.stride(0), partial, N, positions, width, n_blocks),
           dict(SCALE=SCALES[scale], CHECKER=checker, INVERSE=inverse, BLOCK=BLOCK), y, num_warps=4)


def coupling_backward(x, h, grad, grad_logdet, grad_x, grad_h, scale, checker, inverse, positions, width):
    """Launch the backward (layouts as ``coupling_forward``; grad_logdet [B] contiguous)."""
    B, N = x.shape
    # Direct launch is safe: it reads x, h, grad and grad_logdet and overwrites grad_x and grad_h.
    launch(coupling_bwd_kernel, (triton.cdiv(N, BLOCK), B),
           (x, x.stride(0), h, h.stride(0), grad, grad.stride(0), grad_logdet, grad_x, grad_x.stride(0),
            grad_h, grad_h.stride(0), N, positions, width),
           dict(SCALE=SCALES[scale], CHECKER=checker, INVERSE=inverse, BLOCK=BLOCK), grad_x, num_warps=4)
