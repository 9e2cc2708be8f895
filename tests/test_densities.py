"""The 2-D target densities of Rezende & Mohamed 2015 (fastgen.data.densities): the energies
against their formulas, where U1's ring and lobes lie, the soft wall, log Z against a closed
form, and the picture fastgen sample draws of a density flow's samples."""
import math

import numpy as np
import pytest
import torch

from fastgen.data import densities
from fastgen.train.generate import density_pixels


def _gauss(a):
    return math.exp(-0.5 * a * a)


def _formula(name, z1, z2):
    """The paper's energies (figure 3), written out again in scalar math."""
    w1 = math.sin(2 * math.pi * z1 / 4)
    w2 = 3 * _gauss((z1 - 1) / 0.6)
    w3 = 3 / (1 + math.exp(-(z1 - 1) / 0.3))
    if name == "u1":
        return (0.5 * ((math.hypot(z1, z2) - 2) / 0.4) ** 2
                - math.log(_gauss((z1 - 2) / 0.6) + _gauss((z1 + 2) / 0.6)))
    if name == "u2":
        return 0.5 * ((z2 - w1) / 0.4) ** 2
    if name == "u3":
        return -math.log(_gauss((z2 - w1) / 0.35) + _gauss((z2 - w1 + w2) / 0.35))
    return -math.log(_gauss((z2 - w1) / 0.4) + _gauss((z2 - w1 + w3) / 0.35))


POINTS = [(0.0, 0.0), (2.0, 0.0), (0.0, 2.0), (1.0, 1.0), (-1.3, 0.7), (0.5, -2.2), (3.9, -3.9), (1.0, -2.0)]


@pytest.mark.parametrize("name", densities.NAMES)
def test_energies_match_the_papers_formulas_inside_the_square(name):
    z = torch.tensor(POINTS, dtype=torch.float64)
    want = torch.tensor([_formula(name, *p) for p in POINTS], dtype=torch.float64)
    torch.testing.assert_close(densities.energy(name, z), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(densities.paper_energy(name, z), want, rtol=1e-12, atol=1e-12)
    # float32 in, float32 out, and finite far out (the log-sum-exp forms do not underflow)
    far = densities.energy(name, torch.tensor([[30.0, -30.0], [0.0, 50.0]]))
    assert far.dtype == torch.float32 and torch.isfinite(far).all()


def test_hand_values():
    z = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 0.4]], dtype=torch.float64)
    u1 = densities.energy("u1", z)
    assert abs(u1[0]) < 1e-9                                         # on the ring, at a lobe's centre
    assert abs(u1[1] - (0.5 * (2 / 0.6) ** 2 - math.log(2))) < 1e-12  # on the ring, between the lobes
    u2 = densities.energy("u2", z)
    assert abs(u2[2]) < 1e-12 and abs(u2[3] - 0.5) < 1e-12          # on the wave; one width (0.4) off it


def test_u1_is_a_ring_of_radius_2_with_its_minima_at_the_lobes():
    lobes = torch.tensor([[2.0, 0.0], [-2.0, 0.0]], dtype=torch.float64)
    least = densities.energy("u1", lobes)                            # -log(1 + exp(-(4 / 0.6)^2 / 2))
    torch.testing.assert_close(least, torch.full((2,), -math.log1p(math.exp(-0.5 * (4 / 0.6) ** 2)),
                                                 dtype=torch.float64))
    g = densities.grid(400, dtype=torch.float64)                     # cells of 0.02 over [-4, 4]^2
    u = densities.energy("u1", g.points)
    assert (u >= least[0]).all()
    # the low ground (within 0.05 of the minimum) is the ring near the two lobes, nothing else: the
    # ring term alone limits it to |r - 2| <= 0.4 sqrt(2 * 0.05), the lobe term to |z1| >= 2 - 0.6 sqrt(0.1)
    low = g.points[u < least[0] + 0.05]
    assert ((low.norm(dim=1) - 2).abs() <= 0.4 * math.sqrt(0.1)).all() and (low[:, 0].abs() > 1.8).all()
    assert (low[:, 0] > 0).any() and (low[:, 0] < 0).any()
    # along every ray the energy is least near radius 2 (the lobe term moves it a little off the axes)
    radii = torch.linspace(0.5, 3.5, 601, dtype=torch.float64)
    for angle in torch.linspace(0, 2 * math.pi, 13, dtype=torch.float64)[:-1]:
        ray = torch.stack([radii * torch.cos(angle), radii * torch.sin(angle)], 1)
        r_min = radii[densities.energy("u1", ray).argmin()]
        assert abs(r_min - 2) < 0.25, (float(angle), float(r_min))


def test_soft_wall_outside_the_square_only():
    inside = torch.tensor([[4.0, -4.0], [-3.5, 2.0]])
    assert (densities.wall(inside) == 0).all()
    z = torch.tensor([[5.0, 0.0], [0.0, -4.8], [4.4, 4.4]], dtype=torch.float64)
    torch.testing.assert_close(densities.wall(z), torch.tensor([0.5 * 2.5 ** 2, 0.5 * 2.0 ** 2, 2 * 0.5 * 1.0],
                                                               dtype=torch.float64))
    torch.testing.assert_close(densities.energy("u2", z), densities.paper_energy("u2", z) + densities.wall(z))


def test_log_normalizer_matches_the_closed_form_of_u2():
    # exp(-U2) is a Gaussian of width s = 0.4 in z2 - w1(z1) for every z1 (the wall in z2, 7.5
    # widths off the wave, holds no mass): Z = s sqrt(2 pi) * (8 + the two half-Gaussians of the
    # wall in z1, s sqrt(2 pi) together)
    s = 0.4 * math.sqrt(2 * math.pi)
    assert abs(densities.log_normalizer("u2") - math.log(s * (8 + s))) < 1e-6
    for name in densities.NAMES:                                     # U1: a ring of length ~4 pi, width 0.4
        assert 1.0 < densities.log_normalizer(name) < 3.5


def test_bad_names_and_shapes():
    with pytest.raises(ValueError, match="u1, u2, u3, u4"):
        densities.energy("u9", torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        densities.energy("u1", torch.zeros(3, 3))


def test_picture_puts_the_target_left_and_the_samples_right_on_one_grid():
    size = 64
    points = torch.tensor([[2.0, 0.0]] * 5 + [[-1.0, 3.0]] * 2 + [[9.0, 0.0]])   # the last one off the picture
    pixels = density_pixels(points, "u1", size)
    assert pixels.shape == (size, 2 * size + 1, 3) and pixels.dtype == np.uint8
    assert (pixels[:, size] == 255).all()                            # the white column between the panels
    brightness = pixels.astype(np.float64).sum(2)
    target, samples = brightness[:, :size], brightness[:, size + 1:]
    cell = 8 / size
    row, col = np.unravel_index(samples.argmax(), samples.shape)
    assert abs((col + 0.5) * cell - 4 - 2) <= cell and abs(4 - (row + 0.5) * cell) <= cell
    assert (samples > samples.min()).sum() == 2                      # two occupied cells, nothing else
    rows, cols = np.nonzero(target == target.max())                  # the brightest: U1's low ground by the lobes
    z1, z2 = (cols + 0.5) * cell - 4, 4 - (rows + 0.5) * cell
    assert (np.abs(np.hypot(z1, z2) - 2) < 0.2).all() and (np.abs(z1) > 1.5).all()
    assert target[size // 2, size // 2] == target.min()               # dark in the middle of the ring
