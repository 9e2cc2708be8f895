"""One benchmark runner: cases that time fastgen against what a user would use instead.

Each case builds its inputs once and offers several implementations of the same work:
``fastgen`` and the alternatives (cuDNN through ``F.conv2d`` in both memory formats,
``torch.compile`` of the reference, ...).  ``run_cases`` times them all in one process
on one device and reports each alternative's time over fastgen's (the speedup).

On a GPU, times are ``triton.testing.do_bench`` medians (CUDA events, L2 flushed between
calls).  On a CPU the same cases run at small sizes with a wall clock: useful to check the
runner, never a speed claim.

Floors (H100 measured ceilings: 2.99 TB/s copy, ~796 TFLOP/s bf16 dense):
- masked conv2d 7x7 'A', B=64, C=128, 32x32: 24 of 49 taps -> 2*65536*128*128*24 = 51.5 GFLOP
  -> 65 us at peak; bytes 2 x 16.8 MB -> 11 us.  Compute bound.
- masked conv2d 3x3 'B': 5 of 9 taps -> 10.7 GFLOP -> 13.5 us; bytes -> 11 us.
- causal conv1d k=2, B=16, C=256, T=16384: 68.7 GFLOP -> 86 us; bytes 2 x 134 MB -> 90 us.
"""
import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F

from fastgen import ops
from fastgen.ops.conv import reference


@dataclasses.dataclass
class Case:
    name: str
    impls: dict            # implementation name -> zero-argument callable
    flops: float = 0.0     # useful floating-point work of one call (for TFLOP/s)
    floor_ms: float = 0.0  # the larger of flops/peak and bytes/bandwidth on an H100
    target: str = ""       # the target, in words


def _compiled(fn):
    """torch.compile(fn), or None where compile cannot run (no C compiler etc.)."""
    try:
        return torch.compile(fn, dynamic=False)
    except Exception:  # pragma: no cover - depends on the machine's toolchain
        return None


def _fwd_bwd(f, inputs, gy):
    """A callable running f's forward and the gradients w.r.t. ``inputs`` for upstream ``gy``."""
    def run():
        y = f()
        return torch.autograd.grad(y, inputs, gy)
    return run


def _floor_ms(flops, bytes_moved, dtype):
    """The H100 floor: the larger of flops at the measured bf16 peak and bytes at copy bandwidth.
    Only stated for 16-bit inputs (no measured fp32/TF32 peak yet): 0 means unknown."""
    if dtype not in (torch.bfloat16, torch.float16):
        return 0.0
    return max(flops / 796e12, bytes_moved / 2.99e12) * 1e3


def masked_conv_cases(device, dtype, quick=False, compile_baseline=True):
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
        compiled = _compiled(lambda x, w, b: reference.masked_conv2d(x, w, b, mask_type))
        if compiled is not None:
            fwd["torch_compile"] = lambda: compiled(x, w, b)
            fb["torch_compile"] = _fwd_bwd(lambda: compiled(x, w, b), (x, w, b), gy)
    name = f"masked_conv2d_k{k}{mask_type}_B{B}_C{C}_{H}x{H}_{str(dtype)[6:]}"
    floor = _floor_ms(flops, 2 * x.numel() * x.element_size(), dtype)
    return [Case(name + "_fwd", fwd, flops, floor, target),
            Case(name + "_fwdbwd", fb, 3 * flops, 3 * floor, target)]


def causal_conv_cases(device, dtype, quick=False, dilations=None, compile_baseline=False):
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
    floor = _floor_ms(flops, 2 * x.numel() * x.element_size(), dtype)
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
            compiled = _compiled(lambda x, w, b, d=d: reference.causal_conv1d(x, w, b, d))
            if compiled is not None:
                fwd["torch_compile"] = lambda c=compiled: c(x, w, b)
        name = f"causal_conv1d_k{k}_d{d}_B{B}_C{C}_T{T}_{str(dtype)[6:]}"
        cases.append(Case(name + "_fwd", fwd, flops, floor, "fwd >= 2x cuDNN"))
        cases.append(Case(name + "_fwdbwd", fb, 3 * flops, 3 * floor, "fwd+bwd >= 1.5x cuDNN"))
    return cases


def conv_cases(device, quick=False, dtypes=None):
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


def time_ms(fn, device):
    """Median milliseconds of one call of ``fn``."""
    if torch.device(device).type == "cuda":
        from triton.testing import do_bench
        return do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def run_cases(cases, device, progress=None):
    """Time every implementation of every case; returns a list of result rows (dicts)."""
    rows = []
    for case in cases:
        times = {}
        for impl, fn in case.impls.items():
            try:
                times[impl] = time_ms(fn, device)
            except Exception as err:  # a baseline that cannot run here is reported, not fatal
                times[impl] = None
                print(f"  {case.name} / {impl}: failed: {type(err).__name__}: {str(err)[:200]}")
        ours = times.get("fastgen")
        ours_cl = times.get("fastgen_channels_last")
        others = {k: v for k, v in times.items() if not k.startswith("fastgen") and v is not None}
        best_name = min(others, key=others.get) if others else None
        row = {"case": case.name, "ms": times, "target": case.target,
               "best_alternative": best_name,
               # fastgen given the same channels-first tensor a user has, vs the best alternative
               # given whichever layout suits it best
               "speedup_vs_best": (others[best_name] / ours) if ours and best_name else None,
               # fastgen given the channels-last tensor an earlier fastgen layer returns
               "speedup_channels_last_vs_best": (others[best_name] / ours_cl) if ours_cl and best_name else None,
               "speedup_vs_cudnn": (times["cudnn"] / ours) if ours and times.get("cudnn") else None,
               "fastgen_TFLOPs": case.flops / ours / 1e9 if ours and case.flops else None,
               "floor_ms_h100": case.floor_ms,
               "pct_of_floor": 100 * case.floor_ms / ours if ours and case.floor_ms else None}
        rows.append(row)
        if progress:
            progress(row)
    return rows


def environment(device):
    """Versions, device and commit for a results file."""
    env = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device)}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    env["commit"] = os.environ.get("FASTGEN_COMMIT")  # set where the tree travels without .git
    if env["commit"]:
        return env
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        env["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                       text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["commit"] = None
    return env


def format_row(row):
    ms = "  ".join(f"{k}={v:.4f}" if v is not None else f"{k}=n/a" for k, v in row["ms"].items())
    ratio, ratio_cl = row["speedup_vs_best"], row["speedup_channels_last_vs_best"]
    best = f"{ratio:.2f}x ({ratio_cl or 0:.2f}x cl) vs {row['best_alternative']}" if ratio else "n/a"
    return f"{row['case']:<58} {best:<38} {ms}"


def save(rows, path, command, device):
    with open(path, "w") as f:
        json.dump({"env": environment(device), "command": command, "results": rows}, f, indent=1)


def sampling_rows(device, quick=False, batches=None, progress=print, pixelcnnpp=True):
    """Time the naive and the incremental ('fast') samplers, one full image set each.

    Gated PixelCNN in the PixelCNN issue's anchor configuration (15 layers, 128 channels,
    28x28, 256 levels; plain PyTorch full recompute: 3.46 s per image at batch 1 on an H100)
    at batch 1, 64 and 256, and PixelCNN++ in the paper's CIFAR-10 configuration (random
    weights) at batch 16.  Each sampler runs once after a warm-up; wall clock with a device
    sync.  ``quick`` shrinks everything for a CPU smoke run.  PixelCNN++'s naive sampler (one
    full forward per pixel and channel: 3072 of them per CIFAR image) is timed on its first two
    rows and scaled to the whole image: every naive step does the same work.
    """
    from fastgen.models import GatedPixelCNN, PixelCNNpp

    device = torch.device(device)
    torch.manual_seed(0)
    if quick:
        configs = [("gated", GatedPixelCNN((1, 5, 5), levels=16, channels=16, layers=3), batches or [1, 4])]
        if pixelcnnpp:
            configs.append(("pixelcnnpp", PixelCNNpp((3, 4, 4), levels=16, channels=8, nr_resnet=1, nr_mix=2), [2]))
    else:
        configs = [("gated", GatedPixelCNN((1, 28, 28), levels=256, channels=128, layers=15), batches or [1, 64, 256])]
        if pixelcnnpp:
            configs.append(("pixelcnnpp", PixelCNNpp((3, 32, 32), levels=256, channels=160, nr_resnet=5, nr_mix=10),
                            [16]))
    rows = []
    for name, model, sizes in configs:
        model = model.to(device).eval()
        for batch in sizes:
            rows.append(_time_samplers(name, model, batch, device, progress,
                                       naive_rows=2 if name == "pixelcnnpp" else None))
    return rows


class _StopSampling(Exception):
    """Raised from the sampler's progress callback to stop it after some rows."""


_CAPTURE_FAILED = False     # set once a CUDA-graph capture failed in this process


def _naive_seconds_from_rows(model, batch, rows, device):
    """The naive sampler's wall-clock seconds for a whole image, from its first ``rows`` >= 2
    rows (a fresh image): the one-off setup (noise, buffers) and row 0 as measured, plus the
    mean time of rows 1 .. rows-1 for each of the remaining H - 1 rows -- every naive step is
    the same full forward, so every row costs the same."""
    from fastgen.sampling import sample

    row_ends = []

    def stop(r):
        _sync(device)
        row_ends.append(time.perf_counter())
        if r + 1 == rows:
            raise _StopSampling
    start = time.perf_counter()
    try:
        sample(model, batch, method="naive", generator=torch.Generator().manual_seed(1), progress=stop)
    except _StopSampling:
        pass
    per_row = (row_ends[-1] - row_ends[0]) / (rows - 1)
    return (row_ends[0] - start) + per_row * (model.image_shape[1] - 1)


def _time_samplers(name, model, batch, device, progress, naive_rows=None):
    """Seconds of each sampler for one image set; with ``naive_rows``, the naive sampler's time
    is measured on that many rows and scaled by H / naive_rows (labelled so in the row)."""
    from fastgen.sampling import sample

    C, H, W = model.image_shape
    times = {}
    for method in ("fast", "naive"):
        if method == "naive" and naive_rows:
            _naive_seconds_from_rows(model, batch, 2, device)                   # warm-up
            times["naive"] = _naive_seconds_from_rows(model, batch, naive_rows, device)
            continue
        warm_mask = torch.ones(batch, C, H, W, dtype=torch.bool)
        warm_mask[:, :, 0, :2] = False                 # warm-up: draw two pixels, copy the rest
        sample(model, batch, method=method, generator=torch.Generator().manual_seed(0),
               known=torch.zeros(batch, C, H, W, dtype=torch.long), known_mask=warm_mask)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        sample(model, batch, method=method, generator=torch.Generator().manual_seed(1))
        if device.type == "cuda":
            torch.cuda.synchronize()
        times[method] = time.perf_counter() - start
    extra = {}
    # The fast loop replayed as one CUDA graph.  Without a fused step the graph holds every op of
    # every pixel (PixelCNN++: hundreds of thousands of nodes): capture time is reported apart,
    # and a capture that fails (e.g. out of memory) is reported instead of a time.
    global _CAPTURE_FAILED
    if device.type == "cuda" and times["fast"] < 60 and not _CAPTURE_FAILED:
        try:
            start = time.perf_counter()
            sample(model, batch, method="fast", generator=torch.Generator().manual_seed(0), cuda_graph=True)
            torch.cuda.synchronize()
            extra["cuda_graph_capture_seconds"] = time.perf_counter() - start
            start = time.perf_counter()
            sample(model, batch, method="fast", generator=torch.Generator().manual_seed(1), cuda_graph=True)
            torch.cuda.synchronize()
            times["fast_cuda_graph"] = time.perf_counter() - start
        except Exception as error:    # noqa: BLE001 -- reported in the row, the run goes on
            extra["cuda_graph_error"] = f"{type(error).__name__}: {error}"[:300]
            _CAPTURE_FAILED = True    # a failed capture can leave the stream unusable for more
    row = {"case": f"{name}_{C}x{H}x{W}_levels{model.levels}_B{batch}", "seconds": times,
           "speedup_fast_vs_naive": times["naive"] / min(v for k, v in times.items() if k.startswith("fast")),
           "images_per_s_fast": batch / min(v for k, v in times.items() if k.startswith("fast")),
           "images_per_s_naive": batch / times["naive"], **extra}
    if naive_rows:
        row["naive_seconds_are"] = (f"extrapolated: the naive sampler timed on rows 0..{naive_rows - 1} "
                                    f"({naive_rows * W} of {H * W} pixels): setup + row 0 as measured, "
                                    f"then the mean of rows 1..{naive_rows - 1} for each later row")
    if progress:
        progress(f"{row['case']:<40} " + "  ".join(f"{k} {v:.3f} s" for k, v in times.items())
                 + f"  ({row['speedup_fast_vs_naive']:.1f}x; {row['images_per_s_fast']:.2f} images/s fast)"
                 + (f"  [naive {row['naive_seconds_are']}]" if naive_rows else ""))
    return row


class EagerQueueDraw:
    """The eager per-layer queue step of Paine et al. (what a careful PyTorch user writes),
    behind the ``draw_at`` protocol so that ``generate(cuda_graph=True)`` can replay it as a
    CUDA graph: the baseline the WaveNet issue measures fastgen against."""

    def __init__(self, model, batch, global_cond=None):
        from fastgen.models.wavenet import _QueueCache
        self.inner = _QueueCache(model, batch, global_cond)
        self.period = math.lcm(256, *(d * (model.kernel_size - 1) for d in model.dilations))

    def state(self):
        return self.inner.queues

    def draw_at(self, previous, codes_out, local_t, gumbel, temperature, t):
        self.inner.t = t                       # the queue slots depend on t modulo period only
        logits = self.inner.step(previous, local_t)
        codes_out.copy_((logits.float() / temperature + gumbel).argmax(dim=1))


def wavenet_rows(device, quick=False, progress=print):
    """WaveNet generation throughput: the fused one-launch-per-sample step (eager, and replayed
    as a CUDA graph) and the persistent kernel (one launch per block of 256 samples; fp32, and
    for the first configuration fp16/bf16) against the eager per-layer queue step (Paine et
    al.; what a careful PyTorch user writes; eager and as a CUDA graph) and the naive
    receptive-field recompute, in samples/s (batch x samples / seconds).

    The WaveNet issue's configuration: R=64, S=256, A=256, 30 layers (cycle 10), kernel 2,
    plus kernel 3 and R=128; batches 1, 16, 256.  Anchors (H100, eager queue): 176 / 2,527 /
    38,870 samples/s; the same step as a CUDA graph: 1,224 / 15,837 / 167,147.

    16-bit numerics: for the first configuration, one extra row per dtype with the fraction of
    teacher-forced draws (``fastgen.sampling.audio.forced_draws``: each step fed the fp32
    history) identical to the fp32 codes, over 4 rows x ``n_agree`` samples.
    """
    from fastgen.models import WaveNet
    from fastgen.models.wavenet import _QueueCache
    from fastgen.sampling.audio import forced_draws, generate

    device = torch.device(device)
    configs = [dict(layers=30, cycle=10, residual_channels=64, skip_channels=256, kernel_size=2),
               dict(layers=30, cycle=10, residual_channels=64, skip_channels=256, kernel_size=3),
               dict(layers=30, cycle=10, residual_channels=128, skip_channels=256, kernel_size=2)]
    batches, n_fast, n_slow, n_agree = [1, 16, 256], 4096, 256, 2048
    if quick:
        configs = [dict(layers=4, cycle=2, residual_channels=16, skip_channels=32, kernel_size=2)]
        batches, n_fast, n_slow, n_agree = [1, 4], 64, 16, 64
    low = [torch.float16, torch.bfloat16]
    rows = []
    for c, config in enumerate(configs):
        torch.manual_seed(0)
        model = WaveNet(quantization=256, **config).to(device).eval()
        name = "wavenet_R{residual_channels}_S{skip_channels}_L{layers}_k{kernel_size}".format(**config)
        for batch in batches:
            rates = {}
            # (name, samples, generate's options)
            variants = [("fused", n_fast, dict(persistent=False)), ("persistent", n_fast, dict(persistent=True))]
            if c == 0:
                variants += [(f"persistent_{str(d)[6:]}", n_fast, dict(persistent=True, dtype=d)) for d in low]
            variants += [("eager_queue", n_slow, {}), ("naive", n_slow, dict(method="naive"))]
            if device.type == "cuda":
                variants[:0] = [("fused_cuda_graph", n_fast, dict(persistent=False, cuda_graph=True)),
                                ("eager_queue_cuda_graph", n_fast, dict(cuda_graph=True))]
            for variant, n, options in variants:
                if variant == "naive" and batch > 16:
                    continue      # minutes per run; the naive recompute is the reference, not a contender
                original = model.incremental
                if variant == "eager_queue":
                    model.incremental = lambda b, g=None: _QueueCache(model, b, g)
                elif variant == "eager_queue_cuda_graph":
                    model.incremental = lambda b, g=None: EagerQueueDraw(model, b, g)
                try:
                    warm = {k: v for k, v in options.items() if k != "cuda_graph"}
                    generate(model, 8, batch, generator=torch.Generator().manual_seed(0), **warm)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    generate(model, n, batch, generator=torch.Generator().manual_seed(1), **options)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    rates[variant] = batch * n / (time.perf_counter() - start)
                finally:
                    model.incremental = original
            fp32 = {k: v for k, v in rates.items() if k.startswith(("fused", "persistent")) and "float16" not in k}
            best = max(fp32.values())
            baseline = max(v for k, v in rates.items() if k.startswith("eager_queue"))
            row = {"case": f"{name}_B{batch}", "samples_per_s": rates, "speedup_vs_eager_queue": best / baseline,
                   "best_fp32": max(fp32, key=fp32.get)}
            rows.append(row)
            if progress:
                progress(f"{row['case']:<36} " + "  ".join(f"{k} {v:,.0f}/s" for k, v in rates.items())
                         + f"  (best fp32 fastgen {row['speedup_vs_eager_queue']:.1f}x vs the best eager queue)")
        if c == 0:
            reference = generate(model, n_agree, 4, generator=torch.Generator().manual_seed(2))
            for dtype in low:
                drawn = forced_draws(model, reference, generator=torch.Generator().manual_seed(2), dtype=dtype)
                row = {"case": f"{name}_{str(dtype)[6:]}_identical_to_fp32", "draws": reference.numel(),
                       "identical_to_fp32": (drawn == reference).float().mean().item()}
                rows.append(row)
                if progress:
                    progress(f"{row['case']:<36} {row['identical_to_fp32']:.2%} of {row['draws']} teacher-forced "
                             "draws identical to fp32")
    return rows


def diffusion_rows(device, quick=False, progress=print):
    """One step of every diffusion sampler at batch 64, 3x64x64 fp32: fastgen's fused step
    (explicit noise; also in-kernel Philox where the step is stochastic) against the same update
    written in eager PyTorch as a user would (DDPM: the reference op) and, on a GPU, that code
    under torch.compile.  Then the end-to-end DDIM loop (``diffusion_loop_rows``).
    Floors (memory bound): every tensor read or written once, 3.1 MB each -> 1.05 us per tensor
    at 2.99 TB/s: DDPM/DDIM/Langevin/SGLD/VE predictor (x, out, z, y) ~4.2 us; Euler/pf-ODE 3
    tensors; Heun's correction and DPM-Solver++(2M) (x, out, aux, y, kept) ~5.3 us; the
    corrector reads out and z twice (norms, then the update) ~6.3 us.
    Anchors (H100, DDPM): eager 325-378 us, torch.compile 624 us, diffusers DDPMScheduler.step 895 us.
    On a GPU each step is also timed replayed inside a CUDA graph (``*_in_cuda_graph``: one step
    captured alone, L2 flushed before each replay), how a ``cuda_graph=True`` loop runs it -- the
    issue's <= 10 us.
    On a CPU fastgen runs its reference path: a check of the runner, never a speed claim.
    """
    from fastgen.ops.diffusion_step import reference
    from fastgen.ops.diffusion_step import diffusion_step
    from fastgen.sampling import diffusion as d

    device = torch.device(device)
    shape = (64, 3, 64, 64) if not quick else (4, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    x, out, noise, aux = (torch.randn(shape, generator=g).to(device) for _ in range(4))
    tensor_ms = x.numel() * 4 / 2.99e12 * 1e3
    root = math.sqrt
    a, a_prev, eta, s, s_next, step, snr = 0.4, 0.7, 0.5, 2.0, 1.5, 0.01, 0.16
    ddpm = d.ddpm_coefficients(a, a_prev)
    ddim = d.ddim_coefficients(a, a_prev, eta)
    dpm, _ = d.dpmpp2m_coefficients(a, a_prev, 0.3)
    ve = d.ve_predictor_coefficients(s, s_next)
    norm = lambda v: v.flatten(1).norm(dim=1).view(-1, *[1] * (v.dim() - 1))

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
        "ddpm": (lambda: diffusion_step(x, out, ddpm, noise=noise), lambda: diffusion_step(x, out, ddpm, seed=1),
                 lambda x, out, noise, aux: reference.diffusion_step(x, out, noise, ddpm), 4),
        "ddim_eta": (lambda: diffusion_step(x, out, ddim, noise=noise), lambda: diffusion_step(x, out, ddim, seed=1),
                     lambda x, out, noise, aux: root(a_prev) * (x - root(1 - a) * out) / root(a)
                     + ddim[3] * out + ddim[5] * noise, 4),
        "euler": (lambda: diffusion_step(x, out, d.euler_coefficients(s, s_next), "x0"), None,
                  lambda x, out, noise, aux: x + (s_next - s) * (x - out) / s, 3),
        "heun_correction": (lambda: diffusion_step(x, out, d.heun_correction_coefficients(s, s_next), "x0", aux=aux),
                            None,   # eager: x_prev + h (d + (x' - D') / s') / 2 with x_prev = noise, d = aux
                            lambda x, out, noise, aux: noise + (s_next - s) * (aux + (x - out) / s_next) / 2, 5),
        "dpmpp2m": (lambda: diffusion_step(x, out, dpm, aux=aux, keep=(1.0, 0.0)), None,
                    lambda x, out, noise, aux: eager_dpmpp2m(x, out, aux), 5),
        "langevin_sgld": (lambda: diffusion_step(x, out, d.langevin_coefficients(step), "score", noise=noise),
                          lambda: diffusion_step(x, out, d.langevin_coefficients(step), "score", seed=1),
                          lambda x, out, noise, aux: x + step / 2 * out + root(step) * noise, 4),
        "pc_ve_predictor": (lambda: diffusion_step(x, out, ve, "score", noise=noise),
                            lambda: diffusion_step(x, out, ve, "score", seed=1),
                            lambda x, out, noise, aux: x + (s ** 2 - s_next ** 2) * out
                            + root(s ** 2 - s_next ** 2) * noise, 4),
        "pc_corrector": (lambda: d.langevin_corrector_step(x, out, 1.0, s, "score", snr, noise=noise),
                         lambda: d.langevin_corrector_step(x, out, 1.0, s, "score", snr, seed=1),
                         lambda x, out, noise, aux: eager_corrector(x, out, noise), 6),
        "pf_ode": (lambda: diffusion_step(x, out, d.pf_ode_coefficients(s, s_next), "score"), None,
                   lambda x, out, noise, aux: x + (s_next - s) * (-s * out), 3),
    }
    cases = []
    for sampler, (fused, philox, eager, tensors) in steps.items():
        impls = {"fastgen": fused, "eager_pytorch": (lambda eager=eager: eager(x, out, noise, aux))}
        if device.type == "cuda":
            if philox is not None:
                impls["fastgen_philox"] = philox
            compiled = _compiled(eager)
            if compiled is not None:
                impls["torch_compile"] = lambda compiled=compiled: compiled(x, out, noise, aux)
        cases.append(Case(f"{sampler}_step_B{shape[0]}_{shape[1]}x{shape[2]}x{shape[3]}_fp32", impls,
                          floor_ms=tensors * tensor_ms))
    rows = run_cases(cases, device)
    global _CAPTURE_FAILED
    if device.type == "cuda":   # the same steps inside a CUDA graph, as a cuda_graph=True loop runs them
        for case, row in zip(cases, rows):
            for impl in ("fastgen", "eager_pytorch"):
                if _CAPTURE_FAILED:
                    break
                try:
                    row["ms"][impl + "_in_cuda_graph"] = _per_call_in_cuda_graph_ms(case.impls[impl], device)
                except Exception as error:   # noqa: BLE001 -- reported, the run goes on without graphs
                    _CAPTURE_FAILED = True
                    if progress:
                        progress(f"  {case.name} / {impl} in a CUDA graph: failed: {type(error).__name__}: "
                                 f"{error}"[:300])
            graphed = row["ms"].get("fastgen_in_cuda_graph"), row["ms"].get("eager_pytorch_in_cuda_graph")
            row["speedup_in_cuda_graph_vs_eager_pytorch"] = graphed[1] / graphed[0] if all(graphed) else None
    if progress:
        for row in rows:
            ratio = row["speedup_vs_best"]
            progress(f"{row['case']}: " + "  ".join(f"{k} {v * 1e3:.1f} us" for k, v in row["ms"].items() if v)
                     + (f"  (best alternative {row['best_alternative']} / fastgen = {ratio:.2f}x)" if ratio else ""))
    return rows + diffusion_loop_rows(device, quick, progress)


def _per_call_in_cuda_graph_ms(fn, device):
    """Milliseconds of one call of ``fn`` captured alone in a CUDA graph and replayed: no host
    launch overhead, and ``do_bench`` flushes L2 before every replay, so the step reads its
    inputs from HBM as in a real loop (an upper bound: it includes one graph launch)."""
    fn()                                    # compile, tune and check launches outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return time_ms(graph.replay, device)


def diffusion_loop_rows(device, quick=False, progress=print):
    """50-step DDIM end to end with a DDPM CIFAR-size UNet (~36M parameters, 32x32) at batch 1
    and 64: fastgen's loop (fused step; and the whole loop as one CUDA graph) against the same
    loop with the step in eager PyTorch and, where installed, diffusers' DDIMScheduler.step.
    Reports seconds per sample call and the loop overhead: total - 50 x one denoiser call."""
    from fastgen.models import UNet
    from fastgen.ops.diffusion_step import reference
    from fastgen.sampling import diffusion

    device = torch.device(device)
    if quick:
        unet_kw, batches, steps = dict(channels=8, channel_mult=(1, 2), blocks=1, attention_at=(4,), image_size=8), [1], 5
    else:
        unet_kw, batches, steps = dict(channels=128, channel_mult=(1, 2, 2, 2), blocks=2, attention_at=(16,),
                                       image_size=32), [1, 64], 50
    torch.manual_seed(0)
    unet = UNet(in_channels=3, dropout=0.0, **unet_kw).to(device).eval()
    size = unet_kw["image_size"]
    abar = torch.cumprod(1 - diffusion.linear_betas(), 0).tolist()
    ts = diffusion.respaced_timesteps(1000, steps)

    def eager_reference_loop(batch):
        x = torch.randn(batch, 3, size, size, device=device)
        for i, t in enumerate(ts):
            out = unet(x, torch.full((batch,), t, device=device))
            coefficients = diffusion.ddim_coefficients(abar[t], abar[ts[i + 1]] if i + 1 < len(ts) else 1.0)
            x = reference.diffusion_step(x, out, None, coefficients)
        return x

    rows = []
    for batch in batches:
        shape = (batch, 3, size, size)
        impls = {
            "fastgen": lambda: diffusion.sample(unet, shape, "ddim", steps, seed=0, device=device),
            "eager_pytorch_step": lambda: eager_reference_loop(batch),
        }
        if device.type == "cuda":
            impls["fastgen_cuda_graph"] = lambda: diffusion.sample(unet, shape, "ddim", steps, seed=0, device=device,
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
        times = {}
        with torch.no_grad():
            one_call = _wall(lambda: unet(torch.randn(shape, device=device), torch.zeros(batch, dtype=torch.long,
                                                                                         device=device)), device)
            for name, fn in impls.items():
                fn()                                    # warm-up (and CUDA-graph capture)
                times[name] = _wall(fn, device)
        row = {"case": f"ddim{steps}_unet{sum(p.numel() for p in unet.parameters()) / 1e6:.1f}M_B{batch}",
               "seconds": times, "denoiser_call_s": one_call,
               "loop_overhead_pct": {k: 100 * (v - steps * one_call) / (steps * one_call) for k, v in times.items()}}
        rows.append(row)
        if progress:
            progress(f"{row['case']}: " + "  ".join(f"{k} {v * 1e3:.1f} ms" for k, v in times.items())
                     + f"  (denoiser {one_call * 1e3:.2f} ms/call)")
    return rows


def _wall(fn, device, repeats=3):
    """Median wall seconds of fn() with a device sync."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def half_precision_sampling_rows(device, quick=False, progress=print):
    """Gated PixelCNN (the anchor configuration, batch 64) moved to bf16 and fp16: time of the
    fast sampler, and the fraction of sampled values identical between the fast and the naive
    sampler for the same Gumbel noise (in fp32 they are all identical; in 16-bit the two
    orders of summation round differently and an argmax may flip -- then every later pixel
    differs too, so this is a strict measure)."""
    import copy

    from fastgen.models import GatedPixelCNN
    from fastgen.sampling import sample

    device = torch.device(device)
    torch.manual_seed(0)
    if quick:
        model, batch = GatedPixelCNN((1, 5, 5), levels=16, channels=16, layers=3), 2
    else:
        model, batch = GatedPixelCNN((1, 28, 28), levels=256, channels=128, layers=15), 64
    rows = []
    for dtype in (torch.bfloat16, torch.float16):
        if device.type == "cpu" and dtype == torch.float16:
            continue                     # CPU half convs are not what anyone would run
        half = copy.deepcopy(model).to(device, dtype).eval()
        draws, seconds = {}, {}
        for method in ("fast", "naive"):
            sample(half, 1, method=method, generator=torch.Generator().manual_seed(0))   # warm-up
            _sync(device)
            start = time.perf_counter()
            draws[method] = sample(half, batch, method=method, generator=torch.Generator().manual_seed(1))
            _sync(device)
            seconds[method] = time.perf_counter() - start
        C, H, W = model.image_shape
        row = {"case": f"gated_{C}x{H}x{W}_levels{model.levels}_B{batch}_{str(dtype)[6:]}", "seconds": seconds,
               "fraction_identical_fast_vs_naive": (draws["fast"] == draws["naive"]).float().mean().item(),
               "images_per_s_fast": batch / seconds["fast"]}
        if progress:
            progress(f"{row['case']:<40} fast {seconds['fast']:.3f} s  naive {seconds['naive']:.3f} s  "
                     f"identical {row['fraction_identical_fast_vs_naive']:.4f}")
        rows.append(row)
    return rows


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def pixelcnnpp_resnet_rows(device, quick=False, progress=print):
    """One PixelCNN++ GatedResnet of the ``ul`` stream at one pixel, as the sampling cache runs
    it, in the paper's CIFAR configuration (C = 160, one aux map of 160 channels, 2x2 window,
    batch 16): fastgen's two fused launches against the same step in PyTorch ops (the
    reference), each eagerly and inside a CUDA graph.  Floor: the packed fp32 weights (w1, w2,
    w_aux: 2.6 MB) read once, ~0.9 us at 2.99 TB/s (less when they stay in L2)."""
    from fastgen.models.pixelcnnpp import DownRightShiftedConv, GatedResnet, pack_resnet_weights
    from fastgen.ops.pixelcnnpp_resnet import pixelcnnpp_resnet_at

    device = torch.device(device)
    B, C, H, W = (16, 160, 32, 32) if not quick else (2, 16, 4, 4)
    torch.manual_seed(0)
    res = GatedResnet(C, DownRightShiftedConv, aux_channels=C, dropout=0.0).to(device).eval()
    weights = pack_resnet_weights(res)
    x, aux = (torch.randn(B, C, H + 1, W + 2, device=device) for _ in range(2))
    mid, out = torch.zeros_like(x), torch.zeros_like(x)
    i, j = H // 2, W // 2

    def step(backend):
        return lambda: pixelcnnpp_resnet_at(x, [aux], mid, out, *weights, None, i, j, j + 1, backend=backend)

    impls = {"fastgen": step(None if device.type == "cuda" else "reference"), "pytorch_ops": step("reference")}
    rows = run_cases([Case(f"pixelcnnpp_resnet_at_B{B}_C{C}_one_pixel", impls,
                           floor_ms=sum(w.numel() * 4 for w in weights) / 2.99e12 * 1e3)], device)
    if device.type == "cuda":
        for impl, fn in impls.items():
            try:
                rows[0]["ms"][impl + "_in_cuda_graph"] = _per_call_in_cuda_graph_ms(fn, device)
            except Exception as error:   # noqa: BLE001 -- reported, the run goes on
                rows[0]["ms"][impl + "_in_cuda_graph"] = None
                if progress:
                    progress(f"  {impl} in a CUDA graph failed: {type(error).__name__}: {error}"[:300])
    if progress:
        row = rows[0]
        progress(f"{row['case']}: " + "  ".join(f"{k} {v * 1e3:.1f} us" for k, v in row["ms"].items() if v))
    return rows
