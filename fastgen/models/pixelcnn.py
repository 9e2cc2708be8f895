"""PixelCNN (van den Oord et al. 2016) and Gated PixelCNN (van den Oord et al., NeurIPS 2016).

Both model p(x) = prod_i p(x_i | x_<i) over pixels in raster order with a softmax over
``levels`` values per channel, and implement the sampling protocols ``fastgen.sampling.ImageModel``
and ``PixelCache`` (``incremental`` computes only what a new pixel changes).

Shapes: images x are long ``[B, C, H, W]`` with values in [0, levels); logits are
``[B, levels, C, H, W]``; ``loss`` is the negative log-likelihood in bits per dimension.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgen.nn import GatedMaskedConv2d, MaskedConv2d
from fastgen.nn.functional import gated_activation
from fastgen.ops import _validate
from fastgen.ops.gated_pixel_step import (GatedStepWeights, GatedVerticalWeights, gated_pixel_step,
                                         gated_vertical_row)


class _PixelModel(nn.Module):
    """What both models share: input checks, the input scaling, conditioning and the loss."""

    def _setup(self, image_shape, levels, num_classes, cond_channels, cond_dim):
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {image_shape!r}")
        if not isinstance(levels, int) or levels < 2:
            raise ValueError(f"levels must be an int >= 2, got {levels!r}")
        if num_classes is not None and cond_channels is not None:
            raise ValueError("give num_classes (class ids) or cond_channels (vectors), not both")
        self.image_shape = tuple(image_shape)
        self.levels = levels
        self.num_classes = num_classes
        self.cond_channels = cond_channels
        self.cond_dim = None
        if num_classes is not None:
            self.class_embedding = nn.Embedding(num_classes, cond_dim)
            self.cond_dim = cond_dim
        elif cond_channels is not None:
            self.cond_dim = cond_channels

    def check_images(self, x):
        if not isinstance(x, torch.Tensor) or x.dtype not in (torch.long, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"x must be an integer tensor [B, C, H, W], got {getattr(x, 'dtype', type(x))}")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"x must have shape [B, {', '.join(map(str, self.image_shape))}] for this model, "
                             f"got {tuple(x.shape)}")
        _validate.ids_in_range("x values", x, self.levels, f" (levels={self.levels})")

    def check_cond(self, cond: Optional[Tensor], batch: int) -> None:
        """ValueError unless cond is this model's conditioning for ``batch`` images: None for an
        unconditional model, class ids [B] or vectors [B, cond_channels].  Reads the class ids'
        values: a host sync on a GPU (the CUDA-graph sampler checks once, outside its graph)."""
        if self.cond_dim is None:
            if cond is not None:
                raise ValueError("this model is unconditional; cond must be None")
            return
        if cond is None:
            raise ValueError("this model is conditional: pass cond "
                             + ("(class ids [B])" if self.num_classes else f"([B, {self.cond_channels}])"))
        if self.num_classes is not None:
            if cond.dim() != 1 or cond.shape[0] != batch or cond.dtype != torch.long:
                raise ValueError(f"cond must be long class ids of shape [{batch}], "
                                 f"got {cond.dtype} {tuple(cond.shape)}")
            _validate.ids_in_range("class ids", cond, self.num_classes)
        elif cond.dim() != 2 or tuple(cond.shape) != (batch, self.cond_channels):
            raise ValueError(f"cond must have shape [{batch}, {self.cond_channels}], got {tuple(cond.shape)}")

    def embed_cond(self, cond: Optional[Tensor], batch: int, check: bool = True) -> Optional[Tensor]:
        """cond -> [B, cond_dim] in the model's dtype, or None.  ``check``: ``check_cond`` first
        (``check=False`` for a cond checked already: embedding alone never syncs, so it can run
        inside a CUDA graph)."""
        if check:
            self.check_cond(cond, batch)
        if self.cond_dim is None:
            return None
        if self.num_classes is not None:
            return self.class_embedding(cond)
        return cond.to(self.dtype)

    @property
    def dtype(self):
        """The floating dtype of the model's parameters (a model moved to bf16 computes in bf16)."""
        return next(self.parameters()).dtype

    def scale(self, x):
        """Integer pixels -> floats in [-1, 1], in the model's dtype."""
        return (x.float() * (2.0 / (self.levels - 1)) - 1.0).to(self.dtype)

    def to_logits(self, out):
        """[B, C*levels, H, W] (channel-major) -> [B, levels, C, H, W]."""
        B, _, H, W = out.shape
        return out.view(B, self.image_shape[0], self.levels, H, W).transpose(1, 2)

    def loss(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """Negative log-likelihood in bits per dimension (mean over the batch)."""
        return F.cross_entropy(self(x, cond), x.long()) / math.log(2)


def _window(buf, r, c, pad):
    """The (2*pad+1)^2 window centred on (r, c) of a buffer padded by ``pad`` on each side."""
    return buf[:, :, r:r + 2 * pad + 1, c:c + 2 * pad + 1]


def _centre(conv, window):
    """A same-padded conv evaluated at the centre of a window: [B, C_out]."""
    pad = window.shape[-1] // 2
    return conv(window)[:, :, pad, pad]


def _pointwise(conv, t):
    """A 1x1 conv applied to per-pixel features [B, C] -> [B, C_out]."""
    return conv(t[:, :, None, None])[:, :, 0, 0]


class GatedPixelCNN(_PixelModel):
    """Gated PixelCNN: ``layers`` gated layers with vertical and horizontal stacks (no blind
    spot), optional class (``num_classes``) or vector (``cond_channels``) conditioning.

    The channels of one pixel are modelled as independent given the pixels before it
    (``channel_groups = [[0, ..., C-1]]``); for grey images (C = 1) that is no restriction.
    """

    def __init__(self, image_shape: Tuple[int, int, int] = (1, 28, 28), levels: int = 256, channels: int = 64,
                 layers: int = 8, kernel_size: int = 3, num_classes: Optional[int] = None,
                 cond_channels: Optional[int] = None, head_channels: Optional[int] = None):
        super().__init__()
        self._setup(image_shape, levels, num_classes, cond_channels, cond_dim=channels)
        C = self.image_shape[0]
        self.channel_groups = [list(range(C))]
        # A per-pixel embedding; the type-A first layer keeps the current pixel out of view.
        self.embed = nn.Conv2d(C, channels, 1)
        self.layers = nn.ModuleList(
            GatedMaskedConv2d(channels, kernel_size, "A" if i == 0 else "B", self.cond_dim)
            for i in range(layers))
        head_channels = head_channels or channels
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, head_channels, 1), nn.ReLU(),
                                  nn.Conv2d(head_channels, C * levels, 1))

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        self.check_images(x)
        c = self.embed_cond(cond, x.shape[0])
        v = h = self.embed(self.scale(x))
        for layer in self.layers:
            v, h = layer(v, h, c)
        return self.to_logits(self.head(h))

    def incremental(self, x: Tensor, cond: Optional[Tensor] = None, check: bool = True) -> "_GatedCache":
        """The sampling cache for images like x [B, C, H, W] (``fastgen.sampling.PixelCache``);
        ``check=False``: cond has passed ``check_cond`` already (see ``embed_cond``)."""
        return _GatedCache(self, x, cond, check)

    def has_fused_step(self) -> bool:
        """Whether the fused sampling ops apply: grey images and 3x3 kernels."""
        return self.image_shape[0] == 1 and self.layers[0].horizontal.kernel_size[0] == 3

    def packed_step_weights(self) -> Optional[GatedStepWeights]:
        """The weights of ``fastgen.ops.gated_pixel_step`` (fp32), or None where the fused step
        does not apply (it needs grey images and 3x3 kernels)."""
        if not self.has_fused_step():
            return None
        f32 = lambda t: t.detach().float().contiguous()
        # every conv weight [out, in, ...] becomes an [in, out] GEMM operand
        taps = lambda layer: torch.stack([layer.horizontal.weight[:, :, 1, 0].T,
                                          layer.horizontal.weight[:, :, 1, 1].T * (layer.mask_type == "B")])
        one_by_one = lambda conv: conv.weight[:, :, 0, 0].T
        per_layer = lambda part: f32(torch.stack([part(layer) for layer in self.layers]))
        head1, head2 = self.head[1], self.head[3]
        return GatedStepWeights(
            wh=per_layer(taps), bh=per_layer(lambda layer: layer.horizontal.bias),
            wl=per_layer(lambda layer: one_by_one(layer.vertical_to_horizontal)),
            bl=per_layer(lambda layer: layer.vertical_to_horizontal.bias),
            wo=per_layer(lambda layer: one_by_one(layer.horizontal_out)),
            bo=per_layer(lambda layer: layer.horizontal_out.bias),
            w1=f32(one_by_one(head1)), b1=f32(head1.bias), w2=f32(one_by_one(head2)), b2=f32(head2.bias),
            embed_w=f32(self.embed.weight[:, 0, 0, 0]), embed_b=f32(self.embed.bias))

    def packed_vertical_weights(self) -> Optional[GatedVerticalWeights]:
        """The weights of ``fastgen.ops.gated_vertical_row`` (fp32), or None where the fused ops
        do not apply (``has_fused_step``)."""
        if not self.has_fused_step():
            return None
        # the masked 3x3 weight [2CH, CH, 3, 3] -> its two upper rows' taps as [CH, 2CH] operands
        # (the mask zeroes the row itself in the type-A first layer)
        taps = lambda conv: (conv.weight * conv.mask)[:, :, :2].permute(2, 3, 1, 0).flatten(0, 1)
        return GatedVerticalWeights(
            wv=torch.stack([taps(layer.vertical) for layer in self.layers]).detach().float().contiguous(),
            bv=torch.stack([layer.vertical.bias for layer in self.layers]).detach().float().contiguous())


class _GatedCache:
    """Incremental state of a GatedPixelCNN while sampling: per layer, the vertical stack is
    computed once per row and the horizontal stack once per pixel.

    A cache is driven one of two ways (``fastgen.sampling.PixelCache``), and allocates only what
    that way needs:

    - ``logits`` / ``write``: per-layer masked convs over padded buffers of each layer's inputs
      (position (r, c) lives at (r + pad, c + pad)), any model;
    - the fused step (``fused_step.step``, grey models with 3x3 kernels): per pixel one launch
      of ``gated_pixel_step``, which draws straight into the image x (the one this cache was
      built for and samples: ``incremental(x)``) and embeds the drawn value straight into the
      vertical stacks' input ring; per row one launch of ``gated_vertical_row``.  Nothing else
      runs per pixel or per row: no copies, clones or allocations (the state is ping-ponged
      and allocated once, at the first step).

    ``begin_row(r)`` only marks the row: its shared work (the vertical stacks) runs at the
    row's first call, in the way the cache is driven, so a cache driven by the fused step
    never does the unfused stacks' work (nor the reverse)."""

    def __init__(self, model: GatedPixelCNN, x: Tensor, cond: Optional[Tensor], check: bool = True):
        self.model = model
        self.x = x                  # the image being sampled: the fused step draws into it
        self.B, self.device = x.shape[0], x.device
        _, self.H, self.W = model.image_shape
        self.pad = model.layers[0].vertical.kernel_size[0] // 2
        self.cond = model.embed_cond(cond, self.B, check)
        self.fused = model.has_fused_step()
        self.mode = None            # "fused" or "unfused": set by the first step / logits / write
        self.row = None             # the row begun last
        self.row_done = True        # whether the row's vertical stacks are computed

    @property
    def fused_step(self) -> Optional["_GatedCache"]:
        """This cache, whose ``step`` draws a whole pixel in one launch, where the model allows
        the fused step (``fastgen.sampling.PixelCache``); None otherwise."""
        return self if self.fused else None

    def _drive(self, mode: str) -> None:
        """Fix the way this cache is driven at its first call (the two keep separate state)."""
        if self.mode == mode:
            return
        if self.mode is not None:
            raise RuntimeError(f"this cache is driven by {'step' if self.mode == 'fused' else 'logits/write'}; "
                               "use one way per cache (build another with model.incremental)")
        self.mode = mode
        (self._init_fused if mode == "fused" else self._init_unfused)()

    def begin_row(self, r: int) -> None:
        self.row, self.row_done = r, False

    # ---------------------------------------------------------------- the fused step

    def _init_fused(self) -> None:
        m, B, W, dev = self.model, self.B, self.W, self.device
        L, ch = len(m.layers), m.embed.out_channels
        self.step_weights = m.packed_step_weights()
        self.vertical_weights = m.packed_vertical_weights()
        # the vertical stacks' inputs of rows r-1 and r, zero-padded (``gated_vertical_row``)
        self.ring = torch.zeros(L, B, 2, W + 2, ch, device=dev)
        self.v_rows = torch.empty(L, B, W, 2 * ch, device=dev)       # the row's vertical pre-activations
        # the horizontal stacks' inputs at (r, c-1) and (r, c), ping-ponged by column parity;
        # never read at c = 0 (zero padding), so they need no reset per row
        self.p = [torch.empty(L, B, ch, device=dev) for _ in range(2)]

        def cond_terms(linear):     # [L, B, 2CH] each layer's conditioning term, zeros without
            if self.cond is None:
                return torch.zeros(L, B, 2 * ch, device=dev)
            return torch.stack([getattr(layer, linear)(self.cond) for layer in m.layers]).float().contiguous()
        self.cond_v, self.cond_h = cond_terms("cond_vertical"), cond_terms("cond_horizontal")

    def step(self, r: int, c: int, gumbel: Tensor, temperature: float) -> None:
        """Draw pixel (r, c) with one fused launch (two at the row's first pixel: the row's
        vertical stacks first): gumbel [B, levels] -> x[:, 0, r, c] of the image x this cache
        samples (``GatedPixelCNN.incremental(x)``), written by the kernel; returns None
        (``fastgen.sampling.FusedPixelStep``: nothing for the sampler to copy)."""
        self._drive("fused")
        if not self.row_done:
            gated_vertical_row(self.ring, self.v_rows, self.cond_v, self.vertical_weights, r)
            self.row_done = True
        p_in, p_out = self.p[c % 2], self.p[(c + 1) % 2]
        drawn = self.x[:, 0, r, c]                                   # [B] a strided view of the image
        embedded_row = self.ring[0, :, r % 2, 1:self.W + 1]          # [B, W, CH]: the next row reads it
        gated_pixel_step(p_in, p_out, self.v_rows, self.cond_h, self.step_weights, gumbel, drawn, embedded_row, c,
                         1.0 / temperature, 2.0 / (self.model.levels - 1))

    # ---------------------------------------------------------------- logits / write

    def _init_unfused(self) -> None:
        m, B, H, W, p = self.model, self.B, self.H, self.W, self.pad
        ch = m.embed.out_channels
        new = lambda channels: torch.zeros(B, channels, H + 2 * p, W + 2 * p, device=self.device, dtype=m.dtype)
        self.v_in = [new(ch) for _ in m.layers]       # v_in[0] = h_in[0] = embedded image
        self.h_in = [self.v_in[0]] + [new(ch) for _ in m.layers[1:]]
        self.v_pre = [None] * len(m.layers)

    def _unfused_row(self) -> None:
        """The row's vertical stacks, layer by layer (their inputs are rows r-p .. r; the type-A
        first layer's mask leaves out row r of the image, not written yet)."""
        self._drive("unfused")
        if self.row_done:
            return
        self.row_done = True
        p, W, r = self.pad, self.W, self.row
        for l, layer in enumerate(self.model.layers):
            rows = self.v_in[l][:, :, r:r + 2 * p + 1, :]          # padded rows r-p .. r+p
            v_pre = layer.vertical(rows)[:, :, p, p:p + W]          # [B, 2ch, W] at row r
            self.v_pre[l] = v_pre
            if l + 1 < len(self.model.layers):
                gate_in = v_pre if self.cond is None else v_pre + layer.cond_vertical(self.cond)[:, :, None]
                self.v_in[l + 1][:, :, r + p, p:p + W] = gated_activation(gate_in)

    def write(self, r: int, c: int, values: Tensor) -> None:
        self._unfused_row()
        p = self.pad
        self.v_in[0][:, :, r + p, c + p] = _pointwise(self.model.embed, self.model.scale(values))

    def logits(self, r: int, c: int) -> Tensor:
        """[B, levels, C] logits at pixel (r, c) given everything written so far."""
        self._unfused_row()
        p = self.pad
        h = None
        for l, layer in enumerate(self.model.layers):
            h_pre = _centre(layer.horizontal, _window(self.h_in[l], r, c, p))
            h_pre = h_pre + _pointwise(layer.vertical_to_horizontal, self.v_pre[l][:, :, c])
            if self.cond is not None:
                h_pre = h_pre + layer.cond_horizontal(self.cond)
            h = _pointwise(layer.horizontal_out, gated_activation(h_pre))
            if layer.mask_type == "B":
                h = h + self.h_in[l][:, :, r + p, c + p]
            if l + 1 < len(self.model.layers):
                self.h_in[l + 1][:, :, r + p, c + p] = h
        out = self.model.head(h[:, :, None, None])[:, :, 0, 0]     # [B, C*levels]
        return out.view(out.shape[0], self.model.image_shape[0], self.model.levels).transpose(1, 2)


class PixelCNN(_PixelModel):
    """PixelCNN: a 7x7 type-A masked conv, ``residual_blocks`` type-B residual blocks
    (1x1 -> 3x3 -> 1x1, 2h -> h -> h -> 2h channels), and a two-layer 1x1 head, all masked
    with ``color_groups = C`` so channel j of a pixel sees channels < j of that pixel
    (R, then G given R, then B given R and G)."""

    def __init__(self, image_shape: Tuple[int, int, int] = (1, 28, 28), levels: int = 256, channels: int = 64,
                 residual_blocks: int = 7, kernel_size: int = 7, num_classes: Optional[int] = None,
                 cond_channels: Optional[int] = None):
        super().__init__()
        self._setup(image_shape, levels, num_classes, cond_channels, cond_dim=2 * channels)
        C = self.image_shape[0]
        if channels % C:
            raise ValueError(f"channels = {channels} must be divisible by the image's C = {C}")
        g = C
        self.channel_groups = [[i] for i in range(C)]
        self.input = MaskedConv2d(C, 2 * channels, kernel_size, "A", color_groups=g)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "reduce": MaskedConv2d(2 * channels, channels, 1, "B", color_groups=g),
            "conv": MaskedConv2d(channels, channels, 3, "B", color_groups=g),
            "expand": MaskedConv2d(channels, 2 * channels, 1, "B", color_groups=g),
        }) for _ in range(residual_blocks))
        self.head1 = MaskedConv2d(2 * channels, 2 * channels, 1, "B", color_groups=g)
        self.head2 = MaskedConv2d(2 * channels, C * levels, 1, "B", color_groups=g)
        if self.cond_dim is not None:
            self.cond_proj = nn.Linear(self.cond_dim, 2 * channels, bias=False)

    def _block(self, block, a, conv3x3):
        """a + expand(relu(conv3x3(relu(reduce(relu(a)))))), with conv3x3 supplied by the caller."""
        return a + block["expand"](F.relu(conv3x3(F.relu(block["reduce"](F.relu(a))))))

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        self.check_images(x)
        c = self.embed_cond(cond, x.shape[0])
        a = self.input(self.scale(x))
        if c is not None:
            a = a + self.cond_proj(c)[:, :, None, None]
        for block in self.blocks:
            a = self._block(block, a, block["conv"])
        return self.to_logits(self.head2(F.relu(self.head1(F.relu(a)))))

    def incremental(self, x: Tensor, cond: Optional[Tensor] = None, check: bool = True) -> "_PixelCNNCache":
        """The sampling cache for images like x [B, C, H, W] (``fastgen.sampling.PixelCache``);
        ``check=False``: cond has passed ``check_cond`` already (see ``embed_cond``)."""
        return _PixelCNNCache(self, x, cond, check)


class _PixelCNNCache:
    """Incremental state of a PixelCNN: padded buffers of the image and of each block's 3x3
    input; every layer is evaluated only at the current pixel."""

    def __init__(self, model: PixelCNN, x: Tensor, cond: Optional[Tensor], check: bool = True):
        self.model = model
        B = x.shape[0]
        C, H, W = model.image_shape
        self.pad_in = model.input.kernel_size[0] // 2
        self.cond = model.embed_cond(cond, B, check)
        p = self.pad_in
        self.image = torch.zeros(B, C, H + 2 * p, W + 2 * p, device=x.device, dtype=model.dtype)
        mid = model.blocks[0]["conv"].in_channels if len(model.blocks) else 0
        self.block_in = [torch.zeros(B, mid, H + 2, W + 2, device=x.device, dtype=model.dtype) for _ in model.blocks]

    @property
    def fused_step(self) -> None:
        """No fused per-pixel step (``fastgen.sampling.PixelCache``): the sampler calls ``logits``."""
        return None

    def begin_row(self, r: int) -> None:
        pass  # every layer is evaluated per pixel: nothing is shared across a row

    def write(self, r: int, c: int, values: Tensor) -> None:
        p = self.pad_in
        self.image[:, :, r + p, c + p] = self.model.scale(values)

    def logits(self, r: int, c: int) -> Tensor:
        """[B, levels, C] logits at pixel (r, c) given everything written so far."""
        m = self.model
        a = _centre(m.input, _window(self.image, r, c, self.pad_in))
        if self.cond is not None:
            a = a + m.cond_proj(self.cond)
        for block, buf in zip(m.blocks, self.block_in):
            t = F.relu(_pointwise(block["reduce"], F.relu(a)))
            buf[:, :, r + 1, c + 1] = t
            t = _centre(block["conv"], _window(buf, r, c, 1))
            a = a + _pointwise(block["expand"], F.relu(t))
        out = _pointwise(m.head2, F.relu(_pointwise(m.head1, F.relu(a))))
        return out.view(out.shape[0], m.image_shape[0], m.levels).transpose(1, 2)
