"""PixelCNN sampling benchmarks: the incremental ('fast') samplers against the naive full
recompute, the 16-bit samplers' agreement, and the fused PixelCNN++ resnet step.

- ``sampling_rows``: Gated PixelCNN in the PixelCNN issue's anchor configuration (15 layers,
  128 channels, 28x28, 256 levels; plain PyTorch full recompute: 3.46 s per image at batch 1
  on an H100) at batch 1, 64 and 256, and PixelCNN++ in the paper's CIFAR-10 configuration
  (random weights) at batch 16: seconds for one image set, and on a GPU the fast loop replayed
  as one CUDA graph.  PixelCNN++'s naive sampler (one full forward per pixel and channel: 3072
  of them per CIFAR image) is timed on its first rows and scaled to the whole image: every
  naive step does the same work.  Targets: <= 10 ms per image at batch 1, <= 40 ms per batch
  of 64; PixelCNN++ fast >= 200x naive.
- ``half_precision_sampling_rows``: the anchor Gated PixelCNN at batch 64 in bf16/fp16.
- ``pixelcnnpp_resnet_rows``: one PixelCNN++ GatedResnet at one pixel; floor: its packed fp32
  weights (w1, w2, w_aux: 2.6 MB at CIFAR size) read once, ~0.9 us at 2.99 TB/s (less when
  they stay in L2).

``quick`` shrinks everything for a CPU check of the runner (never a speed claim).
"""
import copy
from typing import Any, Callable, Optional, Sequence

import torch

from fastgen import ops
from fastgen.bench.runner import Case, capture_failed, measure, note_capture_failure, run_cases
from fastgen.models import GatedPixelCNN, PixelCNNpp
from fastgen.sampling import sample

NAIVE_ROWS = 2    # rows of PixelCNN++'s naive sampler that are timed (then scaled to the image)


def _configs(quick: bool, batches: Optional[Sequence[int]], pixelcnnpp: bool) -> list[tuple]:
    """(name, model, batch sizes) of the sampler benchmarks."""
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
    return configs


class _StopSampling(Exception):
    """Raised from the sampler's progress callback to stop it after some rows."""


def _first_rows(model, batch: int, rows: int) -> Callable[[], None]:
    """The naive sampler on a fresh image set, stopped after its first ``rows`` rows."""
    def run():
        def stop(r):
            if r + 1 == rows:
                raise _StopSampling
        try:
            sample(model, batch, method="naive", generator=torch.Generator().manual_seed(1), progress=stop)
        except _StopSampling:
            pass
    return run


def sampler_case(name: str, model, batch: int) -> Case:
    """Seconds of one image set with each sampler, after a warm-up that draws two pixels.  For
    PixelCNN++ the naive sampler is timed up to row 0 (``naive_row_0``: setup and one row) and
    up to row ``NAIVE_ROWS - 1``; ``sampling_rows`` scales those to the image."""
    C, H, W = model.image_shape
    warm_mask = torch.ones(batch, C, H, W, dtype=torch.bool)
    warm_mask[:, :, 0, :2] = False                 # warm-up: draw two pixels, copy the rest

    def run(method):
        return lambda: sample(model, batch, method=method, generator=torch.Generator().manual_seed(1))

    def warm(method):
        return lambda: sample(model, batch, method=method, generator=torch.Generator().manual_seed(0),
                              known=torch.zeros(batch, C, H, W, dtype=torch.long), known_mask=warm_mask)

    impls, warmup = {"fast": run("fast")}, {"fast": warm("fast")}
    if name == "pixelcnnpp":
        impls["naive_row_0"] = warmup["naive_row_0"] = _first_rows(model, batch, 1)
        impls[f"naive_rows_0_{NAIVE_ROWS - 1}"] = _first_rows(model, batch, NAIVE_ROWS)
    else:
        impls["naive"], warmup["naive"] = run("naive"), warm("naive")
    return Case(f"{name}_{C}x{H}x{W}_levels{model.levels}_B{batch}", impls, unit="s", items=batch, repeats=1,
                warmup=warmup, fatal=True)


def sampler_cases(device: torch.device, quick: bool = False) -> list[Case]:
    """Every ``sampler_case`` of ``sampling_rows`` (for ``benchmarks/bench_sampling.py``)."""
    return [sampler_case(name, model.to(device).eval(), batch)
            for name, model, sizes in _configs(quick, None, True) for batch in sizes]


def sampling_rows(device: torch.device, quick: bool = False, batches: Optional[Sequence[int]] = None,
                  progress: Optional[Callable[[str], Any]] = print, pixelcnnpp: bool = True) -> list[dict]:
    """One row per model and batch: seconds of each sampler, the speedup, images/s."""
    device = torch.device(device)
    rows = []
    for name, model, sizes in _configs(quick, batches, pixelcnnpp):
        model = model.to(device).eval()
        for batch in sizes:
            rows.append(_sampler_row(name, model, batch, device, progress))
    return rows


def _sampler_row(name, model, batch, device, progress):
    C, H, W = model.image_shape
    case = sampler_case(name, model, batch)
    times = measure(case, device, progress).values
    if "naive_row_0" in times:      # setup + row 0 as measured, then every later row as row 1..
        first = times.pop("naive_row_0")
        rest = times.pop(f"naive_rows_0_{NAIVE_ROWS - 1}")
        times["naive"] = first + (rest - first) / (NAIVE_ROWS - 1) * (H - 1)
    extra = {}
    # The fast loop replayed as one CUDA graph.  Without a fused step the graph holds every op of
    # every pixel (PixelCNN++: hundreds of thousands of nodes): capture time is reported apart,
    # and a capture that fails (e.g. out of memory) is reported instead of a time.
    if device.type == "cuda" and times["fast"] < 60 and not capture_failed():
        def graphed(seed):
            return lambda: sample(model, batch, method="fast", generator=torch.Generator().manual_seed(seed),
                                  cuda_graph=True)
        graph = measure(Case(case.name, {"fast_cuda_graph": graphed(1)}, unit="s", repeats=1,
                             warmup={"fast_cuda_graph": graphed(0)}), device, progress=None)
        if graph.errors:
            extra["cuda_graph_error"] = graph.errors["fast_cuda_graph"][:300]
            note_capture_failure()    # a failed capture can leave the stream unusable for more
        else:
            extra["cuda_graph_capture_seconds"] = graph.warmup_seconds["fast_cuda_graph"]
            times["fast_cuda_graph"] = graph.values["fast_cuda_graph"]
    fastest = min(v for k, v in times.items() if k.startswith("fast"))
    row = {"case": case.name, "seconds": times, "speedup_fast_vs_naive": times["naive"] / fastest,
           "images_per_s_fast": batch / fastest, "images_per_s_naive": batch / times["naive"], **extra}
    if name == "pixelcnnpp":
        row["naive_seconds_are"] = (f"extrapolated: the naive sampler timed on rows 0..{NAIVE_ROWS - 1} "
                                    f"({NAIVE_ROWS * W} of {H * W} pixels): setup + row 0 as measured, "
                                    f"then the mean of rows 1..{NAIVE_ROWS - 1} for each later row")
    if progress:
        progress(f"{row['case']:<40} " + "  ".join(f"{k} {v:.3f} s" for k, v in times.items())
                 + f"  ({row['speedup_fast_vs_naive']:.1f}x; {row['images_per_s_fast']:.2f} images/s fast)"
                 + (f"  [naive {row['naive_seconds_are']}]" if name == "pixelcnnpp" else ""))
    return row


def half_precision_sampling_rows(device: torch.device, quick: bool = False,
                                 progress: Optional[Callable[[str], Any]] = print) -> list[dict]:
    """Gated PixelCNN (the anchor configuration, batch 64) moved to bf16 and fp16: time of the
    fast sampler, and the fraction of sampled values identical between the fast and the naive
    sampler for the same Gumbel noise (in fp32 they are all identical; in 16-bit the two
    orders of summation round differently and an argmax may flip -- then every later pixel
    differs too, so this is a strict measure)."""
    device = torch.device(device)
    torch.manual_seed(0)
    if quick:
        model, batch = GatedPixelCNN((1, 5, 5), levels=16, channels=16, layers=3), 2
    else:
        model, batch = GatedPixelCNN((1, 28, 28), levels=256, channels=128, layers=15), 64
    C, H, W = model.image_shape
    rows = []
    for dtype in (torch.bfloat16, torch.float16):
        if device.type == "cpu" and dtype == torch.float16:
            continue                     # CPU half convs are not what anyone would run
        half = copy.deepcopy(model).to(device, dtype).eval()
        draws = {}

        def run(method, half=half, draws=draws):
            def call():
                draws[method] = sample(half, batch, method=method, generator=torch.Generator().manual_seed(1))
            return call

        def warm(method, half=half):
            return lambda: sample(half, 1, method=method, generator=torch.Generator().manual_seed(0))

        case = Case(f"gated_{C}x{H}x{W}_levels{model.levels}_B{batch}_{str(dtype)[6:]}",
                    {"fast": run("fast"), "naive": run("naive")}, unit="s", items=batch, repeats=1,
                    warmup={"fast": warm("fast"), "naive": warm("naive")}, fatal=True)
        seconds = measure(case, device, progress).values
        row = {"case": case.name, "seconds": seconds,
               "fraction_identical_fast_vs_naive": (draws["fast"] == draws["naive"]).float().mean().item(),
               "images_per_s_fast": batch / seconds["fast"]}
        if progress:
            progress(f"{row['case']:<40} fast {seconds['fast']:.3f} s  naive {seconds['naive']:.3f} s  "
                     f"identical {row['fraction_identical_fast_vs_naive']:.4f}")
        rows.append(row)
    return rows


def pixelcnnpp_resnet_rows(device: torch.device, quick: bool = False,
                           progress: Optional[Callable[[str], Any]] = print) -> list[dict]:
    """One PixelCNN++ GatedResnet of the ``ul`` stream at one pixel, as the sampling cache runs
    it, in the paper's CIFAR configuration (C = 160, one aux map of 160 channels, 2x2 window,
    batch 16): fastgen's two fused launches against the same step in PyTorch ops (the
    reference), each eagerly and inside a CUDA graph.  Floor: the packed fp32 weights (w1, w2,
    w_aux: 2.6 MB) read once, ~0.9 us at 2.99 TB/s (less when they stay in L2)."""
    from fastgen.nn import DownRightShiftedConv, GatedResnet, pack_resnet_weights

    device = torch.device(device)
    B, C, H, W = (16, 160, 32, 32) if not quick else (2, 16, 4, 4)
    torch.manual_seed(0)
    res = GatedResnet(C, DownRightShiftedConv, aux_channels=C, dropout=0.0).to(device).eval()
    weights = pack_resnet_weights(res)
    x, aux = (torch.randn(B, C, H + 1, W + 2, device=device) for _ in range(2))
    mid, out = torch.zeros_like(x), torch.zeros_like(x)
    i, j = H // 2, W // 2

    def step(backend):
        return lambda: ops.pixelcnnpp_resnet_at(x, [aux], mid, out, weights, None, i, j, j + 1, backend=backend)

    impls = {"fastgen": step(None if device.type == "cuda" else "reference"), "pytorch_ops": step("reference")}
    case = Case(f"pixelcnnpp_resnet_at_B{B}_C{C}_one_pixel", impls, bytes=sum(w.numel() * 4 for w in weights),
                in_cuda_graph=("fastgen", "pytorch_ops"))
    rows = run_cases([case], device)
    if progress:
        row = rows[0]
        progress(f"{row['case']}: " + "  ".join(f"{k} {v * 1e3:.1f} us" for k, v in row["ms"].items() if v))
    return rows
