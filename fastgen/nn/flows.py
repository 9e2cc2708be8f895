"""Normalizing-flow layers: invertible maps with a per-sample log-determinant.

Every layer maps x to y and has

- ``forward(x, cond=None) -> FlowOutput(out, logdet)``: out = y (shape and dtype of x),
  logdet ``[B]`` float32 = log |det dy/dx| per sample;
- ``inverse(y, cond=None) -> x`` (a Tensor).

Shapes: images ``[B, C, H, W]``; vectors ``[B, D]`` (D plays the role of C) where a layer
says so.  ``cond`` is ignored by layers without a conditioner (ActNorm, InvConv1x1, Squeeze),
so any layer can sit in a ``FlowSequential`` that passes one ``cond`` to all.

- ``AffineCoupling`` / ``AdditiveCoupling``: the coupling layers of RealNVP/Glow and NICE
  (Dinh et al. 2015, 2017; Kingma & Dhariwal 2018), the transform and its log-det fused in
  ``fastgen.ops.affine_coupling``.
- ``ActNorm``: Glow's per-channel affine with data-dependent initialisation.
- ``InvConv1x1``: Glow's invertible 1x1 convolution, LU-parametrised.
- ``Squeeze``: RealNVP's 2x2 space-to-depth.
- ``FlowSequential``: a chain of flow layers, log-dets summed.
"""
import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgen.ops.flow_coupling import FlowOutput, affine_coupling
from fastgen.ops.flow_coupling.reference import checkerboard_mask

__all__ = ["ActNorm", "AdditiveCoupling", "AffineCoupling", "FlowOutput", "FlowSequential", "InvConv1x1",
           "Squeeze"]


def _check_tensor(layer: str, name: str, x, channels: Optional[int] = None, dims=None) -> None:
    """TypeError/ValueError naming ``name`` unless x is a floating tensor of rank in ``dims``
    (None: any rank >= 2) with ``channels`` channels on dim 1."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{layer}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{layer}: {name} must be floating point, got {x.dtype}")
    if (x.dim() < 2) if dims is None else (x.dim() not in dims):
        want = "[B, C, *spatial]" if dims is None else \
            " or ".join({2: "[B, D]", 3: "[B, C, L]", 4: "[B, C, H, W]"}[d] for d in dims)
        raise ValueError(f"{layer}: {name} must be {want}, got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{layer}: {name} must have {channels} channels on dim 1 (this layer's "
                         f"channels), got shape {tuple(x.shape)}")


def _positions(x: Tensor) -> int:
    return math.prod(x.shape[2:])


def _channel_view(v: Tensor, x: Tensor) -> Tensor:
    """A per-channel vector [C] viewed to broadcast against x [B, C, *spatial]."""
    return v.view(1, -1, *([1] * (x.dim() - 2)))


def _constant_logdet(total: Tensor, batch: int) -> Tensor:
    """A data-independent log-det (a 0-d tensor) as [B] float32."""
    return total.float().expand(batch)


class FlowSequential(nn.Sequential):
    """A chain of flow layers.  forward(x, cond=None) -> FlowOutput(out, logdet = the sum of
    the layers' log-dets, [B] float32); inverse(y, cond=None) runs the inverses in reverse
    order.  ``cond`` goes to every layer."""

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> FlowOutput:
        logdet = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        for layer in self:
            x, ld = layer(x, cond)
            logdet = logdet + ld
        return FlowOutput(x, logdet)

    def inverse(self, y: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        for layer in reversed(self):
            y = layer.inverse(y, cond)
        return y


# ----------------------------------------------------------------------------------------------
# Coupling layers
# ----------------------------------------------------------------------------------------------

def _zero_init(layer: nn.Module) -> nn.Module:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def glow_conditioner(in_channels: int, out_channels: int, hidden: int) -> nn.Sequential:
    """Glow's coupling network on images: conv3x3 -> ReLU -> conv1x1 -> ReLU -> conv3x3 whose
    weights start at zero (so the coupling starts as a fixed, near-identity map).
    [B, in_channels, H, W] -> [B, out_channels, H, W]."""
    return nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
                         _zero_init(nn.Conv2d(hidden, out_channels, 3, padding=1)))


def mlp_conditioner(in_features: int, out_features: int, hidden: int, depth: int = 2) -> nn.Sequential:
    """The coupling network on vectors: ``depth`` hidden ReLU layers of width ``hidden``, then a
    linear output layer that starts at zero.  [B, in_features] -> [B, out_features]."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1 hidden layers, got {depth!r}")
    layers = [nn.Linear(in_features, hidden), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(hidden, hidden), nn.ReLU()]
    layers.append(_zero_init(nn.Linear(hidden, out_features)))
    return nn.Sequential(*layers)


class AffineCoupling(nn.Module):
    """Affine coupling layer (RealNVP, Dinh et al. 2017; Glow, Kingma & Dhariwal 2018).

    The input is split into a conditioning part x_a, passed through unchanged, and a part x_b
    that is transformed as y_b = f(s) * x_b + t with [s; t] = NN(x_a [, cond]), so
    logdet = sum log f(s).  f: ``scale='sigmoid'`` sigmoid(s + 2) (Glow), ``'exp_tanh'``
    exp(tanh s) (RealNVP's exp(s) with s bounded).  The transform and its log-det run fused in
    ``fastgen.ops.affine_coupling``.

    ``mask='channel'``: x [B, C, H, W] (or vectors [B, C] with ``conditioner='mlp'``) is split
    at channel k = C // 2: ``parity=0`` conditions on x[:, :k] and transforms x[:, k:];
    ``parity=1`` the other way round (odd C: the halves are C//2 and C - C//2).  Needs C >= 2.
    ``mask='checkerboard'`` (images only): positions (i, j) with (i + j) % 2 == parity pass
    through; the conditioner sees x with the other positions zeroed and all C channels are
    transformed at the other positions.

    ``conditioner``: 'conv' (images; Glow's net, see ``glow_conditioner``, ``hidden`` channels),
    'mlp' (vectors [B, C]; ``mlp_conditioner`` with ``depth`` hidden layers of ``hidden``
    units), or an ``nn.Module`` mapping x_a (with cond concatenated on dim 1 when
    ``cond_channels`` > 0) to h = [s; t] stacked on dim 1.  The built-in networks start at
    zero output: 'exp_tanh' then starts as the identity, 'sigmoid' as y_b = sigmoid(2) x_b.

    ``cond_channels`` > 0: ``cond`` is required, [B, cond_channels] (broadcast over the
    positions of an image) or [B, cond_channels, H, W]; it is concatenated to the
    conditioner's input.
    """

    _scales = ("sigmoid", "exp_tanh")

    def __init__(self, channels: int, hidden: int = 512, mask: str = "channel", parity: int = 0,
                 scale: str = "sigmoid", cond_channels: int = 0,
                 conditioner: Union[str, nn.Module] = "conv", depth: int = 2) -> None:
        super().__init__()
        name = type(self).__name__
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise ValueError(f"{name}: channels must be a positive int, got {channels!r}")
        if not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"{name}: hidden must be a positive int, got {hidden!r}")
        if mask not in ("channel", "checkerboard"):
            raise ValueError(f"{name}: mask must be 'channel' or 'checkerboard', got {mask!r}")
        if parity not in (0, 1) or isinstance(parity, bool):
            raise ValueError(f"{name}: parity must be 0 or 1, got {parity!r}")
        if scale not in self._scales:
            raise ValueError(f"{name}: scale must be one of {self._scales}, got {scale!r}")
        if not isinstance(cond_channels, int) or cond_channels < 0:
            raise ValueError(f"{name}: cond_channels must be an int >= 0, got {cond_channels!r}")
        if mask == "channel" and channels < 2:
            raise ValueError(f"{name}: a channel mask splits the channels in two, so channels must be "
                             f">= 2, got {channels} (use mask='checkerboard', or squeeze first)")
        if isinstance(conditioner, str) and conditioner not in ("conv", "mlp"):
            raise ValueError(f"{name}: conditioner must be 'conv', 'mlp' or an nn.Module, got {conditioner!r}")
        if mask == "checkerboard" and conditioner == "mlp":
            raise ValueError(f"{name}: mask='checkerboard' needs images; use conditioner='conv' (or a module)")
        self.channels, self.mask, self.parity, self.scale = channels, mask, parity, scale
        self.cond_channels = cond_channels
        split = channels // 2
        if mask == "channel":
            self.transformed = channels - split if parity == 0 else split
        else:
            self.transformed = channels
        conditioning = channels - self.transformed if mask == "channel" else channels
        out = self.transformed * (1 if scale == "additive" else 2)
        if isinstance(conditioner, nn.Module):
            self.kind = "module"
            self.net = conditioner
        elif conditioner == "conv":
            self.kind = "conv"
            self.net = glow_conditioner(conditioning + cond_channels, out, hidden)
        else:
            self.kind = "mlp"
            self.net = mlp_conditioner(conditioning + cond_channels, out, hidden, depth)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, mask={self.mask!r}, parity={self.parity}, scale={self.scale!r}"
                + (f", cond_channels={self.cond_channels}" if self.cond_channels else ""))

    def _check(self, x: Tensor, cond: Optional[Tensor], name: str) -> None:
        layer = type(self).__name__
        dims = {"conv": (4,), "mlp": (2,), "module": (2, 3, 4)}[self.kind]
        if self.mask == "checkerboard":
            dims = (4,)
        _check_tensor(layer, name, x, self.channels, dims)
        if self.cond_channels == 0:
            if cond is not None:
                raise ValueError(f"{layer}: this layer has cond_channels=0, so cond must be None")
            return
        if cond is None:
            raise ValueError(f"{layer}: cond_channels={self.cond_channels}: pass cond "
                             f"[B, {self.cond_channels}]" + (" or [B, C, H, W]" if x.dim() == 4 else ""))
        ok_vec = cond.dim() == 2 and tuple(cond.shape) == (x.shape[0], self.cond_channels)
        ok_map = cond.dim() == x.dim() and x.dim() > 2 and \
            tuple(cond.shape) == (x.shape[0], self.cond_channels, *x.shape[2:])
        if not (ok_vec or ok_map):
            want = f"[{x.shape[0]}, {self.cond_channels}]"
            if x.dim() > 2:
                want += f" or [{x.shape[0]}, {self.cond_channels}, {', '.join(map(str, x.shape[2:]))}]"
            raise ValueError(f"{layer}: cond must be {want}, got {tuple(cond.shape)}")

    def _parts(self, x: Tensor):
        """(conditioner input, the part to transform) of x."""
        if self.mask == "checkerboard":
            keep = checkerboard_mask(x.shape[2:], self.parity, x.device)
            return x * keep.to(x.dtype), x
        split = self.channels // 2
        if self.parity == 0:
            return x[:, :split], x[:, split:]
        return x[:, split:], x[:, :split]

    def _join(self, x_a: Tensor, y_b: Tensor) -> Tensor:
        if self.mask == "checkerboard":
            return y_b
        return torch.cat([x_a, y_b] if self.parity == 0 else [y_b, x_a], 1)

    def _h(self, x_a: Tensor, cond: Optional[Tensor]) -> Tensor:
        if cond is not None:
            if cond.dim() == 2 and x_a.dim() > 2:
                cond = cond.view(*cond.shape, *([1] * (x_a.dim() - 2))).expand(-1, -1, *x_a.shape[2:])
            x_a = torch.cat([x_a, cond.to(x_a.dtype)], 1)
        return self.net(x_a)

    def _couple(self, x: Tensor, cond: Optional[Tensor], inverse: bool) -> FlowOutput:
        x_in, x_b = self._parts(x)
        h = self._h(x_in, cond)
        checker = self.parity if self.mask == "checkerboard" else None
        y_b, logdet = affine_coupling(x_b, h, self.scale, checker, inverse)
        if self.mask == "channel":
            return FlowOutput(self._join(x_in, y_b), logdet)
        return FlowOutput(y_b, logdet)

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> FlowOutput:
        """x [B, C, H, W] (or [B, C]) -> FlowOutput(y like x, logdet [B] float32)."""
        self._check(x, cond, "x")
        return self._couple(x, cond, inverse=False)

    def inverse(self, y: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """y -> x with forward(x).out == y."""
        self._check(y, cond, "y")
        return self._couple(y, cond, inverse=True).out


class AdditiveCoupling(AffineCoupling):
    """Additive coupling layer (NICE, Dinh et al. 2015): y_b = x_b + t(x_a [, cond]), log-det 0.

    Same masks, conditioners and ``cond`` as ``AffineCoupling``; the conditioner outputs t only
    ([B, C_b, ...]).  For NICE's vectors [B, D] use ``conditioner='mlp'`` (NICE used ``depth=5``
    hidden layers of ``hidden=1000`` units on MNIST)."""

    _scales = ("additive",)

    def __init__(self, channels: int, hidden: int = 512, mask: str = "channel", parity: int = 0,
                 cond_channels: int = 0, conditioner: Union[str, nn.Module] = "conv", depth: int = 2) -> None:
        super().__init__(channels, hidden, mask, parity, "additive", cond_channels, conditioner, depth)


# ----------------------------------------------------------------------------------------------
# ActNorm, invertible 1x1 convolution, squeeze
# ----------------------------------------------------------------------------------------------

class ActNorm(nn.Module):
    """Glow's activation normalisation: y = (x + bias) * exp(log_scale) per channel.

    x: [B, C, *spatial] (images [B, C, H, W]) or vectors [B, C].  logdet = positions *
    sum(log_scale) (positions = H*W, 1 for vectors), [B] float32.

    Data-dependent initialisation (Kingma & Dhariwal 2018): the first ``forward`` sets bias =
    -mean and log_scale = -log(std) per channel over the batch and positions, so that batch
    comes out with zero mean and unit variance per channel.  A channel whose std is below
    ``eps`` cannot be normalised: that initialisation raises a ValueError naming the channels
    (for vectors, a batch of one has zero variance everywhere: initialise on a real batch).
    ``initialized`` is a buffer, so a loaded state dict is not re-initialised.  ``inverse``
    never initialises (before any forward the layer is the identity).
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise ValueError(f"ActNorm: channels must be a positive int, got {channels!r}")
        self.channels, self.eps = channels, eps
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))
        self._initialized_on_host = False   # a mirror of the buffer once it is True: reading a
        #                                     CUDA buffer every forward would sync the host

    def extra_repr(self) -> str:
        return f"channels={self.channels}"

    def needs_initialization(self) -> bool:
        """True until the data-dependent initialisation has run (reads the buffer only until then)."""
        if not self._initialized_on_host:
            self._initialized_on_host = bool(self.initialized)
        return not self._initialized_on_host

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._initialized_on_host = False            # the loaded buffer decides again

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set bias and log_scale from the batch x (zero mean, unit variance per channel)."""
        _check_tensor("ActNorm", "x", x, self.channels)
        flat = x.detach().transpose(0, 1).reshape(self.channels, -1).double()
        if flat.shape[1] < 2:
            raise ValueError(f"ActNorm: data-dependent initialisation needs more than one value per channel; "
                             f"got x of shape {tuple(x.shape)} (initialise on a batch of several samples)")
        if not torch.isfinite(flat).all():
            raise ValueError("ActNorm: x holds non-finite values; cannot initialise from it")
        mean, std = flat.mean(1), flat.std(1, unbiased=False)
        bad = (std < self.eps).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"ActNorm: data-dependent initialisation found channel(s) {bad[:10]} constant over "
                             f"the batch (std < eps = {self.eps}): their scale would be infinite; initialise on a "
                             f"batch with variance in every channel (e.g. dequantised images)")
        self.bias.copy_(-mean)
        self.log_scale.copy_(-std.log())
        self.initialized.fill_(True)
        self._initialized_on_host = True

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> FlowOutput:
        """x [B, C, *spatial] -> FlowOutput(y like x, logdet [B] float32)."""
        _check_tensor("ActNorm", "x", x, self.channels)
        if self.needs_initialization():
            self.initialize(x)
        y = (x + _channel_view(self.bias, x)) * _channel_view(self.log_scale.exp(), x)
        return FlowOutput(y, _constant_logdet(self.log_scale.float().sum() * _positions(x), x.shape[0]))

    def inverse(self, y: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        _check_tensor("ActNorm", "y", y, self.channels)
        return y * _channel_view((-self.log_scale).exp(), y) - _channel_view(self.bias, y)


class InvConv1x1(nn.Module):
    """Glow's invertible 1x1 convolution with an LU-parametrised weight.

    W = P L (U + diag(sign_s * exp(log_s))): P a fixed permutation, L unit lower triangular, U
    strictly upper triangular, so log |det W| = sum(log_s) and W is invertible for any values
    of the parameters.  Initialised from a random rotation (QR of a Gaussian matrix; drawn
    from the global RNG or ``generator``).

    x: [B, C, H, W] (or [B, C, *spatial], vectors [B, C]) -> y = W x per position;
    logdet = positions * sum(log_s), [B] float32; inverse: x = W^-1 y (W^-1 from triangular
    solves)."""

    def __init__(self, channels: int, generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise ValueError(f"InvConv1x1: channels must be a positive int, got {channels!r}")
        self.channels = channels
        q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        s = upper.diagonal()
        self.register_buffer("perm", p.float())
        self.register_buffer("sign_s", s.sign().float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower.float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(s.abs().log().float())

    def extra_repr(self) -> str:
        return f"channels={self.channels}"

    def _factors(self):
        eye = torch.eye(self.channels, dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * self.log_s.exp())
        return lower, upper

    def weight(self) -> Tensor:
        """W [C, C] (y = W x)."""
        lower, upper = self._factors()
        return self.perm @ lower @ upper

    def inverse_weight(self) -> Tensor:
        """W^-1 [C, C] = U^-1 L^-1 P^T."""
        lower, upper = self._factors()
        eye = torch.eye(self.channels, dtype=lower.dtype, device=lower.device)
        l_inv = torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True)
        u_inv = torch.linalg.solve_triangular(upper, eye, upper=True)
        return u_inv @ l_inv @ self.perm.T

    @staticmethod
    def _mix(w: Tensor, x: Tensor) -> Tensor:
        w = w.to(x.dtype)
        if x.dim() == 2:
            return F.linear(x, w)
        if x.dim() == 4:
            return F.conv2d(x, w[:, :, None, None])
        return torch.einsum("oc,bc...->bo...", w, x)

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> FlowOutput:
        """x [B, C, *spatial] -> FlowOutput(W x, logdet [B] float32)."""
        _check_tensor("InvConv1x1", "x", x, self.channels)
        logdet = _constant_logdet(self.log_s.float().sum() * _positions(x), x.shape[0])
        return FlowOutput(self._mix(self.weight(), x), logdet)

    def inverse(self, y: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        _check_tensor("InvConv1x1", "y", y, self.channels)
        return self._mix(self.inverse_weight(), y)


class Squeeze(nn.Module):
    """RealNVP's squeeze: each 2x2 block of an image becomes 4 channels.

    x [B, C, H, W] -> [B, 4C, H/2, W/2] with out[:, 4c + 2di + dj, i, j] = x[:, c, 2i + di, 2j + dj]
    (``F.pixel_unshuffle``); logdet 0 (a permutation); inverse = ``F.pixel_shuffle``.  H and W
    must be even."""

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> FlowOutput:
        _check_tensor("Squeeze", "x", x, dims=(4,))
        if x.shape[2] % 2 or x.shape[3] % 2:
            raise ValueError(f"Squeeze: x's height and width must be even, got shape {tuple(x.shape)}")
        return FlowOutput(F.pixel_unshuffle(x, 2), x.new_zeros(x.shape[0], dtype=torch.float32))

    def inverse(self, y: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        _check_tensor("Squeeze", "y", y, dims=(4,))
        if y.shape[1] % 4:
            raise ValueError(f"Squeeze: y's channels must be a multiple of 4 to unsqueeze, got shape {tuple(y.shape)}")
        return F.pixel_shuffle(y, 2)
