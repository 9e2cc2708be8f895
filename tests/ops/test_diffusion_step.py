"""Every sampler's fused step: Triton (interpreter) against the reference with the same noise,
the reference against the textbook update written out here, whole loops backend against
backend, in-kernel Philox noise (reproducible, consistent between the corrector's norms and
its update), CUDA-graph-free checks of the new arguments' errors."""
import math

import pytest
import torch

from fastgen.ops.diffusion_step import reference
from fastgen.ops.diffusion_step import (COEFFICIENTS, CorrectorWorkspace, KeptStep, StepCoefficients,
                                        corrector_coefficients, corrector_workspace, diffusion_step, score_noise_norms)
from fastgen.sampling import diffusion

MU, STD = 0.3, 0.5
SHAPE = (3, 2, 5, 7)


def _randn(g, *shape):
    return torch.randn(*shape, generator=g)


def _both_backends(*args, **kw):
    """The step on the Triton backend (interpreter) and on the reference, checked equal -> reference."""
    got = diffusion_step(*args, backend="triton", **kw)
    expected = diffusion_step(*args, backend="reference", **kw)
    for a, b in zip(got if isinstance(got, tuple) else [got], expected if isinstance(expected, tuple) else [expected]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    return expected


# --- one step of each sampler: fused == reference == textbook --------------------------------

def test_ddpm_step_is_the_posterior_sample():
    g = torch.Generator().manual_seed(0)
    x, eps, z = _randn(g, *SHAPE), _randn(g, *SHAPE), _randn(g, *SHAPE)
    a, a_prev = 0.4, 0.7
    y = _both_backends(x, eps, diffusion.ddpm_coefficients(a, a_prev, "small"), noise=z)
    beta = 1 - a / a_prev
    x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
    mean = math.sqrt(a_prev) * beta / (1 - a) * x0 + math.sqrt(1 - beta) * (1 - a_prev) / (1 - a) * x
    torch.testing.assert_close(y, mean + math.sqrt(beta * (1 - a_prev) / (1 - a)) * z, rtol=1e-5, atol=1e-5)
    y_large = _both_backends(x, eps, diffusion.ddpm_coefficients(a, a_prev, "large"), noise=z)
    torch.testing.assert_close(y_large, mean + math.sqrt(beta) * z, rtol=1e-5, atol=1e-5)


def test_ddim_step_with_eta():
    g = torch.Generator().manual_seed(1)
    x, eps, z = _randn(g, *SHAPE), _randn(g, *SHAPE), _randn(g, *SHAPE)
    a, a_prev, eta = 0.3, 0.6, 0.7
    y = _both_backends(x, eps, diffusion.ddim_coefficients(a, a_prev, eta), noise=z)
    s = eta * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(1 - a / a_prev)
    x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
    expected = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - s ** 2) * eps + s * z
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("guided", [False, True])
def test_euler_and_heun_steps(guided):
    g = torch.Generator().manual_seed(2)
    s, s_next, w = 2.0, 1.3, 1.5
    x = _randn(g, *SHAPE) * s
    denoised, denoised_next = _randn(g, 2 * SHAPE[0], *SHAPE[1:]), _randn(g, 2 * SHAPE[0], *SHAPE[1:])
    if not guided:
        denoised, denoised_next = denoised[:SHAPE[0]], denoised_next[:SHAPE[0]]
    guide = lambda d: (1 + w) * d[:SHAPE[0]] - w * d[SHAPE[0]:] if guided else d
    kw = dict(guidance=w if guided else None)
    euler = _both_backends(x, denoised, diffusion.euler_coefficients(s, s_next), "x0", **kw)
    d = (x - guide(denoised)) / s
    torch.testing.assert_close(euler, x + (s_next - s) * d, rtol=1e-5, atol=1e-5)
    # Heun: the first stage also keeps x + (h/2) d; the correction reads it as aux
    x_next, half = _both_backends(x, denoised, diffusion.euler_coefficients(s, s_next), "x0",
                                  keep=diffusion.heun_keep(s, s_next), **kw)
    torch.testing.assert_close(x_next, euler)
    heun = _both_backends(x_next, denoised_next, diffusion.heun_correction_coefficients(s, s_next), "x0", aux=half,
                          **kw)
    d_next = (x_next - guide(denoised_next)) / s_next
    torch.testing.assert_close(heun, x + (s_next - s) * (d + d_next) / 2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_dpmpp2m_steps_keep_x0_and_use_the_previous_one(prediction):
    g = torch.Generator().manual_seed(3)
    x, out1, out2 = _randn(g, *SHAPE), _randn(g, *SHAPE), _randn(g, *SHAPE)
    a0, a1, a2 = 0.2, 0.45, 0.8                      # abar along three successive steps

    def x0_of(x, out, a):
        return (x - math.sqrt(1 - a) * out) / math.sqrt(a) if prediction == "eps" else \
            math.sqrt(a) * x - math.sqrt(1 - a) * out

    lam = lambda a: math.log(math.sqrt(a) / math.sqrt(1 - a))
    coefficients, h = diffusion.dpmpp2m_coefficients(a0, a1)
    x1, kept = _both_backends(x, out1, coefficients, prediction, keep=(1.0, 0.0))
    first_x0 = x0_of(x, out1, a0)
    torch.testing.assert_close(kept, first_x0, rtol=1e-5, atol=1e-5)
    h1 = lam(a1) - lam(a0)
    expected1 = math.sqrt(1 - a1) / math.sqrt(1 - a0) * x - math.sqrt(a1) * (math.exp(-h1) - 1) * first_x0
    torch.testing.assert_close(x1, expected1, rtol=1e-5, atol=1e-5)
    coefficients, _ = diffusion.dpmpp2m_coefficients(a1, a2, h)
    x2, _ = _both_backends(x1, out2, coefficients, prediction, aux=kept, keep=(1.0, 0.0))
    h2 = lam(a2) - lam(a1)
    r = h1 / h2
    D = (1 + 1 / (2 * r)) * x0_of(x1, out2, a1) - 1 / (2 * r) * first_x0
    expected2 = math.sqrt(1 - a2) / math.sqrt(1 - a1) * x1 - math.sqrt(a2) * (math.exp(-h2) - 1) * D
    torch.testing.assert_close(x2, expected2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sigma", [1.0, 0.05])
def test_langevin_and_sgld_step(sigma):
    g = torch.Generator().manual_seed(4)
    x, score, z = _randn(g, *SHAPE), _randn(g, *SHAPE) / sigma, _randn(g, *SHAPE)
    a = 0.02
    y = _both_backends(x, score, diffusion.langevin_coefficients(a, sigma), "score", noise=z)
    torch.testing.assert_close(y, x + a / 2 * score + math.sqrt(a) * z, rtol=1e-5, atol=1e-5)


def test_ve_predictor_and_probability_flow_steps():
    g = torch.Generator().manual_seed(5)
    s, s_next = 3.0, 2.2
    x, z = _randn(g, *SHAPE) * s, _randn(g, *SHAPE)
    score = -x / (STD ** 2 + s ** 2)
    y = _both_backends(x, score, diffusion.ve_predictor_coefficients(s, s_next), "score", noise=z)
    var = s ** 2 - s_next ** 2
    torch.testing.assert_close(y, x + var * score + math.sqrt(var) * z, rtol=1e-5, atol=1e-5)
    last = _both_backends(x, score, diffusion.ve_predictor_coefficients(s, 0.0), "score")    # no noise onto 0
    torch.testing.assert_close(last, x + s ** 2 * score, rtol=1e-5, atol=1e-5)
    ode = _both_backends(x, score, diffusion.pf_ode_coefficients(s, s_next), "score")
    torch.testing.assert_close(ode, x + (s_next - s) * (-s * score), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["ve", "vp", "vp-guided"])
def test_langevin_corrector_step(kind):
    """x + e score + sqrt(2e) z with e = 2 (snr ||z|| / ||score||)^2 per sample (Song et al. 2021)."""
    g = torch.Generator().manual_seed(6)
    x, z = _randn(g, *SHAPE), _randn(g, *SHAPE)
    guided = kind == "vp-guided"
    out = _randn(g, (2 if guided else 1) * SHAPE[0], *SHAPE[1:]) * torch.tensor([0.5, 1.0, 2.0] * (2 if guided else 1)
                                                                                ).view(-1, 1, 1, 1)
    snr, w = 0.16, 0.8
    combined = (1 + w) * out[:SHAPE[0]] - w * out[SHAPE[0]:] if guided else out
    if kind == "ve":
        s0, s1, prediction, score = 1.0, 2.5, "score", combined
    else:
        s0, s1, prediction = math.sqrt(0.3), math.sqrt(0.7), "eps"
        score = -combined / s1
    kw = dict(noise=z, guidance=w if guided else None)
    got = diffusion.langevin_corrector_step(x, out, s0, s1, prediction, snr, backend="triton", **kw)
    expected = diffusion.langevin_corrector_step(x, out, s0, s1, prediction, snr, backend="reference", **kw)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    norm = lambda v: v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    e = 2 * (snr * norm(z) / norm(score)) ** 2
    assert e.flatten().unique().numel() == SHAPE[0]                  # a different step size per sample
    torch.testing.assert_close(expected, x + e * score + (2 * e).sqrt() * z, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("guided", [False, True])
def test_score_noise_norms_match_reference_and_the_step_philox_noise(guided):
    g = torch.Generator().manual_seed(7)
    batch, size = 3, (2, 37, 29)                     # 2146 elements per sample: 3 blocks of 1024
    out, z = _randn(g, (2 if guided else 1) * batch, *size), _randn(g, batch, *size)
    w = 1.25 if guided else None
    torch.testing.assert_close(score_noise_norms(out, z, guidance=w, backend="triton"),
                               score_noise_norms(out, z, guidance=w, backend="reference"), rtol=1e-5, atol=1e-5)
    # In Philox mode the norms see exactly the z the step adds at the same (seed, offset).
    x = torch.zeros(batch, *size)
    norms = score_noise_norms(out, seed=11, offset=5000, guidance=w, backend="triton")
    drawn = diffusion_step(x, torch.zeros(batch, *size), (1.0, 1.0, 0.0, 0.0, 0.0, 1.0), "x0", seed=11, offset=5000,
                           backend="triton")                                  # y = z
    torch.testing.assert_close(norms[:, 1], drawn.flatten(1).norm(dim=1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norms[:, 0], reference.score_noise_norms(out, drawn, w)[:, 0], rtol=1e-5, atol=1e-5)


# B, per-sample shape: 1, 3 and 70 norm blocks of 1024 (70 > the rows kernel's 64 per pass);
# B 33 > its 32 rows per program
CORRECTOR_SHAPES = [pytest.param(1, (3, 5), id="B1-blocks1"), pytest.param(5, (2, 37, 29), id="B5-blocks3"),
                    pytest.param(33, (4, 7), id="B33-blocks1"), pytest.param(2, (70, 1024), id="B2-blocks70")]


@pytest.mark.parametrize("prediction", ["eps", "score"])
@pytest.mark.parametrize("batch,size", CORRECTOR_SHAPES)
def test_corrector_coefficients_kernel_matches_the_reference(batch, size, prediction):
    """The rows kernel (after the norms kernel) == langevin_corrector_coefficients of the norms."""
    g = torch.Generator().manual_seed(13)
    out = _randn(g, batch, *size) * torch.linspace(0.5, 2.0, batch).view(-1, *[1] * len(size))
    z = _randn(g, batch, *size)
    args = (out, 0.16, 0.6, 0.8, prediction)
    expected = diffusion.langevin_corrector_coefficients(reference.score_noise_norms(out, z), *args[1:])
    got = corrector_coefficients(*args, noise=z, backend="triton")
    assert got.dtype == torch.float32 and got.shape == (batch, 7)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(corrector_coefficients(*args, noise=z, backend="reference"), expected, rtol=0, atol=0)
    workspace = corrector_workspace(z)
    into = corrector_coefficients(*args, noise=z, backend="triton", workspace=workspace)
    assert into is workspace.rows
    torch.testing.assert_close(into, got, rtol=0, atol=0)


@pytest.mark.parametrize("prediction", ["eps", "score"])
def test_corrector_coefficients_guided_and_philox(prediction):
    g = torch.Generator().manual_seed(14)
    batch, size, w = 3, (2, 37, 29), 1.25
    out, z = _randn(g, 2 * batch, *size), _randn(g, batch, *size)
    args = (out, 0.2, 1.0, 2.5, prediction)
    torch.testing.assert_close(corrector_coefficients(*args, noise=z, guidance=w, backend="triton"),
                               corrector_coefficients(*args, noise=z, guidance=w, backend="reference"),
                               rtol=1e-5, atol=0)
    # Philox: the rows see the z the step draws at the same (seed, offset)
    drawn = diffusion_step(torch.zeros(batch, *size), torch.zeros(batch, *size), (1.0, 1.0, 0.0, 0.0, 0.0, 1.0), "x0",
                           seed=4, offset=99, backend="triton")                            # y = z
    torch.testing.assert_close(corrector_coefficients(*args, seed=4, offset=99, guidance=w, backend="triton"),
                               corrector_coefficients(*args, noise=drawn, guidance=w, backend="reference"),
                               rtol=1e-5, atol=0)


def test_corrector_coefficients_clamp_a_zero_score():
    """||score|| = 0 is clamped to 1e-12 (a huge but finite step), in the kernel as in the reference."""
    z = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(15))
    out = torch.zeros(4, 3, 5)
    out[1] = 1.0                                                       # one sample with a score
    for prediction in ("eps", "score"):
        got = corrector_coefficients(out, 0.16, 1.0, 0.5, prediction, noise=z, backend="triton")
        expected = corrector_coefficients(out, 0.16, 1.0, 0.5, prediction, noise=z, backend="reference")
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)
    e = 2 * (0.16 * z[0].norm() / 1e-12) ** 2
    torch.testing.assert_close(got[0, 5], (2 * e).sqrt(), rtol=1e-5, atol=0)


def test_corrector_coefficients_bad_inputs():
    out = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="'eps' or 'score' prediction, got 'x0'"):
        corrector_coefficients(out, 0.16, 1.0, 1.0, "x0", seed=1)
    with pytest.raises(ValueError, match="corrector_coefficients needs noise= or seed="):
        corrector_coefficients(out, 0.16, 1.0, 1.0, "eps")
    with pytest.raises(ValueError, match=r"workspace.rows must be a contiguous float32 tensor \[2, 7\]"):
        corrector_coefficients(out, 0.16, 1.0, 1.0, "eps", seed=1, backend="triton",
                               workspace=CorrectorWorkspace(corrector_workspace(out).partial, torch.zeros(3, 7)))
    with pytest.raises(TypeError, match="workspace must be a CorrectorWorkspace"):
        corrector_coefficients(out, 0.16, 1.0, 1.0, "eps", seed=1, backend="triton", workspace=torch.zeros(2, 7))


def test_per_sample_coefficients_match_the_scalar_step_row_by_row():
    g = torch.Generator().manual_seed(8)
    x, out, z, aux = (_randn(g, *SHAPE) for _ in range(4))
    rows = [diffusion.ddpm_coefficients(0.4, 0.7)._replace(c_aux=0.3),
            diffusion.ddim_coefficients(0.2, 0.5, 1.0)._replace(c_aux=-1.0),
            (1.0, 2.0, 0.5, -0.25, 1.0, 0.1, 0.0)]
    table = torch.tensor(rows, dtype=torch.float32)
    y = _both_backends(x, out, table, "eps", clip=True, noise=z, aux=aux)
    for b, row in enumerate(rows):
        one = diffusion_step(x[b:b + 1], out[b:b + 1], row, "eps", clip=True, noise=z[b:b + 1], aux=aux[b:b + 1],
                             backend="reference")
        torch.testing.assert_close(y[b:b + 1], one, rtol=1e-5, atol=1e-5)


def test_coefficient_bundle_and_plain_sequences_give_the_same_step():
    """StepCoefficients is what the coefficient functions return; plain 6- and 7-number sequences
    (c_aux = 0 when omitted) are still accepted, on both backends, with the same result."""
    g = torch.Generator().manual_seed(11)
    x, out, z = _randn(g, *SHAPE), _randn(g, *SHAPE), _randn(g, *SHAPE)
    bundle = diffusion.ddpm_coefficients(0.4, 0.7)
    assert isinstance(bundle, StepCoefficients) and bundle.c_aux == 0.0
    assert StepCoefficients._fields == COEFFICIENTS
    expected = _both_backends(x, out, bundle, noise=z)
    for plain in (tuple(bundle[:6]), list(bundle), [float(c) for c in bundle]):
        torch.testing.assert_close(_both_backends(x, out, plain, noise=z), expected, rtol=0, atol=0)
    for backend in ("reference", "triton"):
        kept = diffusion_step(x, out, diffusion.euler_coefficients(2.0, 1.5), "x0", keep=diffusion.heun_keep(2.0, 1.5),
                              backend=backend)
        assert isinstance(kept, KeptStep)
    step = diffusion.dpmpp2m_coefficients(0.2, 0.45)
    assert isinstance(step.coefficients, StepCoefficients) and step.h > 0


def test_bad_inputs_name_the_argument():
    x = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="coefficients must be a StepCoefficients"):
        diffusion_step(x, x, 1.0)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        diffusion_step([0.0, 0.0], x, (1, 1, 1, 0, 0, 0))
    with pytest.raises(TypeError, match="out must be a torch.Tensor"):
        diffusion_step(x, None, (1, 1, 1, 0, 0, 0))
    with pytest.raises(ValueError, match="out is on meta but x is on cpu"):
        diffusion_step(x, torch.zeros(2, 3, device="meta"), (1, 1, 1, 0, 0, 0))
    with pytest.raises(TypeError, match="out must be a torch.Tensor"):
        score_noise_norms("out", seed=1)


def test_outputs_beyond_32_bit_indexing_are_refused_by_the_kernel_with_the_reason():
    """The kernels index elements in int32: a larger output (meta tensors: nothing allocated)
    is declared unsupported -- a forced Triton backend says why instead of overflowing."""
    x = torch.empty(2 ** 30 + 1, 2, device="meta")
    with pytest.raises(ValueError, match=r"diffusion_step on Triton: .* index at most 2\^31 - 1"):
        diffusion_step(x, x, (1.0, 1.0, 1.0, 0.0, 0.0, 0.0), backend="triton")
    with pytest.raises(ValueError, match=r"score_noise_norms on Triton: .* index at most 2\^31 - 1"):
        score_noise_norms(x, seed=1, backend="triton")


def test_score_prediction_is_tweedie():
    """x0 = (x + s1^2 score) / s0 (and eps = -s1 score) for x = s0 x0 + s1 eps."""
    g = torch.Generator().manual_seed(9)
    x, score = _randn(g, *SHAPE), _randn(g, *SHAPE)
    s0, s1 = 0.6, 0.8
    x0 = _both_backends(x, score, (s0, s1, 1.0, 0.0, 0.0, 0.0), "score")
    torch.testing.assert_close(x0, (x + s1 ** 2 * score) / s0, rtol=1e-5, atol=1e-5)
    eps = _both_backends(x, score, (s0, s1, 0.0, 1.0, 0.0, 0.0), "score")
    torch.testing.assert_close(eps, -s1 * score, rtol=1e-5, atol=1e-5)


def test_opcheck():
    g = torch.Generator().manual_seed(10)
    x, out, aux = (_randn(g, 2, 3, 4) for _ in range(3))
    table = torch.rand(2, 7, generator=g) + 0.5
    torch.library.opcheck(torch.ops.fastgen.diffusion_step.default,
                          (x, out, aux, [1.0, 1.0, 0.5, 0.1, 0.5, 0.3, 1.0], None, aux, [1.0, 0.5], "score", False,
                           None, 0, 0, None, None))
    torch.library.opcheck(torch.ops.fastgen.diffusion_step.default,
                          (x, out, None, [0.0] * 7, table, None, None, "eps", True, None, 3, 7, None, None))
    torch.library.opcheck(torch.ops.fastgen.score_noise_norms.default, (out, x, None, 0, 0))
    torch.library.opcheck(torch.ops.fastgen.score_noise_norms.default, (torch.cat([out, out]), None, 2.0, 5, 0))
    torch.library.opcheck(torch.ops.fastgen.corrector_coefficients.default, (out, x, None, 0, 0, 0.16, 1.0, 0.5, "eps"))
    torch.library.opcheck(torch.ops.fastgen.corrector_coefficients.default,
                          (torch.cat([out, out]), None, 2.0, 5, 0, 0.16, 1.0, 0.5, "score"))
    partial, rows = corrector_workspace(x)
    torch.library.opcheck(torch.ops.fastgen.corrector_coefficients_into.default,
                          (out, x, None, 0, 0, 0.16, 1.0, 0.5, "eps", partial, rows))


# --- into=: the step written into the caller's buffers -------------------------------------

INTO_CASES = [
    ("ddpm-noise", dict(coefficients=(0.6, 0.8, 0.5, 0.2, 0.7, 0.3), noise=True)),
    ("ddim-clip-guided", dict(coefficients=(0.6, 0.8, 0.5, 0.2, 0.7, 0.0), clip=True, guidance=1.5)),
    ("threshold-v", dict(coefficients=(0.6, 0.8, 0.5, 0.2, 0.7, 0.0), threshold=0.9, prediction="v")),
    ("dpmpp-keep-aux", dict(coefficients=(0.6, 0.8, 0.5, 0.2, 0.7, 0.0, 0.4), aux=True, keep=(1.0, 0.0))),
    ("heun-keep", dict(coefficients=(1.0, 2.0, 0.3, 0.0, 0.7, 0.0), prediction="x0", keep=(0.5, 0.5))),
    ("per-sample-philox", dict(coefficients="rows", seed=True)),
    ("learned-variance", dict(coefficients=(0.6, 0.8, 0.5, 0.2, 0.7, 0.1), noise=True, learned=True)),
]


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("case", [c for _, c in INTO_CASES], ids=[name for name, _ in INTO_CASES])
def test_into_buffers_equal_the_allocating_step(case, backend):
    """The same numbers as the allocating step, written into (and returned as) the given buffers."""
    if backend == "reference" and case.get("seed"):
        pytest.skip("Philox noise is Triton-only")
    g = torch.Generator().manual_seed(11)
    x = _randn(g, *SHAPE)
    batch = 2 * SHAPE[0] if case.get("guidance") is not None else SHAPE[0]
    channels = 2 * SHAPE[1] if case.get("learned") else SHAPE[1]
    out = _randn(g, batch, channels, *SHAPE[2:])
    kw = dict(prediction=case.get("prediction", "eps"), clip=case.get("clip", False), guidance=case.get("guidance"),
              threshold=case.get("threshold"), keep=case.get("keep"), backend=backend)
    if case.get("noise"):
        kw["noise"] = _randn(g, *SHAPE)
    if case.get("seed"):
        kw.update(seed=3, offset=17)
    if case.get("aux"):
        kw["aux"] = _randn(g, *SHAPE)
    if case.get("learned"):
        kw["learned_variance"] = (-3.0, -1.0)
    coefficients = torch.rand(SHAPE[0], 7, generator=g) + 0.5 if case["coefficients"] == "rows" \
        else case["coefficients"]
    expected = diffusion_step(x, out, coefficients, **kw)
    buffers = [torch.full_like(x, float("nan")) for _ in range(2)]
    into = KeptStep(*buffers) if kw["keep"] is not None else buffers[0]
    got = diffusion_step(x, out, coefficients, into=into, **kw)
    if kw["keep"] is not None:
        assert isinstance(got, KeptStep) and got.x_next is buffers[0] and got.kept is buffers[1]
        torch.testing.assert_close(got.x_next, expected.x_next, rtol=0, atol=0)
        torch.testing.assert_close(got.kept, expected.kept, rtol=0, atol=0)
    else:
        assert got is buffers[0]
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_into_refuses_bad_buffers_naming_them(backend):
    g = torch.Generator().manual_seed(12)
    x, out, aux, z = (_randn(g, *SHAPE) for _ in range(4))
    step = lambda **kw: diffusion_step(x, out, (0.6, 0.8, 0.5, 0.2, 0.7, 0.3, 0.4), aux=aux, noise=z,
                                       backend=backend, **kw)
    fresh = lambda: torch.empty_like(x)
    cases = [
        (TypeError, "into must be a torch.Tensor", dict(into=[1.0])),
        (ValueError, r"into must be a torch.float32 tensor of x's shape \(3, 2, 5, 7\) on cpu, got torch.float32 "
                     r"\(3, 2, 5, 6\)", dict(into=torch.empty(3, 2, 5, 6))),
        (ValueError, r"into must be a torch.float32 tensor .* got torch.float16", dict(into=fresh().half())),
        (ValueError, r"into must be a torch.float32 tensor .* on meta", dict(into=torch.empty(SHAPE, device="meta"))),
        (ValueError, "into must be contiguous", dict(into=torch.empty(7, 5, 2, 3).permute(3, 2, 1, 0))),
        (ValueError, "into shares memory with x, which the step reads", dict(into=x)),
        (ValueError, "into shares memory with out", dict(into=out)),
        (ValueError, "into shares memory with aux", dict(into=aux)),
        (ValueError, "into shares memory with noise", dict(into=z)),
        (TypeError, r"into is a pair of buffers but the step keeps nothing", dict(into=KeptStep(fresh(), fresh()))),
        (TypeError, r"with keep=, into must be a KeptStep\(x_next, kept\)", dict(keep=(1.0, 0.0), into=fresh())),
        (ValueError, "into.kept shares memory with x", dict(keep=(1.0, 0.0), into=KeptStep(fresh(), x))),
        (ValueError, "into.x_next and into.kept share memory", dict(keep=(1.0, 0.0), into=KeptStep(*[fresh()] * 2))),
    ]
    for error, message, kw in cases:
        with pytest.raises(error, match=message):
            step(**kw)
    # part of a larger tensor that overlaps x is refused; a disjoint part of the same storage is not
    storage = torch.randn(2 * x.numel())
    x_view = storage[:x.numel()].view(SHAPE)
    with pytest.raises(ValueError, match="into shares memory with x"):
        diffusion_step(x_view, out, (0.6, 0.8, 0.5, 0.2, 0.7, 0.0), backend=backend,
                       into=storage[x.numel() - 1:-1].view(SHAPE))
    y = diffusion_step(x_view, out, (0.6, 0.8, 0.5, 0.2, 0.7, 0.0), backend=backend,
                       into=storage[x.numel():].view(SHAPE))
    torch.testing.assert_close(y, diffusion_step(x_view, out, (0.6, 0.8, 0.5, 0.2, 0.7, 0.0), backend=backend))


def test_into_opcheck_and_compile():
    """The buffer-writing op as torch.compile sees it: declared mutations, fake, and a compiled
    call equal to the eager one."""
    g = torch.Generator().manual_seed(13)
    x, out, aux = (_randn(g, 2, 3, 4) for _ in range(3))
    torch.library.opcheck(torch.ops.fastgen.diffusion_step_into.default,
                          (x, out, aux, [1.0, 1.0, 0.5, 0.1, 0.5, 0.3, 1.0], None, aux, [1.0, 0.5], "score", False,
                           None, 0, 0, None, None, torch.empty_like(x), torch.empty_like(x)))
    torch.library.opcheck(torch.ops.fastgen.diffusion_step_into.default,
                          (x, out, None, [0.6, 0.8, 0.5, 0.1, 0.5, 0.0, 0.0], None, None, None, "eps", True, None, 0,
                           0, None, None, torch.empty_like(x), None))

    def step(x, out, y):
        return diffusion_step(x, out, (0.6, 0.8, 0.5, 0.1, 0.5, 0.0), backend="triton", into=y) * 1
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    y = torch.empty_like(x)
    torch.testing.assert_close(compiled(x, out, y), step(x, out, torch.empty_like(x)), rtol=0, atol=0)
    torch.testing.assert_close(y, step(x, out, torch.empty_like(x)), rtol=0, atol=0)


# --- whole loops --------------------------------------------------------------------------------

def _gaussian_denoiser(sampler, abar):
    """The exact model of N(MU, STD^2) data for each sampler's protocol (any number of dims)."""
    view = lambda t, x: t.view(-1, *[1] * (x.dim() - 1)).float()
    if sampler in ("euler", "heun"):
        return lambda x, s: MU + STD ** 2 / (STD ** 2 + view(s, x) ** 2) * (x - MU)          # E[x0 | x]
    if sampler in ("langevin", "pc_ve", "pf_ode"):
        return lambda x, s: -(x - MU) / (STD ** 2 + view(s, x) ** 2)                       # score
    if sampler == "sgld":
        return lambda x: -(x - MU) / STD ** 2

    def eps(x, t):
        a = view(abar[t], x)
        return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * STD ** 2 + 1 - a)
    return eps


LOOPS = [("ddpm", 6, {}), ("ddpm", 6, dict(variance="large", clip=True)), ("ddim", 5, dict(eta=0.5)),
         ("ddim", 5, dict(threshold=0.9)), ("euler", 5, {}), ("heun", 5, {}), ("dpmpp2m", 6, {}),
         ("dpmpp2m", 6, dict(prediction="v")), ("langevin", 2, dict(sigmas=[1.0, 0.3, 0.1])),
         ("pc_ve", 4, dict(corrector_steps=2)), ("pc_vp", 5, {}), ("pf_ode", 5, {}), ("sgld", 6, dict(step_size=0.05))]
LOOP_IDS = ["ddpm", "ddpm-large-clip", "ddim-eta", "ddim-threshold", "euler", "heun", "dpmpp2m", "dpmpp2m-v",
            "langevin", "pc-ve", "pc-vp", "pf-ode", "sgld"]


def _loop_denoiser(sampler, kw):
    abar = torch.cumprod(1 - diffusion.linear_betas(), 0)
    den = _gaussian_denoiser(sampler, abar)
    if kw.get("prediction") == "v":                  # v = sqrt(a) eps - sqrt(1 - a) x0
        def v_model(x, t):
            a = abar[t].view(-1, *[1] * (x.dim() - 1)).float()
            e = den(x, t)
            return a.sqrt() * e - (1 - a).sqrt() * (x - (1 - a).sqrt() * e) / a.sqrt()
        return v_model
    return den


@pytest.mark.parametrize("sampler,steps,kw", LOOPS, ids=LOOP_IDS)
def test_whole_loop_triton_equals_reference_with_a_generator(sampler, steps, kw):
    den = _loop_denoiser(sampler, kw)
    run = lambda backend: diffusion.sample(den, (3, 2, 4, 4), sampler, steps, device="cpu", backend=backend,
                                           generator=torch.Generator().manual_seed(5), **kw)
    fused, ref = run("triton"), run("reference")
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler", ["heun", "dpmpp2m", "pc_ve", "langevin"])
def test_guided_loops_triton_equals_reference(sampler):
    base = _loop_denoiser(sampler, {})
    den = lambda x, t, c: base(x, t) + 0.1 * c.view(-1, 1, 1, 1)
    kw = dict(guidance=1.5, cond=torch.ones(3), uncond=torch.zeros(3), device="cpu")
    if sampler == "langevin":
        kw["sigmas"] = [1.0, 0.3]
    run = lambda backend: diffusion.sample(den, (3, 2, 4, 4), sampler, 3, generator=torch.Generator().manual_seed(6),
                                           backend=backend, **kw)
    torch.testing.assert_close(run("triton"), run("reference"), rtol=1e-4, atol=1e-4)


STOCHASTIC = [("ddpm", 4, {}), ("ddim", 4, dict(eta=1.0)), ("langevin", 2, dict(sigmas=[1.0, 0.2])),
              ("pc_ve", 3, {}), ("pc_vp", 4, {}), ("sgld", 4, {})]


@pytest.mark.parametrize("sampler,steps,kw", STOCHASTIC, ids=[s for s, _, _ in STOCHASTIC])
def test_philox_loops_reproducible_per_seed(sampler, steps, kw):
    den = _loop_denoiser(sampler, kw)
    run = lambda seed, generator=None: diffusion.sample(den, (2, 3, 4, 4), sampler, steps, seed=seed,
                                                        generator=generator, device="cpu", backend="triton", **kw)
    a, b = run(1), run(1)
    assert torch.isfinite(a).all() and torch.equal(a, b)
    # the same x_T (one generator) with another seed: only the in-kernel step noise differs
    c = run(1, torch.Generator().manual_seed(0))
    d = run(2, torch.Generator().manual_seed(0))
    assert not torch.allclose(c, d, atol=1e-3)


def test_philox_pc_ve_reproduces_the_gaussian_moments():
    """End to end with in-kernel noise in every predictor and corrector step (fresh offsets per
    draw): the known-Gaussian moments hold.  (That the corrector's norms see the update's z is
    checked by test_score_noise_norms_match_reference_and_the_step_philox_noise.)"""
    den = _gaussian_denoiser("pc_ve", None)
    x = diffusion.sample(den, (8, 512), "pc_ve", 40, seed=3, device="cpu", backend="triton")
    assert abs(x.mean().item() - MU) < 4 * STD / math.sqrt(x.numel()) + 0.02
    assert abs(x.std().item() - STD) < 0.05 * STD + 0.01, (x.mean().item(), x.std().item())


def test_seed_alone_fixes_x_T():
    den = _loop_denoiser("ddim", {})
    a = diffusion.sample(den, (2, 3), "ddim", 3, seed=4, device="cpu", backend="triton")
    b = diffusion.sample(den, (2, 3), "ddim", 3, generator=torch.Generator().manual_seed(4), device="cpu",
                         backend="triton")
    torch.testing.assert_close(a, b)


# --- errors ---------------------------------------------------------------------------------

def test_errors_for_the_new_arguments():
    x, out = torch.zeros(2, 3), torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"per-sample coefficients must be a float32 tensor \[2, 7\]"):
        diffusion_step(x, out, torch.zeros(2, 6), noise=x)
    with pytest.raises(ValueError, match="per-sample coefficients must be a float32"):
        diffusion_step(x, out, torch.zeros(2, 7, dtype=torch.float64), noise=x)
    with pytest.raises(ValueError, match="pass noise= or seed="):
        diffusion_step(x, out, torch.zeros(2, 7))
    with pytest.raises(ValueError, match="learned_variance cannot be combined with per-sample"):
        diffusion_step(x, torch.zeros(2, 6), torch.zeros(2, 7), noise=x, learned_variance=(-3.0, -2.0))
    with pytest.raises(ValueError, match=r"coefficients must be \('s0'"):
        diffusion_step(x, out, (1.0, 1.0, 0.0))
    with pytest.raises(ValueError, match=r"c_aux \(coefficients\[6\]\) is nonzero: pass aux="):
        diffusion_step(x, out, (1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.5))
    with pytest.raises(ValueError, match="aux must have the shape and device of x"):
        diffusion_step(x, out, (1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.5), aux=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="noise must have the shape and device of x"):
        diffusion_step(x, out, (1.0, 1.0, 0.0, 0.0, 1.0, 0.5), noise=torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"keep must be \(k_x0, k_x\)"):
        diffusion_step(x, out, (1.0, 1.0, 0.0, 0.0, 1.0, 0.0), keep=(1.0,))
    with pytest.raises(ValueError, match="score_noise_norms needs noise= or seed="):
        score_noise_norms(out)
    with pytest.raises(ValueError, match=r"noise must have shape \(2, 3\)"):
        score_noise_norms(out, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="even batch"):
        score_noise_norms(torch.zeros(3, 3), torch.zeros(1, 3), guidance=1.0)
    with pytest.raises(ValueError, match="reference backend needs an explicit noise tensor"):
        score_noise_norms(out, seed=1, backend="reference")
    with pytest.raises(ValueError, match="reference backend needs an explicit noise tensor"):
        diffusion.sample(lambda x: -x, (2, 3), "sgld", 2, seed=1, device="cpu", backend="reference")
    with pytest.raises(ValueError, match="guidance is not supported by the 'sgld' sampler"):
        diffusion.sample(lambda x: -x, (2, 3), "sgld", 2, guidance=1.0, device="cpu")
    with pytest.raises(ValueError, match=r"prediction='x0' is not supported by the 'pc_vp' sampler \(its corrector"):
        diffusion.sample(lambda x, t: x, (2, 3), "pc_vp", 2, prediction="x0", device="cpu")


# --- float64: computed in float64 end to end ----------------------------------------------------

@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score"])
def test_float64_step_is_computed_in_float64(prediction):
    """A float64 step (the reference: the automatic choice) equals the textbook update in
    float64 to rounding -- far below what one float32 rounding of the inputs would move it."""
    g = torch.Generator().manual_seed(11)
    x, out, z, aux = (torch.randn(*SHAPE, generator=g, dtype=torch.float64) for _ in range(4))
    out2 = torch.randn(2 * SHAPE[0], *SHAPE[1:], generator=g, dtype=torch.float64)
    c = StepCoefficients(s0=0.6, s1=0.8, c_x0=0.7, c_eps=0.3, c_x=0.2, sigma=0.1, c_aux=0.4)
    y, kept = diffusion_step(x, out2, c, prediction, guidance=1.5, noise=z, aux=aux, keep=(0.5, 0.25))
    assert y.dtype == kept.dtype == torch.float64
    o = 2.5 * out2[:SHAPE[0]] - 1.5 * out2[SHAPE[0]:]
    x0 = {"eps": (x - 0.8 * o) / 0.6, "x0": o, "v": 0.6 * x - 0.8 * o, "score": (x + 0.64 * o) / 0.6}[prediction]
    expected = 0.7 * x0 + 0.3 * (x - 0.6 * x0) / 0.8 + 0.2 * x + 0.4 * aux + 0.1 * z
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-13)
    torch.testing.assert_close(kept, 0.5 * x0 + 0.25 * x, rtol=0, atol=1e-13)
    in_fp32 = diffusion_step(x.float(), out2.float(), c, prediction, guidance=1.5, noise=z.float(), aux=aux.float())
    assert (in_fp32.double() - expected).abs().max() > 1e-9                  # so float64 is not float32 inside


def test_float64_per_sample_rows_norms_and_threshold():
    g = torch.Generator().manual_seed(12)
    x, out, z = (torch.randn(*SHAPE, generator=g, dtype=torch.float64) for _ in range(3))
    norms = score_noise_norms(out, z)
    assert norms.dtype == torch.float64
    torch.testing.assert_close(norms[:, 0], out.flatten(1).norm(dim=1), rtol=0, atol=1e-13)
    rows = torch.rand(SHAPE[0], 7, generator=g, dtype=torch.float64) + 0.5
    rows[:, 6] = 0.0                                                      # c_aux: no aux here
    y = diffusion_step(x, out, rows, "eps", noise=z)
    for b in range(SHAPE[0]):
        torch.testing.assert_close(y[b:b + 1], diffusion_step(x[b:b + 1], out[b:b + 1], rows[b].tolist(), "eps",
                                                              noise=z[b:b + 1]), rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match=r"per-sample coefficients must be a float32 tensor"):
        diffusion_step(x.float(), out.float(), rows, noise=z.float())       # float64 rows need float64 x
    thresholded = diffusion_step(x * 5, out, (0.3, 0.9, 1.0, 0.0, 0.0, 0.0), threshold=0.9)
    assert thresholded.dtype == torch.float64 and thresholded.abs().max() <= 1.0


def test_float64_refuses_a_forced_triton_backend():
    x = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="float64 runs on the reference"):
        diffusion_step(x, x, (1.0, 1.0, 1.0, 0.0, 0.0, 0.0), backend="triton")
