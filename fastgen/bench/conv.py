"""Conv benchmarks: the masked 2-D and causal 1-D convolutions against cuDNN and torch.compile.

Every case times fastgen given the channels-first tensor a user has (``fastgen``) and given
the channels-last tensor an earlier fastgen layer returns (``fastgen_channels_last``) against
cuDNN through ``F.conv2d(x, w * mask)`` in both memory formats (the causal conv: cuDNN with
explicit left padding, as a user writes it) and, on a GPU, ``torch.compile`` of the
reference; forward, and forward + ``torch.autograd.grad`` of all inputs.

Floors (H100 measured ceilings: 2.99 TB/s copy, ~796 TFLOP/s bf16 dense):
- masked conv2d 7x7 'A', B=64, C=128, 32x32: 24 of 49 taps -> 2*65536*128*128*24 = 51.5 GFLOP
  -> 65 us at peak; bytes 2 x 16.8 MB -> 11 us.  Compute bound.
- masked conv2d 3x3 'B': 5 of 9 taps -> 10.7 GFLOP -> 13.5 us; bytes -> 11 us.
- causal conv1d k=2, B=16, C=256, T=16384: 68.7 GFLOP -> 86 us; bytes 2 x 134 MB -> 90 us.
Forward + backward: three times the forward's.  Stated for 16-bit inputs only.
"""
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from fastgen import ops
from fastgen.bench.runner import Case, torch_compiled
from fastgen.ops.conv import reference


def _fwd_bwd(f: Callable, inputs: tuple, gy: torch.Tensor) -> Callable:
    """A callable running f's forward and the gradients w.r.t. ``inputs`` for upstream ``gy``."""
    def run():
        y = f()
        return torch.autograd.grad(y, inputs, gy)
    return run


def masked_conv_cases(device: torch.device, dtype: torch.dtype, quick: bool = False,
                      compile_baseline: bool = True) -> list[Case]:
    """7x7 type 'A' and 3x3 type 'B' masked convs, forward and forward+backward."""
    B, C, H = (64, 128, 32) if not quick else (2, 16, 8)
    cases = []
    for k, mask_type, taps, target in [(7, "A", 24, "fwd >= 1.5x cuDNN, fwd+bwd >= 1.3x"),
                                       (3, "B", 5, "fwd and fwd+bwd no slower than cuDNN")]:
        cases += _masked_conv_case(device, dtype, B, C, H, k, mask_type, taps, target, compile_baseline)
    return cases


def _masked_conv_case(device, dtype, B, C, H, k, mask_type, taps, target, compile_baseline):
    g = torch.Generator(device="cpu").manual_seed(k)
    x = torch.randn(B, C, H, H, generator=g).to(device, dtype).requires_grad_()
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    w = (torch.randn(C, C, k, k, generator=g) / (C * k)).to(device, dtype).requires_grad_()
    b = torch.randn(C, generator=g).to(device, dtype).requires_grad_()
    mask = reference.pixelcnn_mask(C, C, k, mask_type, dtype=dtype, device=device)
    gy = torch.randn(B, C, H, H, generator=g).to(device, dtype)

    def fastgen_fwd(x=x):
        return ops.masked_conv2d(x, w, b, mask_type)

    def cudnn_fwd(x=x):
        return F.conv2d(x, w * mask, b, padding=k // 2)

    flops = 2 * B * H * H * C * C * taps
    fwd = {"fastgen": fastgen_fwd, "fastgen_channels_last": lambda: fastgen_fwd(x_cl),
           "cudnn": cudnn_fwd, "cudnn_channels_last": lambda: cudnn_fwd(x_cl)}
    fb = {"fastgen": _fwd_bwd(fastgen_fwd, (x, w, b), gy),
          "fastgen_channels_last": _fwd_bwd(lambda: fastgen_fwd(x_cl), (x_cl, w, b), gy),
          "cudnn": _fwd_bwd(cudnn_fwd, (x, w, b), gy),
          "cudnn_channels_last": _fwd_bwd(lambda: cudnn_fwd(x_cl), (x_cl, w, b), gy)}
    if compile_baseline:
        compiled = torch_compiled(lambda x, w, b: reference.masked_conv2d(x, w, b, mask_type))
        if compiled is not None:
            fwd["torch_compile"] = lambda: compiled(x, w, b)
            fb["torch_compile"] = _fwd_bwd(lambda: compiled(x, w, b), (x, w, b), gy)
    name = f"masked_conv2d_k{k}{mask_type}_B{B}_C{C}_{H}x{H}_{str(dtype)[6:]}"
    moved = 2 * x.numel() * x.element_size()
    return [Case(name + "_fwd", fwd, flops=flops, bytes=moved, dtype=dtype, target=target),
            Case(name + "_fwdbwd", fb, flops=3 * flops, bytes=3 * moved, dtype=dtype, target=target)]


def causal_conv_cases(device: torch.device, dtype: torch.dtype, quick: bool = False,
                      dilations: Optional[Sequence[int]] = None, compile_baseline: bool = False) -> list[Case]:
    """The k=2 causal conv at each dilation of a WaveNet cycle, forward and forward+backward."""
    B, C, T, k = (16, 256, 16384, 2) if not quick else (2, 16, 256, 2)
    dilations = dilations or ([2 ** i for i in range(10)] if not quick else [1, 8])
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(B, C, T, generator=g).to(device, dtype).requires_grad_()
    w = (torch.randn(C, C, k, generator=g) / (C * k) ** 0.5).to(device, dtype).requires_grad_()
    b = torch.randn(C, generator=g).to(device, dtype).requires_grad_()
    gy = torch.randn(B, C, T, generator=g).to(device, dtype)
    # The layout a stack of fastgen layers hands on: [B, C, T] with channel stride 1.
    x_cl = x.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    flops = 2 * B * T * C * C * k
    moved = 2 * x.numel() * x.element_size()
    cases = []
    for d in dilations:
        def fastgen_fwd(d=d, x=x):
            return ops.causal_conv1d(x, w, b, d)

        def cudnn_fwd(d=d):
            return F.conv1d(F.pad(x, (d * (k - 1), 0)), w, b, dilation=d)

        fwd = {"fastgen": fastgen_fwd, "fastgen_channels_last": lambda f=fastgen_fwd: f(x=x_cl),
               "cudnn": cudnn_fwd}
        fb = {"fastgen": _fwd_bwd(fastgen_fwd, (x, w, b), gy),
              "fastgen_channels_last": _fwd_bwd(lambda f=fastgen_fwd: f(x=x_cl), (x_cl, w, b), gy),
              "cudnn": _fwd_bwd(cudnn_fwd, (x, w, b), gy)}
        if compile_baseline:
            compiled = torch_compiled(lambda x, w, b, d=d: reference.causal_conv1d(x, w, b, d))
            if compiled is not None:
                fwd["torch_compile"] = lambda c=compiled: c(x, w, b)
        name = f"causal_conv1d_k{k}_d{d}_B{B}_C{C}_T{T}_{str(dtype)[6:]}"
        cases.append(Case(name + "_fwd", fwd, flops=flops, bytes=moved, dtype=dtype, target="fwd >= 2x cuDNN"))
        cases.append(Case(name + "_fwdbwd", fb, flops=3 * flops, bytes=3 * moved, dtype=dtype,
                          target="fwd+bwd >= 1.5x cuDNN"))
    return cases


def conv_cases(device: torch.device, quick: bool = False,
               dtypes: Optional[Sequence[torch.dtype]] = None) -> list[Case]:
    """All conv cases the foundation issue sets targets for (bf16), plus fp32 for reference."""
    device = torch.device(device)
    if dtypes is None:
        dtypes = [torch.bfloat16, torch.float32] if device.type == "cuda" else [torch.float32]
    cases = []
    for dtype in dtypes:
        cases += masked_conv_cases(device, dtype, quick, compile_baseline=device.type == "cuda")
        cases += causal_conv_cases(device, dtype, quick,
                                   dilations=None if dtype == torch.bfloat16 or quick else [1, 64])
    return cases


HEADER = f"{'case':<58} {'fastgen speedup (cl: channels-last input)':<38} median ms"


def format_row(row: dict) -> str:
    """One line of the ``fastgen bench conv`` table (under ``HEADER``)."""
    ms = "  ".join(f"{k}={v:.4f}" if v is not None else f"{k}=n/a" for k, v in row["ms"].items())
    ratio, ratio_cl = row["speedup_vs_best"], row["speedup_channels_last_vs_best"]
    best = f"{ratio:.2f}x ({ratio_cl or 0:.2f}x cl) vs {row['best_alternative']}" if ratio else "n/a"
    return f"{row['case']:<58} {best:<38} {ms}"
