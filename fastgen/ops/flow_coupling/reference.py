"""The coupling transform in plain PyTorch: the specification of ``fastgen.ops.affine_coupling``
and its CPU path (differentiable by ordinary autograd).

x [B, C, *spatial] is the half of the input being transformed; h [B, 2C, *spatial] (or [B, C,
*spatial] for the additive scale) is the conditioner's raw output computed from the other half:
h[:, :C] = s (raw log-scale), h[:, C:] = t (shift).  With f = the scale of ``scale``:

    forward:  y = f(s) * x + t,        logdet[b] = sum log f(s)     (over C and the positions)
    inverse:  x = (y - t) / f(s),      logdet[b] = -sum log f(s)

scales: 'sigmoid' f = sigmoid(s + 2) (Glow, Kingma & Dhariwal 2018: starts near identity, never
explodes); 'exp_tanh' f = exp(tanh(s)) (RealNVP's exp(s) with s bounded by tanh, Dinh et al.
2017); 'additive' f = 1, h = t only (NICE, Dinh et al. 2015).

``checkerboard`` = p (0 or 1, 2-D spatial inputs only): positions (i, j) with (i + j) % 2 == p
pass through unchanged (they are the conditioning half of RealNVP's checkerboard mask: the
conditioner saw only them); the others are transformed.  The math and the log-det run in float32
whatever the input dtype (float64 inputs: in float64, so the reference can be gradchecked);
out has the input's dtype.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fastgen.ops.flow_coupling.bundles import FlowOutput

SCALES = ("sigmoid", "exp_tanh", "additive")


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def log_scale(s: Tensor, scale: str) -> Tensor:
    """log f(s) in float32 (float64 for float64 s) for ``scale`` in ``SCALES``."""
    s = s.to(_compute_dtype(s))
    if scale == "sigmoid":
        return F.logsigmoid(s + 2.0)
    if scale == "exp_tanh":
        return torch.tanh(s)
    if scale == "additive":
        return torch.zeros_like(s)
    raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")


def checkerboard_mask(spatial, parity: int, device=None) -> Tensor:
    """[H, W] bool: True where (i + j) % 2 == parity (the positions that pass through)."""
    h, w = spatial
    i = torch.arange(h, device=device).view(h, 1)
    j = torch.arange(w, device=device).view(1, w)
    return (i + j) % 2 == parity


def affine_coupling(x: Tensor, h: Tensor, scale: str = "sigmoid", checkerboard: Optional[int] = None,
                    inverse: bool = False) -> FlowOutput:
    """The coupling transform of x by the conditioner output h (module docstring)."""
    channels = x.shape[1]
    log_f = log_scale(h[:, :channels], scale)
    compute = _compute_dtype(x)
    log_f = log_f.to(compute)
    t = (h[:, channels:] if scale != "additive" else h).to(compute)
    if checkerboard is not None:
        keep = checkerboard_mask(x.shape[2:], checkerboard, x.device)
        log_f = log_f.masked_fill(keep, 0.0)
        t = t.masked_fill(keep, 0.0)
    if inverse:
        out = (x.to(compute) - t) * torch.exp(-log_f)
        logdet = -log_f.flatten(1).sum(1)
    else:
        out = x.to(compute) * torch.exp(log_f) + t
        logdet = log_f.flatten(1).sum(1)
    return FlowOutput(out.to(x.dtype), logdet)
