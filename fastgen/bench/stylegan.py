"""StyleGAN2 op benchmarks: fastgen's bias_act, upfirdn2d and modulated conv against the eager
PyTorch StyleGAN2-ADA runs when its CUDA plugins do not build (its reference paths, written out
here in the input's dtype), ``torch.compile`` of that, and -- for the modulated conv -- the
grouped-convolution formulation on cuDNN, at StyleGAN2 shapes (batch 32, 512 channels).

Floors (H100, measured copy 2.99 TB/s, bf16 dense 796 TFLOP/s; ``fastgen.bench.runner``):

- bias_act (lrelu, bias, clamp 256) on [32, 512, 64, 64]: forward reads x and writes y (2|x|);
  forward + backward adds reading dy and y and writing dx (5|x| in all; the bias gradient's
  reduction is not counted).  fp32 |x| = 268 MB: 180 us forward, 449 us fwd+bwd; bf16 half.
- upfirdn2d with the 4x4 [1, 3, 3, 1] filter: upsample2d 32^2 -> 64^2 (reads |x|, writes 4|x|)
  and downsample2d 64^2 -> 32^2 (reads |x|, writes |x| / 4), forward and forward + backward
  (the backward moves the same bytes again).
- modulated conv 3x3, 512 -> 512 channels at 16^2, 32^2, 64^2 (and the upsampling conv 32^2 ->
  64^2): forward + backward = 3 x 2 N C_out C_in 9 H W flops (dx, dweight, dstyles); TFLOP/s,
  and the bf16 floor at the measured peak.

Targets (issue 12): bias_act and upfirdn2d >= 80% of the memory floor; modulated conv forward
+ backward >= 1.3x the grouped-conv formulation.
"""
from typing import Callable

import torch
import torch.nn.functional as F

from fastgen import ops
from fastgen.bench.runner import Case, torch_compiled
from fastgen.ops.stylegan import reference


def eager_bias_act(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """StyleGAN2-ADA's reference path for lrelu with clamp, in x's dtype."""
    y = F.leaky_relu(x + b.reshape(1, -1, 1, 1), 0.2) * (2 ** 0.5)
    return y.clamp(-256, 256)


def eager_upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int, down: int, pad, gain: float) -> torch.Tensor:
    """The reference path in x's dtype: zero insertion by reshape + pad, pad, depthwise conv2d
    with the flipped filter, strided slice (what StyleGAN2-ADA runs without its plugin)."""
    N, C, H, W = x.shape
    if up > 1:
        x = F.pad(x.reshape(N, C, H, 1, W, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(N, C, H * up, W * up)
    x = F.pad(x, [pad[0], pad[1], pad[2], pad[3]])
    k = (f * gain).flip(0, 1).to(x.dtype)[None, None].repeat(C, 1, 1, 1)
    x = F.conv2d(x, k, groups=C)
    return x[:, :, ::down, ::down]


def grouped_modulated_conv(x, weight, styles, up=1, f=None):
    """The grouped-convolution formulation (StyleGAN2's fused_modconv) in x's dtype: per-sample
    weights [N * C_out, C_in, 3, 3], one conv2d with groups = N (transposed conv + FIR for up)."""
    N, C, H, W = x.shape
    w = weight[None] * styles[:, None, :, None, None]
    w = w * (w.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8).rsqrt()
    w = w.to(x.dtype)
    if up == 1:
        y = F.conv2d(x.reshape(1, N * C, H, W), w.reshape(-1, C, 3, 3), padding=1, groups=N)
        return y.reshape(N, -1, H, W)
    w = w.transpose(1, 2).reshape(N * C, -1, 3, 3)           # [N * C_in, C_out, kh, kw] for the transpose
    y = F.conv_transpose2d(x.reshape(1, N * C, H, W), w, stride=2, groups=N)
    y = y.reshape(N, -1, *y.shape[2:])
    return eager_upfirdn2d(y, f, 1, 1, (1, 1, 1, 1), 4.0)


def _fwd_bwd(f: Callable, inputs, grad) -> Callable:
    def run():
        return torch.autograd.grad(f(*inputs), inputs, grad)
    return run


def _impls(fastgen_fn, eager_fn, inputs, grad, backward, quick):
    make = (lambda fn: _fwd_bwd(fn, inputs, grad)) if backward else (lambda fn: (lambda: fn(*inputs)))
    impls = {"fastgen": make(fastgen_fn), "eager": make(eager_fn)}
    # quick (the CPU harness check): no torch.compile -- inductor on a CPU takes minutes here
    compiled = None if quick else torch_compiled(eager_fn)
    if compiled is not None:
        impls["torch_compile"] = make(compiled)
    return impls


def bias_act_cases(device: torch.device, quick: bool = False) -> list[Case]:
    B, C, R = (32, 512, 64) if not quick else (2, 8, 8)
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(B, C, R, R, generator=g).to(device, dtype).requires_grad_()
        b = torch.randn(C, generator=g).to(device, dtype).requires_grad_()
        gy = torch.randn(B, C, R, R, generator=g).to(device, dtype)
        mine = lambda x, b: ops.bias_act(x, b, act="lrelu", clamp=256)  # noqa: E731
        for backward in (False, True):
            cases.append(Case(f"bias_act_lrelu_clamp_B{B}_C{C}_{R}x{R}_{str(dtype)[6:]}_{'fwdbwd' if backward else 'fwd'}",
                              _impls(mine, eager_bias_act, (x, b), gy, backward, quick),
                              bytes=(5 if backward else 2) * x.numel() * x.element_size(), dtype=dtype,
                              target=">= 80% of the memory floor"))
    return cases


def upfirdn2d_cases(device: torch.device, quick: bool = False) -> list[Case]:
    B, C, R = (32, 512, 64) if not quick else (2, 8, 8)
    f = reference.setup_filter([1, 3, 3, 1], device=device)
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        for what, size, up, down, pad, gain in (("upsample2d", R // 2, 2, 1, (2, 1, 2, 1), 4.0),
                                               ("downsample2d", R, 1, 2, (1, 1, 1, 1), 1.0)):
            g = torch.Generator().manual_seed(1)
            x = torch.randn(B, C, size, size, generator=g).to(device, dtype).requires_grad_()
            out_size = size * up // down
            gy = torch.randn(B, C, out_size, out_size, generator=g).to(device, dtype)
            mine = lambda x, up=up, down=down, pad=pad, gain=gain: ops.upfirdn2d(x, f, up, down, pad, gain=gain)  # noqa: E731
            eager = lambda x, up=up, down=down, pad=pad, gain=gain: eager_upfirdn2d(x, f, up, down, pad, gain)  # noqa: E731
            moved = (x.numel() + gy.numel()) * x.element_size()
            for backward in (False, True):
                cases.append(Case(f"upfirdn2d_{what}_4x4_B{B}_C{C}_{size}x{size}_{str(dtype)[6:]}_"
                                  f"{'fwdbwd' if backward else 'fwd'}",
                                  _impls(mine, eager, (x,), gy, backward, quick), bytes=(2 if backward else 1) * moved,
                                  dtype=dtype, target=">= 80% of the memory floor"))
    return cases


def modulated_conv_cases(device: torch.device, quick: bool = False) -> list[Case]:
    B, C = (32, 512) if not quick else (2, 8)
    sizes = [(16, 1), (32, 1), (64, 1), (32, 2)] if not quick else [(8, 1), (4, 2)]
    f = reference.setup_filter([1, 3, 3, 1], device=device)
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        for R, up in sizes:
            g = torch.Generator().manual_seed(2)
            x = torch.randn(B, C, R, R, generator=g).to(device, dtype).requires_grad_()
            w = torch.randn(C, C, 3, 3, generator=g).to(device).requires_grad_()
            s = (torch.randn(B, C, generator=g) + 1).to(device).requires_grad_()
            gy = torch.randn(B, C, R * up, R * up, generator=g).to(device, dtype)
            mine = lambda x, w, s, up=up: ops.modulated_conv2d(  # noqa: E731
                x, w.to(x.dtype), s, up=up, padding=1, resample_filter=f if up > 1 else None, flip_weight=up == 1)
            grouped = lambda x, w, s, up=up: grouped_modulated_conv(x, w, s, up, f)  # noqa: E731
            impls = {"fastgen": _fwd_bwd(mine, (x, w, s), gy), "cudnn": _fwd_bwd(grouped, (x, w, s), gy)}
            compiled = None if quick else torch_compiled(grouped)
            if compiled is not None:
                impls["torch_compile"] = _fwd_bwd(compiled, (x, w, s), gy)
            flops = 3 * 2 * B * C * C * 9 * R * R          # forward + dx + dweight (at the input's resolution)
            cases.append(Case(f"modulated_conv3x3{'_up2' if up > 1 else ''}_B{B}_C{C}_{R}x{R}_{str(dtype)[6:]}_fwdbwd",
                              impls, flops=flops, dtype=dtype,
                              target=">= 1.3x the grouped-conv formulation (cudnn)"))
    return cases


def check_case(case: Case) -> None:
    """fastgen agrees with the eager formulation (a benchmark of a wrong kernel is worthless)."""
    results = {name: impl() for name, impl in case.impls.items()}
    want = results.pop("eager" if "eager" in results else "cudnn")
    want = want if isinstance(want, (tuple, list)) else (want,)
    for name, got in results.items():
        got = got if isinstance(got, (tuple, list)) else (got,)
        for a, b in zip(got, want):
            scale = b.float().abs().max().clamp_min(1)
            a, b = a.float() / scale, b.float() / scale
            if case.dtype == torch.float32:
                torch.testing.assert_close(a, b, rtol=3e-2, atol=3e-2, msg=lambda m: f"{case.name} {name}: {m}")
            elif b.numel() >= 256:
                # 16-bit eager rounds x + b before the activation (a kink may flip for a few elements)
                # and sums the bias gradient in 16 bits (not a reference): 5% of the scale, 1% of the elements
                bad = ((a - b).abs() > 5e-2).float().mean().item()
                assert bad <= 0.01, f"{case.name} {name}: {100 * bad:.2f}% of the elements differ"


def stylegan_cases(device: torch.device, quick: bool = False) -> list[Case]:
    return bias_act_cases(device, quick) + upfirdn2d_cases(device, quick) + modulated_conv_cases(device, quick)


def stylegan_rows(device: torch.device, quick: bool = False) -> list[dict]:
    from fastgen.bench.runner import run_cases
    cases = stylegan_cases(device, quick)
    for case in cases:
        check_case(case)
    return run_cases(cases, device)


__all__ = ["bias_act_cases", "eager_bias_act", "eager_upfirdn2d", "grouped_modulated_conv", "modulated_conv_cases",
           "stylegan_cases", "stylegan_rows", "upfirdn2d_cases"]
