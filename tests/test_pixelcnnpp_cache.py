"""PixelCNN++'s per-layer sampling cache: logits equal the full forward at every pixel, every
layer position is computed exactly once and only from final inputs, fast == naive samples."""
import pytest
import torch

from fastgen.models import PixelCNNpp
from fastgen.models.pixelcnnpp_cache import PixelCNNppCache
from fastgen.sampling import sample

MODELS = {
    "grey-8x8-resnet2": lambda: PixelCNNpp((1, 8, 8), levels=16, channels=8, nr_resnet=2, nr_mix=3),
    "rgb-8x8-classes": lambda: PixelCNNpp((3, 8, 8), levels=16, channels=8, nr_resnet=1, nr_mix=2, num_classes=3),
    "rgb-4x8-vector-cond-resnet2": lambda: PixelCNNpp((3, 4, 8), levels=32, channels=6, nr_resnet=2, nr_mix=2,
                                                      cond_channels=5),
    "grey-8x4": lambda: PixelCNNpp((1, 8, 4), levels=8, channels=8, nr_resnet=1, nr_mix=2),
}
# The same tests with the GatedResnet steps on the Triton kernels (FASTGEN_BACKEND=triton; the
# interpreter on the CPU): their channels must be multiples of 16; 4x4 images keep the
# interpreter's time down (level 2 is then a single position, still every layer runs).
TRITON_MODELS = {
    "triton-rgb-4x4-classes-C16": lambda: PixelCNNpp((3, 4, 4), levels=16, channels=16, nr_resnet=1, nr_mix=2,
                                                     num_classes=3),
    "triton-grey-4x4-vector-cond-C16": lambda: PixelCNNpp((1, 4, 4), levels=16, channels=16, nr_resnet=1,
                                                          nr_mix=2, cond_channels=5),
}
ALL_MODELS = [*MODELS, *TRITON_MODELS]


@pytest.fixture
def backend(name, monkeypatch):
    """Forces the Triton backend for the ``triton-`` models (the reference otherwise runs on the CPU)."""
    if name in TRITON_MODELS:
        monkeypatch.setenv("FASTGEN_BACKEND", "triton")


def _model(name):
    torch.manual_seed(3)
    model = {**MODELS, **TRITON_MODELS}[name]().eval()
    with torch.no_grad():   # non-trivial biases, so that every path matters
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _cond(model, n):
    g = torch.Generator().manual_seed(1)
    if model.num_classes:
        return torch.randint(model.num_classes, (n,), generator=g)
    if model.cond_channels:
        return torch.randn(n, model.cond_channels, generator=g)
    return None


@pytest.mark.parametrize("name", ALL_MODELS)
@torch.no_grad()
def test_cache_logits_equal_full_forward_and_each_position_is_computed_once_from_final_inputs(name, backend):
    """Every map starts as NaN inside its zero padding (and so do the image's unwritten pixels):
    a position read before it is computed would turn the logits NaN.  At every pixel the logits
    must equal the full forward's (the full image given: the model never looks ahead), and after
    the whole image every position of every layer has been computed exactly once."""
    model = _model(name)
    C, H, W = model.image_shape
    x = torch.randint(model.levels, (3, C, H, W), generator=torch.Generator().manual_seed(0))
    cond = _cond(model, 3)
    full = model(x, cond)
    cache = PixelCNNppCache(model, torch.zeros_like(x), cond, track_writes=True)
    assert len(cache.maps) > 10
    for m in cache.maps + [cache.image]:
        m.data[:, :, 1:, 1:-1] = float("nan")
    cache.image.data[:, C, 1:, 1:-1] = 1.0          # the constant ones channel
    for r in range(H):
        cache.begin_row(r)
        for c in range(W):
            cache.write(r, c, x[:, :, r, c])
            torch.testing.assert_close(cache.logits(r, c), full[:, :, :, r, c], rtol=1e-5, atol=1e-5)
    for m in cache.maps:
        assert torch.equal(m.writes, torch.ones_like(m.writes)), m.writes


@pytest.mark.parametrize("name", [*MODELS, "triton-rgb-4x4-classes-C16"])   # (the interpreter is slow)
def test_fast_and_naive_samplers_draw_identical_images(name, backend):
    model = _model(name)
    cond = _cond(model, 3)
    naive = sample(model, 3, cond, "naive", torch.Generator().manual_seed(5), temperature=0.9)
    fast = sample(model, 3, cond, "fast", torch.Generator().manual_seed(5), temperature=0.9)
    assert torch.equal(naive, fast)
    assert naive.unique().numel() > 2


@pytest.mark.parametrize("name", ["rgb-8x8-classes", "grey-8x4"])
def test_completion_samplers_agree_and_keep_known_pixels(name):
    model = _model(name)
    C, H, W = model.image_shape
    known = torch.randint(model.levels, (2, C, H, W), generator=torch.Generator().manual_seed(9))
    mask = torch.zeros_like(known, dtype=torch.bool)
    mask[:, :, :H // 2] = True                      # the top half is given
    mask[1, 0, H - 2, 1] = True                     # and one scattered value (R only, for RGB)
    cond = _cond(model, 2)
    naive, fast = (sample(model, 2, cond, m, torch.Generator().manual_seed(2), known=known, known_mask=mask)
                   for m in ("naive", "fast"))
    assert torch.equal(naive, fast)
    assert torch.equal(fast[mask], known[mask])


def test_fast_sampling_needs_eval_mode():
    model = PixelCNNpp((1, 4, 4), levels=4, channels=4, nr_resnet=1, nr_mix=1)   # training mode, dropout 0.5
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        sample(model, 1)
    sample(model.eval(), 1)
