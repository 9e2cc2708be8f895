"""StyleGAN2's custom ops -- ``bias_act``, ``upfirdn2d``, ``modulated_conv2d`` -- as fastgen ops:
checks with errors naming the argument, dispatch (Triton on CUDA, the reference on the CPU),
and autograd (second order for bias_act and upfirdn2d: R1 and path-length regularisation
differentiate through the gradient).  The math is ``fastgen.ops.stylegan.reference``; the
kernels are ``fastgen.kernels.stylegan``.  Declared with ``fastgen.ops._define``:

- ``torch.ops.fastgen.bias_act`` (+ ``_backward``): forward kernel.  Its gradient is the op
  ``bias_act_grad`` (dx = g D(ref)), itself differentiable: w.r.t. g by ``bias_act_grad``
  again, w.r.t. ref by ``bias_act_grad2`` (g h D'(ref)) -- one kernel each way.
- ``torch.ops.fastgen.upfirdn2d`` (+ ``_backward``): its gradient is upfirdn2d with up and down
  swapped, the filter flipped and ``reference.upfirdn2d_grad_padding``, through the same
  differentiable op (so every order works).
- ``torch.ops.fastgen.stylegan_conv`` (+ ``_backward``): the implicit-GEMM modulated conv core
  y = d[n, o] * conv(x * s[n, c], weight) with optional zero insertion (the transposed conv of
  the upsampling path) and stride; ``modulated_conv2d`` composes it with the demodulation
  coefficients (a [N, C_in] x [C_in, C_out] matmul in PyTorch: differentiable to weight and
  styles) and upfirdn2d for the resampling.

TF32: bias_act and upfirdn2d have no dots; the conv follows ``torch.backends.cudnn.allow_tf32``
like ``nn.Conv2d`` (``tf32="conv"``).

Autocast (``fastgen.ops._define.Autocast``): ``modulated_conv2d`` is a convolution, so it does
what ``nn.Conv2d`` does -- x, weight and styles are cast to the autocast dtype, the output has
that dtype.  ``bias_act`` and ``upfirdn2d`` are memory-bound elementwise / filtering passes with
no dot products (their kernels compute in float32 whatever the storage dtype), so like
PyTorch's elementwise ops they are not cast: the output keeps x's dtype.  All three run with
autocast disabled inside, so the references' float32 math (upfirdn2d's ``F.conv2d``) stays
float32.
"""
import math
from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor

from fastgen.ops import _backend
from fastgen.ops._define import Autocast, define_autograd, define_op
from fastgen.ops.stylegan import reference
from fastgen.ops.stylegan.reference import ACTIVATIONS, parse_padding, parse_scaling

_FAMILY = "stylegan"
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_GRID_YZ = 65535
_KEEP = Autocast("keep")                                            # bias_act, upfirdn2d
_LOWER = Autocast("lower", cast=("x", "weight", "styles"))          # modulated_conv2d (module docstring)


def _tensor(op: str, name: str, value, legend: str, ndim: Optional[Sequence[int]] = None) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor {legend}, got {type(value).__name__}")
    if ndim is not None and value.dim() not in ndim:
        raise ValueError(f"{op}: {name} must be {legend}, got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        raise TypeError(f"{op}: {name} must be floating point, got {value.dtype}")
    return value


def _same_device(op: str, x: Tensor, **others: Optional[Tensor]) -> None:
    for name, t in others.items():
        if t is not None and t.device != x.device:
            raise ValueError(f"{op}: x is on {x.device} but {name} on {t.device}; they must match")


def _kernel_dtype(op: str, **tensors: Optional[Tensor]) -> Optional[str]:
    for name, t in tensors.items():
        if t is not None and t.dtype not in _DTYPES:
            return f"{name} must be float32/float16/bfloat16 for the kernel, got {t.dtype}"
    return None


# ---------------------------------------------------------------------------------- bias_act

def _bias_layout(x: Tensor, dim: int):
    """(C, INNER, dims summed for the bias gradient)."""
    C = x.shape[dim]
    inner = 1
    for n in x.shape[dim + 1:]:
        inner *= n
    return C, inner, [d for d in range(x.dim()) if d != dim]


def _contig(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


@define_op("bias_act", family=_FAMILY, tf32="matmul", autocast=_KEEP,
           fake=lambda x, b, act, alpha, gain, clamp, dim: torch.empty_like(x, memory_format=torch.contiguous_format))
def _bias_act_kernel(x: Tensor, b: Optional[Tensor], act: str, alpha: float, gain: float, clamp: float,
                     dim: int) -> Tensor:
    """StyleGAN2's fused bias + activation + gain + clamp, one pass."""
    from fastgen.kernels.stylegan import bias_act_forward
    x = x.contiguous()
    y = _backend.empty(*x.shape, dtype=x.dtype, device=x.device)
    C, inner, _ = _bias_layout(x, dim)
    bias_act_forward(x, _contig(b), y, act, alpha, gain, clamp, C, inner)
    return y


def _grad_fake(g, ref, b, act, alpha, gain, clamp, dim):
    return torch.empty_like(ref, memory_format=torch.contiguous_format)


@define_op("bias_act_grad", family=_FAMILY, tf32="matmul", fake=_grad_fake)
def _bias_act_grad_kernel(g: Tensor, ref: Tensor, b: Optional[Tensor], act: str, alpha: float, gain: float,
                          clamp: float, dim: int) -> Tensor:
    """bias_act's gradient g * dy/dx from the saved output (or input, for swish), one pass."""
    from fastgen.kernels.stylegan import bias_act_backward
    ref = ref.contiguous()
    out = _backend.empty(*ref.shape, dtype=ref.dtype, device=ref.device)
    C, inner, _ = _bias_layout(ref, dim)
    bias_act_backward(g.to(ref.dtype).contiguous(), None, ref, _contig(b), out, act, alpha, gain, clamp, C, inner, 1)
    return out


@define_op("bias_act_grad2", family=_FAMILY, tf32="matmul",
           fake=lambda g, h, ref, b, act, alpha, gain, clamp, dim: torch.empty_like(
               ref, memory_format=torch.contiguous_format))
def _bias_act_grad2_kernel(g: Tensor, h: Tensor, ref: Tensor, b: Optional[Tensor], act: str, alpha: float,
                           gain: float, clamp: float, dim: int) -> Tensor:
    """bias_act's second-order term g * h * d(dy/dx)/d(ref), one pass."""
    from fastgen.kernels.stylegan import bias_act_backward
    ref = ref.contiguous()
    out = _backend.empty(*ref.shape, dtype=ref.dtype, device=ref.device)
    C, inner, _ = _bias_layout(ref, dim)
    bias_act_backward(g.to(ref.dtype).contiguous(), h.to(ref.dtype).contiguous(), ref, _contig(b), out, act, alpha,
                      gain, clamp, C, inner, 2)
    return out


def _bias_grad(dx: Tensor, b: Optional[Tensor], dim: int) -> Tensor:
    return dx.float().sum(_bias_layout(dx, dim)[2]).to(b.dtype if b is not None else dx.dtype)


def _empty_grad(like: Tensor) -> Tensor:
    return like.new_empty(0)


def _bias_act_forward(x, b, act, alpha, gain, clamp, dim):
    y = _bias_act_kernel.kernel(x, b, act, alpha, gain, clamp, dim)
    return y, ((y, None) if ACTIVATIONS[act].ref == "y" else (x, b))


def _bias_act_backward(grad, saved, args, needs):
    act, alpha, gain, clamp, dim = args[2:]
    ref, b = saved
    dx = _bias_act_grad_kernel(grad, ref, b, act, alpha, gain, clamp, dim)
    return dx if needs[0] else None, (_bias_grad(dx, args[1], dim) if needs[1] else None)


def _bias_act_backward_op(grad: Tensor, x: Tensor, b: Optional[Tensor], act: str, alpha: float, gain: float,
                          clamp: float, dim: int) -> List[Tensor]:
    if ACTIVATIONS[act].ref == "y":
        ref, rb = _bias_act_kernel.kernel(x, b, act, alpha, gain, clamp, dim), None
    else:
        ref, rb = x, b
    dx = _bias_act_grad_kernel.kernel(grad, ref, rb, act, alpha, gain, clamp, dim).to(x.dtype)
    return [dx, _bias_grad(dx, b, dim) if b is not None else _empty_grad(x)]


define_autograd(
    _bias_act_kernel, tensor_inputs=2, forward=_bias_act_forward, backward=_bias_act_backward,
    backward_op=_bias_act_backward_op, differentiable_backward=True,     # through _bias_act_grad_kernel
    backward_fake=lambda grad, x, b, *args: [torch.empty_like(x), torch.empty_like(b) if b is not None
                                             else x.new_empty(0)],
)


def _grad_forward(g, ref, b, act, alpha, gain, clamp, dim):
    return _bias_act_grad_kernel.kernel(g, ref, b, act, alpha, gain, clamp, dim), (g, ref, b)


def _grad_backward_math(ggrad, g, ref, b, act, alpha, gain, clamp, dim, needs, grad_op, grad2_op):
    """d(g D(ref)): w.r.t. g: ggrad D(ref); w.r.t. ref (and b, for swish): ggrad g D'(ref)."""
    d_g = grad_op(ggrad, ref, b, act, alpha, gain, clamp, dim).to(g.dtype) if needs[0] else None
    d_ref = grad2_op(ggrad, g, ref, b, act, alpha, gain, clamp, dim) if (needs[1] or needs[2]) else None
    d_b = _bias_grad(d_ref, b, dim) if (needs[2] and b is not None) else None
    return d_g, (d_ref if needs[1] else None), d_b


def _grad_backward_op(grad: Tensor, g: Tensor, ref: Tensor, b: Optional[Tensor], act: str, alpha: float,
                      gain: float, clamp: float, dim: int) -> List[Tensor]:
    grads = _grad_backward_math(grad, g, ref, b, act, alpha, gain, clamp, dim, (True, True, b is not None),
                                _bias_act_grad_kernel.kernel, _bias_act_grad2_kernel.kernel)
    return [t if t is not None else _empty_grad(ref) for t in grads]


define_autograd(
    _bias_act_grad_kernel, tensor_inputs=3, forward=_grad_forward,
    backward=lambda grad, saved, args, needs: _grad_backward_math(grad, *saved, *args[3:], needs,
                                                                  _bias_act_grad_kernel, _bias_act_grad2_kernel),
    backward_op=_grad_backward_op,
    backward_fake=lambda grad, g, ref, b, *args: [torch.empty_like(g), torch.empty_like(ref),
                                                  torch.empty_like(b) if b is not None else ref.new_empty(0)],
)


@_KEEP
def bias_act(x: Tensor, b: Optional[Tensor] = None, dim: int = 1, act: str = "linear", alpha: Optional[float] = None,
             gain: Optional[float] = None, clamp: Optional[float] = None, backend: Optional[str] = None) -> Tensor:
    """Fused bias + activation + gain + clamp, StyleGAN2-ADA's ``bias_act``:

        y = clamp(act(x + b) * gain, -clamp, clamp)

    x: any shape [..., C (at ``dim``), ...]; b: [C] or None (broadcast along ``dim``); act: one
    of 'linear', 'relu', 'lrelu', 'tanh', 'sigmoid', 'elu', 'selu', 'softplus', 'swish';
    alpha: lrelu's negative slope (default 0.2; others ignore it); gain: default sqrt(2) for
    relu and lrelu, 1 for the others; clamp: None (or negative) = no clamping.  Returns y like x
    (b is cast to x's dtype), also under ``torch.autocast``, which leaves it uncast.

    Gradients to x and b of every order.  The backward is one kernel that reads only the
    incoming gradient and the forward's output y for every activation except swish, which is
    not invertible from y and reads x (and b) instead; the clamp's gradient is 0 where |y| >=
    clamp.  The backward is itself a differentiable op (its gradient: the same kernel for the
    incoming gradient, a second-derivative kernel for y), so R1 / path-length penalties that
    differentiate through the gradient work.  Backends: Triton on CUDA (and under
    TRITON_INTERPRET=1 when forced), the reference on the CPU and for float64."""
    op = "bias_act"
    _tensor(op, "x", x, "[..., C, ...]")
    if act not in ACTIVATIONS:
        raise ValueError(f"{op}: act must be one of {tuple(ACTIVATIONS)}, got {act!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < max(x.dim(), 1):
        raise ValueError(f"{op}: dim must be an int in [{-x.dim()}, {x.dim()}) for x of shape {tuple(x.shape)}, "
                         f"got {dim!r}")
    dim = dim % x.dim()
    if b is not None:
        _tensor(op, "b", b, f"[{x.shape[dim]}] (x.shape[dim])", ndim=(1,))
        if b.shape[0] != x.shape[dim]:
            raise ValueError(f"{op}: b must have shape [{x.shape[dim]}] (x.shape[dim={dim}]), got {tuple(b.shape)}")
        _same_device(op, x, b=b)
    for name, v in (("alpha", alpha), ("gain", gain), ("clamp", clamp)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise ValueError(f"{op}: {name} must be a finite number or None, got {v!r}")
    alpha_, gain_, clamp_ = reference.resolve_act(act, alpha, gain, clamp)
    why = _kernel_dtype(op, x=x, b=b)
    if why is None and b is not None and b.dtype != x.dtype:
        b = b.to(x.dtype) if b.dtype in _DTYPES else b
    if _bias_act_kernel.backend(x, backend, unsupported=why) == "reference":
        return reference.bias_act(x, b, dim, act, alpha, gain, clamp)
    return _bias_act_kernel(x, b, act, alpha_, gain_, clamp_, dim)


# --------------------------------------------------------------------------------- upfirdn2d

def _upfirdn2d_fake(x, f, upx, upy, downx, downy, x0, x1, y0, y1, flip_filter, gain):
    OH, OW = reference.upfirdn2d_output_size(x.shape[2], x.shape[3], f, (upx, upy), (downx, downy), (x0, x1, y0, y1))
    return x.new_empty(x.shape[0], x.shape[1], OH, OW)


@define_op("upfirdn2d", family=_FAMILY, tf32="matmul", autocast=_KEEP, fake=_upfirdn2d_fake)
def _upfirdn2d_kernel(x: Tensor, f: Tensor, upx: int, upy: int, downx: int, downy: int, x0: int, x1: int,
                      y0: int, y1: int, flip_filter: bool, gain: float) -> Tensor:
    """Upsample (zero insertion), pad, FIR filter, downsample: one pass, nothing materialised."""
    from fastgen.kernels.stylegan import upfirdn2d_launch
    N, C, H, W = x.shape
    OH, OW = reference.upfirdn2d_output_size(H, W, f, (upx, upy), (downx, downy), (x0, x1, y0, y1))
    y = _backend.empty(N, C, OH, OW, dtype=x.dtype, device=x.device)
    if y.numel():
        upfirdn2d_launch(x, f.to(torch.float32).contiguous(), y, (upx, upy), (downx, downy), (x0, x1, y0, y1),
                         flip_filter, gain)
    return y


def _upfirdn2d_grad_args(x_shape, f, upx, upy, downx, downy, x0, x1, y0, y1, flip_filter, gain):
    p = reference.upfirdn2d_grad_padding(x_shape[2], x_shape[3], f, (upx, upy), (downx, downy), (x0, x1, y0, y1))
    return (downx, downy, upx, upy, *p, not flip_filter, gain)


def _upfirdn2d_backward(grad, saved, args, needs):
    x, f = args[0], args[1]
    dx = _upfirdn2d_kernel(grad, f, *_upfirdn2d_grad_args(x.shape, *args[1:])) if needs[0] else None
    return dx, None


def _upfirdn2d_backward_op(grad: Tensor, x: Tensor, f: Tensor, upx: int, upy: int, downx: int, downy: int, x0: int,
                           x1: int, y0: int, y1: int, flip_filter: bool, gain: float) -> List[Tensor]:
    args = _upfirdn2d_grad_args(x.shape, f, upx, upy, downx, downy, x0, x1, y0, y1, flip_filter, gain)
    return [_upfirdn2d_kernel.kernel(grad, f, *args), torch.zeros_like(f)]


define_autograd(
    _upfirdn2d_kernel, tensor_inputs=2,
    forward=lambda *args: (_upfirdn2d_kernel.kernel(*args), ()),
    backward=_upfirdn2d_backward,
    backward_op=_upfirdn2d_backward_op, differentiable_backward=True,    # the gradient is an upfirdn2d
    backward_fake=lambda grad, x, f, *args: [torch.empty_like(x), torch.empty_like(f)],
)

_IDENTITY = {}


def _identity_filter(device) -> Tensor:
    f = _IDENTITY.get(device)
    if f is None:
        f = _IDENTITY[device] = torch.ones(1, 1, dtype=torch.float32, device=device)
    return f


def _check_filter(op: str, x: Tensor, f: Optional[Tensor], name: str = "f") -> None:
    if f is None:
        return
    _tensor(op, name, f, "[fh, fw] (2-D) or [fw] (separable)", ndim=(1, 2))
    if f.numel() == 0:
        raise ValueError(f"{op}: {name} must not be empty, got shape {tuple(f.shape)}")
    _same_device(op, x, **{name: f})


@_KEEP
def upfirdn2d(x: Tensor, f: Optional[Tensor], up: Union[int, Sequence[int]] = 1, down: Union[int, Sequence[int]] = 1,
              padding: Union[int, Sequence[int]] = 0, flip_filter: bool = False, gain: float = 1,
              backend: Optional[str] = None) -> Tensor:
    """Upsample, pad, FIR-filter and downsample a batch of images, StyleGAN2-ADA's ``upfirdn2d``.

    x: [N, C, H, W]; f: [fh, fw] (non-separable), [fw] (separable: applied along x and along y)
    or None (the identity); up, down: int or (x, y) factors; padding: int, (px, py) or (x0, x1,
    y0, y1) -- StyleGAN2-ADA's order, x (width) first; negative values crop.  Per axis: insert
    up - 1 zeros after every sample, pad, convolve with f (valid positions), keep every down-th
    sample.  Output [N, C, (H up_y + y0 + y1 - fh) // down_y + 1, (W up_x + x0 + x1 - fw) //
    down_x + 1].  The convolution is a true one (f flipped) unless ``flip_filter`` (then a
    correlation); f is multiplied by gain (2-D) or each axis by sqrt(gain) (separable) -- there
    is no implicit up^2: pass gain = up_x up_y to keep a constant's level, as ``upsample2d`` does.
    Returns x's dtype (computed in float32), also under ``torch.autocast``, which leaves it uncast.

    Differentiable in x to every order: the gradient is upfirdn2d itself (up and down swapped,
    the filter flipped, padding (f - 1 - p0, size up - out down + p0 - up + 1) per axis).  No
    gradient flows to f.  Backends: Triton on CUDA (one program per output tile; the upsampled,
    padded image is never materialised), the reference on the CPU and for float64."""
    op = "upfirdn2d"
    _tensor(op, "x", x, "[N, C, H, W]", ndim=(4,))
    _check_filter(op, x, f)
    up_, down_ = parse_scaling(up, "up"), parse_scaling(down, "down")
    pad = parse_padding(padding)
    if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not math.isfinite(gain):
        raise ValueError(f"{op}: gain must be a finite number, got {gain!r}")
    OH, OW = reference.upfirdn2d_output_size(x.shape[2], x.shape[3], f, up_, down_, pad)
    if OH < 1 or OW < 1:
        raise ValueError(f"{op}: the output would be {OH} x {OW} for x {tuple(x.shape)}, f "
                         f"{None if f is None else tuple(f.shape)}, up {up_}, down {down_}, padding {pad}; "
                         "pad more or filter less")
    why = _kernel_dtype(op, x=x)
    if why is None and x.shape[0] * x.shape[1] >= 2 ** 31:
        why = "N * C must be below 2^31"
    if why is None and (x.shape[2] - 1) * abs(x.stride(2)) + (x.shape[3] - 1) * abs(x.stride(3)) >= 2 ** 31:
        why = "one (n, c) plane of x must span fewer than 2^31 elements"
    if why is None:
        from fastgen.kernels.stylegan import upfirdn2d_tiles
        _, _, _, _, th, tw = upfirdn2d_tiles(x.shape[0] * x.shape[1], OH, OW)
        if th * tw > _MAX_GRID_YZ:
            why = f"an output plane of {OH} x {OW} needs more than {_MAX_GRID_YZ} tiles"
    if _upfirdn2d_kernel.backend(x, backend, unsupported=why) == "reference":
        return reference.upfirdn2d(x, f, up_, down_, pad, flip_filter, gain)
    f = _identity_filter(x.device) if f is None else f.detach()
    return _upfirdn2d_kernel(x, f, *up_, *down_, *pad, bool(flip_filter), float(gain))


def upsample2d(x: Tensor, f: Optional[Tensor], up: Union[int, Sequence[int]] = 2,
               padding: Union[int, Sequence[int]] = 0, flip_filter: bool = False, gain: float = 1,
               backend: Optional[str] = None) -> Tensor:
    """Upsample by ``up`` with filter f, output [N, C, H up_y, W up_x] (plus padding):
    upfirdn2d with padding + ((fw + up - 1) // 2, (fw - up) // 2) per axis and gain * up_x * up_y."""
    up_ = parse_scaling(up, "up")
    _check_filter("upsample2d", x, f)
    pad = reference.upsample2d_padding(f, up_, parse_padding(padding))
    return upfirdn2d(x, f, up=up_, padding=pad, flip_filter=flip_filter, gain=gain * up_[0] * up_[1], backend=backend)


def downsample2d(x: Tensor, f: Optional[Tensor], down: Union[int, Sequence[int]] = 2,
                 padding: Union[int, Sequence[int]] = 0, flip_filter: bool = False, gain: float = 1,
                 backend: Optional[str] = None) -> Tensor:
    """Downsample by ``down`` with filter f, output [N, C, H / down_y, W / down_x] (plus padding):
    upfirdn2d with padding + ((fw - down + 1) // 2, (fw - down) // 2) per axis."""
    down_ = parse_scaling(down, "down")
    _check_filter("downsample2d", x, f)
    pad = reference.downsample2d_padding(f, down_, parse_padding(padding))
    return upfirdn2d(x, f, down=down_, padding=pad, flip_filter=flip_filter, gain=gain, backend=backend)


# -------------------------------------------------------------------------- modulated_conv2d

@define_op("stylegan_conv", family=_FAMILY, tf32="conv", autocast=_LOWER,
           fake=lambda x, weight, styles, dcoefs, up, stride, py, px, oh, ow, flip_weight: x.new_empty(
               x.shape[0], weight.shape[0], oh, ow))
def _conv_kernel(x: Tensor, weight: Tensor, styles: Tensor, dcoefs: Optional[Tensor], up: int, stride: int,
                 py: int, px: int, oh: int, ow: int, flip_weight: bool) -> Tensor:
    """Modulated convolution as one implicit GEMM: y = d * conv(x * s, weight), zero insertion / stride."""
    from fastgen.kernels.stylegan import conv_launch
    wt = weight if flip_weight else weight.flip(2, 3)
    wk = wt.permute(2, 3, 1, 0).to(x.dtype).contiguous()                # [KH, KW, CIN, COUT]
    y = _backend.empty(x.shape[0], weight.shape[0], oh, ow, dtype=x.dtype, device=x.device)
    conv_launch(x, wk, styles.float().contiguous(), None if dcoefs is None else dcoefs.float().contiguous(), y,
                None, up, stride, py, px, _conv_kernel.precision(x))
    return y


def _conv_grads(grad, x, weight, styles, dcoefs, y, up, stride, py, px, oh, ow, flip_weight, needs):
    """[dx, dweight, dstyles, ddcoefs] (None where not needed)."""
    from fastgen.kernels.stylegan import conv_launch, wgrad_launch, wgrad_splits, wgrad_tiles
    N, CIN, H, W = x.shape
    COUT, _, KH, KW = weight.shape
    precision = _conv_kernel.precision(x)
    g = grad.to(x.dtype)
    s = styles.float().contiguous()
    d = None if dcoefs is None else dcoefs.float().contiguous()
    dx = ds = dw = dd = None
    if needs[0] or needs[2]:
        wt = weight if flip_weight else weight.flip(2, 3)
        wk = wt.flip(2, 3).permute(2, 3, 0, 1).to(x.dtype).contiguous()   # [KH, KW, COUT, CIN]
        xc = x.contiguous()
        dx = _backend.empty(N, CIN, H, W, dtype=x.dtype, device=x.device)
        ds = conv_launch(g, wk, d, s, dx, xc if needs[2] else None, stride, up, KH - 1 - py, KW - 1 - px, precision)
        if needs[2]:
            ds = ds.to(styles.dtype)
    if needs[1]:
        block_ci, block_co, block_k = wgrad_tiles(CIN, COUT, precision, x.element_size())
        k_total = N * (-(-oh // up)) * (-(-ow // up))
        split, k_per_split = wgrad_splits(CIN, COUT, KH * KW, k_total, block_ci, block_co, block_k)
        part = _backend.empty(split, KH, KW, CIN, COUT, dtype=torch.float32, device=x.device)
        wgrad_launch(x, g, s, d, part, up, stride, py, px, KH, KW, precision, split, k_per_split)
        dw = part.sum(0).permute(3, 2, 0, 1)
        if not flip_weight:
            dw = dw.flip(2, 3)
        dw = dw.to(weight.dtype).contiguous()
    if needs[3] and dcoefs is not None:
        dd = ((g.float() * y.float()).sum((2, 3)) / d).to(dcoefs.dtype)
    return [dx if needs[0] else None, dw, ds if needs[2] else None, dd]


def _conv_forward(x, weight, styles, dcoefs, *args):
    y = _conv_kernel.kernel(x, weight, styles, dcoefs, *args)
    return y, (x, weight, styles, dcoefs, y)


def _conv_backward_op(grad: Tensor, x: Tensor, weight: Tensor, styles: Tensor, dcoefs: Optional[Tensor], up: int,
                      stride: int, py: int, px: int, oh: int, ow: int, flip_weight: bool) -> List[Tensor]:
    y = None
    if dcoefs is not None:
        y = _conv_kernel.kernel(x, weight, styles, dcoefs, up, stride, py, px, oh, ow, flip_weight)
    grads = _conv_grads(grad, x, weight, styles, dcoefs, y, up, stride, py, px, oh, ow, flip_weight,
                        (True, True, True, dcoefs is not None))
    return [g if g is not None else x.new_empty(0) for g in grads]


define_autograd(
    _conv_kernel, tensor_inputs=4, forward=_conv_forward,
    backward=lambda grad, saved, args, needs: _conv_grads(grad, *saved, *args[4:], needs),
    backward_op=_conv_backward_op,
    backward_fake=lambda grad, x, weight, styles, dcoefs, *args: [
        torch.empty_like(x), torch.empty_like(weight), torch.empty_like(styles),
        torch.empty_like(dcoefs) if dcoefs is not None else x.new_empty(0)],
)


@_LOWER
def modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, demodulate: bool = True, up: int = 1, down: int = 1,
                     padding: Union[int, Sequence[int]] = 0, resample_filter: Optional[Tensor] = None,
                     noise: Optional[Tensor] = None, flip_weight: bool = True,
                     backend: Optional[str] = None) -> Tensor:
    """StyleGAN2's modulated convolution (``modulated_conv2d`` of StyleGAN2-ADA's networks):

        w'[n] = weight * styles[n, None, :, None, None];   with demodulate:
        w'[n, o] /= sqrt(sum_{i, kh, kw} w'[n, o, i]^2 + 1e-8);   y[n] = conv2d_resample(x[n], w'[n]) + noise

    x: [N, C_in, H, W]; weight: [C_out, C_in, kh, kw]; styles: [N, C_in]; up, down: int
    factors (1, 2, 4, ...); padding: int, (px, py) or (x0, x1, y0, y1), applied once at the start
    (StyleGAN2 uses kh // 2); resample_filter: the FIR filter of the resampling (2-D [fh, fw] or
    separable [fw], prepared e.g. by ``setup_filter([1, 3, 3, 1])``; None = identity);
    noise: None or a tensor broadcastable to the output (StyleGAN2: [N, 1, H_out, W_out]);
    flip_weight: True = ``F.conv2d``'s correlation, False = a true convolution (StyleGAN2 passes
    ``up == 1``).  Returns [N, C_out, H_out, W_out] in x's dtype; under ``torch.autocast`` x,
    weight and styles are first cast to the autocast dtype (as ``nn.Conv2d`` casts its inputs),
    so the output has that dtype (noise and the filter are used as given).
    conv2d_resample: up > 1 --
    upsample with the filter (gain up^2) then convolve; down > 1 -- convolve then filter and
    downsample; padding grows by the filter's centring ((fw + up - 1) // 2, (fw - up) // 2)
    resp. ((fw - down + 1) // 2, (fw - down) // 2) per axis.

    Computed without per-sample weights: one implicit-GEMM kernel scales the activations by the
    styles as it loads them and the accumulator by the demodulation coefficients d[n, o] (from a
    [N, C_in] x [C_in, C_out] matmul of the squares); upsampling runs the conv as a transposed
    conv (zeros inserted, each output phase using only its taps) followed by the FIR filter,
    downsampling the FIR filter followed by a strided conv -- mathematically the definition
    above.  Differentiable in x, weight, styles and noise (first order).  Backends: Triton on
    CUDA (fp32 with TF32 when ``torch.backends.cudnn.allow_tf32``, like ``nn.Conv2d``; bf16,
    fp16), the reference (grouped convolution) on the CPU and for float64."""
    op = "modulated_conv2d"
    _tensor(op, "x", x, "[N, C_in, H, W]", ndim=(4,))
    _tensor(op, "weight", weight, "[C_out, C_in, kh, kw]", ndim=(4,))
    _tensor(op, "styles", styles, "[N, C_in]", ndim=(2,))
    N, CIN, H, W = x.shape
    if weight.shape[1] != CIN:
        raise ValueError(f"{op}: weight must be [C_out, {CIN}, kh, kw] (C_in of x {tuple(x.shape)}), "
                         f"got {tuple(weight.shape)}")
    if tuple(styles.shape) != (N, CIN):
        raise ValueError(f"{op}: styles must be [{N}, {CIN}] ([N, C_in] of x), got {tuple(styles.shape)}")
    for name, v in (("up", up), ("down", down)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{op}: {name} must be a positive int, got {v!r}")
    _check_filter(op, x, resample_filter, "resample_filter")
    _same_device(op, x, weight=weight, styles=styles, noise=noise)
    if noise is not None:
        _tensor(op, "noise", noise, "broadcastable to the output")
    pad = reference.conv2d_resample_padding(resample_filter, up, down, parse_padding(padding))
    x0, x1, y0, y1 = pad
    COUT, _, KH, KW = weight.shape
    fw, fh = reference.filter_size(resample_filter)
    # sizes along the way (all must be >= 1)
    th, tw = H * up + y0 + y1 - KH + 1, W * up + x0 + x1 - KW + 1        # the conv's output
    if up > 1:
        th, tw = th - fh + 1, tw - fw + 1                                  # after the up filter
    if down > 1:
        th, tw = (th - fh) // down + 1, (tw - fw) // down + 1
    if th < 1 or tw < 1:
        raise ValueError(f"{op}: the output would be {th} x {tw} for x {tuple(x.shape)}, weight "
                         f"{tuple(weight.shape)}, up {up}, down {down} and padding {pad}")
    why = _kernel_dtype(op, x=x, weight=weight, styles=styles)
    if why is None and x.dtype == torch.bfloat16 and x.device.type == "cpu" and _backend.interpreting():
        why = "bfloat16 tl.dot does not run in the Triton interpreter (numpy has no bfloat16); it is tested on the GPU"
    if why is None and max(x[0].numel(), weight.shape[0] * th * tw * up * up * 4) >= 2 ** 31:
        why = "one sample of x and of the output must have fewer than 2^31 elements"
    if why is None and (N * up * up > _MAX_GRID_YZ or -(-COUT // 16) > _MAX_GRID_YZ):
        why = f"N * up^2 must be at most {_MAX_GRID_YZ}"
    if _conv_kernel.backend(x, backend, unsupported=why) == "reference":
        return reference.modulated_conv2d(x, weight, styles, demodulate, up, down, padding, resample_filter, noise,
                                          flip_weight)
    dcoefs = reference.demodulation(weight, styles) if demodulate else None
    if up > 1:
        oh, ow = H * up + y0 + y1 - KH + 1, W * up + x0 + x1 - KW + 1
        y = _conv_kernel(x, weight, styles, dcoefs, up, 1, y0, x0, oh, ow, bool(flip_weight))
        y = upfirdn2d(y, resample_filter, gain=up * up, backend="triton")
        if down > 1:
            y = upfirdn2d(y, resample_filter, down=down, backend="triton")
    elif down > 1:
        z = upfirdn2d(x, resample_filter, padding=pad, backend="triton")
        oh, ow = (z.shape[2] - KH) // down + 1, (z.shape[3] - KW) // down + 1
        y = _conv_kernel(z, weight, styles, dcoefs, 1, down, 0, 0, oh, ow, bool(flip_weight))
    else:
        y = _conv_kernel(x, weight, styles, dcoefs, 1, 1, y0, x0, th, tw, bool(flip_weight))
    if noise is not None:
        y = y + noise.to(y.dtype)
    return y
