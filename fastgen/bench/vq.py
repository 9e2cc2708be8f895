"""Vector-quantization benchmarks: the nearest-code search and a VQ layer's training step.

Search (``search_cases``): N = 65,536 vectors (a B64 32x32 latent map), D = 64, K = 512 and
8,192 codes, fp32 -- fastgen's ``nearest_code`` (the tiled kernel, plus its one-bool host check
for non-finite rows) against what a user writes, ``torch.cdist(z, c).argmin(1)``, and the
expanded ``||z||^2 - 2 z c^T + ||c||^2`` with ``argmin`` -- with PyTorch's default flags (exact
fp32: ``torch.backends.cuda.matmul.allow_tf32`` off; fastgen follows that flag) and with TF32
allowed for everyone.  Anchors (H100, fp32, default flags; shared/anchors/anchor_bench2.py):
cdist+argmin 0.644 ms and 145 MB extra at K = 512, 6.45 ms and 2.07 GB at K = 8,192.
Floor: the multiply-adds at TF32 rate, 2 N K D / 400 TFLOP/s (the anchor's figure for the
H100's dense TF32): 10.7 us at K = 512, 172 us at K = 8,192; the bytes (N D + K D fp32 read,
N int64 written) are 6 us.  The exact-fp32 cases run on the CUDA cores, whose floor is ~7x
higher; their % of floor is still stated against the TF32 floor.
Target: >= 3x faster than cdist+argmin at K = 8,192, extra memory O(N + K D).

Layer step (``layer_cases``): one training step of a VQ bottleneck on the same z -- forward in
training mode (search, quantized, commitment loss, EMA codebook update with decay 0.99) and the
backward of ``quantized.sum() + commitment_loss`` -- by ``fastgen.nn.VectorQuantizer``, by the
same module on the reference backend (cdist-free dense distances + argmin + index_add_ in
eager PyTorch), and by ``vector_quantize_pytorch.VectorQuantize`` where installed (a
benchmark-only peer, carried in ``benchmarks/wheels``; run_gpu.sh installs it).  Target:
ahead of vector-quantize-pytorch.

Rows add ``peak_extra_MB`` per implementation (peak allocation above the inputs during one
call) and ``floor_ms_h100_tf32`` / ``pct_of_floor``.  On a CPU (small sizes, fastgen on its
reference path unless TRITON_INTERPRET=1) the rows check the harness and are not speed claims.
"""
import contextlib
import functools
from typing import Callable, Optional

import torch

from fastgen import ops
from fastgen.bench.runner import Case, forced_backend, run_cases, sync

TF32_FLOPS = 400e12          # the anchor's H100 dense TF32 rate (shared/anchors/anchor_bench2.py)


def _sizes(quick: bool):
    return (256, 16, (40, 100)) if quick else (65536, 64, (512, 8192))


@contextlib.contextmanager
def matmul_tf32(on: bool):
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _with_tf32(fn: Callable, on: bool) -> Callable:
    def run():
        with matmul_tf32(on):
            return fn()
    return run


def expanded_argmin(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return ((z * z).sum(1, keepdim=True) - 2 * z @ codebook.t() + (codebook * codebook).sum(1)).argmin(1)


def search_cases(device: torch.device, quick: bool = False) -> list[Case]:
    N, D, Ks = _sizes(quick)
    cases = []
    for K in Ks:
        g = torch.Generator().manual_seed(K)
        z = torch.randn(N, D, generator=g).to(device)
        codebook = torch.randn(K, D, generator=g).to(device)
        for tf32 in (False, True):
            impls = {"fastgen": lambda z=z, c=codebook: ops.nearest_code(z, c),
                     "cdist_argmin": lambda z=z, c=codebook: torch.cdist(z, c).argmin(1),
                     "expanded_argmin": lambda z=z, c=codebook: expanded_argmin(z, c)}
            cases.append(Case(f"vq_search_N{N}_D{D}_K{K}_fp32{'_tf32' if tf32 else ''}",
                              {name: _with_tf32(fn, tf32) for name, fn in impls.items()},
                              flops=2.0 * N * K * D, bytes=(N * D + K * D) * 4 + N * 8, dtype=torch.float32,
                              target=">= 3x faster than cdist+argmin at K=8192, O(N + K D) extra memory"))
    return cases


def check_search_case(case: Case) -> None:
    """fastgen's indices are nearest codes (distances recomputed in float64 on the chosen and
    the best code; TF32 cases may pick a code within TF32's error)."""
    got = case.impls["fastgen"]()
    want = case.impls["cdist_argmin"]()
    agree = (got == want).float().mean().item()
    if agree < (0.99 if case.name.endswith("tf32") else 0.999):
        raise AssertionError(f"{case.name}: fastgen and cdist+argmin agree on only {agree:.4%} of the rows")


def vqp_layer(K: int, D: int):
    """vector_quantize_pytorch.VectorQuantize with the same settings, or None when not installed."""
    try:
        from vector_quantize_pytorch import VectorQuantize
    except ImportError:
        return None
    return VectorQuantize(dim=D, codebook_size=K, decay=0.99, commitment_weight=0.25)


def layer_cases(device: torch.device, quick: bool = False) -> list[Case]:
    from fastgen.nn import VectorQuantizer
    N, D, Ks = _sizes(quick)
    cases = []
    for K in Ks:
        g = torch.Generator().manual_seed(K)
        z = torch.randn(N, D, generator=g).to(device).requires_grad_()
        impls = {}
        for name, backend in (("fastgen", None), ("eager_reference", "reference")):
            layer = VectorQuantizer(K, D).to(device).train()

            def step(layer=layer, scope=functools.partial(forced_backend, backend), z=z):
                with scope():
                    out = layer(z)
                    return torch.autograd.grad(out.quantized.sum() + out.commitment_loss, z)
            impls[name] = step
        peer = vqp_layer(K, D)
        if peer is not None:
            peer = peer.to(device).train()

            def peer_step(peer=peer, z=z):
                quantized, _, loss = peer(z.view(1, N, D))     # it takes [B, N, D]
                return torch.autograd.grad(quantized.sum() + loss.sum(), z)
            impls["vector_quantize_pytorch"] = peer_step
        cases.append(Case(f"vq_layer_train_step_N{N}_D{D}_K{K}_fp32", impls, dtype=torch.float32,
                          flops=2.0 * N * K * D, bytes=(N * D + K * D) * 4 + N * 8,
                          target="ahead of vector-quantize-pytorch (same settings: decay 0.99, beta 0.25)"))
    return cases


def _peak_extra_mb(fn: Callable, device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    fn()
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20


def vq_rows(device: torch.device, quick: bool = False) -> list[dict]:
    device = torch.device(device)
    cases = search_cases(device, quick)
    for case in cases:
        check_search_case(case)
    cases += layer_cases(device, quick)
    rows = run_cases(cases, device)
    for case, row in zip(cases, rows):
        row["peak_extra_MB"] = {name: _peak_extra_mb(fn, device) for name, fn in case.impls.items()}
        floor = case.flops / TF32_FLOPS * 1e3          # the search's multiply-adds at the TF32 rate
        ours = row["ms"].get("fastgen")
        row["floor_ms_h100_tf32"] = floor
        row["pct_of_floor"] = 100 * floor / ours if ours else None
        for other in ("cdist_argmin", "vector_quantize_pytorch", "eager_reference"):
            if ours and row["ms"].get(other):
                row[f"speedup_vs_{other}"] = row["ms"][other] / ours
        print(row, flush=True)
    return rows


__all__ = ["check_search_case", "expanded_argmin", "layer_cases", "search_cases", "vq_rows"]
