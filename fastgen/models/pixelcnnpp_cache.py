"""PixelCNN++'s sampling cache (``PixelCNNpp.incremental``): every layer's output map, each
position computed once, when its inputs are final (Ramachandran et al. 2017, "Fast Generation
for Convolutional Autoregressive Models").  It implements ``fastgen.sampling.PixelCache``.

Maps are zero-padded buffers [B, ch, h + 1, w + 2] (``_Map``); each GatedResnet step is one
``fastgen.ops.pixelcnnpp_resnet_at`` call (on a GPU one launch for a ``ul`` position, two for a
``u`` row), the other layers run as PyTorch convs on slices of their input maps (``_conv_at``),
and the sampler's fused step runs the head and draws a whole pixel with one
``fastgen.ops.pixelcnnpp_mixture.pixelcnnpp_head_draw``.
"""
import math
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fastgen.nn.pixelcnnpp import (DownShiftedDeconv, concat_elu, pack_cond_bias, pack_head_weights,
                                   pack_resnet_weights)
from fastgen.ops import pixelcnnpp_resnet_at
from fastgen.ops.pixelcnnpp_mixture import pixelcnnpp_head_draw

if TYPE_CHECKING:   # (the model imports this module)
    from fastgen.models.pixelcnnpp import PixelCNNpp


class _Map:
    """One layer's output map [B, ch, h, w] at its resolution, stored zero-padded by one row on
    top and one column on each side -- the zero padding of every shifted conv of the model -- so
    that a conv at any output position reads a plain slice.  Position (i, j) lives at
    ``data[:, :, i + 1, j + 1]``; ``writes`` ([h, w] counts, None unless a test asks) records
    how often each position was computed.  ``data`` is set by ``allocate``."""

    def __init__(self, batch, channels, h, w):
        self.shape = (batch, channels, h + 1, w + 2)
        self.data = None
        self.writes = None

    @staticmethod
    def allocate(maps, device, dtype):
        """Give every map its zeroed ``data``: views of one buffer -- one allocation per cache
        instead of one per layer (each a launch or an allocator call on a GPU).  Every map starts
        at a multiple of 16 elements, so the kernels see 16-byte aligned pointers."""
        sizes = [-(-math.prod(m.shape) // 16) * 16 for m in maps]
        buffer = torch.zeros(sum(sizes), device=device, dtype=dtype)
        start = 0
        for m, size in zip(maps, sizes):
            m.data = buffer[start:start + math.prod(m.shape)].view(m.shape)
            start += size

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


class PixelCNNppCache:
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
    - pixel (r, c), on its first ``logits`` or ``step`` call: the ``ul`` stream (down-right-shifted convs:
      position (i, j) reads rows < i and (i, j' <= j) of its inputs, and the image only before
      (r, c)) computes position (r, c) at level 0, (r/2, c/2) at level 1 when r and c are even,
      (r/4, c/4) at level 2 when both are divisible by 4 -- a 2x2 stride-2 deconv writes the 2x2
      block that reads only that position -- and the 1x1 head at (r, c).

    Each step runs its ops in the network's order, so an input computed in the same step is
    already there.  Over a whole image every position of every layer is computed once (the work
    of one forward pass instead of H*W*C of them); the schedule depends only on (r, c).  The
    network output at (r, c) never reads pixel (r, c): the colour channels are coupled only by
    the mixture's coefficients, so each ``logits`` call re-evaluates just the mixture with the
    channels written so far -- and the fused ``step`` (the sampler's ``FusedPixelStep``) runs the
    head and draws all of them in one launch of ``pixelcnnpp_head_draw``.  Dropout is off (eval
    mode).

    Launches per pixel, and why the GatedResnet steps are not batched further: within one stream
    and resolution, GatedResnet k + 1 at a position reads GatedResnet k's output *at that same
    position* (the (i, j) tap of its conv1's 2x2 / 2x3 window), so the steps of one stream at one
    position form a chain with nothing between them to run alongside; the ``ul`` stream at (r, c)
    reads the image at (r, c - 1), drawn by the previous step, so no two pixels' ``ul`` work can
    share a launch.  Inside one step, conv2 at (i, j) reads conv1's output (``mid``) at rows
    i - 1 and i: for a ``ul`` position every one of those is final except (i, j) itself, which
    conv1 computes from x and the aux maps alone -- so the step is one launch that recomputes
    conv1 there in each program (``kernels/pixelcnnpp_resnet.py`` states the argument).  A ``u``
    row keeps two launches (conv1's whole row, then conv2 + gate): its conv2 reads the row's
    neighbouring new columns.  The head (elu, 1x1 conv) runs inside the draw.  Per pixel, at
    nr_resnet = n: 2n + 1 launches for the ``ul`` stream at full resolution (plus 1/4 and 1/16
    of that at the lower ones), 2 per ``u`` step shared by a row, one head-and-draw, and the
    torch convs of the first layer and the stride-2 layers.
    """

    def __init__(self, model: "PixelCNNpp", x: Tensor, cond: Optional[Tensor], track_writes: bool = False,
                 check: bool = True):
        """x: [B, C, H, W] (its batch and device); cond: the model's conditioning or None;
        track_writes: count every position's writes (``_Map.writes``, for the tests); check:
        check cond (``_PixelModel.embed_cond``)."""
        self.model = m = model
        self.batch, self.device, self.track_writes = x.shape[0], x.device, track_writes
        C, H, W = m.image_shape
        self.cond = m.embed_cond(cond, self.batch, check)
        self.maps = []
        self.image = _Map(self.batch, C + 1, H, W)                # scaled pixels, the ones channel
        self.level_values = torch.arange(m.levels, device=x.device).view(-1, 1, 1, 1, 1, 1)
        self.x = x                                # the image the fused step draws into
        self.level_scaled = m.scale(torch.arange(m.levels, device=x.device))    # as ``write`` scales
        self.pixel = None       # the pixel whose ul positions are computed
        self.params = None      # its network output [B, P, 1, 1], once ``logits`` asked for it
        self.head = pack_head_weights(m.out)      # the fused step runs the head inside its draw
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
        _Map.allocate([self.image, *self.maps], x.device, model.dtype)
        self.image.data[:, C, 1:, 1:W + 1] = 1.0                  # (zero in the padding, as F.pad gives)

    def _new(self, level, channels=None):
        _, H, W = self.model.image_shape
        channels = channels or self.model.u_init.out_channels
        new = _Map(self.batch, channels, H >> level, W >> level)
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
        if len(terms) == 2:     # (the sum written in place: one op per pixel fewer than add, then copy)
            torch.add(terms[0], terms[1], out=ul0.at(i, j, j + 1))
            ul0.mark(i, j, j + 1)
        else:
            ul0.store(i, j, terms[0] if terms else torch.zeros_like(ul0.at(i, j, j + 1)))

    def _resnet(self, res, x, aux, level, plan):
        """Plan GatedResnet ``res`` on map x, with the maps in ``aux`` (concatenated) as its aux
        input at the same positions; returns its output map.  Each step is one call of
        ``fastgen.ops.pixelcnnpp_resnet_at`` (on a GPU one launch for a position, two for a row)."""
        mid, out = self._new(level), self._new(level)
        cond_bias = pack_cond_bias(res, self.cond)
        weights = pack_resnet_weights(res)
        left = res.conv1.pads[0]

        def op(i, j0, j1):
            aux_data = [m.data for m in aux]
            pixelcnnpp_resnet_at(x.data, aux_data, mid.data, out.data, weights, cond_bias, i, j0, j1, left)
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

    @property
    def fused_step(self) -> "PixelCNNppCache":
        """This cache, whose ``step`` draws a whole pixel -- every colour channel -- with one fused
        mixture draw after the pixel's layer steps (``fastgen.sampling.FusedPixelStep``)."""
        return self

    def step(self, r: int, c: int, gumbel: Tensor, temperature: float) -> None:
        """Draw pixel (r, c) of every image: its ``ul`` positions (``_network_at``), then the head
        and R, G given R and B given R and G in one ``pixelcnnpp_head_draw`` -- what ``logits``
        and ``write`` per channel group give the sampler, in one launch instead of ~60 torch ops
        per channel and the head's two.  The draw writes the values straight into x[:, :, r, c] of the
        image this cache samples (``incremental(x)``) and their scaled form into the image map
        (as ``write`` would): no copy per pixel.  gumbel: [B, C, levels] ([B, levels] for grey
        images)."""
        C = self.model.image_shape[0]
        if self.pixel != (r, c):
            self._network_at(r, c)
        if gumbel.dim() == 2:
            gumbel = gumbel[:, None]
        pixelcnnpp_head_draw(self.last_ul.data[:, :, r + 1, c + 1], self.head, gumbel, self.level_scaled,
                             self.x[:, :, r, c], self.image.data[:, :C, r + 1, c + 1], temperature)

    def begin_row(self, r: int) -> None:
        W = self.model.image_shape[2]
        for level, op in self.u_plan:
            if r % (1 << level) == 0:
                op(r >> level, 0, W >> level)

    def write(self, r: int, c: int, values: Tensor) -> None:
        C = self.model.image_shape[0]
        self.image.data[:, :C, r + 1, c + 1] = self.model.scale(values)

    def _network_at(self, r, c):
        """The ul stream's positions that pixel (r, c) completes (the head runs in the fused step's
        draw, or in ``logits``)."""
        for level, op in self.ul_plan:
            if r % (1 << level) == 0 and c % (1 << level) == 0:
                op(r >> level, c >> level, (c >> level) + 1)
        self.pixel, self.params = (r, c), None

    def logits(self, r: int, c: int) -> Tensor:
        """Per-level log-probabilities [B, levels, C] at (r, c), given the channels written so far."""
        m = self.model
        if self.pixel != (r, c):
            self._network_at(r, c)
        if self.params is None:
            self.params = m.out(F.elu(self.last_ul.at(r, c, c + 1)))           # [B, P, 1, 1]
        xs = self.image.at(r, c, c + 1)[:, :m.image_shape[0]]                  # [B, C, 1, 1]
        log_w, means, log_scales = m._mixture(self.params, xs)
        log_p = m._bin_log_probs(self.level_values, log_w[None], means[None], log_scales[None])   # [levels, B, C, 1, 1]
        return log_p[..., 0, 0].transpose(0, 1)
