"""pytest-benchmark view of WaveNet generation: the cases of ``fastgen bench wavenet``
(``fastgen.bench.wavenet.wavenet_cases``) -- the fused per-sample step (and, on a GPU, the same
step replayed as a CUDA graph) and the persistent kernel (one launch per block of samples;
fp32, fp16, bf16) against the eager per-layer queue step and the naive recompute, one group
per model, batch and sample count.  ``fastgen bench wavenet`` reports the same comparison in
samples/s, with the fraction of 16-bit draws identical to fp32.  Without a GPU: a tiny model
on the CPU through the reference backend (harness check, not a speed claim)."""
import pytest
import torch

from fastgen.bench import wavenet_cases
from fastgen.bench.runner import pytest_benchmark

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = wavenet_cases(DEVICE, quick=DEVICE.type != "cuda")


@pytest.mark.parametrize("case,impl", [pytest.param(c, i, id=f"{c.name}-{i}") for c in CASES for i in c.impls])
def test_wavenet_generation(benchmark, case, impl):
    pytest_benchmark(benchmark, case, impl, DEVICE)
