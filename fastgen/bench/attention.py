"""Block-local attention benchmarks: fastgen's kernels against what a user writes instead, in
the same run -- SDPA with the dense boolean mask, permute-into-blocks + SDPA (where the pattern
is exactly "attend within the block": no memory), FlexAttention with a block mask (compiled;
CUDA only) and NATTEN's blocked mode (stride = kernel = block; only if ``natten`` imports and
only without memory) -- forward, and forward + backward.

The issue's three cases (8 heads x 64, bf16, causal), with the FlexAttention anchors measured on
an H100 (shared/anchors/anchor_bench3.py):

| case | flex fwd | flex fwd+bwd | target |
|---|---|---|---|
| video 16x32x32 tokens, blocks 4x8x8, batch 1 | 0.301 ms | 1.61 ms | fwd <= 60 us (>= 5x), fwd+bwd >= 4x |
| image 64x64, blocks 8x8 + the block above, batch 4 | 0.66 ms | 1.33 ms | fwd >= 5x, fwd+bwd >= 3x |
| 1-D 65,536 tokens, blocks 256 + the previous block, batch 1 | 0.62 ms | 2.11 ms | fwd >= 2x, fwd+bwd >= 1.5x |

Floors.  Useful flops = 4 * D * (allowed query-key pairs) * B * heads for the forward (QK^T and
PV over the allowed pairs only), 3.5x that for forward + backward (five matmuls backward).
Bytes: the forward reads q, k, v and writes out (4 tensors of B*heads*N*D), forward +
backward 12 (backward reads q, k, v, out, grad and writes dq, dk, dv).  The video forward: 4.3
GFLOP (5.4 us at the measured 796 TFLOP/s bf16) and 64 MB (21 us at 2.99 TB/s): memory-bound,
floor ~21 us.  Rows report fastgen's TFLOP/s, % of the floor (the larger of the two) and % of
the memory floor.
"""
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from fastgen import ops
from fastgen.bench.runner import COPY_BYTES_PER_S, Case
from fastgen.ops.block_local_attention import reference

# name, grid, block, memory, batch (the cases), and the small ones a CPU can run
CASES = [("video_16x32x32_blk4x8x8", (16, 32, 32), (4, 8, 8), None, 1),
         ("image_64x64_blk8x8_mem1", (64, 64), (8, 8), 1, 4),
         ("seq_65536_blk256_mem1", (65536,), (256,), 1, 1)]
QUICK = [("video_4x4x4_blk2x2x2", (4, 4, 4), (2, 2, 2), None, 1),
         ("image_8x8_blk4x4_mem1", (8, 8), (4, 4), 1, 1),
         ("seq_64_blk16_mem1", (64,), (16,), 1, 1)]
TARGETS = {"video": {"fwd": "<= 60 us, >= 5x FlexAttention (0.301 ms), ahead of NATTEN",
                     "fwdbwd": ">= 4x FlexAttention (1.61 ms)"},
           "image": {"fwd": ">= 5x FlexAttention (0.66 ms)", "fwdbwd": ">= 3x FlexAttention (1.33 ms)"},
           "seq": {"fwd": ">= 2x FlexAttention (0.62 ms)", "fwdbwd": ">= 1.5x FlexAttention (2.11 ms)"}}
DENSE_MASK_MAX_N = 16384        # a dense [N, N] bool mask beyond this is > 256 MB (65,536: 4 GB)


def allowed_pairs(grid, block, memory, causal=True) -> int:
    """The number of (query, key) pairs the pattern allows, counted block by block."""
    nb = [-(-g // b) for g, b in zip(grid, block)]
    total = 0
    for c in torch.cartesian_prod(*[torch.arange(n) for n in nb]).view(-1, len(grid)).tolist():
        extent = [min(b, g - ci * b) for ci, b, g in zip(c, block, grid)]
        size = math.prod(extent)
        own = size * (size + 1) // 2 if causal else size * size
        earlier = min(c[0], memory or 0) * block[0] * math.prod(extent[1:])
        total += own + size * earlier
    return total


def _block_id(grid, block, device):
    _, c = reference.block_coordinates(grid, block, device)
    nb = [-(-g // b) for g, b in zip(grid, block)]
    flat = torch.zeros(c.shape[0], dtype=torch.long, device=device)
    for axis in range(len(grid)):
        flat = flat * nb[axis] + c[:, axis]
    return flat, c


def flex_attention_fn(grid, block, memory, B, N, device) -> Optional[Callable]:
    """FlexAttention (compiled) with the block mask of the pattern, or None off CUDA / without it."""
    if device.type != "cuda":
        return None
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    _, c = _block_id(grid, block, device)
    first, rest = c[:, 0], c[:, 1:]

    def mask_mod(b, h, qi, ki):
        same_rest = (rest[qi] == rest[ki]).all(-1) if rest.shape[1] else qi >= 0
        ahead = first[qi] - first[ki]
        return same_rest & (ahead >= 0) & (ahead <= (memory or 0)) & (qi >= ki)
    if len(grid) > 1:           # vmap-friendly form: compare each remaining axis explicitly
        axes = [c[:, i] for i in range(1, len(grid))]

        def mask_mod(b, h, qi, ki):   # noqa: F811
            ok = (first[qi] - first[ki] >= 0) & (first[qi] - first[ki] <= (memory or 0)) & (qi >= ki)
            for a in axes:
                ok = ok & (a[qi] == a[ki])
            return ok
    block_mask = create_block_mask(mask_mod, B, None, N, N, device=device)
    compiled = torch.compile(flex_attention)
    return lambda q, k, v: compiled(q, k, v, block_mask=block_mask)


def permute_sdpa_fn(grid, block, B, H, D) -> Optional[Callable]:
    """Permute tokens into blocks, causal SDPA per block, permute back: exact only without
    memory and with block sizes dividing the grid."""
    if any(g % b for g, b in zip(grid, block)):
        return None
    d = len(grid)
    nb = [g // b for g, b in zip(grid, block)]
    split = [x for pair in zip(nb, block) for x in pair]                     # n0, b0, n1, b1, ...
    to_blocks = [0, 1] + [2 + 2 * i for i in range(d)] + [3 + 2 * i for i in range(d)] + [2 + 2 * d]
    back = [to_blocks.index(i) for i in range(len(to_blocks))]
    size = math.prod(block)

    def run(q, k, v):
        def blocks(t):
            return t.reshape(B, H, *split, D).permute(*to_blocks).reshape(B, H, -1, size, D)
        o = F.scaled_dot_product_attention(blocks(q), blocks(k), blocks(v), is_causal=True)
        return o.reshape(B, H, *nb, *block, D).permute(*back).reshape(B, H, -1, D)
    return run


def natten_fn(grid, block, memory) -> Optional[Callable]:
    """NATTEN blocked mode (kernel = stride = block), without memory; None if natten is absent
    or its API differs (it is not a dependency: run_gpu.sh times it only where installed)."""
    if memory:
        return None
    try:
        import natten  # noqa: F401
        from natten.functional import na1d, na2d, na3d
    except Exception:
        return None
    fn = {1: na1d, 2: na2d, 3: na3d}[len(grid)]

    def run(q, k, v):     # natten's layout: [B, *grid, heads, D]
        B, H, N, D = q.shape

        def lay(t):
            return t.transpose(1, 2).reshape(B, *grid, H, D)
        o = fn(lay(q), lay(k), lay(v), kernel_size=tuple(block), stride=tuple(block),
               is_causal=tuple([True] * len(grid)))
        return o.reshape(B, N, H, D).transpose(1, 2)
    return run


def attention_cases(device: torch.device, quick: bool = False, heads: int = 8, head_dim: int = 64) -> list[Case]:
    device = torch.device(device)
    cases = []
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    H, D = (heads, head_dim) if not quick else (2, 16)
    for name, grid, block, memory, B in (CASES if not quick else QUICK):
        N = math.prod(grid)
        g = torch.Generator().manual_seed(N)
        q, k, v = (torch.randn(B, H, N, D, generator=g).to(device, dtype) for _ in range(3))
        grad = torch.randn(B, H, N, D, generator=g).to(device, dtype)
        pairs = allowed_pairs(grid, block, memory)
        flops = 4.0 * D * pairs * B * H
        tensor_bytes = B * H * N * D * q.element_size()
        fns = {"fastgen": lambda q, k, v, grid=grid, block=block, memory=memory:
               ops.block_local_attention(q, k, v, grid, block, True, memory)}
        if N <= DENSE_MASK_MAX_N:
            mask = reference.block_local_mask(grid, block, True, memory, device)
            fns["sdpa_dense_mask"] = lambda q, k, v, mask=mask: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        for key, make in (("permute_blocks_sdpa", lambda: permute_sdpa_fn(grid, block, B, H, D) if not memory else None),
                          ("flex_attention", lambda: flex_attention_fn(grid, block, memory, B, N, device)),
                          ("natten_blocked", lambda: natten_fn(grid, block, memory))):
            try:
                fn = make()
            except Exception as error:          # a peer that cannot build this case: reported, not fatal
                print(f"{name}: {key} unavailable ({type(error).__name__}: {error})")
                fn = None
            if fn is not None:
                fns[key] = fn
        family = name.split("_")[0]
        cases.append(Case(f"block_local_attention_{name}_B{B}_H{H}_D{D}_{str(dtype)[6:]}_fwd",
                          {key: (lambda fn=fn: fn(q, k, v)) for key, fn in fns.items()},
                          flops=flops, bytes=4 * tensor_bytes, dtype=dtype, target=TARGETS[family]["fwd"]))
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]

        def fwd_bwd(fn, leaves=leaves, grad=grad):
            def run():
                return torch.autograd.grad(fn(*leaves), leaves, grad)
            return run
        cases.append(Case(f"block_local_attention_{name}_B{B}_H{H}_D{D}_{str(dtype)[6:]}_fwdbwd",
                          {key: fwd_bwd(fn) for key, fn in fns.items()},
                          flops=3.5 * flops, bytes=12 * tensor_bytes, dtype=dtype, target=TARGETS[family]["fwdbwd"]))
    return cases


def check_attention_case(case: Case) -> None:
    """Every implementation of a case agrees with fastgen's (a benchmark of a wrong kernel, or of
    a baseline computing another pattern, is worthless)."""
    results = {name: impl() for name, impl in case.impls.items()}
    ours = results.pop("fastgen")
    ours = ours if isinstance(ours, (tuple, list)) else (ours,)
    for name, got in results.items():
        got = got if isinstance(got, (tuple, list)) else (got,)
        for a, b in zip(got, ours):
            torch.testing.assert_close(a.float(), b.float(), rtol=3e-2, atol=3e-2, msg=lambda m: f"{name}: {m}")


def attention_rows(device: torch.device, quick: bool = False) -> list[dict]:
    from fastgen.bench.runner import run_cases
    cases = attention_cases(device, quick)
    for case in cases:
        check_attention_case(case)
    rows = run_cases(cases, device)
    for case, row in zip(cases, rows):
        ours = row["ms"].get("fastgen")
        memory_floor = case.bytes / COPY_BYTES_PER_S * 1e3
        row["memory_floor_ms_h100"] = memory_floor
        row["pct_of_memory_floor"] = 100 * memory_floor / ours if ours else None
        if row["ms"].get("flex_attention") and ours:
            row["speedup_vs_flex_attention"] = row["ms"]["flex_attention"] / ours
    return rows


__all__ = ["allowed_pairs", "attention_cases", "attention_rows", "check_attention_case", "flex_attention_fn",
           "natten_fn", "permute_sdpa_fn"]
