"""pytest-benchmark view of the flow cases in ``fastgen.bench.flows``: the fused coupling
transform (forward + backward) against the eager PyTorch a user writes and its torch.compile,
one group per shape and dtype; ``fastgen bench flows`` prints the same comparison with ratios
and the memory floor.  Without a GPU the cases run at small sizes on the CPU: they check the
harness, they are not speed claims.
"""
import pytest
import torch

from fastgen.bench import coupling_cases
from fastgen.bench.runner import pytest_benchmark

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = coupling_cases(DEVICE, quick=DEVICE.type != "cuda")


@pytest.mark.parametrize("case,impl", [pytest.param(c, i, id=f"{c.name}-{i}") for c in CASES for i in c.impls])
def test_flows(benchmark, case, impl):
    pytest_benchmark(benchmark, case, impl, DEVICE)
