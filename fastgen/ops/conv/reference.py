"""Plain-PyTorch references of the conv family: the specification of ``masked_conv2d`` and
``causal_conv1d`` (and of the PixelCNN mask).  The CPU path and the tests call these; there is
no second copy of the math.  Shapes: B batch, C channels, H/W image size, T length, k kernel
size, d dilation.
"""
from typing import Literal, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor


STACKS = ("raster", "vertical", "horizontal")


def pixelcnn_mask(out_channels: int, in_channels: int, kernel_size: int,
                  mask_type: Literal["A", "B"] = "B", color_groups: int = 1,
                  stack: Literal["raster", "vertical", "horizontal"] = "raster",
                  dtype: torch.dtype = torch.float32,
                  device: Optional[Union[torch.device, str]] = None) -> Tensor:
    """A PixelCNN mask, ``[C_out, C_in, k, k]`` of 0/1 (van den Oord et al. 2016), c = k // 2.

    ``stack`` picks which taps exist:
    - 'raster' (PixelCNN): rows above the centre, and the centre row left of the centre;
    - 'vertical' (Gated PixelCNN vertical stack): rows above the centre, and for type 'B'
      the whole centre row (its inputs only ever carry rows above, so no pixel sees itself);
    - 'horizontal' (Gated PixelCNN horizontal stack): the centre row left of the centre.
    At the centre tap itself ('raster' and 'horizontal'), with the channels of input and
    output split into ``color_groups`` equal groups (R, G, B for 3), output group ``go``
    sees input group ``gi`` iff ``gi < go`` (type 'A') or ``gi <= go`` (type 'B').  With
    one group, type 'A' drops the centre tap and type 'B' keeps it.
    """
    k = kernel_size
    c = k // 2
    mask = torch.zeros(out_channels, in_channels, k, k, dtype=dtype, device=device)
    if stack in ("raster", "vertical"):
        mask[:, :, :c, :] = 1
    if stack == "vertical":
        if mask_type == "B":
            mask[:, :, c, :] = 1
        return mask
    mask[:, :, c, :c] = 1
    go = torch.arange(out_channels, device=device) // (out_channels // color_groups)
    gi = torch.arange(in_channels, device=device) // (in_channels // color_groups)
    sees = gi[None, :] < go[:, None] if mask_type == "A" else gi[None, :] <= go[:, None]
    mask[:, :, c, c] = sees.to(dtype)
    return mask


def masked_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                  mask_type: Literal["A", "B"] = "B", color_groups: int = 1, dilation: int = 1,
                  stack: Literal["raster", "vertical", "horizontal"] = "raster") -> Tensor:
    """PixelCNN masked convolution, stride 1, "same" padding.

    x: [B, C_in, H, W], weight: [C_out, C_in, k, k] (k odd), bias: [C_out] or None
    -> y: [B, C_out, H, W] = conv2d(x, weight * mask, bias, padding=d*(k//2), dilation=d),
    mask = pixelcnn_mask(C_out, C_in, k, mask_type, color_groups, stack)
    """
    c_out, c_in, k, _ = weight.shape
    mask = pixelcnn_mask(c_out, c_in, k, mask_type, color_groups, stack, weight.dtype, weight.device)
    return F.conv2d(x, weight * mask, bias, padding=dilation * (k // 2), dilation=dilation)


def causal_conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, dilation: int = 1) -> Tensor:
    """Causal dilated convolution: output length equals input length.

    x: [B, C_in, T], weight: [C_out, C_in, k], bias: [C_out] or None
    -> y: [B, C_out, T] = conv1d(pad_left(x, d*(k-1)), weight, bias, dilation=d)
    so y[..., t] depends on x[..., t - d*(k-1) : t+1 : d] only.
    """
    k = weight.shape[-1]
    return F.conv1d(F.pad(x, (dilation * (k - 1), 0)), weight, bias, dilation=dilation)
