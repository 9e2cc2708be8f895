"""The coupling transform of NICE / RealNVP / Glow as one fused pass: checks, dispatch, autograd.

``affine_coupling(x, h, scale, checkerboard, inverse)`` -> ``FlowOutput(out, logdet)``: the
math in ``fastgen.ops.flow_coupling.reference``; the kernels in ``fastgen.kernels.flow_coupling``.
Eager PyTorch spends ~8 memory-bound launches on this (sigmoid, log, mul, add, sum, and as many
again backward, each saving an intermediate); the fused forward reads x and h once and writes
out and a per-sample partial log-det, the fused backward recomputes the scale from the saved
inputs (x, h -- which the conditioner keeps alive anyway) and writes both gradients in one pass.

Declared with ``fastgen.ops._define`` as ``torch.ops.fastgen.affine_coupling`` (+ ``_backward``).
TF32: no dots; declared ``tf32="matmul"`` (its default, exact fp32, is what eager computes).
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from fastgen.ops import _backend
from fastgen.ops._define import define_autograd, define_op
from fastgen.ops.flow_coupling import reference
from fastgen.ops.flow_coupling.bundles import FlowOutput

_OP = "affine_coupling"
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_BATCH = 65535           # the kernels' second grid axis


def _flat(t: Tensor) -> Tensor:
    """[B, ...] as [B, n] with only a row stride (a copy unless each sample is one contiguous run,
    as a channel slice x[:, :C] of a contiguous tensor is)."""
    B = t.shape[0]
    expected, stride = [], 1
    for size in reversed(t.shape[1:]):
        expected.append(stride)
        stride *= size
    inner_ok = all(s == e or n == 1 for s, e, n in zip(reversed(t.stride()[1:]), expected, reversed(t.shape[1:])))
    if not inner_ok:
        t = t.contiguous()
    return t.as_strided((B, stride), (t.stride(0) if B > 1 else stride, 1))


def _geometry(x: Tensor) -> Tuple[int, int]:
    """(positions per channel, width) for the checkerboard index math."""
    spatial = x.shape[2:]
    positions = 1
    for n in spatial:
        positions *= n
    return positions, (spatial[-1] if len(spatial) else 1)


@define_op(_OP, family="flow_coupling", tf32="matmul",
           fake=lambda x, h, scale, checkerboard, inverse: (torch.empty_like(x, memory_format=torch.contiguous_format),
                                                           x.new_empty(x.shape[0], dtype=torch.float32)))
def _coupling_kernel(x: Tensor, h: Tensor, scale: str, checkerboard: int, inverse: bool) -> Tuple[Tensor, Tensor]:
    """Fused coupling transform (forward or inverse) with its per-sample float32 log-det."""
    from fastgen.kernels.flow_coupling import BLOCK, coupling_forward
    B = x.shape[0]
    positions, width = _geometry(x)
    out = _backend.empty(*x.shape, dtype=x.dtype, device=x.device)
    x_flat = _flat(x)
    partial = _backend.empty(B, -(-x_flat.shape[1] // BLOCK), dtype=torch.float32, device=x.device)
    coupling_forward(x_flat, _flat(h), _flat(out), partial, scale, checkerboard, inverse, positions, width)
    return out, partial.sum(1)


def _coupling_forward(x, h, scale, checkerboard, inverse):
    out, logdet = _coupling_kernel.kernel(x, h, scale, checkerboard, inverse)
    return (out, logdet), (x, h)


def _coupling_backward_op(grad_out: Optional[Tensor], grad_logdet: Optional[Tensor], x: Tensor, h: Tensor,
                          scale: str, checkerboard: int, inverse: bool) -> List[Tensor]:
    from fastgen.kernels.flow_coupling import coupling_backward
    B = x.shape[0]
    grad_out = torch.zeros_like(x) if grad_out is None else grad_out
    grad_logdet = x.new_zeros(B, dtype=torch.float32) if grad_logdet is None \
        else grad_logdet.to(torch.float32).contiguous()
    positions, width = _geometry(x)
    grad_x = _backend.empty(*x.shape, dtype=x.dtype, device=x.device)
    grad_h = _backend.empty(*h.shape, dtype=h.dtype, device=h.device)
    coupling_backward(_flat(x), _flat(h), _flat(grad_out), grad_logdet, _flat(grad_x), _flat(grad_h),
                      scale, checkerboard, inverse, positions, width)
    return [grad_x, grad_h]


def _coupling_backward(grad, saved, args, needs):
    grad_x, grad_h = _coupling_backward_op(*grad, *saved, *args)
    return (grad_x if needs[0] else None), (grad_h if needs[1] else None)


define_autograd(
    _coupling_kernel, tensor_inputs=2,
    forward=_coupling_forward,
    backward=lambda grad, saved, args, needs: _coupling_backward(grad, saved, args[2:], needs),
    backward_op=_coupling_backward_op,
    backward_fake=lambda grad_out, grad_logdet, x, h, *args: [torch.empty_like(x), torch.empty_like(h)],
)


def _check(x: Tensor, h: Tensor, scale: str, checkerboard: Optional[int]) -> None:
    for name, t in (("x", x), ("h", h)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{_OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if scale not in reference.SCALES:
        raise ValueError(f"{_OP}: scale must be one of {reference.SCALES}, got {scale!r}")
    if x.dim() < 2:
        raise ValueError(f"{_OP}: x must be [B, C, ...], got shape {tuple(x.shape)}")
    C = x.shape[1]
    want = (x.shape[0], C if scale == "additive" else 2 * C, *x.shape[2:])
    if tuple(h.shape) != want:
        what = "t" if scale == "additive" else "s and t stacked on the channels"
        raise ValueError(f"{_OP}: h must be {want} ({what}) for x {tuple(x.shape)} with scale {scale!r}, "
                         f"got {tuple(h.shape)}")
    if h.device != x.device:
        raise ValueError(f"{_OP}: x is on {x.device} but h on {h.device}; they must match")
    if not x.is_floating_point() or not h.is_floating_point():
        raise TypeError(f"{_OP}: x and h must be floating point, got {x.dtype} and {h.dtype}")
    if checkerboard is not None:
        if checkerboard not in (0, 1) or isinstance(checkerboard, bool):
            raise ValueError(f"{_OP}: checkerboard must be None, 0 or 1 (the parity that passes through), "
                             f"got {checkerboard!r}")
        if x.dim() != 4:
            raise ValueError(f"{_OP}: a checkerboard mask needs images [B, C, H, W], got shape {tuple(x.shape)}")


def _unsupported(x: Tensor, h: Tensor) -> Optional[str]:
    if x.dtype not in _DTYPES or h.dtype != x.dtype:
        return f"x and h must share one of float32/float16/bfloat16, got {x.dtype} and {h.dtype}"
    if x.shape[0] > _MAX_BATCH:
        return f"the batch must be at most {_MAX_BATCH}, got {x.shape[0]}"
    if x[0].numel() * (2 if h.shape[1] != x.shape[1] else 1) >= 2 ** 31:
        return "one sample's h must have fewer than 2^31 elements"
    return None


def affine_coupling(x: Tensor, h: Tensor, scale: str = "sigmoid", checkerboard: Optional[int] = None,
                    inverse: bool = False, backend: Optional[str] = None) -> FlowOutput:
    """The coupling transform of x [B, C, *spatial] by the conditioner output h -> FlowOutput(out
    like x, logdet [B] float32).

    h = [s; t] stacked on the channels ([B, 2C, *spatial]; [B, C, *spatial] = t for 'additive').
    forward: out = f(s) x + t, logdet = sum log f(s); ``inverse=True``: out = (x - t) / f(s),
    logdet = -sum log f(s).  scale: 'sigmoid' f = sigmoid(s + 2) (Glow), 'exp_tanh' f =
    exp(tanh(s)) (RealNVP), 'additive' f = 1 (NICE).  checkerboard = p: positions with (i + j)
    % 2 == p pass through (RealNVP's checkerboard mask; images only).  Differentiable in x and h.

    Backends: Triton on CUDA (and under TRITON_INTERPRET=1 when forced), the reference on the CPU;
    float64 runs on the reference (or raises a ValueError when Triton was forced)."""
    _check(x, h, scale, checkerboard)
    if _coupling_kernel.backend(x, backend, unsupported=_unsupported(x, h)) == "reference":
        return reference.affine_coupling(x, h, scale, checkerboard, inverse)
    out, logdet = _coupling_kernel(x, h, scale, -1 if checkerboard is None else int(checkerboard), bool(inverse))
    return FlowOutput(out, logdet)
