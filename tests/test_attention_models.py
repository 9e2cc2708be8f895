"""Attention layers and models (issue 10): BlockLocalAttention / SparseAttention against
nn.MultiheadAttention with the op reference's dense mask, incremental step == full forward;
LocalImageTransformer, VideoTransformer and PixelSNAIL: shapes, incremental == full forward,
causality, fast == naive sampling, training on the digits, bad input."""
import pytest
import torch
from torch import nn

from fastgen.data import load_digits
from fastgen.models import LocalImageTransformer, PixelSNAIL, VideoTransformer
from fastgen.nn import AttentionCache, BlockLocalAttention, SparseAttention
from fastgen.ops.block_local_attention.reference import block_local_mask, sparse_mask
from fastgen.sampling import sample

LAYERS = {
    "1d-causal-mem2": lambda: (BlockLocalAttention(12, 3, 23, 5, memory=2), block_local_mask((23,), (5,), True, 2)),
    "2d-ragged-causal-mem1": lambda: (BlockLocalAttention(16, 4, (5, 7), (2, 3), memory=1),
                                      block_local_mask((5, 7), (2, 3), True, 1)),
    "2d-noncausal": lambda: (BlockLocalAttention(8, 2, (4, 6), (3, 4), causal=False, memory=1),
                             block_local_mask((4, 6), (3, 4), False, 1)),
    "3d-causal-mem1": lambda: (BlockLocalAttention(16, 2, (3, 4, 5), (2, 2, 3), memory=1),
                               block_local_mask((3, 4, 5), (2, 2, 3), True, 1)),
    "3d-whole-grid": lambda: (BlockLocalAttention(8, 1, (2, 3, 3), (2, 3, 3)), block_local_mask((2, 3, 3), (2, 3, 3))),
    "sparse-strided": lambda: (SparseAttention(16, 4, 29, "strided", stride=5), sparse_mask(29, "strided", 5)),
    "sparse-fixed": lambda: (SparseAttention(12, 2, 26, "fixed", block=6, summary=2),
                             sparse_mask(26, "fixed", 6, 2)),
    "sparse-strided-noncausal": lambda: (SparseAttention(8, 2, 17, "strided", stride=4, causal=False),
                                         sparse_mask(17, "strided", 4, 1, False)),
}


def _layer(name):
    torch.manual_seed(1)
    layer, mask = LAYERS[name]()
    with torch.no_grad():                       # non-zero biases, so every term matters
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer, mask


@pytest.mark.parametrize("name", LAYERS)
def test_layer_equals_masked_multihead_attention(name):
    layer, mask = _layer(name)
    dim, N = layer.embed_dim, layer.seq_len
    mha = nn.MultiheadAttention(dim, layer.num_heads, batch_first=True)
    mha.load_state_dict(layer.state_dict())     # the same parameter names and shapes
    x = torch.randn(3, N, dim, requires_grad=True)
    out = layer(x)
    ref = mha(x, x, x, attn_mask=~mask, need_weights=False)[0]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, layer.in_proj_weight], g)
    ref_grads = torch.autograd.grad(ref, [x, mha.in_proj_weight], g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    layer.load_state_dict(mha.state_dict())     # and the reverse


@pytest.mark.parametrize("name", [n for n in LAYERS if "noncausal" not in n])
def test_step_equals_full_forward_at_every_position(name):
    layer, _ = _layer(name)
    x = torch.randn(2, layer.seq_len, layer.embed_dim)
    with torch.no_grad():
        full = layer(x)
        cache = layer.new_cache(2)
        assert isinstance(cache, AttentionCache) and (cache.k == 0).all()
        for i in range(layer.seq_len):
            torch.testing.assert_close(layer.step(x[:, i:i + 1], cache, i), full[:, i:i + 1], rtol=1e-5, atol=1e-5)
        _, k, v = layer._heads(x)               # the final cache holds every token's key and value
        torch.testing.assert_close(cache.k, k)
        torch.testing.assert_close(cache.v, v)


def test_layer_dropout_only_in_training():
    layer = BlockLocalAttention(8, 2, (4, 4), (2, 4), dropout=0.5)
    x = torch.randn(2, 16, 8)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))


def test_layer_errors():
    layer = BlockLocalAttention(8, 2, (4, 4), (2, 4))
    with pytest.raises(ValueError, match=r"x must have shape \[B, 16, 8\]"):
        layer(torch.randn(2, 15, 8))
    with pytest.raises(ValueError, match="x must have shape"):
        layer(torch.randn(16, 8))
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        layer(torch.ones(2, 16, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="x is torch.float64"):
        layer(torch.randn(2, 16, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="block .* must not exceed grid"):
        BlockLocalAttention(8, 2, (4, 4), (2, 5))
    with pytest.raises(ValueError, match="block must have one size per grid axis"):
        BlockLocalAttention(8, 2, (4, 4), (2,))
    with pytest.raises(ValueError, match="grid must be 1 to 3 positive ints"):
        BlockLocalAttention(8, 2, (2, 2, 2, 2), (1, 1, 1, 1))
    with pytest.raises(ValueError, match="heads must be a positive int dividing dim"):
        BlockLocalAttention(8, 3, (4, 4), (2, 4))
    with pytest.raises(ValueError, match="memory must be None or an int"):
        BlockLocalAttention(8, 2, (4, 4), (2, 4), memory=-1)
    with pytest.raises(ValueError, match="dropout"):
        BlockLocalAttention(8, 2, (4, 4), (2, 4), dropout=1.0)
    cache = layer.new_cache(2)
    with pytest.raises(ValueError, match=r"index must be an int in \[0, 16\)"):
        layer.step(torch.randn(2, 1, 8), cache, 16)
    with pytest.raises(ValueError, match="x_t must have shape"):
        layer.step(torch.randn(2, 2, 8), cache, 0)
    with pytest.raises(ValueError, match="cache.k and cache.v must have shape"):
        layer.step(torch.randn(3, 1, 8), cache, 0)
    with pytest.raises(TypeError, match="cache must be an AttentionCache"):
        layer.step(torch.randn(2, 1, 8), (cache.k, cache.v), 0)
    with pytest.raises(ValueError, match="step needs a causal layer"):
        BlockLocalAttention(8, 2, (4, 4), (2, 4), causal=False).step(torch.randn(2, 1, 8), cache, 0)
    with pytest.raises(ValueError, match="pattern must be one of"):
        SparseAttention(8, 2, 16, "local", stride=4)
    with pytest.raises(ValueError, match="pattern 'strided' takes stride=, not block="):
        SparseAttention(8, 2, 16, "strided", block=4)
    with pytest.raises(ValueError, match="block must be a positive int"):
        SparseAttention(8, 2, 16, "fixed")
    with pytest.raises(ValueError, match="summary .* must not exceed block"):
        SparseAttention(8, 2, 16, "fixed", block=4, summary=5)


# ------------------------------------------------------------------------------ image models

MODELS = {
    "transformer-grey-classes": lambda: LocalImageTransformer((1, 6, 5), levels=7, dim=16, heads=2, layers=2,
                                                              block=(2, 5), memory=1, num_classes=3),
    "transformer-2ch-ragged": lambda: LocalImageTransformer((2, 5, 6), levels=5, dim=16, heads=4, layers=2,
                                                            block=(2, 4), memory=2),
    "pixelsnail-grey-classes": lambda: PixelSNAIL((1, 6, 5), levels=7, channels=8, blocks=2, res_layers=1, heads=2,
                                                  num_classes=3),
    "pixelsnail-2ch-vector-cond": lambda: PixelSNAIL((2, 5, 4), levels=5, channels=8, blocks=1, res_layers=2,
                                                     heads=1, kernel_size=5, input_kernel=3, cond_channels=4),
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
    with torch.no_grad():  # non-trivial weights everywhere (PixelSNAIL's pos starts at zero)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _images(model, n, seed=0):
    return torch.randint(model.levels, (n, *model.image_shape), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", MODELS)
def test_image_model_shapes_and_loss(name):
    model = _randomized(name)
    x, cond = _images(model, 3), _cond(model, 3)
    C, H, W = model.image_shape
    assert model(x, cond).shape == (3, model.levels, C, H, W)
    loss = model.loss(x, cond)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_image_model_incremental_logits_equal_full_forward(name):
    model = _randomized(name)
    x, cond = _images(model, 3), _cond(model, 3)
    with torch.no_grad():
        full = model(x, cond)
        cache = model.incremental(torch.zeros_like(x), cond)
        assert cache.fused_step is None
        _, H, W = model.image_shape
        for r in range(H):
            cache.begin_row(r)
            for c in range(W):
                cache.write(r, c, x[:, :, r, c])
                torch.testing.assert_close(cache.logits(r, c), full[:, :, :, r, c], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_image_model_is_causal(name):
    """Changing pixel p changes no logits at positions <= p (raster order)."""
    model = _randomized(name)
    x, cond = _images(model, 2), _cond(model, 2)
    C, H, W = model.image_shape
    with torch.no_grad():
        base = model(x, cond).flatten(3)                     # [B, levels, C, H*W]
        for p in (0, W + 1, H * W // 2, H * W - 1):
            y = x.clone()
            y[:, :, p // W, p % W] = (y[:, :, p // W, p % W] + 1) % model.levels
            changed = (model(y, cond).flatten(3) - base).abs().amax(dim=(0, 1, 2)) > 1e-6
            assert not changed[:p + 1].any(), f"pixel {p} changed logits at {changed[:p + 1].nonzero().flatten()}"
            if p < H * W - 1:
                assert changed[p + 1:].any()                 # and it does reach later pixels


@pytest.mark.parametrize("name", MODELS)
def test_image_model_fast_and_naive_samplers_draw_identical_images(name):
    model = _randomized(name)
    cond = _cond(model, 3)
    naive = sample(model, 3, cond, "naive", torch.Generator().manual_seed(5), 0.8)
    fast = sample(model, 3, cond, "fast", torch.Generator().manual_seed(5), 0.8)
    assert torch.equal(naive, fast)
    assert naive.min() >= 0 and naive.max() < model.levels and naive.unique().numel() > 1
    assert not torch.equal(fast, sample(model, 3, cond, "fast", torch.Generator().manual_seed(6), 0.8))


def _train_lowers_loss(model, images, cond, steps=10, lr=1e-2):
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    with torch.no_grad():
        before = model.loss(images, cond).item()
    for _ in range(steps):
        loss = model.loss(images, cond)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = model.loss(images, cond).item()
    assert after < before - 0.5, (before, after)


@pytest.mark.parametrize("make", [
    pytest.param(lambda: LocalImageTransformer((1, 8, 8), 17, dim=16, heads=2, layers=2, block=(4, 8), num_classes=10),
                 id="transformer"),
    pytest.param(lambda: PixelSNAIL((1, 8, 8), 17, channels=16, blocks=1, res_layers=1, heads=2, num_classes=10),
                 id="pixelsnail"),
])
def test_image_model_trains_on_digits(make):
    digits = load_digits("train")
    _train_lowers_loss(make(), digits.images[:32], digits.labels[:32])


def test_image_model_errors():
    model = _randomized("transformer-grey-classes")
    x = _images(model, 2)
    with pytest.raises(ValueError, match="x must have shape"):
        model(x[:, :, :5], torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="x must be an integer tensor"):
        model(x.float(), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"x values must lie in \[0, 7\)"):
        model(x + 7, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="this model is conditional"):
        model(x)
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 3\)"):
        model(x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="block must have 2 sizes"):
        LocalImageTransformer((1, 8, 8), 4, dim=8, heads=2, layers=1, block=(2, 2, 2))
    with pytest.raises(ValueError, match="block .* must not exceed grid"):
        LocalImageTransformer((1, 8, 8), 4, dim=8, heads=2, layers=1, block=(9, 8))
    with pytest.raises(ValueError, match="layers must be a positive int"):
        LocalImageTransformer((1, 8, 8), 4, dim=8, heads=2, layers=0)
    with pytest.raises(ValueError, match="levels must be an int >= 2"):
        PixelSNAIL((1, 8, 8), 1)
    with pytest.raises(ValueError, match="blocks must be a positive int"):
        PixelSNAIL((1, 8, 8), 4, blocks=0)
    with pytest.raises(ValueError, match="this model is unconditional"):
        PixelSNAIL((1, 4, 4), 4, channels=8, blocks=1, res_layers=1, heads=2)(torch.zeros(1, 1, 4, 4, dtype=torch.long),
                                                                           torch.tensor([0]))


# ------------------------------------------------------------------------------ video

def _video_model(classes=None):
    torch.manual_seed(2)
    model = VideoTransformer((2, 3, 4, 5), levels=4, dim=16, heads=2, layers=2, block=(1, 2, 3), memory=1,
                             num_classes=classes).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def test_video_shapes_causality_and_fast_equals_naive():
    model = _video_model(classes=2)
    cond = torch.tensor([1, 0])
    x = torch.randint(4, (2, 2, 3, 4, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x, cond)
        assert logits.shape == (2, 4, 2, 3, 4, 5)
        base = logits.flatten(3)
        for p in (0, 23, 59):                                # (t, h, w) raster positions
            y = x.clone().view(2, 2, -1)
            y[:, :, p] = (y[:, :, p] + 1) % 4
            changed = (model(y.view_as(x), cond).flatten(3) - base).abs().amax(dim=(0, 1, 2)) > 1e-6
            assert not changed[:p + 1].any()
    naive = model.sample(2, cond, "naive", torch.Generator().manual_seed(4))
    fast = model.sample(2, cond, "fast", torch.Generator().manual_seed(4))
    assert naive.shape == (2, 2, 3, 4, 5) and torch.equal(naive, fast) and naive.unique().numel() > 1


def test_video_trains_and_errors():
    digits = load_digits("train").images[:32]
    videos = torch.stack([digits, digits.roll(1, dims=-1)], dim=2)[:, 0]   # [32, 2, 8, 8]: a digit moving right
    model = VideoTransformer((2, 8, 8), 17, dim=16, heads=2, layers=2, block=(1, 4, 8))
    _train_lowers_loss(model, videos[:, None], None)
    assert model.video_shape == (1, 2, 8, 8)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 1, 2, 8, 8\]"):
        model(videos)
    with pytest.raises(ValueError, match="video_shape must be"):
        VideoTransformer((8, 8), 4)
    with pytest.raises(ValueError, match="block must have 3 sizes"):
        VideoTransformer((2, 8, 8), 4, dim=8, heads=2, layers=1, block=(4, 8))
    with pytest.raises(ValueError, match="n must be a positive int"):
        model.sample(0)


# ------------------------------------------------------------------------------ demo

@pytest.mark.slow
def test_transformer_demo_runs(tmp_path):
    from fastgen import demo_transformer
    result = demo_transformer.run(steps=10, out_dir=str(tmp_path), device="cpu", per_class=1)
    assert (tmp_path / "transformer_samples.png").exists()
    assert result["identical"] == 1.0 and result["test_bits"] < 4.5
