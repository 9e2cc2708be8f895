"""VQ-VAE and VQ-VAE-2 (fastgen.models.vqvae): shapes, the straight-through gradient, training on
the digits, sampling through Gated PixelCNN priors (fast == naive for the same generator),
bad input; the two-stage models fastgen train trains (VQVAEWithPrior, VQVAE2WithPriors): one
part trained per stage, the frozen autoencoder untouched, the codes sorted at the boundary, the
stage restored with the weights."""
import math

import pytest
import torch
from torch import nn

from fastgen.data import load_digits
from fastgen.models.pixelcnn import GatedPixelCNN
from fastgen.models.vqvae import (VQVAE, VQVAE2, NLLBound, StageLoss, VQCodes, VQLoss, VQSample, VQVAE2WithPriors,
                                  VQVAEWithPrior, fit_prior, make_prior)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these small convs run far faster so on a shared, loaded CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _small(cls=VQVAE, **kw):
    args = dict(image_shape=(1, 8, 8), levels=17, hidden=8, codes=8, code_dim=4, res_blocks=1)
    args.update(kw)
    return cls(**args)


def _images(shape=(1, 8, 8), n=5, levels=17, seed=0):
    return torch.randint(0, levels, (n, *shape), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("decoder", ["logistic", "categorical"])
@pytest.mark.parametrize("shape,downsample,code_shape", [
    pytest.param((1, 8, 8), 2, (4, 4), id="C1-8x8-d2"),
    pytest.param((1, 8, 8), 4, (2, 2), id="C1-8x8-d4"),
    pytest.param((3, 4, 12), 2, (2, 6), id="C3-4x12-d2"),
])
def test_vqvae_shapes(decoder, shape, downsample, code_shape):
    model = _small(image_shape=shape, downsample=downsample, decoder=decoder)
    x = _images(shape)
    loss = model.loss(x)
    assert isinstance(loss, VQLoss)
    assert all(t.dim() == 0 and torch.isfinite(t) for t in loss)
    assert torch.allclose(loss.total, loss.reconstruction + loss.commitment)      # EMA codebook: not in total
    codes = model.encode(x)
    assert codes.dtype == torch.long and codes.shape == (5, *code_shape) == (5, *model.code_shape)
    assert 0 <= int(codes.min()) and int(codes.max()) < model.codes
    for images in (model.decode(codes), model.decode(codes, sample=True, generator=torch.Generator().manual_seed(0)),
                   model.reconstruct(x)):
        assert images.dtype == torch.long and images.shape == x.shape
        assert 0 <= int(images.min()) and int(images.max()) < 17
    assert torch.equal(model.reconstruct(x), model.decode(codes))


def test_gradient_codebook_total():
    model = _small(ema=False)
    loss = model.loss(_images())
    assert torch.allclose(loss.total, loss.reconstruction + loss.commitment + loss.codebook)
    loss.total.backward()
    assert model.quantizer.codebook.grad is not None and model.quantizer.codebook.grad.abs().sum() > 0


@pytest.mark.parametrize("cls", [VQVAE, VQVAE2])
def test_straight_through_gradient_reaches_the_encoder(cls):
    """The reconstruction term alone (no commitment) gives the encoder a gradient: it passes the
    quantizer straight through."""
    model = _small(cls)
    model.loss(_images()).reconstruction.backward()
    first = model.encoder if cls is VQVAE else model.encoder_bottom
    assert first[0].weight.grad is not None and first[0].weight.grad.abs().sum() > 0
    if cls is VQVAE2:
        assert model.encoder_top[0].weight.grad.abs().sum() > 0
        assert model.pre_quantize_top.weight.grad.abs().sum() > 0


def test_ema_codebook_updates_in_training_only():
    model = _small()
    x = _images()
    before = model.quantizer.codebook.clone()
    model.encode(x)
    model.reconstruct(x)
    assert torch.equal(model.quantizer.codebook, before)           # encode never updates
    model.eval()
    model.loss(x)
    assert torch.equal(model.quantizer.codebook, before)
    model.train()
    model.loss(x)
    assert not torch.equal(model.quantizer.codebook, before)


def test_training_lowers_the_loss_on_digits():
    torch.manual_seed(0)
    images = load_digits("train").images[:256]
    model = VQVAE((1, 8, 8), 17, hidden=16, codes=16, code_dim=4, res_blocks=1, dead_code_steps=10)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.eval()
    with torch.no_grad():
        start = model.loss(images).reconstruction.item()
    model.train()
    pick = torch.Generator().manual_seed(0)
    for _ in range(40):
        loss = model.loss(images[torch.randint(len(images), (64,), generator=pick)])
        opt.zero_grad()
        loss.total.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        end = model.loss(images).reconstruction.item()
    assert end < start - 0.5, (start, end)


@pytest.mark.parametrize("sample_pixels", [False, True])
def test_sampling_fast_equals_naive(sample_pixels):
    """The fast and the naive PixelCNN sampler give the same code maps for the same generator,
    so the decoded images match too (also when pixels are drawn from p(x | codes))."""
    model = _small().eval()
    prior = make_prior(model, channels=16, layers=2)
    assert isinstance(prior, GatedPixelCNN) and prior.image_shape == (1, 4, 4) and prior.levels == model.codes
    draws = {m: model.sample(6, prior, method=m, generator=torch.Generator().manual_seed(3),
                             sample_pixels=sample_pixels) for m in ("fast", "naive")}
    fast, naive = draws["fast"], draws["naive"]
    assert isinstance(fast, VQSample)
    assert fast.codes.shape == (6, 4, 4) and fast.images.shape == (6, 1, 8, 8)
    assert torch.equal(fast.codes, naive.codes)
    assert torch.equal(fast.images, naive.images)
    if not sample_pixels:
        assert torch.equal(fast.images, model.decode(fast.codes))


def test_class_conditional_prior_fit_and_sample():
    data = load_digits("train")
    model = _small().eval()
    prior = make_prior(model, channels=16, layers=2, num_classes=10)
    losses = fit_prior(model, data.images[:128], prior, steps=25, labels=data.labels[:128], batch=32,
                       generator=torch.Generator().manual_seed(0))
    assert len(losses) == 25 and sum(losses[-5:]) < sum(losses[:5])
    classes = torch.arange(4)
    a = model.sample(4, prior, classes, generator=torch.Generator().manual_seed(1))
    b = model.sample(4, prior, classes, method="naive", generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.codes, b.codes) and torch.equal(a.images, b.images)


@pytest.mark.parametrize("cls", [VQVAE, VQVAE2])
def test_sort_codes_keeps_reconstructions(cls):
    model = _small(cls, dead_code_steps=3)
    x = _images(n=8)
    model.loss(x)                                    # some EMA / dead-code state to carry along
    model.eval()
    before, codes = model.reconstruct(x), model.encode(x)
    quantizers = [model.quantizer] if cls is VQVAE else [model.quantizer_top, model.quantizer_bottom]
    states = [(q.codebook.clone(), q.embed_sum.clone(), q.cluster_size.clone()) for q in quantizers]
    model.sort_codes()
    assert torch.equal(model.reconstruct(x), before)
    for q, (codebook, embed_sum, cluster_size) in zip(quantizers, states):
        order = torch.cat([torch.nonzero((codebook == row).all(1))[0] for row in q.codebook])
        assert sorted(order.tolist()) == list(range(q.num_codes))      # a permutation of the codes
        assert torch.equal(q.embed_sum, embed_sum[order]) and torch.equal(q.cluster_size, cluster_size[order])
    if cls is VQVAE:
        assert torch.equal(model.quantizer.codebook[model.encode(x)], states[0][0][codes])


def test_bits_per_dim_is_reconstruction_plus_prior():
    model = _small().eval()
    prior = make_prior(model, channels=8, layers=1).eval()
    x = _images(n=4)
    with torch.no_grad():
        expected = model.loss(x).reconstruction + prior.loss(model.encode(x)[:, None]) * 16 / 64
    assert torch.allclose(model.bits_per_dim(x, prior), expected, atol=1e-5)
    assert math.isfinite(model.bits_per_dim(x, prior).item())


def test_vqvae2_shapes_gradient_and_sampling():
    model = _small(VQVAE2)
    x = _images()
    assert model.bottom_shape == (4, 4) and model.top_shape == (2, 2)
    loss = model.loss(x)
    assert isinstance(loss, VQLoss) and all(t.dim() == 0 and torch.isfinite(t) for t in loss)
    loss.total.backward()
    model.eval()
    codes = model.encode(x)
    assert isinstance(codes, VQCodes) and codes.top.shape == (5, 2, 2) and codes.bottom.shape == (5, 4, 4)
    assert model.reconstruct(x).shape == x.shape and torch.equal(model.reconstruct(x), model.decode(codes))
    cond = model.bottom_condition(codes.top)
    assert cond.shape == (5, model.bottom_cond_channels) == (5, 4 * 2 * 2)
    top, bottom = make_prior(model, "top", channels=16, layers=2), make_prior(model, "bottom", channels=16, layers=2)
    assert bottom.cond_channels == model.bottom_cond_channels and top.image_shape == (1, 2, 2)
    assert len(fit_prior(model, x, bottom, steps=2, level="bottom")) == 2
    fast = model.sample(4, top, bottom, generator=torch.Generator().manual_seed(5))
    naive = model.sample(4, top, bottom, method="naive", generator=torch.Generator().manual_seed(5))
    assert fast.images.shape == (4, 1, 8, 8) and fast.codes.top.shape == (4, 2, 2)
    assert torch.equal(fast.codes.top, naive.codes.top) and torch.equal(fast.codes.bottom, naive.codes.bottom)
    assert torch.equal(fast.images, naive.images)
    assert math.isfinite(model.bits_per_dim(x, top, bottom).item())


def test_vqvae2_downsample_4():
    model = _small(VQVAE2, image_shape=(1, 16, 8), downsample=4, decoder="categorical")
    codes = model.encode(_images((1, 16, 8)))
    assert codes.top.shape == (5, 2, 1) and codes.bottom.shape == (5, 4, 2)
    assert model.decode(codes).shape == (5, 1, 16, 8)


def test_bad_input_raises_clear_errors():
    model = _small()
    with pytest.raises(TypeError, match="images must hold integer levels"):
        model.loss(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"images must have shape \[B, 1, 8, 8\]"):
        model.encode(torch.zeros(2, 1, 6, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"images values must lie in \[0, 17\)"):
        model.encode(torch.full((2, 1, 8, 8), 17))
    with pytest.raises(ValueError, match=r"codes values must lie in \[0, 8\)"):
        model.decode(torch.full((2, 4, 4), 8))
    with pytest.raises(ValueError, match=r"codes must have shape \[B, 4, 4\]"):
        model.decode(torch.zeros(2, 2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="codes must be an integer tensor"):
        model.decode(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="downsample must be 2 or 4"):
        VQVAE((1, 8, 8), 17, downsample=3)
    with pytest.raises(ValueError, match="H and W must be divisible by 4"):
        VQVAE((1, 6, 8), 17, downsample=4)
    with pytest.raises(ValueError, match="H and W must be divisible by 4"):
        VQVAE2((1, 6, 8), 17, downsample=2)
    with pytest.raises(ValueError, match="image_shape must be"):
        VQVAE((8, 8), 17)
    with pytest.raises(ValueError, match="decoder must be one of"):
        VQVAE((1, 8, 8), 17, decoder="gaussian")
    with pytest.raises(ValueError, match="codes must be >= 2"):
        VQVAE((1, 8, 8), 17, codes=1)
    with pytest.raises(ValueError, match=r"prior must model the code map: image_shape=\(1, 4, 4\) and levels=8"):
        model.sample(2, GatedPixelCNN((1, 4, 4), levels=9, channels=8, layers=1))
    with pytest.raises(TypeError, match="prior must be an autoregressive image model"):
        model.sample(2, object())
    v2 = _small(VQVAE2)
    top = make_prior(v2, "top", channels=8, layers=1)
    with pytest.raises(ValueError, match="bottom_prior must be conditioned on the top codes"):
        v2.sample(2, top, GatedPixelCNN((1, 4, 4), levels=8, channels=8, layers=1))
    with pytest.raises(ValueError, match="bottom_prior must model the code map"):
        v2.sample(2, top, top)
    with pytest.raises(ValueError, match="level must be 'top' or 'bottom'"):
        make_prior(v2)
    with pytest.raises(ValueError, match="level must be None"):
        make_prior(model, "top")
    with pytest.raises(ValueError, match="level must be 'top' or 'bottom'"):
        fit_prior(v2, _images(), top, steps=1)
    with pytest.raises(TypeError, match="codes must be VQCodes"):
        v2.decode(torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="codes.top must have shape"):
        v2.decode(VQCodes(torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 4, dtype=torch.long)))
    with pytest.raises(ValueError, match="this model is conditional"):       # the sampler's own check
        model.sample(2, make_prior(model, channels=8, layers=1, num_classes=3))


@pytest.mark.slow
def test_demo_cli_runs(tmp_path, capsys):
    from fastgen import cli
    assert cli.main(["demo", "--model", "vqvae", "--steps", "2", "--out", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "vqvae.png").exists()
    for word in ("perplexity", "bits/code", "fast", "naive"):
        assert word in out


# ------------------------------------------------------------------ two stages, one model (fastgen train vqvae)

def _staged(cls=VQVAEWithPrior, **kw):
    args = dict(hidden=8, codes=8, code_dim=4, res_blocks=1, prior={"channels": 8, "layers": 2}, prior_start=2)
    args.update(kw)
    return cls(**args)


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _train_steps(model, optimizers, images, steps, labels=None):
    """What fastgen train's loop does per step: clear the gradients, backward, step every
    optimizer, count the step.  Returns the stages of the steps taken."""
    stages = []
    for _ in range(steps):
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        out = model.loss(images, labels)
        out.total.backward()
        for opt in optimizers:
            opt.step()
        model.count_step()
        stages.append(out.stage)
    return stages


@pytest.mark.parametrize("cls", [VQVAEWithPrior, VQVAE2WithPriors])
def test_two_stages_train_one_part_at_a_time(cls):
    """Stage 1 moves the autoencoder (and its EMA codebook) only, stage 2 the prior(s) only: the
    frozen autoencoder, its buffers and its Adam state stay bit for bit (no gradients, so Adam
    skips it, moments included).  The optimizers are fastgen train's (one Adam per part)."""
    from fastgen.train import REGISTRY
    torch.manual_seed(0)
    model = _staged(cls)
    optimizers = REGISTRY["vqvae" if cls is VQVAEWithPrior else "vqvae2"].optimizers(model, 1e-2)
    autoencoder_opt, prior_opt = optimizers
    x = load_digits("train").images[:16]
    priors = {k: v for k, v in _params(model).items() if not k.startswith("autoencoder.") and k != "trained_steps"}
    start = _params(model.autoencoder)
    assert model.stage == "autoencoder" and int(model.trained_steps) == 0
    assert _train_steps(model, optimizers, x, 2) == ["autoencoder", "autoencoder"]
    assert model.stage == "prior" and int(model.trained_steps) == 2
    after_stage_1 = _params(model.autoencoder)
    assert any(not torch.equal(v, start[k]) for k, v in after_stage_1.items() if k.endswith("codebook"))
    assert not torch.equal(after_stage_1["decoder.0.weight"], start["decoder.0.weight"])
    assert all(torch.equal(v, _params(model)[k]) for k, v in priors.items())          # prior untouched
    assert not prior_opt.state
    adam_1 = {id(p): {k: v.clone() for k, v in s.items()} for p, s in autoencoder_opt.state.items()}
    assert _train_steps(model, optimizers, x, 2) == ["prior", "prior"]
    assert all(p.grad is None for p in model.autoencoder.parameters())
    now = _params(model.autoencoder)
    assert all(torch.equal(now[k], v) for k, v in after_stage_1.items())              # frozen, buffers included
    assert {id(p) for p in autoencoder_opt.state} == adam_1.keys()
    for p, s in autoencoder_opt.state.items():
        assert all(torch.equal(v, adam_1[id(p)][k]) for k, v in s.items())
    assert any(not torch.equal(v, _params(model)[k]) for k, v in priors.items())      # the prior trained
    assert {int(s["step"]) for s in prior_opt.state.values()} == {2}


@pytest.mark.parametrize("cls", [VQVAEWithPrior, VQVAE2WithPriors])
def test_stage_losses_are_the_parts_losses(cls):
    """Stage 1's loss is the autoencoder's VQ loss; stage 2's the NLL bound through the
    prior(s) (= bits_per_dim), whose gradient reaches the priors only."""
    model = _staged(cls).eval()                      # eval: no EMA update, so the losses can be compared
    x = _images(n=6)
    out = model.loss(x)
    assert isinstance(out, StageLoss) and out.stage == "autoencoder" and out.bound is None
    assert torch.equal(out.total, model.autoencoder.loss(x).total)
    assert set(out.log_terms()) == {"stage", "reconstruction bits/dim", "commitment"}
    model.set_trained_steps(2)
    out = model.loss(x)
    assert out.stage == "prior" and out.autoencoder is None and isinstance(out.bound, NLLBound)
    priors = (model.prior,) if cls is VQVAEWithPrior else (model.top_prior, model.bottom_prior)
    with torch.no_grad():
        expected = model.autoencoder.bits_per_dim(x, *priors)
    torch.testing.assert_close(out.total, expected)
    torch.testing.assert_close(out.bound.total, out.bound.reconstruction + out.bound.prior)
    torch.testing.assert_close(out.bound.reconstruction, model.autoencoder.loss(x).reconstruction)
    assert out.log_terms()["bits/dim"] == out.total.detach()
    out.total.backward()
    assert all(p.grad is None for p in model.autoencoder.parameters())
    # the last gated layer's vertical output is never read, so a conditioned prior's last
    # cond_vertical gets no gradient (the reason DDP needs find_unused_parameters for it too)
    dead = {id(prior.layers[-1].cond_vertical.weight) for prior in priors if hasattr(prior.layers[-1], "cond_vertical")}
    assert all(p.grad is not None for prior in priors for p in prior.parameters() if id(p) not in dead)


@pytest.mark.parametrize("cls", [VQVAEWithPrior, VQVAE2WithPriors])
def test_the_step_that_ends_stage_one_sorts_the_codes(cls):
    import copy
    model = _staged(cls, prior_start=1)
    model.loss(_images(n=8))                         # training mode: moves the EMA codebook
    reference = copy.deepcopy(model.autoencoder)
    reference.sort_codes()
    model.count_step()
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.autoencoder.state_dict().items())
    unsorted = _staged(cls, prior_start=1, sort_codes=False)
    before = _params(unsorted.autoencoder)
    unsorted.count_step()
    assert all(torch.equal(v, unsorted.autoencoder.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("cls", [VQVAEWithPrior, VQVAE2WithPriors])
def test_staged_sampling_fast_equals_naive_and_class_conditional(cls):
    model = _staged(cls, num_classes=3).eval()
    labels = torch.tensor([0, 2, 1, 0])
    fast = model.sample(4, labels, generator=torch.Generator().manual_seed(2))
    naive = model.sample(4, labels, method="naive", generator=torch.Generator().manual_seed(2))
    assert fast.images.shape == (4, 1, 8, 8) and fast.images.dtype == torch.long
    assert 0 <= int(fast.images.min()) and int(fast.images.max()) < 17
    assert torch.equal(fast.images, naive.images)
    model.set_trained_steps(2)
    assert torch.isfinite(model.loss(_images(n=4), labels).total)
    with pytest.raises(ValueError, match="conditional"):
        model.loss(_images(n=4))                     # stage 2 needs the class ids


def test_staged_models_bad_arguments():
    with pytest.raises(ValueError, match="prior_start must be >= 0"):
        _staged(prior_start=-1)
    with pytest.raises(TypeError, match="prior_start must be an int"):
        _staged(prior_start=0.5)
    with pytest.raises(TypeError, match="nosuch"):
        _staged(nosuch=1)                            # an unknown autoencoder argument
    with pytest.raises(TypeError, match="nosuch"):
        _staged(prior={"nosuch": 1})
    with pytest.raises(ValueError, match="H and W must be divisible by 4"):
        _staged(VQVAE2WithPriors, image_shape=(1, 6, 6))


def test_fastgen_train_names_the_size_vqvae2_needs():
    """VQ-VAE-2's two code levels need H and W divisible by 2 * downsample: fastgen train says so."""
    from fastgen.train import REGISTRY, UsageError
    from fastgen.train.registry import DataInfo
    spec = REGISTRY["vqvae2"]
    args = spec.defaults(DataInfo("image", (1, 6, 6), levels=17))
    with pytest.raises(UsageError, match=r"cannot build vqvae2.*H and W must be divisible by 4 \(downsample=2 and the "
                                         r"top level halves it again\)"):
        spec.make(args)
    model = spec.make(spec.defaults(DataInfo("image", (1, 8, 8), levels=17)))
    assert model.autoencoder.top_shape == (2, 2) and model.autoencoder.bottom_shape == (4, 4)


def test_loading_a_state_dict_restores_the_stage():
    """The step count is a buffer (checkpoints carry it); the host copy that picks the stage
    follows every load_state_dict, also through a parent module."""
    trained = _staged(prior_start=2)
    trained.count_step()
    trained.count_step()
    assert trained.stage == "prior"
    fresh = _staged(prior_start=2)
    assert fresh.stage == "autoencoder"
    nn.ModuleDict({"model": fresh}).load_state_dict({f"model.{k}": v for k, v in trained.state_dict().items()})
    assert fresh.stage == "prior" and int(fresh.trained_steps) == 2
    fresh.count_step()
    assert int(fresh.trained_steps) == 3 and fresh._steps == 3
