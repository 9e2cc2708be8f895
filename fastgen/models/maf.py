"""Density flows on vectors x [B, D] with a standard-normal base N(0, I):

- ``MAF`` (Papamakarios et al. 2017): ``layers`` MAF layers on Gaussian MADEs, the ordering
  reversed between layers.  Fast density (``log_prob``: one MADE pass per layer), slow sampling
  (D passes per layer).  Use it to fit a density to data.
- ``IAF`` (Kingma et al. 2016): the same layers run the other way.  Fast sampling with the
  log-density of the samples (``sample_with_log_prob``: one pass per layer), slow density of a
  given x (D passes per layer).  Use it as a variational posterior q(z).
- ``PlanarFlow`` / ``RadialFlow`` (Rezende & Mohamed 2015): ``layers`` planar / radial layers,
  used as posteriors: draw z0 from the base, transform, and track log q along the way
  (``sample_with_log_prob``).  ``log_prob(x)`` needs the inverse, which is numeric for planar
  (bisection, see ``fastgen.nn.PlanarLayer``) and closed form for radial.

Every model: ``forward(x, cond=None) -> FlowOutput(out, logdet)`` (the composition of its layers'
one-pass directions: data -> noise for MAF, noise -> data for the others), ``inverse(y, cond=None)
-> x``, ``log_prob(x, cond=None) -> [B]``, ``sample(n, temperature=1.0, generator=None, cond=None)
-> [n, D]`` (base noise scaled by ``temperature``) and ``sample_with_log_prob(...) ->
FlowSample(sample, log_prob)`` (log_prob is the model's density at the sample, temperature 1).
MAF and IAF take ``cond [B, cond_dim]`` (fed to every MADE) when built with ``cond_dim > 0``.
"""
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from fastgen.nn.density_flows import (FlowSample, IAFLayer, MAFLayer, PlanarLayer, RadialLayer, check_cond,
                                      check_vectors, standard_normal_log_prob)
from fastgen.ops.flow_coupling.bundles import FlowOutput


class _VectorFlow(nn.Module):
    """A stack of vector flow layers over N(0, I).  ``generative``: the layers' forward maps noise
    to data (IAF, planar, radial) rather than data to noise (MAF)."""

    generative = True

    def __init__(self, dim: int, layers: nn.ModuleList, cond_dim: int = 0):
        super().__init__()
        self.dim, self.cond_dim, self.layers = dim, cond_dim, layers

    def _like(self) -> Tensor:
        return next(self.parameters())

    def _check(self, x: Tensor, cond: Optional[Tensor], name: str) -> None:
        check_vectors(x, self.dim, name, self._like())
        check_cond(cond, self.cond_dim, x.shape[0], self._like(), type(self).__name__)

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> FlowOutput:
        """x [B, dim] through every layer's forward -> FlowOutput(out [B, dim], logdet [B])."""
        self._check(x, cond, "x")
        logdet = 0
        for layer in self.layers:
            x, ld = layer._forward(x, cond)
            logdet = logdet + ld
        return FlowOutput(x, logdet)

    def inverse(self, y: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """y [B, dim] through every layer's inverse, last layer first -> [B, dim]."""
        self._check(y, cond, "y")
        for layer in reversed(self.layers):
            y = layer._inverse(y, cond)
        return y

    def log_prob(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """log p(x) [B] for x [B, dim]."""
        if not self.generative:                       # one pass per layer
            u, logdet = self(x, cond)
            return standard_normal_log_prob(u) + logdet
        u = self.inverse(x, cond)                     # slow: the numeric / D-pass inverses
        return standard_normal_log_prob(u) - self(u, cond).logdet

    def _noise(self, n: int, temperature: float, generator: Optional[torch.Generator],
               cond: Optional[Tensor]) -> Tensor:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        like = self._like()
        check_cond(cond, self.cond_dim, n, like, type(self).__name__)
        u = torch.randn(n, self.dim, generator=generator, device=like.device, dtype=like.dtype)
        return u * temperature

    def sample_with_log_prob(self, n: int, temperature: float = 1.0, generator: Optional[torch.Generator] = None,
                             cond: Optional[Tensor] = None) -> FlowSample:
        """n samples [n, dim] with their log-density under the model [n] (``cond`` [n, cond_dim])."""
        u = self._noise(n, temperature, generator, cond)
        if self.generative:                           # one pass per layer
            x, logdet = self(u, cond)
            return FlowSample(x, standard_normal_log_prob(u) - logdet)
        x = self.inverse(u, cond)
        return FlowSample(x, standard_normal_log_prob(u) + self(x, cond).logdet)   # logdet of x -> u

    def sample(self, n: int, temperature: float = 1.0, generator: Optional[torch.Generator] = None,
               cond: Optional[Tensor] = None) -> Tensor:
        """n samples [n, dim]: base noise N(0, temperature^2 I) through the flow."""
        u = self._noise(n, temperature, generator, cond)
        return self(u, cond).out if self.generative else self.inverse(u, cond)


def _check_sizes(dim, layers) -> None:
    for name, value in (("dim", dim), ("layers", layers)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _autoregressive_layers(cls, dim, hidden, layers, cond_dim, seed, activation):
    _check_sizes(dim, layers)
    natural = list(range(dim))
    return nn.ModuleList(cls(dim, hidden, cond_dim, natural if k % 2 == 0 else natural[::-1], seed + k, activation)
                         for k in range(layers))


class MAF(_VectorFlow):
    """Masked autoregressive flow (Papamakarios et al. 2017) on x [B, dim]: ``layers`` MAFLayers
    (MADEs with ``hidden`` sizes and ``activation``, hidden degrees from ``seed + k``; see
    ``fastgen.nn.GaussianMADE``), the ordering reversed from one layer to the next, N(0, I) base.
    forward: x -> u with u_d = (x_d - mu_d(x_<d)) exp(-alpha_d(x_<d)) per layer, log p(x) =
    log N(u; 0, I) - sum alpha in one pass per layer; sampling inverts each layer in ``dim`` passes.  No batch-norm layers between the MADEs."""

    generative = False

    def __init__(self, dim: int, hidden: Sequence[int] = (512, 512), layers: int = 5, cond_dim: int = 0,
                 seed: int = 0, activation: str = "tanh"):
        super().__init__(dim, _autoregressive_layers(MAFLayer, dim, hidden, layers, cond_dim, seed, activation),
                         cond_dim)


class IAF(_VectorFlow):
    """Inverse autoregressive flow (Kingma et al. 2016) on [B, dim]: ``layers`` IAFLayers (as MAF),
    the ordering reversed from one layer to the next, N(0, I) base.  forward: u -> x with x_d =
    u_d exp(alpha_d(u_<d)) + mu_d(u_<d) per layer: sampling and the log-density of the samples
    (``sample_with_log_prob``) take one pass per layer; ``log_prob`` of a given x inverts each
    layer in ``dim`` passes."""

    def __init__(self, dim: int, hidden: Sequence[int] = (512, 512), layers: int = 5, cond_dim: int = 0,
                 seed: int = 0, activation: str = "tanh"):
        super().__init__(dim, _autoregressive_layers(IAFLayer, dim, hidden, layers, cond_dim, seed, activation),
                         cond_dim)


class PlanarFlow(_VectorFlow):
    """``layers`` planar layers (Rezende & Mohamed 2015) on [B, dim] over N(0, I), meant as a
    posterior: ``sample_with_log_prob`` draws z0 and tracks log q through f_K o ... o f_1.
    ``log_prob``/``inverse`` use each layer's numeric inverse (``fastgen.nn.PlanarLayer``)."""

    def __init__(self, dim: int, layers: int = 8):
        _check_sizes(dim, layers)
        super().__init__(dim, nn.ModuleList(PlanarLayer(dim) for _ in range(layers)))


class RadialFlow(_VectorFlow):
    """``layers`` radial layers (Rezende & Mohamed 2015) on [B, dim] over N(0, I), meant as a
    posterior like ``PlanarFlow``; ``log_prob``/``inverse`` use the closed-form inverse."""

    def __init__(self, dim: int, layers: int = 8):
        _check_sizes(dim, layers)
        super().__init__(dim, nn.ModuleList(RadialLayer(dim) for _ in range(layers)))
