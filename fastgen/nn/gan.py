"""Layers of adversarial and energy-based models: spectral normalisation, conditional batch norm
(BigGAN), the projection discriminator head (Miyato & Koyama 2018), and StyleGAN2's layers
(equalized learning rate, modulated convolutions with noise, toRGB, minibatch standard
deviation) over ``fastgen.ops.stylegan``'s ``bias_act`` / ``upfirdn2d`` / ``modulated_conv2d``.

Shape legend: B batch, C channels, H x W image, F features, K classes, w_dim the StyleGAN2
intermediate latent size.
"""
import math
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from fastgen.ops import _validate
from fastgen.ops.stylegan import ACTIVATIONS, bias_act, downsample2d, modulated_conv2d, setup_filter, upfirdn2d

# --------------------------------------------------------------------------------------------
# Spectral normalisation (Miyato et al. 2018)


class SingularEstimate(NamedTuple):
    """The power iteration's result: sigma ~ the largest singular value of W, with u [out] and
    v [in] its left and right singular vectors (unit norm), sigma = u^T W v."""
    sigma: Tensor
    u: Tensor
    v: Tensor


def power_iteration(matrix: Tensor, u: Tensor, iterations: int = 1, eps: float = 1e-12) -> SingularEstimate:
    """Estimate the largest singular value of ``matrix`` [out, in] by power iteration from
    ``u`` [out]: v <- W^T u / |W^T u|, u <- W v / |W v| (``iterations`` times), sigma = u^T W v.

    u and v carry no gradient (they are computed under no_grad, as in Miyato et al. 2018);
    sigma does, through W.  More iterations -> sigma converges to ``torch.linalg.matrix_norm(W, 2)``
    at the rate (sigma_2 / sigma_1)^(2 k).  Computed in the matrix's dtype also under
    ``torch.autocast``, which would otherwise run the products in bf16 and mix dtypes."""
    if matrix.dim() != 2:
        raise ValueError(f"matrix must be 2-D [out, in], got shape {tuple(matrix.shape)}")
    if u.shape != (matrix.shape[0],):
        raise ValueError(f"u must have shape [{matrix.shape[0]}] (the matrix's rows), got {tuple(u.shape)}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    with torch.autocast(matrix.device.type, enabled=False):
        with torch.no_grad():
            w = matrix.detach()
            for _ in range(iterations):
                v = F.normalize(w.t() @ u, dim=0, eps=eps)
                u = F.normalize(w @ v, dim=0, eps=eps)
        return SingularEstimate(torch.dot(u, matrix @ v), u, v)


class SpectralNorm(nn.Module):
    """A parametrization W -> W / sigma(W), sigma the power-iteration estimate of W's largest
    singular value (W reshaped to [out, prod(rest)]).  In training mode each forward runs
    ``iterations`` power iterations and keeps u; in eval mode it reuses the stored u and v.
    sigma is computed in the weight's dtype (float32) under ``torch.autocast`` too: the stored
    u and v stay exact and the layer's own op casts the normalised weight as autocast says.
    Register it with ``spectral_norm(module)``."""

    def __init__(self, weight: Tensor, iterations: int = 1, eps: float = 1e-12) -> None:
        super().__init__()
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        self.iterations, self.eps = iterations, eps
        matrix = weight.detach().flatten(1)
        u = F.normalize(torch.randn(matrix.shape[0], dtype=matrix.dtype, device=matrix.device), dim=0, eps=eps)
        first = power_iteration(matrix, u, 15, eps)            # a good start, as torch's spectral_norm does
        self.register_buffer("u", first.u)
        self.register_buffer("v", first.v)

    def forward(self, weight: Tensor) -> Tensor:
        matrix = weight.flatten(1)
        with torch.autocast(weight.device.type, enabled=False):   # see the class docstring
            if self.training:
                estimate = power_iteration(matrix, self.u, self.iterations, self.eps)
                self.u.copy_(estimate.u)
                self.v.copy_(estimate.v)
            # clones: the buffers change in place at the next training forward, after autograd saved them
            sigma = torch.dot(self.u.clone(), matrix @ self.v.clone())
        return weight / sigma


def spectral_norm(module: nn.Module, name: str = "weight", iterations: int = 1) -> nn.Module:
    """Spectrally normalise ``module.<name>`` in place (``torch.nn.utils.parametrize``); returns
    the module.  The raw weight lives at ``module.parametrizations.<name>.original``."""
    if not isinstance(getattr(module, name, None), Tensor):
        raise ValueError(f"module {type(module).__name__} has no tensor parameter {name!r}")
    parametrize.register_parametrization(module, name, SpectralNorm(getattr(module, name), iterations))
    return module


def _maybe_sn(module: nn.Module, spectral: bool) -> nn.Module:
    return spectral_norm(module) if spectral else module


# --------------------------------------------------------------------------------------------
# Class conditioning


def check_labels(labels: Optional[Tensor], num_classes: Optional[int], batch: int, name: str = "labels") -> None:
    """ValueError/TypeError naming ``name`` unless labels fit: None for an unconditional model,
    else an integer tensor [batch] of class ids in [0, num_classes)."""
    if num_classes is None:
        if labels is not None:
            raise ValueError(f"{name} given but the model is unconditional (num_classes=None)")
        return
    if labels is None:
        raise ValueError(f"the model is class-conditional ({num_classes} classes): pass {name}")
    if not isinstance(labels, Tensor) or labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an int64 tensor of class ids, got "
                        f"{labels.dtype if isinstance(labels, Tensor) else type(labels).__name__}")
    if labels.shape != (batch,):
        raise ValueError(f"{name} must have shape [{batch}], got {tuple(labels.shape)}")
    _validate.ids_in_range(name, labels, num_classes)


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose affine gain and bias depend on the class (BigGAN; de Vries et al. 2017):
    y = (1 + gamma[label]) * BN(x) + beta[label], x [B, C, H, W], labels [B].  With
    ``num_classes=None`` it is an ordinary ``BatchNorm2d`` (``labels`` must then be None)."""

    def __init__(self, channels: int, num_classes: Optional[int] = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.norm = nn.BatchNorm2d(channels, affine=num_classes is None)
        if num_classes is not None:
            self.gamma = nn.Embedding(num_classes, channels)
            self.beta = nn.Embedding(num_classes, channels)
            nn.init.zeros_(self.gamma.weight)
            nn.init.zeros_(self.beta.weight)

    def forward(self, x: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        h = self.norm(x)
        if self.num_classes is None:
            return h
        return h * (1 + self.gamma(labels))[:, :, None, None] + self.beta(labels)[:, :, None, None]


class ProjectionHead(nn.Module):
    """The discriminator's output from pooled features h [B, F]: d = w^T h + b, plus, with
    classes, the projection term <embed(label), h> (Miyato & Koyama 2018) -> [B] logits.
    ``spectral``: spectral normalisation on both (SNGAN)."""

    def __init__(self, features: int, num_classes: Optional[int] = None, spectral: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.linear = _maybe_sn(nn.Linear(features, 1), spectral)
        self.embed = _maybe_sn(nn.Embedding(num_classes, features), spectral) if num_classes is not None else None

    def forward(self, h: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        out = self.linear(h).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(labels) * h).sum(1)
        return out


# --------------------------------------------------------------------------------------------
# StyleGAN2's layers (Karras et al. 2020) over fastgen.ops


def resample_filter(taps: Sequence[float] = (1, 3, 3, 1)) -> Tensor:
    """StyleGAN2's FIR resampling filter: the outer product of ``taps`` normalised to sum 1 -> [k, k]
    (``fastgen.ops.stylegan.setup_filter``)."""
    return setup_filter(list(taps))


class EqualizedLinear(nn.Module):
    """y = bias_act(x (g W)^T, lr b, act) with runtime weight gain g = lr / sqrt(in) (equalized
    learning rate, Karras et al. 2018): x [B, in] -> [B, out].  W is stored as N(0, 1) / lr, so
    ``lr_multiplier`` scales the effective learning rate (0.01 in the mapping network)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0) -> None:
        super().__init__()
        self.activation, self.lr_multiplier = activation, lr_multiplier
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)

    def forward(self, x: Tensor) -> Tensor:
        b = self.bias * self.lr_multiplier if self.bias is not None else None
        return bias_act(x @ (self.weight * self.weight_gain).t(), b, act=self.activation)


class EqualizedConv2d(nn.Module):
    """bias_act(conv(x, g W), b, act, clamp) with equalized learning rate g = 1 / sqrt(in k^2),
    x [B, in, H, W] -> [B, out, H / down, W / down]; ``down`` = 2 low-pass filters with ``f``
    (``upfirdn2d``) then convolves with stride 2, as StyleGAN2's discriminator does."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True,
                 activation: str = "linear", down: int = 1, clamp: Optional[float] = None) -> None:
        super().__init__()
        if down not in (1, 2):
            raise ValueError(f"down must be 1 or 2, got {down}")
        self.activation, self.down, self.clamp, self.kernel = activation, down, clamp, kernel
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel * kernel)
        self.register_buffer("resample_filter", resample_filter())

    def forward(self, x: Tensor, gain: float = 1.0) -> Tensor:
        w = self.weight * self.weight_gain
        k, f = self.kernel, self.resample_filter
        if self.down == 1:
            x = F.conv2d(x, w, padding=k // 2)
        elif k == 1:
            x = F.conv2d(downsample2d(x, f), w)
        else:     # low-pass, padded so that the stride-2 conv lands on the same centres -> [H / 2, W / 2]
            p0, p1 = k // 2 + (f.shape[-1] - 1) // 2, k // 2 + (f.shape[-1] - 2) // 2
            x = F.conv2d(upfirdn2d(x, f, padding=[p0, p1, p0, p1]), w, stride=2)
        act_gain = None if gain == 1 else gain * ACTIVATIONS[self.activation].def_gain
        clamp = self.clamp * gain if self.clamp is not None else None
        return bias_act(x, self.bias, act=self.activation, gain=act_gain, clamp=clamp)


class StyleConv(nn.Module):
    """StyleGAN2's synthesis layer: styles s = A(w) [B, in] (an ``EqualizedLinear`` with bias 1),
    x' = modulated_conv2d(x, W, s, demodulate, up) + strength * noise, then
    bias_act(x', b, 'lrelu', clamp): x [B, in, H, W], w [B, w_dim] -> [B, out, up H, up W].
    noise_mode: 'random' (fresh N(0, 1) [B, 1, H', W'] per call), 'const' (a fixed buffer),
    'none'."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel: int = 3,
                 up: int = 1, clamp: Optional[float] = None) -> None:
        super().__init__()
        self.up, self.kernel, self.clamp, self.resolution = up, kernel, clamp, resolution
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.register_buffer("resample_filter", resample_filter())

    def forward(self, x: Tensor, w: Tensor, noise_mode: str = "random") -> Tensor:
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        styles = self.affine(w)
        noise = None
        if noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device,
                                dtype=x.dtype) * self.noise_strength
        elif noise_mode == "const":
            noise = (self.noise_const * self.noise_strength).expand(x.shape[0], 1, -1, -1)
        x = modulated_conv2d(x, self.weight, styles, demodulate=True, up=self.up, padding=self.kernel // 2,
                                 resample_filter=self.resample_filter, noise=noise, flip_weight=self.up == 1)
        return bias_act(x, self.bias, act="lrelu", clamp=self.clamp)


class ToRGB(nn.Module):
    """StyleGAN2's output layer: a 1x1 modulated conv without demodulation (styles scaled by
    1 / sqrt(in)) plus bias: x [B, in, H, W], w [B, w_dim] -> [B, out, H, W]."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, clamp: Optional[float] = None) -> None:
        super().__init__()
        self.clamp = clamp
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias, clamp=self.clamp)


class MinibatchStd(nn.Module):
    """Append the across-group standard deviation as extra channels (Karras et al. 2018):
    x [B, C, H, W] -> [B, C + num_channels, H, W]; sample b is in group b mod (B / G) of G samples,
    G the largest divisor of B up to ``group_size``; the std over each group, averaged over
    channels (in ``num_channels`` slices) and pixels, is appended to its members."""

    def __init__(self, group_size: int = 4, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        G = max(g for g in range(1, min(self.group_size, B) + 1) if B % g == 0)
        n = self.num_channels
        y = x.reshape(G, -1, n, C // n, H, W)
        y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt()         # [B/G, n, C/n, H, W]
        y = y.mean([2, 3, 4]).reshape(-1, n, 1, 1).repeat(G, 1, H, W)  # [B, n, H, W]
        return torch.cat([x, y], 1)
