"""fastgen.ops.pixelcnnpp_mixture: the fused mixture-of-logistics draw (Triton under the CPU
interpreter) against its reference, every level's log-probability through the draw, the backend
choice with its reason, errors naming the argument, opcheck, gradcheck of the reference's math,
and the model computing its log-probabilities with that same reference; the head-and-draw op
(``pixelcnnpp_head_draw``) against its reference and the model's own head."""
import pytest
import torch

from fastgen.models import PixelCNNpp
from fastgen.nn.pixelcnnpp import pack_head_weights
from fastgen.ops import pixelcnnpp_mixture_draw
from fastgen.ops.pixelcnnpp_mixture import HeadWeights, pixelcnnpp_head_draw, reference


def _params(B, C, nr_mix, generator, log_scales=(-5.0, 0.0), mean_range=1.3):
    """Head outputs [B, P] with plausible values: logits ~ N(0, 1), means in +-mean_range (past
    the edges too), log-scales in ``log_scales``, coupling coefficients ~ N(0, 1)."""
    per = 3 if C == 1 else 10
    params = torch.empty(B, per * nr_mix)
    u = lambda n, lo, hi: lo + (hi - lo) * torch.rand(B, n, generator=generator)
    M = nr_mix
    params[:, :M] = torch.randn(B, M, generator=generator)
    params[:, M:M + C * M] = u(C * M, -mean_range, mean_range)
    params[:, M + C * M:M + 2 * C * M] = u(C * M, *log_scales)
    if C == 3:
        params[:, M + 2 * C * M:] = torch.randn(B, C * M, generator=generator)
    return params


def _levels(L):
    """The levels scaled as PixelCNN++ scales them."""
    return torch.arange(L).float() * (2.0 / (L - 1)) - 1.0


def _strided_case(B, C, L, params):
    """Non-contiguous inputs and outputs as the sampling cache passes them: params a column slice,
    gumbel a pixel of a [B, C, H, W, L] noise tensor, values a pixel of a long image, scaled a
    pixel of a padded map.  Returns (params, gumbel, noise, image, values, map, scaled)."""
    wide = torch.randn(B, params.shape[1] + 3)
    wide[:, 2:2 + params.shape[1]] = params
    noise = -torch.log(-torch.log(torch.rand(B, C, 3, 2, L)))
    image = torch.full((B, C, 3, 2), -1, dtype=torch.long)
    fmap = torch.full((B, C + 1, 4, 4), 7.0)
    return wide[:, 2:2 + params.shape[1]], noise[:, :, 1, 0], noise, image, image[:, :, 2, 1], fmap, fmap[:, :C, 2, 3]


CASES = [  # (C, nr_mix, levels, batch, temperature)
    pytest.param(1, 1, 2, 3, 1.0, id="grey-M1-L2-B3"),
    pytest.param(1, 3, 16, 5, 0.7, id="grey-M3-L16-B5-T0.7"),
    pytest.param(1, 10, 100, 7, 1.3, id="grey-M10-L100-B7-T1.3"),
    pytest.param(3, 1, 7, 1, 1.0, id="rgb-M1-L7-B1"),
    pytest.param(3, 5, 256, 5, 0.8, id="rgb-M5-L256-B5-T0.8"),
    pytest.param(3, 10, 65, 9, 1.7, id="rgb-M10-L65-B9-T1.7"),
    pytest.param(3, 17, 33, 3, 0.5, id="rgb-M17-L33-B3-T0.5"),
]


@pytest.mark.parametrize("C, nr_mix, L, B, temperature", CASES)
def test_triton_draw_matches_reference(C, nr_mix, L, B, temperature):
    """Strided inputs and outputs; only the given pixel of the image and of the map is written.
    Log-scales reach the clamp at -7 and means lie past the edges, so every branch of the bin
    mass is met."""
    g = torch.Generator().manual_seed(100 * C + L)
    params = _params(B, C, nr_mix, g, log_scales=(-8.0, 0.5))
    outs = {}
    for backend in ("reference", "triton"):
        torch.manual_seed(L)            # the same noise for both backends
        p, gumbel, _, image, values, fmap, scaled = _strided_case(B, C, L, params)
        returned = pixelcnnpp_mixture_draw(p, gumbel, _levels(L), values, scaled, temperature, backend=backend)
        assert returned is values
        outs[backend] = (image, fmap)
    image, fmap = outs["triton"]
    assert torch.equal(image, outs["reference"][0])
    assert torch.equal(fmap, outs["reference"][1])
    drawn = image[:, :, 2, 1]
    assert drawn.min() >= 0 and drawn.max() < L
    assert torch.equal(fmap[:, :C, 2, 3], _levels(L)[drawn])
    untouched = torch.ones_like(image, dtype=torch.bool)
    untouched[:, :, 2, 1] = False
    assert (image[untouched] == -1).all()
    untouched = torch.ones_like(fmap, dtype=torch.bool)
    untouched[:, :C, 2, 3] = False
    assert (fmap[untouched] == 7.0).all()
    if B * C > 4:
        assert drawn.unique().numel() > 1


@pytest.mark.parametrize("C, nr_mix, L, temperature", [(1, 4, 40, 0.7), (3, 3, 256, 1.0), (3, 10, 20, 1.9)],
                         ids=["grey-M4-L40", "rgb-M3-L256", "rgb-M10-L20"])
def test_every_levels_log_prob_through_the_draw(C, nr_mix, L, temperature):
    """Noise that cancels the reference's log-probabilities (gumbel = -log p / T + d) leaves
    argmax(d) as the draw: the kernel's log-probability of *every* level, in every branch (edges,
    bins of tiny mass, mid), must then agree with the reference to well within d's spacing of
    0.01.  G's and B's noise is built from the log-probabilities given the channels drawn before."""
    B = 5
    g = torch.Generator().manual_seed(L)
    params = _params(B, C, nr_mix, g)
    lv = _levels(L)
    d = torch.stack([torch.stack([torch.randperm(L, generator=g) for _ in range(C)]) for _ in range(B)]) * 0.01
    expected = d.argmax(dim=2)                                              # [B, C]
    gumbel = torch.empty(B, C, L)
    xs = torch.zeros(B, C, 1, 1)
    levels = torch.arange(L).view(-1, 1, 1, 1, 1, 1)
    for j in range(C):
        log_w, means, log_scales = reference.mixture_parameters(params[:, :, None, None], xs, nr_mix)
        log_p = reference.bin_log_probs(levels, lv.view(-1, 1, 1, 1, 1, 1), log_w[None], means[None],
                                        log_scales[None], L)[:, :, j, 0, 0].T   # [B, L]
        gumbel[:, j] = -log_p / temperature + d[:, j]
        xs[:, j, 0, 0] = lv[expected[:, j]]
    for backend in ("reference", "triton"):
        values, scaled = torch.full((B, C), -1), torch.zeros(B, C)
        pixelcnnpp_mixture_draw(params, gumbel, lv, values, scaled, temperature, backend=backend)
        assert torch.equal(values, expected), backend


def test_inputs_the_kernel_cannot_take_run_the_reference_unless_triton_is_forced(monkeypatch):
    """float64 (a float64 model) and more than 64 mixture components: the automatic choice runs
    the reference; a forced Triton backend names the reason."""
    monkeypatch.delenv("FASTGEN_BACKEND", raising=False)
    g = torch.Generator().manual_seed(0)
    for C, params, match in ((3, _params(3, 3, 2, g).double(), "float32"), (1, _params(3, 1, 65, g), "nr_mix")):
        gumbel = torch.rand(3, C, 9, generator=g).to(params.dtype)
        lv = _levels(9).to(params.dtype)
        values, scaled = torch.full((3, C), -1), torch.zeros(3, C, dtype=params.dtype)
        pixelcnnpp_mixture_draw(params, gumbel, lv, values, scaled, 0.9)
        expected = torch.full((3, C), -1)
        reference.pixelcnnpp_mixture_draw(params, gumbel, lv, expected, scaled.clone(), 0.9)
        assert torch.equal(values, expected)
        with pytest.raises(ValueError, match=match):
            pixelcnnpp_mixture_draw(params, gumbel, lv, values, scaled, 0.9, backend="triton")


def _args(C=3, B=4, L=10, nr_mix=2):
    g = torch.Generator().manual_seed(1)
    return dict(params=_params(B, C, nr_mix, g), gumbel=torch.rand(B, C, L, generator=g), level_values=_levels(L),
                values=torch.zeros(B, C, dtype=torch.long), scaled=torch.zeros(B, C), temperature=1.0)


@pytest.mark.parametrize("change, error, match", [
    (lambda a: a.update(gumbel=a["gumbel"][:, 0]), ValueError, "gumbel must be a 3-D"),
    (lambda a: a.update(gumbel=a["gumbel"][:, :2]), ValueError, "C must be 1 or 3"),
    (lambda a: a.update(gumbel=a["gumbel"][:, :, :1]), ValueError, "at least 2 levels"),
    (lambda a: a.update(params=a["params"][:3]), ValueError, "params must be a 2-D"),
    (lambda a: a.update(params=a["params"][:, :-1]), ValueError, "params must hold 10 \\* nr_mix"),
    (lambda a: a.update(level_values=a["level_values"][:-1]), ValueError, "level_values must be"),
    (lambda a: a.update(values=a["values"].int()), TypeError, "values must be int64"),
    (lambda a: a.update(values=a["values"][:, :2]), ValueError, "values must be"),
    (lambda a: a.update(scaled=a["scaled"].double()), TypeError, "scaled must have params' dtype"),
    (lambda a: a.update(gumbel=a["gumbel"].long()), TypeError, "gumbel must be a floating-point"),
    (lambda a: a.update(temperature=0.0), ValueError, "temperature must be a positive"),
    (lambda a: a.update(temperature=float("inf")), ValueError, "temperature must be a positive"),
], ids=["gumbel-rank", "gumbel-channels", "one-level", "params-batch", "params-width", "level_values-shape",
        "values-dtype", "values-shape", "scaled-dtype", "gumbel-dtype", "zero-temperature", "inf-temperature"])
def test_bad_inputs_raise_errors_naming_the_argument(change, error, match):
    args = _args()
    change(args)
    with pytest.raises(error, match=match):
        pixelcnnpp_mixture_draw(**args, backend="reference")


def test_opcheck():
    """torch.library.opcheck (schema, fake, the declared in-place writes of values and scaled)."""
    a = _args(C=3, B=3, L=12)
    torch.library.opcheck(torch.ops.fastgen.pixelcnnpp_mixture_draw.default,
                          (a["params"], a["gumbel"], a["level_values"], a["values"], a["scaled"], 0.8))


def test_reference_log_probs_gradcheck():
    """The mixture's log-likelihood (what PixelCNN++ trains on) is differentiable in its params:
    gradcheck in float64 on a tiny RGB pixel grid."""
    g = torch.Generator().manual_seed(2)
    params = _params(2 * 2, 3, 2, g).double().view(2, 2, 20).permute(0, 2, 1)[..., None]   # [B=2, P, 2, 1]
    params = params.contiguous().requires_grad_()
    x = torch.randint(6, (2, 3, 2, 1), generator=g)
    xs = x.double() * (2.0 / 5) - 1.0

    def nll(p):
        log_w, means, log_scales = reference.mixture_parameters(p, xs, 2)
        return -reference.bin_log_probs(x[:, None], xs[:, None], log_w, means, log_scales, 6).sum()
    assert torch.autograd.gradcheck(nll, (params,))


def test_the_model_computes_its_log_probs_with_the_reference(monkeypatch):
    """One copy of the math: PixelCNNpp's forward and loss go through the reference's functions."""
    model = PixelCNNpp((3, 4, 4), levels=8, channels=4, nr_resnet=1, nr_mix=2).eval()
    x = torch.randint(8, (1, 3, 4, 4))
    calls = []
    for name in ("mixture_parameters", "bin_log_probs"):
        original = getattr(reference, name)
        monkeypatch.setattr(reference, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    model(x)
    model.loss(x)
    assert calls == ["mixture_parameters", "bin_log_probs"] * 2


def _head_case(B, C, nr_mix, F, generator):
    """Features [B, F] as a strided column of a wider map and a head whose parameters look like
    ``_params``'s: a random head plus, in its bias, plausible parameters (features ~ N(0, 1))."""
    P = (3 if C == 1 else 10) * nr_mix
    wide = torch.randn(B, F + 5, generator=generator)
    head = HeadWeights(0.3 * torch.randn(F, P, generator=generator) / F ** 0.5,
                       _params(1, C, nr_mix, generator, log_scales=(-6.0, 0.3))[0])
    return wide[:, 3:3 + F], head


@pytest.mark.parametrize("C, nr_mix, L, B, F, temperature", [
    pytest.param(1, 3, 16, 5, 37, 0.8, id="grey-M3-L16-B5-F37-T0.8"),
    pytest.param(3, 10, 256, 3, 160, 1.0, id="rgb-M10-L256-B3-F160"),
    pytest.param(3, 2, 33, 4, 16, 1.4, id="rgb-M2-L33-B4-F16-T1.4"),
])
def test_triton_head_draw_matches_reference(C, nr_mix, L, B, F, temperature):
    """The head computed inside the draw (F not a multiple of its chunk, strided features) draws
    what the reference draws: the head's parameters, then the plain draw."""
    g = torch.Generator().manual_seed(F + L)
    features, head = _head_case(B, C, nr_mix, F, g)
    gumbel = -torch.log(-torch.log(torch.rand(B, C, L, generator=g)))
    outs = []
    for backend in ("reference", "triton"):
        values, scaled = torch.full((B, C), -1), torch.zeros(B, C)
        assert pixelcnnpp_head_draw(features, head, gumbel, _levels(L), values, scaled, temperature,
                                    backend=backend) is values
        outs.append((values, scaled))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    params = reference.head_params(features, head)
    values, scaled = torch.full((B, C), -1), torch.zeros(B, C)
    pixelcnnpp_mixture_draw(params, gumbel, _levels(L), values, scaled, temperature, backend="reference")
    assert torch.equal(values, outs[1][0])
    if B * C > 4:
        assert values.unique().numel() > 1


def test_head_params_are_the_models_head():
    """reference.head_params with pack_head_weights is the model's out(elu(.)) 1x1 conv."""
    model = PixelCNNpp((3, 4, 4), levels=8, channels=16, nr_resnet=1, nr_mix=2).eval()
    features = torch.randn(3, 16)
    expected = model.out(torch.nn.functional.elu(features[:, :, None, None]))[:, :, 0, 0]
    torch.testing.assert_close(reference.head_params(features, pack_head_weights(model.out)), expected,
                               rtol=1e-5, atol=1e-6)


def test_head_draw_inputs_the_kernel_cannot_take_run_the_reference_unless_triton_is_forced(monkeypatch):
    monkeypatch.delenv("FASTGEN_BACKEND", raising=False)
    g = torch.Generator().manual_seed(3)
    features, head = _head_case(2, 3, 2, 16, g)
    features, head = features.double(), HeadWeights(*(t.double() for t in head))
    gumbel, lv = torch.rand(2, 3, 9, generator=g).double(), _levels(9).double()
    values, scaled = torch.full((2, 3), -1), torch.zeros(2, 3, dtype=torch.float64)
    pixelcnnpp_head_draw(features, head, gumbel, lv, values, scaled, 0.9)
    expected = torch.full((2, 3), -1)
    reference.pixelcnnpp_head_draw(features, head, gumbel, lv, expected, scaled.clone(), 0.9)
    assert torch.equal(values, expected)
    with pytest.raises(ValueError, match="float32"):
        pixelcnnpp_head_draw(features, head, gumbel, lv, values, scaled, 0.9, backend="triton")


def _head_args(C=3, B=4, L=10, nr_mix=2, F=16):
    features, head = _head_case(B, C, nr_mix, F, torch.Generator().manual_seed(4))
    return dict(features=features, head=head, gumbel=torch.rand(B, C, L), level_values=_levels(L),
                values=torch.zeros(B, C, dtype=torch.long), scaled=torch.zeros(B, C), temperature=1.0)


@pytest.mark.parametrize("change, error, match", [
    (lambda a: a.update(head=tuple(a["head"])), TypeError, "head must be a HeadWeights"),
    (lambda a: a.update(features=a["features"][:3]), ValueError, "features must be a 2-D"),
    (lambda a: a.update(head=a["head"]._replace(weight=a["head"].weight[1:])), ValueError, "head.weight must be"),
    (lambda a: a.update(head=a["head"]._replace(bias=a["head"].bias[1:])), ValueError, "head.bias must be"),
    (lambda a: a.update(head=HeadWeights(a["head"].weight[:, 1:], a["head"].bias[1:])), ValueError,
     "the head must give 10 \\* nr_mix"),
    (lambda a: a.update(head=a["head"]._replace(bias=a["head"].bias.double())), TypeError, "head.bias must be"),
    (lambda a: a.update(scaled=a["scaled"].double()), TypeError, "scaled must have features' dtype"),
    (lambda a: a.update(temperature=-1.0), ValueError, "temperature must be a positive"),
], ids=["head-type", "features-batch", "weight-rows", "bias-shape", "head-width", "bias-dtype", "scaled-dtype",
        "temperature"])
def test_head_draw_bad_inputs_raise_errors_naming_the_argument(change, error, match):
    args = _head_args()
    change(args)
    with pytest.raises(error, match=match):
        pixelcnnpp_head_draw(**args, backend="reference")


def test_head_draw_opcheck():
    """torch.library.opcheck of the head-and-draw op (the declared in-place writes of values and scaled)."""
    a = _head_args(C=1, B=3, L=12)
    torch.library.opcheck(torch.ops.fastgen.pixelcnnpp_head_draw.default,
                          (a["features"], *a["head"], a["gumbel"], a["level_values"], a["values"], a["scaled"], 0.8))
