"""Argument checks shared by the ops: each error names the argument and what was expected."""
from typing import Any, Container, Optional, TypeVar

import torch
from torch import Tensor

_T = TypeVar("_T")


def tensor(name: str, value: Any, ndim: int, legend: str) -> Tensor:
    """``value`` must be a floating-point tensor with ``ndim`` dimensions (``legend``: e.g. '[B, C, H, W]')."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {legend}, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor {legend}, got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


def same_dtype_and_device(**named: Optional[Tensor]) -> None:
    """All given tensors (None entries skipped) share the first one's dtype and device."""
    items = [(n, t) for n, t in named.items() if t is not None]
    first_name, first = items[0]
    for n, t in items[1:]:
        if t.dtype != first.dtype:
            raise TypeError(f"{n} has dtype {t.dtype} but {first_name} has {first.dtype}; they must match")
        if t.device != first.device:
            raise ValueError(f"{n} is on {t.device} but {first_name} is on {first.device}; they must match")


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def one_of(name: str, value: _T, choices: Container[_T]) -> _T:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def bias(value: Optional[Tensor], out_channels: int) -> Optional[Tensor]:
    if value is None:
        return None
    tensor("bias", value, 1, "[C_out]")
    if value.shape[0] != out_channels:
        raise ValueError(f"bias must have shape [{out_channels}] (C_out), got {tuple(value.shape)}")
    return value


def ids_in_range(name: str, value: Tensor, high: int, note: str = "") -> None:
    """The integers of ``value`` (pixel levels, class ids, codes) lie in [0, high): a ValueError
    naming ``name`` and the values found otherwise.

    Skipped while ``torch.compile`` traces: a check on values is a data-dependent branch (a
    graph break) and a host sync in every training step of a compiled model; the eager call
    of the same code checks them."""
    if torch.compiler.is_compiling() or not value.numel():
        return
    low, top = torch.stack(torch.aminmax(value)).tolist()       # one sync for both ends
    if low < 0 or top >= high:
        raise ValueError(f"{name} must lie in [0, {high}){note}, got [{low}, {top}]")
