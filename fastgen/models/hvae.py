"""A small hierarchical VAE in the NVAE / VD-VAE style (Vahdat & Kautz 2020; Child 2021), and a
training step with VD-VAE's gradient skipping.

Generative (top-down) pass, coarsest resolution first: a learned input h at H / 2^(S-1), then
``groups_per_scale[s]`` top-down cells at scale s, nearest-neighbour upsampling between scales
(VD-VAE), and a 1x1 head of discretised-logistic parameters per sub-pixel (``fastgen.nn.latent``;
integer images in [0, levels), as ``fastgen.data`` returns them).  One top-down cell, for the
running features h [B, ch, h, w] and latents z [B, zc, h, w]:

    (mu_p, log_var_p, f) = prior(h)                      p(z | z_<) = N(mu_p, exp(log_var_p))
    (dmu, dlog_var)      = posterior(h, a_s)             q(z | z_<, x) = N(mu_p + dmu, exp(log_var_p + dlog_var))
    h <- res(h + f + proj(z))

with a_s the bottom-up encoder's features at that resolution.  The posterior is the *residual
normal* of NVAE: sigma_q = sigma_p * dsigma, and the group's KL is
``residual_normal_kl(dmu, log_var_p, dlog_var)`` (analytic); the ELBO sums the groups' KLs:

    ELBO = E_q[log p(x | z)] - sum_g KL(q(z_g | z_<g, x) || p(z_g | z_<g))

The posterior's last convolution starts at zero (q = p, KL = 0 at initialisation) and each
residual block's last convolution is scaled by 1 / sqrt(number of blocks) (VD-VAE's init).
``sample(n, temperature)`` draws z_g = mu_p + temperature * sigma_p * eps.

``train_step(model, optimizer, batch, skip_threshold=...)`` works for any model with ``loss``:
it skips the update when the gradient norm exceeds ``skip_threshold`` or is not finite (Child
2021 skips updates above a threshold, which made very deep VAEs train stably).
"""
import math
from typing import List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgen.models.vae import check_float, check_int
from fastgen.nn.latent import (DiagonalGaussian, discretized_logistic_log_prob, discretized_logistic_sample,
                               residual_normal_kl, scale_levels)
from fastgen.ops import _validate

__all__ = ["HierarchicalELBO", "HierarchicalVAE", "TrainStep", "train_step"]


class HierarchicalELBO(NamedTuple):
    """``elbo`` = ``reconstruction`` - ``kl`` [B] (nats); ``kl`` = ``kl_groups``.sum(1), with
    ``kl_groups`` [B, G] the KL of each latent group in top-down order."""
    elbo: Tensor
    reconstruction: Tensor
    kl: Tensor
    kl_groups: Tensor


class TrainStep(NamedTuple):
    """What ``train_step`` did: ``loss`` (a float), the total gradient 2-norm ``grad_norm`` before
    any clipping, and whether the update was ``skipped``."""
    loss: float
    grad_norm: float
    skipped: bool


class _Block(nn.Module):
    """VD-VAE's bottleneck block: 1x1 -> 3x3 -> 1x1 convolutions with GELUs before each,
    c_in -> mid -> c_out; ``x + block(x)`` when ``residual``.  The last convolution's initial
    weights are multiplied by ``last_scale`` (0: the block starts at zero output)."""

    def __init__(self, c_in: int, mid: int, c_out: int, residual: bool, last_scale: float = 1.0):
        super().__init__()
        self.residual = residual
        self.c1, self.c2, self.c3 = nn.Conv2d(c_in, mid, 1), nn.Conv2d(mid, mid, 3, padding=1), nn.Conv2d(mid, c_out, 1)
        with torch.no_grad():
            self.c3.weight.mul_(last_scale)
            self.c3.bias.mul_(last_scale)

    def forward(self, x: Tensor) -> Tensor:
        out = self.c3(F.gelu(self.c2(F.gelu(self.c1(F.gelu(x))))))
        return x + out if self.residual else out


class _TopDownCell(nn.Module):
    """One latent group: prior, residual-normal posterior, and the residual update of h (module docstring)."""

    def __init__(self, channels: int, latent_channels: int, res_scale: float):
        super().__init__()
        mid = max(channels // 2, 1)
        self.zc = latent_channels
        self.prior = _Block(channels, mid, 2 * latent_channels + channels, residual=False, last_scale=res_scale)
        self.posterior = _Block(2 * channels, mid, 2 * latent_channels, residual=False, last_scale=0.0)
        self.proj = nn.Conv2d(latent_channels, channels, 1)
        with torch.no_grad():
            self.proj.weight.mul_(res_scale)
        self.res = _Block(channels, mid, channels, residual=True, last_scale=res_scale)

    def forward(self, h: Tensor, enc: Optional[Tensor], temperature: float,
                generator: Optional[torch.Generator]):
        mu_p, log_var_p, feat = self.prior(h).split([self.zc, self.zc, h.shape[1]], dim=1)
        if enc is None:
            z = DiagonalGaussian(mu_p, log_var_p).rsample(generator, temperature)
            kl = None
        else:
            d_mu, d_log_var = self.posterior(torch.cat([h, enc], dim=1)).chunk(2, dim=1)
            z = DiagonalGaussian(mu_p + d_mu, log_var_p + d_log_var).rsample(generator)
            kl = residual_normal_kl(d_mu, log_var_p, d_log_var)
        return self.res(h + feat + self.proj(z)), kl


class HierarchicalVAE(nn.Module):
    """A top-down hierarchical VAE over integer images [B, C, H, W] in [0, levels).

    groups_per_scale: latent groups at each resolution in top-down order: entry 0 at the
    coarsest, H / 2^(S-1), the last at full resolution (S = its length; H and W divisible by
    2^(S-1)).  channels: feature width; latent_channels: channels of each group's z;
    encoder_blocks: bottom-up residual blocks per scale.  Defaults fit the 8x8 digits
    (scales 2x2, 4x4, 8x8; a few minutes of CPU training)."""

    def __init__(self, image_shape: Sequence[int], levels: int, groups_per_scale: Sequence[int] = (1, 2, 2),
                 channels: int = 32, latent_channels: int = 4, encoder_blocks: int = 1):
        super().__init__()
        shape = tuple(image_shape)
        if len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
            raise ValueError(f"image_shape must be (C, H, W), got {image_shape!r}")
        self.image_shape = shape
        self.levels = check_int(levels, "levels", 2)
        groups = tuple(groups_per_scale)
        if not groups:
            raise ValueError("groups_per_scale must name at least one scale")
        for i, g in enumerate(groups):
            check_int(g, f"groups_per_scale[{i}]", 1)
        self.groups_per_scale = groups
        S, factor = len(groups), 2 ** (len(groups) - 1)
        C, H, W = shape
        if H % factor or W % factor:
            raise ValueError(f"image_shape {shape} needs H and W divisible by 2^(S-1) = {factor} for "
                             f"S = len(groups_per_scale) = {S} scales")
        ch = check_int(channels, "channels", 1)
        zc = check_int(latent_channels, "latent_channels", 1)
        nb = check_int(encoder_blocks, "encoder_blocks", 1)
        n_cells = sum(groups)
        res_scale = 1.0 / math.sqrt(n_cells)
        mid = max(ch // 2, 1)
        self.enc_in = nn.Conv2d(C, ch, 3, padding=1)
        # bottom-up, finest first: enc_blocks[i] runs at H / 2^i
        self.enc_blocks = nn.ModuleList(
            nn.Sequential(*(_Block(ch, mid, ch, residual=True, last_scale=1.0 / math.sqrt(nb * S)) for _ in range(nb)))
            for _ in range(S))
        self.h_top = nn.Parameter(torch.zeros(1, ch, H // factor, W // factor))
        # top-down, coarsest first: cells[s] runs at H / 2^(S-1-s)
        self.cells = nn.ModuleList(nn.ModuleList(_TopDownCell(ch, zc, res_scale) for _ in range(g)) for g in groups)
        self.out = nn.Conv2d(ch, 2 * C, 1)

    @property
    def dims(self) -> int:
        return math.prod(self.image_shape)

    def check_images(self, x) -> None:
        """TypeError/ValueError unless x is integer images [B, C, H, W] in [0, levels)."""
        if not isinstance(x, Tensor) or x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"x must be an integer tensor [B, {', '.join(map(str, self.image_shape))}], "
                            f"got {getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"x must have shape [B, {', '.join(map(str, self.image_shape))}] for this model, "
                             f"got {tuple(x.shape)}")
        _validate.ids_in_range("x values", x, self.levels, f" (levels={self.levels})")

    def _bottom_up(self, x: Tensor) -> List[Tensor]:
        """The encoder's features per scale, finest first: [B, ch, H / 2^i, W / 2^i]."""
        h = self.enc_in(scale_levels(x, self.levels, self.h_top.dtype))
        acts = []
        for i, blocks in enumerate(self.enc_blocks):
            if i:
                h = F.avg_pool2d(h, 2)
            h = blocks(h)
            acts.append(h)
        return acts

    def _top_down(self, batch: int, acts: Optional[List[Tensor]], temperature: float,
                  generator: Optional[torch.Generator]):
        """(decoder output [B, 2C, H, W], per-group KLs [B, G] or None when sampling from the prior)."""
        h = self.h_top.expand(batch, -1, -1, -1)
        kls = []
        S = len(self.cells)
        for s, cells in enumerate(self.cells):
            if s:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            enc = None if acts is None else acts[S - 1 - s]
            for cell in cells:
                h, kl = cell(h, enc, temperature, generator)
                kls.append(kl)
        out = self.out(F.gelu(h))
        return out, (None if acts is None else torch.stack(kls, dim=1))

    def elbo(self, x: Tensor, generator: Optional[torch.Generator] = None) -> HierarchicalELBO:
        """``HierarchicalELBO`` for integer images x [B, C, H, W]: one posterior draw per group,
        analytic residual-normal KLs summed over groups (module docstring), nats."""
        self.check_images(x)
        out, kl_groups = self._top_down(x.shape[0], self._bottom_up(x), 1.0, generator)
        mean, log_scale = out.chunk(2, dim=1)
        rec = discretized_logistic_log_prob(x, mean, log_scale, self.levels)
        kl = kl_groups.sum(1)
        return HierarchicalELBO(rec - kl, rec, kl, kl_groups)

    def bits_per_dim(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """-ELBO / (D log 2) [B]: an upper bound on the NLL in bits per sub-pixel (``GatedPixelCNN.loss``'s units)."""
        return -self.elbo(x, generator).elbo / (self.dims * math.log(2))

    def loss(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """The training loss: the batch mean of ``bits_per_dim``."""
        return self.bits_per_dim(x, generator).mean()

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: Optional[torch.Generator] = None) -> Tensor:
        """n images [n, C, H, W] (long): every group drawn from its prior at ``temperature``
        (z = mu_p + temperature * sigma_p * eps; 0: the prior means), then the pixels from the
        discretised logistics."""
        check_int(n, "n", 0)
        temperature = check_float(temperature, "temperature")
        out, _ = self._top_down(n, None, temperature, generator)
        mean, log_scale = out.chunk(2, dim=1)
        return discretized_logistic_sample(mean, log_scale, self.levels, generator)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Tensor,
               skip_threshold: Optional[float] = None, clip: Optional[float] = None, **loss_kwargs) -> TrainStep:
    """One optimisation step on ``model.loss(batch, **loss_kwargs)`` with VD-VAE's gradient
    skipping: the gradient's total 2-norm over the optimiser's parameters is measured and, if it
    exceeds ``skip_threshold`` (or is not finite, whatever the threshold), the step is skipped
    (gradients zeroed, parameters and optimiser state untouched).  ``clip``: clip the norm to this
    before stepping.  Returns ``TrainStep(loss, grad_norm, skipped)``."""
    if skip_threshold is not None:
        skip_threshold = check_float(skip_threshold, "skip_threshold", positive=True)
    if clip is not None:
        clip = check_float(clip, "clip", positive=True)
    optimizer.zero_grad(set_to_none=True)
    loss = model.loss(batch, **loss_kwargs)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else float("inf"))
    norm = float(norm)
    skipped = not math.isfinite(norm) or (skip_threshold is not None and norm > skip_threshold)
    if skipped:
        optimizer.zero_grad(set_to_none=True)
    else:
        optimizer.step()
    return TrainStep(float(loss.detach()), norm, skipped)
