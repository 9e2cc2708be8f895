"""Samplers.  ``fastgen.sampling.sample`` draws images from autoregressive image models with
the naive (full recompute) or the incremental ('fast') method, ``sample_sequence``
vectors from vector models such as MADE; what a model must provide for them is written as
protocols (``ImageModel`` / ``PixelCache`` / ``FusedPixelStep``, ``SequenceModel`` /
``SequenceCache``, in ``fastgen.sampling.autoregressive``).  ``fastgen.sampling.audio``
generates audio (WaveNet), ``fastgen.sampling.diffusion`` runs diffusion sampling loops, and
``fastgen.sampling.graphs`` holds every sampler's captured CUDA graphs.  Sampling never
imports models."""
from fastgen.sampling.autoregressive import (FusedPixelStep, ImageModel, PixelCache, SequenceCache, SequenceModel,
                                             gumbel_noise, sample, sample_sequence)

__all__ = ["FusedPixelStep", "ImageModel", "PixelCache", "SequenceCache", "SequenceModel", "gumbel_noise", "sample",
           "sample_sequence"]
