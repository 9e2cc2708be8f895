"""MADE's masks (Germain et al. 2015) and the real-valued Gaussian MADE that MAF and IAF build on.

Degrees (the paper's m(k)), for an ordering of the D dimensions:

- an input unit of dimension d has degree m(d) = the position of d in the ordering (1..D);
- a hidden unit draws m(k) uniformly from [min degree of the previous layer, D - 1];
- a hidden weight k <- j is kept iff m(k) >= m(j); an output weight d <- k iff m(d) > m(k).

So output d depends only on the inputs before d in the ordering.  ``made_masks`` is the one
copy of this construction: the discrete ``fastgen.models.MADE`` and ``GaussianMADE`` both use it.
"""
from typing import List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def ordering_degrees(order: Tensor) -> Tensor:
    """order [D] (a permutation: order[i] is the i-th dimension generated) -> long [D], the degree
    of each dimension: its 1-based position in the ordering."""
    degrees = torch.empty(order.numel(), dtype=torch.long)
    degrees[order] = torch.arange(1, order.numel() + 1)
    return degrees


def made_masks(in_degrees: Tensor, hidden: Sequence[int], out_degrees: Tensor, dim: int,
               generator: Optional[torch.Generator] = None) -> List[Tensor]:
    """The 0/1 weight masks of a MADE (module docstring), one per layer, shaped like the weights.

    in_degrees: long [n_in] degree of each input unit; hidden: the hidden layer sizes; out_degrees:
    long [n_out] degree of each output unit; dim: D; generator draws the hidden degrees (one
    ``randint`` per hidden layer, in order).  Returns masks [hidden[0], n_in], ...,
    [n_out, hidden[-1]] as float32.
    """
    degrees = [in_degrees]
    for size in hidden:
        low = int(degrees[-1].min())
        high = max(low, dim - 1)
        degrees.append(torch.randint(low, high + 1, (size,), generator=generator))
    masks = [(d_out[:, None] >= d_in[None, :]).float() for d_in, d_out in zip(degrees[:-1], degrees[1:])]
    masks.append((out_degrees[:, None] > degrees[-1][None, :]).float())
    return masks


ACTIVATIONS = {"tanh": torch.tanh, "relu": F.relu}


class GaussianMADEOutput(NamedTuple):
    """``shift`` (mu) and ``log_scale`` (alpha), each [B, D]: entry d depends only on the inputs
    before d in the ordering."""
    shift: Tensor
    log_scale: Tensor


class GaussianMADE(nn.Module):
    """A real-valued MADE: x [B, dim] (and optionally cond [B, cond_dim]) -> GaussianMADEOutput
    (shift mu [B, dim], log_scale alpha [B, dim]), with mu_d, alpha_d functions of x_<d only.

    ``order``: the dimensions in generation order (default: natural order 0..dim-1); ``hidden``:
    hidden sizes; the hidden degrees are drawn from ``seed``.  ``activation``: 'tanh' (default)
    or 'relu' between the layers.  tanh keeps alpha bounded far from the data: a ReLU MADE
    extrapolates linearly, and in a stack with reversed orderings exp(-alpha) compounds from layer
    to layer -- a ReLU MAF fitted to two moons overflowed float32 at 1.4x the data's range.  ``cond`` feeds
    every first-layer hidden unit (degree 0: it may influence every output).  The output layer
    starts at zero, so a fresh flow layer built on it is the identity.
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (512, 512), cond_dim: int = 0,
                 order: Optional[Sequence[int]] = None, seed: int = 0, activation: str = "tanh"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
        self._activation = ACTIVATIONS[activation]
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        hidden = tuple(hidden)
        if not hidden or any(not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"hidden must be a non-empty sequence of positive ints, got {hidden!r}")
        if not isinstance(cond_dim, int) or cond_dim < 0:
            raise ValueError(f"cond_dim must be an int >= 0, got {cond_dim!r}")
        order = torch.arange(dim) if order is None else torch.as_tensor(list(order), dtype=torch.long)
        if order.shape != (dim,) or not torch.equal(order.sort().values, torch.arange(dim)):
            raise ValueError(f"order must be a permutation of 0..{dim - 1}, got {order.tolist()}")
        self.dim, self.cond_dim, self.hidden = dim, cond_dim, hidden
        self.order = order.tolist()
        degrees = ordering_degrees(order)
        masks = made_masks(degrees, hidden, degrees.repeat(2), dim, torch.Generator().manual_seed(seed))
        sizes = [dim, *hidden, 2 * dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        for i, mask in enumerate(masks):
            self.register_buffer(f"mask{i}", mask)
        self.cond_layer = nn.Linear(cond_dim, hidden[0], bias=False) if cond_dim else None
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    def masks(self) -> List[Tensor]:
        return [getattr(self, f"mask{i}") for i in range(len(self.layers))]

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> GaussianMADEOutput:
        """x [B, dim], cond [B, cond_dim] or None -> GaussianMADEOutput (unchecked: the flow layers
        check their inputs)."""
        h = x
        for i, (layer, mask) in enumerate(zip(self.layers, self.masks())):
            h = F.linear(h, layer.weight * mask, layer.bias)
            if i == 0 and self.cond_layer is not None:
                h = h + self.cond_layer(cond)
            if i + 1 < len(self.layers):
                h = self._activation(h)
        return GaussianMADEOutput(h[:, :self.dim], h[:, self.dim:])
