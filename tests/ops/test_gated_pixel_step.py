"""fastgen.ops.gated_pixel_step: the Triton kernel (interpreter on the CPU) against the reference,
the backend choice with its reason, errors naming the argument, opcheck."""
import pytest
import torch

from fastgen.ops.gated_pixel_step import GatedStepWeights, gated_pixel_step
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
