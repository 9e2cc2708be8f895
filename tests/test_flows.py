"""Flow layers (fastgen.nn.flows) and flow models (NICE, RealNVP, Glow): invertibility, log-dets
against the brute-force Jacobian, ActNorm's initialisation, sampling, a training signal, bad
input, and the Triton backend (under the interpreter) against the reference."""
import math

import pytest
import torch

from fastgen.models import NICE, Glow, RealNVP
from fastgen.models.flows import FlowLatents, dequantize, quantize
from fastgen.nn import ActNorm, AdditiveCoupling, AffineCoupling, FlowSequential, InvConv1x1, Squeeze
from fastgen.ops.flow_coupling import FlowOutput
from helpers import assert_close_rel


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tests run thousands of tiny ops: one intra-op thread is faster than several, and
    far faster on a loaded machine (a 2-thread matmul waits for a busy core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@torch.no_grad()
def perturb(module, scale=0.2, seed=1):
    """Random parameters (the zero-initialised conditioner outputs and priors would make the
    log-dets trivial) and every ActNorm marked initialised."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    for m in module.modules():
        if isinstance(m, ActNorm):
            m.initialized.fill_(True)
    return module


def brute_logdet(fn, x):
    """log |det J| of fn at each sample of x (fn maps [1, ...] -> anything with D values)."""
    out = []
    for b in range(x.shape[0]):
        xb = x[b:b + 1]
        jac = torch.func.jacrev(lambda v: fn(v.view_as(xb)).reshape(-1))(xb.reshape(-1))
        assert jac.shape[0] == jac.shape[1], "the map must keep the dimension"
        out.append(torch.linalg.slogdet(jac.double())[1])
    return torch.stack(out)


LAYERS = {
    "affine-channel-C5-p0-sigmoid": (lambda: AffineCoupling(5, hidden=8), (2, 5, 3, 4)),
    "affine-channel-C5-p1-exptanh": (lambda: AffineCoupling(5, hidden=8, parity=1, scale="exp_tanh"), (2, 5, 3, 4)),
    "affine-checker-C2-p0": (lambda: AffineCoupling(2, hidden=8, mask="checkerboard"), (2, 2, 3, 5)),
    "affine-checker-C1-p1-exptanh": (lambda: AffineCoupling(1, hidden=8, mask="checkerboard", parity=1,
                                                            scale="exp_tanh"), (2, 1, 4, 4)),
    "affine-mlp-D7": (lambda: AffineCoupling(7, hidden=16, conditioner="mlp", depth=3), (3, 7)),
    "additive-conv-C4-p1": (lambda: AdditiveCoupling(4, hidden=8, parity=1), (2, 4, 3, 3)),
    "additive-mlp-D6": (lambda: AdditiveCoupling(6, hidden=16, conditioner="mlp"), (3, 6)),
    "additive-checker-C3": (lambda: AdditiveCoupling(3, hidden=8, mask="checkerboard"), (2, 3, 2, 4)),
    "actnorm-image": (lambda: ActNorm(3), (2, 3, 3, 4)),
    "actnorm-vector": (lambda: ActNorm(5), (3, 5)),
    "invconv-image-C4": (lambda: InvConv1x1(4), (2, 4, 3, 3)),
    "invconv-vector-C3": (lambda: InvConv1x1(3), (3, 3)),
    "invconv-C1": (lambda: InvConv1x1(1), (2, 1, 2, 3)),
    "squeeze": (lambda: Squeeze(), (2, 3, 4, 6)),
    "glow-step": (lambda: FlowSequential(ActNorm(4), InvConv1x1(4), AffineCoupling(4, hidden=8)), (2, 4, 2, 3)),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_inverse_of_forward(name):
    make, shape = LAYERS[name]
    layer = perturb(make())
    x = torch.randn(shape)
    out = layer(x)
    assert isinstance(out, FlowOutput)
    assert out.out.shape == x.shape if name != "squeeze" else out.out.shape == (2, 12, 2, 3)
    assert out.logdet.shape == (shape[0],) and out.logdet.dtype == torch.float32
    assert_close_rel(layer.inverse(out.out), x, 1e-5, name)


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_logdet_matches_jacobian(name):
    make, shape = LAYERS[name]
    layer = perturb(make()).double()
    x = torch.randn(shape, dtype=torch.float64)
    logdet = layer(x).logdet
    expected = brute_logdet(lambda v: layer(v).out, x)
    torch.testing.assert_close(logdet.double(), expected, rtol=1e-4, atol=1e-4)
    # the inverse's log-det is the negative (checked through the Jacobian of the inverse)
    y = layer(x).out
    torch.testing.assert_close(brute_logdet(layer.inverse, y), -expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 3), (2, 5, 2, 3)], ids=["cond-vector", "cond-map"])
def test_conditional_coupling(shape):
    layer = perturb(AffineCoupling(4, hidden=8, cond_channels=3))
    x = torch.randn(2, 4, 3, 3)
    cond = torch.randn(2, 3) if len(shape) == 2 else torch.randn(2, 3, 3, 3)
    y, _ = layer(x, cond)
    assert_close_rel(layer.inverse(y, cond), x, 1e-5)
    # the conditioning matters
    y2, _ = layer(x, cond + 1.0)
    assert not torch.allclose(y, y2)
    layer = layer.double()
    x, cond = x.double(), cond.double()
    expected = torch.stack([brute_logdet(lambda v: layer(v, cond[b:b + 1]).out, x[b:b + 1])[0] for b in range(2)])
    torch.testing.assert_close(layer(x, cond).logdet.double(), expected, rtol=1e-4, atol=1e-4)


def test_channel_coupling_passes_half_through_and_starts_as_identity():
    x = torch.randn(2, 5, 3, 3)
    layer = AffineCoupling(5, hidden=8, scale="exp_tanh")          # zero-initialised output: identity
    y, logdet = layer(x)
    torch.testing.assert_close(y, x)
    torch.testing.assert_close(logdet, torch.zeros(2))
    perturb(layer)
    y, _ = layer(x)
    torch.testing.assert_close(y[:, :2], x[:, :2], rtol=0, atol=0)   # parity 0: the first C//2 pass
    layer = perturb(AffineCoupling(5, hidden=8, parity=1))
    y, _ = layer(x)
    torch.testing.assert_close(y[:, 2:], x[:, 2:], rtol=0, atol=0)
    layer = perturb(AffineCoupling(2, hidden=8, mask="checkerboard", parity=1))
    y, _ = layer(x[:, :2])
    keep = (torch.arange(3)[:, None] + torch.arange(3)[None]) % 2 == 1
    torch.testing.assert_close(y[..., keep], x[:, :2][..., keep], rtol=0, atol=0)
    assert not torch.allclose(y[..., ~keep], x[:, :2][..., ~keep])


def test_actnorm_data_dependent_init():
    x = 3.0 + 2.5 * torch.randn(16, 3, 5, 4) * torch.tensor([1.0, 0.1, 4.0]).view(1, 3, 1, 1)
    layer = ActNorm(3)
    y, logdet = layer(x)
    assert bool(layer.initialized)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(logdet, (20 * layer.log_scale.sum()).expand(16).detach())
    # the second batch does not re-initialise
    before = layer.log_scale.detach().clone()
    layer(torch.randn(4, 3, 5, 4))
    torch.testing.assert_close(layer.log_scale.detach(), before)
    # loading a state dict carries the initialisation
    other = ActNorm(3)
    other.load_state_dict(layer.state_dict())
    assert bool(other.initialized)
    torch.testing.assert_close(other(x).out, y)
    # vectors
    v = 1.0 + 0.3 * torch.randn(64, 4)
    out = ActNorm(4)(v).out
    torch.testing.assert_close(out.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(0, unbiased=False), torch.ones(4), atol=1e-5, rtol=0)


def test_actnorm_degenerate_init_raises():
    x = torch.randn(8, 3, 2, 2)
    x[:, 1] = 0.5                                                   # a constant channel
    with pytest.raises(ValueError, match=r"channel\(s\) \[1\] constant"):
        ActNorm(3)(x)
    with pytest.raises(ValueError, match="more than one value"):
        ActNorm(4)(torch.randn(1, 4))
    x = torch.randn(8, 3)
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        ActNorm(3)(x)
    layer = ActNorm(3)
    y = torch.randn(2, 3)
    torch.testing.assert_close(layer.inverse(y), y)                # inverse never initialises
    assert not bool(layer.initialized)


def test_invconv_weight_is_lu_and_rotation_at_init():
    layer = InvConv1x1(6)
    w = layer.weight().detach()
    torch.testing.assert_close(w @ w.T, torch.eye(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.inverse_weight().detach() @ w, torch.eye(6), atol=1e-5, rtol=0)
    perturb(layer, scale=0.3)
    w = layer.weight().detach().double()
    torch.testing.assert_close(torch.linalg.slogdet(w)[1].float(), layer.log_s.detach().sum())


def test_squeeze_layout():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y, logdet = Squeeze()(x)
    assert y.shape == (1, 4, 2, 2)
    torch.testing.assert_close(y[0, :, 0, 0], torch.tensor([0.0, 1.0, 4.0, 5.0]))   # one 2x2 block
    torch.testing.assert_close(logdet, torch.zeros(1))


def test_layer_bad_input():
    with pytest.raises(ValueError, match="Squeeze: x's height and width must be even"):
        Squeeze()(torch.randn(1, 2, 3, 4))
    with pytest.raises(ValueError, match="Squeeze: y's channels must be a multiple of 4"):
        Squeeze().inverse(torch.randn(1, 6, 2, 2))
    with pytest.raises(ValueError, match="Squeeze: x must be"):
        Squeeze()(torch.randn(2, 4))
    with pytest.raises(ValueError, match="channel mask splits the channels in two, so channels must be >= 2"):
        AffineCoupling(1)
    with pytest.raises(ValueError, match="channels must be a positive int"):
        AdditiveCoupling(0)
    with pytest.raises(ValueError, match="mask must be"):
        AffineCoupling(4, mask="diagonal")
    with pytest.raises(ValueError, match="parity must be 0 or 1"):
        AffineCoupling(4, parity=2)
    with pytest.raises(ValueError, match="scale must be one of"):
        AffineCoupling(4, scale="additive")
    with pytest.raises(ValueError, match="checkerboard' needs images"):
        AffineCoupling(4, mask="checkerboard", conditioner="mlp")
    layer = AffineCoupling(4, hidden=4)
    with pytest.raises(ValueError, match=r"AffineCoupling: x must have 4 channels"):
        layer(torch.randn(2, 3, 2, 2))
    with pytest.raises(ValueError, match=r"AffineCoupling: y must be \[B, C, H, W\]"):
        layer.inverse(torch.randn(2, 4))
    with pytest.raises(TypeError, match="AffineCoupling: x must be floating point"):
        layer(torch.ones(2, 4, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="cond_channels=0, so cond must be None"):
        layer(torch.randn(2, 4, 2, 2), torch.randn(2, 3))
    cond_layer = AffineCoupling(4, hidden=4, cond_channels=3)
    with pytest.raises(ValueError, match="cond_channels=3: pass cond"):
        cond_layer(torch.randn(2, 4, 2, 2))
    with pytest.raises(ValueError, match=r"cond must be \[2, 3\] or \[2, 3, 2, 2\]"):
        cond_layer(torch.randn(2, 4, 2, 2), torch.randn(2, 5))
    with pytest.raises(ValueError, match="ActNorm: x must have 3 channels"):
        ActNorm(3)(torch.randn(2, 4))
    with pytest.raises(TypeError, match="InvConv1x1: x must be a torch.Tensor"):
        InvConv1x1(3)([1.0, 2.0, 3.0])


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------

def small_models():
    return {
        "nice-vector": NICE(6, layers=3, hidden=16, depth=2),
        "nice-gaussian-image": NICE((1, 2, 3), layers=4, hidden=16, depth=2, prior="gaussian"),
        "realnvp": RealNVP((1, 4, 4), scales=2, hidden=8),
        "realnvp-3scales": RealNVP((2, 4, 4), scales=3, hidden=8),
        "glow": Glow((1, 4, 4), levels=2, steps=2, hidden=8),
        "glow-classes": Glow((2, 4, 4), levels=2, steps=1, hidden=8, num_classes=3),
    }


MODEL_NAMES = list(small_models())


def _flat_latents(out):
    if isinstance(out, FlowLatents):
        return torch.cat([z.flatten(1) for z in out.latents], 1)
    return out.out.flatten(1)


def _y(model, batch):
    return torch.arange(batch) % model.num_classes if model.num_classes else None


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_inverse_of_forward(name):
    model = perturb(small_models()[name], scale=0.1)
    x = torch.rand(3, *model.shape) - 0.5
    y = _y(model, 3)
    out = model(x, y)
    assert out.logdet.shape == (3,) and out.logdet.dtype == torch.float32
    latents = out.latents if isinstance(out, FlowLatents) else out.out
    if isinstance(out, FlowLatents):
        assert [tuple(z.shape[1:]) for z in latents] == model.latent_shapes()
    assert _flat_latents(out).shape == (3, model.dim)
    assert_close_rel(model.inverse(latents, y), x, 1e-5, name)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_logdet_matches_jacobian(name):
    model = perturb(small_models()[name], scale=0.1).double()
    x = torch.rand(2, *model.shape, dtype=torch.float64) - 0.5
    y = _y(model, 2)
    expected = torch.stack([brute_logdet(lambda v: _flat_latents(model(v, None if y is None else y[b:b + 1])),
                                         x[b:b + 1])[0] for b in range(2)])
    torch.testing.assert_close(model(x, y).logdet.double(), expected, rtol=1e-4, atol=1e-4)


def test_log_prob_and_bits_per_dim_conventions():
    model = perturb(Glow((1, 4, 4), levels=2, steps=1, hidden=8, pixel_levels=17), scale=0.05)
    images = torch.randint(0, 17, (5, 1, 4, 4))
    x = model.dequantize(images, torch.Generator().manual_seed(3))
    assert x.min() >= -0.5 and x.max() < 0.5
    torch.testing.assert_close(quantize(x, 17), images, rtol=0, atol=0)
    bits = model.bits_per_dim(images, generator=torch.Generator().manual_seed(3))
    expected = (-model.log_prob(x) + 16 * math.log(17)) / (16 * math.log(2))
    torch.testing.assert_close(bits, expected)
    torch.testing.assert_close(model.loss(images, generator=torch.Generator().manual_seed(3)), expected.mean())
    # log_prob = prior log-density of the latents + logdet (standard-normal RealNVP: by hand)
    rnvp = perturb(RealNVP((1, 4, 4), scales=2, hidden=8), scale=0.1)
    latents, logdet = rnvp(x)
    z = torch.cat([t.flatten(1) for t in latents], 1)
    by_hand = (-0.5 * math.log(2 * math.pi) - 0.5 * z ** 2).sum(1) + logdet
    torch.testing.assert_close(rnvp.log_prob(x), by_hand)
    # NICE's logistic prior integrates to one: a 1-D check of the density
    nice = NICE(2, layers=2, hidden=4, depth=1)
    grid = torch.linspace(-30, 30, 20001)
    density = nice.prior_log_prob(torch.stack([grid, torch.zeros_like(grid)], 1)).exp() * 4   # p(0) = 1/4
    assert abs(torch.trapezoid(density, grid).item() - 1.0) < 1e-3
    # dequantise helper: range and dtype
    d = dequantize(torch.zeros(2, 3, dtype=torch.long), 4, dtype=torch.float64)
    assert d.dtype == torch.float64 and (d >= -0.5).all() and (d < -0.25).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_sample_shapes_and_temperature_zero_is_the_prior_mean(name):
    model = perturb(small_models()[name], scale=0.1)
    y = _y(model, 4)
    x = model.sample(4, temperature=0.8, y=y, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, *model.shape) and torch.isfinite(x).all()
    again = model.sample(4, temperature=0.8, y=y, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, again)
    x0 = model.sample(4, temperature=0.0, y=y)
    if isinstance(model, NICE):
        torch.testing.assert_close(model(x0).out, torch.zeros(4, model.dim), atol=1e-5, rtol=0)
        return
    # every latent sits at its prior's mean: walk the encoder by hand
    h = x0
    for i, stage in enumerate(model.stages):
        h, _ = stage(h)
        if i < len(model.split_priors):
            keep = h.shape[1] // 2
            h, z = h[:, :keep], h[:, keep:]
            torch.testing.assert_close(z, model.split_priors[i](h)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, model.top_prior(4, y)[0], atol=1e-5, rtol=1e-5)


def test_class_conditional_glow_samples_depend_on_the_class():
    model = perturb(Glow((1, 4, 4), levels=2, steps=1, hidden=8, num_classes=3), scale=0.3)
    a = model.sample(2, temperature=0.0, y=0)
    b = model.sample(2, temperature=0.0, y=torch.tensor([2, 2]))
    assert not torch.allclose(a, b)
    x = torch.rand(2, 1, 4, 4) - 0.5
    assert not torch.allclose(model.log_prob(x, torch.tensor([0, 0])), model.log_prob(x, torch.tensor([1, 1])))


@pytest.mark.parametrize("make", [
    lambda: NICE((1, 4, 4), layers=4, hidden=32, depth=2, pixel_levels=17),
    lambda: RealNVP((1, 4, 4), scales=2, hidden=16, pixel_levels=17),
    lambda: Glow((1, 4, 4), levels=2, steps=2, hidden=16, num_classes=2, pixel_levels=17),
], ids=["nice", "realnvp", "glow"])
def test_training_lowers_bits_per_dim(make):
    """A real training signal: a few Adam steps on a fixed structured batch lower bits/dim."""
    model = make()
    g = torch.Generator().manual_seed(0)
    ramp = torch.arange(4).view(1, 1, 1, 4) * 4                    # a left-to-right gradient image
    images = (ramp + torch.randint(0, 3, (32, 1, 4, 4), generator=g)).clamp(0, 16)
    y = torch.arange(32) % 2 if model.num_classes else None
    eval_gen = lambda: torch.Generator().manual_seed(123)  # noqa: E731 - same noise before and after
    model.loss(images, y, generator=torch.Generator().manual_seed(5))    # ActNorm's init batch
    with torch.no_grad():
        before = model.loss(images, y, generator=eval_gen()).item()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(30):
        opt.zero_grad()
        loss = model.loss(images, y, generator=g)
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = model.loss(images, y, generator=eval_gen()).item()
    assert math.isfinite(after) and after < before - 0.1, (before, after)


def test_model_bad_input():
    with pytest.raises(ValueError, match=r"Glow: image_shape \(1, 6, 6\): H and W must be divisible by 4"):
        Glow((1, 6, 6), levels=2)
    with pytest.raises(ValueError, match="image_shape must be"):
        RealNVP((8, 8))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        NICE(1)
    with pytest.raises(ValueError, match="prior must be"):
        NICE(4, prior="laplace")
    with pytest.raises(ValueError, match="pixel_levels must be an int >= 2"):
        Glow((1, 4, 4), levels=1, pixel_levels=1)
    model = Glow((1, 4, 4), levels=2, steps=1, hidden=4, pixel_levels=17)
    with pytest.raises(TypeError, match="images must be an integer tensor"):
        model.bits_per_dim(torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"images must lie in \[0, 17\)"):
        model.bits_per_dim(torch.full((2, 1, 4, 4), 17))
    with pytest.raises(ValueError, match=r"x must have shape \[B, 1, 4, 4\]"):
        model.log_prob(torch.rand(2, 1, 8, 8))
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        model.log_prob(torch.zeros(2, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="unconditional"):
        model.log_prob(torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="n must be a positive int"):
        model.sample(0)
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        model.sample(2, temperature=-1.0)
    with pytest.raises(ValueError, match=r"latents\[1\] must have shape"):
        model.inverse([torch.zeros(2, 2, 2, 2), torch.zeros(2, 2, 1, 1)])
    cond = Glow((1, 4, 4), levels=2, steps=1, hidden=4, num_classes=3)
    with pytest.raises(ValueError, match="class-conditional"):
        cond.sample(2)
    with pytest.raises(ValueError, match=r"y must lie in \[0, 3\)"):
        cond.sample(2, y=3)
    with pytest.raises(ValueError, match=r"y must be long class ids of shape \[2\]"):
        cond.log_prob(torch.rand(2, 1, 4, 4), torch.tensor([0.0, 1.0]))


def test_glow_triton_backend_matches_reference(monkeypatch):
    """The fused coupling kernels (forced, under the interpreter) give the reference's log_prob
    and gradients for a small Glow."""
    model = perturb(Glow((1, 4, 4), levels=2, steps=2, hidden=8, num_classes=2), scale=0.1)
    x = torch.rand(3, 1, 4, 4) - 0.5
    y = torch.tensor([0, 1, 1])

    import fastgen.kernels.flow_coupling as kernels
    launches = []
    for fn in ("coupling_forward", "coupling_backward"):
        real = getattr(kernels, fn)
        monkeypatch.setattr(kernels, fn, lambda *a, _real=real, _fn=fn, **k: launches.append(_fn) or _real(*a, **k))

    def run(backend):
        monkeypatch.setenv("FASTGEN_BACKEND", backend)
        model.zero_grad()
        xr = x.clone().requires_grad_(True)
        log_p = model.log_prob(xr, y)
        log_p.sum().backward()
        return log_p.detach(), xr.grad, {n: p.grad.clone() for n, p in model.named_parameters()}

    ref = run("reference")
    assert not launches
    tri = run("triton")
    couplings = 2 * 2                                               # levels * steps
    assert launches.count("coupling_forward") == couplings and launches.count("coupling_backward") == couplings
    assert_close_rel(tri[0], ref[0], 1e-5, "log_prob")
    assert_close_rel(tri[1], ref[1], 1e-4, "grad x")
    for n in ref[2]:
        assert_close_rel(tri[2][n], ref[2][n], 1e-4, n)
