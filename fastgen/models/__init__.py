"""The model zoo built on fastgen.nn.  So far: PixelCNN, GatedPixelCNN, PixelCNN++, MADE and WaveNet (with incremental
sampling through ``fastgen.sampling``)."""
from fastgen.models.made import MADE
from fastgen.models.pixelcnn import GatedPixelCNN, PixelCNN
from fastgen.models.pixelcnnpp import PixelCNNpp
from fastgen.models.wavenet import WaveNet

__all__ = ["GatedPixelCNN", "MADE", "PixelCNN", "PixelCNNpp", "WaveNet"]
