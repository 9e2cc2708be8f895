"""fastgen.ops.gated_pixel_step and gated_vertical_row: the Triton kernels (interpreter on the CPU)
against the reference (and the row against the model's own vertical stacks), the layouts the
sampler passes (strided outputs), the backend choice with its reason, errors naming the
argument, opcheck."""
import pytest
import torch

from fastgen.ops.gated_pixel_step import GatedStepWeights, GatedVerticalWeights, gated_pixel_step, gated_vertical_row
from fastgen.ops.gated_pixel_step import reference


def _step_inputs(L=3, B=5, CH=16, HC=32, W=6, levels=150, seed=0):
    """(p_in [L, B, CH], v [L, B, W, 2CH], cond_h [L, B, 2CH], GatedStepWeights, gumbel [B, levels])."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.3
    weights = GatedStepWeights(r(L, 2, CH, 2 * CH), r(L, 2 * CH), r(L, 2 * CH, 2 * CH), r(L, 2 * CH), r(L, CH, CH),
                               r(L, CH), r(CH, HC), r(HC), r(HC, levels), r(levels), r(CH), r(CH))
    gumbel = -torch.log(-torch.log(torch.rand(B, 2, levels, generator=g)))[:, 1]   # a strided view
    return r(L, B, CH), r(L, B, W, 2 * CH), r(L, B, 2 * CH), weights, gumbel


def _outputs(p_in, W=6):
    """Fresh (p_out, x_out, e_row): NaN / -1 / zeros, so unwritten values show."""
    L, B, CH = p_in.shape
    return torch.full_like(p_in, float("nan")), torch.full((B,), -1), torch.zeros(B, W, CH)


def test_fused_gated_pixel_step_triton_matches_reference():
    p_in, v, cond_h, weights, gumbel = _step_inputs()
    outs = {}
    for backend in ("reference", "triton"):
        p_out, x_out, e_row = _outputs(p_in)
        gated_pixel_step(p_in, p_out, v, cond_h, weights, gumbel, x_out, e_row, 2, 1 / 0.9, 2 / 149,
                         backend=backend)
        outs[backend] = (x_out, p_out, e_row)
    assert torch.equal(outs["triton"][0], outs["reference"][0])
    assert outs["reference"][0].unique().numel() > 1
    torch.testing.assert_close(outs["triton"][1], outs["reference"][1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs["triton"][2], outs["reference"][2], rtol=1e-5, atol=1e-5)
    assert (outs["triton"][2][:, [0, 1, 3, 4, 5]] == 0).all()     # only column c is written


def test_fused_step_refuses_unsupported_shapes_on_forced_triton():
    p_in, v, cond_h, weights, gumbel = _step_inputs(CH=16, HC=24, levels=8)
    with pytest.raises(ValueError, match="powers of two"):
        gated_pixel_step(p_in, torch.empty_like(p_in), v, cond_h, weights, gumbel,
                         torch.empty(p_in.shape[1], dtype=torch.long), torch.zeros(5, 6, 16), 0, 1.0, 0.1,
                         backend="triton")


def test_unsupported_shapes_run_the_reference_unless_triton_is_forced(monkeypatch):
    """The automatic choice takes shapes the kernel cannot tile (8 channels, a head of 24) and
    gives the reference's values."""
    monkeypatch.delenv("FASTGEN_BACKEND", raising=False)
    p_in, v, cond_h, weights, gumbel = _step_inputs(L=2, B=3, CH=8, HC=24, levels=10)
    p_out, x_out, e_row = _outputs(p_in)
    gated_pixel_step(p_in, p_out, v, cond_h, weights, gumbel, x_out, e_row, 4, 1.0, 0.2)
    x, p_new, e = reference.gated_pixel_step(p_in, v, cond_h, weights, gumbel, 4, 1.0, 0.2)
    assert torch.equal(x_out, x) and torch.equal(p_out, p_new) and torch.equal(e_row[:, 4], e)


@pytest.mark.parametrize("change, error, match", [
    (lambda a: a.update(weights=tuple(a["weights"])), TypeError, "weights must be a GatedStepWeights"),
    (lambda a: a.update(weights=a["weights"]._replace(wo=torch.zeros(3, 16, 8))), ValueError, "weights.wo"),
    (lambda a: a.update(v=a["v"][:, :4]), ValueError, "v must be"),
    (lambda a: a.update(gumbel=a["gumbel"][:, :7]), ValueError, "gumbel must be"),
    (lambda a: a.update(x_out=a["x_out"].int()), TypeError, "x_out must be int64"),
    (lambda a: a.update(c=6), ValueError, "column c"),
], ids=["plain-tuple", "wo-shape", "v-batch", "gumbel-levels", "x_out-dtype", "c-out-of-row"])
def test_bad_inputs_raise_errors_naming_the_argument(change, error, match):
    p_in, v, cond_h, weights, gumbel = _step_inputs()
    p_out, x_out, e_row = _outputs(p_in)
    args = dict(p_in=p_in, p_out=p_out, v=v, cond_h=cond_h, weights=weights, gumbel=gumbel, x_out=x_out,
                e_row=e_row, c=0, inv_temperature=1.0, scale=0.1)
    change(args)
    with pytest.raises(error, match=match):
        gated_pixel_step(**args, backend="reference")


def test_opcheck():
    """torch.library.opcheck (schema, fake, declared in-place writes of p_out, x_out, e_row)."""
    p_in, v, cond_h, weights, gumbel = _step_inputs(L=2, B=3, levels=20)
    p_out, x_out, e_row = _outputs(p_in)
    torch.library.opcheck(torch.ops.fastgen.gated_pixel_step.default,
                          (p_in, p_out, v, cond_h, list(weights), gumbel, x_out, e_row, 1, 1.0, 0.1))


def test_step_draws_into_strided_views_and_ignores_p_in_at_column_0():
    """The sampler's layout: x_out is a column of the long image x [B, 1, H, W] and e_row a row
    of the vertical stack's input ring; at c = 0 p_in is zero padding whatever it holds."""
    p_in, v, cond_h, weights, gumbel = _step_inputs(B=3)
    L, B, CH = p_in.shape
    zeros_in = torch.zeros_like(p_in)
    outs = {}
    for backend in ("reference", "triton"):
        x = torch.full((B, 1, 4, 6), -1)
        ring = torch.zeros(L, B, 2, 6 + 2, CH)
        p_out = torch.full_like(p_in, float("nan"))
        gated_pixel_step(torch.full_like(p_in, float("nan")), p_out, v, cond_h, weights, gumbel, x[:, 0, 2, 0],
                         ring[0, :, 1, 1:7], 0, 1.0, 2 / 149, backend=backend)
        outs[backend] = (x, ring, p_out)
    x_ref, p_ref, e_ref = reference.gated_pixel_step(zeros_in, v, cond_h, weights, gumbel, 0, 1.0, 2 / 149)
    for backend, (x, ring, p_out) in outs.items():
        assert torch.equal(x[:, 0, 2, 0], x_ref), backend
        assert (x[:, 0, 2, 1:] == -1).all() and (x[:, 0, :2] == -1).all()        # nothing else written
        torch.testing.assert_close(p_out, p_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ring[0, :, 1, 1], e_ref, rtol=1e-5, atol=1e-5)
        ring[0, :, 1, 1] = 0
        assert (ring == 0).all(), backend                                           # only that column


def _row_inputs(L=3, B=3, W=5, CH=16, seed=0):
    """(vin [L, B, 2, W+2, CH] with zero padding, GatedVerticalWeights (type-A first layer),
    cond_v [L, B, 2CH])."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.3
    wv = r(L, 6, CH, 2 * CH)
    wv[0, 3:] = 0                                   # the first layer never sees its own row
    vin = torch.zeros(L, B, 2, W + 2, CH)
    vin[:, :, :, 1:-1] = r(L, B, 2, W, CH)
    return vin, GatedVerticalWeights(wv, r(L, 2 * CH)), r(L, B, 2 * CH)


@pytest.mark.parametrize("r, W, CH", [(0, 5, 16), (3, 5, 16), (2, 70, 32)],
                         ids=["r0-W5-CH16", "r3-W5-CH16", "r2-W70-CH32-two-channel-blocks"])
def test_vertical_row_triton_matches_reference(r, W, CH):
    """Both ring slots, and a row wide enough that the kernel takes the output channels in two
    blocks; the first layer's slot of row r (which holds row r - 2 while the row is computed) is
    NaN: never read, not even multiplied by a zero weight."""
    vin, weights, cond_v = _row_inputs(W=W, CH=CH)
    L, B, _, W2, CH = vin.shape
    vin[0, :, r % 2, 1:-1] = float("nan")
    outs = {}
    for backend in ("reference", "triton"):
        ring, v_out = vin.clone(), torch.full((L, B, W2 - 2, 2 * CH), float("nan"))
        gated_vertical_row(ring, v_out, cond_v, weights, r, backend=backend)
        outs[backend] = ring, v_out
    torch.testing.assert_close(outs["triton"][1], outs["reference"][1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs["triton"][0], outs["reference"][0], rtol=1e-5, atol=1e-5, equal_nan=True)
    for ring, v_out in outs.values():
        assert torch.isfinite(v_out).all()
        assert torch.equal(ring[:, :, 1 - r % 2], vin[:, :, 1 - r % 2])             # row r - 1 untouched
        assert (ring[:, :, :, [0, -1]] == 0).all()                                  # padding untouched
        assert not torch.equal(ring[1:, :, r % 2], vin[1:, :, r % 2])


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_vertical_row_is_the_models_vertical_stacks(backend):
    """With ``GatedPixelCNN.packed_vertical_weights`` and the model's conditioning terms, row r of
    the op is row r of every layer's vertical stack in the full forward (masked 3x3 convs)."""
    from fastgen.models import GatedPixelCNN
    from fastgen.nn.functional import gated_activation
    torch.manual_seed(2)
    model = GatedPixelCNN((1, 5, 6), levels=7, channels=16, layers=3, num_classes=2).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        x, cond = torch.randint(7, (2, 1, 5, 6)), torch.tensor([1, 0])
        c = model.embed_cond(cond, 2)
        u, pre = [model.embed(model.scale(x))], []          # every layer's input and pre-activation
        for layer in model.layers:
            pre.append(layer.vertical(u[-1]))
            u.append(gated_activation(pre[-1] + layer.cond_vertical(c)[:, :, None, None]))
        cond_v = torch.stack([layer.cond_vertical(c) for layer in model.layers])
        r = 3
        vin = torch.zeros(3, 2, 2, 6 + 2, 16)
        for l in range(3):
            vin[l, :, (r - 1) % 2, 1:-1] = u[l][:, :, r - 1].transpose(1, 2)
        vin[0, :, r % 2, 1:-1] = float("nan")                       # the image's row r is not drawn yet
        v_out = torch.empty(3, 2, 6, 32)
        gated_vertical_row(vin, v_out, cond_v, model.packed_vertical_weights(), r, backend=backend)
    for l in range(3):
        torch.testing.assert_close(v_out[l], pre[l][:, :, r].transpose(1, 2), rtol=1e-5, atol=1e-5)
        if l > 0:
            torch.testing.assert_close(vin[l, :, r % 2, 1:-1], u[l][:, :, r].transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_vertical_row_unsupported_channels_run_the_reference_unless_triton_is_forced(monkeypatch):
    monkeypatch.delenv("FASTGEN_BACKEND", raising=False)
    vin, weights, cond_v = _row_inputs(L=2, B=2, W=3, CH=8)
    v_out = torch.empty(2, 2, 3, 16)
    with pytest.raises(ValueError, match="power of two"):
        gated_vertical_row(vin, v_out, cond_v, weights, 1, backend="triton")
    gated_vertical_row(vin, v_out, cond_v, weights, 1)
    v, u = reference.gated_vertical_row(vin, weights, cond_v, 1)
    assert torch.equal(v_out, v) and torch.equal(vin[1:, :, 1, 1:-1], u)


@pytest.mark.parametrize("change, error, match", [
    (lambda a: a.update(weights=tuple(a["weights"])), TypeError, "weights must be a GatedVerticalWeights"),
    (lambda a: a.update(vin=a["vin"][:, :, :1]), ValueError, "vin must be"),
    (lambda a: a.update(v_out=a["v_out"][:, :, :4]), ValueError, "v_out must be"),
    (lambda a: a.update(cond_v=a["cond_v"][:2]), ValueError, "cond_v must be"),
    (lambda a: a.update(weights=a["weights"]._replace(wv=torch.zeros(3, 9, 16, 32))), ValueError, "weights.wv"),
    (lambda a: a.update(r=-1), ValueError, "row r"),
], ids=["plain-tuple", "vin-ring", "v_out-width", "cond_v-layers", "wv-taps", "negative-row"])
def test_vertical_row_bad_inputs_raise_errors_naming_the_argument(change, error, match):
    vin, weights, cond_v = _row_inputs()
    args = dict(vin=vin, v_out=torch.empty(3, 3, 5, 32), cond_v=cond_v, weights=weights, r=0)
    change(args)
    with pytest.raises(error, match=match):
        gated_vertical_row(**args, backend="reference")


def test_vertical_row_opcheck():
    """torch.library.opcheck (schema, fake, declared in-place writes of vin and v_out)."""
    vin, weights, cond_v = _row_inputs(L=2, B=2, W=3)
    torch.library.opcheck(torch.ops.fastgen.gated_vertical_row.default,
                          (vin, torch.empty(2, 2, 3, 32), cond_v, list(weights), 1))
