"""Plain-PyTorch references: the specification of every fastgen op.

The CPU path and the tests call these same functions; there is no second copy of the
math anywhere.  Shape legend: B batch, C channels, H/W image size, T sequence length,
k kernel size, d dilation.
"""
import torch
import torch.nn.functional as F


STACKS = ("raster", "vertical", "horizontal")


def pixelcnn_mask(out_channels, in_channels, kernel_size, mask_type="B", color_groups=1,
                  stack="raster", dtype=torch.float32, device=None):
    """A PixelCNN mask, ``[C_out, C_in, k, k]`` of 0/1 (van den Oord et al. 2016), c = k // 2.

    ``stack`` picks which taps exist:
    - 'raster' (PixelCNN): rows above the centre, and the centre row left of the centre;
    - 'vertical' (Gated PixelCNN vertical stack): rows above the centre, and for type 'B'
      the whole centre row (its inputs only ever carry rows above, so no pixel sees itself);
    - 'horizontal' (Gated PixelCNN horizontal stack): the centre row left of the centre.
    At the centre tap itself ('raster' and 'horizontal'), with the channels of input and
    output split into ``color_groups`` equal groups (R, G, B for 3), output group ``go``
    sees input group ``gi`` iff ``gi < go`` (type 'A') or ``gi <= go`` (type 'B').  With
    one group, type 'A' drops the centre tap and type 'B' keeps it.
    """
    k = kernel_size
    c = k // 2
    mask = torch.zeros(out_channels, in_channels, k, k, dtype=dtype, device=device)
    if stack in ("raster", "vertical"):
        mask[:, :, :c, :] = 1
    if stack == "vertical":
        if mask_type == "B":
            mask[:, :, c, :] = 1
        return mask
    mask[:, :, c, :c] = 1
    go = torch.arange(out_channels, device=device) // (out_channels // color_groups)
    gi = torch.arange(in_channels, device=device) // (in_channels // color_groups)
    sees = gi[None, :] < go[:, None] if mask_type == "A" else gi[None, :] <= go[:, None]
    mask[:, :, c, c] = sees.to(dtype)
    return mask


def masked_conv2d(x, weight, bias=None, mask_type="B", color_groups=1, dilation=1, stack="raster"):
    """PixelCNN masked convolution, stride 1, "same" padding.

    x: [B, C_in, H, W], weight: [C_out, C_in, k, k] (k odd), bias: [C_out] or None
    -> y: [B, C_out, H, W] = conv2d(x, weight * mask, bias, padding=d*(k//2), dilation=d),
    mask = pixelcnn_mask(C_out, C_in, k, mask_type, color_groups, stack)
    """
    c_out, c_in, k, _ = weight.shape
    mask = pixelcnn_mask(c_out, c_in, k, mask_type, color_groups, stack, weight.dtype, weight.device)
    return F.conv2d(x, weight * mask, bias, padding=dilation * (k // 2), dilation=dilation)


def causal_conv1d(x, weight, bias=None, dilation=1):
    """Causal dilated convolution: output length equals input length.

    x: [B, C_in, T], weight: [C_out, C_in, k], bias: [C_out] or None
    -> y: [B, C_out, T] = conv1d(pad_left(x, d*(k-1)), weight, bias, dilation=d)
    so y[..., t] depends on x[..., t - d*(k-1) : t+1 : d] only.
    """
    k = weight.shape[-1]
    return F.conv1d(F.pad(x, (dilation * (k - 1), 0)), weight, bias, dilation=dilation)


def gated_pixel_step(p_in, v, cond_h, weights, gumbel, c, inv_temperature, scale):
    """One Gated PixelCNN sampling step at column c (the math of kernels/gated_pixel_step.py).

    p_in: [L, B, CH] layer inputs at (r, c-1); v: [L, B, W, 2CH] the row's vertical
    pre-activations; cond_h: [L, B, 2CH]; weights = (wh [L, 2, CH, 2CH], bh [L, 2CH],
    wl [L, 2CH, 2CH], bl, wo [L, CH, CH], bo [L, CH], w1 [CH, HC], b1, w2 [HC, LEVELS], b2,
    embed_w [CH], embed_b [CH]); gumbel: [B, LEVELS].
    -> (x [B] long, p_out [L, B, CH] = layer inputs at (r, c), e [B, CH] = embed(x)).
    """
    wh, bh, wl, bl, wo, bo, w1, b1, w2, b2, embed_w, embed_b = weights
    L, B, CH = p_in.shape
    cur = torch.zeros(B, CH, dtype=p_in.dtype, device=p_in.device)
    p_out = torch.empty_like(p_in)
    for layer in range(L):
        pre = (p_in[layer] @ wh[layer, 0] + cur @ wh[layer, 1] + v[layer, :, c] @ wl[layer]
               + bh[layer] + bl[layer] + cond_h[layer])
        gated = torch.tanh(pre[:, :CH]) * torch.sigmoid(pre[:, CH:])
        out = gated @ wo[layer] + bo[layer]
        if layer > 0:
            out = out + cur
            p_out[layer] = cur
        cur = out
    logits = torch.relu(torch.relu(cur) @ w1 + b1) @ w2 + b2
    x = (logits * inv_temperature + gumbel).argmax(dim=1)
    e = (x.to(p_in.dtype) * scale - 1.0)[:, None] * embed_w + embed_b
    p_out[0] = e
    return x, p_out, e


def _mm(x, w):
    """x @ w as the fused WaveNet kernels compute it: x rounded to w's dtype (fp32, fp16 or bf16),
    products accumulated in fp32."""
    return x.to(w.dtype).float() @ w.float()


def wavenet_step(prev, queue, queue_offsets, t, cycle, kernel_size, weights, gterm, local_t, gumbel,
                 inv_temperature):
    """One WaveNet generation step (the math of kernels/wavenet_step.py).

    prev: codes [B] of the previous sample; queue [slots, B, R] holds layer l's past inputs
    in rows queue_offsets[l] .. + d_l (k-1) (slot = time mod span); gterm [L, B, 2R];
    local_t [B, LC] or None; weights = (embed [A, R], wtap [L, k, R, 2R], bconv [L, 2R],
    wlc [L, LC, 2R], wres [L, R, R], bres, wskip [L, R, S], bskip, w1 [S, S], b1, w2 [S, A], b2).
    -> (codes [B], pushed [L, B, R] fp32: each layer's input at t, for slot t mod span).

    Precision: the matrices and the queue may be fp16/bf16 (biases, gterm, local, gumbel fp32);
    every matmul rounds its left operand to the weights' dtype and accumulates in fp32, and
    everything else (h, skip, gating, logits, argmax) is fp32.  The queue keeps h rounded to
    its dtype.
    """
    embed, wtap, bconv, wlc, wres, bres, wskip, bskip, w1, b1, w2, b2 = weights
    L, k, R, _ = wtap.shape
    h = embed[prev].float()
    skip = 0
    pushed = []
    for layer in range(L):
        d = 2 ** (layer % cycle)
        span = d * (k - 1)
        offset = int(queue_offsets[layer])
        z = _mm(h, wtap[layer, k - 1]) + bconv[layer] + gterm[layer]
        for j in range(k - 1):
            z = z + _mm(queue[offset + (t - (k - 1 - j) * d) % span], wtap[layer, j])
        if local_t is not None:
            z = z + _mm(local_t, wlc[layer])
        u = torch.tanh(z[:, :R]) * torch.sigmoid(z[:, R:])
        skip = skip + _mm(u, wskip[layer]) + bskip[layer]
        pushed.append(h)
        h = h + _mm(u, wres[layer]) + bres[layer]
    logits = _mm(torch.relu(_mm(torch.relu(skip), w1) + b1), w2) + b2
    return (logits * inv_temperature + gumbel).argmax(dim=1), torch.stack(pushed)


def wavenet_push(queue, pushed, queue_offsets, t, cycle, kernel_size):
    """Write ``pushed`` [L, B, R] (from ``wavenet_step`` at time t) into the queue's slots
    t mod span, in place (rounded to the queue's dtype)."""
    for layer in range(pushed.shape[0]):
        span = 2 ** (layer % cycle) * (kernel_size - 1)
        queue[int(queue_offsets[layer]) + t % span] = pushed[layer]


def wavenet_steps(prev, queue, queue_offsets, t0, cycle, kernel_size, weights, gterm, local, gumbel,
                  inv_temperature):
    """T WaveNet generation steps t0 .. t0+T-1, each drawn code the next step's input (the math
    of the persistent kernel in kernels/wavenet_step.py): ``wavenet_step`` and ``wavenet_push``
    in a loop.  local [T, B, LC] or None, gumbel [T, B, A]; the other arguments as in
    ``wavenet_step``.  -> (codes [T, B], the queue after the T steps; the input is not changed).
    """
    queue = queue.clone()
    codes = []
    for i in range(gumbel.shape[0]):
        prev, pushed = wavenet_step(prev, queue, queue_offsets, t0 + i, cycle, kernel_size, weights, gterm,
                                    None if local is None else local[i], gumbel[i], inv_temperature)
        wavenet_push(queue, pushed, queue_offsets, t0 + i, cycle, kernel_size)
        codes.append(prev)
    return torch.stack(codes), queue


def dynamic_threshold(x0, percentile):
    """Imagen's dynamic thresholding scale per sample: s = max(1, percentile of |x0|) -> [B]."""
    return torch.quantile(x0.abs().flatten(1).float(), percentile, dim=1).clamp(min=1.0)


def _prediction_to_x0(x32, out, s0, s1, prediction):
    """x0 from a denoiser output read as 'eps' | 'x0' | 'v' | 'score' (Tweedie: x0 = (x + s1^2 s) / s0)."""
    if prediction == "eps":
        return (x32 - s1 * out) / s0
    if prediction == "x0":
        return out
    if prediction == "v":
        return s0 * x32 - s1 * out
    return (x32 + s1 * s1 * out) / s0


def guided(out, w):
    """Classifier-free guidance: out = [cond; uncond] on the batch -> (1 + w) cond - w uncond."""
    cond, uncond = out.chunk(2)
    return (1.0 + w) * cond - w * uncond


def diffusion_x0(x, out, s0, s1, prediction="eps", guidance=None, learned_variance=False):
    """The x0 estimate a diffusion step starts from (after guidance), before any clipping."""
    out = out.float()
    if learned_variance:
        out = out.chunk(2, dim=1)[0]
    if guidance is not None:
        out = guided(out, guidance)
    return _prediction_to_x0(x.float(), out, s0, s1, prediction)


def diffusion_step(x, out, noise, coefficients, prediction="eps", clip=False, guidance=None,
                   learned_variance=None, threshold_scale=None, aux=None, keep=None):
    """One diffusion / score-based sampler step (the math of kernels/diffusion_step.py).

    x: [B, ...]; out: the denoiser output [B, ...] ([2B, ...] = [cond; uncond] with
    ``guidance`` w: out = (1 + w) cond - w uncond); prediction 'eps' | 'x0' | 'v' | 'score';
    coefficients = (s0 = sqrt(abar_t), s1 = sqrt(1 - abar_t), c_x0, c_eps, c_x, sigma[, c_aux]),
    or a [B, 7] tensor of them per sample; noise: like x (used when sigma > 0, always with a
    tensor); aux: like x, weighted by c_aux.  learned_variance = (log beta~, log beta): out has
    twice x's channels, [prediction; v], and sigma^2 = exp(f log beta + (1 - f) log beta~),
    f = (v + 1) / 2, per element (Nichol & Dhariwal 2021).  threshold_scale [B]: dynamic
    thresholding (Saharia et al. 2022), x0 -> clamp(x0, -s, s) / s, instead of ``clip``.
    -> y = c_x0 x0 + c_eps eps + c_x x + c_aux aux + sigma noise, with x0 clipped to [-1, 1] if
    ``clip`` and eps = (x - s0 x0) / s1 recomputed from the (clipped) x0; with keep = (k_x0, k_x)
    -> (y, k_x0 x0 + k_x x), the quantity a multistep sampler carries to its next step.
    """
    per_sample = torch.is_tensor(coefficients)
    if per_sample:    # one row per sample, broadcast over the other dimensions
        columns = coefficients.float().view(x.shape[0], 7, *[1] * (x.dim() - 1)).unbind(1)
    else:
        columns = (*coefficients, 0.0) if len(coefficients) == 6 else tuple(coefficients)
    s0, s1, c_x0, c_eps, c_x, sigma, c_aux = columns
    x32, out = x.float(), out.float()
    v = None
    if learned_variance is not None:     # out = [prediction; v] along the channels (Improved DDPM)
        out, v = out.chunk(2, dim=1)
    if guidance is not None:
        out = guided(out, guidance)
        v = v.chunk(2)[0] if v is not None else None
    if v is not None and (per_sample or sigma != 0):
        log_small, log_large = learned_variance
        frac = (v + 1) / 2
        sigma = torch.exp(0.5 * (frac * log_large + (1 - frac) * log_small))
    x0 = _prediction_to_x0(x32, out, s0, s1, prediction)
    if threshold_scale is not None:      # dynamic thresholding: clamp to [-s, s], then divide by s
        scale = threshold_scale.view(-1, *[1] * (x.dim() - 1))
        x0 = torch.maximum(torch.minimum(x0, scale), -scale) / scale
    elif clip:
        x0 = x0.clamp(-1.0, 1.0)
    eps = (x32 - s0 * x0) / s1
    y = c_x0 * x0 + c_eps * eps + c_x * x32
    if aux is not None:
        y = y + c_aux * aux.float()
    if torch.is_tensor(sigma) or sigma != 0:
        y = y + sigma * noise.float()
    if keep is None:
        return y.to(x.dtype)
    return y.to(x.dtype), (keep[0] * x0 + keep[1] * x32).to(x.dtype)


def score_noise_norms(out, noise, guidance=None):
    """Per-sample L2 norms for the predictor-corrector's step size -> [B, 2] float32:
    (||out_b||, ||z_b||), with out [B, ...] guided as in ``diffusion_step`` ([2B, ...] =
    [cond; uncond] with ``guidance``) and z = noise [B, ...]."""
    out = out.float()
    if guidance is not None:
        out = guided(out, guidance)
    return torch.stack([out.flatten(1).norm(dim=1), noise.float().flatten(1).norm(dim=1)], dim=1)


def _concat_elu(x):
    return F.elu(torch.cat([x, -x], dim=1))


def _shifted_conv_at(src, weight, bias, i, j0, j1, left):
    """A stride-1 shifted conv with packed weight [KH * KW, 2 * Cin, Cout] (taps row-major)
    applied to concat_elu of the zero-padded map ``src`` [B, Cin, h + 1, w + 2] at output row i,
    columns j0 .. j1 - 1: output (i, j) reads data rows i + 2 - KH .. i + 1 and data columns
    j + 1 - left .. j - left + KW.  Returns [B, Cout, 1, j1 - j0]."""
    taps, two_cin, cout = weight.shape
    kw = taps // 2
    w = weight.to(src.dtype).view(2, kw, two_cin, cout).permute(3, 2, 0, 1)    # [Cout, 2Cin, 2, KW]
    window = src[:, :, i:i + 2, j0 + 1 - left:j1 + kw - left]
    return F.conv2d(_concat_elu(window), w, bias.to(src.dtype))


def pixelcnnpp_resnet_at(x, aux, mid, out, w1, b1, w_aux, b_aux, w2, b2, cond_bias, i, j0, j1, left):
    """One PixelCNN++ GatedResnet at output row i, columns j0 .. j1 - 1 of its maps (eval mode,
    no dropout); writes ``mid`` and ``out`` there, in place, and nothing else.

    Maps are zero-padded buffers [B, ch, h + 1, w + 2] (position (i, j) at [:, :, i + 1, j + 1];
    one zero row on top, one zero column each side): x, mid, out [B, C, ...], each aux map
    [B, A_k, ...] (``aux``: a list of 0, 1 or 2 maps, concatenated along channels, A = sum A_k).
    Packed weights (taps row-major over a 2 x KW window, KW = 3 for a DownShiftedConv with
    left = 1, KW = 2 for a DownRightShiftedConv with left = 1): w1 [2KW, 2C, C], b1 [C],
    w_aux [2A, C] / b_aux [C] (None without aux), w2 [2KW, 2C, 2C], b2 [2C]; cond_bias [B, 2C]
    or None.  With concat_elu(v) = elu([v, -v]) along channels:

        mid = conv1(concat_elu(x)) + b1 + concat_elu(cat(aux)) @ w_aux + b_aux
        [a, g] = conv2(concat_elu(mid)) + b2 + cond_bias
        out = x + a * sigmoid(g)

    conv2 reads mid at the columns left of j0 (and right of j1 - 1 for KW = 3): those must be
    final already, or be among the columns written here."""
    cols = slice(j0 + 1, j1 + 1)
    h = _shifted_conv_at(x, w1, b1, i, j0, j1, left)
    if aux:
        a = torch.cat([m[:, :, i + 1:i + 2, cols] for m in aux], dim=1)
        h = h + F.conv2d(_concat_elu(a), w_aux.to(a.dtype).t()[:, :, None, None], b_aux.to(a.dtype))
    mid[:, :, i + 1:i + 2, cols] = h
    h = _shifted_conv_at(mid, w2, b2, i, j0, j1, left)
    if cond_bias is not None:
        h = h + cond_bias.to(h.dtype)[:, :, None, None]
    a, g = h.chunk(2, dim=1)
    out[:, :, i + 1:i + 2, cols] = x[:, :, i + 1:i + 2, cols] + a * torch.sigmoid(g)
