"""PixelCNN++ (Salimans et al. 2017): a discretized mixture of logistics over pixels, down-
and up-sampling streams with shortcut connections, gated ResNet blocks and dropout.

Images x: long [B, C, H, W] with values in [0, levels), C in {1, 3}; H and W divisible by 4.
``forward(x)`` returns the exact per-channel log-probabilities of every level, [B, levels, C,
H, W] (channel j given the pixels before and channels < j of the same pixel, through the
mixture's linear channel coefficients), so the samplers of ``fastgen.sampling`` treat it like
any categorical model; ``loss(x)`` evaluates the likelihood of x directly (bits/dim).

Two streams keep the receptive field causal without a blind spot: ``u`` sees the rows above
(down-shifted convs), ``ul`` the rows above and the pixels to the left (down-right-shifted).
The layers live in ``fastgen.nn.pixelcnnpp``.

Fast sampling (``incremental``) uses ``fastgen.models.pixelcnnpp_cache.PixelCNNppCache``: it
keeps every layer's output map and computes each position once, when its inputs are final
(Ramachandran et al. 2017) -- one forward pass of work per image in all.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgen.models.pixelcnn import _PixelModel
from fastgen.models.pixelcnnpp_cache import PixelCNNppCache
# The layers and pack_resnet_weights stay importable from here, their home before
# fastgen.nn.pixelcnnpp, so that existing imports keep working.
from fastgen.nn.pixelcnnpp import (DownRightShiftedConv, DownRightShiftedDeconv, DownShiftedConv,  # noqa: F401
                                   DownShiftedDeconv, GatedResnet, down_shift, pack_resnet_weights, right_shift)
from fastgen.ops.pixelcnnpp_mixture import reference as mixture


class PixelCNNpp(_PixelModel):
    """PixelCNN++.  The paper's CIFAR-10 model: channels=160, nr_resnet=5, nr_mix=10, dropout=0.5."""

    def __init__(self, image_shape: Tuple[int, int, int] = (3, 32, 32), levels: int = 256, channels: int = 160,
                 nr_resnet: int = 5, nr_mix: int = 10, dropout: float = 0.5, num_classes: Optional[int] = None,
                 cond_channels: Optional[int] = None):
        super().__init__()
        self._setup(image_shape, levels, num_classes, cond_channels, cond_dim=channels)
        C, H, W = self.image_shape
        if C not in (1, 3):
            raise ValueError(f"PixelCNN++ models images with 1 or 3 channels, got C = {C}")
        if H % 4 or W % 4:
            raise ValueError(f"PixelCNN++ downsamples twice: H and W must be divisible by 4, got {H}x{W}")
        self.nr_mix = nr_mix
        self.channel_groups = [[j] for j in range(C)]
        nf, cd = channels, self.cond_dim
        u_res = lambda aux: GatedResnet(nf, DownShiftedConv, aux, dropout, cd)
        ul_res = lambda aux: GatedResnet(nf, DownRightShiftedConv, aux, dropout, cd)
        self.u_init = DownShiftedConv(C + 1, nf, (2, 3))
        self.ul_init_up = DownShiftedConv(C + 1, nf, (1, 3))
        self.ul_init_left = DownRightShiftedConv(C + 1, nf, (2, 1))
        self.up_u = nn.ModuleList(nn.ModuleList(u_res(0) for _ in range(nr_resnet)) for _ in range(3))
        self.up_ul = nn.ModuleList(nn.ModuleList(ul_res(nf) for _ in range(nr_resnet)) for _ in range(3))
        self.down_u_res = nn.ModuleList(nn.ModuleList(u_res(nf) for _ in range(n)) for n in
                                        (nr_resnet, nr_resnet + 1, nr_resnet + 1))
        self.down_ul_res = nn.ModuleList(nn.ModuleList(ul_res(2 * nf) for _ in range(n)) for n in
                                         (nr_resnet, nr_resnet + 1, nr_resnet + 1))
        self.u_down = nn.ModuleList(DownShiftedConv(nf, nf, (2, 3), stride=2) for _ in range(2))
        self.ul_down = nn.ModuleList(DownRightShiftedConv(nf, nf, (2, 2), stride=2) for _ in range(2))
        self.u_up = nn.ModuleList(DownShiftedDeconv(nf, nf) for _ in range(2))
        self.ul_up = nn.ModuleList(DownRightShiftedDeconv(nf, nf) for _ in range(2))
        per_channel = 3 if C == 1 else 10   # logit, mean, log-scale (+ 3 means, scales, coeffs for RGB)
        self.out = nn.Conv2d(nf, per_channel * nr_mix if C == 1 else 10 * nr_mix, 1)

    def network(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """The mixture parameters [B, P, H, W] of every pixel (no pixel sees itself)."""
        c = self.embed_cond(cond, x.shape[0])
        xs = self.scale(x)
        xs = torch.cat([xs, torch.ones_like(xs[:, :1])], dim=1)
        us = [down_shift(self.u_init(xs))]
        uls = [down_shift(self.ul_init_up(xs)) + right_shift(self.ul_init_left(xs))]
        for level in range(3):
            for ures, ulres in zip(self.up_u[level], self.up_ul[level]):
                us.append(ures(us[-1], cond=c))
                uls.append(ulres(uls[-1], aux=us[-1], cond=c))
            if level < 2:
                us.append(self.u_down[level](us[-1]))
                uls.append(self.ul_down[level](uls[-1]))
        u, ul = us.pop(), uls.pop()
        for level in range(3):
            for ures, ulres in zip(self.down_u_res[level], self.down_ul_res[level]):
                u = ures(u, aux=us.pop(), cond=c)
                ul = ulres(ul, aux=torch.cat([u, uls.pop()], dim=1), cond=c)
            if level < 2:
                u, ul = self.u_up[level](u), self.ul_up[level](ul)
        return self.out(F.elu(ul))

    def _mixture(self, params, xs):
        """Per-channel mixture (log-weights [B, M, C, H, W], means, log-scales) with the RGB
        channel coefficients applied to the given scaled image xs [B, C, H, W]
        (``fastgen.ops.pixelcnnpp_mixture.reference.mixture_parameters``)."""
        return mixture.mixture_parameters(params, xs, self.nr_mix)

    def _bin_log_probs(self, values, log_w, means, log_scales):
        """log p(level = values) under the discretized mixture; values [..., C, H, W] broadcast
        against the mixture's [B, M, C, H, W]: returns log-probs without the M axis
        (``fastgen.ops.pixelcnnpp_mixture.reference.bin_log_probs``, the one copy of the math
        that the fused sampling draw also runs)."""
        return mixture.bin_log_probs(values, self.scale(values), log_w, means, log_scales, self.levels)

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """Exact log-probabilities of every level: [B, levels, C, H, W]."""
        self.check_images(x)
        log_w, means, log_scales = self._mixture(self.network(x, cond), self.scale(x))
        levels = torch.arange(self.levels, device=x.device).view(-1, 1, 1, 1, 1, 1)
        return self._bin_log_probs(levels, log_w[None], means[None], log_scales[None]).transpose(0, 1)

    def loss(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """Discretized mixture-of-logistics NLL in bits/dim, at the observed values only."""
        self.check_images(x)
        log_w, means, log_scales = self._mixture(self.network(x, cond), self.scale(x))
        return -self._bin_log_probs(x[:, None], log_w, means, log_scales).mean() / math.log(2)

    def incremental(self, x: Tensor, cond: Optional[Tensor] = None, check: bool = True) -> PixelCNNppCache:
        """The sampling cache for images like x [B, C, H, W] (``fastgen.sampling.PixelCache``);
        ``check=False``: cond has passed ``check_cond`` already (see ``_PixelModel.embed_cond``)."""
        if self.training and any(isinstance(mod, nn.Dropout) and mod.p > 0 for mod in self.modules()):
            raise ValueError("PixelCNNpp samples without dropout: call model.eval() before sampling")
        return PixelCNNppCache(self, x, cond, check=check)
