"""pytest-benchmark view of the vector-quantization cases in ``fastgen.bench.vq``: the nearest-code
search (fastgen vs cdist+argmin vs the expanded form, exact fp32 and TF32) and a VQ layer's
training step (fastgen vs the reference backend vs vector-quantize-pytorch where installed), one
group per case; ``fastgen bench vq`` prints the same comparison with peak memory and the TF32
floor.  Without a GPU the cases run at small sizes on the CPU: they check the harness, they are
not speed claims.
"""
import pytest
import torch

from fastgen.bench import vq_layer_cases, vq_search_cases
from fastgen.bench.runner import pytest_benchmark

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = vq_search_cases(DEVICE, quick=DEVICE.type != "cuda") + vq_layer_cases(DEVICE, quick=DEVICE.type != "cuda")


@pytest.mark.parametrize("case,impl", [pytest.param(c, i, id=f"{c.name}-{i}") for c in CASES for i in c.impls])
def test_vq(benchmark, case, impl):
    pytest_benchmark(benchmark, case, impl, DEVICE)
