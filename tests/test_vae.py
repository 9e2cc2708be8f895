"""Latent-variable models (issue 11): the VAE's estimators against a linear-Gaussian model with a
closed-form likelihood (ELBO <= log p(x), IWAE tightening with k, exactness at the true
posterior), the KL / log-mean-exp / discretised-logistic helpers against closed forms and
torch.distributions, SA-VAE refinement, the hierarchical VAE, gradient skipping, short training
runs on the bundled digits, and bad input."""
import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from fastgen.data import load_digits
from fastgen.models import VAE, HierarchicalVAE, train_step
from fastgen.nn.latent import (DiagonalGaussian, discretized_logistic_log_prob, discretized_logistic_sample,
                               gaussian_kl, log_mean_exp, residual_normal_kl)
from fastgen.ops.pixelcnnpp_mixture import reference as mixture

D, LATENT, SIGMA2 = 5, 3, 0.3
SCALES = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)


class LinearGaussian:
    """p(z) = N(0, I_3), p(x|z) = N(W z + b, sigma^2 I_5) with W = Q diag(s) (orthogonal columns,
    so the exact posterior N(S W^T (x - b) / sigma^2, S), S = (I + W^T W / sigma^2)^-1, is diagonal
    and linear in x: a VAE with linear encoder and decoder represents it exactly)."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(D, LATENT, generator=g, dtype=torch.float64))
        self.W = q * SCALES
        self.b = torch.randn(D, generator=g, dtype=torch.float64)
        self.post_var = 1.0 / (1.0 + SCALES ** 2 / SIGMA2)

    def log_px(self, x):
        cov = self.W @ self.W.T + SIGMA2 * torch.eye(D, dtype=torch.float64)
        return MultivariateNormal(self.b, cov).log_prob(x)

    def data(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, LATENT, generator=g, dtype=torch.float64)
        return z @ self.W.T + self.b + math.sqrt(SIGMA2) * torch.randn(n, D, generator=g, dtype=torch.float64)

    def vae(self, mean_shift=0.0, log_var_shift=0.0):
        """The VAE (float64) whose decoder is this model and whose encoder is the exact posterior,
        its mean moved by ``mean_shift`` and its log-variance by ``log_var_shift``."""
        model = VAE(D, latent=LATENT, hidden=(), decoder="gaussian").double()
        enc, dec = model.encoder[0], model.decoder[0]
        A = self.post_var[:, None] * self.W.T / SIGMA2                       # posterior mean = A (x - b)
        with torch.no_grad():
            dec.weight.copy_(self.W)
            dec.bias.copy_(self.b)
            model.x_log_var.fill_(math.log(SIGMA2))
            enc.weight.zero_()
            enc.weight[:LATENT] = A
            enc.bias[:LATENT] = -A @ self.b + mean_shift
            enc.bias[LATENT:] = self.post_var.log() + log_var_shift
        return model


@pytest.fixture(scope="module")
def lg():
    return LinearGaussian()


@torch.no_grad()
def test_exact_posterior_makes_the_bounds_exact(lg):
    model = lg.vae()
    x = lg.data(6)
    log_px = lg.log_px(x)
    g = torch.Generator().manual_seed(2)
    # every importance weight p(x, z) / q(z|x) equals p(x) at the true posterior
    for k in (1, 7):
        torch.testing.assert_close(model.iwae_bound(x, k, generator=g), log_px, rtol=0, atol=1e-10)
    # the ELBO (analytic KL, Monte-Carlo reconstruction) is log p(x) up to its sampling error
    est = model.elbo(x, samples=20000, generator=g)
    torch.testing.assert_close(est.elbo, est.reconstruction - est.kl)
    assert (est.elbo - log_px).abs().max() < 0.05


@torch.no_grad()
def test_elbo_and_iwae_below_log_px_and_iwae_tightens_with_k(lg):
    model = lg.vae(mean_shift=0.6, log_var_shift=-1.0)             # a poor encoder: a gap to close
    x = lg.data(4)
    log_px = lg.log_px(x)
    g = torch.Generator().manual_seed(3)
    reps = 3000
    xr = x.repeat(reps, 1)
    means, ses = {}, {}
    for k in (1, 4, 16, 64):
        b = model.iwae_bound(xr, k, generator=g).view(reps, -1)
        assert b.dtype == torch.float64
        means[k], ses[k] = b.mean(0), b.std(0) / math.sqrt(reps)
    elbo = model.elbo(x, samples=reps, generator=g).elbo
    # E[ELBO] <= E[IWAE_k] <= E[IWAE_2k] <= log p(x), each with a margin of several standard errors
    assert (elbo < log_px - 0.1).all()
    torch.testing.assert_close(means[1], elbo, rtol=0, atol=float(6 * ses[1].max()))   # IWAE_1 is an ELBO
    for lo, hi in ((1, 4), (4, 16), (16, 64)):
        assert (means[hi] - means[lo] > 4 * (ses[hi] + ses[lo])).all(), (lo, hi, means[lo], means[hi])
    assert (means[64] < log_px).all()
    assert ((log_px - means[64]) < (log_px - means[1]) / 1.5).all()


def test_sa_vae_refinement_raises_the_elbo(lg):
    model = lg.vae(mean_shift=0.6, log_var_shift=-1.0)
    x = lg.data(4)
    log_px = lg.log_px(x)
    g = torch.Generator().manual_seed(4)
    q0 = model.encode(x)
    q = model.refine_posterior(x, steps=200, lr=0.05, samples=32, generator=g)
    assert not q.mean.requires_grad and q.mean.shape == q0.mean.shape
    before = model.elbo(x, posterior=q0, samples=20000, generator=g).elbo
    after = model.elbo(x, posterior=q, samples=20000, generator=g).elbo
    assert (after > before + 0.1).all()
    assert ((log_px - after).abs() < 0.1).all()         # the family holds the posterior: refinement finds it
    # through elbo(): the refined bound is higher than the encoder's too
    refined = model.elbo(x, refine_steps=150, refine_lr=0.05, samples=20000, generator=g).elbo
    assert (refined > before + 0.1).all()


@pytest.mark.parametrize("refine_grad", ["unrolled", "stop"])
def test_sa_vae_gradient_to_the_encoder(lg, refine_grad):
    model = lg.vae(mean_shift=0.6)
    x = lg.data(3)
    model.elbo(x, refine_steps=3, refine_lr=0.05, refine_grad=refine_grad).elbo.sum().backward()
    enc_grad = model.encoder[0].weight.grad
    assert model.decoder[0].weight.grad is not None
    if refine_grad == "unrolled":
        assert enc_grad is not None and enc_grad.abs().sum() > 0
    else:
        assert enc_grad is None


def test_sa_vae_unrolled_gradient_is_exact(lg):
    """With the noise fixed, the refined ELBO is a smooth function of the initial (mean, log_var):
    its gradient through the unrolled steps (second-order terms included) passes gradcheck."""
    model = lg.vae(mean_shift=0.6)
    x = lg.data(2)
    q0 = model.encode(x)

    def refined_elbo(mean, log_var):
        return model.elbo(x, posterior=DiagonalGaussian(mean, log_var), refine_steps=3, refine_lr=0.05,
                          generator=torch.Generator().manual_seed(13)).elbo

    inputs = (q0.mean.detach().requires_grad_(), q0.log_var.detach().requires_grad_())
    assert torch.autograd.gradcheck(refined_elbo, inputs)


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(5)
    mq, lq, mp, lp = (torch.randn(4, 3, 2, generator=g, dtype=torch.float64) for _ in range(4))
    q, p = DiagonalGaussian(mq, lq), DiagonalGaussian(mp, lp)
    expect = kl_divergence(Normal(mq, (0.5 * lq).exp()), Normal(mp, (0.5 * lp).exp())).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_kl(q, p), expect)
    std = kl_divergence(Normal(mq, (0.5 * lq).exp()), Normal(torch.zeros_like(mq), 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_kl(q), std)
    # NVAE's residual normal: q = N(mu_p + dmu, (sigma_p * dsigma)^2) against p = N(mu_p, sigma_p^2)
    dmu, dlv = torch.randn(4, 3, 2, generator=g, dtype=torch.float64), torch.randn(4, 3, 2, generator=g).double()
    sp = (0.5 * lp).exp()
    expect = kl_divergence(Normal(mp + dmu, sp * (0.5 * dlv).exp()), Normal(mp, sp)).flatten(1).sum(1)
    torch.testing.assert_close(residual_normal_kl(dmu, lp, dlv), expect)
    # and the model's KL is the analytic one of its encoder's Gaussian
    model = VAE(6, latent=2, hidden=(8,), decoder="gaussian")
    x = torch.randn(5, 6)
    enc = model.encode(x)
    est = model.elbo(x)
    expect = kl_divergence(Normal(enc.mean, (0.5 * enc.log_var).exp()), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(est.kl, expect)


def test_gaussian_log_prob_matches_torch_distributions():
    g = torch.Generator().manual_seed(6)
    z, m, lv = (torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(DiagonalGaussian(m, lv).log_prob(z), Normal(m, (0.5 * lv).exp()).log_prob(z).sum(1))


def test_log_mean_exp_is_stable_and_float32():
    w = torch.tensor([[1000.0, -1000.0], [1000.0, -1001.0], [1000.0, -1002.0]])
    torch.testing.assert_close(log_mean_exp(w, dim=0), torch.tensor([1000.0, -1000.0 - math.log(3) + math.log(
        math.exp(0) + math.exp(-1) + math.exp(-2))]))
    half = torch.tensor([60000.0, 60000.0], dtype=torch.float16)
    out = log_mean_exp(half)
    assert out.dtype == torch.float32 and out.item() == 60000.0      # exp(60000) overflows any dtype
    assert log_mean_exp(torch.zeros(3, dtype=torch.float64)).dtype == torch.float64
    small = torch.randn(5, 7, dtype=torch.float64)
    torch.testing.assert_close(log_mean_exp(small, 1), small.exp().mean(1).log())


def test_discretized_logistic_is_pixelcnnpp_with_one_component():
    g = torch.Generator().manual_seed(7)
    L = 17
    mean = torch.rand(2, 1, 3, 4, generator=g, dtype=torch.float64) * 2.4 - 1.2
    log_scale = torch.randn(2, 1, 3, 4, generator=g, dtype=torch.float64) - 2
    values = torch.randint(0, L, mean.shape, generator=g)
    # PixelCNN++'s head with one component: logit, mean, log-scale per pixel (grey)
    params = torch.cat([torch.zeros_like(mean), mean, log_scale], dim=1)
    lw, m, ls = mixture.mixture_parameters(params, mean, 1)
    ref = mixture.bin_log_probs(values[:, None], values[:, None] * (2 / (L - 1)) - 1.0, lw, m, ls, L)
    torch.testing.assert_close(discretized_logistic_log_prob(values, mean, log_scale, L), ref.flatten(1).sum(1))
    # per value: the masses over levels sum to 1
    one = torch.stack([discretized_logistic_log_prob(torch.full((1, 1), v), mean[:1, :1, :1, :1].reshape(1, 1),
                                                     log_scale[:1, :1, :1, :1].reshape(1, 1), L) for v in range(L)])
    # (up to PixelCNN++'s rule for bins of mass < 1e-5, which take the density at their centre)
    torch.testing.assert_close(one.exp().sum(), torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-5)


def test_discretized_logistic_sample_frequencies():
    L, n = 5, 40000
    mean = torch.full((n, 1), 0.2)
    log_scale = torch.full((n, 1), math.log(0.4))
    draws = discretized_logistic_sample(mean, log_scale, L, generator=torch.Generator().manual_seed(8))
    assert draws.dtype == torch.long and draws.shape == (n, 1)
    freq = torch.bincount(draws.flatten(), minlength=L).double() / n
    probs = torch.stack([discretized_logistic_log_prob(torch.full((1, 1), v), mean[:1], log_scale[:1], L)
                         for v in range(L)]).exp().double().flatten()
    assert (freq - probs).abs().max() < 4 * math.sqrt(0.25 / n)


DIGITS = load_digits("train").images


@pytest.mark.parametrize("make,x", [
    pytest.param(lambda: VAE((1, 8, 8), latent=4, hidden=8, levels=17), DIGITS[:5], id="conv-logistic"),
    pytest.param(lambda: VAE((1, 8, 8), latent=4, hidden=8, decoder="bernoulli"), (DIGITS[:5] >= 8).float(),
                 id="conv-bernoulli"),
    pytest.param(lambda: VAE((3, 4, 12), latent=3, hidden=4, decoder="gaussian"), torch.randn(5, 3, 4, 12),
                 id="conv-gaussian-C3-H4-W12"),
    pytest.param(lambda: VAE(7, latent=2, hidden=(9, 5), decoder="bernoulli"), torch.randint(0, 2, (5, 7)),
                 id="mlp-bernoulli-D7"),
    pytest.param(lambda: VAE(7, latent=2, hidden=6, levels=4), torch.randint(0, 4, (5, 7)), id="mlp-logistic-L4"),
])
def test_vae_shapes(make, x):
    model = make()
    g = torch.Generator().manual_seed(9)
    est = model.elbo(x, generator=g)
    assert type(est).__name__ == "ELBO" and all(t.shape == (5,) for t in est)
    assert torch.isfinite(est.elbo).all() and (est.kl >= 0).all()
    assert model.iwae_bound(x, 3, generator=g).shape == (5,)
    assert model.bits_per_dim(x, generator=g).shape == (5,)
    assert model.loss(x, beta=0.5, generator=g).dim() == 0
    assert model.elbo(x, refine_steps=2, refine_lr=1e-3, generator=g).elbo.shape == (5,)
    s = model.sample(3, generator=g)
    assert s.shape == (3, *x.shape[1:])
    if model.decoder_kind == "logistic":
        assert s.dtype == torch.long and s.min() >= 0 and s.max() < model.levels
        model.check_data(model.reconstruct(x))
    elif model.decoder_kind == "bernoulli":
        model.check_data(s)
    assert model.reconstruct(x).shape == x.shape
    same = model.sample(2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(same, model.sample(2, generator=torch.Generator().manual_seed(1)))


def test_beta_weights_the_kl():
    model = VAE(4, latent=2, hidden=(), decoder="gaussian")
    x = torch.randn(3, 4)
    a = model.elbo(x, beta=1.0, generator=torch.Generator().manual_seed(0))
    b = model.elbo(x, beta=4.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(b.elbo, a.reconstruction - 4.0 * a.kl)
    c = VAE(4, latent=2, hidden=(), decoder="gaussian", beta=4.0)
    c.load_state_dict(model.state_dict())
    torch.testing.assert_close(c.elbo(x, generator=torch.Generator().manual_seed(0)).elbo, b.elbo)


def _train(model, steps, lr, seed=0, **kw):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    data = DIGITS[:512]
    fixed = DIGITS[512:640]
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        start = model.loss(fixed, generator=torch.Generator().manual_seed(12)).item()
    for i in range(steps):
        batch = data[torch.randint(0, len(data), (64,), generator=g)]
        step = train_step(model, opt, batch, **kw)
        assert not step.skipped
    with torch.no_grad():
        end = model.loss(fixed, generator=torch.Generator().manual_seed(12)).item()
    return start, end


def test_vae_training_lowers_the_loss_on_digits():
    start, end = _train(VAE((1, 8, 8), latent=8, hidden=16, levels=17), steps=40, lr=3e-3)
    assert end < start - 0.3, (start, end)


def test_hierarchical_vae_training_lowers_the_loss_on_digits():
    model = HierarchicalVAE((1, 8, 8), levels=17, groups_per_scale=(1, 1, 1), channels=16)
    start, end = _train(model, steps=30, lr=1e-2, skip_threshold=1e4)
    assert end < start - 0.3, (start, end)


def test_hierarchical_vae_bundle_and_sample():
    model = HierarchicalVAE((1, 8, 8), levels=17, groups_per_scale=(1, 2, 2), channels=8, latent_channels=2)
    x = DIGITS[:3]
    est = model.elbo(x, generator=torch.Generator().manual_seed(0))
    assert est.kl_groups.shape == (3, 5) and est.elbo.shape == (3,)
    # the posterior starts as the prior (zero-initialised residuals): every group's KL is 0
    assert est.kl_groups.abs().max() == 0
    torch.testing.assert_close(est.elbo, est.reconstruction - est.kl_groups.sum(1))
    with torch.no_grad():
        for cells in model.cells:
            for cell in cells:
                cell.posterior.c3.weight.normal_(0, 0.1)
    est = model.elbo(x)
    assert (est.kl_groups > 0).all()
    torch.testing.assert_close(est.kl, est.kl_groups.sum(1))
    for t in (1.0, 0.5, 0.0):
        s = model.sample(4, temperature=t, generator=torch.Generator().manual_seed(1))
        assert s.shape == (4, 1, 8, 8) and s.dtype == torch.long and 0 <= s.min() and s.max() < 17
    assert model.bits_per_dim(x).shape == (3,)


class _Scaled(torch.nn.Module):
    """A model whose loss is another's times ``factor`` (a huge gradient on demand)."""

    def __init__(self, inner, factor):
        super().__init__()
        self.inner, self.factor = inner, factor

    def loss(self, x):
        return self.inner.loss(x) * self.factor


@pytest.mark.parametrize("factor,expect_skip", [(1.0, False), (1e9, True), (float("nan"), True)],
                         ids=["normal", "huge", "nan"])
def test_gradient_skipping(factor, expect_skip):
    inner = HierarchicalVAE((1, 8, 8), levels=17, groups_per_scale=(1, 1), channels=8)
    model = _Scaled(inner, factor)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    step = train_step(model, opt, DIGITS[:8], skip_threshold=1e4)
    assert step.skipped == expect_skip
    unchanged = all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert unchanged == expect_skip
    if expect_skip:
        assert not opt.state and all(p.grad is None for p in model.parameters())
    else:
        assert step.grad_norm < 1e4


def test_bad_input():
    model = VAE((1, 8, 8), latent=4, hidden=8, levels=17)
    with pytest.raises(TypeError, match="x must hold integer levels"):
        model.elbo(DIGITS[:2].float())
    with pytest.raises(ValueError, match=r"x must have shape \[B, 1, 8, 8\]"):
        model.elbo(DIGITS[:2, 0])
    with pytest.raises(ValueError, match=r"x values must lie in \[0, 17\)"):
        model.elbo(DIGITS[:2] + 1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        model.iwae_bound(DIGITS[:2], 0)
    with pytest.raises(TypeError, match="k must be an int"):
        model.iwae_bound(DIGITS[:2], 2.0)
    with pytest.raises(ValueError, match="refine_grad must be one of"):
        model.elbo(DIGITS[:2], refine_steps=1, refine_grad="none")
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        model.refine_posterior(DIGITS[:2], steps=1, lr=0.0)
    with pytest.raises(ValueError, match=r"posterior mean and log_var must be \[B, 4\]"):
        model.refine_posterior(DIGITS[:2], 1, 0.1, posterior=DiagonalGaussian(torch.zeros(2, 3), torch.zeros(2, 3)))
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        model.elbo(DIGITS[:2], beta=-1.0)
    with pytest.raises(ValueError, match="decoder='logistic' models integer data: pass levels"):
        VAE((1, 8, 8))
    with pytest.raises(ValueError, match="decoder must be one of"):
        VAE(4, decoder="poisson")
    with pytest.raises(ValueError, match="levels is only used by decoder='logistic'"):
        VAE(4, decoder="gaussian", levels=17)
    with pytest.raises(ValueError, match="H and W divisible by 4"):
        VAE((1, 6, 8), levels=17)
    with pytest.raises(ValueError, match=r"image_shape must be \(C, H, W\) or an int D"):
        VAE((8, 8), levels=17)
    with pytest.raises(ValueError, match="latent must be >= 1"):
        VAE(4, latent=0, decoder="gaussian")
    with pytest.raises(ValueError, match="x must be binary"):
        VAE(4, decoder="bernoulli").elbo(torch.full((2, 4), 0.5))
    with pytest.raises(TypeError, match="x must be a float tensor for decoder='gaussian'"):
        VAE(4, decoder="gaussian").elbo(torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="x must be finite"):
        VAE(4, decoder="gaussian").elbo(torch.tensor([[0.0, float("nan"), 0.0, 0.0]]))
    hv = HierarchicalVAE((1, 8, 8), levels=17, groups_per_scale=(1, 1), channels=8)
    with pytest.raises(TypeError, match="x must be an integer tensor"):
        hv.elbo(DIGITS[:2].float())
    with pytest.raises(ValueError, match=r"x values must lie in \[0, 17\)"):
        hv.elbo(DIGITS[:2] - 1)
    with pytest.raises(ValueError, match=r"divisible by 2\^\(S-1\) = 8"):
        HierarchicalVAE((1, 12, 12), levels=17, groups_per_scale=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="groups_per_scale must name at least one scale"):
        HierarchicalVAE((1, 8, 8), levels=17, groups_per_scale=())
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        hv.sample(2, temperature=-1.0)
    with pytest.raises(ValueError, match="skip_threshold must be a finite number > 0"):
        train_step(hv, torch.optim.SGD(hv.parameters(), lr=0.1), DIGITS[:2], skip_threshold=0.0)


@pytest.mark.slow
@pytest.mark.parametrize("make,steps", [
    pytest.param(lambda: VAE((1, 8, 8), latent=16, hidden=32, levels=17), 800, id="VAE"),
    pytest.param(lambda: HierarchicalVAE((1, 8, 8), levels=17), 800, id="HierarchicalVAE"),
])
def test_trained_on_digits_beats_the_per_pixel_baseline(make, steps):
    """A few minutes of CPU training: the test ELBO, in bits/dim (the PixelCNN demo's units), is
    below the independent per-pixel baseline of ``fastgen demo``, and IWAE_k is tighter still."""
    from fastgen.demo import independent_baseline_bits
    train, test = load_digits("train"), load_digits("test")
    torch.manual_seed(0)
    model = make()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        train_step(model, opt, train.images[torch.randint(0, len(train.images), (64,), generator=g)],
                   skip_threshold=400.0)
    baseline = independent_baseline_bits(train.images, test.images, train.levels)
    with torch.no_grad():
        bits = model.bits_per_dim(test.images, generator=g).mean().item()
        assert bits < baseline - 0.2, (bits, baseline)
        if isinstance(model, VAE):
            assert model.bits_per_dim(test.images, k=32, generator=g).mean().item() < bits
