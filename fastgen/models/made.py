"""MADE: masked autoencoder for distribution estimation (Germain et al. 2015).

A fully connected network whose weight masks make output d depend only on inputs that come
before d in an ordering, so p(x) = prod_d p(x_d | x_<d) in one forward pass.

- Vectors x: long ``[B, D]`` with values in [0, levels); levels = 2 is the binary case.
  Inputs are one-hot encoded (each input unit carries its dimension's degree).
- Degrees (the paper's m(k)): inputs m(d) = the position of d in the ordering (1..D); hidden
  units draw m(k) uniformly from [min of the previous layer, D - 1]; a hidden weight k <- j is
  kept iff m(k) >= m(j); an output weight d <- k iff m(d) > m(k).  The construction is
  ``fastgen.nn.made.made_masks``, shared with the real-valued ``GaussianMADE`` (MAF, IAF).
- Connectivity-agnostic training: ``num_masks`` mask sets (and, with ``natural_ordering=False``,
  orderings) drawn from ``seed``; ``next_mask()`` moves to the next set (call it every step);
  ``loss(x, average_masks=True)`` averages the probabilities of all mask sets at evaluation.
- ``logits = model(x)``: ``[B, levels, D]``; ``loss``: NLL in bits per dimension.
- Sampling (``fastgen.sampling.sample_sequence``): MADE implements ``fastgen.sampling.SequenceModel``
  (``dim``, ``levels``, ``order``, ``incremental(x)`` -> a ``SequenceCache``).
  The incremental cache keeps the first layer's pre-activations and adds one column block
  per sampled value, and evaluates only the output rows of the dimension being sampled.
"""
import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgen.nn.made import made_masks, ordering_degrees
from fastgen.ops import _validate


class MADE(nn.Module):
    """MADE over long vectors [B, dim] with ``levels`` values per dimension (module docstring):
    ``hidden`` layer sizes, ``num_masks`` mask sets drawn from ``seed``, the natural or a
    random ``order`` of the dimensions."""

    def __init__(self, dim: int, hidden: Sequence[int] = (256, 256), levels: int = 2, num_masks: int = 1,
                 natural_ordering: bool = True, seed: int = 0):
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not isinstance(levels, int) or levels < 2:
            raise ValueError(f"levels must be an int >= 2, got {levels!r}")
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"hidden must be a non-empty list of positive sizes, got {hidden!r}")
        self.dim, self.levels, self.num_masks = dim, levels, num_masks
        self.natural_ordering = natural_ordering
        sizes = [dim * levels, *hidden, dim * levels]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self._generator = torch.Generator().manual_seed(seed)
        self._mask_sets = [self._draw_masks(i) for i in range(num_masks)]
        self.mask_index = 0
        self._install(0)

    def _draw_masks(self, index):
        """(ordering [D], one 0/1 mask per layer) for mask set ``index``."""
        g = self._generator
        if self.natural_ordering:
            order = torch.arange(self.dim)
        else:
            order = torch.randperm(self.dim, generator=g)
        in_degrees = ordering_degrees(order).repeat_interleave(self.levels)   # one-hot units share it
        hidden = [layer.out_features for layer in self.layers[:-1]]
        masks = made_masks(in_degrees, hidden, in_degrees, self.dim, g)
        return order, masks

    def _install(self, index):
        order, masks = self._mask_sets[index]
        self.order = order.tolist()
        for i, mask in enumerate(masks):
            self.register_buffer(f"mask{i}", mask.to(self.layers[i].weight.device), persistent=False)

    def next_mask(self) -> None:
        """Move to the next mask set (connectivity-agnostic training)."""
        self.mask_index = (self.mask_index + 1) % self.num_masks
        self._install(self.mask_index)

    def masks(self) -> List[Tensor]:
        return [getattr(self, f"mask{i}") for i in range(len(self.layers))]

    def check(self, x: Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dtype not in (torch.long, torch.int32, torch.uint8, torch.bool):
            raise TypeError(f"x must be an integer tensor [B, {self.dim}], got {getattr(x, 'dtype', type(x))}")
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape [B, {self.dim}], got {tuple(x.shape)}")
        _validate.ids_in_range("x values", x, self.levels)

    def encode(self, x: Tensor) -> Tensor:
        """[B, D] long -> one-hot [B, D * levels]."""
        return F.one_hot(x.long(), self.levels).flatten(1).float()

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """x [B, D] -> logits [B, levels, D]."""
        if cond is not None:
            raise ValueError("MADE is unconditional; cond must be None")
        self.check(x)
        h = self.encode(x)
        for i, (layer, mask) in enumerate(zip(self.layers, self.masks())):
            h = F.linear(h, layer.weight * mask, layer.bias)
            if i + 1 < len(self.layers):
                h = F.relu(h)
        return h.view(x.shape[0], self.dim, self.levels).transpose(1, 2)

    def loss(self, x: Tensor, cond: Optional[Tensor] = None, average_masks: bool = False) -> Tensor:
        """NLL in bits/dim; ``average_masks`` averages the probabilities over all mask sets."""
        if not average_masks or self.num_masks == 1:
            return F.cross_entropy(self(x, cond), x.long()) / math.log(2)
        current = self.mask_index
        log_probs = []
        for i in range(self.num_masks):
            self._install(i)
            log_probs.append(-F.cross_entropy(self(x, cond), x.long(), reduction="none").sum(1))
        self._install(current)
        log_p = torch.logsumexp(torch.stack(log_probs), 0) - math.log(self.num_masks)
        return -log_p.mean() / (self.dim * math.log(2))

    def incremental(self, x: Tensor, cond: Optional[Tensor] = None) -> "_MADECache":
        """The sampling cache for vectors like x [B, D] (``fastgen.sampling.SequenceCache``)."""
        if cond is not None:
            raise ValueError("MADE is unconditional; cond must be None")
        return _MADECache(self, x.shape[0], x.device)


class _MADECache:
    """First-layer pre-activations updated one dimension at a time, output rows on demand."""

    def __init__(self, model: MADE, batch: int, device: torch.device):
        self.model = model
        first = model.layers[0]
        self.w_first = first.weight * model.masks()[0]               # [H1, D * levels]
        # pre-activation of the all-zero one-hot input: only the bias
        self.a_first = first.bias.expand(batch, -1).clone()

    def write(self, d: int, values: Tensor) -> None:
        """Dimension d took ``values [B]``: add its one-hot column block."""
        col = d * self.model.levels + values.long()                  # [B]
        self.a_first += self.w_first[:, col].T

    def logits(self, d: int) -> Tensor:
        """[B, levels] logits of dimension d given everything written so far."""
        m = self.model
        h = F.relu(self.a_first)
        masks = m.masks()
        for layer, mask in zip(m.layers[1:-1], masks[1:-1]):
            h = F.relu(F.linear(h, layer.weight * mask, layer.bias))
        rows = slice(d * m.levels, (d + 1) * m.levels)
        last = m.layers[-1]
        return F.linear(h, last.weight[rows] * masks[-1][rows], last.bias[rows])
