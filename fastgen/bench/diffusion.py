"""Diffusion benchmarks: one fused sampler step, and the 50-step DDIM loop end to end.

``diffusion_rows``: one step of every diffusion sampler at batch 64, 3x64x64 fp32: fastgen's
fused step (explicit noise; also in-kernel Philox where the step is stochastic) against the
same update written in eager PyTorch as a user would (DDPM: the reference op) and, on a GPU,
that code under torch.compile.  Then the end-to-end DDIM loop (``diffusion_loop_rows``).
Floors (memory bound): every tensor read or written once, 3.1 MB each -> 1.05 us per tensor
at 2.99 TB/s: DDPM/DDIM/Langevin/SGLD/VE predictor (x, out, z, y) ~4.2 us; Euler/pf-ODE 3
tensors; Heun's correction and DPM-Solver++(2M) (x, out, aux, y, kept) ~5.3 us; the
corrector reads out and z twice (norms, then the update) ~6.3 us.
Anchors (H100, DDPM): eager 325-378 us, torch.compile 624 us, diffusers DDPMScheduler.step 895 us.
On a GPU each step is also timed replayed inside a CUDA graph (``*_in_cuda_graph``: one step
captured alone, L2 flushed before each replay), how a ``cuda_graph=True`` loop runs it -- the
issue's <= 10 us.

``diffusion_loop_rows``: 50-step DDIM with a DDPM CIFAR-size UNet (~36M parameters, 32x32) at
batch 1 and 64.  Targets: >= 2x diffusers' DDIMScheduler loop at batch 1; loop overhead < 5%
of the denoiser's time.

On a CPU fastgen runs its reference path: a check of the runner, never a speed claim.
"""
import math
from typing import Any, Callable, Optional

import torch

from fastgen import ops
from fastgen.bench.runner import Case, measure, run_cases, torch_compiled
from fastgen.models import UNet
from fastgen.ops.diffusion_step import reference
from fastgen.sampling import diffusion as d


def step_cases(device: torch.device, quick: bool = False) -> list[Case]:
    """One case per sampler: fastgen's fused step against the eager update (and on a GPU the
    Philox variant, torch.compile of the eager update, and both replayed in a CUDA graph)."""
    device = torch.device(device)
    shape = (64, 3, 64, 64) if not quick else (4, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    x, out, noise, aux = (torch.randn(shape, generator=g).to(device) for _ in range(4))
    root = math.sqrt
    a, a_prev, eta, s, s_next, step, snr = 0.4, 0.7, 0.5, 2.0, 1.5, 0.01, 0.16
    ddpm = d.ddpm_coefficients(a, a_prev)
    ddim = d.ddim_coefficients(a, a_prev, eta)
    dpm = d.dpmpp2m_coefficients(a, a_prev, 0.3).coefficients
    ve = d.ve_predictor_coefficients(s, s_next)
    norm = lambda v: v.flatten(1).norm(dim=1).view(-1, *[1] * (v.dim() - 1))
    fused = ops.diffusion_step

    def eager_dpmpp2m(x, out, previous_x0):
        lam = lambda a: 0.5 * math.log(a / (1 - a))
        h, h_previous = lam(a_prev) - lam(a), 0.3
        x0 = (x - root(1 - a) * out) / root(a)
        r = h_previous / h
        D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * previous_x0
        return root((1 - a_prev) / (1 - a)) * x - root(a_prev) * math.expm1(-h) * D, x0

    def eager_corrector(x, score, z):
        e = 2 * (snr * norm(z) / norm(score)) ** 2
        return x + e * score + (2 * e).sqrt() * z

    # sampler -> (fused step, in-kernel Philox variant or None, eager update f(x, out, noise, aux), floor tensors)
    steps = {
        "ddpm": (lambda: fused(x, out, ddpm, noise=noise), lambda: fused(x, out, ddpm, seed=1),
                 lambda x, out, noise, aux: reference.diffusion_step(x, out, noise, ddpm), 4),
        "ddim_eta": (lambda: fused(x, out, ddim, noise=noise), lambda: fused(x, out, ddim, seed=1),
                     lambda x, out, noise, aux: root(a_prev) * (x - root(1 - a) * out) / root(a)
                     + ddim.c_eps * out + ddim.sigma * noise, 4),
        "euler": (lambda: fused(x, out, d.euler_coefficients(s, s_next), "x0"), None,
                  lambda x, out, noise, aux: x + (s_next - s) * (x - out) / s, 3),
        "heun_correction": (lambda: fused(x, out, d.heun_correction_coefficients(s, s_next), "x0", aux=aux),
                            None,   # eager: x_prev + h (d + (x' - D') / s') / 2 with x_prev = noise, d = aux
                            lambda x, out, noise, aux: noise + (s_next - s) * (aux + (x - out) / s_next) / 2, 5),
        "dpmpp2m": (lambda: fused(x, out, dpm, aux=aux, keep=(1.0, 0.0)), None,
                    lambda x, out, noise, aux: eager_dpmpp2m(x, out, aux), 5),
        "langevin_sgld": (lambda: fused(x, out, d.langevin_coefficients(step), "score", noise=noise),
                          lambda: fused(x, out, d.langevin_coefficients(step), "score", seed=1),
                          lambda x, out, noise, aux: x + step / 2 * out + root(step) * noise, 4),
        "pc_ve_predictor": (lambda: fused(x, out, ve, "score", noise=noise),
                            lambda: fused(x, out, ve, "score", seed=1),
                            lambda x, out, noise, aux: x + (s ** 2 - s_next ** 2) * out
                            + root(s ** 2 - s_next ** 2) * noise, 4),
        "pc_corrector": (lambda: d.langevin_corrector_step(x, out, 1.0, s, "score", snr, noise=noise),
                         lambda: d.langevin_corrector_step(x, out, 1.0, s, "score", snr, seed=1),
                         lambda x, out, noise, aux: eager_corrector(x, out, noise), 6),
        "pf_ode": (lambda: fused(x, out, d.pf_ode_coefficients(s, s_next), "score"), None,
                   lambda x, out, noise, aux: x + (s_next - s) * (-s * out), 3),
    }
    cases = []
    for sampler, (fastgen_step, philox, eager, tensors) in steps.items():
        impls = {"fastgen": fastgen_step, "eager_pytorch": (lambda eager=eager: eager(x, out, noise, aux))}
        if device.type == "cuda":
            if philox is not None:
                impls["fastgen_philox"] = philox
            compiled = torch_compiled(eager)
            if compiled is not None:
                impls["torch_compile"] = lambda compiled=compiled: compiled(x, out, noise, aux)
        cases.append(Case(f"{sampler}_step_B{shape[0]}_{shape[1]}x{shape[2]}x{shape[3]}_fp32", impls,
                          bytes=tensors * x.numel() * 4, in_cuda_graph=("fastgen", "eager_pytorch")))
    return cases


def diffusion_rows(device: torch.device, quick: bool = False,
                   progress: Optional[Callable[[str], Any]] = print) -> list[dict]:
    """The step rows (``ms``, with ``*_in_cuda_graph`` on a GPU), then the loop rows."""
    device = torch.device(device)
    rows = run_cases(step_cases(device, quick), device)
    if device.type == "cuda":
        for row in rows:
            graphed = row["ms"].get("fastgen_in_cuda_graph"), row["ms"].get("eager_pytorch_in_cuda_graph")
            row["speedup_in_cuda_graph_vs_eager_pytorch"] = graphed[1] / graphed[0] if all(graphed) else None
    if progress:
        for row in rows:
            ratio = row["speedup_vs_best"]
            progress(f"{row['case']}: " + "  ".join(f"{k} {v * 1e3:.1f} us" for k, v in row["ms"].items() if v)
                     + (f"  (best alternative {row['best_alternative']} / fastgen = {ratio:.2f}x)" if ratio else ""))
    return rows + diffusion_loop_rows(device, quick, progress)


def diffusion_loop_rows(device: torch.device, quick: bool = False,
                        progress: Optional[Callable[[str], Any]] = print) -> list[dict]:
    """50-step DDIM end to end with a DDPM CIFAR-size UNet (~36M parameters, 32x32) at batch 1
    and 64: fastgen's loop (fused step; and the whole loop as one CUDA graph) against the same
    loop with the step in eager PyTorch and, where installed, diffusers' DDIMScheduler.step.
    Reports seconds per sample call (median of 3 after a warm-up call) and the loop overhead:
    total - 50 x one denoiser call."""
    device = torch.device(device)
    if quick:
        unet_kw, batches, steps = dict(channels=8, channel_mult=(1, 2), blocks=1, attention_at=(4,),
                                       image_size=8), [1], 5
    else:
        unet_kw, batches, steps = dict(channels=128, channel_mult=(1, 2, 2, 2), blocks=2, attention_at=(16,),
                                       image_size=32), [1, 64], 50
    torch.manual_seed(0)
    unet = UNet(in_channels=3, dropout=0.0, **unet_kw).to(device).eval()
    size = unet_kw["image_size"]
    abar = torch.cumprod(1 - d.linear_betas(), 0).tolist()
    ts = d.respaced_timesteps(1000, steps)

    def eager_reference_loop(batch):
        x = torch.randn(batch, 3, size, size, device=device)
        for i, t in enumerate(ts):
            out = unet(x, torch.full((batch,), t, device=device))
            coefficients = d.ddim_coefficients(abar[t], abar[ts[i + 1]] if i + 1 < len(ts) else 1.0)
            x = reference.diffusion_step(x, out, None, coefficients)
        return x

    rows = []
    for batch in batches:
        shape = (batch, 3, size, size)
        impls = {
            "fastgen": lambda: d.sample(unet, shape, "ddim", steps, seed=0, device=device),
            "eager_pytorch_step": lambda: eager_reference_loop(batch),
        }
        if device.type == "cuda":
            impls["fastgen_cuda_graph"] = lambda: d.sample(unet, shape, "ddim", steps, seed=0, device=device,
                                                           cuda_graph=True)
        try:
            from diffusers import DDIMScheduler

            scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)

            def diffusers_loop():
                scheduler.set_timesteps(steps)
                x = torch.randn(shape, device=device)
                for t in scheduler.timesteps:
                    out = unet(x, torch.full((batch,), int(t), device=device))
                    x = scheduler.step(out, t, x).prev_sample
                return x
            impls["diffusers_ddim"] = diffusers_loop
        except ImportError:
            pass
        name = f"ddim{steps}_unet{sum(p.numel() for p in unet.parameters()) / 1e6:.1f}M_B{batch}"
        denoiser = Case(name, {"denoiser": lambda: unet(torch.randn(shape, device=device),
                                                        torch.zeros(batch, dtype=torch.long, device=device))},
                        unit="s", repeats=3, fatal=True)
        # each loop is warmed up by one whole call (for the CUDA graph: its capture)
        loops = Case(name, impls, unit="s", items=batch, repeats=3, warmup=dict(impls), fatal=True)
        with torch.no_grad():
            one_call = measure(denoiser, device, progress).values["denoiser"]
            times = measure(loops, device, progress).values
        row = {"case": name, "seconds": times, "denoiser_call_s": one_call,
               "loop_overhead_pct": {k: 100 * (v - steps * one_call) / (steps * one_call) for k, v in times.items()}}
        rows.append(row)
        if progress:
            progress(f"{row['case']}: " + "  ".join(f"{k} {v * 1e3:.1f} ms" for k, v in times.items())
                     + f"  (denoiser {one_call * 1e3:.2f} ms/call)")
    return rows
