"""WaveNet generation benchmarks, in samples/s (batch x samples / seconds).

fastgen's fused one-launch-per-sample step (``fused``; on a GPU also replayed as a CUDA
graph, ``fused_cuda_graph``) and its persistent kernel (one launch per block of 256 samples;
fp32, and for the first configuration fp16/bf16) against the eager per-layer queue step of
Paine et al. -- what a careful PyTorch user writes (``eager_queue``; on a GPU also as a CUDA
graph, ``eager_queue_cuda_graph``) -- and the naive receptive-field recompute (``naive``).
The baselines reach ``generate`` as data: a ``ModelWithCache`` view of the model whose
``incremental`` builds the baseline's cache; the model itself is never patched.

The WaveNet issue's configuration: R=64, S=256, A=256, 30 layers (cycle 10), kernel 2, plus
kernel 3 and R=128; batches 1, 16, 256.  Targets (H100): >= 48,000 samples/s at batch 1,
>= 400,000 at 16, >= 2,000,000 at 256.  Anchors (H100, eager queue): 176 / 2,527 / 38,870
samples/s; the same step as a CUDA graph: 1,224 / 15,837 / 167,147.

16-bit numerics: for the first configuration, one extra row per dtype with the fraction of
teacher-forced draws (``fastgen.sampling.audio.forced_draws``: each step fed the fp32 history)
identical to the fp32 codes, over 4 rows x ``n_agree`` samples.
"""
import math
from typing import Any, Callable, Optional

import torch

from fastgen.bench.runner import Case, measure
from fastgen.models import WaveNet
from fastgen.sampling.audio import forced_draws, generate

CONFIGS = [dict(layers=30, cycle=10, residual_channels=64, skip_channels=256, kernel_size=2),
           dict(layers=30, cycle=10, residual_channels=64, skip_channels=256, kernel_size=3),
           dict(layers=30, cycle=10, residual_channels=128, skip_channels=256, kernel_size=2)]
QUICK_CONFIGS = [dict(layers=4, cycle=2, residual_channels=16, skip_channels=32, kernel_size=2)]
LOW_PRECISION = (torch.float16, torch.bfloat16)


def _sizes(quick: bool) -> tuple[list[dict], list[int], int, int, int]:
    """configs, batches, samples for fastgen's variants, for the slow baselines, for agreement."""
    if quick:
        return QUICK_CONFIGS, [1, 4], 64, 16, 64
    return CONFIGS, [1, 16, 256], 4096, 256, 2048


class EagerQueueDraw:
    """The eager per-layer queue step of Paine et al. (what a careful PyTorch user writes),
    behind the ``draw_at`` protocol so that ``generate(cuda_graph=True)`` can replay it as a
    CUDA graph: the baseline the WaveNet issue measures fastgen against."""

    def __init__(self, model, batch, global_cond=None):
        from fastgen.models.wavenet import _QueueCache
        self.inner = _QueueCache(model, batch, global_cond)
        self.period = math.lcm(256, *(d * (model.kernel_size - 1) for d in model.dilations))

    def state(self):
        """Every tensor a captured block reads and writes: the queues and the global terms."""
        return [*self.inner.queues, *(self.inner.global_terms or [])]

    def draw_at(self, previous, codes_out, local_t, gumbel, temperature, t):
        self.inner.t = t                       # the queue slots depend on t modulo period only
        logits = self.inner.step(previous, local_t)
        codes_out.copy_((logits.float() / temperature + gumbel).argmax(dim=1))


class ModelWithCache:
    """``model`` as ``generate`` sees it, except that ``incremental(batch, global_cond)`` builds
    ``cache(model, batch, global_cond)``: how a baseline cache is handed to ``generate``."""

    def __init__(self, model, cache: Callable):
        self._model, self._cache = model, cache

    def __getattr__(self, name):
        return getattr(self._model, name)

    def incremental(self, batch, global_cond=None):
        return self._cache(self._model, batch, global_cond)


def _name(config: dict) -> str:
    return "wavenet_R{residual_channels}_S{skip_channels}_L{layers}_k{kernel_size}".format(**config)


def generation_cases(model, name: str, batch: int, n_fast: int, n_slow: int, device: torch.device,
                     low_precision: bool = False) -> list[Case]:
    """Two cases for one model and batch (named ``..._B<batch>_T<samples>``): fastgen's variants
    (and the eager queue as a CUDA graph) over ``n_fast`` samples, the eager baselines over
    ``n_slow``.  Each variant is warmed up on 8 samples (without a CUDA graph), then timed once."""
    from fastgen.models.wavenet import _QueueCache

    device = torch.device(device)
    eager_queue = ModelWithCache(model, _QueueCache)
    eager_queue_draw = ModelWithCache(model, EagerQueueDraw)
    # variant -> (the model as generate sees it, generate's options)
    fast = {"fused": (model, dict(persistent=False)), "persistent": (model, dict(persistent=True))}
    if low_precision:
        fast.update({f"persistent_{str(d)[6:]}": (model, dict(persistent=True, dtype=d)) for d in LOW_PRECISION})
    if device.type == "cuda":
        fast = {"fused_cuda_graph": (model, dict(persistent=False, cuda_graph=True)),
                "eager_queue_cuda_graph": (eager_queue_draw, dict(cuda_graph=True)), **fast}
    slow = {"eager_queue": (eager_queue, {})}
    if batch <= 16:      # above: minutes per run; the naive recompute is the reference, not a contender
        slow["naive"] = (model, dict(method="naive"))

    def case(variants, n):
        def run(m, seed, samples, options):
            return lambda: generate(m, samples, batch, generator=torch.Generator().manual_seed(seed), **options)
        impls = {k: run(m, 1, n, options) for k, (m, options) in variants.items()}
        warmup = {k: run(m, 0, 8, {o: v for o, v in options.items() if o != "cuda_graph"})
                  for k, (m, options) in variants.items()}
        return Case(f"{name}_B{batch}_T{n}", impls, unit="samples/s", items=batch * n, repeats=1, warmup=warmup,
                    fatal=True)
    return [case(fast, n_fast), case(slow, n_slow)]


def wavenet_cases(device: torch.device, quick: bool = False) -> list[Case]:
    """Every generation case of ``wavenet_rows`` (for ``benchmarks/bench_wavenet.py``)."""
    configs, batches, n_fast, n_slow, _ = _sizes(quick)
    cases = []
    for c, config in enumerate(configs):
        torch.manual_seed(0)
        model = WaveNet(quantization=256, **config).to(device).eval()
        for batch in batches:
            cases += generation_cases(model, _name(config), batch, n_fast, n_slow, device, low_precision=c == 0)
    return cases


def wavenet_rows(device: torch.device, quick: bool = False,
                 progress: Optional[Callable[[str], Any]] = print) -> list[dict]:
    """One row per configuration and batch (samples/s of every variant, fastgen's best fp32
    over the best eager queue), then the 16-bit agreement rows."""
    device = torch.device(device)
    configs, batches, n_fast, n_slow, n_agree = _sizes(quick)
    rows = []
    for c, config in enumerate(configs):
        torch.manual_seed(0)
        model = WaveNet(quantization=256, **config).to(device).eval()
        name = _name(config)
        for batch in batches:
            rates = {}
            for case in generation_cases(model, name, batch, n_fast, n_slow, device, low_precision=c == 0):
                rates.update(measure(case, device, progress).values)
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
            rows += _agreement_rows(model, name, n_agree, progress)
    return rows


def _agreement_rows(model, name, n_agree, progress):
    reference = generate(model, n_agree, 4, generator=torch.Generator().manual_seed(2))
    rows = []
    for dtype in LOW_PRECISION:
        drawn = forced_draws(model, reference, generator=torch.Generator().manual_seed(2), dtype=dtype)
        row = {"case": f"{name}_{str(dtype)[6:]}_identical_to_fp32", "draws": reference.numel(),
               "identical_to_fp32": (drawn == reference).float().mean().item()}
        rows.append(row)
        if progress:
            progress(f"{row['case']:<36} {row['identical_to_fp32']:.2%} of {row['draws']} teacher-forced "
                     "draws identical to fp32")
    return rows
