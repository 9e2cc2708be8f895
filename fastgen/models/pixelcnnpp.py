"""PixelCNN++ (Salimans et al. 2017): a discretized mixture of logistics over pixels, down-
and up-sampling streams with shortcut connections, gated ResNet blocks and dropout.

Images x: long [B, C, H, W] with values in [0, levels), C in {1, 3}; H and W divisible by 4.
``forward(x)`` returns the exact per-channel log-probabilities of every level, [B, levels, C,
H, W] (channel j given the pixels before and channels < j of the same pixel, through the
mixture's linear channel coefficients), so the samplers of ``fastgen.sampling`` treat it like
any categorical model; ``loss(x)`` evaluates the likelihood of x directly (bits/dim).

Two streams keep the receptive field causal without a blind spot: ``u`` sees the rows above
(down-shifted convs), ``ul`` the rows above and the pixels to the left (down-right-shifted).

Fast sampling (``incremental``, ``_LayerCache``) keeps every layer's output map and computes
each position once, when its inputs are final (Ramachandran et al. 2017): the ``u`` stream a
row at a time (each level every 2**level-th row), the ``ul`` stream and the head a pixel at a
time (each level at every 2**level-th row and column) -- one forward pass per image in all.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from fastgen.models.pixelcnn import _PixelModel
from fastgen.ops import pixelcnnpp_resnet_at


def concat_elu(x):
    return F.elu(torch.cat([x, -x], dim=1))


def down_shift(x):
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def right_shift(x):
    return F.pad(x, (1, 0))[:, :, :, :-1]


class DownShiftedConv(nn.Conv2d):
    """Output (r, c) sees rows r - kh + 1 .. r, columns c - kw//2 .. c + kw//2 (kh x kw filter)."""

    def __init__(self, cin, cout, size=(2, 3), stride=1):
        super().__init__(cin, cout, size, stride=stride)
        self.pads = ((size[1] - 1) // 2, (size[1] - 1) // 2, size[0] - 1, 0)

    def forward(self, x):
        return super().forward(F.pad(x, self.pads))


class DownRightShiftedConv(nn.Conv2d):
    """Output (r, c) sees rows r - kh + 1 .. r, columns c - kw + 1 .. c."""

    def __init__(self, cin, cout, size=(2, 2), stride=1):
        super().__init__(cin, cout, size, stride=stride)
        self.pads = (size[1] - 1, 0, size[0] - 1, 0)

    def forward(self, x):
        return super().forward(F.pad(x, self.pads))


class DownShiftedDeconv(nn.ConvTranspose2d):
    def __init__(self, cin, cout, size=(2, 3)):
        super().__init__(cin, cout, size, stride=2, output_padding=1)
        self.size = size

    def forward(self, x):
        y = super().forward(x)
        kh, kw = self.size
        return y[:, :, :y.shape[2] - kh + 1, (kw - 1) // 2:y.shape[3] - (kw - 1) // 2]


class DownRightShiftedDeconv(nn.ConvTranspose2d):
    def __init__(self, cin, cout, size=(2, 2)):
        super().__init__(cin, cout, size, stride=2, output_padding=1)
        self.size = size

    def forward(self, x):
        y = super().forward(x)
        kh, kw = self.size
        return y[:, :, :y.shape[2] - kh + 1, :y.shape[3] - kw + 1]


class GatedResnet(nn.Module):
    """x + a * sigmoid(b), [a, b] = conv(dropout(concat_elu(conv(concat_elu(x)) + nin(concat_elu(aux)))))."""

    def __init__(self, channels, conv, aux_channels=0, dropout=0.5, cond_dim=None):
        super().__init__()
        self.conv1 = conv(2 * channels, channels)
        self.aux = nn.Conv2d(2 * aux_channels, channels, 1) if aux_channels else None
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(2 * channels, 2 * channels)
        self.cond = nn.Linear(cond_dim, 2 * channels, bias=False) if cond_dim else None

    def forward(self, x, aux=None, cond=None):
        c = self.conv1(concat_elu(x))
        if aux is not None:
            c = c + self.aux(concat_elu(aux))
        c = self.conv2(self.dropout(concat_elu(c)))
        if cond is not None:
            c = c + self.cond(cond)[:, :, None, None]
        a, b = c.chunk(2, dim=1)
        return x + a * torch.sigmoid(b)


class PixelCNNpp(_PixelModel):
    """PixelCNN++.  The paper's CIFAR-10 model: channels=160, nr_resnet=5, nr_mix=10, dropout=0.5."""

    def __init__(self, image_shape=(3, 32, 32), levels=256, channels=160, nr_resnet=5, nr_mix=10,
                 dropout=0.5, num_classes=None, cond_channels=None):
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

    def network(self, x, cond=None):
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
        channel coefficients applied to the given scaled image xs [B, C, H, W]."""
        B, _, H, W = params.shape
        C, M = self.image_shape[0], self.nr_mix
        logit_w = params[:, :M]
        rest = params[:, M:].view(B, -1, C, M, H, W)     # means, log-scales (, coefficients)
        means, log_scales = rest[:, 0], rest[:, 1].clamp(min=-7.0)
        if C == 3:
            coeffs = torch.tanh(rest[:, 2])
            means = torch.stack([
                means[:, 0],
                means[:, 1] + coeffs[:, 0] * xs[:, 0, None],
                means[:, 2] + coeffs[:, 1] * xs[:, 0, None] + coeffs[:, 2] * xs[:, 1, None]], dim=1)
        log_w = F.log_softmax(logit_w, dim=1)[:, :, None].expand(B, M, C, H, W)
        return log_w, means.transpose(1, 2), log_scales.transpose(1, 2)     # [B, M, C, H, W] each

    def _bin_log_probs(self, values, log_w, means, log_scales):
        """log p(level = values) under the discretized mixture; values [..., C, H, W] broadcast
        against the mixture's [B, M, C, H, W]: returns log-probs without the M axis."""
        half = 1.0 / (self.levels - 1)
        centred = self.scale(values) - means
        inv_s = torch.exp(-log_scales)
        cdf_plus = torch.sigmoid(inv_s * (centred + half))
        cdf_minus = torch.sigmoid(inv_s * (centred - half))
        log_cdf_plus = (inv_s * (centred + half)) - F.softplus(inv_s * (centred + half))   # log sigmoid
        log_one_minus_cdf_min = -F.softplus(inv_s * (centred - half))
        mid = inv_s * centred
        log_pdf_mid = mid - log_scales - 2.0 * F.softplus(mid)
        log_mass = torch.where(cdf_plus - cdf_minus > 1e-5, torch.log((cdf_plus - cdf_minus).clamp(min=1e-12)),
                               log_pdf_mid - math.log((self.levels - 1) / 2))
        log_p = torch.where(values == 0, log_cdf_plus,
                            torch.where(values == self.levels - 1, log_one_minus_cdf_min, log_mass))
        return torch.logsumexp(log_w + log_p, dim=-4)

    def forward(self, x, cond=None):
        """Exact log-probabilities of every level: [B, levels, C, H, W]."""
        self.check_images(x)
        log_w, means, log_scales = self._mixture(self.network(x, cond), self.scale(x))
        levels = torch.arange(self.levels, device=x.device).view(-1, 1, 1, 1, 1, 1)
        return self._bin_log_probs(levels, log_w[None], means[None], log_scales[None]).transpose(0, 1)

    def loss(self, x, cond=None):
        """Discretized mixture-of-logistics NLL in bits/dim, at the observed values only."""
        self.check_images(x)
        log_w, means, log_scales = self._mixture(self.network(x, cond), self.scale(x))
        return -self._bin_log_probs(x[:, None], log_w, means, log_scales).mean() / math.log(2)

    def incremental(self, x, cond=None):
        if self.training and any(isinstance(mod, nn.Dropout) and mod.p > 0 for mod in self.modules()):
            raise ValueError("PixelCNNpp samples without dropout: call model.eval() before sampling")
        return _LayerCache(self, x, cond)


class _Map:
    """One layer's output map [B, ch, h, w] at its resolution, stored zero-padded by one row on
    top and one column on each side -- the zero padding of every shifted conv of the model -- so
    that a conv at any output position reads a plain slice.  Position (i, j) lives at
    ``data[:, :, i + 1, j + 1]``; ``writes`` ([h, w] counts, None unless a test asks) records
    how often each position was computed."""

    def __init__(self, batch, channels, h, w, device, dtype=torch.float32):
        self.data = torch.zeros(batch, channels, h + 1, w + 2, device=device, dtype=dtype)
        self.writes = None

    def at(self, i, j0, j1):
        """Row i, columns j0 .. j1 - 1: [B, ch, 1, j1 - j0]."""
        return self.data[:, :, i + 1:i + 2, j0 + 1:j1 + 1]

    def mark(self, i, j0, j1):
        """Count a write of row i, columns j0 .. j1 - 1 made directly into ``data``."""
        if self.writes is not None:
            self.writes[i, j0:j1] += 1

    def store(self, i, j0, value):
        """Write value [B, ch, rows, cols] at rows i .., columns j0 .."""
        rows, cols = value.shape[2:]
        self.data[:, :, i + 1:i + 1 + rows, j0 + 1:j0 + 1 + cols] = value
        if self.writes is not None:
            self.writes[i:i + rows, j0:j0 + cols] += 1


def _conv_at(conv, src, i, j0, j1, elu=False):
    """A DownShiftedConv / DownRightShiftedConv (stride s, pads (left, right, top, 0)) at output
    row i, columns j0 .. j1 - 1 of its output: [B, out, 1, j1 - j0].  Output (i, j) reads input
    rows s*i - top .. s*i and columns s*j - left .. s*j + right of ``src`` (concat_elu'd first
    when ``elu``: concat_elu(0) = 0, so the zero padding stays zero, as in the full network)."""
    s = conv.stride[0]
    left, right, top, _ = conv.pads
    window = src.data[:, :, s * i + 1 - top:s * i + 2, s * j0 + 1 - left:s * (j1 - 1) + 2 + right]
    if elu:
        window = concat_elu(window)
    return F.conv2d(window, conv.weight, conv.bias, stride=conv.stride)


def _kernel_dtype(t):
    """fp32 (what the fused kernels take) unless t is fp64 (fp64 models sample on the reference)."""
    return t if t.dtype == torch.float64 else t.float()


def pack_resnet_weights(res):
    """A GatedResnet's weights as ``fastgen.ops.pixelcnnpp_resnet_at`` takes them (fp32,
    contiguous): (w1 [KH*KW, 2C, C], b1 [C], w_aux [2A, C] or None, b_aux [C] or None,
    w2 [KH*KW, 2C, 2C], b2 [2C]); a conv weight [out, in, KH, KW] becomes [KH*KW, in, out],
    taps row-major, so that each tap is a [2C, out] GEMM operand."""
    f32 = lambda t: _kernel_dtype(t.detach()).contiguous()
    taps = lambda conv: f32(conv.weight.permute(2, 3, 1, 0).reshape(-1, conv.in_channels, conv.out_channels))
    nin = res.aux
    return (taps(res.conv1), f32(res.conv1.bias), None if nin is None else f32(nin.weight[:, :, 0, 0].T),
            None if nin is None else f32(nin.bias), taps(res.conv2), f32(res.conv2.bias))


class _LayerCache:
    """PixelCNN++'s sampling state: the per-layer caches of Ramachandran et al. (2017), "Fast
    Generation for Convolutional Autoregressive Models".

    Every layer's output (and every GatedResnet's conv1(+aux) result, which its conv2 reads) is
    a ``_Map`` at the layer's resolution (level 0: H x W, 1: H/2 x W/2, 2: H/4 x W/4).  Each
    output position is computed exactly once, at the first step at which all its inputs are
    final, by the layer's own weights on a slice of its input maps:

    - ``begin_row(r)``: the ``u`` stream (down-shifted convs: its row i at level L reads rows
      <= i of its inputs, and the image only above full-res row r) computes whole rows: row r at
      level 0, row r/2 at level 1 when r % 2 == 0, row r/4 at level 2 when r % 4 == 0, encoder and
      decoder, in the network's order.  A deconv's output rows 2i, 2i + 1 read only its input
      row i, so they are computed together with that row.
    - pixel (r, c), on its first ``logits`` call: the ``ul`` stream (down-right-shifted convs:
      position (i, j) reads rows < i and (i, j' <= j) of its inputs, and the image only before
      (r, c)) computes position (r, c) at level 0, (r/2, c/2) at level 1 when r and c are even,
      (r/4, c/4) at level 2 when both are divisible by 4 -- a 2x2 stride-2 deconv writes the 2x2
      block that reads only that position -- and the 1x1 head at (r, c).

    Each step runs its ops in the network's order, so an input computed in the same step is
    already there.  Over a whole image every position of every layer is computed once (the work
    of one forward pass instead of H*W*C of them); the schedule depends only on (r, c).  The
    network output at (r, c) never reads pixel (r, c): the colour channels are coupled only by
    the mixture's coefficients, so each ``logits`` call re-evaluates just the mixture with the
    channels written so far.  Dropout is off (eval mode).
    """

    def __init__(self, model, x, cond, track_writes=False):
        self.model = m = model
        self.batch, self.device, self.track_writes = x.shape[0], x.device, track_writes
        C, H, W = m.image_shape
        self.cond = m.embed_cond(cond, self.batch)
        self.maps = []
        self.image = _Map(self.batch, C + 1, H, W, x.device, model.dtype)   # scaled pixels, the ones channel
        self.image.data[:, C, 1:, 1:W + 1] = 1.0                  # (zero in the padding, as F.pad gives)
        self.level_values = torch.arange(m.levels, device=x.device).view(-1, 1, 1, 1, 1, 1)
        self.pixel, self.params = None, None      # the pixel whose network output ``params`` [B, P, 1, 1] is
        # The plans: (level, op(i, j0, j1)) in the network's order; op computes row i, columns
        # j0 .. j1 - 1 of its level (a deconv: its input's row i, writing output rows 2i, 2i + 1).
        self.u_plan, self.ul_plan = [], []

        u0, ul0 = self._new(0), self._new(0)
        self.u_plan.append((0, lambda i, j0, j1: self._u_first(u0, i, W)))
        self.ul_plan.append((0, lambda i, j0, j1: self._ul_first(ul0, i, j0)))
        us, uls = [u0], [ul0]
        for level in range(3):
            for ures, ulres in zip(m.up_u[level], m.up_ul[level]):
                us.append(self._resnet(ures, us[-1], [], level, self.u_plan))
                uls.append(self._resnet(ulres, uls[-1], [us[-1]], level, self.ul_plan))
            if level < 2:
                us.append(self._down(m.u_down[level], us[-1], level + 1, self.u_plan))
                uls.append(self._down(m.ul_down[level], uls[-1], level + 1, self.ul_plan))
        u, ul = us.pop(), uls.pop()
        for step in range(3):
            level = 2 - step
            for ures, ulres in zip(m.down_u_res[step], m.down_ul_res[step]):
                u = self._resnet(ures, u, [us.pop()], level, self.u_plan)
                ul = self._resnet(ulres, ul, [u, uls.pop()], level, self.ul_plan)
            if step < 2:
                u = self._up(m.u_up[step], u, level, self.u_plan)
                ul = self._up(m.ul_up[step], ul, level, self.ul_plan)
        self.last_ul = ul

    def _new(self, level, channels=None):
        _, H, W = self.model.image_shape
        channels = channels or self.model.u_init.out_channels
        new = _Map(self.batch, channels, H >> level, W >> level, self.device, self.model.dtype)
        if self.track_writes:
            new.writes = torch.zeros(H >> level, W >> level, dtype=torch.long)
        self.maps.append(new)
        return new

    def _u_first(self, u0, i, W):
        """u0 = down_shift(u_init(image)): row i is u_init's row i - 1; row 0 is zero."""
        if i == 0:
            u0.store(0, 0, torch.zeros_like(u0.at(0, 0, W)))
        else:
            u0.store(i, 0, _conv_at(self.model.u_init, self.image, i - 1, 0, W))

    def _ul_first(self, ul0, i, j):
        """ul0 = down_shift(ul_init_up(image)) + right_shift(ul_init_left(image)) at (i, j)."""
        terms = []      # the shifts bring in zeros (not biases) on the first row and column
        if i > 0:
            terms.append(_conv_at(self.model.ul_init_up, self.image, i - 1, j, j + 1))
        if j > 0:
            terms.append(_conv_at(self.model.ul_init_left, self.image, i, j - 1, j))
        ul0.store(i, j, sum(terms[1:], terms[0]) if terms else torch.zeros_like(ul0.at(i, j, j + 1)))

    def _resnet(self, res, x, aux, level, plan):
        """Plan GatedResnet ``res`` on map x, with the maps in ``aux`` (concatenated) as its aux
        input at the same positions; returns its output map.  Each step is one call of
        ``fastgen.ops.pixelcnnpp_resnet_at`` (two fused launches on a GPU)."""
        mid, out = self._new(level), self._new(level)
        cond_bias = None if self.cond is None else _kernel_dtype(res.cond(self.cond)).contiguous()
        weights = pack_resnet_weights(res)
        left = res.conv1.pads[0]
        aux_data = [m.data for m in aux]

        def op(i, j0, j1):
            pixelcnnpp_resnet_at(x.data, aux_data, mid.data, out.data, *weights, cond_bias, i, j0, j1, left)
            mid.mark(i, j0, j1)
            out.mark(i, j0, j1)

        plan.append((level, op))
        return out

    def _down(self, conv, x, level, plan):
        """Plan a stride-2 shifted conv from map x into a new map at ``level``."""
        out = self._new(level)
        plan.append((level, lambda i, j0, j1: out.store(i, j0, _conv_at(conv, x, i, j0, j1))))
        return out

    def _up(self, deconv, x, level, plan):
        """Plan a stride-2 shifted deconv from map x (at ``level``) into a new map one level up.
        Output rows 2i, 2i + 1 read only input row i (kernel height 2).  Columns: a
        DownShiftedDeconv (width 3) mixes neighbouring input columns, so it runs on whole rows
        (and drops one output column each side, as its forward does); a DownRightShiftedDeconv
        (2x2) maps input (i, j) to the output block (2i .. 2i + 1, 2j .. 2j + 1) alone."""
        out = self._new(level - 1)
        crop = (deconv.size[1] - 1) // 2 if isinstance(deconv, DownShiftedDeconv) else 0

        def op(i, j0, j1):
            y = F.conv_transpose2d(x.at(i, j0, j1), deconv.weight, deconv.bias, stride=2)
            out.store(2 * i, 2 * j0, y[:, :, :, crop:crop + 2 * (j1 - j0)])

        plan.append((level, op))
        return out

    def begin_row(self, r):
        W = self.model.image_shape[2]
        for level, op in self.u_plan:
            if r % (1 << level) == 0:
                op(r >> level, 0, W >> level)

    def write(self, r, c, values):
        C = self.model.image_shape[0]
        self.image.data[:, :C, r + 1, c + 1] = self.model.scale(values)

    def _network_at(self, r, c):
        """The ul stream's positions that pixel (r, c) completes, and the head at (r, c)."""
        for level, op in self.ul_plan:
            if r % (1 << level) == 0 and c % (1 << level) == 0:
                op(r >> level, c >> level, (c >> level) + 1)
        self.params = self.model.out(F.elu(self.last_ul.at(r, c, c + 1)))     # [B, P, 1, 1]
        self.pixel = (r, c)

    def logits(self, r, c):
        """Per-level log-probabilities [B, levels, C] at (r, c), given the channels written so far."""
        m = self.model
        if self.pixel != (r, c):
            self._network_at(r, c)
        xs = self.image.at(r, c, c + 1)[:, :m.image_shape[0]]                  # [B, C, 1, 1]
        log_w, means, log_scales = m._mixture(self.params, xs)
        log_p = m._bin_log_probs(self.level_values, log_w[None], means[None], log_scales[None])   # [levels, B, C, 1, 1]
        return log_p[..., 0, 0].transpose(0, 1)
