"""Argument checks of ``fastgen.sampling.diffusion.sample``: every bad value raises a
ValueError / TypeError that names the argument and says what was expected, before anything is
drawn or the denoiser is called.  (The schedule's own checks -- ``betas``, ``timesteps``,
``spacing`` -- live beside it in ``schedules``.)"""
import math
import numbers
import operator
from typing import Any, Optional, Sequence, Tuple

import torch
from torch import Tensor

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_shape(shape: Any, x_T: Optional[Tensor]) -> Tuple[int, ...]:
    """``shape`` [B, ...] as a tuple of positive ints; None takes x_T's shape."""
    if shape is None:
        if x_T is None:
            raise ValueError("shape is required unless x_T= is given (its shape is then used)")
        return tuple(x_T.shape)
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) and not isinstance(shape, torch.Size):
        raise TypeError(f"shape must be a tuple of ints [B, ...], got {type(shape).__name__} {shape!r}")
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError:
        raise TypeError(f"shape must be a tuple of ints [B, ...], got {shape!r}") from None
    if not dims or any(d <= 0 for d in dims) or any(isinstance(d, bool) for d in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive ints [B, ...], got {shape!r}")
    if x_T is not None and tuple(x_T.shape) != dims:
        raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape is {dims}; they must agree (or omit shape)")
    return dims


def check_x_T(x_T: Any) -> None:
    if x_T is None:
        return
    if not isinstance(x_T, Tensor):
        raise TypeError(f"x_T must be a torch.Tensor [B, ...], got {type(x_T).__name__}")
    if not x_T.is_floating_point():
        raise TypeError(f"x_T must be a floating-point tensor, got {x_T.dtype}")


def check_dtype(dtype: Any) -> None:
    if dtype is not None and dtype not in DTYPES:
        raise TypeError(f"dtype must be one of {DTYPES}, got {dtype!r}")


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_number(name: str, value: Any, positive: bool = False, non_negative: bool = False) -> float:
    """``value`` as a finite float (> 0 with ``positive``, >= 0 with ``non_negative``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if non_negative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_sigmas(sigmas: Any, sampler: str, final_zero: bool) -> Tensor:
    """Explicit ``sigmas`` as float64 [n]: finite, strictly decreasing; with ``final_zero``
    (Euler / Heun: at least two values, the last may be 0) else every sigma > 0."""
    try:
        values = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"sigmas must be a 1-D sequence or tensor of numbers, got {type(sigmas).__name__}") from None
    least = 2 if final_zero else 1
    if values.dim() != 1 or values.numel() < least:
        raise ValueError(f"sigmas for the {sampler!r} sampler must be 1-D with at least {least} value(s), got "
                         f"shape {tuple(values.shape)}")
    if not torch.isfinite(values).all():
        raise ValueError(f"sigmas must be finite, got {values.tolist()}")
    if (values[:-1] <= values[1:]).any():
        raise ValueError(f"sigmas must be strictly decreasing (noisiest first), got {values.tolist()}")
    if final_zero and values[-1] < 0 or not final_zero and values[-1] <= 0:
        raise ValueError(f"sigmas for the {sampler!r} sampler must be "
                         f"{'>= 0 (only the last may be 0)' if final_zero else '> 0'}, got {values.tolist()}")
    return values
