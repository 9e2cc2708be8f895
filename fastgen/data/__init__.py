"""Datasets that need no download: ``load_digits`` (scikit-learn's 8x8 digits) and
``load_array`` (your own images from a ``.npy`` file), both as integer image tensors."""
from fastgen.data.images import ImageData, load_array, load_digits

__all__ = ["ImageData", "load_array", "load_digits"]
