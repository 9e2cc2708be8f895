"""Unnormalised 2-D target densities p(z) = exp(-U(z)) / Z for fitting a variational flow by
the reverse KL, the four energies of Rezende & Mohamed, "Variational Inference with Normalizing
Flows" (ICML 2015), section 6.1, figure 3.  With z = (z1, z2) and

    w1(z) = sin(2 pi z1 / 4),   w2(z) = 3 exp(-((z1 - 1) / 0.6)^2 / 2),   w3(z) = 3 sigmoid((z1 - 1) / 0.3):

    U1(z) = ((|z| - 2) / 0.4)^2 / 2 - log(exp(-((z1 - 2) / 0.6)^2 / 2) + exp(-((z1 + 2) / 0.6)^2 / 2))
    U2(z) = ((z2 - w1(z)) / 0.4)^2 / 2
    U3(z) = -log(exp(-((z2 - w1(z)) / 0.35)^2 / 2) + exp(-((z2 - w1(z) + w2(z)) / 0.35)^2 / 2))
    U4(z) = -log(exp(-((z2 - w1(z)) / 0.4)^2 / 2) + exp(-((z2 - w1(z) + w3(z)) / 0.35)^2 / 2))

U1 is a ring of radius 2 with two lobes at z1 = +-2; U2..U4 are a sine wave along z1 (U3 split
into two branches around z1 = 1, U4 into two branches to the right of z1 = 1).

One change from the paper: exp(-U2), exp(-U3) and exp(-U4) do not depend on z1 far from the
origin, so they have infinite mass and KL(q || p) has no minimum (q could spread along z1
forever).  The paper shows them on the square [-4, 4]^2; here every target is that square's:
``energy`` adds a soft wall sum_i (max(|z_i| - 4, 0) / 0.4)^2 / 2 outside it, zero inside, so
inside the square U is the paper's exactly and every target is a proper density.  Its log Z
comes from quadrature (``log_normalizer``), which makes E_q[log q(z) + U(z)] + log Z the KL
itself, in nats.
"""
import functools
import math
from typing import Callable, Dict, NamedTuple

import torch
from torch import Tensor

BOX = 4.0             # the square [-BOX, BOX]^2 of the paper's figure 3
WALL_WIDTH = 0.4      # the soft wall's scale outside the square (the widths of U's own terms)


def _w1(z1: Tensor) -> Tensor:
    return torch.sin(2 * math.pi * z1 / 4)


def _w2(z1: Tensor) -> Tensor:
    return 3 * torch.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)


def _w3(z1: Tensor) -> Tensor:
    return 3 * torch.sigmoid((z1 - 1) / 0.3)


def _neg_log_sum_gauss(a: Tensor, b: Tensor) -> Tensor:
    """-log(exp(-a^2 / 2) + exp(-b^2 / 2)), computed without underflow."""
    return -torch.logaddexp(-0.5 * a * a, -0.5 * b * b)


def _u1(z1: Tensor, z2: Tensor) -> Tensor:
    ring = 0.5 * ((torch.sqrt(z1 * z1 + z2 * z2) - 2) / 0.4) ** 2
    return ring + _neg_log_sum_gauss((z1 - 2) / 0.6, (z1 + 2) / 0.6)


def _u2(z1: Tensor, z2: Tensor) -> Tensor:
    return 0.5 * ((z2 - _w1(z1)) / 0.4) ** 2


def _u3(z1: Tensor, z2: Tensor) -> Tensor:
    d = z2 - _w1(z1)
    return _neg_log_sum_gauss(d / 0.35, (d + _w2(z1)) / 0.35)


def _u4(z1: Tensor, z2: Tensor) -> Tensor:
    d = z2 - _w1(z1)
    return _neg_log_sum_gauss(d / 0.4, (d + _w3(z1)) / 0.35)


PAPER_ENERGIES: Dict[str, Callable[[Tensor, Tensor], Tensor]] = {"u1": _u1, "u2": _u2, "u3": _u3, "u4": _u4}
NAMES = tuple(PAPER_ENERGIES)


def _check_name(name: str) -> None:
    if name not in PAPER_ENERGIES:
        raise ValueError(f"no target density {name!r}; choose one of {', '.join(NAMES)}")


def paper_energy(name: str, z: Tensor) -> Tensor:
    """The paper's U (module docstring) of ``name`` ('u1'..'u4'), without the wall: z [N, 2] -> [N]."""
    _check_name(name)
    if z.dim() != 2 or z.shape[1] != 2:
        raise ValueError(f"z must be [N, 2], got {tuple(z.shape)}")
    return PAPER_ENERGIES[name](z[:, 0], z[:, 1])


def wall(z: Tensor) -> Tensor:
    """The soft wall around the square [-4, 4]^2: z [N, 2] -> [N], zero inside the square."""
    outside = (z.abs() - BOX).clamp_min(0) / WALL_WIDTH
    return 0.5 * (outside * outside).sum(1)


def energy(name: str, z: Tensor) -> Tensor:
    """The target energy U(z) of ``name`` ('u1'..'u4'): the paper's inside [-4, 4]^2 plus the
    soft wall outside it (module docstring).  z [N, 2] float -> U [N], p(z) = exp(-U(z)) / Z."""
    return paper_energy(name, z) + wall(z)


class Grid(NamedTuple):
    """A square grid of cell centres over [-extent, extent]^2, rows from z2 = +extent (top) down
    to -extent and columns from z1 = -extent (left) to +extent: how images show the plane."""
    points: Tensor       # [size * size, 2] (z1, z2) of the cells, row by row
    size: int
    extent: float
    cell: float          # the side of a cell


def grid(size: int, extent: float = BOX, dtype: torch.dtype = torch.float32) -> Grid:
    """``size`` x ``size`` cell centres over [-extent, extent]^2 (see ``Grid``)."""
    cell = 2 * extent / size
    centres = -extent + cell * (torch.arange(size, dtype=dtype) + 0.5)
    z2, z1 = torch.meshgrid(centres.flip(0), centres, indexing="ij")
    return Grid(torch.stack([z1.reshape(-1), z2.reshape(-1)], 1), size, extent, cell)


@functools.lru_cache(maxsize=None)
def log_normalizer(name: str) -> float:
    """log Z = log of the integral of exp(-U) over the plane (``energy``, wall included), by the
    midpoint rule in float64 on a 1200 x 1200 grid over [-8.8, 8.8]^2: beyond it the wall alone
    holds exp(-U) below 2 exp(-72), and the cells (0.015) are small against U's scales (>= 0.3):
    within 1e-7 nats of a grid four times finer."""
    _check_name(name)
    extent = BOX + 12 * WALL_WIDTH
    g = grid(1200, extent, torch.float64)
    log_cells = torch.cat([-energy(name, chunk) for chunk in g.points.split(1 << 20)])
    return float(torch.logsumexp(log_cells, 0)) + 2 * math.log(g.cell)
