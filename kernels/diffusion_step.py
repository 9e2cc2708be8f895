"""One diffusion / score-based sampler step, fused: guidance, prediction conversion, x0
clipping, the update and its noise, in a single pass over the image (elementwise; memory bound).

With out the denoiser output (for classifier-free guidance, out = [cond; uncond] stacked on
the batch and combined as (1 + w) cond - w uncond), s0 = sqrt(abar_t), s1 = sqrt(1 - abar_t)
(or s0 = 1, s1 = sigma for variance-exploding models):

    eps prediction:    x0 = (x - s1 out) / s0
    x0 prediction:     x0 = out
    v prediction:      x0 = s0 x - s1 out
    score prediction:  x0 = (x + s1^2 out) / s0          (Tweedie; then eps = -s1 out)
    x0 = clamp(x0, -1, 1), or clamp(x0, -s, s) / s with a per-sample s (dynamic thresholding)
    eps = (x - s0 x0) / s1
    x_next = c_x0 x0 + c_eps eps + c_x x + c_aux aux + sigma z
    kept   = k_x0 x0 + k_x x                               (optional second output)

Every sampler in ``fastgen.sampling.diffusion`` is this update with its own coefficients:
DDPM / DDIM / Euler / the VE predictor and probability-flow ODE / Langevin and SGLD use x0,
eps, x and z; Heun's correction and DPM-Solver++(2M) also read ``aux`` (the half step or the
previous x0) and write ``kept`` (the next step's aux).  The coefficients are kernel arguments,
or, with ``PER_SAMPLE``, rows of a [B, 7] tensor (s0, s1, c_x0, c_eps, c_x, sigma, c_aux) --
the predictor-corrector's Langevin step size depends on each sample's norms.

With a learned variance (Improved DDPM) the denoiser also outputs v in [-1, 1] per element and
sigma^2 = exp(f log beta + (1 - f) log beta~), f = (v + 1) / 2.  z is read from a tensor
(``NOISE=1``, how tests match the reference exactly) or drawn in the kernel with Philox from
(seed, offset + element index) (``NOISE=2``, production).
Floor: one read of x, out (twice with guidance) and z, one write: ~4 x 4 bytes per element
(+4 for aux, +4 for kept).

``score_noise_norms_kernel`` is the reduction the predictor-corrector needs first: per sample,
the sums of squares of the (guided) output and of z -- the same z the step then draws, since
both kernels draw element i from Philox at (seed, offset + i).  ``corrector_coefficients_kernel``
then turns those partial sums into the corrector's [B, 7] rows on the device (Song et al. 2021,
Algorithm 4/5): score_norm = ||out|| (/ s1 for an eps model), e = 2 (snr ||z|| / max(score_norm,
1e-12))^2, row = (s0, s1, 0, -e / s1, 1, sqrt(2 e), 0) -- so the corrector is three launches
(norms, rows, step) and no other op.
"""
import triton
import triton.language as tl

from fastgen.kernels._launch import launch

COEFFICIENTS = 7      # s0, s1, c_x0, c_eps, c_x, sigma, c_aux


@triton.jit(do_not_specialize=["seed", "offset"])   # new values every step: no recompiles
def diffusion_step_kernel(x_ptr, out_ptr, noise_ptr, aux_ptr, coef_ptr, y_ptr, kept_ptr, scale_ptr,
                          N, uncond_offset, sample_size,
                          s0, s1, c_x0, c_eps, c_x, sigma, c_aux, k_x0, k_x, guidance, seed, offset,
                          log_var_small, log_var_large,
                          PREDICTION: tl.constexpr, CLIP: tl.constexpr, GUIDED: tl.constexpr,
                          NOISE: tl.constexpr, LEARNED_VARIANCE: tl.constexpr, PER_SAMPLE: tl.constexpr,
                          AUX: tl.constexpr, KEEP: tl.constexpr, BLOCK: tl.constexpr):
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = idx < N
    sample = idx // sample_size
    if PER_SAMPLE:         # each element reads its sample's row (a few cached loads, no extra traffic)
        row = coef_ptr + sample * 7
        s0 = tl.load(row + 0, mask=ok, other=1.0)
        s1 = tl.load(row + 1, mask=ok, other=1.0)
        c_x0 = tl.load(row + 2, mask=ok, other=0.0)
        c_eps = tl.load(row + 3, mask=ok, other=0.0)
        c_x = tl.load(row + 4, mask=ok, other=0.0)
        sigma = tl.load(row + 5, mask=ok, other=0.0)
        c_aux = tl.load(row + 6, mask=ok, other=0.0)
    x = tl.load(x_ptr + idx, mask=ok, other=0.0).to(tl.float32)
    out_idx = idx
    if LEARNED_VARIANCE:   # out holds [prediction; v] per sample: twice x's channels
        out_idx = sample * 2 * sample_size + idx % sample_size
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
    elif PREDICTION == 2:
        x0 = s0 * x - s1 * out
    else:
        x0 = (x + s1 * s1 * out) / s0
    if CLIP == 1:
        x0 = tl.minimum(tl.maximum(x0, -1.0), 1.0)
    elif CLIP == 2:        # dynamic thresholding with a per-sample scale s >= 1
        s = tl.load(scale_ptr + sample, mask=ok, other=1.0)
        x0 = tl.minimum(tl.maximum(x0, -s), s) / s
    eps = (x - s0 * x0) / s1
    y = c_x0 * x0 + c_eps * eps + c_x * x
    if AUX:
        y += c_aux * tl.load(aux_ptr + idx, mask=ok, other=0.0).to(tl.float32)
    if NOISE == 1:
        y += sigma * tl.load(noise_ptr + idx, mask=ok, other=0.0).to(tl.float32)
    elif NOISE == 2:
        y += sigma * tl.randn(seed, offset + idx)
    tl.store(y_ptr + idx, y.to(y_ptr.dtype.element_ty), mask=ok)
    if KEEP:
        tl.store(kept_ptr + idx, (k_x0 * x0 + k_x * x).to(kept_ptr.dtype.element_ty), mask=ok)


@triton.jit(do_not_specialize=["seed", "offset"])
def score_noise_norms_kernel(out_ptr, noise_ptr, partial_ptr, uncond_offset, sample_size, guidance, seed, offset,
                             GUIDED: tl.constexpr, NOISE: tl.constexpr, BLOCK: tl.constexpr):
    """Program (b, j) writes partial_ptr[b, j] = (sum out^2, sum z^2) over block j of sample b."""
    sample, block = tl.program_id(0), tl.program_id(1)
    j = block * BLOCK + tl.arange(0, BLOCK)
    ok = j < sample_size
    idx = sample * sample_size + j          # the element index the step kernel uses
    out = tl.load(out_ptr + idx, mask=ok, other=0.0).to(tl.float32)
    if GUIDED:
        uncond = tl.load(out_ptr + uncond_offset + idx, mask=ok, other=0.0).to(tl.float32)
        out = (1.0 + guidance) * out - guidance * uncond
    if NOISE == 1:
        z = tl.load(noise_ptr + idx, mask=ok, other=0.0).to(tl.float32)
    else:
        z = tl.where(ok, tl.randn(seed, offset + idx), 0.0)
    partial = partial_ptr + (sample * tl.num_programs(1) + block) * 2
    tl.store(partial, tl.sum(out * out, axis=0))
    tl.store(partial + 1, tl.sum(z * z, axis=0))


@triton.jit
def corrector_coefficients_kernel(partial_ptr, rows_ptr, batch, blocks, partial_stride_b, partial_stride_j,
                                  rows_stride_b, snr, s0, s1,
                                  EPS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr):
    """Program i writes rows b in [i BLOCK_B, (i + 1) BLOCK_B): the sums over j of
    partial[b, j] = (sum out^2, sum z^2), then the Langevin corrector's coefficients."""
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    ok = b < batch
    out_sq = tl.zeros([BLOCK_B], dtype=tl.float32)
    z_sq = tl.zeros([BLOCK_B], dtype=tl.float32)
    for j0 in range(0, blocks, BLOCK_J):       # a few hundred blocks at most (1024 elements each)
        j = j0 + tl.arange(0, BLOCK_J)
        mask = ok[:, None] & (j < blocks)[None, :]
        at = partial_ptr + b[:, None] * partial_stride_b + j[None, :] * partial_stride_j
        out_sq += tl.sum(tl.load(at, mask=mask, other=0.0), axis=1)
        z_sq += tl.sum(tl.load(at + 1, mask=mask, other=0.0), axis=1)
    score_norm = tl.sqrt(out_sq)
    if EPS:                                     # score = -eps / s1
        score_norm = score_norm / s1
    ratio = snr * tl.sqrt(z_sq) / tl.maximum(score_norm, 1e-12)
    e = 2.0 * ratio * ratio
    zero = tl.zeros([BLOCK_B], dtype=tl.float32)
    row = rows_ptr + b * rows_stride_b          # columns in StepCoefficients order
    tl.store(row + 0, zero + s0, mask=ok)
    tl.store(row + 1, zero + s1, mask=ok)
    tl.store(row + 2, zero, mask=ok)
    tl.store(row + 3, -e / s1, mask=ok)
    tl.store(row + 4, zero + 1.0, mask=ok)
    tl.store(row + 5, tl.sqrt(2.0 * e), mask=ok)
    tl.store(row + 6, zero, mask=ok)


def diffusion_step(x, out, noise, y, coefficients, prediction, clip, guidance, seed=0, offset=0,
                   learned_variance=None, threshold_scale=None, aux=None, per_sample=None, kept=None, keep=(0.0, 0.0),
                   block=1024):
    """Launch one step over contiguous x [B, ...], out ([2B, ...] when guided; twice the
    channels with ``learned_variance`` = (log beta~, log beta)), noise or None, y.
    coefficients = (s0, s1, c_x0, c_eps, c_x, sigma, c_aux), or per_sample [B, 7] float32
    (then noise or seed must be given); aux like x or None; kept like x (written with
    k_x0, k_x = keep) or None; guidance: None or w."""
    n = x.numel()
    s0, s1, c_x0, c_eps, c_x, sigma, c_aux = (float(c) for c in coefficients)
    noise_mode = 0 if sigma == 0 and per_sample is None else (1 if noise is not None else 2)
    log_small, log_large = learned_variance or (0.0, 0.0)
    launch(diffusion_step_kernel, (triton.cdiv(n, block),), (
        x, out, noise if noise is not None else x, aux if aux is not None else x,
        per_sample if per_sample is not None else x, y, kept if kept is not None else y,
        threshold_scale if threshold_scale is not None else x,
        n, out.numel() // 2, n // x.shape[0],
        s0, s1, c_x0, c_eps, c_x, sigma, c_aux, float(keep[0]), float(keep[1]), float(guidance or 0.0), seed, offset,
        float(log_small), float(log_large)),
        dict(PREDICTION={"eps": 0, "x0": 1, "v": 2, "score": 3}[prediction], GUIDED=guidance is not None,
             CLIP=2 if threshold_scale is not None else int(bool(clip)), NOISE=noise_mode,
             LEARNED_VARIANCE=learned_variance is not None, PER_SAMPLE=per_sample is not None, AUX=aux is not None,
             KEEP=kept is not None, BLOCK=block),
        y, num_warps=4, unspecialized=("seed", "offset"))
    return y


def norms_blocks(sample_size):
    """(BLOCK, blocks per sample) of the norms kernel: up to 1024 elements per program."""
    block = min(1024, triton.next_power_of_2(sample_size))
    return block, triton.cdiv(sample_size, block)


def score_noise_norms(out, noise, partial, sample_size, guidance, seed=0, offset=0):
    """Launch the per-sample sums of squares: out [B, ...] ([2B, ...] when guided), noise
    [B, ...] or None (Philox from seed, offset), partial [B, blocks, 2] float32 (``norms_blocks``)."""
    batch = partial.shape[0]
    block, blocks = norms_blocks(sample_size)
    launch(score_noise_norms_kernel, (batch, blocks),
           (out, noise if noise is not None else out, partial, out.numel() // 2, sample_size, float(guidance or 0.0),
            seed, offset),
           dict(GUIDED=guidance is not None, NOISE=1 if noise is not None else 2, BLOCK=block),
           partial, num_warps=4, unspecialized=("seed", "offset"))
    return partial


def corrector_coefficients(partial, rows, snr, s0, s1, prediction):
    """Launch the Langevin corrector's rows: partial [B, blocks, 2] float32 (``score_noise_norms``)
    -> rows [B, 7] float32, prediction 'eps' | 'score'.  Any batch / block strides; each pair
    of partial and each row's 7 columns adjacent (stride 1)."""
    batch, blocks = partial.shape[0], partial.shape[1]
    block_b = min(32, triton.next_power_of_2(batch))
    launch(corrector_coefficients_kernel, (triton.cdiv(batch, block_b),),
           (partial, rows, batch, blocks, partial.stride(0), partial.stride(1), rows.stride(0),
            float(snr), float(s0), float(s1)),
           dict(EPS=prediction == "eps", BLOCK_B=block_b, BLOCK_J=min(64, triton.next_power_of_2(blocks))),
           rows, num_warps=1)
    return rows
