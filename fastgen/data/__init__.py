"""Datasets that need no download: ``load_digits`` (scikit-learn's 8x8 digits) and
``load_array`` (your own images from a ``.npy`` file) as integer image tensors; WAV files
(``load_wav``, ``save_wav``, ``WavFolder``) and ``synthetic_audio`` (chords and chirps)."""
from fastgen.data.audio import WavFolder, load_wav, save_wav, synthetic_audio
from fastgen.data.images import ImageData, load_array, load_digits

__all__ = ["ImageData", "WavFolder", "load_array", "load_digits", "load_wav", "save_wav", "synthetic_audio"]
