"""PixelSNAIL (Chen, Mishra, Rohaninejad and Abbeel, ICML 2018): causal convolutions interleaved
with causal self-attention over every previous pixel.

Shapes as the other image models: images x long ``[B, C, H, W]`` in [0, levels), logits
``[B, levels, C, H, W]``, ``loss`` in bits per dimension; the C channels of a pixel are drawn
together, independent given the pixels before (``channel_groups = [[0, ..., C-1]]``).

The network (features a: [B, channels, H, W]; every map at pixel p depends on pixels < p only):

    a = MaskedConv_A(scale(x)) + pos                    (k0 x k0 type-A raster mask; pos: a
                                                         learned [channels, H, W] "background")
    blocks times:
        res_layers times:  a <- a + 1x1(gated(MaskedConv_B(elu(a)) + W_c cond))
                           (k x k type-B raster mask; gated(u) = tanh(u_1) * sigmoid(u_2))
        a <- a + BlockLocalAttention(LN(a))             (one block = the whole image, causal:
                                                         full causal attention, every pixel
                                                         attends every pixel <= it)
    logits = 1x1(elu(1x1(elu(a))))

What differs from the paper, and why: the convolutions are fastgen's raster-masked convs
(``MaskedConv2d``) rather than PixelCNN++'s down/down-right shifted pair -- a stack of them has
the PixelCNN blind spot, which the first attention layer covers (it sees every previous pixel);
the attention's keys and values come from the features alone (the paper also feeds the raw image
into them), which lets the mask include the diagonal: the features at p already exclude x[p].
The attention is ``fastgen.nn.BlockLocalAttention`` with block = (H, W): the same op, and the same
KV-cache decode path, as the local transformers (plain causal SDPA computes the same thing).

Fast sampling (``incremental``): per pixel, every layer is evaluated at that pixel only --
each masked conv over its k x k window of a padded buffer of its input, the attention as one
decode step against its KV cache -- so a pixel costs O(layers) small ops plus the attention's
O(pixels so far), instead of the naive sampler's whole network over the whole image.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgen.models.pixelcnn import _centre, _PixelModel, _pointwise, _window
from fastgen.nn import MaskedConv2d
from fastgen.nn.attention import BlockLocalAttention
from fastgen.nn.functional import gated_activation


class PixelSNAIL(_PixelModel):
    """PixelSNAIL (module docstring): ``blocks`` blocks of ``res_layers`` gated residual masked
    convs (``kernel_size``) followed by full causal attention (``heads`` heads over ``channels``);
    a ``input_kernel`` type-A masked conv in front.  Conditioning: class ids (``num_classes``) or
    vectors (``cond_channels``), projected into every gated layer."""

    def __init__(self, image_shape: Tuple[int, int, int] = (1, 28, 28), levels: int = 256, channels: int = 64,
                 blocks: int = 2, res_layers: int = 2, kernel_size: int = 3, input_kernel: int = 5, heads: int = 4,
                 num_classes: Optional[int] = None, cond_channels: Optional[int] = None) -> None:
        super().__init__()
        self._setup(image_shape, levels, num_classes, cond_channels, cond_dim=channels)
        for name, value in (("channels", channels), ("blocks", blocks), ("res_layers", res_layers)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        C, H, W = self.image_shape
        self.channel_groups = [list(range(C))]
        self.input = MaskedConv2d(C, channels, input_kernel, "A")
        self.pos = nn.Parameter(torch.zeros(channels, H, W))
        self.res = nn.ModuleList(nn.ModuleList(nn.ModuleDict({
            "conv": MaskedConv2d(channels, 2 * channels, kernel_size, "B"),
            "out": nn.Conv2d(channels, channels, 1),
            **({"cond": nn.Linear(self.cond_dim, 2 * channels, bias=False)} if self.cond_dim else {}),
        }) for _ in range(res_layers)) for _ in range(blocks))
        self.norms = nn.ModuleList(nn.LayerNorm(channels) for _ in range(blocks))
        self.attns = nn.ModuleList(BlockLocalAttention(channels, heads, (H, W), (H, W), causal=True)
                                   for _ in range(blocks))
        self.head1 = nn.Conv2d(channels, channels, 1)
        self.head2 = nn.Conv2d(channels, C * levels, 1)

    def _gated(self, layer: nn.ModuleDict, u: Tensor, cond: Optional[Tensor]) -> Tensor:
        """1x1(gated(u + W_c cond)): u [B, 2*channels, ...] the masked conv's output."""
        if cond is not None:
            u = u + layer["cond"](cond).view(*cond.shape[:1], -1, *([1] * (u.dim() - 2)))
        return layer["out"](gated_activation(u)) if u.dim() == 4 else _pointwise(layer["out"], gated_activation(u))

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        self.check_images(x)
        B, (_, H, W) = x.shape[0], self.image_shape
        c = self.embed_cond(cond, B)
        a = self.input(self.scale(x)) + self.pos
        for layers, norm, attn in zip(self.res, self.norms, self.attns):
            for layer in layers:
                a = a + self._gated(layer, layer["conv"](F.elu(a)), c)
            tokens = a.flatten(2).transpose(1, 2)                               # [B, H*W, channels]
            a = a + attn(norm(tokens)).transpose(1, 2).reshape(a.shape)
        return self.to_logits(self.head2(F.elu(self.head1(F.elu(a)))))

    def incremental(self, x: Tensor, cond: Optional[Tensor] = None, check: bool = True) -> "_SnailCache":
        """The sampling cache for images like x [B, C, H, W] (``fastgen.sampling.PixelCache``);
        ``check=False``: cond has passed ``check_cond`` already."""
        return _SnailCache(self, x, cond, check)


class _SnailCache:
    """Incremental state of a PixelSNAIL: zero-padded buffers of the scaled image and of every
    masked conv's input (position (r, c) at (r + pad, c + pad)) and every attention's KV cache;
    ``logits(r, c)`` evaluates each layer at pixel (r, c) alone."""

    def __init__(self, model: PixelSNAIL, x: Tensor, cond: Optional[Tensor], check: bool = True) -> None:
        self.model = model
        B, (C, H, W) = x.shape[0], model.image_shape
        self.W = W
        self.cond = model.embed_cond(cond, B, check)
        self.pad_in = model.input.kernel_size[0] // 2
        self.pad = model.res[0][0]["conv"].kernel_size[0] // 2
        new = lambda ch, p: torch.zeros(B, ch, H + 2 * p, W + 2 * p, device=x.device, dtype=model.dtype)
        self.image = new(C, self.pad_in)
        channels = model.pos.shape[0]
        self.conv_in = [[new(channels, self.pad) for _ in layers] for layers in model.res]
        self.kv = [attn.new_cache(B) for attn in model.attns]

    @property
    def fused_step(self) -> None:
        """No fused per-pixel step: the sampler calls ``logits`` and ``write``."""
        return None

    def begin_row(self, r: int) -> None:
        pass  # every layer is evaluated per pixel: nothing is shared across a row

    def write(self, r: int, c: int, values: Tensor) -> None:
        p = self.pad_in
        self.image[:, :, r + p, c + p] = self.model.scale(values)

    def logits(self, r: int, c: int) -> Tensor:
        """[B, levels, C] logits at pixel (r, c) given the pixels before it."""
        m, p = self.model, self.pad
        a = _centre(m.input, _window(self.image, r, c, self.pad_in)) + m.pos[:, r, c]        # [B, channels]
        for layers, buffers, norm, attn, kv in zip(m.res, self.conv_in, m.norms, m.attns, self.kv):
            for layer, buf in zip(layers, buffers):
                buf[:, :, r + p, c + p] = F.elu(a)
                a = a + m._gated(layer, _centre(layer["conv"], _window(buf, r, c, p)), self.cond)
            a = a + attn.step(norm(a)[:, None], kv, r * self.W + c)[:, 0]
        out = _pointwise(m.head2, F.elu(_pointwise(m.head1, F.elu(a))))                  # [B, C*levels]
        return out.view(out.shape[0], m.image_shape[0], m.levels).transpose(1, 2)
