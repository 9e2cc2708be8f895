"""Test setup: Triton kernels run in the CPU interpreter unless the GPU suite asks otherwise.

``TRITON_INTERPRET`` must be set before Triton decorates any kernel, so it is set here, before
the test modules import fastgen.  ``benchmarks/run_gpu.sh`` sets FASTGEN_TEST_GPU=1 to run the
same tests (and the ``gpu``-marked ones) on a real GPU.
"""
import os

if os.environ.get("FASTGEN_TEST_GPU") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` run only with FASTGEN_SLOW=1 (``.ci/run`` sets it): a plain
    ``pytest`` stays quick."""
    if os.environ.get("FASTGEN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set FASTGEN_SLOW=1 to run it (.ci/run does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def poison_fastgen_outputs(monkeypatch):
    """Outputs fastgen allocates for its kernels start as NaN, so an unwritten element fails."""
    from fastgen.ops import _backend

    def nan_empty(*shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(_backend, "empty", nan_empty)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
