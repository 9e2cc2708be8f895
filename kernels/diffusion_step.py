"""One diffusion sampler step, fused: guidance, prediction conversion, x0 clipping, the update
and its noise, in a single pass over the image (elementwise; memory bound).

With out the denoiser output (for classifier-free guidance, out = [cond; uncond] stacked on
the batch and combined as (1 + w) cond - w uncond), s0 = sqrt(abar_t), s1 = sqrt(1 - abar_t):

    eps prediction:  x0 = (x - s1 out) / s0
    x0 prediction:   x0 = out
    v prediction:    x0 = s0 x - s1 out
    x0 = clamp(x0, -1, 1), or clamp(x0, -s, s) / s with a per-sample s (dynamic thresholding)
    eps = (x - s0 x0) / s1
    x_next = c_x0 x0 + c_eps eps + c_x x + sigma z

DDPM ancestral and DDIM are this update with different coefficients (``fastgen.sampling.
diffusion``).  With a learned variance (Improved DDPM) the denoiser also outputs v in [-1, 1]
per element and sigma^2 = exp(f log beta + (1 - f) log beta~), f = (v + 1) / 2.  z is read from a tensor (``NOISE=1``, how tests match the reference exactly) or
drawn in the kernel with Philox from (seed, offset) (``NOISE=2``, production).
Floor: one read of x, out (twice with guidance) and z, one write: ~4 x 4 bytes per element.
"""
import triton
import triton.language as tl


@triton.jit
def diffusion_step_kernel(x_ptr, out_ptr, noise_ptr, y_ptr, scale_ptr, N, uncond_offset, sample_size,
                          s0, s1, c_x0, c_eps, c_x, sigma, guidance, seed, offset, log_var_small, log_var_large,
                          PREDICTION: tl.constexpr, CLIP: tl.constexpr, GUIDED: tl.constexpr,
                          NOISE: tl.constexpr, LEARNED_VARIANCE: tl.constexpr, BLOCK: tl.constexpr):
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = idx < N
    x = tl.load(x_ptr + idx, mask=ok, other=0.0).to(tl.float32)
    out_idx = idx
    if LEARNED_VARIANCE:   # out holds [prediction; v] per sample: twice x's channels
        out_idx = (idx // sample_size) * 2 * sample_size + idx % sample_size
    out = tl.load(out_ptr + out_idx, mask=ok, other=0.0).to(tl.float32)
    if GUIDED:
        uncond = tl.load(out_ptr + uncond_offset + out_idx, mask=ok, other=0.0).to(tl.float32)
        out = (1.0 + guidance) * out - guidance * uncond
    if LEARNED_VARIANCE:   # Improved DDPM: log var = f log beta + (1 - f) log beta~, f = (v + 1) / 2
        frac = (tl.load(out_ptr + out_idx + sample_size, mask=ok, other=0.0).to(tl.float32) + 1.0) / 2.0
        sigma = tl.exp(0.5 * (frac * log_var_large + (1.0 - frac) * log_var_small))
    if PREDICTION == 0:
        x0 = (x - s1 * out) / s0
    elif PREDICTION == 1:
        x0 = out
    else:
        x0 = s0 * x - s1 * out
    if CLIP == 1:
        x0 = tl.minimum(tl.maximum(x0, -1.0), 1.0)
    elif CLIP == 2:        # dynamic thresholding with a per-sample scale s >= 1
        s = tl.load(scale_ptr + idx // sample_size, mask=ok, other=1.0)
        x0 = tl.minimum(tl.maximum(x0, -s), s) / s
    eps = (x - s0 * x0) / s1
    y = c_x0 * x0 + c_eps * eps + c_x * x
    if NOISE == 1:
        y += sigma * tl.load(noise_ptr + idx, mask=ok, other=0.0).to(tl.float32)
    elif NOISE == 2:
        y += sigma * tl.randn(seed, offset + idx)
    tl.store(y_ptr + idx, y.to(y_ptr.dtype.element_ty), mask=ok)


def diffusion_step(x, out, noise, y, coefficients, prediction, clip, guidance, seed=0, offset=0,
                   learned_variance=None, threshold_scale=None, block=1024):
    """Launch one step over contiguous x [B, ...], out ([2B, ...] when guided; twice the
    channels with ``learned_variance`` = (log beta~, log beta)), noise or None, y.
    coefficients = (s0, s1, c_x0, c_eps, c_x, sigma); guidance: None or w."""
    n = x.numel()
    noise_mode = 0 if coefficients[5] == 0 else (1 if noise is not None else 2)
    log_small, log_large = learned_variance or (0.0, 0.0)
    diffusion_step_kernel[(triton.cdiv(n, block),)](
        x, out, noise if noise is not None else x, y, threshold_scale if threshold_scale is not None else x,
        n, out.numel() // 2, n // x.shape[0],
        *[float(c) for c in coefficients], float(guidance or 0.0), seed, offset, float(log_small), float(log_large),
        PREDICTION={"eps": 0, "x0": 1, "v": 2}[prediction], GUIDED=guidance is not None,
        CLIP=2 if threshold_scale is not None else int(bool(clip)),
        NOISE=noise_mode, LEARNED_VARIANCE=learned_variance is not None, BLOCK=block, num_warps=4)
    return y
