"""Flow benchmarks: the fused coupling transform against the eager PyTorch a user writes and its
``torch.compile``; a whole Glow training step against the same architecture in eager PyTorch
(and normflows where installed).

Glow training step (``glow_train_rows``): K=32 steps x L=3 levels, hidden 512, 32x32x3, batch
64, Adamax, TF32 allowed as in the anchor (shared/anchors/anchor_bench5.py: normflows 1.7.3,
44.1M parameters, 328 ms per step, 5.98 GB peak, sampling 64 images 379 ms on an H100): fastgen's
``Glow`` (and with ``invertible_backprop=True``: no stored activations inside a level), the
same model on the reference backend (the same architecture in eager PyTorch ops),
and normflows' model where installed (``benchmarks/wheels``; run_gpu.sh installs it) -- time
per step (median of wall-clock steps between syncs), peak memory, and sampling 64 images.
Target: >= 1.5x faster and >= 30% less peak memory than normflows and than eager.

Coupling (Glow's scale, ``y = x_b sigmoid(s + 2) + t`` with the per-sample log-det, forward +
backward of x_b and h) at B=64: C=48, 32x32 and C=96, 16x16 (x_b is half the channels, h the
conditioner's [s; t]), fp32 and bf16.  Anchors (H100, shared/anchors/anchor_bench2.py): eager
627 us, torch.compile 588 us (fp32, C=48 32x32); bf16 eager 454 us.  Floor: the bytes that
must move, 11 x |x_b| (forward reads x_b and h = 2|x_b| and writes y; backward reads grad, x_b
and h, writes grad x_b and grad h), at the H100's measured copy bandwidth: 23 us fp32, 12 us
bf16.  Target: >= 70% of the floor, well over 10x eager.
"""
from typing import Callable

import statistics
import time

import torch

from fastgen import ops
from fastgen.bench.runner import Case, forced_backend, torch_compiled


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
    return run_cases(cases, device) + glow_train_rows(device, quick)


def normflows_glow(levels: int, steps: int, hidden: int, shape: tuple):
    """The anchor's normflows model (shared/anchors/anchor_bench5.py), or None without normflows."""
    try:
        import normflows as nf
    except ImportError:
        return None
    q0, merges, flows = [], [], []
    C, H, W = shape
    for i in range(levels):
        stage = [nf.flows.GlowBlock(C * 2 ** (levels + 1 - i), hidden, split_mode="channel", scale=True)
                 for _ in range(steps)]
        flows.append(stage + [nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            latent = (C * 2 ** (levels - i), H // 2 ** (levels - i), W // 2 ** (levels - i))
        else:
            latent = (C * 2 ** (levels + 1), H // 2 ** levels, W // 2 ** levels)
        q0.append(nf.distributions.DiagGaussian(latent))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_step_stats(model, loss_fn, sample_fn, device, steps: int) -> dict:
    """Median ms per Adamax step, peak memory (GB) over those steps, ms to sample 64."""
    opt = torch.optim.Adamax(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()
    for _ in range(3):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    with torch.no_grad():
        _sync(device)
        start = time.perf_counter()
        sample_fn()
        _sync(device)
    return {"ms": 1e3 * statistics.median(times), "peak_GB": peak, "sample_ms": 1e3 * (time.perf_counter() - start)}


def glow_train_rows(device: torch.device, quick: bool = False) -> list[dict]:
    """One row: a Glow training step by fastgen, by the same model in eager ops, by normflows."""
    from fastgen.models import Glow
    levels, steps, hidden, shape, batch = (3, 32, 512, (3, 32, 32), 64) if not quick else (2, 2, 16, (3, 8, 8), 4)
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True      # as the anchor
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, *shape), generator=g).to(device)
    stats = {}
    try:
        for name, backend, saving in (("fastgen", None, False), ("fastgen_invertible_backprop", None, True),
                                      ("eager_same_architecture", "reference", False)):
            torch.manual_seed(0)
            model = Glow(shape, levels=levels, steps=steps, hidden=hidden, invertible_backprop=saving).to(device)
            with forced_backend(backend):
                with torch.no_grad():
                    model.loss(images)                    # ActNorm's data-dependent initialisation
                stats[name] = _train_step_stats(model, lambda m=model: m.loss(images),
                                                lambda m=model: m.sample(64), device, 10 if not quick else 2)
            del model
        model = normflows_glow(levels, steps, hidden, shape)
        if model is not None:
            model = model.to(device)
            x = images.float() / 256
            stats["normflows"] = _train_step_stats(model, lambda: model.forward_kld(x), lambda: model.sample(64),
                                                   device, 10 if not quick else 2)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
    row = {"case": f"glow_K{steps}_L{levels}_h{hidden}_B{batch}_{shape[1]}x{shape[2]}_train_step",
           "ms": {k: v["ms"] for k, v in stats.items()},
           "peak_GB": {k: v["peak_GB"] for k, v in stats.items()},
           "sample_64_ms": {k: v["sample_ms"] for k, v in stats.items()},
           "target": ">= 1.5x faster and >= 30% less peak memory than normflows and than eager"}
    for mine in ("fastgen", "fastgen_invertible_backprop"):
        ours = stats[mine]
        for other in ("normflows", "eager_same_architecture"):
            if other in stats:
                row[f"{mine}_speedup_vs_{other}"] = stats[other]["ms"] / ours["ms"]
                if ours["peak_GB"] and stats[other]["peak_GB"]:
                    row[f"{mine}_memory_saving_vs_{other}"] = 1 - ours["peak_GB"] / stats[other]["peak_GB"]
    print(row)
    return [row]


__all__ = ["coupling_cases", "eager_glow_coupling", "flow_rows", "glow_train_rows", "normflows_glow"]
