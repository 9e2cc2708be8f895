"""pytest-benchmark view of the block-local attention cases in ``fastgen.bench.attention``:
fastgen's kernels (forward; forward + backward) against SDPA with a dense mask, permute-into-
blocks + SDPA, FlexAttention with a block mask (CUDA) and NATTEN (if installed), one group per
case; ``fastgen bench attention`` prints the same comparison with ratios, TFLOP/s and the
memory floor.  Without a GPU the cases run at small sizes on the CPU: they check the harness,
they are not speed claims.
"""
import pytest
import torch

from fastgen.bench import attention_cases
from fastgen.bench.runner import pytest_benchmark

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = attention_cases(DEVICE, quick=DEVICE.type != "cuda")


@pytest.mark.parametrize("case,impl", [pytest.param(c, i, id=f"{c.name}-{i}") for c in CASES for i in c.impls])
def test_attention(benchmark, case, impl):
    pytest_benchmark(benchmark, case, impl, DEVICE)
