"""PixelCNN++ sampling ops.

- ``pixelcnnpp_resnet_at``: one GatedResnet at output row i, columns j0 .. j1 - 1 of its
  zero-padded maps (the per-layer sampling cache's step: a pixel of the ``ul`` stream, a row of
  the ``u`` stream), writing its ``mid`` and ``out`` maps in place.  Two Triton launches
  (conv1 + aux into mid, conv2 + gate + residual into out) instead of ~15 small torch ops.

Reference and shapes in ``fastgen.ops.pixelcnnpp_resnet.reference.pixelcnnpp_resnet_at``, kernels in
``fastgen.kernels.pixelcnnpp_resnet``.  Sampling only: no autograd.

Declared with ``fastgen.ops._define.define_op`` as ``torch.ops.fastgen.pixelcnnpp_resnet_at``
(its schema takes the ``ResnetWeights`` bundle's six tensors one by one).  TF32: it follows
``torch.backends.cuda.matmul.allow_tf32`` (``tf32="matmul"``), as it did before the one rule
existed; both flags are off in the tests that compare it with the cuDNN forward.
"""
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from fastgen.ops._define import define_op
from fastgen.ops.pixelcnnpp_resnet import reference
from fastgen.ops.pixelcnnpp_resnet.bundles import ResnetWeights


@define_op("pixelcnnpp_resnet_at", family="pixelcnnpp_resnet", tf32="matmul", mutates_args=("mid", "out"))
def _resnet_at_kernel(x: Tensor, aux: List[Tensor], mid: Tensor, out: Tensor, w1: Tensor, b1: Tensor,
                      w_aux: Optional[Tensor], b_aux: Optional[Tensor], w2: Tensor, b2: Tensor,
                      cond_bias: Optional[Tensor], i: int, j0: int, j1: int, left: int) -> None:
    """PixelCNN++ GatedResnet at one row's columns of its padded maps (conv1+aux, conv2+gate)."""
    from fastgen.kernels.pixelcnnpp_resnet import resnet_at as launch
    launch(x, aux, mid, out, w1, b1, w_aux, b_aux, w2, b2, cond_bias, i, j0, j1, left,
           precision=_resnet_at_kernel.precision(x))


def _check(x, aux, mid, out, weights, cond_bias, i, j0, j1, left):
    """ValueError/TypeError naming the argument for inputs no backend can run."""
    op = "pixelcnnpp_resnet_at"
    if not isinstance(weights, ResnetWeights):
        raise TypeError(f"{op}: weights must be a ResnetWeights (fastgen.nn.pack_resnet_weights), "
                        f"got {type(weights).__name__}")
    w1, b1, w_aux, b_aux, w2, b2 = weights
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"{op}: x must be a 4-D padded map [B, C, h + 1, w + 2], got {getattr(x, 'shape', x)}")
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
        raise ValueError(f"{op}: weights.w1 must be [4 or 6, {2 * C}, {C}] (a packed 2x2 or 2x3 conv), "
                         f"got {tuple(w1.shape)}")
    if tuple(w2.shape) != (taps, 2 * C, 2 * C) or tuple(b1.shape) != (C,) or tuple(b2.shape) != (2 * C,):
        raise ValueError(f"{op}: expected weights.w2 [{taps}, {2 * C}, {2 * C}], b1 [{C}], b2 [{2 * C}], got "
                         f"{tuple(w2.shape)}, {tuple(b1.shape)}, {tuple(b2.shape)}")
    if aux and (w_aux is None or b_aux is None or tuple(w_aux.shape) != (2 * A, C) or tuple(b_aux.shape) != (C,)):
        raise ValueError(f"{op}: with aux maps of {A} channels, weights.w_aux must be [{2 * A}, {C}] and "
                         f"weights.b_aux [{C}]")
    if cond_bias is not None and tuple(cond_bias.shape) != (B, 2 * C):
        raise ValueError(f"{op}: cond_bias must be [{B}, {2 * C}] or None, got {tuple(cond_bias.shape)}")
    kw = taps // 2
    if not (0 <= left < kw and 0 <= i < hp - 1 and 0 <= j0 < j1 <= wp - 2):
        raise ValueError(f"{op}: need 0 <= left < {kw}, 0 <= i < {hp - 1} and 0 <= j0 < j1 <= {wp - 2}, got "
                         f"left={left}, i={i}, j0={j0}, j1={j1}")
    if kw - 1 - left > 1 or left > 1:
        raise ValueError(f"{op}: the maps are padded by one column each side, so the window may reach "
                         f"at most one column left and right (left={left}, width {kw})")


def _unsupported(x: Tensor, aux: Sequence[Tensor], weights: ResnetWeights,
                 cond_bias: Optional[Tensor]) -> Optional[str]:
    """Why the kernels cannot tile these inputs, or None."""
    channels = [x.shape[1]] + [t.shape[1] for t in aux]
    if any(c % 16 for c in channels):
        return f"channels (x and aux maps) must be multiples of 16, got {channels}"
    if any(w is not None and (w.dtype != torch.float32 or not w.is_contiguous()) for w in (*weights, cond_bias)):
        return "packed weights, biases and cond_bias must be contiguous float32"
    return None


def pixelcnnpp_resnet_at(x: Tensor, aux: Sequence[Tensor], mid: Tensor, out: Tensor, weights: ResnetWeights,
                         cond_bias: Optional[Tensor], i: int, j0: int, j1: int, left: int = 1,
                         backend: Optional[str] = None) -> None:
    """One GatedResnet at row i, columns j0 .. j1 - 1: writes ``mid`` and ``out`` there, in place
    (nothing else).  x, mid, out: padded maps [B, C, h + 1, w + 2]; aux: 0, 1 or 2 maps
    [B, A_k, h + 1, w + 2]; weights: a ``ResnetWeights``; cond_bias: [B, 2C] or None.  See
    ``fastgen.ops.pixelcnnpp_resnet.reference.pixelcnnpp_resnet_at`` for the math.

    Backends: Triton on CUDA (and under TRITON_INTERPRET=1 when forced), the reference on the
    CPU.  Inputs the kernel cannot tile (channels not multiples of 16, non-fp32 weights) run on
    the reference unless the Triton backend was forced, which raises a ValueError instead."""
    aux = list(aux)
    _check(x, aux, mid, out, weights, cond_bias, i, j0, j1, left)
    why = _unsupported(x, aux, weights, cond_bias)
    if _resnet_at_kernel.backend(x, backend, unsupported=why) == "reference":
        reference.pixelcnnpp_resnet_at(x, aux, mid, out, weights, cond_bias, i, j0, j1, left)
        return
    _resnet_at_kernel(x, aux, mid, out, *weights, cond_bias, int(i), int(j0), int(j1), int(left))
