"""MADE: the autoregressive property of the masks, sampler equivalence, training."""
import pytest
import torch

from fastgen.data import load_digits
from fastgen.models import MADE
from fastgen.sampling import sample_sequence


def _randomized(**kw):
    torch.manual_seed(0)
    model = MADE(**kw).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("kw", [
    dict(dim=7, hidden=(20, 16), levels=2),
    dict(dim=6, hidden=(24,), levels=5, natural_ordering=False, num_masks=3, seed=2),
    dict(dim=9, hidden=(30, 30, 30), levels=3, natural_ordering=False, seed=1),
], ids=["binary-natural", "categorical-random-order", "three-hidden"])
def test_output_depends_only_on_earlier_inputs(kw):
    """The Jacobian of output d w.r.t. input e is zero unless e comes before d in the ordering
    (and nonzero for at least some earlier e: the masks do not cut everything)."""
    model = _randomized(**kw)
    for mask_set in range(model.num_masks):
        position = {d: i for i, d in enumerate(model.order)}
        x = torch.randint(model.levels, (1, model.dim))
        one_hot = model.encode(x).requires_grad_()

        def logits_from(h):
            for i, (layer, mask) in enumerate(zip(model.layers, model.masks())):
                h = torch.nn.functional.linear(h, layer.weight * mask, layer.bias)
                h = torch.relu(h) if i + 1 < len(model.layers) else h
            return h.view(model.dim, model.levels)

        jac = torch.autograd.functional.jacobian(logits_from, one_hot)   # [D, levels, 1, D*levels]
        dep = jac.abs().sum(dim=(1, 2)).view(model.dim, model.dim, model.levels).sum(-1) > 0   # [out d, in e]
        for d in range(model.dim):
            for e in range(model.dim):
                if dep[d, e]:
                    assert position[e] < position[d], (mask_set, d, e)
        assert dep.any()
        model.next_mask()


@pytest.mark.parametrize("levels,natural", [(2, True), (4, False)])
def test_fast_and_naive_sampling_agree(levels, natural):
    model = _randomized(dim=10, hidden=(32, 32), levels=levels, natural_ordering=natural, seed=3)
    naive = sample_sequence(model, 6, "naive", torch.Generator().manual_seed(1), 0.8)
    fast = sample_sequence(model, 6, "fast", torch.Generator().manual_seed(1), 0.8)
    assert torch.equal(naive, fast)
    assert naive.unique().numel() > 1


def test_incremental_logits_equal_forward():
    model = _randomized(dim=8, hidden=(16, 16), levels=3, natural_ordering=False, seed=4)
    x = torch.randint(3, (4, 8))
    full = model(x)
    cache = model.incremental(torch.zeros_like(x))
    for d in model.order:
        torch.testing.assert_close(cache.logits(d), full[:, :, d], rtol=1e-5, atol=1e-5)
        cache.write(d, x[:, d])


def test_training_on_binarized_digits_beats_independent_baseline():
    torch.manual_seed(0)
    x = (load_digits("train").images.flatten(1) > 6).long()[:512]    # [N, 64] binary
    model = MADE(64, hidden=(128,), levels=2, num_masks=2, natural_ordering=False, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    p = x.float().mean(0).clamp(1e-3, 1 - 1e-3)                      # independent Bernoullis
    baseline = -(x * p.log2() + (1 - x) * (1 - p).log2()).mean()
    for _ in range(150):
        loss = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.next_mask()
    with torch.no_grad():
        assert model.loss(x, average_masks=True) < baseline - 0.05


def test_errors():
    model = MADE(5, hidden=(8,), levels=3)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 5\]"):
        model(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x values must lie in \[0, 3\)"):
        model(torch.full((2, 5), 3))
    with pytest.raises(ValueError, match="levels must be an int >= 2"):
        MADE(5, levels=1)
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.zeros(2, 5, dtype=torch.long), cond=torch.zeros(2))


def test_random_ordering_is_random_even_with_one_mask_set():
    model = MADE(12, hidden=(16,), natural_ordering=False, num_masks=1, seed=0)
    assert sorted(model.order) == list(range(12)) and model.order != list(range(12))
