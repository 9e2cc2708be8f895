"""Normalizing-flow models: NICE (Dinh et al. 2015), RealNVP (Dinh et al. 2017) and Glow
(Kingma & Dhariwal 2018), built from the layers in ``fastgen.nn.flows``.

Data convention (all three).  A model's data space is continuous x in [-0.5, 0.5): an integer
image k in {0, ..., L-1} (``pixel_levels`` = L values per sub-pixel, as ``fastgen.data``
returns them: ``load_digits`` gives L = 17) is *dequantised* to x = (k + u) / L - 0.5 with
u ~ U[0, 1)^D (``dequantize``); ``quantize`` maps back (k = floor((x + 0.5) L), clamped).

- ``log_prob(x, y=None)`` -> [B]: log-density of continuous x in nats.
- ``bits_per_dim(images, y=None, generator=None)`` -> [B]: (-log p(x) + D log L) / (D log 2)
  with x = dequantize(images), D = values per image.  Since sum_k P(k) <= 1 implies
  E_u[-log(p(x)/L^D)] >= -log P(k), this is an upper bound on the discrete negative
  log-likelihood of the integer images, in the same units as ``GatedPixelCNN.loss`` and the
  independent per-pixel baseline of ``fastgen demo`` (bits per sub-pixel over L levels); it is
  one Monte-Carlo draw of the dequantisation noise.
- ``loss(images, y=None, generator=None)``: the batch mean of ``bits_per_dim`` (train on it).
- ``sample(n, temperature=1.0, y=None, generator=None)`` -> [n, *shape] continuous x in the data
  space (``quantize`` for integer images).  The latents are drawn as mean + temperature *
  std * noise, so temperature 0 gives the image of the prior's mean.
- ``forward(x, y=None)`` to the latents and ``inverse(latents, y=None)`` back.
"""
import math
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgen.nn.flows import ActNorm, AdditiveCoupling, AffineCoupling, FlowOutput, FlowSequential, InvConv1x1, Squeeze
from fastgen.nn.density_flows import standard_normal_log_prob
from fastgen.nn.invertible_backprop import invertible_backprop
from fastgen.nn.latent import gaussian_log_prob
from fastgen.ops import _validate

__all__ = ["NICE", "FlowLatents", "Glow", "RealNVP", "dequantize", "quantize"]



class FlowLatents(NamedTuple):
    """A multi-scale flow's latents: ``latents[i]`` is the half factored out after scale i
    ([B, C_i, H_i, W_i], finest first) and ``latents[-1]`` the top latent; ``logdet`` [B] float32
    is log |det d(latents)/dx| of the whole map."""
    latents: List[Tensor]
    logdet: Tensor


def dequantize(images: Tensor, levels: int, generator: Optional[torch.Generator] = None,
               dtype: torch.dtype = torch.float32) -> Tensor:
    """Integer images in [0, levels) -> x = (images + u) / levels - 0.5, u ~ U[0, 1) (``dtype``)."""
    u = torch.rand(images.shape, generator=generator, device=images.device, dtype=dtype)
    return (images.to(dtype) + u) / levels - 0.5


def quantize(x: Tensor, levels: int) -> Tensor:
    """Continuous x in [-0.5, 0.5) -> long images floor((x + 0.5) * levels), clamped to [0, levels)."""
    return ((x + 0.5) * levels).floor().clamp(0, levels - 1).long()


def _zero_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class _FlowModel(nn.Module):
    """What the models share: the data convention (module docstring), checks, bits/dim."""

    def _setup_data(self, shape: Tuple[int, ...], pixel_levels: int, num_classes: Optional[int]) -> None:
        name = type(self).__name__
        if not isinstance(pixel_levels, int) or pixel_levels < 2:
            raise ValueError(f"{name}: pixel_levels must be an int >= 2, got {pixel_levels!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"{name}: num_classes must be None or a positive int, got {num_classes!r}")
        self.shape = tuple(shape)
        self.dim = math.prod(self.shape)
        self.pixel_levels = pixel_levels
        self.num_classes = num_classes

    @property
    def _like(self) -> Tensor:
        return next(self.parameters())

    def check_x(self, x: Tensor, name: str = "x") -> None:
        """TypeError/ValueError unless x is floating point [B, *shape]."""
        model = type(self).__name__
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"{model}: {name} must be a floating-point tensor (continuous data in [-0.5, 0.5); "
                            f"use bits_per_dim for integer images), got {getattr(x, 'dtype', type(x))}")
        if x.dim() != len(self.shape) + 1 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"{model}: {name} must have shape [B, {', '.join(map(str, self.shape))}], "
                             f"got {tuple(x.shape)}")

    def check_images(self, images: Tensor) -> None:
        """TypeError/ValueError unless images are integers [B, *shape] in [0, pixel_levels)."""
        model = type(self).__name__
        if not isinstance(images, Tensor) or images.is_floating_point() or images.is_complex() \
                or images.dtype == torch.bool:
            raise TypeError(f"{model}: images must be an integer tensor with values in [0, {self.pixel_levels}), "
                            f"got {getattr(images, 'dtype', type(images))}")
        if images.dim() != len(self.shape) + 1 or tuple(images.shape[1:]) != self.shape:
            raise ValueError(f"{model}: images must have shape [B, {', '.join(map(str, self.shape))}], "
                             f"got {tuple(images.shape)}")
        _validate.ids_in_range(f"{model}: images", images, self.pixel_levels, f" (pixel_levels={self.pixel_levels})")

    def check_y(self, y: Optional[Tensor], batch: int) -> None:
        model = type(self).__name__
        if self.num_classes is None:
            if y is not None:
                raise ValueError(f"{model}: this model is unconditional (num_classes=None); y must be None")
            return
        if y is None:
            raise ValueError(f"{model}: this model is class-conditional (num_classes={self.num_classes}); "
                             f"pass y, long class ids [B]")
        if not isinstance(y, Tensor) or y.dtype != torch.long or y.dim() != 1 or y.shape[0] != batch:
            raise ValueError(f"{model}: y must be long class ids of shape [{batch}], "
                             f"got {getattr(y, 'dtype', type(y))} {tuple(getattr(y, 'shape', ()))}")
        _validate.ids_in_range(f"{model}: y", y, self.num_classes)

    def _sample_args(self, n: int, temperature: float, y) -> Optional[Tensor]:
        model = type(self).__name__
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"{model}: n must be a positive int, got {n!r}")
        if not isinstance(temperature, (int, float)) or not temperature >= 0 or math.isinf(temperature):
            raise ValueError(f"{model}: temperature must be a finite number >= 0, got {temperature!r}")
        if isinstance(y, int) and not isinstance(y, bool):
            y = torch.full((n,), y, dtype=torch.long, device=self._like.device)
        self.check_y(y, n)
        return y

    def dequantize(self, images: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Integer images [B, *shape] -> continuous x (module docstring), the model's dtype."""
        self.check_images(images)
        return dequantize(images, self.pixel_levels, generator, self._like.dtype)

    def quantize(self, x: Tensor) -> Tensor:
        """Continuous x -> long images in [0, pixel_levels)."""
        return quantize(x, self.pixel_levels)

    def log_prob(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def bits_per_dim(self, images: Tensor, y: Optional[Tensor] = None,
                     generator: Optional[torch.Generator] = None) -> Tensor:
        """Integer images [B, *shape] -> [B] bits per dimension under uniform dequantisation
        (module docstring: an upper bound on the discrete NLL, comparable with PixelCNN's)."""
        x = self.dequantize(images, generator)
        log_p = self.log_prob(x, y)
        return (-log_p + self.dim * math.log(self.pixel_levels)) / (self.dim * math.log(2))

    def loss(self, images: Tensor, y: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> Tensor:
        """The batch mean of ``bits_per_dim`` (a scalar to minimise)."""
        return self.bits_per_dim(images, y, generator).mean()


# ----------------------------------------------------------------------------------------------
# NICE
# ----------------------------------------------------------------------------------------------

class NICE(_FlowModel):
    """NICE (Dinh, Krueger & Bengio 2015): additive couplings on vectors, then a diagonal scaling.

    ``shape``: an int D (vectors [B, D]) or an image shape (C, H, W) (images are flattened to
    D = C*H*W).  The D values are first interleaved (even indices, then odd: NICE's odd/even
    partition), then ``layers`` additive couplings alternate which half they transform, each with
    an MLP of ``depth`` hidden ReLU layers of ``hidden`` units (the paper's MNIST model: 4 layers,
    5 x 1000), then z = exp(log_scale) * h (log-det sum(log_scale)).  Prior: 'logistic'
    (the paper's; log p(z) = -sum softplus(z) + softplus(-z)) or 'gaussian' (standard normal).

    forward(x) -> FlowOutput(z [B, D], logdet [B]); inverse(z) -> x [B, *shape].  No class
    conditioning (y must be None).  Data convention: the module docstring.
    """

    def __init__(self, shape: Union[int, Sequence[int]], layers: int = 4, hidden: int = 1000, depth: int = 5,
                 prior: str = "logistic", pixel_levels: int = 256) -> None:
        super().__init__()
        if isinstance(shape, int) and not isinstance(shape, bool):
            shape = (shape,)
        if not isinstance(shape, (tuple, list)) or not shape or any(not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(f"NICE: shape must be a dimension D or an image shape (C, H, W), got {shape!r}")
        self._setup_data(tuple(shape), pixel_levels, None)
        if self.dim < 2:
            raise ValueError(f"NICE: couplings split the data in two, so it needs at least 2 dimensions, got {shape!r}")
        if not isinstance(layers, int) or layers < 1:
            raise ValueError(f"NICE: layers must be a positive int, got {layers!r}")
        if prior not in ("logistic", "gaussian"):
            raise ValueError(f"NICE: prior must be 'logistic' or 'gaussian', got {prior!r}")
        self.prior = prior
        order = torch.cat([torch.arange(0, self.dim, 2), torch.arange(1, self.dim, 2)])
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("unorder", torch.argsort(order), persistent=False)
        self.couplings = FlowSequential(*[AdditiveCoupling(self.dim, hidden, parity=i % 2, conditioner="mlp",
                                                           depth=depth) for i in range(layers)])
        self.log_scale = nn.Parameter(torch.zeros(self.dim))

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> FlowOutput:
        """x [B, *shape] -> FlowOutput(z [B, D], logdet [B] float32)."""
        self.check_x(x)
        self.check_y(y, x.shape[0])
        h, logdet = self.couplings(x.flatten(1)[:, self.order])
        z = h * self.log_scale.exp()
        return FlowOutput(z, logdet + self.log_scale.float().sum())

    def inverse(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """z [B, D] -> x [B, *shape]."""
        if not isinstance(z, Tensor) or not z.is_floating_point() or z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"NICE: z must be a floating-point [B, {self.dim}] tensor, "
                             f"got {getattr(z, 'dtype', type(z))} {tuple(getattr(z, 'shape', ()))}")
        self.check_y(y, z.shape[0])
        h = self.couplings.inverse(z * (-self.log_scale).exp())
        return h[:, self.unorder].reshape(-1, *self.shape)

    def prior_log_prob(self, z: Tensor) -> Tensor:
        """log p(z) summed over D -> [B]."""
        if self.prior == "logistic":
            return -(F.softplus(z) + F.softplus(-z)).sum(1)
        return standard_normal_log_prob(z)

    def log_prob(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """x [B, *shape] continuous -> log p(x) [B] in nats."""
        z, logdet = self(x, y)
        return self.prior_log_prob(z) + logdet

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, y: Optional[Tensor] = None,
               generator: Optional[torch.Generator] = None) -> Tensor:
        """n samples [n, *shape] in the data space; z = temperature * (prior noise)."""
        self._sample_args(n, temperature, y)
        like = self._like
        if self.prior == "logistic":
            u = torch.rand(n, self.dim, generator=generator, device=like.device, dtype=like.dtype)
            u = u.clamp(1e-6, 1 - 1e-6)
            noise = u.log() - (-u).log1p()
        else:
            noise = torch.randn(n, self.dim, generator=generator, device=like.device, dtype=like.dtype)
        return self.inverse(temperature * noise)


# ----------------------------------------------------------------------------------------------
# Multi-scale flows: RealNVP and Glow
# ----------------------------------------------------------------------------------------------

class _StandardPrior(nn.Module):
    """The factored-out half's prior N(0, 1), whatever the kept half (RealNVP)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, z1: Tensor) -> Tuple[Tensor, Tensor]:
        zeros = z1.new_zeros(z1.shape[0], self.channels, *z1.shape[2:])
        return zeros, zeros


class _LearnedSplitPrior(nn.Module):
    """Glow's split prior: [mean; log_std] of the factored-out half = zero-initialised
    conv3x3(kept half)."""

    def __init__(self, kept: int, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.conv = _zero_conv(kept, 2 * channels)

    def forward(self, z1: Tensor) -> Tuple[Tensor, Tensor]:
        h = self.conv(z1)
        return h[:, :self.channels], h[:, self.channels:]


class _MultiScaleFlow(_FlowModel):
    """A multi-scale flow: ``stages[i]`` (a FlowSequential) maps its input bijectively; after
    every stage but the last the channels are split in half, the second half z_i is factored out
    with prior ``split_priors[i](first half)`` and the first half goes on; the last stage's
    output is the top latent with prior ``top_prior``."""

    invertible_backprop = False     # recompute each stage's activations in backward (see Glow)

    def _build(self, stages: List[FlowSequential], split_priors: List[nn.Module]) -> None:
        self.stages = nn.ModuleList(stages)
        self.split_priors = nn.ModuleList(split_priors)

    def _check_image_shape(self, image_shape, reductions: int) -> Tuple[int, int, int]:
        name = type(self).__name__
        if not isinstance(image_shape, (tuple, list)) or len(image_shape) != 3 or \
                any(not isinstance(s, int) or s < 1 for s in image_shape):
            raise ValueError(f"{name}: image_shape must be (C, H, W), got {image_shape!r}")
        C, H, W = image_shape
        step = 2 ** reductions
        if H % step or W % step:
            raise ValueError(f"{name}: image_shape {tuple(image_shape)}: H and W must be divisible by {step} "
                             f"(squeezed {reductions} times)")
        return C, H, W

    def top_prior(self, batch: int, y: Optional[Tensor]) -> Tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def _encode(self, x: Tensor, y: Optional[Tensor]) -> Tuple[List[Tensor], Tensor, Tensor]:
        """(latents, logdet, log p(latents))."""
        self.check_x(x)
        self.check_y(y, x.shape[0])
        logdet = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        prior = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        latents = []
        h = x
        for i, stage in enumerate(self.stages):
            h, ld = invertible_backprop(stage, h) if self.invertible_backprop else stage(h)
            logdet = logdet + ld
            if i < len(self.split_priors):
                keep = h.shape[1] // 2
                h, z = h[:, :keep], h[:, keep:]
                mean, log_std = self.split_priors[i](h)
                prior = prior + gaussian_log_prob(z, mean, 2 * log_std)
                latents.append(z)
        mean, log_std = self.top_prior(x.shape[0], y)
        prior = prior + gaussian_log_prob(h, mean, 2 * log_std)
        latents.append(h)
        return latents, logdet, prior

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> FlowLatents:
        """x [B, C, H, W] -> FlowLatents(latents, logdet [B] float32)."""
        latents, logdet, _ = self._encode(x, y)
        return FlowLatents(latents, logdet)

    def log_prob(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """x [B, C, H, W] continuous -> log p(x) [B] in nats."""
        _, logdet, prior = self._encode(x, y)
        return prior + logdet

    def latent_shapes(self) -> List[Tuple[int, ...]]:
        """The shapes (without the batch) of ``forward``'s latents."""
        return [tuple(s) for s in self._latent_shapes]

    def inverse(self, latents: Sequence[Tensor], y: Optional[Tensor] = None) -> Tensor:
        """latents (as ``forward`` returns them) -> x [B, C, H, W]."""
        name = type(self).__name__
        shapes = self.latent_shapes()
        if not isinstance(latents, (list, tuple)) or len(latents) != len(shapes):
            raise ValueError(f"{name}: latents must be a list of {len(shapes)} tensors of shapes [B, ...] "
                             f"{shapes}, got {type(latents).__name__}")
        for i, (z, shape) in enumerate(zip(latents, shapes)):
            if not isinstance(z, Tensor) or tuple(z.shape[1:]) != shape or z.shape[0] != latents[0].shape[0]:
                raise ValueError(f"{name}: latents[{i}] must have shape [B, {', '.join(map(str, shape))}], "
                                 f"got {tuple(getattr(z, 'shape', ()))}")
        self.check_y(y, latents[0].shape[0])
        h = latents[-1]
        for i in reversed(range(len(self.stages))):
            if i < len(self.split_priors):
                h = torch.cat([h, latents[i]], 1)
            h = self.stages[i].inverse(h)
        return h

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, y: Optional[Tensor] = None,
               generator: Optional[torch.Generator] = None) -> Tensor:
        """n images [n, C, H, W] in the data space: every latent = mean + temperature * std *
        noise, from the top down (a split prior's mean depends on the kept half).  ``y``:
        class ids [n] or one int for all (class-conditional models only)."""
        y = self._sample_args(n, temperature, y)
        like = self._like

        def draw(mean, log_std):
            noise = torch.randn(mean.shape, generator=generator, device=like.device, dtype=like.dtype)
            return mean + temperature * log_std.exp() * noise

        h = draw(*self.top_prior(n, y))
        for i in reversed(range(len(self.stages))):
            if i < len(self.split_priors):
                h = torch.cat([h, draw(*self.split_priors[i](h))], 1)
            h = self.stages[i].inverse(h)
        return h


class RealNVP(_MultiScaleFlow):
    """RealNVP (Dinh, Sohl-Dickstein & Bengio 2017): a multi-scale flow of affine couplings.

    ``image_shape`` = (C, H, W).  Each of the first ``scales - 1`` scales: 3 checkerboard
    couplings (alternating parity), a ``Squeeze``, 3 channel couplings (alternating halves),
    then half the channels are factored out (standard normal prior); the last scale: 4
    checkerboard couplings; its output is the top latent (standard normal).  The couplings use
    f(s) = exp(tanh s) (``AffineCoupling(scale='exp_tanh')``) with Glow's small conv conditioner
    of ``hidden`` channels (the paper used deeper residual networks and batch normalisation).
    H and W must be divisible by 2^(scales - 1).  No class conditioning (y must be None).
    Data convention and methods: the module docstring.
    """

    def __init__(self, image_shape: Sequence[int], scales: int = 2, hidden: int = 64,
                 pixel_levels: int = 256) -> None:
        super().__init__()
        if not isinstance(scales, int) or scales < 1:
            raise ValueError(f"RealNVP: scales must be a positive int, got {scales!r}")
        C, H, W = self._check_image_shape(image_shape, scales - 1)
        self._setup_data((C, H, W), pixel_levels, None)
        stages, priors, shapes = [], [], []
        c, h, w = C, H, W
        for s in range(scales):
            layers = [AffineCoupling(c, hidden, mask="checkerboard", parity=k % 2, scale="exp_tanh")
                      for k in range(3 if s < scales - 1 else 4)]
            if s < scales - 1:
                c, h, w = 4 * c, h // 2, w // 2
                layers.append(Squeeze())
                layers += [AffineCoupling(c, hidden, mask="channel", parity=k % 2, scale="exp_tanh")
                           for k in range(3)]
                priors.append(_StandardPrior(c - c // 2))
                shapes.append((c - c // 2, h, w))
                c = c // 2
            stages.append(FlowSequential(*layers))
        shapes.append((c, h, w))
        self._latent_shapes = shapes
        self._build(stages, priors)

    def top_prior(self, batch: int, y: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        like = self._like
        zeros = torch.zeros(batch, *self._latent_shapes[-1], dtype=like.dtype, device=like.device)
        return zeros, zeros


class Glow(_MultiScaleFlow):
    """Glow (Kingma & Dhariwal 2018): ``levels`` levels of ``steps`` flow steps.

    ``image_shape`` = (C, H, W).  Each level: ``Squeeze``, then ``steps`` x (``ActNorm`` ->
    ``InvConv1x1`` -> ``AffineCoupling(scale='sigmoid')`` with a conditioner of ``hidden``
    channels); after every level but the last, half the channels are factored out with a learned
    prior N(mean, exp(log_std)^2), [mean; log_std] = zero-initialised conv3x3(kept half).  The
    top latent's prior is learned per position (zero-initialised ``top_mean``/``top_log_std``),
    plus, with ``num_classes``, a per-class per-channel shift of both (zero-initialised
    embedding): log_prob/sample then need class ids y [B].  H and W must be divisible by
    2^levels.  The paper's CIFAR-10 model: levels=3, steps=32, hidden=512.

    ActNorm initialises from the first batch passed forward (``log_prob``, ``loss``, ...): make
    that a real training batch.  Data convention and methods: the module docstring.

    ``invertible_backprop=True``: training stores no activations inside a level -- each level's
    input is recomputed from its output in backward (``fastgen.nn.invertible_backprop``): peak
    memory independent of ``steps``, for ~1.5x the compute of backward.  Same values, same
    state dict; gradients equal to float rounding.
    """

    def __init__(self, image_shape: Sequence[int], levels: int = 3, steps: int = 32, hidden: int = 512,
                 num_classes: Optional[int] = None, pixel_levels: int = 256, invertible_backprop: bool = False) -> None:
        super().__init__()
        self.invertible_backprop = invertible_backprop
        if not isinstance(levels, int) or levels < 1:
            raise ValueError(f"Glow: levels must be a positive int, got {levels!r}")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"Glow: steps must be a positive int, got {steps!r}")
        C, H, W = self._check_image_shape(image_shape, levels)
        self._setup_data((C, H, W), pixel_levels, num_classes)
        stages, priors, shapes = [], [], []
        c, h, w = C, H, W
        for level in range(levels):
            c, h, w = 4 * c, h // 2, w // 2
            layers = [Squeeze()]
            for _ in range(steps):
                layers.append(FlowSequential(ActNorm(c), InvConv1x1(c), AffineCoupling(c, hidden, scale="sigmoid")))
            stages.append(FlowSequential(*layers))
            if level < levels - 1:
                priors.append(_LearnedSplitPrior(c // 2, c - c // 2))
                shapes.append((c - c // 2, h, w))
                c = c // 2
        shapes.append((c, h, w))
        self._latent_shapes = shapes
        self._build(stages, priors)
        self.top_mean = nn.Parameter(torch.zeros(c, h, w))
        self.top_log_std = nn.Parameter(torch.zeros(c, h, w))
        self.class_prior = nn.Embedding(num_classes, 2 * c) if num_classes is not None else None
        if self.class_prior is not None:
            nn.init.zeros_(self.class_prior.weight)

    def top_prior(self, batch: int, y: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        mean = self.top_mean.expand(batch, -1, -1, -1)
        log_std = self.top_log_std.expand(batch, -1, -1, -1)
        if self.class_prior is not None:
            shift = self.class_prior(y)[:, :, None, None]          # [B, 2c, 1, 1]
            c = mean.shape[1]
            mean, log_std = mean + shift[:, :c], log_std + shift[:, c:]
        return mean, log_std
