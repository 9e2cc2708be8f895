"""PixelCNN / Gated PixelCNN: incremental == full forward, fast == naive samples, causality,
the sampling protocol and its graph path, training, data loaders, the demo, and errors."""
import gc
import weakref

import numpy as np
import pytest
import torch

from fastgen import cli
from fastgen.data import load_array, load_digits
from fastgen.models import GatedPixelCNN, PixelCNN, PixelCNNpp
from fastgen.sampling import autoregressive, sample
from fastgen.sampling.graphs import EagerReplayBackend, GraphCache

MODELS = {
    "gated-grey": lambda: GatedPixelCNN((1, 7, 6), levels=9, channels=12, layers=4),
    "gated-2ch-classes": lambda: GatedPixelCNN((2, 5, 6), levels=5, channels=8, layers=3, num_classes=3),
    "gated-vector-cond": lambda: GatedPixelCNN((1, 5, 5), levels=4, channels=8, layers=2, cond_channels=6),
    "pixelcnn-rgb": lambda: PixelCNN((3, 5, 6), levels=6, channels=12, residual_blocks=2),
    "pixelcnn-grey-classes": lambda: PixelCNN((1, 6, 5), levels=7, channels=8, residual_blocks=2, num_classes=4),
    "pixelcnnpp-rgb": lambda: PixelCNNpp((3, 4, 4), levels=8, channels=8, nr_resnet=1, nr_mix=2),
    "pixelcnnpp-grey-classes": lambda: PixelCNNpp((1, 4, 8), levels=6, channels=8, nr_resnet=1, nr_mix=3,
                                                  num_classes=2),
}


def _cond(model, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    if model.num_classes:
        return torch.randint(model.num_classes, (n,), generator=g)
    if model.cond_channels:
        return torch.randn(n, model.cond_channels, generator=g)
    return None


def _randomized(name):
    torch.manual_seed(3)
    model = MODELS[name]().eval()
    with torch.no_grad():  # non-trivial biases so that every path matters
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _images(model, n, seed=0):
    return torch.randint(model.levels, (n, *model.image_shape), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", MODELS)
def test_incremental_logits_equal_full_forward(name):
    model = _randomized(name)
    x = _images(model, 3)
    cond = _cond(model, 3)
    with torch.no_grad():
        full = model(x, cond)
        cache = model.incremental(torch.zeros_like(x), cond)
        _, H, W = model.image_shape
        for r in range(H):
            cache.begin_row(r)
            for c in range(W):
                cache.write(r, c, x[:, :, r, c])
                torch.testing.assert_close(cache.logits(r, c), full[:, :, :, r, c], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fast_and_naive_samplers_draw_identical_images(name, temperature):
    model = _randomized(name)
    cond = _cond(model, 4)
    naive = sample(model, 4, cond, "naive", torch.Generator().manual_seed(5), temperature)
    fast = sample(model, 4, cond, "fast", torch.Generator().manual_seed(5), temperature)
    assert torch.equal(naive, fast)
    assert naive.min() >= 0 and naive.max() < model.levels
    assert naive.unique().numel() > 1                       # not a degenerate constant image
    other = sample(model, 4, cond, "fast", torch.Generator().manual_seed(6), temperature)
    assert not torch.equal(fast, other)                      # the generator matters


@pytest.mark.parametrize("name, fused", [("gated-grey", True), ("gated-2ch-classes", False), ("pixelcnn-rgb", False),
                                         ("pixelcnnpp-rgb", True)])
def test_caches_say_whether_they_have_a_fused_step(name, fused):
    """``PixelCache.fused_step``: the Gated PixelCNN's cache is its own fused step for grey
    images with 3x3 kernels, PixelCNN++'s for every image (its mixture draw); PixelCNN's has none."""
    model = _randomized(name)
    cache = model.incremental(torch.zeros(2, *model.image_shape, dtype=torch.long), _cond(model, 2))
    assert (cache.fused_step is cache) if fused else (cache.fused_step is None)


def test_gated_fused_step_draws_into_the_image_and_keeps_to_one_way_of_driving():
    """The fused step writes pixel (r, c) of the cache's own image and returns nothing to copy;
    a cache driven by the step refuses logits/write (their state was never built), and the
    reverse."""
    model = _randomized("gated-grey")
    x = torch.full((2, *model.image_shape), -1)
    cache = model.incremental(x)
    cache.begin_row(0)
    assert cache.fused_step.step(0, 0, torch.randn(2, model.levels), 1.0) is None
    others = torch.ones_like(x, dtype=torch.bool)
    others[:, 0, 0, 0] = False
    assert (x[:, 0, 0, 0] >= 0).all() and (x[others] == -1).all()
    with pytest.raises(RuntimeError, match="one way per cache"):
        cache.logits(0, 1)
    other = model.incremental(torch.zeros_like(x))
    other.begin_row(0)
    other.logits(0, 0)
    with pytest.raises(RuntimeError, match="one way per cache"):
        other.step(0, 0, torch.randn(2, model.levels), 1.0)


GRAPH_MODELS = {   # conditional models (class ids, vectors), each sampled through its fused step
    "gated-grey-classes": lambda: GatedPixelCNN((1, 4, 5), levels=7, channels=8, layers=2, num_classes=3),
    "gated-vector-cond": MODELS["gated-vector-cond"],
    "pixelcnnpp-grey-classes": lambda: PixelCNNpp((1, 4, 4), levels=6, channels=8, nr_resnet=1, nr_mix=2,
                                                  num_classes=3),
}


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_graph_path_replays_one_graph_for_fresh_conditioning_and_keeps_no_request(monkeypatch, name):
    """``sample(cuda_graph=True)`` through the one graph cache (its eager stand-in on the CPU):
    five requests, each with a new conditioning tensor, draw what the eager sampler draws for
    that conditioning (it is copied into the graph's static input, not baked in), capture one
    graph, and keep no request's tensor alive (memory stays flat)."""
    graphs = GraphCache(backend=EagerReplayBackend())
    monkeypatch.setattr(autoregressive, "GRAPHS", graphs)
    torch.manual_seed(3)
    model = GRAPH_MODELS[name]().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    seen, drawn = [], []
    for request in range(5):
        cond = _cond(model, 3, seed=request)
        graphed = sample(model, 3, cond, generator=torch.Generator().manual_seed(7), cuda_graph=True)
        assert torch.equal(graphed, sample(model, 3, cond, generator=torch.Generator().manual_seed(7)))
        seen.append(weakref.ref(cond))
        drawn.append(graphed)
        del cond
    gc.collect()
    assert graphs.captures == 1 and len(graphs) == 1
    assert all(ref() is None for ref in seen)
    assert any(not torch.equal(drawn[0], d) for d in drawn[1:])      # the conditioning mattered
    with pytest.raises(ValueError, match=r"class ids must lie|cond must have shape"):
        bad = torch.tensor([0, 1, 9]) if model.num_classes else torch.zeros(3, model.cond_channels + 1)
        sample(model, 3, bad, cuda_graph=True)           # checked outside the graph


@pytest.mark.parametrize("name", ["gated-2ch-classes", "pixelcnn-rgb"])
def test_completion_keeps_known_pixels_and_samplers_agree(name):
    model = _randomized(name)
    known = _images(model, 3, seed=9)
    mask = torch.zeros_like(known, dtype=torch.bool)
    mask[:, :, :2] = True                                   # the top two rows are given
    mask[1, 0, 3, 2] = True                                 # and one scattered value
    cond = _cond(model, 3)
    outs = [sample(model, 3, cond, m, torch.Generator().manual_seed(2), known=known, known_mask=mask)
            for m in ("naive", "fast")]
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0][mask], known[mask])


@pytest.mark.parametrize("name", ["gated-grey", "pixelcnn-rgb", "pixelcnnpp-rgb"])
def test_causality(name):
    """Perturbing pixel (r, c), channel j never changes the logits of earlier pixels, nor (for
    PixelCNN's channel ordering) of channels <= j at (r, c)."""
    model = _randomized(name)
    C, H, W = model.image_shape
    x = _images(model, 1)
    base = model(x)
    r, c = H // 2, W // 2
    for j in range(C):
        x1 = x.clone()
        x1[0, j, r, c] = (x1[0, j, r, c] + 1) % model.levels
        changed = (model(x1) - base).abs().amax(dim=1)[0] > 1e-6     # [C, H, W]
        before = torch.arange(H * W).view(H, W) < r * W + c
        assert not changed[:, before].any()
        own = changed[:, r, c]
        if model.channel_groups == [list(range(C))]:
            assert not own.any()
        else:
            assert not own[:j + 1].any()


def test_gated_training_reduces_loss_and_beats_uniform():
    torch.manual_seed(0)
    data = load_digits("train")
    model = GatedPixelCNN((1, 8, 8), levels=17, channels=16, layers=3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = data.images[:128]
    first = model.loss(x).item()
    for _ in range(30):
        loss = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.5
    assert first == pytest.approx(np.log2(17), abs=0.5)      # starts near a uniform guess


def test_digits_loader():
    train, test = load_digits("train"), load_digits("test")
    assert train.images.shape[1:] == (1, 8, 8) and train.levels == 17
    assert len(train.images) + len(test.images) == 1797
    assert train.images.min() == 0 and train.images.max() == 16
    assert torch.equal(test.images, load_digits("test").images)       # a fixed split
    with pytest.raises(ValueError, match="split must be"):
        load_digits("validation")


def test_array_loader(tmp_path):
    path = tmp_path / "imgs.npy"
    np.save(path, np.random.randint(0, 4, size=(5, 6, 7, 3)).astype(np.uint8))   # [N, H, W, C]
    data = load_array(path, levels=4)
    assert data.images.shape == (5, 3, 6, 7)
    np.save(path, np.full((2, 4, 4), 9, dtype=np.int32))
    with pytest.raises(ValueError, match=r"pixel values must lie in \[0, 4\)"):
        load_array(path, levels=4)


def test_bad_input_errors():
    model = GatedPixelCNN((1, 5, 5), levels=4, channels=8, layers=2, num_classes=3)
    x = torch.zeros(2, 1, 5, 5, dtype=torch.long)
    cond = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"x must have shape \[B, 1, 5, 5\]"):
        model(torch.zeros(2, 1, 6, 6, dtype=torch.long), cond)
    with pytest.raises(ValueError, match=r"x values must lie in \[0, 4\)"):
        model(x + 4, cond)
    with pytest.raises(TypeError, match="x must be an integer tensor"):
        model(x.float(), cond)
    with pytest.raises(ValueError, match="this model is conditional"):
        model(x)
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 3\)"):
        model(x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="unconditional"):
        GatedPixelCNN((1, 5, 5), levels=4, channels=8, layers=2)(x, cond)
    with pytest.raises(ValueError, match="levels must be an int >= 2"):
        GatedPixelCNN((1, 5, 5), levels=1)
    with pytest.raises(ValueError, match="method must be"):
        sample(model, 2, cond, method="beam")
    with pytest.raises(ValueError, match="n must be a positive int"):
        sample(model, 0, cond)
    with pytest.raises(ValueError, match="temperature must be"):
        sample(model, 2, cond, temperature=0.0)
    with pytest.raises(ValueError, match="known and known_mask must be given together"):
        sample(model, 2, cond, known=x)
    with pytest.raises(ValueError, match="known must have shape"):
        sample(model, 2, cond, known=x[:1], known_mask=torch.ones(1, 1, 5, 5, dtype=torch.bool))


def test_demo_runs(tmp_path, capsys):
    assert cli.main(["demo", "--steps", "20", "--out", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "test bits/dim" in out and "identical values: 100.0%" in out
    assert (tmp_path / "samples.png").stat().st_size > 0
    assert (tmp_path / "completion.png").stat().st_size > 0


@pytest.mark.parametrize("levels,num_classes", [(9, None), (150, 3)])
def test_fast_sampler_with_fused_triton_step_matches_naive(monkeypatch, levels, num_classes):
    monkeypatch.setenv("FASTGEN_BACKEND", "triton")
    torch.manual_seed(1)
    model = GatedPixelCNN((1, 3, 4), levels=levels, channels=16, layers=3, num_classes=num_classes).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    cond = torch.tensor([0, 2]) if num_classes else None
    naive = sample(model, 2, cond, "naive", torch.Generator().manual_seed(4))
    fast = sample(model, 2, cond, "fast", torch.Generator().manual_seed(4))
    assert torch.equal(naive, fast)


def test_pixelcnnpp_likelihood_is_normalized_and_loss_matches_logits():
    torch.manual_seed(0)
    model = PixelCNNpp((3, 4, 8), levels=16, channels=8, nr_resnet=1, nr_mix=3).eval()
    x = torch.randint(16, (2, 3, 4, 8))
    log_p = model(x)
    torch.testing.assert_close(log_p.logsumexp(dim=1), torch.zeros(2, 3, 4, 8), atol=1e-5, rtol=0)
    expected = torch.nn.functional.cross_entropy(log_p, x) / np.log(2)
    torch.testing.assert_close(model.loss(x), expected, rtol=1e-5, atol=1e-5)


def test_pixelcnnpp_has_no_blind_spot():
    torch.manual_seed(0)
    model = PixelCNNpp((1, 8, 8), levels=8, channels=8, nr_resnet=1, nr_mix=2).eval()
    x = torch.randint(8, (1, 1, 8, 8))
    r, c = 5, 3
    base = model(x)[0, :, 0, r, c]
    for rr, cc in [(r - 1, c + 1), (r - 1, c + 4), (r - 3, c + 4), (r, c - 1), (r, c - 3)]:
        x1 = x.clone()
        x1[0, 0, rr, cc] = (x1[0, 0, rr, cc] + 3) % 8
        assert (model(x1)[0, :, 0, r, c] - base).abs().max() > 1e-6, f"blind spot at ({rr}, {cc})"


def test_pixelcnnpp_shape_errors():
    with pytest.raises(ValueError, match="divisible by 4"):
        PixelCNNpp((3, 6, 8))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        PixelCNNpp((2, 8, 8))


@pytest.mark.parametrize("make", [
    lambda: PixelCNN((1, 8, 8), levels=17, channels=16, residual_blocks=2),
    lambda: PixelCNNpp((1, 8, 8), levels=17, channels=16, nr_resnet=1, nr_mix=3, dropout=0.0),
], ids=["pixelcnn", "pixelcnnpp"])
def test_training_reduces_loss(make):
    torch.manual_seed(0)
    model = make()
    x = load_digits("train").images[:64]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model.loss(x).item()
    for _ in range(25):
        loss = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.3


@pytest.mark.parametrize("make", [lambda: GatedPixelCNN((1, 5, 5), levels=16, channels=16, layers=2, num_classes=3),
                                  lambda: PixelCNN((3, 4, 4), levels=8, channels=12, num_classes=3),
                                  lambda: PixelCNNpp((3, 4, 4), levels=8, channels=8, nr_resnet=1, nr_mix=2,
                                                     num_classes=3)],
                         ids=["gated", "pixelcnn", "pixelcnnpp"])
def test_models_compute_and_sample_in_bfloat16(make):
    """A model moved to bf16 computes in bf16 (inputs scaled to its dtype) and both samplers
    run; on the CPU (reference convs) they still agree exactly."""
    model = make().eval()
    x = torch.randint(0, model.levels, (2, *model.image_shape))
    cond = torch.tensor([0, 2])
    half = model.to(torch.bfloat16)
    assert half(x, cond).dtype == torch.bfloat16
    assert torch.isfinite(half.loss(x, cond))
    draw = lambda method: sample(half, 2, cond=cond, method=method, generator=torch.Generator().manual_seed(3))
    fast, naive = draw("fast"), draw("naive")
    assert fast.min() >= 0 and fast.max() < model.levels
    assert torch.equal(fast, naive)
