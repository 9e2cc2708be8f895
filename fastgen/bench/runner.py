"""The one benchmark runner: named cases, one timing function, result rows as JSON.

A ``Case`` holds, for one piece of work, the callables to time: fastgen's (``fastgen``,
``fastgen_channels_last``, or a sampler's variants such as ``fast``) and each alternative a
user would reach for instead (cuDNN, eager PyTorch, ``torch.compile`` of the reference, a
peer library).  Baselines are passed in as data -- a callable in ``Case.impls`` -- never
patched onto a model.  ``measure`` times every callable of a case in one process on one
device and returns the values in the case's unit: ``'ms'`` or ``'s'`` per call, or a rate
(``'samples/s'``, ``'images/s'``: ``Case.items`` per call over the seconds).

Timing (``time_seconds``, the one timing function):

- kernel-sized calls (``Case.repeats`` None) on a GPU: ``triton.testing.do_bench`` median
  (CUDA events; it flushes L2 before every call, so inputs come from HBM as in a real loop);
- ``Case.in_cuda_graph``: those callables also captured alone in a CUDA graph and replayed
  (``graph_replay_seconds``; rows name them ``<impl>_in_cuda_graph``): no host launch cost,
  how a ``cuda_graph=True`` sampling loop runs a step;
- seconds-long loops (``Case.repeats`` = n: whole samplers, where do_bench's dozens of calls
  would take minutes): the case's warm-up call, then the median of n wall-clock runs, each
  between device syncs;
- on a CPU: ``time.perf_counter`` -- a check of the runner at small sizes, never a speed
  claim (results files say so in ``env["timer"]``).

Rows: ``run_cases`` turns ``'ms'`` cases into the rows ``benchmarks/table.py`` reads
(``case``, ``ms``, ``best_alternative``, ``speedup_vs_best``,
``speedup_channels_last_vs_best``, ``floor_ms_h100``, ...); the sampler families build their
rows (``seconds``, ``samples_per_s``) from ``measure``.  ``save`` writes
``{"env": ..., "command": ..., "results": rows}`` with the GPU, versions and commit.

Floors: a case states its useful flops and the bytes it must move; its floor is the larger
of flops at the H100's measured bf16 peak (stated for 16-bit inputs only: no fp32/TF32 peak
is measured) and bytes at its measured copy bandwidth.
"""
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import time
from typing import Any, Callable, Optional

import torch

PEAK_BF16_FLOPS = 796e12    # H100, measured dense bf16 matmul (DESIGN.md)
COPY_BYTES_PER_S = 2.99e12  # H100, measured copy (read + write)
CPU_TIMER_NOTE = ("No GPU here: small sizes on the CPU (Triton interpreter when TRITON_INTERPRET=1); "
                  "these times check the runner and are not speed claims.")

Call = Callable[[], Any]


@dataclasses.dataclass
class Case:
    """One piece of work and every way of doing it that is timed against fastgen's."""

    name: str
    impls: dict[str, Call]       # implementation name -> zero-argument callable
    unit: str = "ms"             # 'ms' | 's' per call, or a rate: 'samples/s' | 'images/s'
    items: float = 1.0           # items (samples, images) one call produces, for the rates
    flops: float = 0.0           # useful floating-point work of one call (TFLOP/s, floor)
    bytes: float = 0.0           # bytes one call must move at least (floor)
    dtype: Optional[torch.dtype] = None   # compute dtype: the flops floor needs a 16-bit one
    target: str = ""             # the target, in words
    repeats: Optional[int] = None          # None: kernel timing; n: median of n wall-clock runs
    warmup: dict[str, Call] = dataclasses.field(default_factory=dict)   # impl -> its warm-up call
    in_cuda_graph: tuple[str, ...] = ()    # impls also timed replayed in a CUDA graph (on CUDA)
    fatal: bool = False          # an impl that fails stops the run (else: reported, timed None)

    @property
    def floor_ms(self) -> float:
        """The H100 floor of one call in ms; 0 where unknown (flops at a non-16-bit dtype)."""
        if self.flops and self.dtype not in (torch.bfloat16, torch.float16):
            return 0.0
        return max(self.flops / PEAK_BF16_FLOPS, self.bytes / COPY_BYTES_PER_S) * 1e3


@dataclasses.dataclass
class Measurement:
    """What ``measure`` found for one case."""

    values: dict[str, Optional[float]]   # impl -> value in the case's unit (None: it failed)
    warmup_seconds: dict[str, float]     # impl -> seconds of its warm-up call (e.g. a graph capture)
    errors: dict[str, str]               # impl -> "ErrorType: message" for the ones that failed


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_seconds(fn: Call, device: torch.device, repeats: Optional[int] = None) -> float:
    """Seconds of one call of ``fn`` (a median).

    ``repeats`` None (kernel-sized calls): on CUDA ``triton.testing.do_bench`` (its own warm-up,
    CUDA events, L2 flushed before every call); on a CPU one warm-up call, then the median of
    5 ``perf_counter`` timings.  ``repeats`` = n (seconds-long loops; the caller warms up): the
    median of n wall-clock runs, each between device syncs."""
    device = torch.device(device)
    if repeats is None and device.type == "cuda":
        from triton.testing import do_bench
        return do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
    if repeats is None:
        fn()
        repeats = 5
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


_capture_failed = False   # set once a CUDA-graph capture failed in this process


def capture_failed() -> bool:
    """Whether a CUDA-graph capture failed in this process (it can leave the stream unusable:
    later captures are skipped)."""
    return _capture_failed


def note_capture_failure() -> None:
    global _capture_failed
    _capture_failed = True


def graph_replay_seconds(fn: Call, device: torch.device) -> float:
    """Seconds of one call of ``fn`` captured alone in a CUDA graph and replayed: no host
    launch overhead, and do_bench flushes L2 before every replay, so the call reads its inputs
    from HBM as in a real loop (an upper bound: it includes one graph launch)."""
    fn()                                    # compile, tune and check launches outside the capture
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return time_seconds(graph.replay, device)


def _in_unit(seconds: float, case: Case) -> float:
    if case.unit == "ms":
        return seconds * 1e3
    if case.unit == "s":
        return seconds
    return case.items / seconds              # a rate: items per second


def measure(case: Case, device: torch.device, progress: Optional[Callable[[str], Any]] = print) -> Measurement:
    """Time every implementation of ``case`` (its warm-up first, where it has one), then, on
    CUDA, the ``in_cuda_graph`` ones replayed in a graph.  A failure is reported through
    ``progress`` and timed None, unless ``case.fatal``."""
    device = torch.device(device)
    result = Measurement({}, {}, {})

    def failed(key, error, label):
        if case.fatal:
            raise error
        result.values[key] = None
        result.errors[key] = f"{type(error).__name__}: {error}"
        if progress:
            progress(f"  {case.name} / {label}: failed: {type(error).__name__}: {str(error)[:200]}")

    for impl, fn in case.impls.items():
        try:
            if impl in case.warmup:
                result.warmup_seconds[impl] = time_seconds(case.warmup[impl], device, repeats=1)
            result.values[impl] = _in_unit(time_seconds(fn, device, case.repeats), case)
        except Exception as error:   # noqa: BLE001 -- a baseline that cannot run here is reported
            failed(impl, error, impl)
    if device.type == "cuda":
        for impl in case.in_cuda_graph:
            if capture_failed():
                break
            try:
                result.values[impl + "_in_cuda_graph"] = _in_unit(graph_replay_seconds(case.impls[impl], device),
                                                                  case)
            except Exception as error:   # noqa: BLE001 -- reported, the run goes on without graphs
                note_capture_failure()
                failed(impl + "_in_cuda_graph", error, impl + " in a CUDA graph")
    return result


def run_cases(cases: list[Case], device: torch.device,
              progress: Optional[Callable[[dict], Any]] = None) -> list[dict]:
    """Time the ``'ms'`` cases; one row per case, with each alternative's time over fastgen's."""
    rows = []
    for case in cases:
        times = measure(case, device, progress=print).values
        plain = {k: v for k, v in times.items() if not k.endswith("_in_cuda_graph")}
        ours = plain.get("fastgen")
        ours_cl = plain.get("fastgen_channels_last")
        others = {k: v for k, v in plain.items() if not k.startswith("fastgen") and v is not None}
        best = min(others, key=others.get) if others else None
        floor = case.floor_ms
        row = {"case": case.name, "ms": times, "target": case.target,
               "best_alternative": best,
               # fastgen given the same channels-first tensor a user has, vs the best alternative
               # given whichever layout suits it best
               "speedup_vs_best": (others[best] / ours) if ours and best else None,
               # fastgen given the channels-last tensor an earlier fastgen layer returns
               "speedup_channels_last_vs_best": (others[best] / ours_cl) if ours_cl and best else None,
               "speedup_vs_cudnn": (times["cudnn"] / ours) if ours and times.get("cudnn") else None,
               "fastgen_TFLOPs": case.flops / ours / 1e9 if ours and case.flops else None,
               "floor_ms_h100": floor,
               "pct_of_floor": 100 * floor / ours if ours and floor else None}
        rows.append(row)
        if progress:
            progress(row)
    return rows


def environment(device: torch.device) -> dict:
    """Versions, device, timer and commit for a results file."""
    device = torch.device(device)
    env = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device)}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["timer"] = "triton.testing.do_bench medians (L2 flushed); loops: wall clock with device syncs"
    else:
        env["timer"] = "time.perf_counter on the CPU: a check of the runner, not a speed claim"
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


def save(rows: list[dict], path: str, command: str, device: torch.device) -> None:
    """Write ``{"env", "command", "results"}`` (the shape ``benchmarks/table.py`` reads)."""
    with open(path, "w") as f:
        json.dump({"env": environment(device), "command": command, "results": rows}, f, indent=1)


@contextlib.contextmanager
def forced_backend(name: Optional[str]):
    """Run every fastgen op on one backend ('reference' | 'triton'; None: the automatic choice)
    for the duration, through FASTGEN_BACKEND -- how a case times "the same model in eager ops"."""
    before = os.environ.get("FASTGEN_BACKEND")
    if name is not None:
        os.environ["FASTGEN_BACKEND"] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("FASTGEN_BACKEND", None)
        else:
            os.environ["FASTGEN_BACKEND"] = before


def torch_compiled(fn: Callable) -> Optional[Callable]:
    """``torch.compile(fn)``, or None where compile cannot run (no C compiler etc.)."""
    try:
        return torch.compile(fn, dynamic=False)
    except Exception:  # pragma: no cover - depends on the machine's toolchain
        return None


def pytest_benchmark(benchmark: Any, case: Case, impl: str, device: torch.device) -> Any:
    """Time ``case.impls[impl]`` with pytest-benchmark's ``benchmark`` fixture: the same callable
    ``measure`` times, grouped by case so that the group's table is the comparison.  Kernel
    cases: pytest-benchmark's own calibration (a device sync after each call); loops: the case's
    warm-up, then ``case.repeats`` rounds."""
    device = torch.device(device)
    benchmark.group = case.name
    benchmark.extra_info.update(target=case.target, unit=case.unit, items=case.items)
    fn = case.impls[impl]

    def synced():
        out = fn()
        sync(device)
        return out
    if case.repeats is None:
        return benchmark(synced)
    if impl in case.warmup:
        case.warmup[impl]()
    return benchmark.pedantic(synced, rounds=case.repeats, warmup_rounds=0)
