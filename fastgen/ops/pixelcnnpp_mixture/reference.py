"""Plain-PyTorch reference of PixelCNN++'s discretized mixture of logistics (Salimans et al.
2017, "PixelCNN++", eqs. 2-3): the one copy of its math.  ``fastgen.models.PixelCNNpp`` computes
its log-probabilities and its loss with ``mixture_parameters`` and ``bin_log_probs``; the fused
draw ``pixelcnnpp_mixture_draw`` (the specification of the kernel, and its CPU path) is those two
functions and a Gumbel-max argmax, channel by channel.

Mixture parameters, as the model's 1x1 head emits them for M mixture components and C in {1, 3}
colour channels, P = 3M (grey) or 10M (RGB) values per pixel:

    params[:, :M]                         mixture logits (shared by the channels)
    params[:, M + (0 * C + j) * M + k]    mean of channel j, component k
    params[:, M + (1 * C + j) * M + k]    log-scale (clamped at -7)
    params[:, M + (2 * C + j) * M + k]    RGB only: channel-coupling coefficient (tanh'd)

The coefficients couple the colour channels of one pixel linearly through the means (eq. 3):

    mu_R = m_R,   mu_G = m_G + tanh(a) x_R,   mu_B = m_B + tanh(b) x_R + tanh(c) x_G

with x the already drawn channels scaled to [-1, 1].  Each channel j has L levels; level v,
scaled to x_v in [-1, 1], takes the logistic mass of the bin [x_v - h, x_v + h], h = 1 / (L - 1)
(the edge levels take the tails):

    log p(v) = logsumexp_k [ log_softmax(logits)_k + log P_k(v) ]
    P_k(v)   = sigma((x_v + h - mu_k) / s_k) - sigma((x_v - h - mu_k) / s_k)
             (the lowest level: sigma((x_0 + h - mu_k) / s_k); the highest: 1 - sigma((x_v - h - mu_k) / s_k);
              a bin of mass < 1e-5: the density at its centre times its width)
"""
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

MIN_LOG_SCALE = -7.0    # log-scales are clamped here (the paper's implementation)
TINY_BIN = 1e-5         # bins of smaller mass take the density at their centre instead


class BinConstants(NamedTuple):
    """The scalars of a discretisation into ``levels`` values over [-1, 1]: ``half`` the half
    bin width 1 / (L - 1), ``log_half_bins`` log((L - 1) / 2) (the log of 1 / bin width)."""
    half: float
    log_half_bins: float


def bin_constants(levels: int) -> BinConstants:
    """``BinConstants`` for ``levels`` values per channel (the reference and the kernel use these)."""
    return BinConstants(1.0 / (levels - 1), math.log((levels - 1) / 2))


def mixture_parameters(params: Tensor, xs: Tensor, nr_mix: int):
    """Per-channel mixture (log-weights, means, log-scales), each [B, M, C, ...], from the head's
    output params [B, P, ...] (P = 3M for C = 1, 10M for C = 3) with the RGB coupling applied to
    the scaled image xs [B, C, ...] (mu_G reads xs[:, 0], mu_B xs[:, 0] and xs[:, 1]; channel j's
    mean reads no channel >= j)."""
    B, C, M = params.shape[0], xs.shape[1], nr_mix
    spatial = params.shape[2:]
    logit_w = params[:, :M]
    rest = params[:, M:].view(B, -1, C, M, *spatial)       # means, log-scales (, coefficients)
    means, log_scales = rest[:, 0], rest[:, 1].clamp(min=MIN_LOG_SCALE)
    if C == 3:
        coeffs = torch.tanh(rest[:, 2])
        means = torch.stack([
            means[:, 0],
            means[:, 1] + coeffs[:, 0] * xs[:, 0, None],
            means[:, 2] + coeffs[:, 1] * xs[:, 0, None] + coeffs[:, 2] * xs[:, 1, None]], dim=1)
    log_w = F.log_softmax(logit_w, dim=1)[:, :, None].expand(B, M, C, *spatial)
    return log_w, means.transpose(1, 2), log_scales.transpose(1, 2)


def bin_log_probs(values: Tensor, scaled: Tensor, log_w: Tensor, means: Tensor, log_scales: Tensor,
                  levels: int) -> Tensor:
    """log p(level = values) under the discretized mixture, without the mixture axis.

    values: integer levels [..., C, H, W] (they decide the edge bins); scaled: the same values
    in [-1, 1] (the model's ``scale``); both broadcast against the mixture's [B, M, C, H, W]
    (``mixture_parameters``), whose M axis (dim -4) is reduced by logsumexp."""
    half, log_half_bins = bin_constants(levels)
    centred = scaled - means
    inv_s = torch.exp(-log_scales)
    cdf_plus = torch.sigmoid(inv_s * (centred + half))
    cdf_minus = torch.sigmoid(inv_s * (centred - half))
    log_cdf_plus = (inv_s * (centred + half)) - F.softplus(inv_s * (centred + half))   # log sigmoid
    log_one_minus_cdf_min = -F.softplus(inv_s * (centred - half))
    mid = inv_s * centred
    log_pdf_mid = mid - log_scales - 2.0 * F.softplus(mid)
    log_mass = torch.where(cdf_plus - cdf_minus > TINY_BIN, torch.log((cdf_plus - cdf_minus).clamp(min=1e-12)),
                           log_pdf_mid - log_half_bins)
    log_p = torch.where(values == 0, log_cdf_plus, torch.where(values == levels - 1, log_one_minus_cdf_min, log_mass))
    return torch.logsumexp(log_w + log_p, dim=-4)


def nr_mix_of(params_width: int, channels: int) -> int:
    """The number of mixture components M in a head of ``params_width`` outputs (3M grey, 10M RGB)."""
    return params_width // (3 if channels == 1 else 10)


def pixelcnnpp_mixture_draw(params: Tensor, gumbel: Tensor, level_values: Tensor, values: Tensor, scaled: Tensor,
                            temperature: float) -> None:
    """Draw one pixel of every batch row from its mixture, all colour channels in turn (R, then
    G given R, then B given R and G), exactly as the naive sampler does with the model's
    per-level log-probabilities:

        values[:, j] = argmax_v ( log p_j(v | values[:, :j]) / temperature + gumbel[:, j, v] )

    params: [B, P] the head's raw mixture parameters (module docstring); gumbel: [B, C, L]
    (any strides); level_values: [L] the levels scaled to [-1, 1] (the model's ``scale`` of
    0 .. L - 1); values: [B, C] int64, written; scaled: [B, C] (params' dtype, any strides, e.g.
    the pixel in the sampling cache's image map), written with level_values[values]."""
    B, C, L = gumbel.shape
    nr_mix = nr_mix_of(params.shape[1], C)
    levels = torch.arange(L, device=params.device).view(-1, 1, 1, 1, 1, 1)
    grid = level_values.view(-1, 1, 1, 1, 1, 1)
    xs = torch.zeros(B, C, 1, 1, dtype=params.dtype, device=params.device)
    for j in range(C):
        log_w, means, log_scales = mixture_parameters(params[:, :, None, None], xs, nr_mix)
        log_p = bin_log_probs(levels, grid, log_w[None], means[None], log_scales[None], L)   # [L, B, C, 1, 1]
        scores = log_p[:, :, j, 0, 0].transpose(0, 1).float() / temperature + gumbel[:, j]
        drawn = scores.argmax(dim=1)
        values[:, j] = drawn
        xs[:, j, 0, 0] = level_values[drawn]
    scaled.copy_(xs[:, :, 0, 0])


def head_params(features: Tensor, head) -> Tensor:
    """PixelCNN++'s head on features [B, F]: the raw mixture parameters [B, P] =
    elu(features) @ head.weight + head.bias (the model's ``out`` 1x1 conv after its elu; head a
    ``HeadWeights``)."""
    return torch.addmm(head.bias, F.elu(features), head.weight)


def pixelcnnpp_head_draw(features: Tensor, head, gumbel: Tensor, level_values: Tensor, values: Tensor,
                         scaled: Tensor, temperature: float) -> None:
    """``pixelcnnpp_mixture_draw`` from ``head_params(features, head)``: the head and the draw
    (``fastgen.ops.pixelcnnpp_head_draw``'s specification)."""
    pixelcnnpp_mixture_draw(head_params(features, head), gumbel, level_values, values, scaled, temperature)
