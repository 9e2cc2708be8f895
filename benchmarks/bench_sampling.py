"""pytest-benchmark view of PixelCNN sampling: the cases of ``fastgen bench sampling``
(``fastgen.bench.sampling.sampler_cases``) -- the incremental ('fast') sampler against the
naive full recompute, one group per model and batch; ``fastgen bench sampling`` prints the
same comparison with ratios.  On a GPU: the PixelCNN issue's anchor configuration (15 gated
layers, 128 channels, 28x28, 256 levels) and PixelCNN++ at CIFAR size; without one tiny models
on the CPU (harness check, not a speed claim).  PixelCNN++'s naive sampler is timed on its
first rows (``naive_row_0``, ``naive_rows_0_1``), as the runner times it.
"""
import pytest
import torch

from fastgen.bench import sampler_cases
from fastgen.bench.runner import pytest_benchmark

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = sampler_cases(DEVICE, quick=DEVICE.type != "cuda")


@pytest.mark.parametrize("case,impl", [pytest.param(c, i, id=f"{c.name}-{i}") for c in CASES for i in c.impls])
def test_sampling(benchmark, case, impl):
    pytest_benchmark(benchmark, case, impl, DEVICE)
