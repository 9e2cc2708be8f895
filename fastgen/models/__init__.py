"""The model zoo built on fastgen.nn.  So far: PixelCNN, GatedPixelCNN, PixelCNN++ and MADE (with incremental
sampling through ``fastgen.sampling``)."""
from fastgen.models.made import MADE
from fastgen.models.pixelcnn import GatedPixelCNN, PixelCNN
from fastgen.models.pixelcnnpp import PixelCNNpp

__all__ = ["GatedPixelCNN", "MADE", "PixelCNN", "PixelCNNpp"]
