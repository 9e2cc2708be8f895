"""Bad input raises ValueError/TypeError naming the argument -- never a Triton or CUDA error."""
import pytest
import torch

from fastgen import nn as fnn
from fastgen import ops


@pytest.fixture(params=["reference", "triton"])
def backend(request):
    return request.param


@pytest.mark.parametrize("x_shape,w_shape,kwargs,error,match", [
    ((2, 4, 5), (4, 4, 3, 3), {}, ValueError, r"x must be a 4-D tensor \[B, C_in, H, W\]"),
    ((2, 4, 5, 5), (4, 4, 3), {}, ValueError, r"weight must be a 4-D tensor"),
    ((2, 4, 5, 5), (4, 4, 2, 2), {}, ValueError, r"odd square kernel"),
    ((2, 4, 5, 5), (4, 4, 3, 5), {}, ValueError, r"odd square kernel"),
    ((2, 3, 5, 5), (4, 4, 3, 3), {}, ValueError, r"x has 3 channels but weight expects C_in = 4"),
    ((2, 4, 5, 5), (4, 4, 3, 3), {"mask_type": "C"}, ValueError, r"mask_type must be one of"),
    ((2, 4, 5, 5), (4, 4, 3, 3), {"color_groups": 3}, ValueError, r"color_groups = 3 must divide C_in = 4"),
    ((2, 4, 5, 5), (4, 4, 3, 3), {"color_groups": 0}, ValueError, r"color_groups must be a positive int"),
    ((2, 4, 5, 5), (4, 4, 3, 3), {"dilation": 0}, ValueError, r"dilation must be a positive int"),
    ((2, 4, 5, 5), (4, 4, 3, 3), {"stack": "diagonal"}, ValueError, r"stack must be one of"),
])
def test_masked_conv2d_bad_input(backend, x_shape, w_shape, kwargs, error, match):
    with pytest.raises(error, match=match):
        ops.masked_conv2d(torch.randn(x_shape), torch.randn(w_shape), backend=backend, **kwargs)


def test_masked_conv2d_bad_bias_dtype_and_type(backend):
    x, w = torch.randn(1, 4, 5, 5), torch.randn(6, 4, 3, 3)
    with pytest.raises(ValueError, match=r"bias must have shape \[6\]"):
        ops.masked_conv2d(x, w, torch.randn(4), backend=backend)
    with pytest.raises(TypeError, match=r"weight has dtype torch.float16 but x has torch.float32"):
        ops.masked_conv2d(x, w.half(), backend=backend)
    with pytest.raises(TypeError, match=r"x must be a floating-point tensor"):
        ops.masked_conv2d(torch.ones(1, 4, 5, 5, dtype=torch.long), w, backend=backend)
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor"):
        ops.masked_conv2d([[1.0]], w, backend=backend)


@pytest.mark.parametrize("x_shape,w_shape,dilation,match", [
    ((2, 4), (4, 4, 2), 1, r"x must be a 3-D tensor \[B, C_in, T\]"),
    ((2, 4, 9), (4, 4, 2, 2), 1, r"weight must be a 3-D tensor \[C_out, C_in, k\]"),
    ((2, 3, 9), (4, 4, 2), 1, r"x has 3 channels but weight expects C_in = 4"),
    ((2, 4, 9), (4, 4, 2), -1, r"dilation must be a positive int"),
    ((2, 4, 9), (4, 4, 0), 1, r"kernel size k >= 1"),
])
def test_causal_conv1d_bad_input(backend, x_shape, w_shape, dilation, match):
    with pytest.raises(ValueError, match=match):
        ops.causal_conv1d(torch.randn(x_shape), torch.randn(w_shape), None, dilation, backend=backend)


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"backend must be one of"):
        ops.masked_conv2d(torch.randn(1, 2, 3, 3), torch.randn(2, 2, 3, 3), backend="cuda")


def test_module_constructor_errors():
    with pytest.raises(ValueError, match="kernel_size must be an odd int"):
        fnn.MaskedConv2d(4, 4, 4)
    with pytest.raises(ValueError, match="mask_type must be 'A' or 'B'"):
        fnn.MaskedConv2d(4, 4, 3, mask_type="C")
    with pytest.raises(ValueError, match="color_groups = 3 must divide in_channels = 4"):
        fnn.MaskedConv2d(4, 6, 3, color_groups=3)
    layer = fnn.GatedMaskedConv2d(4, cond_channels=3)
    v = h = torch.randn(1, 4, 5, 5)
    with pytest.raises(ValueError, match="cond must be given"):
        layer(v, h)
    with pytest.raises(ValueError, match=r"cond must have shape \[B, 3\]"):
        layer(v, h, torch.randn(1, 5))
    with pytest.raises(ValueError, match="cond must be given"):
        fnn.GatedMaskedConv2d(4)(v, h, torch.randn(1, 3))


# ------------------------------------------------- samplers outside diffusion (issue 16, point 4)
def test_completion_accepts_integer_valued_float_known_and_refuses_fractions():
    from fastgen.models import GatedPixelCNN
    from fastgen.sampling import sample
    torch.manual_seed(0)
    model = GatedPixelCNN((1, 4, 4), levels=5, channels=8, layers=2).eval()
    known = torch.randint(5, (2, 1, 4, 4))
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    mask[:, :, :2] = True
    as_long = sample(model, 2, known=known, known_mask=mask, generator=torch.Generator().manual_seed(1))
    as_float = sample(model, 2, known=known.float(), known_mask=mask, generator=torch.Generator().manual_seed(1))
    assert torch.equal(as_long, as_float) and torch.equal(as_float[mask], known[mask])
    with pytest.raises(ValueError, match="known must hold integer pixel values"):
        sample(model, 2, known=known.float() + 0.5, known_mask=mask)
    with pytest.raises(TypeError, match="known must be an integer tensor"):
        sample(model, 2, known=known.bool(), known_mask=mask)


def test_wavenet_refuses_an_empty_batch_and_audio_outside_the_unit_range():
    from fastgen.models import WaveNet
    model = WaveNet(layers=2, cycle=2, residual_channels=8, skip_channels=8, quantization=16)
    with pytest.raises(ValueError, match="batch must be a positive int, got 0"):
        model.generate(10, batch=0)
    with pytest.raises(ValueError, match=r"audio must have values in \[-1, 1\].*int16"):
        model.loss(torch.tensor([[0.0, 1200.0, -32768.0]]))
    assert torch.isfinite(model.loss(torch.rand(2, 16) * 2 - 1))
