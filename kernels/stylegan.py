"""StyleGAN2's custom ops as Triton kernels (``fastgen.ops.bias_act``, ``upfirdn2d``,
``modulated_conv2d``; the math in ``fastgen.ops.stylegan.reference``).  Nothing to build.

bias_act (elementwise; x viewed as a flat contiguous run, the bias index of element e is
(e // INNER) % C with INNER = prod(shape[dim + 1:])):
    forward   y = clamp(act(x + b) * gain, -clamp, clamp)                      one pass
    backward  ORDER 1: out = g * D(ref), ORDER 2: out = g * h * D'(ref)         one pass
  with ref = y for the activations invertible from their output and ref = x (+ b recomputed) for
  swish; D and D' as ``reference.bias_act_derivative``.  ACT: index into ``ACTS``.

upfirdn2d (one program per BLOCK_H x BLOCK_W output tile of BLOCK_P (n, c) planes): output (oy, ox)
reads the virtual upsampled+padded input through index arithmetic, polyphase: along y only the
taps i with (oy * DOWN + i - y0) % UP == 0 hit a non-inserted sample, so the program loops over
ceil(FH / UP) taps per axis, the first one being the row's phase; input row (oy * DOWN + i -
y0) / UP.  Nothing upsampled or padded is materialised.  All modular arithmetic runs on values
made non-negative by a host offset OFF = K * UP >= y0 (KQ = K).  Taps are read from f (2-D,
or 1-D twice for a separable filter), flipped unless flip_filter (a true convolution), times
gain.  fp32 accumulation; loads/stores in the tensors' dtypes; x with any strides.

modulated conv (implicit GEMM, ``conv_kernel``): the general convolution
    y[n, o, oy, ox] = OUT[n, o] * sum_{c, i, j} Wk[i, j, c, o] IN[n, c] x~[n, c, oy S + i - PY, ox S + j - PX]
where x~ is x with U - 1 zeros inserted after each sample (x~[a] = x[a / U] when U | a), IN and
OUT optional per-(sample, channel) scales.  M = output pixels, N = output channels, K = input
channels x taps.  With U > 1 the outputs are split into U x U phases (grid axis 2) so that a
program's pixels all use the same taps (no multiplications by inserted zeros).  It computes
    forward          U = 1, S = 1 or the stride, IN = styles, OUT = demodulation
    transposed (up)  U = up, S = 1, the same scales                     (StyleGAN2's upsampling conv)
    input gradient   the adjoint: weights flipped and transposed, U <-> S, P' = K - 1 - P,
                     IN = demodulation (on the output-gradient channels), OUT = styles,
                     and PARTIAL: per tile, sum over pixels of (unscaled result) x x, the
                     styles' gradient.
The weight gradient (``wgrad_kernel``) is dWk[i, j, c, o] = sum_{n, pixels} IN[n, c] x~ . OUT[n,
o] g, one program per (c tile, o tile, tap, split of the n x pixels range), float32 partials
summed by the op.  Styles scale the activations as they are loaded and demodulation scales the
accumulator: no per-sample weight tensor is formed.
"""
import triton
import triton.language as tl

from fastgen.kernels._launch import launch
from fastgen.kernels._math import log1p, tanh

ACTS = {"linear": 0, "relu": 1, "lrelu": 2, "tanh": 3, "sigmoid": 4, "elu": 5, "selu": 6, "softplus": 7, "swish": 8}
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
BLOCK = 1024


@triton.jit
def _expm1(y):
    # exp(y) - 1 accurate near 0 (Kahan: (e - 1) * y / log(e), exact where e rounds to 1)
    e = tl.exp(y)
    log_e = tl.log(e)
    return tl.where(e == 1.0, y, (e - 1.0) * (y / tl.where(log_e == 0.0, 1.0, log_e)))


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def _act(z, alpha, ACT: tl.constexpr):
    if ACT == 0:
        y = z
    elif ACT == 1:
        y = tl.maximum(z, 0.0)
    elif ACT == 2:
        y = tl.where(z >= 0.0, z, z * alpha)
    elif ACT == 3:
        y = tanh(z)
    elif ACT == 4:
        y = _sigmoid(z)
    elif ACT == 5:
        y = tl.where(z >= 0.0, z, _expm1(tl.minimum(z, 0.0)))
    elif ACT == 6:
        y = SELU_SCALE * tl.where(z >= 0.0, z, SELU_ALPHA * _expm1(tl.minimum(z, 0.0)))
    elif ACT == 7:
        y = tl.maximum(z, 0.0) + log1p(tl.exp(-tl.abs(z)))
    else:
        y = z * _sigmoid(z)
    return y


@triton.jit
def bias_act_fwd_kernel(x_ptr, b_ptr, y_ptr, numel, C, INNER, alpha, gain, clamp,
                        ACT: tl.constexpr, HAS_BIAS: tl.constexpr, CLAMP: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    z = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        z += tl.load(b_ptr + (offs // INNER) % C, mask=ok, other=0.0).to(tl.float32)
    y = _act(z, alpha, ACT) * gain
    if CLAMP:
        y = tl.minimum(tl.maximum(y, -clamp), clamp)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _derivative(r, alpha, gain, inv_gain, clamp, ACT: tl.constexpr, ORDER: tl.constexpr, CLAMP: tl.constexpr):
    """D(ref) (ORDER 1) or dD/dref (ORDER 2); r = y, or x + b for swish."""
    if ACT == 8:
        s = _sigmoid(r)
        y = r * s * gain
        if ORDER == 1:
            d = gain * (s + r * s * (1.0 - s))
        else:
            d = gain * s * (1.0 - s) * (2.0 + r * (1.0 - 2.0 * s))
    else:
        y = r
        a = r * inv_gain
        if ORDER == 1:
            if ACT == 0:
                d = tl.full(a.shape, 1.0, tl.float32)
            elif ACT == 1:
                d = tl.where(a > 0.0, 1.0, 0.0)
            elif ACT == 2:
                d = tl.where(a >= 0.0, 1.0, alpha)
            elif ACT == 3:
                d = 1.0 - a * a
            elif ACT == 4:
                d = a * (1.0 - a)
            elif ACT == 5:
                d = tl.where(a >= 0.0, 1.0, a + 1.0)
            elif ACT == 6:
                d = tl.where(a >= 0.0, SELU_SCALE, a + SELU_SCALE * SELU_ALPHA)
            else:
                d = -_expm1(-a)
            d = d * gain
        else:
            if ACT <= 2:
                d = tl.zeros(a.shape, tl.float32)
            elif ACT == 3:
                d = -2.0 * a
            elif ACT == 4:
                d = 1.0 - 2.0 * a
            elif ACT <= 6:
                d = tl.where(a >= 0.0, 0.0, 1.0)
            else:
                d = tl.exp(-a)
    if CLAMP:
        d = tl.where(tl.abs(y) < clamp, d, 0.0)
    return d


@triton.jit
def bias_act_bwd_kernel(g_ptr, h_ptr, r_ptr, b_ptr, out_ptr, numel, C, INNER, alpha, gain, inv_gain, clamp,
                        ACT: tl.constexpr, ORDER: tl.constexpr, HAS_BIAS: tl.constexpr, CLAMP: tl.constexpr,
                        BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    r = tl.load(r_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        r += tl.load(b_ptr + (offs // INNER) % C, mask=ok, other=0.0).to(tl.float32)
    out = tl.load(g_ptr + offs, mask=ok, other=0.0).to(tl.float32) * _derivative(
        r, alpha, gain, inv_gain, clamp, ACT, ORDER, CLAMP)
    if ORDER == 2:
        out = out * tl.load(h_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=ok)


def bias_act_forward(x, b, y, act, alpha, gain, clamp, C, inner):
    """x, y contiguous; b [C] contiguous or None; clamp < 0: none."""
    numel = x.numel()
    # Direct launch is safe: reads x and b, overwrites y.
    launch(bias_act_fwd_kernel, (triton.cdiv(numel, BLOCK),),
           (x, b if b is not None else x, y, numel, C, inner, float(alpha), float(gain), float(clamp)),
           dict(ACT=ACTS[act], HAS_BIAS=b is not None, CLAMP=clamp >= 0, BLOCK=BLOCK), y, num_warps=4)


def bias_act_backward(g, h, ref, b, out, act, alpha, gain, clamp, C, inner, order):
    """out = g * D(ref) (order 1) or g * h * D'(ref) (order 2); all contiguous like ref; b only
    for swish (ref = x)."""
    numel = ref.numel()
    inv_gain = 1.0 / gain if gain != 0 else 0.0
    launch(bias_act_bwd_kernel, (triton.cdiv(numel, BLOCK),),
           (g, h if h is not None else g, ref, b if b is not None else ref, out, numel, C, inner, float(alpha),
            float(gain), float(inv_gain), float(clamp)),
           dict(ACT=ACTS[act], ORDER=order, HAS_BIAS=b is not None, CLAMP=clamp >= 0, BLOCK=BLOCK), out,
           num_warps=4)


# --------------------------------------------------------------------------------- upfirdn2d

@triton.jit
def upfirdn2d_kernel(x_ptr, f_ptr, y_ptr, NC, C, H, W, sxn, sxc, sxh, sxw, OH, OW, tiles_w,
                     OFFX, OFFY, KQX, KQY, gain,
                     UPX: tl.constexpr, UPY: tl.constexpr, DOWNX: tl.constexpr, DOWNY: tl.constexpr,
                     FH: tl.constexpr, FW: tl.constexpr, SEPARABLE: tl.constexpr, FLIP: tl.constexpr,
                     BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    # one flat vector of BLOCK_P planes x BLOCK_H rows x BLOCK_W columns (powers of two)
    e = tl.arange(0, BLOCK_P * BLOCK_H * BLOCK_W)
    nc = tl.program_id(0).to(tl.int64) * BLOCK_P + e // (BLOCK_H * BLOCK_W)
    tile = tl.program_id(1)
    oy = (tile // tiles_w) * BLOCK_H + (e // BLOCK_W) % BLOCK_H
    ox = (tile % tiles_w) * BLOCK_W + e % BLOCK_W
    out_ok = (nc < NC) & (oy < OH) & (ox < OW)
    # t = o * DOWN - p0 + OFF >= 0; tap i reads upsampled position t + i - OFF, a real sample iff UP | t + i
    ty = oy * DOWNY + OFFY
    tx = ox * DOWNX + OFFX
    # without upsampling every tap hits a sample: phase 0, so taps (and filter loads) are scalars
    if UPY == 1:
        phase_y = 0
    else:
        phase_y = (UPY - ty % UPY) % UPY
    if UPX == 1:
        phase_x = 0
    else:
        phase_x = (UPX - tx % UPX) % UPX
    base = x_ptr + (nc // C) * sxn + (nc % C) * sxc
    acc = tl.zeros([BLOCK_P * BLOCK_H * BLOCK_W], tl.float32)
    for a in tl.static_range((FH + UPY - 1) // UPY):
        i = phase_y + a * UPY
        iy = (ty + i) // UPY - KQY
        vy = out_ok & (iy >= 0) & (iy < H)
        if UPY > 1:
            vy = vy & (i < FH)
        if FLIP:
            fi = FH - 1 - i
        else:
            fi = i
        if SEPARABLE:
            if UPY == 1:     # a scalar tap in range
                wy = tl.load(f_ptr + fi).to(tl.float32)
            else:
                wy = tl.load(f_ptr + fi, mask=i < FH, other=0.0).to(tl.float32)
        for bb in tl.static_range((FW + UPX - 1) // UPX):
            j = phase_x + bb * UPX
            ix = (tx + j) // UPX - KQX
            v = vy & (ix >= 0) & (ix < W)
            if UPX > 1:
                v = v & (j < FW)
            if FLIP:
                fj = FW - 1 - j
            else:
                fj = j
            if SEPARABLE:
                if UPX == 1:
                    w = wy * tl.load(f_ptr + fj).to(tl.float32)
                else:
                    w = wy * tl.load(f_ptr + fj, mask=j < FW, other=0.0).to(tl.float32)
            elif UPX == 1 and UPY == 1:
                w = tl.load(f_ptr + fi * FW + fj).to(tl.float32)
            elif UPY == 1:
                w = tl.load(f_ptr + fi * FW + fj, mask=j < FW, other=0.0).to(tl.float32)
            elif UPX == 1:
                w = tl.load(f_ptr + fi * FW + fj, mask=i < FH, other=0.0).to(tl.float32)
            else:
                w = tl.load(f_ptr + fi * FW + fj, mask=(i < FH) & (j < FW), other=0.0).to(tl.float32)
            xv = tl.load(base + (iy * sxh + ix * sxw), mask=v, other=0.0)      # in-plane offsets: int32
            acc += xv.to(tl.float32) * w
    acc = acc * gain
    tl.store(y_ptr + nc * OH * OW + oy * OW + ox, acc.to(y_ptr.dtype.element_ty), mask=out_ok)


def upfirdn2d_tiles(NC, OH, OW):
    """(BLOCK_P, BLOCK_H, BLOCK_W, plane blocks, tiles_h, tiles_w): 256 outputs per program (1 per
    thread at 8 warps: 16 unrolled taps at 4 per thread spilled on sm_80, at 2 per thread on sm_90
    in fp16) -- a tile of one plane, or several whole planes when they are small."""
    block_w = min(64, triton.next_power_of_2(max(OW, 1)))
    block_h = min(triton.next_power_of_2(max(OH, 1)), max(1, 256 // block_w))
    block_p = max(1, min(256 // (block_h * block_w), triton.next_power_of_2(NC)))
    return block_p, block_h, block_w, triton.cdiv(NC, block_p), triton.cdiv(OH, block_h), triton.cdiv(OW, block_w)


def upfirdn2d_launch(x, f, y, up, down, padding, flip_filter, gain):
    """y [N, C, OH, OW] contiguous = upfirdn2d(x, f, ...); x any strides; f float32 contiguous
    [fh, fw] or [fw] (separable); up, down: (x, y); padding (x0, x1, y0, y1)."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    separable = f.dim() == 1
    fh, fw = (f.shape[0], f.shape[0]) if separable else (f.shape[0], f.shape[1])
    x0, _, y0, _ = padding
    kqx = max(0, -(-x0 // up[0]))
    kqy = max(0, -(-y0 // up[1]))
    block_p, block_h, block_w, planes, tiles_h, tiles_w = upfirdn2d_tiles(N * C, OH, OW)
    # Direct launch is safe: reads x and f, overwrites y.
    launch(upfirdn2d_kernel, (planes, tiles_h * tiles_w),
           (x, f, y, N * C, C, H, W, *x.stride(), OH, OW, tiles_w, kqx * up[0] - x0, kqy * up[1] - y0, kqx, kqy,
            float(gain)),
           dict(UPX=up[0], UPY=up[1], DOWNX=down[0], DOWNY=down[1], FH=fh, FW=fw, SEPARABLE=separable,
                FLIP=not flip_filter, BLOCK_P=block_p, BLOCK_H=block_h, BLOCK_W=block_w), y, num_warps=8)


# ------------------------------------------------------------------------- modulated conv

@triton.jit
def conv_kernel(x_ptr, w_ptr, in_ptr, out_ptr, y_ptr, part_ptr, o_ptr,
                N, CIN, COUT, H, W, OH, OW, sxn, sxc, sxh, sxw,
                PY, PX, OFFY, OFFX, PH_H, PH_W, m_tiles,
                KH: tl.constexpr, KW: tl.constexpr, U: tl.constexpr, S: tl.constexpr,
                HAS_IN: tl.constexpr, HAS_OUT: tl.constexpr, PARTIAL: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_z = tl.program_id(2)
    n = (pid_z // (U * U)).to(tl.int64)
    phase = pid_z % (U * U)
    ry = phase // U
    rx = phase % U
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    oy = ry + U * (m // PH_W)
    ox = rx + U * (m % PH_W)
    m_ok = (m < PH_H * PH_W) & (oy < OH) & (ox < OW)
    co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    co_ok = co < COUT
    kc = tl.arange(0, BLOCK_K)
    # first tap hitting a real sample of x~ (all taps when U = 1); OFF* >= P*, multiples of U
    ty = ry * S + OFFY - PY
    tx = rx * S + OFFX - PX
    i0 = (U - ty % U) % U
    j0 = (U - tx % U) % U
    x_base = x_ptr + n * sxn
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for i in range(i0, KH, U):
        iy = (oy * S + i - PY + OFFY) // U - OFFY // U
        y_ok = m_ok & (iy >= 0) & (iy < H)
        for j in range(j0, KW, U):
            ix = (ox * S + j - PX + OFFX) // U - OFFX // U
            row_ok = y_ok & (ix >= 0) & (ix < W)
            x_rows = x_base + (iy * sxh + ix * sxw)          # in-sample offsets: int32 (checked by the op)
            w_tap = w_ptr + (i * KW + j) * CIN * COUT
            for c0 in range(0, CIN, BLOCK_K):
                ci = c0 + kc
                ci_ok = ci < CIN
                a = tl.load(x_rows[:, None] + ci[None, :] * sxc, mask=row_ok[:, None] & ci_ok[None, :],
                            other=0.0)
                if HAS_IN:
                    scale = tl.load(in_ptr + n * CIN + ci, mask=ci_ok, other=0.0).to(tl.float32)
                    a = (a.to(tl.float32) * scale[None, :]).to(w_ptr.dtype.element_ty)
                b = tl.load(w_tap + ci[:, None] * COUT + co[None, :], mask=ci_ok[:, None] & co_ok[None, :], other=0.0)
                acc = tl.dot(a.to(w_ptr.dtype.element_ty), b, acc, input_precision=PRECISION)
    if PARTIAL:
        other = tl.load(o_ptr + (n * COUT + co[None, :]) * OH * OW + oy[:, None] * OW + ox[:, None],
                        mask=m_ok[:, None] & co_ok[None, :], other=0.0).to(tl.float32)
        tl.store(part_ptr + (pid_z.to(tl.int64) * m_tiles + pid_m) * COUT + co, tl.sum(acc * other, axis=0),
                 mask=co_ok)
    if HAS_OUT:
        acc = acc * tl.load(out_ptr + n * COUT + co, mask=co_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + (n * COUT + co[None, :]) * OH * OW + oy[:, None] * OW + ox[:, None],
             acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & co_ok[None, :])


@triton.jit
def wgrad_kernel(x_ptr, g_ptr, in_ptr, out_ptr, part_ptr,
                 N, CIN, COUT, H, W, OH, OW, sxn, sxc, sxh, sxw, sgn, sgc, sgh, sgw,
                 PY, PX, OFFY, OFFX, PH_H, PH_W, k_per_split, SPLIT,
                 KH: tl.constexpr, KW: tl.constexpr, U: tl.constexpr, S: tl.constexpr,
                 HAS_IN: tl.constexpr, HAS_OUT: tl.constexpr, PRECISION: tl.constexpr,
                 BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_ci = tl.program_id(0)
    pid_co = tl.program_id(1)
    pid_z = tl.program_id(2)
    tap = pid_z // SPLIT
    split = pid_z % SPLIT
    i = tap // KW
    j = tap % KW
    ci = pid_ci * BLOCK_CI + tl.arange(0, BLOCK_CI)
    co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    ci_ok = ci < CIN
    co_ok = co < COUT
    # outputs whose tap (i, j) reads a real sample of x~: o = r + U k with U | r + i - P
    ry = (U - (i + OFFY - PY) % U) % U
    rx = (U - (j + OFFX - PX) % U) % U
    per_n = PH_H * PH_W
    total = N * per_n
    k_start = split * k_per_split
    k_stop = tl.minimum(k_start + k_per_split, total)
    kk0 = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_CI, BLOCK_CO], tl.float32)
    for k0 in range(k_start, k_stop, BLOCK_K):
        kk = k0 + kk0
        n = (kk // per_n).to(tl.int64)
        rem = kk % per_n
        oy = ry + U * (rem // PH_W)
        ox = rx + U * (rem % PH_W)
        ok = (kk < k_stop) & (oy < OH) & (ox < OW)
        iy = (oy * S + i - PY + OFFY) // U - OFFY // U
        ix = (ox * S + j - PX + OFFX) // U - OFFX // U
        x_ok = ok & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        a = tl.load(x_ptr + n[:, None] * sxn + ci[None, :].to(tl.int64) * sxc + (iy.to(tl.int64) * sxh
                    + ix.to(tl.int64) * sxw)[:, None], mask=x_ok[:, None] & ci_ok[None, :], other=0.0)
        if HAS_IN:
            s = tl.load(in_ptr + n[:, None] * CIN + ci[None, :], mask=ok[:, None] & ci_ok[None, :], other=0.0)
            a = a.to(tl.float32) * s.to(tl.float32)
        g = tl.load(g_ptr + n[:, None] * sgn + co[None, :].to(tl.int64) * sgc + (oy.to(tl.int64) * sgh
                    + ox.to(tl.int64) * sgw)[:, None], mask=ok[:, None] & co_ok[None, :], other=0.0)
        if HAS_OUT:
            d = tl.load(out_ptr + n[:, None] * COUT + co[None, :], mask=ok[:, None] & co_ok[None, :], other=0.0)
            g = g.to(tl.float32) * d.to(tl.float32)
        acc = tl.dot(tl.trans(a.to(g_ptr.dtype.element_ty)), g.to(g_ptr.dtype.element_ty), acc,
                     input_precision=PRECISION)
    tl.store(part_ptr + ((split * KH * KW + tap) * CIN + ci[:, None]).to(tl.int64) * COUT + co[None, :], acc,
             mask=ci_ok[:, None] & co_ok[None, :])


def _offset(p, u):
    """A multiple of u that is >= p and >= 0 (keeps the kernels' modular arithmetic non-negative)."""
    return max(0, -(-p // u)) * u


def conv_tiles(M, COUT, CIN, dtype_bytes, precision="tf32", partial=False):
    """(BLOCK_M, BLOCK_N, BLOCK_K, warps).  The styles' partial sums (``partial``) hold a second
    [BLOCK_M, BLOCK_N] tile in the epilogue: half the N tile there (no spills, compile gate)."""
    if precision == "ieee":       # exact fp32: FMA dots hold both operands in registers (64-row
        # tiles spilled on sm_80: the quick gates).  With the styles' partials, 16 x 16 tiles over
        # 4 warps still spilled 4-8 B on sm_80 under triton 3.6 (at 48 registers: the epilogue's
        # cross-warp column sum); over 2 warps they compile clean under 3.6 and 3.9.
        return (min(16 if partial else 32, max(16, triton.next_power_of_2(M))),
                min(16 if partial else 32, max(16, triton.next_power_of_2(COUT))), 16, 2 if partial else 4)
    # 64 x 64 tiles: 128 x 128 and 128 x 64 spilled on the up (zero-insertion phases) and dx paths
    # in 16 bits on sm_80 and sm_90 (the compile gate, triton 3.9)
    block_m = 64 if M >= 64 else max(16, triton.next_power_of_2(M))
    block_n = 64 if COUT >= 64 else max(16, triton.next_power_of_2(COUT))
    if partial:                          # the styles' partial sums: a second tile in the epilogue
        block_n = min(block_n, 32)
    block_k = 32 if CIN >= 32 else max(16, triton.next_power_of_2(CIN))
    return block_m, block_n, block_k, 4


def conv_launch(x, wk, in_scale, out_scale, y, partial_other, up, stride, py, px, precision):
    """y [N, COUT, OH, OW] contiguous = the general conv of the module docstring; wk [KH, KW, CIN,
    COUT] contiguous (the dot dtype); in_scale [N, CIN] / out_scale [N, COUT] float32 or None;
    partial_other: None or a [N, COUT, OH, OW] contiguous tensor -> returns the [N, COUT] float32
    sum over pixels of (unscaled result) * partial_other."""
    N, CIN, H, W = x.shape
    KH, KW, _, COUT = wk.shape
    OH, OW = y.shape[2], y.shape[3]
    U = up
    ph_h, ph_w = -(-OH // U), -(-OW // U)
    block_m, block_n, block_k, warps = conv_tiles(ph_h * ph_w, COUT, CIN, wk.element_size(), precision,
                                                  partial_other is not None)
    m_tiles = triton.cdiv(ph_h * ph_w, block_m)
    part = None
    if partial_other is not None:
        import torch
        part = torch.empty(N * U * U, m_tiles, COUT, dtype=torch.float32, device=x.device)
    # Direct launch is safe: reads x, wk, the scales and partial_other; overwrites y and part.
    launch(conv_kernel, (m_tiles, triton.cdiv(COUT, block_n), N * U * U),
           (x, wk, in_scale if in_scale is not None else wk, out_scale if out_scale is not None else wk, y,
            part if part is not None else y, partial_other if partial_other is not None else y,
            N, CIN, COUT, H, W, OH, OW, *x.stride(), py, px, _offset(py, U), _offset(px, U), ph_h, ph_w, m_tiles),
           dict(KH=KH, KW=KW, U=U, S=stride, HAS_IN=in_scale is not None, HAS_OUT=out_scale is not None,
                PARTIAL=part is not None, PRECISION=precision, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k),
           y, num_warps=warps, num_stages=3 if precision != "ieee" else 1)
    if part is None:
        return None
    return part.view(N, U * U * m_tiles, COUT).sum(1)


def wgrad_splits(CIN, COUT, taps, k_total, block_ci, block_co, block_k, target_programs=1024):
    base = triton.cdiv(CIN, block_ci) * triton.cdiv(COUT, block_co) * taps
    split = max(1, min(-(-target_programs // base), triton.cdiv(k_total, 4 * block_k), 64))
    k_per_split = triton.cdiv(triton.cdiv(k_total, split), block_k) * block_k
    return triton.cdiv(k_total, k_per_split), k_per_split


def wgrad_launch(x, g, in_scale, out_scale, part, up, stride, py, px, KH, KW, precision, split, k_per_split):
    """part [split, KH, KW, CIN, COUT] float32 <- per split, dWk = sum IN x~ . OUT g; g [N, COUT,
    OH, OW] (any strides) in the dot dtype."""
    N, CIN, H, W = x.shape
    COUT, OH, OW = g.shape[1], g.shape[2], g.shape[3]
    U = up
    block_ci, block_co, block_k = wgrad_tiles(CIN, COUT, precision, g.element_size())
    launch(wgrad_kernel, (triton.cdiv(CIN, block_ci), triton.cdiv(COUT, block_co), KH * KW * split),
           (x, g, in_scale if in_scale is not None else g, out_scale if out_scale is not None else g, part,
            N, CIN, COUT, H, W, OH, OW, *x.stride(), *g.stride(), py, px, _offset(py, U), _offset(px, U),
            -(-OH // U), -(-OW // U), k_per_split, split),
           dict(KH=KH, KW=KW, U=U, S=stride, HAS_IN=in_scale is not None, HAS_OUT=out_scale is not None,
                PRECISION=precision, BLOCK_CI=block_ci, BLOCK_CO=block_co, BLOCK_K=block_k),
           part, num_warps=8 if (g.element_size() == 4 or U > 1) and block_ci * block_co >= 64 * 64 else 4,
           num_stages=3 if precision != "ieee" else 1)


def wgrad_tiles(CIN, COUT, precision="tf32", dtype_bytes=2):
    if precision == "ieee":
        return min(64, max(16, triton.next_power_of_2(CIN))), min(32, max(16, triton.next_power_of_2(COUT))), 16
    # 64 x 64 tiles: 128 x 64 and 128 x 128 spilled on sm_80 (triton 3.6) and sm_90 (3.9); fp32
    # operands (TF32) and the zero-insertion path (U = 2) also at 4 warps: 8 warps there, and
    # 16-deep K slices for fp32 operands
    block_ci = 64 if CIN >= 64 else max(16, triton.next_power_of_2(CIN))
    block_co = 64 if COUT >= 64 else max(16, triton.next_power_of_2(COUT))
    return block_ci, block_co, (16 if dtype_bytes == 4 else 32)
