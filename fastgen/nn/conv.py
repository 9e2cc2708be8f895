"""Drop-in convolution layers: thin modules over ``fastgen.ops``."""
from typing import Literal, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from fastgen.nn import functional as F
from fastgen.ops.conv import reference


class MaskedConv2d(nn.Conv2d):
    """PixelCNN masked convolution, a drop-in for ``nn.Conv2d``.

    Same parameter names and shapes as ``nn.Conv2d(in, out, k, padding=dilation*(k//2),
    dilation=dilation)`` and loads its state dict; ``.mask`` ([C_out, C_in, k, k]) is a
    non-persistent buffer.  forward: x [B, C_in, H, W] -> [B, C_out, H, W]
    = conv2d(x, weight * mask, bias, padding=dilation*(k//2), dilation=dilation).
    Only the unmasked taps are computed (a 7x7 type-A mask does 24/49 of the work).
    ``stack='vertical'|'horizontal'`` gives the masks of the Gated PixelCNN stacks.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 mask_type: Literal["A", "B"] = "B", color_groups: int = 1, dilation: int = 1,
                 bias: bool = True, stack: Literal["raster", "vertical", "horizontal"] = "raster",
                 device: Optional[Union[torch.device, str]] = None, dtype: Optional[torch.dtype] = None) -> None:
        if not isinstance(kernel_size, int) or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd int, got {kernel_size!r}")
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
        if stack not in reference.STACKS:
            raise ValueError(f"stack must be one of {reference.STACKS}, got {stack!r}")
        if color_groups < 1 or in_channels % color_groups or out_channels % color_groups:
            raise ValueError(f"color_groups = {color_groups} must divide in_channels = {in_channels} "
                             f"and out_channels = {out_channels}")
        super().__init__(in_channels, out_channels, kernel_size, padding=dilation * (kernel_size // 2),
                         dilation=dilation, bias=bias, device=device, dtype=dtype)
        self.mask_type, self.color_groups, self.stack = mask_type, color_groups, stack
        mask = reference.pixelcnn_mask(out_channels, in_channels, kernel_size, mask_type,
                                       color_groups, stack, device=device)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.masked_conv2d(x, self.weight, self.bias, self.mask_type, self.color_groups,
                               self.dilation[0], self.stack)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", mask_type={self.mask_type!r}, color_groups={self.color_groups}"
                + (f", stack={self.stack!r}" if self.stack != "raster" else ""))


class CausalConv1d(nn.Conv1d):
    """Causal dilated 1-D convolution (WaveNet), a drop-in for ``nn.Conv1d`` parameters.

    forward: x [B, C_in, T] -> [B, C_out, T] = conv1d(pad_left(x, d*(k-1)), weight, bias, dilation=d),
    so output t depends only on inputs t, t-d, ..., t-d*(k-1).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1,
                 bias: bool = True, device: Optional[Union[torch.device, str]] = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias,
                         device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.causal_conv1d(x, self.weight, self.bias, self.dilation[0])


class GatedMaskedConv2d(nn.Module):
    """One Gated PixelCNN layer (van den Oord et al. 2016) with vertical and horizontal stacks.

    forward(v, h, cond=None) -> (v, h), v and h: [B, C, H, W], cond: [B, cond_channels].
    - vertical: v' = tanh(a) * sigmoid(b), [a, b] = Vconv(v) + Wc cond  (Vconv: k x k, rows
      above the centre; type 'B' adds the centre row)
    - horizontal: [a, b] = Hconv(h) + 1x1(Vconv(v)) + Wc' cond  (Hconv: the centre row, left
      of the centre; type 'B' adds the centre); h' = 1x1(tanh(a) * sigmoid(b)) (+ h for 'B').
    The vertical stack covers the whole width of every row above, so a stack of these has no
    blind spot.  Use type 'A' for the first layer (with v = h = the embedded input) and 'B' after.
    """

    def __init__(self, channels: int, kernel_size: int = 3, mask_type: Literal["A", "B"] = "B",
                 cond_channels: Optional[int] = None) -> None:
        super().__init__()
        self.mask_type = mask_type
        self.vertical = MaskedConv2d(channels, 2 * channels, kernel_size, mask_type, stack="vertical")
        self.horizontal = MaskedConv2d(channels, 2 * channels, kernel_size, mask_type, stack="horizontal")
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.horizontal_out = nn.Conv2d(channels, channels, 1)
        self.cond_channels = cond_channels
        if cond_channels is not None:
            self.cond_vertical = nn.Linear(cond_channels, 2 * channels, bias=False)
            self.cond_horizontal = nn.Linear(cond_channels, 2 * channels, bias=False)

    def forward(self, v: Tensor, h: Tensor, cond: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        if (cond is None) != (self.cond_channels is None):
            raise ValueError("cond must be given exactly when the layer was built with cond_channels "
                             f"(cond_channels={self.cond_channels}, cond is {'None' if cond is None else 'given'})")
        v_pre = self.vertical(v)
        h_pre = self.horizontal(h) + self.vertical_to_horizontal(v_pre)
        if cond is not None:
            if cond.dim() != 2 or cond.shape[1] != self.cond_channels:
                raise ValueError(f"cond must have shape [B, {self.cond_channels}], got {tuple(cond.shape)}")
            v_pre = v_pre + self.cond_vertical(cond)[:, :, None, None]
            h_pre = h_pre + self.cond_horizontal(cond)[:, :, None, None]
        v_out = F.gated_activation(v_pre)
        h_out = self.horizontal_out(F.gated_activation(h_pre))
        if self.mask_type == "B":  # type A must not pass the current pixel through
            h_out = h_out + h
        return v_out, h_out
