"""Samplers.  ``fastgen.sampling.sample`` draws images from autoregressive image models with
the naive (full recompute) or the incremental ('fast') method, ``sample_sequence``
vectors from vector models such as MADE (protocol: ``fastgen.sampling.autoregressive``);
``fastgen.sampling.audio`` generates audio (WaveNet) and ``fastgen.sampling.diffusion`` runs
diffusion sampling loops.  Sampling never imports models."""
from fastgen.sampling.autoregressive import gumbel_noise, sample, sample_sequence

__all__ = ["gumbel_noise", "sample", "sample_sequence"]
