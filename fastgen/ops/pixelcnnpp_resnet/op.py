"""PixelCNN++ sampling ops.

- ``pixelcnnpp_resnet_at``: one GatedResnet at output row i, columns j0 .. j1 - 1 of its
  zero-padded maps (the per-layer sampling cache's step: a pixel of the ``ul`` stream, a row of
  the ``u`` stream), writing its ``mid`` and ``out`` maps in place.  Two Triton launches
  (conv1 + aux into mid, conv2 + gate + residual into out) instead of ~15 small torch ops.

Reference and shapes in ``fastgen.ops.pixelcnnpp_resnet.reference.pixelcnnpp_resnet_at``, kernels in
``fastgen.kernels.pixelcnnpp_resnet``.  Sampling only: no autograd.
"""
from typing import List, Optional

import torch

from fastgen.ops.pixelcnnpp_resnet import reference
from fastgen.ops._backend import choose_backend, eager_or_registered, requested_backend


def _resnet_at_impl(x: torch.Tensor, aux: List[torch.Tensor], mid: torch.Tensor, out: torch.Tensor,
                    w1: torch.Tensor, b1: torch.Tensor, w_aux: Optional[torch.Tensor], b_aux: Optional[torch.Tensor],
                    w2: torch.Tensor, b2: torch.Tensor, cond_bias: Optional[torch.Tensor], i: int, j0: int, j1: int,
                    left: int) -> None:
    from fastgen.kernels.pixelcnnpp_resnet import resnet_at as launch
    exact = not (x.is_cuda and torch.backends.cuda.matmul.allow_tf32)
    launch(x, aux, mid, out, w1, b1, w_aux, b_aux, w2, b2, cond_bias, i, j0, j1, left,
           precision="ieee" if exact else "tf32")


# the registered op, for torch.compile (eager calls: ``eager_or_registered``)
_resnet_at_op = torch.library.custom_op("fastgen::pixelcnnpp_resnet_at", mutates_args=("mid", "out"))(_resnet_at_impl)


@_resnet_at_op.register_fake
def _resnet_at_fake(x, aux, mid, out, w1, b1, w_aux, b_aux, w2, b2, cond_bias, i, j0, j1, left):
    return None     # writes mid and out in place, returns nothing


def _check(x, aux, mid, out, w1, b1, w_aux, b_aux, w2, b2, cond_bias, i, j0, j1, left):
    """ValueError naming the argument for inputs no backend can run."""
    op = "pixelcnnpp_resnet_at"
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be a padded map [B, C, h + 1, w + 2], got shape {tuple(x.shape)}")
    B, C, hp, wp = x.shape
    for name, t in (("mid", mid), ("out", out)):
        if tuple(t.shape) != tuple(x.shape) or t.dtype != x.dtype or t.device != x.device:
            raise ValueError(f"{op}: {name} must be {x.dtype} {tuple(x.shape)} on {x.device} like x, "
                             f"got {t.dtype} {tuple(t.shape)} on {t.device}")
    if len(aux) > 2:
        raise ValueError(f"{op}: aux must hold 0, 1 or 2 maps, got {len(aux)}")
    for k, t in enumerate(aux):
        if t.dim() != 4 or (t.shape[0], *t.shape[2:]) != (B, hp, wp) or t.dtype != x.dtype:
            raise ValueError(f"{op}: aux[{k}] must be a {x.dtype} map [{B}, A, {hp}, {wp}], got {t.dtype} "
                             f"{tuple(t.shape)}")
    A = sum(t.shape[1] for t in aux)
    taps = w1.shape[0] if w1.dim() == 3 else -1
    if taps not in (4, 6) or tuple(w1.shape) != (taps, 2 * C, C):
        raise ValueError(f"{op}: w1 must be [4 or 6, {2 * C}, {C}] (a packed 2x2 or 2x3 conv), got {tuple(w1.shape)}")
    if tuple(w2.shape) != (taps, 2 * C, 2 * C) or tuple(b1.shape) != (C,) or tuple(b2.shape) != (2 * C,):
        raise ValueError(f"{op}: expected w2 [{taps}, {2 * C}, {2 * C}], b1 [{C}], b2 [{2 * C}], got "
                         f"{tuple(w2.shape)}, {tuple(b1.shape)}, {tuple(b2.shape)}")
    if aux and (w_aux is None or b_aux is None or tuple(w_aux.shape) != (2 * A, C) or tuple(b_aux.shape) != (C,)):
        raise ValueError(f"{op}: with aux maps of {A} channels, w_aux must be [{2 * A}, {C}] and b_aux [{C}]")
    if cond_bias is not None and tuple(cond_bias.shape) != (B, 2 * C):
        raise ValueError(f"{op}: cond_bias must be [{B}, {2 * C}] or None, got {tuple(cond_bias.shape)}")
    kw = taps // 2
    if not (0 <= left < kw and 0 <= i < hp - 1 and 0 <= j0 < j1 <= wp - 2):
        raise ValueError(f"{op}: need 0 <= left < {kw}, 0 <= i < {hp - 1} and 0 <= j0 < j1 <= {wp - 2}, got "
                         f"left={left}, i={i}, j0={j0}, j1={j1}")
    if kw - 1 - left > 1 or left > 1:
        raise ValueError(f"{op}: the maps are padded by one column each side, so the window may reach "
                         f"at most one column left and right (left={left}, width {kw})")


def _triton_reason(x, aux, weights, cond_bias):
    """Why the kernel cannot tile these inputs, or None."""
    channels = [x.shape[1]] + [t.shape[1] for t in aux]
    if any(c % 16 for c in channels):
        return f"channels (x and aux maps) must be multiples of 16, got {channels}"
    if any(w is not None and (w.dtype != torch.float32 or not w.is_contiguous()) for w in (*weights, cond_bias)):
        return "packed weights, biases and cond_bias must be contiguous float32"
    return None


def pixelcnnpp_resnet_at(x, aux, mid, out, w1, b1, w_aux, b_aux, w2, b2, cond_bias, i, j0, j1, left=1,
                         backend=None):
    """One GatedResnet at row i, columns j0 .. j1 - 1: writes ``mid`` and ``out`` there, in place
    (nothing else).  See ``fastgen.ops.pixelcnnpp_resnet.reference.pixelcnnpp_resnet_at`` for shapes and math.

    Backends: Triton on CUDA (and under TRITON_INTERPRET=1 when forced), the reference on the
    CPU.  Inputs the kernel cannot tile (channels not multiples of 16, non-fp32 weights) run on
    the reference unless the Triton backend was forced, which raises a ValueError instead."""
    aux = list(aux)
    _check(x, aux, mid, out, w1, b1, w_aux, b_aux, w2, b2, cond_bias, i, j0, j1, left)
    why = _triton_reason(x, aux, (w1, b1, w_aux, b_aux, w2, b2), cond_bias)
    if why is not None:
        if requested_backend(backend) == "triton":
            raise ValueError(f"pixelcnnpp_resnet_at on Triton: {why}")
        backend = "reference"
    if choose_backend("pixelcnnpp_resnet_at", x, backend) == "reference":
        reference.pixelcnnpp_resnet_at(x, aux, mid, out, w1, b1, w_aux, b_aux, w2, b2, cond_bias, i, j0, j1, left)
        return
    step = eager_or_registered("pixelcnnpp_resnet_at", _resnet_at_impl)
    step(x, aux, mid, out, w1, b1, w_aux, b_aux, w2, b2, cond_bias, int(i), int(j0), int(j1), int(left))
