"""GANs (issue 12): the four losses against their formulas, WGAN-GP's gradient penalty against a
per-sample autograd reference and a closed form, R1 against a closed form, the power-iteration
spectral norm against torch.linalg, conditional batch norm and the projection head, DCGAN / SNGAN
/ StyleGAN2 shapes and training steps (R1 through the GAN ops' double backward), style mixing,
truncation, and bad input."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgen.models import DCGAN, SNGAN, StyleGAN2
from fastgen.models.gan import (LOSSES, discriminator_loss, generator_loss, gradient_penalty, mix_styles,
                                r1_penalty)
from fastgen.nn.gan import (ConditionalBatchNorm2d, MinibatchStd, ProjectionHead, SpectralNorm, power_iteration,
                            spectral_norm)

# --------------------------------------------------------------------------------------------
# Losses


def _formulas(r, f):
    """(discriminator, generator) losses written from the papers' definitions, in float64."""
    r, f = r.double(), f.double()
    s = torch.sigmoid
    d_gan = -(torch.log(s(r))).mean() - torch.log(1 - s(f)).mean()
    return {"minimax": (d_gan, torch.log(1 - s(f)).mean()),
            "non_saturating": (d_gan, -torch.log(s(f)).mean()),
            "wgan": (f.mean() - r.mean(), -f.mean()),
            "hinge": (torch.clamp(1 - r, min=0).mean() + torch.clamp(1 + f, min=0).mean(), -f.mean())}


@pytest.mark.parametrize("kind", LOSSES)
def test_losses_match_their_formulas(kind):
    r, f = torch.randn(13) * 2, torch.randn(7, 1) * 2      # [B'] vs [B, 1] both accepted
    d_ref, g_ref = _formulas(r, f.squeeze(1))[kind]
    torch.testing.assert_close(discriminator_loss(r, f, kind).double(), d_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(generator_loss(f, kind).double(), g_ref, rtol=1e-5, atol=1e-6)


def test_minimax_saturates_where_non_saturating_does_not():
    """Goodfellow et al.'s argument: when D confidently rejects the fakes (f << 0) the minimax
    generator loss has vanishing gradient, the non-saturating one does not."""
    f = torch.full((4,), -10.0, requires_grad=True)
    g_mm, = torch.autograd.grad(generator_loss(f, "minimax"), f)
    g_ns, = torch.autograd.grad(generator_loss(f, "non_saturating"), f)
    assert g_mm.abs().max() < 1e-4 < g_ns.abs().min()


def test_loss_errors():
    with pytest.raises(ValueError, match="kind must be one of"):
        discriminator_loss(torch.zeros(2), torch.zeros(2), "lsgan")
    with pytest.raises(ValueError, match=r"real_logits must have shape \[B\] or \[B, 1\]"):
        discriminator_loss(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(TypeError, match="fake_logits must be a floating-point tensor"):
        generator_loss(torch.zeros(2, dtype=torch.long))


# --------------------------------------------------------------------------------------------
# Gradient penalty and R1


def _critic():
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 5 * 5, 1)).double()


def test_gradient_penalty_matches_per_sample_autograd():
    critic = _critic()
    real, fake = torch.randn(6, 2, 5, 5, dtype=torch.float64), torch.randn(6, 2, 5, 5, dtype=torch.float64)
    alpha = torch.rand(6, dtype=torch.float64)
    gp = gradient_penalty(critic, real, fake, alpha=alpha)
    terms = []
    for i in range(6):
        x = (alpha[i] * real[i] + (1 - alpha[i]) * fake[i]).unsqueeze(0).requires_grad_(True)
        g, = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
        terms.append((g.norm() - 1) ** 2)
    ref = torch.stack(terms).mean()
    torch.testing.assert_close(gp, ref, rtol=1e-10, atol=1e-12)
    weights = list(critic.parameters())[:-1]             # all but the output bias, which no gradient sees
    grads = torch.autograd.grad(gp, weights)             # differentiable in the critic
    refs = torch.autograd.grad(ref, weights)
    for a, b in zip(grads, refs):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_gradient_penalty_of_a_linear_critic_is_closed_form():
    w = torch.randn(10, dtype=torch.float64)
    gp = gradient_penalty(lambda x: x.flatten(1) @ w, torch.randn(5, 10, dtype=torch.float64),
                          torch.randn(5, 10, dtype=torch.float64))
    torch.testing.assert_close(gp, (w.norm() - 1) ** 2)


def test_gradient_penalty_passes_labels_and_checks_shapes():
    seen = {}

    def critic(x, labels):
        seen["labels"] = labels
        return x.flatten(1).sum(1)
    labels = torch.tensor([1, 0, 2])
    gradient_penalty(critic, torch.randn(3, 4), torch.randn(3, 4), labels)
    assert seen["labels"] is labels
    with pytest.raises(ValueError, match=r"fake must have the shape of real \(3, 4\)"):
        gradient_penalty(critic, torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"alpha must have shape \[3\]"):
        gradient_penalty(lambda x: x.sum(1), torch.randn(3, 4), torch.randn(3, 4), alpha=torch.rand(4))
    with pytest.raises(ValueError, match=r"the critic's output must have shape \[B\]"):
        gradient_penalty(lambda x: x, torch.randn(3, 4), torch.randn(3, 4))


def test_r1_of_a_quadratic_discriminator_is_closed_form():
    """D(x) = w.x + x^T A x / 2 -> grad = w + A_sym x; R1 = mean |w + A_sym x|^2, and its gradient
    in w (double backward) is 2 mean (w + A_sym x)."""
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)
    A = torch.randn(6, 6, dtype=torch.float64)
    x = torch.randn(9, 6, dtype=torch.float64)
    r1 = r1_penalty(lambda v: v @ w + 0.5 * ((v @ A) * v).sum(1), x)
    grad = w + x @ ((A + A.T) / 2)
    torch.testing.assert_close(r1, grad.square().sum(1).mean())
    dw, = torch.autograd.grad(r1, w)
    torch.testing.assert_close(dw, 2 * grad.mean(0).detach())


# --------------------------------------------------------------------------------------------
# Spectral normalisation


@pytest.mark.parametrize("shape", [(7, 5), (3, 11), (16, 16), (6, 3, 3, 3)], ids=lambda s: "x".join(map(str, s)))
def test_power_iteration_converges_to_the_largest_singular_value(shape):
    W = torch.randn(*shape, dtype=torch.float64).flatten(1)
    u = F.normalize(torch.randn(W.shape[0], dtype=torch.float64), dim=0)
    exact = torch.linalg.matrix_norm(W, ord=2)
    one = power_iteration(W, u, 1).sigma
    assert one <= exact * (1 + 1e-12)                    # u^T W v <= sigma_1 for unit u, v
    est = power_iteration(W, u, 500)
    torch.testing.assert_close(est.sigma, exact, rtol=1e-8, atol=0)
    torch.testing.assert_close(W @ est.v, est.sigma * est.u, rtol=1e-6, atol=1e-8)   # the singular pair


def test_spectral_norm_layer_normalises_the_weight():
    conv = spectral_norm(nn.Conv2d(3, 8, 3))
    x = torch.randn(2, 3, 6, 6)
    for _ in range(30):                                  # one power iteration per training forward
        conv(x)
    sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
    torch.testing.assert_close(sigma, torch.tensor(1.0), rtol=1e-4, atol=0)
    raw = conv.parametrizations.weight.original
    torch.testing.assert_close(conv.weight * torch.linalg.matrix_norm(raw.detach().flatten(1), ord=2), raw,
                               rtol=1e-4, atol=1e-6)
    conv.eval()                                          # eval: the stored vectors, no iteration
    u = conv.parametrizations.weight[0].u.clone()
    conv(x)
    assert torch.equal(u, conv.parametrizations.weight[0].u)
    conv.train()
    conv(x).sum().backward()                             # the gradient reaches the raw weight through sigma
    assert raw.grad is not None and torch.isfinite(raw.grad).all()


def test_spectral_norm_errors():
    with pytest.raises(ValueError, match="has no tensor parameter 'kernel'"):
        spectral_norm(nn.Linear(2, 2), "kernel")
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        SpectralNorm(torch.randn(2, 2), iterations=0)
    with pytest.raises(ValueError, match=r"u must have shape \[3\]"):
        power_iteration(torch.randn(3, 2), torch.randn(2))


# --------------------------------------------------------------------------------------------
# Conditioning layers


def test_conditional_batch_norm_and_projection_head():
    cbn = ConditionalBatchNorm2d(4, num_classes=3)
    with torch.no_grad():
        cbn.gamma.weight.normal_()
        cbn.beta.weight.normal_()
    x, y = torch.randn(5, 4, 3, 3), torch.tensor([0, 2, 1, 2, 0])
    normed = F.batch_norm(x, None, None, training=True, eps=cbn.norm.eps)
    expected = normed * (1 + cbn.gamma.weight[y])[:, :, None, None] + cbn.beta.weight[y][:, :, None, None]
    torch.testing.assert_close(cbn(x, y), expected, rtol=1e-5, atol=1e-5)

    head = ProjectionHead(6, num_classes=3)
    h = torch.randn(5, 6)
    expected = head.linear(h).squeeze(1) + (head.embed.weight[y] * h).sum(1)
    torch.testing.assert_close(head(h, y), expected)


def test_minibatch_std_appends_the_group_std():
    x = torch.randn(8, 3, 4, 4, dtype=torch.float64)
    out = MinibatchStd(group_size=4)(x)
    assert out.shape == (8, 4, 4, 4)
    groups = x.view(4, 2, 3, 4, 4)                       # sample b belongs to group b % 2
    std = groups.std(0, unbiased=False).mean((1, 2, 3))  # [2]
    torch.testing.assert_close(out[:, 3, 0, 0], std.repeat(4), rtol=1e-6, atol=1e-8)
    assert MinibatchStd(4)(torch.randn(6, 3, 4, 4)).shape == (6, 4, 4, 4)   # 6 = 3 groups of 2


# --------------------------------------------------------------------------------------------
# Models


MODELS = [pytest.param(DCGAN, {}, id="dcgan"), pytest.param(DCGAN, {"spectral": True}, id="dcgan-sn"),
          pytest.param(SNGAN, {}, id="sngan"), pytest.param(StyleGAN2, {"mapping_layers": 2}, id="stylegan2")]


@pytest.mark.parametrize("cls,kwargs", MODELS)
@pytest.mark.parametrize("shape,classes", [((1, 8, 8), None), ((3, 16, 16), 5)], ids=["8x8", "16x16-rgb-cond"])
def test_shapes(cls, kwargs, shape, classes):
    model = cls(shape, latent=8, channels=8, num_classes=classes, **kwargs)
    labels = torch.arange(3) % classes if classes else None
    x = model.sample(3, labels)
    assert x.shape == (3, *shape)
    if cls is not StyleGAN2:                             # a tanh output; StyleGAN2's toRGB is linear
        assert x.abs().max() <= 1
    assert model.discriminate(x, labels).shape == (3,)


def _digits(n=32):
    from fastgen.data import load_digits
    data = load_digits("train")
    return data.images[:n].float() / 8 - 1, data.labels[:n]


@pytest.mark.parametrize("cls,kwargs,loss,penalties", [
    pytest.param(DCGAN, {"num_classes": 10}, "non_saturating", {}, id="dcgan-cond-ns"),
    pytest.param(DCGAN, {}, "wgan", {"gp_weight": 10.0}, id="wgan-gp"),
    pytest.param(SNGAN, {"num_classes": 10}, "hinge", {}, id="sngan-cond-hinge"),
    pytest.param(StyleGAN2, {"num_classes": 10, "mapping_layers": 2}, "non_saturating", {"r1_weight": 1.0},
                 id="stylegan2-cond-r1"),
])
def test_training_steps_change_the_generator(cls, kwargs, loss, penalties):
    torch.manual_seed(0)
    real, labels = _digits(16)
    model = cls((1, 8, 8), latent=8, channels=8, **kwargs)
    labels = labels if model.num_classes else None
    g_opt = torch.optim.Adam(model.generator.parameters(), 1e-3, betas=(0.0, 0.99))
    d_opt = torch.optim.Adam(model.discriminator.parameters(), 1e-3, betas=(0.0, 0.99))
    g_before = [p.detach().clone() for p in model.generator.parameters()]
    d_before = [p.detach().clone() for p in model.discriminator.parameters()]
    for _ in range(2):
        step = model.train_step(real, labels, g_opt, d_opt, loss=loss, **penalties)
        assert all(math.isfinite(v) for v in step)
    if penalties:
        assert step.penalty > 0
    assert any(not torch.equal(a, b) for a, b in zip(g_before, model.generator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d_before, model.discriminator.parameters()))
    assert all(p.requires_grad for p in model.discriminator.parameters())   # restored after G's step


def _stylegan(**kwargs):
    torch.manual_seed(0)
    model = StyleGAN2((1, 8, 8), latent=8, w_dim=8, channels=8, mapping_layers=2, **kwargs)
    with torch.no_grad():
        for conv in model.generator.synthesis.convs:
            for layer in conv:
                layer.noise_strength.fill_(0.3)          # so that noise inputs matter in the tests
    return model


def test_stylegan2_num_ws_and_noise_modes():
    model = _stylegan().eval()
    assert model.num_ws == 4                             # 4x4: conv + toRGB; 8x8: conv up, conv, toRGB
    z = torch.randn(3, 8)
    a = model.generate(z, noise_mode="const")
    b = model.generate(z, noise_mode="const")
    torch.testing.assert_close(a, b)
    assert not torch.allclose(model.generate(z, noise_mode="random"), model.generate(z, noise_mode="random"))
    assert not torch.allclose(model.generate(z, noise_mode="none"), a)
    assert a.shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="noise_mode must be"):
        model.generate(z, noise_mode="fixed")


def test_stylegan2_style_mixing():
    model = _stylegan().eval()
    ws1, ws2 = model.mapping(torch.randn(2, 8)), model.mapping(torch.randn(2, 8))
    mixed = mix_styles(ws1, ws2, 2)
    assert torch.equal(mixed[:, :2], ws1[:, :2]) and torch.equal(mixed[:, 2:], ws2[:, 2:])
    image = lambda ws: model.synthesis(ws, "const")      # noqa: E731
    torch.testing.assert_close(image(mix_styles(ws1, ws2, model.num_ws)), image(ws1))
    torch.testing.assert_close(image(mix_styles(ws1, ws2, 0)), image(ws2))
    assert not torch.allclose(image(mixed), image(ws1)) and not torch.allclose(image(mixed), image(ws2))
    model.train()                                        # training mode mixes with probability 0.9
    model.generator.style_mixing_prob = 1.0
    torch.manual_seed(3)
    z = torch.randn(2, 8)
    assert not torch.allclose(model.generate(z, noise_mode="const"),
                              model.eval().generate(z, noise_mode="const"))
    with pytest.raises(ValueError, match=r"layer must lie in \[0, 4\]"):
        mix_styles(ws1, ws2, 5)


def test_stylegan2_truncation():
    model = _stylegan()
    with torch.no_grad():                                # training-mode mapping updates the mean w
        for _ in range(3):
            model.generator.mapping(torch.randn(64, 8), update_w_avg=True)
    w_avg = model.generator.mapping.w_avg.clone()
    assert w_avg.abs().sum() > 0
    model.eval()
    z = torch.randn(4, 8)
    mean_image = model.synthesis(w_avg.expand(1, model.num_ws, -1), "const")
    truncated = model.generate(z, psi=0.0, noise_mode="const")
    torch.testing.assert_close(truncated, mean_image.expand(4, -1, -1, -1), rtol=1e-5, atol=1e-5)
    ws, half = model.mapping(z), model.mapping(z, psi=0.5)
    torch.testing.assert_close(half, w_avg + 0.5 * (ws - w_avg))
    cut = model.mapping(z, psi=0.0, cutoff=2)            # only the first 2 layers truncated
    torch.testing.assert_close(cut[:, :2], w_avg.expand(4, 2, -1))
    torch.testing.assert_close(cut[:, 2:], ws[:, 2:])
    torch.testing.assert_close(model.generator.mapping.w_avg, w_avg)   # eval mode leaves it alone


def test_stylegan2_r1_double_backward():
    """R1 on StyleGAN2's discriminator: a gradient of a gradient through bias_act and upfirdn2d;
    its parameter gradient matches central differences along a random direction."""
    model = _stylegan(num_classes=3).double()
    real, labels = torch.rand(4, 1, 8, 8, dtype=torch.float64) * 2 - 1, torch.tensor([0, 1, 2, 0])
    D = model.discriminator
    r1 = r1_penalty(D, real, labels)
    params = [p for p in D.parameters()]
    grads = [g if g is not None else torch.zeros_like(p)          # the output bias: no R1 gradient
             for g, p in zip(torch.autograd.grad(r1, params, allow_unused=True), params)]
    assert all(torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0
    _check_directional_derivative(lambda: r1_penalty(D, real, labels), params, grads, 1e-5, atol=1e-8)


def _check_directional_derivative(value, params, grads, eps, atol):
    """The gradient ``grads`` of ``value()`` w.r.t. ``params`` along a random direction equals
    the central difference (value(p + eps d) - value(p - eps d)) / (2 eps)."""
    direction = [torch.randn_like(p) for p in params]

    def at(t):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(t * d)
        result = value().detach()
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.sub_(t * d)
        return result
    numeric = (at(eps) - at(-eps)) / (2 * eps)
    analytic = sum((g * d).sum() for g, d in zip(grads, direction))
    torch.testing.assert_close(analytic, numeric, rtol=1e-4, atol=atol)


def test_model_errors():
    with pytest.raises(ValueError, match=r"image_shape must be square with H = W = 4 \* 2\^k"):
        DCGAN((1, 8, 6))
    with pytest.raises(ValueError, match="image_shape must be square"):
        SNGAN((1, 12, 12))
    with pytest.raises(ValueError, match=r"image_shape must be \(C, H, W\)"):
        StyleGAN2((8, 8))
    model = DCGAN((1, 8, 8), latent=4, channels=4, num_classes=10)
    with pytest.raises(ValueError, match="class-conditional .* pass labels"):
        model.sample(2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        model.sample(2, torch.tensor([3, 10]))
    with pytest.raises(TypeError, match="labels must be an int64 tensor"):
        model.sample(2, torch.tensor([3.0, 1.0]))
    with pytest.raises(ValueError, match=r"real must have shape \[B, 1, 8, 8\]"):
        model.d_loss(torch.zeros(2, 1, 16, 16), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"z must have shape \[B, 4\]"):
        model.generate(torch.zeros(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels given but the model is unconditional"):
        DCGAN((1, 8, 8), latent=4, channels=4).sample(2, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="d_steps must be >= 1"):
        model.train_step(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), None, None, d_steps=0)


@pytest.mark.slow
def test_demo_gan_runs(tmp_path, capsys):
    """`fastgen demo --model gan` end to end at 2 training steps: the picture written, the
    classifier judgement and Frechet distances printed (the real digits' distance the smallest)."""
    from fastgen import cli
    assert cli.main(["demo", "--model", "gan", "--steps", "2", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "gan_samples.png").stat().st_size > 0
    out = capsys.readouterr().out
    accuracy = float(out.split("real test digits ")[1].split(",")[0])
    assert accuracy > 0.9
    fd = out.split("GAN samples ")[2]
    samples, train = float(fd.split(",")[0]), float(fd.split("real training digits ")[1].split(",")[0])
    assert train < samples


def test_faces_are_optional():
    """scikit-image's lfw_subset faces when it is installed (100 faces, 16x16 in [-1, 1]); None otherwise."""
    from fastgen import demo_gan
    faces = demo_gan.load_faces()
    try:
        import skimage  # noqa: F401
    except ImportError:
        assert faces is None
        assert demo_gan.run(steps=1, dataset="faces") == {}
        return
    assert faces.shape == (100, 1, 16, 16) and faces.abs().max() <= 1


def test_stylegan2_path_length_penalty(monkeypatch):
    """Path-length regularisation: its parameter gradient (a second derivative through the
    synthesis network) matches central differences along a random direction; it runs on the
    reference backend even when FASTGEN_BACKEND asks for Triton (whose modulated conv has no
    double backward, and refuses float64); the running mean a moves by pl_decay."""
    monkeypatch.setenv("FASTGEN_BACKEND", "triton")
    model = StyleGAN2((1, 8, 8), latent=4, w_dim=4, channels=4, mapping_layers=1, pl_weight=2.0,
                      pl_decay=0.5).double()

    def penalty(mean):
        model.pl_mean.fill_(mean)
        torch.manual_seed(0)                                  # the synthesis network's noise
        return model.path_length_penalty(4, generator=torch.Generator().manual_seed(1))

    value = penalty(0.0)
    first_mean = float(model.pl_mean)
    assert first_mean > 0 and value > 0                        # a = 0.5 * mean length after one call
    penalty(2 * first_mean)               # a = the mean length (the same draws) is a fixed point
    assert float(model.pl_mean) == pytest.approx(2 * first_mean, rel=1e-12)
    model.pl_decay = 1e-12            # a held at 0: the gradient treats a as a constant, differences would not
    params = list(model.generator.parameters())
    grads = [g if g is not None else torch.zeros_like(p)
             for g, p in zip(torch.autograd.grad(penalty(0.0), params, allow_unused=True), params)]
    assert sum(g.abs().sum() for g in grads) > 0
    _check_directional_derivative(lambda: penalty(0.0), params, grads, 1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="pl_weight"):
        StyleGAN2((1, 8, 8), pl_weight=-1.0)
