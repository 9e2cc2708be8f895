"""Samplers.  ``fastgen.sampling.sample`` draws images from autoregressive image models with
the naive (full recompute) or the incremental ('fast') method; the protocol a model
implements is in ``fastgen.sampling.autoregressive``.  Sampling never imports models."""
from fastgen.sampling.autoregressive import gumbel_noise, sample

__all__ = ["gumbel_noise", "sample"]
