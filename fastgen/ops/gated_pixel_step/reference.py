"""Plain-PyTorch reference of the Gated PixelCNN sampling step: the specification of
``fastgen.ops.gated_pixel_step`` (the CPU path and the tests call it).
"""
from typing import Tuple

import torch
from torch import Tensor

from fastgen.ops.gated_pixel_step.bundles import GatedStepWeights


def gated_pixel_step(p_in: Tensor, v: Tensor, cond_h: Tensor, weights: GatedStepWeights, gumbel: Tensor, c: int,
                     inv_temperature: float, scale: float) -> Tuple[Tensor, Tensor, Tensor]:
    """One Gated PixelCNN sampling step at column c (the math of kernels/gated_pixel_step.py).

    p_in: [L, B, CH] layer inputs at (r, c-1); v: [L, B, W, 2CH] the row's vertical
    pre-activations; cond_h: [L, B, 2CH]; weights: ``GatedStepWeights`` (shapes there);
    gumbel: [B, LEVELS].
    -> (x [B] long, p_out [L, B, CH] = layer inputs at (r, c), e [B, CH] = embed(x)).
    """
    w = weights
    L, B, CH = p_in.shape
    cur = torch.zeros(B, CH, dtype=p_in.dtype, device=p_in.device)
    p_out = torch.empty_like(p_in)
    for layer in range(L):
        pre = (p_in[layer] @ w.wh[layer, 0] + cur @ w.wh[layer, 1] + v[layer, :, c] @ w.wl[layer]
               + w.bh[layer] + w.bl[layer] + cond_h[layer])
        gated = torch.tanh(pre[:, :CH]) * torch.sigmoid(pre[:, CH:])
        out = gated @ w.wo[layer] + w.bo[layer]
        if layer > 0:
            out = out + cur
            p_out[layer] = cur
        cur = out
    logits = torch.relu(torch.relu(cur) @ w.w1 + w.b1) @ w.w2 + w.b2
    x = (logits * inv_temperature + gumbel).argmax(dim=1)
    e = (x.to(p_in.dtype) * scale - 1.0)[:, None] * w.embed_w + w.embed_b
    p_out[0] = e
    return x, p_out, e
