"""pytest-benchmark view of PixelCNN sampling: the incremental ('fast') sampler against the
naive full recompute, one group per configuration.  ``fastgen bench sampling`` prints the
same comparison with ratios.  On a GPU: the PixelCNN issue's anchor configuration (15 gated
layers, 128 channels, 28x28, 256 levels, batch 1); without one a tiny model on the CPU
(harness check, not a speed claim).
"""
import pytest
import torch

from fastgen.models import GatedPixelCNN
from fastgen.sampling import sample

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CONFIG = (dict(image_shape=(1, 28, 28), levels=256, channels=128, layers=15) if DEVICE.type == "cuda"
          else dict(image_shape=(1, 6, 6), levels=16, channels=16, layers=3))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GatedPixelCNN(**CONFIG).to(DEVICE).eval()


@pytest.mark.parametrize("method", ["fast", "naive"])
def test_sampling(benchmark, model, method):
    benchmark.group = "gated_pixelcnn_" + "_".join(f"{k}{v}" for k, v in CONFIG.items() if k != "image_shape")

    def run():
        out = sample(model, 1, method=method, generator=torch.Generator().manual_seed(0))
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return out

    benchmark.pedantic(run, rounds=3 if DEVICE.type == "cpu" else 1, warmup_rounds=1)
