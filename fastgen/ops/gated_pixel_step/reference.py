"""Plain-PyTorch reference of the Gated PixelCNN sampling step: the specification of
``fastgen.ops.gated_pixel_step`` (the CPU path and the tests call it).
"""
import torch


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
