"""Datasets that need no download: ``load_digits`` (scikit-learn's 8x8 digits) and
``load_array`` (your own images from a ``.npy`` file) as integer image tensors;
``moving_digits`` (those digits bouncing across a canvas) and ``load_video_array`` (your own
videos from a ``.npy`` file) as integer video tensors; WAV files (``load_wav``, ``save_wav``,
``WavFolder``) and ``synthetic_audio`` (chords and chirps); ``densities``: the unnormalised 2-D
target densities exp(-U) of Rezende & Mohamed 2015 (``energy``) that variational flows fit."""
from fastgen.data import densities
from fastgen.data.audio import WavFolder, load_wav, save_wav, synthetic_audio
from fastgen.data.densities import energy
from fastgen.data.images import ImageData, load_array, load_digits
from fastgen.data.video import VideoData, load_video_array, moving_digits

__all__ = ["ImageData", "VideoData", "WavFolder", "densities", "energy", "load_array", "load_digits",
           "load_video_array", "load_wav", "moving_digits", "save_wav", "synthetic_audio"]
