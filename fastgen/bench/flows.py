"""Flow benchmarks: the fused coupling transform against the eager PyTorch a user writes and its
``torch.compile``; a whole Glow training step against the same architecture in eager PyTorch
(and normflows where installed).

Coupling (Glow's scale, ``y = x_b sigmoid(s + 2) + t`` with the per-sample log-det, forward +
backward of x_b and h) at B=64: C=48, 32x32 and C=96, 16x16 (x_b is half the channels, h the
conditioner's [s; t]), fp32 and bf16.  Anchors (H100, shared/anchors/anchor_bench2.py): eager
627 us, torch.compile 588 us (fp32, C=48 32x32); bf16 eager 454 us.  Floor: the bytes that
must move, 11 x |x_b| (forward reads x_b and h = 2|x_b| and writes y; backward reads grad, x_b
and h, writes grad x_b and grad h), at the H100's measured copy bandwidth: 23 us fp32, 12 us
bf16.  Target: >= 70% of the floor, well over 10x eager.
"""
from typing import Callable

import torch

from fastgen import ops
from fastgen.bench.runner import Case, torch_compiled


def eager_glow_coupling(x_b: torch.Tensor, h: torch.Tensor):
    """What a user writes (and what the anchor timed): sigmoid(s + 2) scale, float32 log-det."""
    s, t = h.chunk(2, 1)
    scale = torch.sigmoid(s + 2)
    return x_b * scale + t, torch.log(scale).float().flatten(1).sum(1)


def _fwd_bwd(f: Callable, x_b: torch.Tensor, h: torch.Tensor, grad_y: torch.Tensor) -> Callable:
    def run():
        y, logdet = f(x_b, h)
        return torch.autograd.grad((y, logdet), (x_b, h), (grad_y, torch.ones_like(logdet)))
    return run


def coupling_cases(device: torch.device, quick: bool = False) -> list[Case]:
    sizes = [(64, 48, 32), (64, 96, 16)] if not quick else [(2, 8, 8)]
    cases = []
    for B, C, H in sizes:
        for dtype in (torch.float32, torch.bfloat16):
            g = torch.Generator().manual_seed(C)
            x_b = torch.randn(B, C // 2, H, H, generator=g).to(device, dtype).requires_grad_()
            h = torch.randn(B, C, H, H, generator=g).to(device, dtype).requires_grad_()
            grad_y = torch.randn(B, C // 2, H, H, generator=g).to(device, dtype)
            impls = {"fastgen": _fwd_bwd(lambda x, h: ops.affine_coupling(x, h, "sigmoid"), x_b, h, grad_y),
                     "eager": _fwd_bwd(eager_glow_coupling, x_b, h, grad_y)}
            compiled = torch_compiled(eager_glow_coupling)
            if compiled is not None:
                impls["torch_compile"] = _fwd_bwd(compiled, x_b, h, grad_y)
            cases.append(Case(f"affine_coupling_glow_B{B}_C{C}_{H}x{H}_{str(dtype)[6:]}_fwdbwd", impls,
                              bytes=11 * x_b.numel() * x_b.element_size(), dtype=dtype,
                              target=">= 70% of the memory floor, well over 10x eager"))
    return cases


def check_coupling_case(case: Case) -> None:
    """The case's implementations agree (a benchmark of a wrong kernel is worthless)."""
    results = {name: impl() for name, impl in case.impls.items()}
    want = results.pop("eager")
    for name, got in results.items():
        for a, b in zip(got, want):
            torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2, msg=lambda m: f"{name}: {m}")


def flow_rows(device: torch.device, quick: bool = False) -> list[dict]:
    from fastgen.bench.runner import run_cases
    cases = coupling_cases(device, quick)
    for case in cases:
        check_coupling_case(case)
    return run_cases(cases, device)


__all__ = ["coupling_cases", "eager_glow_coupling", "flow_rows"]
