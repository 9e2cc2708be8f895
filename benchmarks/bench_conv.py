"""pytest-benchmark view of the conv cases in ``fastgen.bench.conv`` (through the one runner).

    pytest benchmarks/ --benchmark-only            # every case x implementation, grouped by case
    fastgen bench conv --json out.json             # the same cases with speedup ratios (GPU: do_bench)

Each group holds fastgen and the alternatives a user would reach for instead (cuDNN in both
memory formats, torch.compile of the reference) for the same inputs, so the group's table is
the comparison.  Floors are in ``fastgen.bench.conv``'s docstring.  Without a GPU the cases run
at small sizes on the CPU: they check the harness, they are not speed claims.
"""
import pytest
import torch

from fastgen.bench import conv_cases
from fastgen.bench.runner import pytest_benchmark

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = conv_cases(DEVICE, quick=DEVICE.type != "cuda")


@pytest.mark.parametrize("case,impl", [pytest.param(c, i, id=f"{c.name}-{i}") for c in CASES for i in c.impls])
def test_conv(benchmark, case, impl):
    pytest_benchmark(benchmark, case, impl, DEVICE)
