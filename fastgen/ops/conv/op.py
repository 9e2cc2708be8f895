"""Masked 2-D and causal 1-D convolutions: checks, dispatch, torch.library registration.

Both ops run on one Triton kernel family (``fastgen.kernels.tap_conv``): an implicit GEMM
over an explicit list of kernel taps, so masked taps cost nothing.  Internally the Triton
path works channels-last (``[B, H, W, C]`` / ``[B, T, C]``) because that makes every load a
contiguous run of channels; its outputs are channels-last tensors of the usual logical
shape, so a stack of fastgen layers never converts layouts between layers.

Backends (see ``fastgen.ops._backend``): the reference in ``fastgen.ops.conv.reference`` on
CPU (and for float64), Triton on CUDA and under ``TRITON_INTERPRET=1``.  The Triton path is
declared with ``fastgen.ops._define`` as ``torch.ops.fastgen.masked_conv2d`` / ``causal_conv1d``
(fake kernels, autograd); that op is what ``torch.compile`` sees, while eager calls take the
``autograd.Function`` the same declaration builds, which skips the dispatcher's host cost,
keeps the packed weight for backward and skips unneeded gradients.

Under ``torch.autocast`` both ops follow ``nn.Conv2d`` / ``nn.Conv1d``: x, weight and bias are
cast to the autocast dtype and the output has that dtype (``_AUTOCAST``; float32 parameters
get float32 gradients through the casts).
"""
import functools
from typing import List, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fastgen.ops import _backend, _validate
from fastgen.ops.conv import reference
from fastgen.ops._define import Autocast, define_autograd, define_op, dot_precision

# Both ops replace a convolution, which autocast runs in its lower precision: so do they (the
# public functions for eager calls, the registered ops for torch.compile).
_AUTOCAST = Autocast("lower", cast=("x", "weight", "bias"))


# --------------------------------------------------------------------------- taps

@functools.lru_cache(maxsize=None)
def _masked_taps(k, mask_type, color_groups, stack, dilation):
    """Kept taps of a PixelCNN mask: (``Taps``, their number T).  Derived from the reference
    mask, so there is one definition of which taps exist; every such mask keeps a
    consecutive run of raster positions first .. first + T - 1."""
    from fastgen.kernels.tap_conv import Taps
    mask = reference.pixelcnn_mask(color_groups, color_groups, k, mask_type, color_groups, stack)
    flat = torch.nonzero(mask.amax(dim=(0, 1)).flatten()).flatten()
    first = int(flat[0]) if len(flat) else 0
    if not torch.equal(flat, torch.arange(first, first + len(flat))):  # pragma: no cover
        raise AssertionError(f"mask taps {flat.tolist()} are not a consecutive raster run")
    return Taps(first, k, k // 2, k // 2, dilation), len(flat)


@functools.lru_cache(maxsize=64)
def _group_mask(c_out, c_in, k, mask_type, color_groups, stack, dtype, device):
    """The full reference mask, built once per configuration and device: with colour groups the
    centre tap is partly masked, and rebuilding the mask on every call is work in the hot path."""
    return reference.pixelcnn_mask(c_out, c_in, k, mask_type, color_groups, stack, dtype, device)


def _causal_taps(k, dilation):
    """Tap j of a causal 1-D conv reads x[t - (k-1-j)*d]: window position j, centre k-1."""
    from fastgen.kernels.tap_conv import Taps
    return Taps(0, k, 0, k - 1, dilation)


@functools.lru_cache(maxsize=None)
def _num_sms(device):
    return torch.cuda.get_device_properties(device).multi_processor_count


def _wgrad_splits(m, tiles, device):
    """How many pixel splits the weight gradient uses: about two programs per SM.  Each split
    writes a whole fp32 [T, C_in, C_out] partial that a reduction reads back, so more splits
    than the GPU needs cost bandwidth: with four programs per SM the causal conv's partials
    were 34.6 MB and their reduction took 68 us on an H100 (benchmarks/results/h100)."""
    target = 2 * _num_sms(device) if device.type == "cuda" else 2
    return max(1, min(-(-m // 512), -(-target // tiles)))


# ------------------------------------------------------- shared Triton forward/backward

def _dot_precision(x):
    """fastgen's TF32 rule for a conv (``fastgen.ops._define.dot_precision``): TF32 exactly when
    ``nn.Conv2d`` would use it (``torch.backends.cudnn.allow_tf32``)."""
    return dot_precision(x.dtype, x.device, tf32="conv")


def _tap_forward(x_cl, w_packed, taps, bias):
    """x_cl: [B, H, W, C_in] (any strides), w_packed: [T, C_in, C_out] -> y: [B, H, W, C_out]."""
    from fastgen.kernels.tap_conv import tap_conv_forward
    B, H, W, _ = x_cl.shape
    y = _backend.empty(B, H, W, w_packed.shape[2], dtype=x_cl.dtype, device=x_cl.device)
    return tap_conv_forward(x_cl, w_packed, taps, bias, y, _dot_precision(x_cl))


def _tap_backward(gy_cl, x_cl, w_packed, taps, needs=(True, True, True)):
    """Gradients of _tap_forward: (gx_cl [B, H, W, C_in], gw_packed fp32 [T, C_in, C_out],
    gb fp32 [C_out]); ``needs`` says which to compute (the others are None)."""
    from fastgen.kernels.tap_conv import tap_conv_forward, tap_conv_weight_grad
    B, H, W, c_in = x_cl.shape
    T, _, c_out = w_packed.shape
    # grad x[p] = sum_t gy[p - off_t] @ W_t^T: the forward sum with negated taps and each
    # tap's weight matrix transposed (a strided view, no copy).
    precision = _dot_precision(x_cl)
    gx = gw = gb = None
    if needs[0]:
        gx = _backend.empty(B, H, W, c_in, dtype=x_cl.dtype, device=x_cl.device)
        tap_conv_forward(gy_cl, w_packed.transpose(1, 2), taps, None, gx, precision, mirror=True)
    if needs[1]:
        tiles = T * -(-c_in // 128) * -(-c_out // 128)
        splits = _wgrad_splits(B * H * W, tiles, x_cl.device)
        # Per-split partial sums, then one reduction: measured faster on an H100 than atomic
        # adds into one buffer (the causal conv's 2 taps make the atomics contend).
        partial = _backend.empty(splits, T, c_in, c_out, dtype=torch.float32, device=x_cl.device)
        gw = tap_conv_weight_grad(x_cl, gy_cl, taps, partial, precision).sum(0)
    if needs[2]:
        gb = gy_cl.sum(dim=(0, 1, 2), dtype=torch.float32)
    return gx, gw, gb


def _channels_last(t):
    """[B, C, *S] -> [B, *S, C] with channel stride 1: a view when it already is, else a copy
    (a Triton transpose for contiguous inputs -- twice as fast as PyTorch's permute copy)."""
    order = (0, *range(2, t.dim()), 1)
    if t.stride(1) == 1:
        return t.permute(order)
    if not t.is_contiguous():
        return t.permute(order).contiguous()
    from fastgen.kernels.layout import to_channels_last
    out = _backend.empty(*(t.shape[i] for i in order), dtype=t.dtype, device=t.device)
    to_channels_last(t.view(t.shape[0], t.shape[1], -1), out.view(t.shape[0], -1, t.shape[1]))
    return out


# ------------------------------------------------------------------ masked_conv2d

def _check_masked_conv2d(x, weight, bias, mask_type, color_groups, dilation, stack):
    _validate.tensor("x", x, 4, "[B, C_in, H, W]")
    _validate.tensor("weight", weight, 4, "[C_out, C_in, k, k]")
    c_out, c_in, kh, kw = weight.shape
    if kh != kw or kh % 2 == 0:
        raise ValueError(f"weight must have an odd square kernel [C_out, C_in, k, k], got k = {kh}x{kw}")
    if x.shape[1] != c_in:
        raise ValueError(f"x has {x.shape[1]} channels but weight expects C_in = {c_in}")
    _validate.bias(bias, c_out)
    _validate.same_dtype_and_device(x=x, weight=weight, bias=bias)
    _validate.one_of("mask_type", mask_type, ("A", "B"))
    _validate.one_of("stack", stack, reference.STACKS)
    _validate.positive_int("color_groups", color_groups)
    _validate.positive_int("dilation", dilation)
    if c_in % color_groups or c_out % color_groups:
        raise ValueError(f"color_groups = {color_groups} must divide C_in = {c_in} and C_out = {c_out}")


@_AUTOCAST
def masked_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                  mask_type: Literal["A", "B"] = "B", color_groups: int = 1, dilation: int = 1,
                  stack: Literal["raster", "vertical", "horizontal"] = "raster",
                  backend: Optional[Literal["reference", "triton"]] = None) -> Tensor:
    """PixelCNN masked convolution (stride 1, "same" padding), with autograd.

    x: [B, C_in, H, W], weight: [C_out, C_in, k, k] (k odd), bias: [C_out] or None
    -> [B, C_out, H, W] = conv2d(x, weight * mask, bias, padding=d*(k//2), dilation=d),
    mask from ``fastgen.ops.conv.reference.pixelcnn_mask``.  Types 'A' and 'B'; ``color_groups=3``
    gives the RGB ordering; ``stack='vertical'|'horizontal'`` the Gated PixelCNN stacks.
    dtypes float32/float16/bfloat16 on Triton; float32 uses TF32 exactly when ``nn.Conv2d``
    would (``torch.backends.cudnn.allow_tf32``); float64 runs on the reference.  Under
    ``torch.autocast`` x, weight and bias are cast to the autocast dtype, as ``nn.Conv2d``'s are,
    and so is the output.
    ``backend``: None (automatic), 'reference' or 'triton'.  The Triton path returns a
    channels-last tensor; given one (channel stride 1) it reads it without a copy.
    """
    _check_masked_conv2d(x, weight, bias, mask_type, color_groups, dilation, stack)
    args = (mask_type, color_groups, dilation, stack)
    if _masked_conv2d_kernel.backend(x, backend) == "reference":
        return reference.masked_conv2d(x, weight, bias, *args)
    return _masked_conv2d_kernel(x, weight, bias, *args)


def _pack_masked_weight(weight, mask_type, color_groups, dilation, stack):
    """weight [C_out, C_in, k, k] -> (w_packed [T, C_in, C_out] of the kept taps, masked; Taps)."""
    c_out, c_in, k, _ = weight.shape
    taps, n_taps = _masked_taps(k, mask_type, color_groups, stack, dilation)
    if color_groups > 1:  # the centre tap is partly masked; with one group kept taps are whole
        weight = weight * _group_mask(c_out, c_in, k, mask_type, color_groups, stack, weight.dtype, weight.device)
    kept = weight.flatten(2)[:, :, taps.first:taps.first + n_taps]
    return kept.permute(2, 1, 0).contiguous(), taps


def _masked_forward(x, weight, bias, mask_type, color_groups, dilation, stack):
    """-> (y [B, C_out, H, W] channels-last, what backward needs: (x as a channels-last
    [B, C, H, W], weight, w_packed) -- so eager backward neither repacks nor transposes again)."""
    w_packed, taps = _pack_masked_weight(weight, mask_type, color_groups, dilation, stack)
    x_cl = _channels_last(x)
    y = _tap_forward(x_cl, w_packed, taps, bias).permute(0, 3, 1, 2)
    return y, (x_cl.permute(0, 3, 1, 2), weight, w_packed)


def _masked_backward(grad_y, x, weight, w_packed, mask_type, color_groups, dilation, stack,
                     needs=(True, True, True)):
    """-> [gx, gw, gb] for the needed ones (None otherwise)."""
    c_out, c_in, k, _ = weight.shape
    taps, n_taps = _masked_taps(k, mask_type, color_groups, stack, dilation)
    gx, gw_packed, gb = _tap_backward(_channels_last(grad_y), _channels_last(x), w_packed, taps, needs)
    gw = None
    if gw_packed is not None:
        # Scatter the kept taps back; masked taps of the weight gradient stay exactly zero.
        gw = F.pad(gw_packed.permute(2, 1, 0), (taps.first, k * k - taps.first - n_taps))  # one kernel
        gw = gw.reshape(c_out, c_in, k, k)
        if color_groups > 1:
            gw = gw * _group_mask(c_out, c_in, k, mask_type, color_groups, stack, torch.float32, weight.device)
        gw = gw.to(weight.dtype)
    return [gx.permute(0, 3, 1, 2) if gx is not None else None, gw,
            gb.to(weight.dtype) if gb is not None else None]


@define_op("masked_conv2d", family="conv", tf32="conv", autocast=_AUTOCAST,
           fake=lambda x, weight, bias, *args: x.new_empty(x.shape[0], x.shape[2], x.shape[3],
                                                           weight.shape[0]).permute(0, 3, 1, 2))
def _masked_conv2d_kernel(x: Tensor, weight: Tensor, bias: Optional[Tensor], mask_type: str,
                          color_groups: int, dilation: int, stack: str) -> Tensor:
    """PixelCNN masked 2-D convolution (types A/B, colour groups, Gated PixelCNN stacks)."""
    return _masked_forward(x, weight, bias, mask_type, color_groups, dilation, stack)[0]


def _masked_conv2d_backward(grad_y: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], mask_type: str,
                            color_groups: int, dilation: int, stack: str) -> List[Tensor]:
    args = (mask_type, color_groups, dilation, stack)
    w_packed, _ = _pack_masked_weight(weight, *args)
    return _masked_backward(grad_y, x, weight, w_packed, *args)


define_autograd(
    _masked_conv2d_kernel, tensor_inputs=3,
    forward=_masked_forward,
    backward=lambda grad, saved, args, needs: _masked_backward(grad, *saved, *args[3:], needs=needs),
    backward_op=_masked_conv2d_backward,
    backward_fake=lambda grad_y, x, weight, bias, *args: [
        x.new_empty(x.shape[0], x.shape[2], x.shape[3], x.shape[1]).permute(0, 3, 1, 2),
        torch.empty_like(weight), weight.new_empty(weight.shape[0])],
)


# ------------------------------------------------------------------ causal_conv1d

def _check_causal_conv1d(x, weight, bias, dilation):
    _validate.tensor("x", x, 3, "[B, C_in, T]")
    _validate.tensor("weight", weight, 3, "[C_out, C_in, k]")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"x has {x.shape[1]} channels but weight expects C_in = {weight.shape[1]}")
    if weight.shape[2] < 1:
        raise ValueError("weight must have kernel size k >= 1")
    _validate.bias(bias, weight.shape[0])
    _validate.same_dtype_and_device(x=x, weight=weight, bias=bias)
    _validate.positive_int("dilation", dilation)


@_AUTOCAST
def causal_conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, dilation: int = 1,
                  backend: Optional[Literal["reference", "triton"]] = None) -> Tensor:
    """Causal dilated 1-D convolution with autograd: output length equals input length.

    x: [B, C_in, T], weight: [C_out, C_in, k], bias: [C_out] or None
    -> [B, C_out, T] = conv1d(pad_left(x, d*(k-1)), weight, bias, dilation=d).
    dtypes, autocast and backends as ``masked_conv2d``; the Triton path returns a tensor whose
    channel stride is 1 (``[B, T, C]`` in memory) and reads such inputs without a copy.
    """
    _check_causal_conv1d(x, weight, bias, dilation)
    if _causal_conv1d_kernel.backend(x, backend) == "reference":
        return reference.causal_conv1d(x, weight, bias, dilation)
    return _causal_conv1d_kernel(x, weight, bias, dilation)


def _causal_forward(x, weight, bias, dilation):
    """-> (y [B, C_out, T] with channel stride 1, what backward needs: (x with channel stride 1,
    weight, w_packed [k, C_in, C_out]))."""
    w_packed = weight.permute(2, 1, 0).contiguous()
    taps = _causal_taps(weight.shape[2], dilation)
    x_cl = _channels_last(x)
    y = _tap_forward(x_cl.unsqueeze(1), w_packed, taps, bias)[:, 0].transpose(1, 2)
    return y, (x_cl.transpose(1, 2), weight, w_packed)


def _causal_backward(grad_y, x, weight, w_packed, dilation, needs=(True, True, True)):
    taps = _causal_taps(weight.shape[2], dilation)
    gx, gw_packed, gb = _tap_backward(_channels_last(grad_y).unsqueeze(1), _channels_last(x).unsqueeze(1),
                                      w_packed, taps, needs)
    return [gx[:, 0].transpose(1, 2) if gx is not None else None,
            gw_packed.permute(2, 1, 0).to(weight.dtype).contiguous() if gw_packed is not None else None,
            gb.to(weight.dtype) if gb is not None else None]


@define_op("causal_conv1d", family="conv", tf32="conv", autocast=_AUTOCAST,
           fake=lambda x, weight, bias, dilation: x.new_empty(x.shape[0], x.shape[2],
                                                              weight.shape[0]).transpose(1, 2))
def _causal_conv1d_kernel(x: Tensor, weight: Tensor, bias: Optional[Tensor], dilation: int) -> Tensor:
    """Causal dilated 1-D convolution (WaveNet)."""
    return _causal_forward(x, weight, bias, dilation)[0]


def _causal_conv1d_backward(grad_y: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                            dilation: int) -> List[Tensor]:
    return _causal_backward(grad_y, x, weight, weight.permute(2, 1, 0).contiguous(), dilation)


define_autograd(
    _causal_conv1d_kernel, tensor_inputs=3,
    forward=_causal_forward,
    backward=lambda grad, saved, args, needs: _causal_backward(grad, *saved, args[3], needs=needs),
    backward_op=_causal_conv1d_backward,
    backward_fake=lambda grad_y, x, weight, bias, dilation: [
        x.new_empty(x.shape[0], x.shape[2], x.shape[1]).transpose(1, 2),
        torch.empty_like(weight), weight.new_empty(weight.shape[0])],
)
