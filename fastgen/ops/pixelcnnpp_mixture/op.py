"""PixelCNN++'s mixture-of-logistics draw for one pixel in one launch.

- ``pixelcnnpp_mixture_draw``: from the head's raw mixture parameters and the Gumbel noise of
  every colour channel, draw R, then G given R, then B given R and G (the channel-coupling
  coefficients of Salimans et al. 2017, eq. 3), each as argmax over the levels of
  log p(level) / temperature + gumbel -- what the naive sampler draws from the model's
  per-level log-probabilities.  Writes the values and their scaled form in place (declared in
  ``mutates_args``); ~60 small torch ops per colour channel become one launch.
- ``pixelcnnpp_head_draw``: the same draw from the features under the network's head (the
  1x1 conv after an elu, a ``HeadWeights`` bundle): the head runs inside the draw's launch, so
  the sampling cache's pixel step issues no torch op for it.

Reference and math: ``fastgen.ops.pixelcnnpp_mixture.reference``, the one copy of the mixture's
math (``fastgen.models.PixelCNNpp`` calls it too); kernel: ``fastgen.kernels.pixelcnnpp_mixture``.
Sampling only: no autograd.

Declared with ``fastgen.ops._define.define_op`` as ``torch.ops.fastgen.pixelcnnpp_mixture_draw``.
``pixelcnnpp_head_draw`` likewise as ``torch.ops.fastgen.pixelcnnpp_head_draw``.
TF32: the kernel multiplies no matrices (elementwise math and reductions in exact fp32 -- the
head's too), so no flag changes what it computes; both are declared ``tf32="matmul"`` like the
other sampling steps.
"""
import math
from typing import Optional

import torch
from torch import Tensor

from fastgen.ops._define import define_op
from fastgen.ops.pixelcnnpp_mixture import reference
from fastgen.ops.pixelcnnpp_mixture.bundles import HeadWeights

_OP = "pixelcnnpp_mixture_draw"
_HEAD_OP = "pixelcnnpp_head_draw"
MAX_NR_MIX = 64          # the kernel holds the mixture as one tile of <= 64 components
_INT32 = 2 ** 31


@define_op(_OP, family="pixelcnnpp_mixture", tf32="matmul", mutates_args=("values", "scaled"))
def _draw_kernel(params: Tensor, gumbel: Tensor, level_values: Tensor, values: Tensor, scaled: Tensor,
                 temperature: float) -> None:
    """PixelCNN++: one pixel's discretized-logistic-mixture draw, all colour channels, in one launch."""
    from fastgen.kernels.pixelcnnpp_mixture import mixture_draw as launch
    channels, levels = gumbel.shape[1:]
    half, log_half_bins = reference.bin_constants(levels)
    launch(params, gumbel, level_values, values, scaled, reference.nr_mix_of(params.shape[1], channels), half,
           log_half_bins, temperature)


@define_op(_HEAD_OP, family="pixelcnnpp_mixture", tf32="matmul", mutates_args=("values", "scaled"))
def _head_draw_kernel(features: Tensor, weight: Tensor, bias: Tensor, gumbel: Tensor, level_values: Tensor,
                      values: Tensor, scaled: Tensor, temperature: float) -> None:
    """PixelCNN++: the head (elu, 1x1 conv) and one pixel's mixture draw, all colour channels, in one launch."""
    from fastgen.kernels.pixelcnnpp_mixture import mixture_draw as launch
    channels, levels = gumbel.shape[1:]
    half, log_half_bins = reference.bin_constants(levels)
    launch(features, gumbel, level_values, values, scaled, reference.nr_mix_of(weight.shape[1], channels), half,
           log_half_bins, temperature, head_w=weight, head_b=bias)


def _tensor(name: str, t, shape: tuple, legend: str, op: str = _OP) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor {legend}, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must be {legend} = {list(shape)}, got {list(t.shape)}")


def _check(params, gumbel, level_values, values, scaled, temperature):
    """ValueError/TypeError naming the argument for inputs no backend can run."""
    B = _check_gumbel(gumbel)
    if not isinstance(params, Tensor) or params.dim() != 2 or params.shape[0] != B:
        raise ValueError(f"{_OP}: params must be a 2-D tensor [B, P] = [{B}, P], got "
                         f"{list(getattr(params, 'shape', [params]))}")
    _check_draw(params.shape[1], params, gumbel, level_values, values, scaled, temperature)


def _check_gumbel(gumbel, op=_OP):
    """gumbel's shape [B, C, L]; returns B."""
    if not isinstance(gumbel, Tensor) or gumbel.dim() != 3:
        raise ValueError(f"{op}: gumbel must be a 3-D tensor [B, C, L] (noise per colour channel and level), "
                         f"got {getattr(gumbel, 'shape', gumbel)}")
    B, C, L = gumbel.shape
    if C not in (1, 3):
        raise ValueError(f"{op}: gumbel's colour channels C must be 1 or 3, got {C}")
    if L < 2:
        raise ValueError(f"{op}: gumbel must have at least 2 levels, got {L}")
    return B


def _check_draw(P, first, gumbel, level_values, values, scaled, temperature, op=_OP, name="params"):
    """The checks both draws share: P mixture parameters per pixel, and gumbel, level_values,
    values, scaled and temperature against ``first`` (the tensor called ``name`` whose dtype and
    device the others must have: the params, or the features under the head)."""
    B, C, L = gumbel.shape
    per = 3 if C == 1 else 10
    if P == 0 or P % per:
        raise ValueError(f"{op}: {'params must hold' if name == 'params' else 'the head must give'} {per} * nr_mix "
                         f"values per pixel for C = {C} (logits, means, log-scales{'' if C == 1 else ', coefficients'}), "
                         f"got {P}")
    _tensor("level_values", level_values, (L,), "[L]", op)
    _tensor("values", values, (B, C), "[B, C]", op)
    _tensor("scaled", scaled, (B, C), "[B, C]", op)
    for n, t in ((name, first), ("gumbel", gumbel), ("level_values", level_values), ("scaled", scaled)):
        if not t.is_floating_point():
            raise TypeError(f"{op}: {n} must be a floating-point tensor, got {t.dtype}")
    if values.dtype != torch.long:
        raise TypeError(f"{op}: values must be int64, got {values.dtype}")
    for n, t in (("level_values", level_values), ("scaled", scaled)):
        if t.dtype != first.dtype:
            raise TypeError(f"{op}: {n} must have {name}' dtype {first.dtype}, got {t.dtype}")
    for n, t in (("gumbel", gumbel), ("level_values", level_values), ("values", values), ("scaled", scaled)):
        if t.device != first.device:
            raise ValueError(f"{op}: {n} is on {t.device} but {name} on {first.device}; they must match")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"{op}: temperature must be a positive finite number, got {temperature!r}")


def _unsupported(params: Tensor, gumbel: Tensor, level_values: Tensor, scaled: Tensor) -> Optional[str]:
    """Why the kernel cannot take these inputs, or None."""
    C = gumbel.shape[1]
    nr_mix = reference.nr_mix_of(params.shape[1], C)
    if nr_mix > MAX_NR_MIX:
        return f"nr_mix must be at most {MAX_NR_MIX} (one tile of mixture components), got {nr_mix}"
    if any(t.dtype != torch.float32 for t in (params, gumbel, level_values, scaled)):
        # the kernel computes in fp32; a 16-bit or fp64 model's own math would round differently
        return "params, gumbel, level_values and scaled must be float32"
    if not level_values.is_contiguous():
        return "level_values must be contiguous"
    for name, t in (("params", params), ("gumbel", gumbel)):
        if sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride())) >= _INT32:
            return f"{name}'s offsets must fit in 32 bits"
    return None


def pixelcnnpp_mixture_draw(params: Tensor, gumbel: Tensor, level_values: Tensor, values: Tensor, scaled: Tensor,
                            temperature: float = 1.0, backend: Optional[str] = None) -> Tensor:
    """Draw one pixel's colour channels for every batch row; writes ``values`` and ``scaled`` in
    place and returns ``values``.

    params: [B, P] the head's raw mixture parameters (P = 3 nr_mix for grey, 10 nr_mix for RGB;
    layout in ``fastgen.ops.pixelcnnpp_mixture.reference``); gumbel: [B, C, L] standard Gumbel
    noise (any strides, e.g. ``noise[:, :, r, c]`` of the sampler's [B, C, H, W, L]);
    level_values: [L], the levels 0 .. L - 1 scaled to [-1, 1] as the model scales them;
    values: [B, C] int64 out; scaled: [B, C] out, params' dtype, any strides (e.g. the pixel in
    an image map), = level_values[values]; temperature > 0.

        values[:, j] = argmax_v ( log p_j(v | values[:, :j]) / temperature + gumbel[:, j, v] )

    Backends: Triton on CUDA (and under TRITON_INTERPRET=1 when forced), the reference on the
    CPU.  The kernel takes float32 inputs with nr_mix <= 64; other inputs run on the reference,
    or raise a ValueError when the Triton backend was forced."""
    _check(params, gumbel, level_values, values, scaled, temperature)
    why = _unsupported(params, gumbel, level_values, scaled)
    if _draw_kernel.backend(params, backend, unsupported=why) == "reference":
        reference.pixelcnnpp_mixture_draw(params, gumbel, level_values, values, scaled, float(temperature))
        return values
    _draw_kernel(params, gumbel, level_values, values, scaled, float(temperature))
    return values


def _check_head(features, head, gumbel, level_values, values, scaled, temperature):
    """ValueError/TypeError naming the argument for inputs no backend can run."""
    op = _HEAD_OP
    if not isinstance(head, HeadWeights):
        raise TypeError(f"{op}: head must be a HeadWeights (fastgen.nn.pack_head_weights), got {type(head).__name__}")
    B = _check_gumbel(gumbel, op)
    if not isinstance(features, Tensor) or features.dim() != 2 or features.shape[0] != B:
        raise ValueError(f"{op}: features must be a 2-D tensor [B, F] = [{B}, F], got "
                         f"{list(getattr(features, 'shape', [features]))}")
    F = features.shape[1]
    if not isinstance(head.weight, Tensor) or head.weight.dim() != 2 or head.weight.shape[0] != F:
        raise ValueError(f"{op}: head.weight must be [F, P] = [{F}, P], got "
                         f"{list(getattr(head.weight, 'shape', [head.weight]))}")
    P = head.weight.shape[1]
    _tensor("head.bias", head.bias, (P,), "[P]", op)
    for name, t in (("head.weight", head.weight), ("head.bias", head.bias)):
        if t.dtype != features.dtype or t.device != features.device:
            raise TypeError(f"{op}: {name} must be {features.dtype} on {features.device} like features, got "
                            f"{t.dtype} on {t.device}")
    _check_draw(P, features, gumbel, level_values, values, scaled, temperature, op, "features")


def pixelcnnpp_head_draw(features: Tensor, head: HeadWeights, gumbel: Tensor, level_values: Tensor, values: Tensor,
                         scaled: Tensor, temperature: float = 1.0, backend: Optional[str] = None) -> Tensor:
    """``pixelcnnpp_mixture_draw`` from the features under PixelCNN++'s head: the mixture
    parameters are params = elu(features) @ head.weight + head.bias (the model's ``out`` 1x1 conv
    after its elu), computed inside the draw's launch.  Writes ``values`` and ``scaled`` in place
    and returns ``values``.

    features: [B, F] (any strides, e.g. the pixel of the last ``ul`` map in the sampling cache);
    head: a ``HeadWeights`` (weight [F, P], bias [P], features' dtype); gumbel, level_values,
    values, scaled, temperature: as for ``pixelcnnpp_mixture_draw``.

    Backends: Triton on CUDA (and under TRITON_INTERPRET=1 when forced), the reference on the
    CPU.  The kernel takes float32 inputs (contiguous head weights) with nr_mix <= 64; other
    inputs run on the reference, or raise a ValueError when the Triton backend was forced."""
    _check_head(features, head, gumbel, level_values, values, scaled, temperature)
    C = gumbel.shape[1]
    why = None
    if reference.nr_mix_of(head.weight.shape[1], C) > MAX_NR_MIX:
        why = f"nr_mix must be at most {MAX_NR_MIX} (one tile of mixture components), got " \
              f"{reference.nr_mix_of(head.weight.shape[1], C)}"
    elif any(t.dtype != torch.float32 for t in (features, *head, gumbel, level_values, scaled)):
        why = "features, head, gumbel, level_values and scaled must be float32"
    elif not (level_values.is_contiguous() and head.weight.is_contiguous() and head.bias.is_contiguous()):
        why = "level_values and the head's weight and bias must be contiguous"
    elif any(sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride())) >= _INT32
             for t in (features, head.weight, gumbel)):
        why = "features', head's and gumbel's offsets must fit in 32 bits"
    if _head_draw_kernel.backend(features, backend, unsupported=why) == "reference":
        reference.pixelcnnpp_head_draw(features, head, gumbel, level_values, values, scaled, float(temperature))
        return values
    _head_draw_kernel(features, head.weight, head.bias, gumbel, level_values, values, scaled, float(temperature))
    return values
