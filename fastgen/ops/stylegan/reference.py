"""StyleGAN2's custom ops in plain PyTorch: the specification of ``fastgen.ops.bias_act``,
``fastgen.ops.upfirdn2d`` and ``fastgen.ops.modulated_conv2d`` and their CPU path
(differentiable to any order by ordinary autograd).

The arguments and their meaning are those of StyleGAN2-ADA's published ops (Karras et al.
2020, "Training Generative Adversarial Networks with Limited Data"; the ops were introduced
with StyleGAN2, Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN"),
so code written against them ports unchanged.  Written here from their documented semantics.

bias_act(x, b, dim, act, alpha, gain, clamp)
    y = clamp(act(x + b) * gain, -clamp, clamp), b [x.shape[dim]] broadcast along ``dim``.
    ``ACTIVATIONS`` gives each activation's formula, its default alpha and gain, and which
    tensor its derivative is computed from ('y': the output alone, 'x': the input).

upfirdn2d(x, f, up, down, padding, flip_filter, gain)
    x [N, C, H, W]; per axis: 1. upsample by inserting up - 1 zeros after every sample (length
    H * up_y); 2. pad by padding = (x0, x1, y0, y1) zeros (negative values crop); 3. convolve
    with the FIR filter f (2-D [fh, fw], or 1-D [fw]: separable, applied along both axes), valid
    positions only; 4. keep every down-th sample starting at 0.  Output
    H_out = (H * up_y + y0 + y1 - fh) // down_y + 1 (same for W with x).  "Convolve" is a true
    convolution (the filter flipped) unless ``flip_filter=True`` (then a correlation, as
    ``F.conv2d`` computes); a symmetric filter makes them equal.  The filter is multiplied by
    ``gain`` (a 2-D filter) or each axis by sqrt(gain) (a separable one): the response to a
    constant is gain * sum(f) (2-D) or gain * sum(f)^2 (1-D).  No implicit up^2: to preserve a
    constant's level when upsampling pass gain = up_x * up_y, as ``upsample2d`` does.

modulated_conv2d(x, weight, styles, demodulate, up, down, padding, resample_filter, noise, flip_weight)
    w'[n] = weight * styles[n] (per input channel), and with ``demodulate`` w'[n, o] /=
    sqrt(sum_{i,kh,kw} w'[n, o]^2 + 1e-8); y[n] = conv2d_resample(x[n], w'[n]) + noise
    (StyleGAN2's formulation; noise [N, 1, H, W] or anything broadcastable to y).
    conv2d_resample (StyleGAN2-ADA's ``conv2d_resample``: padding is applied once, at the
    start): with filter f (``resample_filter``; None = the identity [[1]]) and padding
    (x0, x1, y0, y1),
      up > 1:   pad += ((fw + up - 1) // 2, (fw - up) // 2, same with fh), and x is first
                upfirdn2d(x, f, up=up, padding=pad, gain=up^2);
      down > 1: pad += ((fw - down + 1) // 2, (fw - down) // 2, same with fh), and the conv's
                output is then upfirdn2d(., f, down=down);
      the conv itself: ``F.conv2d`` (a correlation) with w'[n] if ``flip_weight`` else with w'[n]
      flipped in both spatial axes (a true convolution), no padding of its own (when up = down
      = 1 the padding is the conv's zero padding).
    The per-sample weights are the semantics; this reference computes them as one grouped
    convolution (groups = N), the formulation StyleGAN2 itself uses.  Unlike StyleGAN2-ADA's
    implementation it does not pre-normalise weight and styles by their max-norms for fp16
    (a trick that cancels under demodulation up to the 1e-8).

Everything is computed in float32 (float64 for float64 inputs) and returned in x's dtype.
"""
import math
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


class Activation(NamedTuple):
    """One activation of ``bias_act``: default alpha and gain, and what its derivative reads:
    'y' -- the output alone (the activation is invertible from y), 'x' -- the input x + b."""
    def_alpha: float
    def_gain: float
    ref: str


ACTIVATIONS = {
    "linear":   Activation(0.0, 1.0, "y"),           # x
    "relu":     Activation(0.0, math.sqrt(2), "y"),  # max(x, 0)
    "lrelu":    Activation(0.2, math.sqrt(2), "y"),  # x if x >= 0 else alpha x
    "tanh":     Activation(0.0, 1.0, "y"),           # tanh(x)
    "sigmoid":  Activation(0.0, 1.0, "y"),           # 1 / (1 + exp(-x))
    "elu":      Activation(0.0, 1.0, "y"),           # x if x >= 0 else exp(x) - 1
    "selu":     Activation(0.0, 1.0, "y"),           # scale (x if x >= 0 else alpha (exp(x) - 1))
    "softplus": Activation(0.0, 1.0, "y"),           # log(1 + exp(x))
    "swish":    Activation(0.0, 1.0, "x"),           # x sigmoid(x)
}


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def resolve_act(act: str, alpha: Optional[float], gain: Optional[float], clamp: Optional[float]):
    """(alpha, gain, clamp) with StyleGAN2-ADA's defaults filled in; clamp -1 = none."""
    spec = ACTIVATIONS[act]
    alpha = float(spec.def_alpha if alpha is None else alpha)
    gain = float(spec.def_gain if gain is None else gain)
    clamp = float(-1 if clamp is None else clamp)
    return alpha, gain, clamp


def activation(z: Tensor, act: str, alpha: float) -> Tensor:
    """act(z), the formulas of ``ACTIVATIONS``."""
    if act == "linear":
        return z
    if act == "relu":
        return torch.relu(z)
    if act == "lrelu":
        return torch.where(z >= 0, z, z * alpha)
    if act == "tanh":
        return torch.tanh(z)
    if act == "sigmoid":
        return torch.sigmoid(z)
    if act == "elu":
        return torch.where(z >= 0, z, torch.expm1(torch.clamp(z, max=0)))
    if act == "selu":
        return SELU_SCALE * torch.where(z >= 0, z, SELU_ALPHA * torch.expm1(torch.clamp(z, max=0)))
    if act == "softplus":
        return F.softplus(z)
    if act == "swish":
        return z * torch.sigmoid(z)
    raise ValueError(f"act must be one of {tuple(ACTIVATIONS)}, got {act!r}")


def _bias_shape(x: Tensor, dim: int) -> list:
    return [-1 if i == dim else 1 for i in range(x.dim())]


def bias_act(x: Tensor, b: Optional[Tensor] = None, dim: int = 1, act: str = "linear", alpha: Optional[float] = None,
             gain: Optional[float] = None, clamp: Optional[float] = None) -> Tensor:
    """y = clamp(act(x + b) * gain, -clamp, clamp) (module docstring); clamp None or < 0: none."""
    alpha, gain, clamp = resolve_act(act, alpha, gain, clamp)
    z = x.to(_compute_dtype(x))
    if b is not None:
        z = z + b.to(z.dtype).reshape(_bias_shape(x, dim))
    y = activation(z, act, alpha)
    if gain != 1:
        y = y * gain
    if clamp >= 0:
        y = y.clamp(-clamp, clamp)
    return y.to(x.dtype)


def bias_act_derivative(ref: Tensor, act: str, alpha: float, gain: float, clamp: float, order: int = 1) -> Tensor:
    """What the kernels compute from the saved tensor, in float32/float64:

    order 1: dy/dx (the backward multiplies the incoming gradient by it); order 2: its
    derivative with respect to ``ref`` (the double backward's term through ``ref``).  ``ref``
    is y (the output) for the 'y' activations, the pre-activation x + b for 'x' ones (swish).
    From y: a = y / gain is act(x) where the clamp is inactive; the clamp's derivative is 0
    where |y| >= clamp (where it is active; the boundary itself has measure zero)."""
    r = ref.to(_compute_dtype(ref))
    if ACTIVATIONS[act].ref == "x":
        s = torch.sigmoid(r)
        y = activation(r, act, alpha) * gain
        if order == 1:
            d = gain * (s + r * s * (1 - s))
        else:
            d = gain * s * (1 - s) * (2 + r * (1 - 2 * s))
    else:
        y = r
        a = r / gain if gain != 0 else r
        one, zero = torch.ones_like(a), torch.zeros_like(a)
        if order == 1:
            d = {"linear": one, "relu": (a > 0).to(a.dtype), "lrelu": torch.where(a >= 0, one, alpha * one),
                 "tanh": 1 - a * a, "sigmoid": a * (1 - a), "elu": torch.where(a >= 0, one, a + 1),
                 "selu": torch.where(a >= 0, SELU_SCALE * one, a + SELU_SCALE * SELU_ALPHA),
                 "softplus": -torch.expm1(-a)}[act] * gain
        else:   # d/dy of (gain * phi(a)) with a = y / gain: phi'(a)
            d = {"linear": zero, "relu": zero, "lrelu": zero, "tanh": -2 * a, "sigmoid": 1 - 2 * a,
                 "elu": torch.where(a >= 0, zero, one), "selu": torch.where(a >= 0, zero, one),
                 "softplus": torch.exp(-a)}[act]
    if clamp >= 0:
        d = torch.where(y.abs() < clamp, d, torch.zeros_like(d))
    return d


# --------------------------------------------------------------------------------- upfirdn2d

Ints2 = Union[int, Sequence[int]]


def parse_scaling(value: Ints2, name: str = "up") -> Tuple[int, int]:
    """int or (sx, sy) -> (sx, sy), each a positive int."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or (x, y), got {value!r}")
        sx, sy = value
    else:
        sx = sy = value
    for v in (sx, sy):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return sx, sy


def parse_padding(padding: Ints2) -> Tuple[int, int, int, int]:
    """int p -> (p, p, p, p); (px, py) -> (px, px, py, py); (x0, x1, y0, y1) as is."""
    if isinstance(padding, (list, tuple)):
        values = list(padding)
        if len(values) == 2:
            values = [values[0], values[0], values[1], values[1]]
        if len(values) != 4:
            raise ValueError(f"padding must be an int, (px, py) or (x0, x1, y0, y1), got {padding!r}")
    else:
        values = [padding] * 4
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"padding must hold ints, got {padding!r}")
    return tuple(values)


def filter_size(f: Optional[Tensor]) -> Tuple[int, int]:
    """(fw, fh) of a 2-D [fh, fw] or separable [fw] filter (None: (1, 1))."""
    if f is None:
        return 1, 1
    return (f.shape[-1], f.shape[0]) if f.dim() == 2 else (f.shape[0], f.shape[0])


def upfirdn2d_output_size(H: int, W: int, f: Optional[Tensor], up: Tuple[int, int], down: Tuple[int, int],
                          padding: Tuple[int, int, int, int]) -> Tuple[int, int]:
    """(H_out, W_out) = ((H up_y + y0 + y1 - fh) // down_y + 1, same for W)."""
    fw, fh = filter_size(f)
    x0, x1, y0, y1 = padding
    return ((H * up[1] + y0 + y1 - fh) // down[1] + 1, (W * up[0] + x0 + x1 - fw) // down[0] + 1)


def upfirdn2d(x: Tensor, f: Optional[Tensor], up: Ints2 = 1, down: Ints2 = 1, padding: Ints2 = 0,
              flip_filter: bool = False, gain: float = 1) -> Tensor:
    """Upsample, pad, FIR-filter, downsample x [N, C, H, W] (module docstring).  No gradient
    flows to f (a fixed filter, as StyleGAN2-ADA's op)."""
    upx, upy = parse_scaling(up, "up")
    downx, downy = parse_scaling(down, "down")
    x0, x1, y0, y1 = parse_padding(padding)
    compute = _compute_dtype(x)
    if f is None:
        f = torch.ones(1, 1, dtype=compute, device=x.device)
    f = f.detach().to(compute)
    N, C, H, W = x.shape
    z = x.to(compute)
    if upx > 1 or upy > 1:                          # zeros after every sample
        z = z.reshape(N, C, H, 1, W, 1)
        z = F.pad(z, [0, upx - 1, 0, 0, 0, upy - 1])
        z = z.reshape(N, C, H * upy, W * upx)
    z = F.pad(z, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    z = z[:, :, max(-y0, 0): z.shape[2] - max(-y1, 0), max(-x0, 0): z.shape[3] - max(-x1, 0)]
    if f.dim() == 1:
        f = f * math.sqrt(gain) if gain != 1 else f
        fx, fy = (f, f) if flip_filter else (f.flip(0), f.flip(0))   # conv2d correlates: flip = convolve
        z = z.reshape(N * C, 1, *z.shape[2:])
        z = F.conv2d(z, fx.reshape(1, 1, 1, -1))
        z = F.conv2d(z, fy.reshape(1, 1, -1, 1))
    else:
        f = f * gain if gain != 1 else f
        k = f if flip_filter else f.flip(0, 1)
        z = z.reshape(N * C, 1, *z.shape[2:])
        z = F.conv2d(z, k[None, None])
    z = z.reshape(N, C, *z.shape[2:])
    z = z[:, :, ::downy, ::downx]
    return z.to(x.dtype)


def upfirdn2d_grad_padding(H: int, W: int, f: Optional[Tensor], up: Tuple[int, int], down: Tuple[int, int],
                           padding: Tuple[int, int, int, int]) -> Tuple[int, int, int, int]:
    """The padding of the upfirdn2d that is upfirdn2d's adjoint (gradient): with up and down
    swapped and the filter flipped, p0' = f - 1 - p0 and p1' chosen so that the result has the
    input's size: p1' = size * up - out * down + p0 - up + 1 (per axis)."""
    fw, fh = filter_size(f)
    x0, x1, y0, y1 = padding
    OH, OW = upfirdn2d_output_size(H, W, f, up, down, padding)
    return (fw - x0 - 1, W * up[0] - OW * down[0] + x0 - up[0] + 1,
            fh - y0 - 1, H * up[1] - OH * down[1] + y0 - up[1] + 1)


def setup_filter(f, normalize: bool = True, flip_filter: bool = False, gain: float = 1,
                 separable: Optional[bool] = None, device=None) -> Tensor:
    """A FIR filter for upfirdn2d as StyleGAN2-ADA prepares it: a float32 tensor from a list
    (None: [1]); 1-D stays separable when ``separable`` (default: when it has >= 8 taps), else
    becomes the 2-D outer product f f^T; normalised to sum 1 (``normalize``), flipped
    (``flip_filter``), scaled by gain (2-D) or sqrt(gain) (separable)."""
    f = torch.as_tensor([1.0] if f is None else f, dtype=torch.float32, device=device)
    if f.dim() == 0:
        f = f.reshape(1)
    if f.dim() not in (1, 2) or f.numel() == 0:
        raise ValueError(f"f must be a non-empty 1-D or 2-D filter, got shape {tuple(f.shape)}")
    if separable is None:
        separable = f.dim() == 1 and f.numel() >= 8
    if f.dim() == 1 and not separable:
        f = f.ger(f)
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.dim())))
    return f * (gain ** (f.dim() / 2))


def upsample2d_padding(f: Optional[Tensor], up: Tuple[int, int], padding: Tuple[int, int, int, int]):
    """Padding that keeps H * up samples with the filter centred: + ((fw + up - 1) // 2, (fw - up) // 2)."""
    fw, fh = filter_size(f)
    x0, x1, y0, y1 = padding
    return (x0 + (fw + up[0] - 1) // 2, x1 + (fw - up[0]) // 2, y0 + (fh + up[1] - 1) // 2, y1 + (fh - up[1]) // 2)


def downsample2d_padding(f: Optional[Tensor], down: Tuple[int, int], padding: Tuple[int, int, int, int]):
    """Padding that gives H / down samples with the filter centred: + ((fw - down + 1) // 2, (fw - down) // 2)."""
    fw, fh = filter_size(f)
    x0, x1, y0, y1 = padding
    return (x0 + (fw - down[0] + 1) // 2, x1 + (fw - down[0]) // 2,
            y0 + (fh - down[1] + 1) // 2, y1 + (fh - down[1]) // 2)


# ------------------------------------------------------------------------- modulated_conv2d

def demodulation(weight: Tensor, styles: Tensor) -> Tensor:
    """d[n, o] = 1 / sqrt(sum_{i, kh, kw} (weight[o, i] styles[n, i])^2 + 1e-8), float32 [N, C_out]
    (float64 for float64 inputs), as one small matmul: (styles^2) @ (sum_k weight^2)^T."""
    compute = _compute_dtype(weight)
    w2 = weight.to(compute).square().sum(dim=(2, 3))               # [C_out, C_in]
    return (styles.to(compute).square() @ w2.t() + 1e-8).rsqrt()


def conv2d_resample_padding(f: Optional[Tensor], up: int, down: int, padding: Tuple[int, int, int, int]):
    """The padding applied at the start of conv2d_resample (module docstring)."""
    if up > 1:
        padding = upsample2d_padding(f, (up, up), padding)
    if down > 1:
        padding = downsample2d_padding(f, (down, down), padding)
    return padding


def modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, demodulate: bool = True, up: int = 1,
                     down: int = 1, padding: Ints2 = 0, resample_filter: Optional[Tensor] = None,
                     noise: Optional[Tensor] = None, flip_weight: bool = True) -> Tensor:
    """StyleGAN2's modulated convolution (module docstring), as a grouped convolution."""
    N, Cin, H, W = x.shape
    Cout, _, kh, kw = weight.shape
    compute = _compute_dtype(x)
    w = weight.to(compute)[None] * styles.to(compute)[:, None, :, None, None]     # [N, Cout, Cin, kh, kw]
    if demodulate:
        w = w * demodulation(weight, styles).to(compute)[:, :, None, None, None]
    if not flip_weight:
        w = w.flip(3, 4)
    pad = conv2d_resample_padding(resample_filter, up, down, parse_padding(padding))
    z = x.to(compute)
    if up > 1:
        z = upfirdn2d(z, resample_filter, up=up, padding=pad, gain=up * up)
        conv_pad = (0, 0)
    elif down > 1:
        z = F.pad(z, [max(p, 0) for p in pad])
        z = z[:, :, max(-pad[2], 0): z.shape[2] - max(-pad[3], 0), max(-pad[0], 0): z.shape[3] - max(-pad[1], 0)]
        conv_pad = (0, 0)
    else:
        x0, x1, y0, y1 = pad
        if x0 == x1 and y0 == y1 and x0 >= 0 and y0 >= 0:
            conv_pad = (y0, x0)
        else:
            z = upfirdn2d(z, None, padding=pad)
            conv_pad = (0, 0)
    z = F.conv2d(z.reshape(1, N * Cin, *z.shape[2:]), w.reshape(N * Cout, Cin, kh, kw), padding=conv_pad, groups=N)
    z = z.reshape(N, Cout, *z.shape[2:])
    if down > 1:
        z = upfirdn2d(z, resample_filter, down=down)
    if noise is not None:
        z = z + noise.to(compute)
    return z.to(x.dtype)
