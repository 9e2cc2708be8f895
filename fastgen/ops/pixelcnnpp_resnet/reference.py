"""Plain-PyTorch reference of the PixelCNN++ GatedResnet step: the specification of
``pixelcnnpp_resnet_at`` (the CPU path and the tests call it).
"""
import torch
import torch.nn.functional as F


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
