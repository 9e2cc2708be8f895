"""Plain-PyTorch reference of the Gated PixelCNN sampling step and row: the specification of
``fastgen.ops.gated_pixel_step`` and ``gated_vertical_row`` (the CPU path and the tests call it).
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fastgen.ops.gated_pixel_step.bundles import GatedStepWeights, GatedVerticalWeights


def gated_pixel_step(p_in: Tensor, v: Tensor, cond_h: Tensor, weights: GatedStepWeights, gumbel: Tensor, c: int,
                     inv_temperature: float, scale: float) -> Tuple[Tensor, Tensor, Tensor]:
    """One Gated PixelCNN sampling step at column c (the math of kernels/gated_pixel_step.py).

    p_in: [L, B, CH] layer inputs at (r, c-1), not read at c = 0 (column -1 is zero padding);
    v: [L, B, W, 2CH] the row's vertical pre-activations; cond_h: [L, B, 2CH]; weights:
    ``GatedStepWeights`` (shapes there); gumbel: [B, LEVELS].
    -> (x [B] long, p_out [L, B, CH] = layer inputs at (r, c), e [B, CH] = embed(x)).
    """
    w = weights
    L, B, CH = p_in.shape
    if c == 0:
        p_in = torch.zeros_like(p_in)
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


def gated_vertical_row(vin: Tensor, weights: GatedVerticalWeights, cond_v: Tensor, r: int) -> Tuple[Tensor, Tensor]:
    """Every layer's vertical stack for row r (the math of kernels/gated_pixel_step.py's row kernel).

    vin: [L, B, 2, W+2, CH] the stacks' inputs u_l of rows r-1 and r, a ring of two zero-padded
    rows (row r in slot r % 2; only u_0 of row r-1 and u_l, l >= 1, of row r-1 are read: the rest
    of row r is what this computes); weights: ``GatedVerticalWeights`` (shapes there); cond_v:
    [L, B, 2CH] each layer's vertical conditioning term.
    -> (v [L, B, W, 2CH] the pre-activations (without cond_v), u [L-1, B, W, CH] = u_1 .. u_{L-1}
    of row r = tanh(v[l, ..., :CH] + cond_v[l, :CH]) * sigmoid(v[l, ..., CH:] + cond_v[l, CH:])).
    """
    wv, bv = weights
    L, B, _, W2, CH = vin.shape
    W = W2 - 2
    above = vin[:, :, 1 - r % 2]                        # [L, B, W+2, CH] row r - 1
    v = torch.empty(L, B, W, 2 * CH, dtype=vin.dtype, device=vin.device)
    u = torch.empty(max(L - 1, 0), B, W, CH, dtype=vin.dtype, device=vin.device)
    row = None                                          # u_l of row r, zero-padded [B, W+2, CH]
    for layer in range(L):
        pre = bv[layer] + sum(above[layer][:, dc:dc + W] @ wv[layer, dc] for dc in range(3))
        if layer > 0:                                   # type 'B': the row itself too
            pre = pre + sum(row[:, dc:dc + W] @ wv[layer, 3 + dc] for dc in range(3))
        v[layer] = pre
        if layer + 1 < L:
            gate_in = pre + cond_v[layer][:, None]
            u[layer] = torch.tanh(gate_in[..., :CH]) * torch.sigmoid(gate_in[..., CH:])
            row = F.pad(u[layer], (0, 0, 1, 1))
    return v, u
