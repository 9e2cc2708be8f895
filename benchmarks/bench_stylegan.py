"""pytest-benchmark view of the StyleGAN2 op cases in ``fastgen.bench.stylegan``: bias_act and
upfirdn2d against StyleGAN2-ADA's eager reference paths and their torch.compile, the modulated
conv (forward + backward) against the grouped-conv formulation on cuDNN and its torch.compile,
one group per shape and dtype; ``fastgen bench stylegan`` prints the same comparison with ratios,
TFLOP/s and the memory floor.  Without a GPU the cases run at small sizes on the CPU: they check
the harness, they are not speed claims.
"""
import pytest
import torch

from fastgen.bench import stylegan_cases
from fastgen.bench.runner import pytest_benchmark

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = stylegan_cases(DEVICE, quick=DEVICE.type != "cuda")


@pytest.mark.parametrize("case,impl", [pytest.param(c, i, id=f"{c.name}-{i}") for c in CASES for i in c.impls])
def test_stylegan(benchmark, case, impl):
    pytest_benchmark(benchmark, case, impl, DEVICE)
