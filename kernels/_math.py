"""Scalar math shared by the kernels, written with plain ``tl`` operations: the CPU interpreter
has no libdevice, so no kernel calls it."""
import triton
import triton.language as tl


@triton.jit
def log1p(z):
    # log(1 + z) to a few ulps for small z (Goldberg's trick: the rounding of 1 + z cancels)
    u = 1.0 + z
    d = u - 1.0
    return tl.where(d == 0.0, z, tl.log(u) * (z / tl.where(d == 0.0, 1.0, d)))


@triton.jit
def tanh(x):
    # tanh(x) = -expm1(-2|x|) / (2 + expm1(-2|x|)) with the sign of x: accurate near 0 (where
    # 2 sigmoid(2x) - 1 would lose relative precision).  expm1 by Kahan's trick:
    # (e - 1) * y / log(e), exact where e rounds to 1.
    y = -2.0 * tl.abs(x)
    e = tl.exp(y)
    log_e = tl.log(e)
    em = tl.where(e == 1.0, y, (e - 1.0) * (y / tl.where(log_e == 0.0, 1.0, log_e)))
    t = -em / (2.0 + em)
    return tl.where(x < 0.0, -t, t)


@triton.jit
def log_sigmoid(x):
    # log sigmoid(x) = min(x, 0) - log1p(exp(-|x|)), finite for every x
    return tl.minimum(x, 0.0) - log1p(tl.exp(-tl.abs(x)))
