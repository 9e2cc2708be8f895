"""A DDPM-style UNet (Ho et al. 2020) and DDPM training with L_simple and classifier-free
guidance dropout (Ho & Salimans 2021).

``UNet(x, t, cond=None)``: x [B, C, H, W], t [B] (integer timesteps), cond [B] class ids or
None -> [B, C, H, W] (the eps / x0 / v prediction).  Residual blocks with a sinusoidal time
embedding, self-attention at the resolutions in ``attention_at``, skip connections between
the down and up paths.  Class id ``num_classes`` is the "no class" token that conditional
models are trained with (``DDPM(cond_drop=...)``) so one network gives both halves of
classifier-free guidance.  Sample with ``fastgen.sampling.diffusion.sample(model, ...)``.
"""
import math
from typing import Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgen.sampling.diffusion import linear_betas


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding [B, dim] of timesteps t [B] (Vaswani et al. frequencies)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb, cout)
        self.norm2, self.conv2 = nn.GroupNorm(groups, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, channels: int, groups: int, heads: int = 1) -> None:
        super().__init__()
        self.norm, self.qkv = nn.GroupNorm(groups, channels), nn.Conv2d(channels, 3 * channels, 1)
        self.proj, self.heads = nn.Conv2d(channels, channels, 1), heads

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).view(B, 3, self.heads, C // self.heads, H * W).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(B, C, H, W))


class UNet(nn.Module):
    def __init__(self, in_channels: int = 3, channels: int = 64, channel_mult: Sequence[int] = (1, 2, 2),
                 blocks: int = 2, attention_at: Sequence[int] = (16,), image_size: int = 32,
                 dropout: float = 0.1, num_classes: Optional[int] = None, groups: int = 8,
                 out_channels: Optional[int] = None) -> None:
        super().__init__()
        self.num_classes, self.channels = num_classes, channels
        temb = 4 * channels
        self.time = nn.Sequential(nn.Linear(channels, temb), nn.SiLU(), nn.Linear(temb, temb))
        if num_classes:
            self.classes = nn.Embedding(num_classes + 1, temb)       # + the "no class" token
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down, skips, c, size = nn.ModuleList(), [channels], channels, image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(blocks):
                layer = nn.ModuleList([ResBlock(c, channels * mult, temb, dropout, groups)])
                c = channels * mult
                if size in attention_at:
                    layer.append(Attention(c, groups))
                self.down.append(layer)
                skips.append(c)
            if level + 1 < len(channel_mult):
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
                skips.append(c)
                size //= 2
        self.mid = nn.ModuleList([ResBlock(c, c, temb, dropout, groups), Attention(c, groups),
                                  ResBlock(c, c, temb, dropout, groups)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(blocks + 1):
                layer = nn.ModuleList([ResBlock(c + skips.pop(), channels * mult, temb, dropout, groups)])
                c = channels * mult
                if size in attention_at:
                    layer.append(Attention(c, groups))
                self.up.append(layer)
            if level > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"),
                                              nn.Conv2d(c, c, 3, padding=1)]))
                size *= 2
        self.out = nn.Sequential(nn.GroupNorm(groups, c), nn.SiLU(),
                                 nn.Conv2d(c, out_channels or in_channels, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        if t.dim() != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t must have shape [{x.shape[0]}] (one timestep per image), got {tuple(t.shape)}")
        temb = self.time(timestep_embedding(t, self.channels))
        if self.num_classes:
            if cond is None:
                cond = torch.full_like(t, self.num_classes)          # unconditional
            temb = temb + self.classes(cond)
        elif cond is not None:
            raise ValueError("this UNet is unconditional (num_classes=None); cond must be None")
        h = self.stem(x)
        hs = [h]
        for layer in self.down:
            if isinstance(layer[0], ResBlock):
                h = layer[0](h, temb)
                for extra in layer[1:]:
                    h = extra(h)
            else:
                h = layer[0](h)
            hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, temb)), temb)
        for layer in self.up:
            if isinstance(layer[0], ResBlock):
                h = layer[0](torch.cat([h, hs.pop()], dim=1), temb)
                for extra in layer[1:]:
                    h = extra(h)
            else:
                h = layer[1](layer[0](h))
        return self.out(h)


class DDPM(nn.Module):
    """DDPM training around a denoiser: L_simple = E ||eps - model(x_t, t)||^2 (or the x0 / v
    target), with condition dropout for classifier-free guidance.  ``learned_variance``: the
    model also outputs v (twice the channels) and the loss is the hybrid L_simple +
    ``vlb_weight`` L_vlb of Improved DDPM (Nichol & Dhariwal 2021), the KL term seeing the
    predicted mean through a stop-gradient; sample with ``variance='learned'``."""

    def __init__(self, model: nn.Module, betas: Optional[Union[Tensor, Sequence[float]]] = None,
                 prediction: Literal["eps", "x0", "v"] = "eps", cond_drop: float = 0.0,
                 learned_variance: bool = False, vlb_weight: float = 0.001) -> None:
        super().__init__()
        if prediction not in ("eps", "x0", "v"):
            raise ValueError(f"prediction must be 'eps', 'x0' or 'v', got {prediction!r}")
        if learned_variance and prediction != "eps":
            raise ValueError("learned_variance is implemented for prediction='eps'")
        self.model, self.prediction, self.cond_drop = model, prediction, cond_drop
        self.learned_variance, self.vlb_weight = learned_variance, vlb_weight
        betas = linear_betas() if betas is None else torch.as_tensor(betas, dtype=torch.float64)
        abar = torch.cumprod(1 - betas, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        small = betas * (1 - abar_prev) / (1 - abar)
        self.register_buffer("abar", abar.float())
        self.register_buffer("abar_prev", abar_prev.float())
        self.register_buffer("betas", betas.float())
        # log beta~ is 0 at t = 0: use t = 1's value there, as Improved DDPM does
        self.register_buffer("log_small", torch.log(torch.cat([small[1:2], small[1:]])).float())

    def _vlb(self, x0, xt, t, eps, v):
        """Per-sample L_vlb term in bits/dim: KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) for
        t > 0, the Gaussian decoder's negative log-likelihood of x0 at t = 0."""
        view = lambda a: a[t].view(-1, *[1] * (x0.dim() - 1))
        a, a_prev, beta = view(self.abar), view(self.abar_prev), view(self.betas)
        c0, ct = a_prev.sqrt() * beta / (1 - a), (1 - beta).sqrt() * (1 - a_prev) / (1 - a)
        mean_q = c0 * x0 + ct * xt
        mean_p = c0 * ((xt - (1 - a).sqrt() * eps) / a.sqrt()) + ct * xt
        log_q = view(self.log_small)
        frac = (v + 1) / 2
        log_p = frac * beta.log() + (1 - frac) * log_q
        kl = 0.5 * (-1 + log_p - log_q + (log_q - log_p).exp() + (mean_q - mean_p) ** 2 * (-log_p).exp())
        nll = 0.5 * ((x0 - mean_p) ** 2 * (-log_p).exp() + log_p + math.log(2 * math.pi))
        first = (t == 0).view(-1, *[1] * (x0.dim() - 1))
        per_element = torch.where(first, nll, kl) / math.log(2)
        return per_element.flatten(1).mean(1)

    def loss(self, x0: Tensor, cond: Optional[Tensor] = None,
             generator: Optional[torch.Generator] = None) -> Tensor:
        """x0: images [B, C, H, W] in [-1, 1] -> the mean squared error of the prediction."""
        B = x0.shape[0]
        t = torch.randint(len(self.abar), (B,), generator=generator).to(x0.device)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device)
        a = self.abar[t].view(B, *[1] * (x0.dim() - 1))
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        if cond is not None and self.cond_drop > 0:
            drop = torch.rand(B, generator=generator).to(x0.device) < self.cond_drop
            cond = torch.where(drop, torch.full_like(cond, self.model.num_classes), cond)
        target = {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[self.prediction]
        out = self.model(xt, t, cond)
        if not self.learned_variance:
            return F.mse_loss(out, target)
        pred, v = out.chunk(2, dim=1)
        return F.mse_loss(pred, target) + self.vlb_weight * self._vlb(x0, xt, t, pred.detach(), v).mean()


class NCSN(nn.Module):
    """Noise-conditional score network (Song & Ermon 2019; the sigma scaling of NCSNv2):
    score(x, sigma) = unet(x, c(sigma)) / sigma with c(sigma) = 250 log(sigma) (a continuous
    'timestep' for the UNet's embedding), trained by denoising score matching over
    ``sigmas``: E || sigma score(x + sigma z, sigma) + z ||^2.  Sample with
    ``fastgen.sampling.diffusion.sample(ncsn, shape, 'langevin' | 'pc_ve' | 'pf_ode', sigmas=...)``."""

    def __init__(self, unet: nn.Module, sigmas: Optional[Union[Tensor, Sequence[float]]] = None) -> None:
        super().__init__()
        self.unet = unet
        sigmas = torch.logspace(0, -2, 10) if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float32)
        self.register_buffer("sigmas", sigmas.float())

    def forward(self, x: Tensor, sigma: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        if sigma.dim() != 1 or sigma.shape[0] != x.shape[0]:
            raise ValueError(f"sigma must have shape [{x.shape[0]}], got {tuple(sigma.shape)}")
        scale = sigma.view(-1, *[1] * (x.dim() - 1))
        return self.unet(x, 250 * sigma.log(), cond) / scale

    def loss(self, x: Tensor, cond: Optional[Tensor] = None,
             generator: Optional[torch.Generator] = None) -> Tensor:
        """Denoising score matching, sigma drawn uniformly from ``sigmas`` for each sample."""
        pick = torch.randint(len(self.sigmas), (x.shape[0],), generator=generator).to(x.device)
        sigma = self.sigmas[pick]
        z = torch.randn(x.shape, generator=generator).to(x.device)
        noisy = x + sigma.view(-1, *[1] * (x.dim() - 1)) * z
        return (sigma.view(-1, *[1] * (x.dim() - 1)) * self(noisy, sigma, cond) + z).pow(2).flatten(1).sum(1).mean()
