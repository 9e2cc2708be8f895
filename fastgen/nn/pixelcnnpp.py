"""PixelCNN++'s layers (Salimans et al. 2017): shifted convolutions and the gated ResNet block.

Two kinds of shift keep a stack causal without a blind spot:

- ``DownShiftedConv`` (default 2x3): output (r, c) sees rows r - kh + 1 .. r and columns
  c - kw//2 .. c + kw//2 -- the rows above when its input is ``down_shift``-ed;
- ``DownRightShiftedConv`` (default 2x2): output (r, c) sees rows r - kh + 1 .. r and columns
  c - kw + 1 .. c -- the rows above and the pixels to the left once shifted.

The stride-2 ``DownShiftedDeconv`` / ``DownRightShiftedDeconv`` upsample with the same views.
``GatedResnet`` is x + a * sigmoid(b) over two such convs.  All are plain ``nn.Conv2d`` /
``nn.ConvTranspose2d`` subclasses (same parameters and state dicts); maps are [B, C, H, W].

``pack_resnet_weights`` / ``pack_cond_bias`` give a GatedResnet's weights the form the fused
sampling step ``fastgen.ops.pixelcnnpp_resnet_at`` takes, ``pack_head_weights`` the output head's
the form the fused head-and-draw ``fastgen.ops.pixelcnnpp_mixture.pixelcnnpp_head_draw`` takes.
"""
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgen.ops.pixelcnnpp_mixture import HeadWeights
from fastgen.ops.pixelcnnpp_resnet import ResnetWeights
from fastgen.ops.pixelcnnpp_resnet.reference import concat_elu


def down_shift(x: Tensor) -> Tensor:
    """[B, C, H, W] moved down one row (a zero row on top, the last row dropped)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def right_shift(x: Tensor) -> Tensor:
    """[B, C, H, W] moved right one column (a zero column on the left, the last dropped)."""
    return F.pad(x, (1, 0))[:, :, :, :-1]


class DownShiftedConv(nn.Conv2d):
    """Output (r, c) sees rows r - kh + 1 .. r, columns c - kw//2 .. c + kw//2 (kh x kw filter).
    ``pads`` = (left, right, top, bottom) zero padding applied before the conv."""

    def __init__(self, cin: int, cout: int, size: Tuple[int, int] = (2, 3), stride: int = 1):
        super().__init__(cin, cout, size, stride=stride)
        self.pads = ((size[1] - 1) // 2, (size[1] - 1) // 2, size[0] - 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.pads))


class DownRightShiftedConv(nn.Conv2d):
    """Output (r, c) sees rows r - kh + 1 .. r, columns c - kw + 1 .. c.
    ``pads`` = (left, right, top, bottom) zero padding applied before the conv."""

    def __init__(self, cin: int, cout: int, size: Tuple[int, int] = (2, 2), stride: int = 1):
        super().__init__(cin, cout, size, stride=stride)
        self.pads = (size[1] - 1, 0, size[0] - 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.pads))


class DownShiftedDeconv(nn.ConvTranspose2d):
    """Stride-2 upsampling [B, cin, h, w] -> [B, cout, 2h, 2w] that keeps the down shift."""

    def __init__(self, cin: int, cout: int, size: Tuple[int, int] = (2, 3)):
        super().__init__(cin, cout, size, stride=2, output_padding=1)
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        kh, kw = self.size
        return y[:, :, :y.shape[2] - kh + 1, (kw - 1) // 2:y.shape[3] - (kw - 1) // 2]


class DownRightShiftedDeconv(nn.ConvTranspose2d):
    """Stride-2 upsampling [B, cin, h, w] -> [B, cout, 2h, 2w] that keeps the down-right shift."""

    def __init__(self, cin: int, cout: int, size: Tuple[int, int] = (2, 2)):
        super().__init__(cin, cout, size, stride=2, output_padding=1)
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        kh, kw = self.size
        return y[:, :, :y.shape[2] - kh + 1, :y.shape[3] - kw + 1]


class GatedResnet(nn.Module):
    """x + a * sigmoid(b), [a, b] = conv2(dropout(concat_elu(conv1(concat_elu(x)) + nin(concat_elu(aux)))))
    (+ a linear projection of ``cond`` added to [a, b]).

    x: [B, C, H, W]; aux: [B, aux_channels, H, W] or None; cond: [B, cond_dim] or None.
    ``conv``: the shifted conv class (``DownShiftedConv`` or ``DownRightShiftedConv``)."""

    def __init__(self, channels: int, conv: Callable[[int, int], nn.Conv2d], aux_channels: int = 0,
                 dropout: float = 0.5, cond_dim: Optional[int] = None):
        super().__init__()
        self.conv1 = conv(2 * channels, channels)
        self.aux = nn.Conv2d(2 * aux_channels, channels, 1) if aux_channels else None
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(2 * channels, 2 * channels)
        self.cond = nn.Linear(cond_dim, 2 * channels, bias=False) if cond_dim else None

    def forward(self, x: Tensor, aux: Optional[Tensor] = None, cond: Optional[Tensor] = None) -> Tensor:
        c = self.conv1(concat_elu(x))
        if aux is not None:
            c = c + self.aux(concat_elu(aux))
        c = self.conv2(self.dropout(concat_elu(c)))
        if cond is not None:
            c = c + self.cond(cond)[:, :, None, None]
        a, b = c.chunk(2, dim=1)
        return x + a * torch.sigmoid(b)


def _kernel_dtype(t: Tensor) -> Tensor:
    """fp32 contiguous (what the fused kernels take) unless t is fp64 (fp64 models sample on the
    reference, and keep their precision there)."""
    return (t if t.dtype == torch.float64 else t.float()).contiguous()


def pack_resnet_weights(res: GatedResnet) -> ResnetWeights:
    """A GatedResnet's weights as ``fastgen.ops.pixelcnnpp_resnet_at`` takes them (a
    ``ResnetWeights``: shapes there): a conv weight [out, in, KH, KW] becomes [KH*KW, in, out],
    taps row-major, so that each tap is a [2C, out] GEMM operand.  Detached copies: pack again
    after the weights change."""
    f32 = lambda t: _kernel_dtype(t.detach())
    taps = lambda conv: f32(conv.weight.permute(2, 3, 1, 0).reshape(-1, conv.in_channels, conv.out_channels))
    nin = res.aux
    return ResnetWeights(w1=taps(res.conv1), b1=f32(res.conv1.bias),
                         w_aux=None if nin is None else f32(nin.weight[:, :, 0, 0].T),
                         b_aux=None if nin is None else f32(nin.bias),
                         w2=taps(res.conv2), b2=f32(res.conv2.bias))


def pack_cond_bias(res: GatedResnet, cond: Optional[Tensor]) -> Optional[Tensor]:
    """The conditioning term res.cond(cond) [B, 2C] as the fused step takes it, or None
    without conditioning.  cond: [B, cond_dim] embedded conditioning."""
    return None if cond is None else _kernel_dtype(res.cond(cond))


def pack_head_weights(out: nn.Conv2d) -> HeadWeights:
    """PixelCNN++'s output head, the 1x1 ``Conv2d(F, P, 1)`` applied after an elu, as
    ``pixelcnnpp_head_draw`` takes it: weight [F, P] (the conv's [P, F, 1, 1] transposed), bias
    [P].  Detached contiguous copies in the conv's dtype -- the dtype of the features the model
    computes (fp32 takes the kernel; 16-bit and fp64 models draw on the reference): pack again
    after the weights change."""
    packed = lambda t: t.detach().contiguous()
    return HeadWeights(weight=packed(out.weight[:, :, 0, 0].T), bias=packed(out.bias))
