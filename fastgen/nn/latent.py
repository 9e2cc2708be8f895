"""The shared math of fastgen's latent-variable models (``fastgen.models.VAE``,
``fastgen.models.HierarchicalVAE``): diagonal Gaussians, their analytic KL, log-mean-exp for
importance-weighted bounds, and the discretised-logistic likelihood of integer data.

Shapes: ``B`` is the batch; every ``[B, ...]`` tensor is reduced over all dims but the first,
so a per-example quantity is ``[B]``.

- ``DiagonalGaussian(mean, log_var)``: N(mean, diag(exp(log_var))), any shape ``[B, ...]``.
- ``gaussian_log_prob(z, mean, log_var)`` -> [B]: sum_i log N(z_i; mean_i, exp(log_var_i)).
- ``residual_normal_kl(delta_mean, prior_log_var, delta_log_var)`` -> [B]: the KL of NVAE's
  residual-normal posterior (Vahdat & Kautz 2020, eq. 2) to its prior; ``gaussian_kl`` is this
  same formula with the residuals read off two Gaussians (the one copy of the KL math).
- ``log_mean_exp(log_w, dim)``: log (1/K) sum_k exp(log_w_k), stable, in at least float32.
- ``discretized_logistic_log_prob`` / ``discretized_logistic_sample``: one logistic per value,
  discretised into ``levels`` bins over [-1, 1]; this is PixelCNN++'s discretised mixture with
  one component, so it calls that mixture's reference (``fastgen.ops.pixelcnnpp_mixture.reference``,
  the one copy of that math).
"""
import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from fastgen.ops.pixelcnnpp_mixture import reference as mixture

__all__ = ["DiagonalGaussian", "ELBO", "discretized_logistic_log_prob", "discretized_logistic_sample", "gaussian_kl",
           "gaussian_log_prob", "log_mean_exp", "residual_normal_kl", "scale_levels"]

_LOG_2PI = math.log(2 * math.pi)


class ELBO(NamedTuple):
    """An evidence lower bound and its two terms, each [B] (nats):
    ``elbo = reconstruction - beta * kl`` with ``reconstruction`` = E_q[log p(x|z)] (a Monte-Carlo
    estimate) and ``kl`` = KL(q(z|x) || p(z)) (analytic)."""
    elbo: Tensor
    reconstruction: Tensor
    kl: Tensor


class DiagonalGaussian(NamedTuple):
    """N(mean, diag(exp(log_var))); ``mean`` and ``log_var`` have the same shape [B, ...]."""
    mean: Tensor
    log_var: Tensor

    def rsample(self, generator: Optional[torch.Generator] = None, temperature: float = 1.0) -> Tensor:
        """A reparameterised draw mean + temperature * exp(log_var / 2) * eps, eps ~ N(0, I)."""
        eps = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype, device=self.mean.device)
        return self.mean + temperature * torch.exp(0.5 * self.log_var) * eps

    def log_prob(self, z: Tensor) -> Tensor:
        """log N(z; mean, diag(exp(log_var))) summed over all dims but the first: [B]."""
        return gaussian_log_prob(z, self.mean, self.log_var)


def _sum_but_batch(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).sum(1)


def gaussian_log_prob(z: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """sum_i log N(z_i; mean_i, exp(log_var_i)) over all dims but the first: [B].

    z, mean, log_var broadcast to one shape [B, ...]."""
    lp = -0.5 * (_LOG_2PI + log_var + (z - mean) ** 2 * torch.exp(-log_var))
    return _sum_but_batch(lp)


def residual_normal_kl(delta_mean: Tensor, prior_log_var: Tensor, delta_log_var: Tensor) -> Tensor:
    """KL(q || p) summed over all dims but the first, [B], for NVAE's residual-normal posterior

        p = N(mu_p, sigma_p^2),  q = N(mu_p + dmu, (sigma_p * dsigma)^2)
        KL = 1/2 (dmu^2 / sigma_p^2 + dsigma^2 - log dsigma^2 - 1)       (Vahdat & Kautz 2020, eq. 2)

    with ``delta_mean`` = dmu, ``prior_log_var`` = log sigma_p^2 and ``delta_log_var`` =
    log dsigma^2 (all broadcast to [B, ...]).  The KL does not depend on mu_p: a posterior that
    only shifts the prior costs dmu^2 / sigma_p^2 however the prior moves."""
    kl = 0.5 * (delta_mean ** 2 * torch.exp(-prior_log_var) + torch.exp(delta_log_var) - delta_log_var - 1.0)
    return _sum_but_batch(kl)


def gaussian_kl(q: DiagonalGaussian, p: Optional[DiagonalGaussian] = None) -> Tensor:
    """Analytic KL(q || p) of two diagonal Gaussians, summed over all dims but the first: [B].
    ``p=None`` is the standard normal N(0, I).

        KL = 1/2 sum_i [ (mu_q - mu_p)^2 / s_p^2 + s_q^2 / s_p^2 - log(s_q^2 / s_p^2) - 1 ]

    (``residual_normal_kl`` with dmu = mu_q - mu_p and log dsigma^2 = log s_q^2 - log s_p^2)."""
    if p is None:
        return residual_normal_kl(q.mean, torch.zeros_like(q.log_var), q.log_var)
    return residual_normal_kl(q.mean - p.mean, p.log_var, q.log_var - p.log_var)


def log_mean_exp(log_w: Tensor, dim: int = 0) -> Tensor:
    """log( (1/K) sum_k exp(log_w_k) ) along ``dim`` (K = log_w.shape[dim]), computed as
    logsumexp - log K (stable for log-weights of any magnitude) in float32, or float64 for a
    float64 input: the importance-weighted bound of Burda et al. (2016) from its log-weights."""
    dtype = torch.promote_types(log_w.dtype, torch.float32)
    return torch.logsumexp(log_w.to(dtype), dim=dim) - math.log(log_w.shape[dim])


def scale_levels(values: Tensor, levels: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Integer values in [0, levels) -> floats 2 v / (levels - 1) - 1 in [-1, 1] (the bin centres
    of the discretised logistic, and the convention of fastgen's PixelCNN models' ``scale``)."""
    return values.to(dtype) * (2.0 / (levels - 1)) - 1.0


def _as_one_component(t: Tensor) -> Tensor:
    """[B, ...] -> [B, 1, N, 1, 1]: a one-component mixture in the reference's [B, M, C, H, W]."""
    return t.reshape(t.shape[0], 1, -1, 1, 1)


def discretized_logistic_log_prob(values: Tensor, mean: Tensor, log_scale: Tensor, levels: int) -> Tensor:
    """log P(values) summed over all dims but the first, [B], for independent discretised logistics.

    values: integer [B, ...] in [0, levels); mean, log_scale: [B, ...] the same shape, on the
    [-1, 1] scale of ``scale_levels`` (log_scale clamped at -7 as in PixelCNN++).  Value v takes
    the logistic mass of [x_v - h, x_v + h], x_v = 2 v / (L - 1) - 1, h = 1 / (L - 1); the edge
    values take the tails (Salimans et al. 2017, eq. 2, with one mixture component)."""
    v = _as_one_component(values)
    m = _as_one_component(mean)
    ls = _as_one_component(log_scale).clamp(min=mixture.MIN_LOG_SCALE)
    lp = mixture.bin_log_probs(v, scale_levels(v, levels, m.dtype), torch.zeros_like(m), m, ls, levels)
    return _sum_but_batch(lp)


def discretized_logistic_sample(mean: Tensor, log_scale: Tensor, levels: int,
                                generator: Optional[torch.Generator] = None) -> Tensor:
    """Integer draws [B, ...] (long) from the distribution of ``discretized_logistic_log_prob``:
    the log-probability of every level, then a Gumbel-max over the levels."""
    B = mean.shape[0]
    grid = torch.arange(levels, device=mean.device).view(-1, 1, 1, 1, 1, 1)
    m = _as_one_component(mean)[None]
    ls = _as_one_component(log_scale).clamp(min=mixture.MIN_LOG_SCALE)[None]
    lp = mixture.bin_log_probs(grid, scale_levels(grid, levels, m.dtype), torch.zeros_like(m), m, ls, levels)
    lp = lp.reshape(levels, B, -1).float()                                    # [L, B, N]
    u = torch.rand(lp.shape, generator=generator, device=lp.device).clamp_(min=1e-20)
    return (lp - torch.log(-torch.log(u))).argmax(0).reshape(mean.shape)
