"""Energy-based models (issue 12): SGLD (one step equals its formula through the fused diffusion
step; a long run reproduces a Gaussian mixture's moments), the replay buffer (distinct picks, a
rank's block of rows, draws only from the given generator), EBM training steps, JEM (its class
posterior is the classifier's softmax; its energy is -logsumexp), two processes sharing one
buffer under DDP (identical copies, the averaged gradient), the denoising and sliced
score-matching losses against closed forms on a Gaussian, a JEM trained on the digits (slow),
and bad input."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgen.models import EBM, JEM
from fastgen.models.ebm import (BufferPart, EnergyNet, ReplayBuffer, SGLDOptions, denoising_score_matching_loss,
                                energy_grad, process_group_part, sgld, sgld_options_of, sliced_score_matching_loss)

# --------------------------------------------------------------------------------------------
# SGLD


def test_one_sgld_step_is_the_langevin_update():
    """x' = clamp(x - (a/2) grad E(x) + sigma z): the fused step computes exactly this."""
    A = torch.randn(5, 5)
    energy = lambda x: 0.5 * ((x @ A) * x).sum(1) + x.sin().sum(1)     # noqa: E731
    x = torch.randn(7, 5)
    g = torch.Generator().manual_seed(3)
    out = sgld(energy, x, SGLDOptions(steps=1, step_size=0.3, noise=0.2, clamp=(-1.5, 1.5)), generator=g)
    z = torch.randn(7, 5, generator=torch.Generator().manual_seed(3))
    grad = x @ ((A + A.T) / 2) + x.cos()
    torch.testing.assert_close(out, (x - 0.15 * grad + 0.2 * z).clamp(-1.5, 1.5), rtol=1e-5, atol=1e-5)
    exact = sgld(energy, x, SGLDOptions(steps=1, step_size=0.3, noise=None, clamp=None),
                 generator=torch.Generator().manual_seed(3))          # noise None: sqrt(a), exact Langevin
    torch.testing.assert_close(exact, x - 0.15 * grad + math.sqrt(0.3) * z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(energy_grad(energy, x), grad, rtol=1e-5, atol=1e-5)


def test_sgld_reproduces_a_gaussian_mixtures_moments():
    """p = 0.3 N((-0.8, 0.5), 0.5^2 I) + 0.7 N((0.8, -0.5), 0.6^2 I); unadjusted Langevin at a
    small step from a broad start: the mean, the per-coordinate variance and P(x_0 > 0) match."""
    w = torch.tensor([0.3, 0.7])
    mu = torch.tensor([[-0.8, 0.5], [0.8, -0.5]])
    s = torch.tensor([0.5, 0.6])

    def energy(x):                                       # -log p(x) up to a constant
        d = ((x[:, None, :] - mu) ** 2).sum(-1) / s ** 2                    # [B, 2]
        return -torch.logsumexp(w.log() - 2 * s.log() - 0.5 * d, dim=1)
    g = torch.Generator().manual_seed(0)
    x = sgld(energy, torch.randn(2000, 2, generator=g) * 1.5,
             SGLDOptions(steps=400, step_size=0.025, noise=None, clamp=None), generator=g)
    mean = (w[:, None] * mu).sum(0)
    var = (w[:, None] * (s[:, None] ** 2 + mu ** 2)).sum(0) - mean ** 2
    positive = sum(wk * 0.5 * (1 + math.erf(mk / (sk * math.sqrt(2))))
                   for wk, mk, sk in zip(w.tolist(), mu[:, 0].tolist(), s.tolist()))
    torch.testing.assert_close(x.mean(0), mean, atol=0.04, rtol=0)
    torch.testing.assert_close(x.var(0), var, rtol=0.07, atol=0)
    assert abs((x[:, 0] > 0).float().mean().item() - positive) < 0.03


def test_replay_buffer():
    buffer = ReplayBuffer(50, (1, 4, 4))
    assert buffer.images.shape == (50, 1, 4, 4) and buffer.images.abs().max() <= 1
    x, index = buffer.sample(8, reinit=0.0)
    torch.testing.assert_close(x, buffer.images[index])
    buffer.update(index, torch.full_like(x, 0.25))
    assert (buffer.images[index] == 0.25).all()
    fresh, _ = buffer.sample(50, reinit=1.0)             # all restarted from uniform noise
    assert fresh.std() > 0.4
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        ReplayBuffer(0, (1, 4, 4))


def test_replay_buffer_picks_distinct_rows_of_its_block():
    """Distinct rows (one write per row: the same result on every device); with a ``part`` only
    rows of that block (rank 1 of 3 over 10 rows: 3..5)."""
    buffer = ReplayBuffer(10, (1, 4, 4))
    _, index = buffer.sample(10, reinit=0.0)
    assert sorted(index.tolist()) == list(range(10))
    assert [buffer.rows(BufferPart(r, 3)) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]
    for seed in range(5):
        _, index = buffer.sample(3, 0.0, torch.Generator().manual_seed(seed), BufferPart(1, 3))
        assert sorted(index.tolist()) == [3, 4, 5]
    assert process_group_part() == BufferPart(0, 1)          # no process group: the whole buffer
    with pytest.raises(ValueError, match="cannot start 4 chains from 3 rows"):
        buffer.sample(4, part=BufferPart(0, 3))
    with pytest.raises(ValueError, match="0 <= rank < parts"):
        buffer.rows(BufferPart(3, 3))
    saved = buffer.images.clone()
    buffer.update(torch.arange(10), torch.zeros(10, 1, 4, 4))
    buffer.load(saved)
    assert torch.equal(buffer.images, saved) and buffer.images is not saved
    with pytest.raises(ValueError, match=r"must have shape \(10, 1, 4, 4\)"):
        buffer.load(saved[:5])


def test_training_draws_come_from_the_generator_only():
    """EBM's loss (the buffer's picks and restarts, SGLD's noise) reads only the generator: the
    same seed gives the same loss, negatives and buffer, and the global RNG is left alone."""
    torch.manual_seed(0)
    a = EBM((1, 8, 8), channels=4, buffer_size=16, sgld_options={"steps": 3}, reinit=0.5)
    b = copy.deepcopy(a)
    real, _ = _digits(4)
    state = torch.get_rng_state()
    out_a = a.loss(real, torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)
    out_b = b.loss(real, torch.Generator().manual_seed(7))
    assert torch.equal(out_a.loss, out_b.loss) and torch.equal(out_a.negatives, out_b.negatives)
    assert torch.equal(a.buffer.images, b.buffer.images)
    assert "buffer" not in " ".join(a.state_dict())          # training state, not weights


# --------------------------------------------------------------------------------------------
# EBM and JEM


def _digits(n, split="train"):
    from fastgen.data import load_digits
    data = load_digits(split)
    return data.images[:n].float() / 8 - 1, data.labels[:n]


def test_ebm_training_steps():
    torch.manual_seed(0)
    model = EBM((1, 8, 8), channels=8, buffer_size=64, sgld_options=SGLDOptions(steps=5, step_size=2.0))
    real, _ = _digits(16)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    buffer_before = model.buffer.images.clone()
    for _ in range(3):
        out = model.loss(real)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        assert torch.isfinite(out.loss) and out.energy_real.shape == out.energy_fake.shape == (16,)
        assert out.negatives.shape == real.shape and out.negatives.abs().max() <= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not torch.equal(buffer_before, model.buffer.images)   # negatives written back
    samples = model.sample(3, options=SGLDOptions(steps=3))
    assert samples.shape == (3, 1, 8, 8)
    torch.testing.assert_close(model.score(real[:2]), -energy_grad(model.energy, real[:2]))


class _Classifier(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.SiLU(), nn.Conv2d(16, 32, 4, 2, 1), nn.SiLU(),
                                 nn.Flatten(), nn.Linear(32 * 16, classes))

    def forward(self, x):
        return self.net(x)


def test_sgld_options_and_sample_steps():
    """Options from JSON (a dict over the defaults); ``sample`` runs ``sample_steps`` SGLD steps
    from noise drawn from its generator (0 steps: the noise itself)."""
    assert sgld_options_of({"steps": 3, "clamp": [-2, 2]}) == SGLDOptions(steps=3, clamp=(-2, 2))
    assert sgld_options_of([5, 1.0]) == SGLDOptions(5, 1.0)
    with pytest.raises(ValueError, match="unknown SGLD options"):
        sgld_options_of({"stepz": 3})
    model = EBM((1, 8, 8), channels=4, buffer_size=4, sgld_options={"steps": 7}, sample_steps=0)
    assert model.sgld_options.steps == 7 and model.sample_steps == 0
    noise = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    torch.testing.assert_close(model.sample(3, generator=torch.Generator().manual_seed(1)), noise)
    assert EBM((1, 8, 8), channels=4, buffer_size=4, sgld_options={"steps": 7}).sample_steps == 7
    with pytest.raises(ValueError, match="sample_steps must be >= 0"):
        EBM((1, 8, 8), channels=4, buffer_size=4, sample_steps=-1)


def test_jem_posterior_is_the_classifiers_softmax():
    clf = _Classifier()
    jem = JEM(clf, (1, 8, 8), num_classes=10, buffer_size=32)
    x = torch.randn(6, 1, 8, 8)
    logits = clf(x)
    torch.testing.assert_close(jem.class_posterior(x), F.softmax(logits, 1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(jem.energy(x), -logits.logsumexp(1))
    torch.testing.assert_close(jem.log_px_unnormalized(x), logits.logsumexp(1))
    y = torch.tensor([0, 3, 9, 1, 1, 2])
    torch.testing.assert_close(jem.energy(x, y), -logits[torch.arange(6), y])
    # p(y | x) = exp(-E(x, y)) / exp(-E(x)): the joint over the marginal
    torch.testing.assert_close(jem.class_posterior(x)[torch.arange(6), y], (jem.energy(x) - jem.energy(x, y)).exp(),
                               rtol=1e-5, atol=1e-6)


def test_jem_training_steps_and_conditional_sampling():
    torch.manual_seed(0)
    jem = JEM(_Classifier(), (1, 8, 8), num_classes=10, buffer_size=64, sgld_options=SGLDOptions(steps=3))
    x, y = _digits(16)
    opt = torch.optim.Adam(jem.parameters(), 1e-3)
    out = jem.loss(x, y)
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    torch.testing.assert_close(out.loss, out.classification + out.generative)
    assert 0 <= out.accuracy <= 1
    assert jem.sample(4, torch.tensor([0, 1, 2, 3]), options=SGLDOptions(steps=2)).shape == (4, 1, 8, 8)


class _LossOf(nn.Module):
    """A model and its loss as one module, as fastgen train hands it to DDP."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, real, labels, seed):
        return self.model.loss(real, labels, torch.Generator().manual_seed(seed), shared=True).loss


def _check_shared_buffer(rank):
    """Rank ``rank`` of 2 (gloo): JEM under DDP with a shared replay buffer, next to a twin that
    takes the same steps without DDP.  SGLD differentiates the energy with respect to its inputs
    inside DDP's forward; the gradient must still be the ranks' average, and the buffer copies
    must stay identical."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    torch.manual_seed(0)
    model = JEM(EnergyNet((1, 8, 8), channels=4, outputs=10), (1, 8, 8), 10, {"steps": 2}, buffer_size=12,
                reinit=0.25)
    twin = copy.deepcopy(model)
    x, y = _digits(8)
    real, labels = x[4 * rank:4 * rank + 4], y[4 * rank:4 * rank + 4]
    ddp = DistributedDataParallel(_LossOf(model))
    assert process_group_part() == BufferPart(rank, 2)
    before = model.buffer.images.clone()
    for step in range(3):
        for m in (model, twin):
            m.zero_grad()
        ddp(real, labels, 10 * step + rank).backward()
        twin.loss(real, labels, torch.Generator().manual_seed(10 * step + rank), shared=True).loss.backward()
        for p, q in zip(model.parameters(), twin.parameters()):
            mean = q.grad.clone()
            dist.all_reduce(mean)
            torch.testing.assert_close(p.grad, mean / 2, rtol=1e-5, atol=1e-6)
    assert torch.equal(model.buffer.images, twin.buffer.images)
    copies = [torch.empty_like(model.buffer.images) for _ in range(2)]
    dist.all_gather(copies, model.buffer.images)
    assert torch.equal(copies[0], copies[1]), "the ranks' buffers differ"
    changed = (model.buffer.images != before).flatten(1).any(1)
    assert changed[:6].any() and changed[6:].any()     # both ranks' chains were written everywhere


def _shared_buffer_worker(rank, init_file):
    import gc

    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        _check_shared_buffer(rank)
        gc.collect()              # DDP's reducer goes before the process group it uses
        dist.barrier()            # neither rank tears down while the other still communicates
    finally:
        dist.destroy_process_group()


def test_two_processes_share_one_buffer_under_ddp(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_shared_buffer_worker, args=(str(tmp_path / "init"),), nprocs=2, join=True)


def test_energy_model_errors():
    jem = JEM(_Classifier(), (1, 8, 8), num_classes=10, buffer_size=8)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 1, 8, 8\]"):
        jem.loss(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        jem.loss(torch.zeros(2, 1, 8, 8), torch.tensor([0, 10]))
    with pytest.raises(ValueError, match=r"the classifier must return logits \[2, 10\]"):
        JEM(_Classifier(5), (1, 8, 8), num_classes=10).logits(torch.zeros(2, 1, 8, 8))
    with pytest.raises(TypeError, match="classifier must be an nn.Module"):
        JEM(lambda x: x, (1, 8, 8), num_classes=10)
    with pytest.raises(ValueError, match="image_shape must be square"):
        EBM((1, 8, 10))
    with pytest.raises(ValueError, match="labels given but the model is unconditional"):
        EBM((1, 8, 8), channels=4, buffer_size=4).energy(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="step_size > 0"):
        sgld(lambda x: x.sum(1), torch.zeros(2, 3), SGLDOptions(step_size=0.0))
    with pytest.raises(ValueError, match=r"the energy must return one value per sample \[2\]"):
        sgld(lambda x: x, torch.zeros(2, 3))


@pytest.mark.slow
def test_jem_on_digits():
    """JEM on the bundled digits (400 steps, a few minutes on a CPU): a good classifier of the test
    split (0.953 here), SGLD samples whose energy is below uniform noise's, and class-conditional
    samples the classifier assigns to their class."""
    torch.manual_seed(0)
    x, y = _digits(2000)
    xt, yt = _digits(2000, "test")
    jem = JEM(_Classifier(), (1, 8, 8), num_classes=10, buffer_size=2000, sgld_options=SGLDOptions(steps=20))
    opt = torch.optim.Adam(jem.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        pick = torch.randint(len(x), (64,), generator=g)
        noisy = x[pick] + 0.03 * torch.randn(64, 1, 8, 8, generator=g)   # JEM's data noise
        out = jem.loss(noisy, y[pick], g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert jem.accuracy(xt, yt) > 0.9
    noise = torch.rand(64, 1, 8, 8) * 2 - 1
    samples = jem.sample(64, init=noise, options=SGLDOptions(steps=60))
    assert jem.energy(samples).mean() < jem.energy(noise).mean()
    wanted = torch.arange(10).repeat(2)                  # p(x | y) by SGLD on E(x, y) = -f(x)[y]
    drawn = jem.sample(20, wanted, options=SGLDOptions(steps=60))
    assert (jem.logits(drawn).argmax(1) == wanted).float().mean() >= 0.8


# --------------------------------------------------------------------------------------------
# Score matching


def _gaussian_score(m, v):
    """The score of N(m, v I): s(x) = -(x - m) / v."""
    return lambda x: -(x - m) / v


def test_denoising_score_matching_per_sample_and_in_expectation():
    """With s(x) = -(x - m)/v on data x ~ N(mu, tau^2 I) in d dims:
    1/2 |s(x + sigma z) + z / sigma|^2 per sample, and in expectation
    d/2 [((mu - m)^2 + tau^2) / v^2 + (1/sigma - sigma/v)^2], minimised at m = mu, v = tau^2 + sigma^2."""
    d, mu, tau, sigma, m, v = 3, 0.7, 1.3, 0.4, 0.2, 1.5
    x = mu + tau * torch.randn(7, d, dtype=torch.float64)
    z = torch.randn(7, d, dtype=torch.float64)
    loss = denoising_score_matching_loss(_gaussian_score(m, v), x, sigma, noise=z)
    ref = 0.5 * (-(x + sigma * z - m) / v + z / sigma).square().sum(1).mean()
    torch.testing.assert_close(loss, ref)
    g = torch.Generator().manual_seed(0)
    big = mu + tau * torch.randn(400000, d, dtype=torch.float64, generator=g)
    expected = d / 2 * (((mu - m) ** 2 + tau ** 2) / v ** 2 + (1 / sigma - sigma / v) ** 2)
    mc = denoising_score_matching_loss(_gaussian_score(m, v), big, sigma, generator=g)
    assert abs(mc.item() - expected) / expected < 0.01
    # the minimiser: the noised data's score
    best = denoising_score_matching_loss(_gaussian_score(mu, tau ** 2 + sigma ** 2), big, sigma, generator=g)
    assert best < mc


def test_denoising_score_matching_per_sample_sigmas():
    x, z = torch.randn(4, 2, 3), torch.randn(4, 2, 3)
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0])
    seen = {}

    def score(noisy, s):
        seen["sigma"] = s
        return -noisy
    loss = denoising_score_matching_loss(score, x, sigma, noise=z)
    s = sigma.view(4, 1, 1)
    torch.testing.assert_close(loss, 0.5 * (-(x + s * z) + z / s).square().flatten(1).sum(1).mean())
    assert seen["sigma"] is sigma
    weighted = denoising_score_matching_loss(score, x, sigma, noise=z, sigma_weighting=True)   # NCSN's lambda
    torch.testing.assert_close(weighted, 0.5 * (-s * (x + s * z) + z).square().flatten(1).sum(1).mean())
    with pytest.raises(ValueError, match=r"sigma must be a float or a tensor \[4\]"):
        denoising_score_matching_loss(score, x, sigma[:3])
    with pytest.raises(ValueError, match="sigma must be > 0"):
        denoising_score_matching_loss(lambda v: v, x, 0.0)
    with pytest.raises(ValueError, match="the score must have the shape of x"):
        denoising_score_matching_loss(lambda v: v[:, 0], x, 1.0)


@pytest.mark.parametrize("variance_reduction", [False, True], ids=["ssm", "ssm-vr"])
def test_sliced_score_matching_closed_forms(variance_reduction):
    """A linear score s(x) = A x + b: per direction v^T A v + 1/2 (v^T s)^2 (or 1/2 |s|^2), and in
    expectation Hyvarinen's objective tr(A) + 1/2 E|A x + b|^2 for both distributions of v."""
    d = 4
    A, b = torch.randn(d, d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    score = lambda x: x @ A.T + b                        # noqa: E731
    x = torch.randn(5, d, dtype=torch.float64)
    vectors = torch.randn(3, 5, d, dtype=torch.float64)
    loss = sliced_score_matching_loss(score, x, vectors=vectors, variance_reduction=variance_reduction)
    s = score(x)
    quad = torch.einsum("pbi,ij,pbj->pb", vectors, A, vectors)
    second = 0.5 * s.square().sum(1) if variance_reduction else 0.5 * (vectors * s).sum(-1).square()
    torch.testing.assert_close(loss, (quad + second).mean())
    g = torch.Generator().manual_seed(0)
    big = torch.randn(20000, d, dtype=torch.float64, generator=g)
    hyvarinen = torch.trace(A) + 0.5 * score(big).square().sum(1).mean()
    for distribution in ("gaussian", "rademacher"):
        mc = sliced_score_matching_loss(score, big, projections=4, distribution=distribution,
                                        variance_reduction=variance_reduction, generator=g)
        assert abs(mc - hyvarinen) < 0.05 * (1 + abs(hyvarinen)), (distribution, mc, hyvarinen)


def test_sliced_score_matching_trains_a_gaussian_score():
    """Minimising SSM-VR over s(x) = -(x - m) / v recovers the data's mean and variance."""
    data = 0.5 + 1.5 * torch.randn(4000, 2, generator=torch.Generator().manual_seed(0))
    m = torch.zeros(2, requires_grad=True)
    log_v = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([m, log_v], 0.05)
    for _ in range(300):
        loss = sliced_score_matching_loss(lambda x: -(x - m) / log_v.exp(), data, variance_reduction=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.testing.assert_close(m.detach(), torch.full((2,), 0.5), atol=0.1, rtol=0)
    assert abs(log_v.exp().item() - 2.25) < 0.2


def test_sliced_score_matching_errors():
    with pytest.raises(ValueError, match="distribution must be 'gaussian' or 'rademacher'"):
        sliced_score_matching_loss(lambda x: x, torch.zeros(2, 3), distribution="uniform")
    with pytest.raises(ValueError, match=r"vectors must have shape \[projections, 2, 3\]"):
        sliced_score_matching_loss(lambda x: x, torch.zeros(2, 3), vectors=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="the score must have the shape of x"):
        sliced_score_matching_loss(lambda x: x.sum(1), torch.zeros(2, 3))
