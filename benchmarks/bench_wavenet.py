"""pytest-benchmark view of WaveNet generation: the fused per-sample step (and, on a GPU, the
same step replayed as a CUDA graph) and the persistent kernel (one launch per block of samples;
fp32, fp16, bf16) against the eager per-layer queue step.  ``fastgen bench wavenet`` reports the
same comparison in samples/s, with the fraction of 16-bit draws identical to fp32.  Without a
GPU: a tiny model on the CPU through the reference backend (harness check, not a speed claim)."""
import pytest
import torch

from fastgen.models import WaveNet
from fastgen.models.wavenet import _QueueCache
from fastgen.sampling.audio import generate

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CONFIG = (dict(layers=30, cycle=10, residual_channels=64, skip_channels=256) if DEVICE.type == "cuda"
          else dict(layers=4, cycle=2, residual_channels=16, skip_channels=32))
SAMPLES = 2048 if DEVICE.type == "cuda" else 64
# variant -> generate's options
VARIANTS = {"fused": dict(persistent=False), "persistent": dict(persistent=True),
            "persistent_float16": dict(persistent=True, dtype=torch.float16),
            "persistent_bfloat16": dict(persistent=True, dtype=torch.bfloat16), "eager_queue": {}}
if DEVICE.type == "cuda":
    VARIANTS["fused_cuda_graph"] = dict(persistent=False, cuda_graph=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_wavenet_generation(benchmark, variant):
    torch.manual_seed(0)
    model = WaveNet(quantization=256, **CONFIG).to(DEVICE).eval()
    if variant == "eager_queue":
        model.incremental = lambda b, g=None: _QueueCache(model, b, g)
    benchmark.group = "wavenet_B1_" + "_".join(f"{k}{v}" for k, v in CONFIG.items())

    def run():
        out = generate(model, SAMPLES, 1, generator=torch.Generator().manual_seed(0), **VARIANTS[variant])
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return out

    benchmark.extra_info["samples"] = SAMPLES
    benchmark.pedantic(run, rounds=2, warmup_rounds=1)
