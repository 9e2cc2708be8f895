"""PixelCNN++'s mixture-of-logistics draw for one pixel in one launch.

- ``pixelcnnpp_mixture_draw``: from the head's raw mixture parameters and the Gumbel noise of
  every colour channel, draw R, then G given R, then B given R and G (the channel-coupling
  coefficients of Salimans et al. 2017, eq. 3), each as argmax over the levels of
  log p(level) / temperature + gumbel -- what the naive sampler draws from the model's
  per-level log-probabilities.  Writes the values and their scaled form in place (declared in
  ``mutates_args``); ~60 small torch ops per colour channel become one launch.

Reference and math: ``fastgen.ops.pixelcnnpp_mixture.reference``, the one copy of the mixture's
math (``fastgen.models.PixelCNNpp`` calls it too); kernel: ``fastgen.kernels.pixelcnnpp_mixture``.
Sampling only: no autograd.

Declared with ``fastgen.ops._define.define_op`` as ``torch.ops.fastgen.pixelcnnpp_mixture_draw``.
TF32: the kernel multiplies no matrices (elementwise math and reductions in exact fp32), so no
flag changes what it computes; it is declared ``tf32="matmul"`` like the other sampling steps.
"""
import math
from typing import Optional

import torch
from torch import Tensor

from fastgen.ops._define import define_op
from fastgen.ops.pixelcnnpp_mixture import reference

_OP = "pixelcnnpp_mixture_draw"
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


def _tensor(name: str, t, shape: tuple, legend: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{_OP}: {name} must be a torch.Tensor {legend}, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{_OP}: {name} must be {legend} = {list(shape)}, got {list(t.shape)}")


def _check(params, gumbel, level_values, values, scaled, temperature):
    """ValueError/TypeError naming the argument for inputs no backend can run."""
    if not isinstance(gumbel, Tensor) or gumbel.dim() != 3:
        raise ValueError(f"{_OP}: gumbel must be a 3-D tensor [B, C, L] (noise per colour channel and level), "
                         f"got {getattr(gumbel, 'shape', gumbel)}")
    B, C, L = gumbel.shape
    if C not in (1, 3):
        raise ValueError(f"{_OP}: gumbel's colour channels C must be 1 or 3, got {C}")
    if L < 2:
        raise ValueError(f"{_OP}: gumbel must have at least 2 levels, got {L}")
    if not isinstance(params, Tensor) or params.dim() != 2 or params.shape[0] != B:
        raise ValueError(f"{_OP}: params must be a 2-D tensor [B, P] = [{B}, P], got "
                         f"{list(getattr(params, 'shape', [params]))}")
    per = 3 if C == 1 else 10
    if params.shape[1] == 0 or params.shape[1] % per:
        raise ValueError(f"{_OP}: params must hold {per} * nr_mix values per pixel for C = {C} (logits, means, "
                         f"log-scales{'' if C == 1 else ', coefficients'}), got {params.shape[1]}")
    _tensor("level_values", level_values, (L,), "[L]")
    _tensor("values", values, (B, C), "[B, C]")
    _tensor("scaled", scaled, (B, C), "[B, C]")
    for name, t in (("params", params), ("gumbel", gumbel), ("level_values", level_values), ("scaled", scaled)):
        if not t.is_floating_point():
            raise TypeError(f"{_OP}: {name} must be a floating-point tensor, got {t.dtype}")
    if values.dtype != torch.long:
        raise TypeError(f"{_OP}: values must be int64, got {values.dtype}")
    for name, t in (("level_values", level_values), ("scaled", scaled)):
        if t.dtype != params.dtype:
            raise TypeError(f"{_OP}: {name} must have params' dtype {params.dtype}, got {t.dtype}")
    for name, t in (("gumbel", gumbel), ("level_values", level_values), ("values", values), ("scaled", scaled)):
        if t.device != params.device:
            raise ValueError(f"{_OP}: {name} is on {t.device} but params on {params.device}; they must match")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"{_OP}: temperature must be a positive finite number, got {temperature!r}")


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
