"""Plain-PyTorch reference of the PixelCNN++ GatedResnet step: the specification of
``pixelcnnpp_resnet_at`` (the CPU path and the tests call it), and PixelCNN++'s ``concat_elu``
(the one definition: ``fastgen.nn.pixelcnnpp`` uses it too).
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fastgen.ops.pixelcnnpp_resnet.bundles import ResnetWeights


def concat_elu(x: Tensor) -> Tensor:
    """[B, C, ...] -> [B, 2C, ...] = elu([x, -x]) along channels (PixelCNN++'s nonlinearity)."""
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
    return F.conv2d(concat_elu(window), w, bias.to(src.dtype))


def pixelcnnpp_resnet_at(x: Tensor, aux: Sequence[Tensor], mid: Tensor, out: Tensor, weights: ResnetWeights,
                         cond_bias: Optional[Tensor], i: int, j0: int, j1: int, left: int) -> None:
    """One PixelCNN++ GatedResnet at output row i, columns j0 .. j1 - 1 of its maps (eval mode,
    no dropout); writes ``mid`` and ``out`` there, in place, and nothing else.

    Maps are zero-padded buffers [B, ch, h + 1, w + 2] (position (i, j) at [:, :, i + 1, j + 1];
    one zero row on top, one zero column each side): x, mid, out [B, C, ...], each aux map
    [B, A_k, ...] (``aux``: a list of 0, 1 or 2 maps, concatenated along channels, A = sum A_k).
    ``weights``: a ``ResnetWeights`` (packed, shapes there; left = 1 for both of PixelCNN++'s
    shifted convs); cond_bias [B, 2C] or None.  With concat_elu(v) = elu([v, -v]) along channels:

        mid = conv1(concat_elu(x)) + b1 + concat_elu(cat(aux)) @ w_aux + b_aux
        [a, g] = conv2(concat_elu(mid)) + b2 + cond_bias
        out = x + a * sigmoid(g)

    conv2 reads mid at the columns left of j0 (and right of j1 - 1 for KW = 3): those must be
    final already, or be among the columns written here."""
    w = weights
    cols = slice(j0 + 1, j1 + 1)
    h = _shifted_conv_at(x, w.w1, w.b1, i, j0, j1, left)
    if aux:
        a = torch.cat([m[:, :, i + 1:i + 2, cols] for m in aux], dim=1)
        h = h + F.conv2d(concat_elu(a), w.w_aux.to(a.dtype).t()[:, :, None, None], w.b_aux.to(a.dtype))
    mid[:, :, i + 1:i + 2, cols] = h
    h = _shifted_conv_at(mid, w.w2, w.b2, i, j0, j1, left)
    if cond_bias is not None:
        h = h + cond_bias.to(h.dtype)[:, :, None, None]
    a, g = h.chunk(2, dim=1)
    out[:, :, i + 1:i + 2, cols] = x[:, :, i + 1:i + 2, cols] + a * torch.sigmoid(g)
