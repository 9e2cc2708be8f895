"""The model zoo built on fastgen.nn.  So far: PixelCNN and GatedPixelCNN (with incremental
sampling through ``fastgen.sampling.sample``)."""
from fastgen.models.pixelcnn import GatedPixelCNN, PixelCNN

__all__ = ["GatedPixelCNN", "PixelCNN"]
