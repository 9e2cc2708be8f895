"""Generative adversarial networks: the losses (minimax, non-saturating, Wasserstein, hinge), the
WGAN-GP gradient penalty and R1, and three generator/discriminator pairs sized for small images
(the bundled 8x8 digits, 16x16 or 32x32 faces):

- ``DCGAN`` (Radford et al. 2016): transposed-conv generator with batch norm, strided-conv
  discriminator; with ``spectral=True`` the discriminator is spectrally normalised.
- ``SNGAN`` (Miyato et al. 2018): residual generator and spectrally normalised residual
  discriminator, trained with the hinge loss.
- ``StyleGAN2`` (Karras et al. 2020): mapping network, modulated convolutions with noise inputs,
  skip generator and residual discriminator over ``fastgen.ops.bias_act`` / ``upfirdn2d`` /
  ``modulated_conv2d``; style mixing, truncation, R1.

All three take ``num_classes`` for class-conditional models: conditional batch norm (BigGAN) or
a class embedding in the mapping network for the generator, and the projection discriminator
(Miyato & Koyama 2018).  Images are [B, C, H, W] in [-1, 1]; H = W = 4 * 2^k.

Train with ``model.train_step(real, labels, g_opt, d_opt, loss=...)`` (one discriminator and one
generator update), or compose ``d_loss`` / ``g_loss`` yourself.
"""
import math
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgen import ops
from fastgen.nn.gan import (ConditionalBatchNorm2d, EqualizedConv2d, EqualizedLinear, MinibatchStd, ProjectionHead,
                            StyleConv, ToRGB, check_labels, resample_filter, spectral_norm)
from fastgen.ops.stylegan import upsample2d

LOSSES = ("minimax", "non_saturating", "wgan", "hinge")

# --------------------------------------------------------------------------------------------
# Losses


def _check_logits(name: str, logits: Tensor) -> Tensor:
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of discriminator outputs, got "
                        f"{logits.dtype if isinstance(logits, Tensor) else type(logits).__name__}")
    if logits.dim() == 2 and logits.shape[1] == 1:
        logits = logits.squeeze(1)
    if logits.dim() != 1:
        raise ValueError(f"{name} must have shape [B] or [B, 1], got {tuple(logits.shape)}")
    return logits


def _check_kind(kind: str) -> None:
    if kind not in LOSSES:
        raise ValueError(f"kind must be one of {LOSSES}, got {kind!r}")


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor, kind: str = "hinge") -> Tensor:
    """The discriminator's (critic's) loss from its outputs r = D(x) [B] on real and f = D(G(z))
    [B'] on generated images, averaged over each batch (D minimises it):

    - 'minimax' and 'non_saturating' (Goodfellow et al. 2014; the two share the discriminator's
      loss): -E log sigmoid(r) - E log(1 - sigmoid(f)) = E softplus(-r) + E softplus(f);
    - 'wgan' (Arjovsky et al. 2017): E f - E r (a critic; add ``gradient_penalty``);
    - 'hinge' (Lim & Ye 2017; Miyato et al. 2018): E relu(1 - r) + E relu(1 + f)."""
    _check_kind(kind)
    r, f = _check_logits("real_logits", real_logits), _check_logits("fake_logits", fake_logits)
    if kind == "wgan":
        return f.mean() - r.mean()
    if kind == "hinge":
        return F.relu(1 - r).mean() + F.relu(1 + f).mean()
    return F.softplus(-r).mean() + F.softplus(f).mean()


def generator_loss(fake_logits: Tensor, kind: str = "hinge") -> Tensor:
    """The generator's loss from the discriminator's outputs f = D(G(z)) [B] (G minimises it):

    - 'minimax': E log(1 - sigmoid(f)) = -E softplus(f) (saturates when D rejects the fakes);
    - 'non_saturating': -E log sigmoid(f) = E softplus(-f);
    - 'wgan' and 'hinge': -E f."""
    _check_kind(kind)
    f = _check_logits("fake_logits", fake_logits)
    if kind == "minimax":
        return -F.softplus(f).mean()
    if kind == "non_saturating":
        return F.softplus(-f).mean()
    return -f.mean()


def _call(critic: Callable[..., Tensor], x: Tensor, labels: Optional[Tensor]) -> Tensor:
    out = critic(x) if labels is None else critic(x, labels)
    return _check_logits("the critic's output", out)


def gradient_penalty(critic: Callable[..., Tensor], real: Tensor, fake: Tensor, labels: Optional[Tensor] = None,
                     alpha: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> Tensor:
    """WGAN-GP's penalty (Gulrajani et al. 2017): E_xhat (|grad_x critic(xhat)|_2 - 1)^2 on
    xhat = alpha real + (1 - alpha) fake, alpha ~ U[0, 1] per sample (or ``alpha`` [B]), averaged
    over the batch; differentiable in the critic's parameters (the gradient is taken with
    create_graph).  real, fake: [B, ...]; critic(x) -> [B] (critic(x, labels) with ``labels``).
    Weight it by lambda = 10 as in the paper."""
    if not isinstance(real, Tensor) or not isinstance(fake, Tensor):
        raise TypeError("real and fake must be tensors")
    if real.shape != fake.shape:
        raise ValueError(f"fake must have the shape of real {tuple(real.shape)}, got {tuple(fake.shape)}")
    B = real.shape[0]
    if alpha is None:
        alpha = torch.rand(B, generator=generator, dtype=real.dtype).to(real.device)
    elif alpha.shape != (B,):
        raise ValueError(f"alpha must have shape [{B}], got {tuple(alpha.shape)}")
    a = alpha.view(B, *[1] * (real.dim() - 1))
    x = (a * real.detach() + (1 - a) * fake.detach()).requires_grad_(True)
    grad, = torch.autograd.grad(_call(critic, x, labels).sum(), x, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean()


def r1_penalty(discriminator: Callable[..., Tensor], real: Tensor, labels: Optional[Tensor] = None) -> Tensor:
    """R1 (Mescheder et al. 2018): E_x |grad_x D(x)|^2 on real images x [B, ...], averaged over
    the batch, differentiable in D's parameters (double backward).  StyleGAN2 adds (gamma / 2) R1
    to the discriminator's loss."""
    if not isinstance(real, Tensor):
        raise TypeError(f"real must be a tensor, got {type(real).__name__}")
    x = real.detach().requires_grad_(True)
    grad, = torch.autograd.grad(_call(discriminator, x, labels).sum(), x, create_graph=True)
    return grad.square().flatten(1).sum(1).mean()


# --------------------------------------------------------------------------------------------
# The shared GAN wrapper


class DiscriminatorLoss(NamedTuple):
    """The discriminator's objective: ``total`` = ``adversarial`` + ``penalty`` (weighted GP / R1)."""
    total: Tensor
    adversarial: Tensor
    penalty: Tensor


class GANStep(NamedTuple):
    """What one ``train_step`` did (floats): the two losses and the weighted penalty."""
    discriminator_loss: float
    generator_loss: float
    penalty: float


def check_image_shape(image_shape: Sequence[int]) -> Tuple[int, int]:
    """(C, H, W) with H = W = 4 * 2^k -> (C, k); ValueError naming ``image_shape`` otherwise."""
    shape = tuple(image_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"image_shape must be (C, H, W) positive ints, got {image_shape!r}")
    C, H, W = shape
    k = int(round(math.log2(H / 4))) if H >= 4 else -1
    if H != W or k < 0 or 4 * 2 ** k != H:
        raise ValueError(f"image_shape must be square with H = W = 4 * 2^k (4, 8, 16, 32, ...), got {image_shape!r}")
    return C, k


class GAN(nn.Module):
    """A generator (``self.generator``: z [B, latent] (and labels [B]) -> images [B, C, H, W] in
    [-1, 1]) and a discriminator (``self.discriminator``: images (and labels) -> logits [B])."""

    generator: nn.Module
    discriminator: nn.Module

    def __init__(self, image_shape: Sequence[int], latent: int, num_classes: Optional[int]) -> None:
        super().__init__()
        check_image_shape(image_shape)
        if not isinstance(latent, int) or latent < 1:
            raise ValueError(f"latent must be a positive int, got {latent!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be None or a positive int, got {num_classes!r}")
        self.image_shape, self.latent, self.num_classes = tuple(image_shape), latent, num_classes

    def _check_images(self, name: str, x: Tensor) -> None:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point image tensor in [-1, 1], got "
                            f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"{name} must have shape [B, {', '.join(map(str, self.image_shape))}], "
                             f"got {tuple(x.shape)}")

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def sample_latent(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """z ~ N(0, I) -> [n, latent] on the model's device."""
        return torch.randn(n, self.latent, generator=generator).to(self._device())

    def _check_latent(self, z: Tensor, labels: Optional[Tensor]) -> None:
        if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[1] != self.latent:
            raise ValueError(f"z must have shape [B, {self.latent}], got "
                             f"{tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__}")
        check_labels(labels, self.num_classes, z.shape[0])

    def generate(self, z: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """Images G(z) [B, C, H, W] from z [B, latent] (and class ids [B])."""
        self._check_latent(z, labels)
        return self.generator(z, labels)

    def discriminate(self, x: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """Discriminator logits [B] of images x [B, C, H, W] (and class ids [B])."""
        self._check_images("x", x)
        check_labels(labels, self.num_classes, x.shape[0])
        return self.discriminator(x, labels)

    @torch.no_grad()
    def sample(self, n: int, labels: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
               **kwargs) -> Tensor:
        """n images [n, C, H, W] in [-1, 1] (``labels`` [n] for a conditional model).  The
        module's mode is kept: call ``.eval()`` first for batch norm's running statistics."""
        return self.generate(self.sample_latent(n, generator), labels, **kwargs)

    def d_loss(self, real: Tensor, labels: Optional[Tensor] = None, loss: str = "hinge", gp_weight: float = 0.0,
               r1_weight: float = 0.0, generator: Optional[torch.Generator] = None) -> DiscriminatorLoss:
        """The discriminator's loss on a real batch [B, C, H, W] and as many fresh fakes (drawn with
        the batch's labels, no gradient to G): ``discriminator_loss(D(real), D(fake), loss)`` plus
        gp_weight * ``gradient_penalty`` and (r1_weight / 2) * ``r1_penalty`` (StyleGAN2's gamma)."""
        self._check_images("real", real)
        check_labels(labels, self.num_classes, real.shape[0])
        with torch.no_grad():
            fake = self.generate(self.sample_latent(real.shape[0], generator), labels)
        adversarial = discriminator_loss(self.discriminator(real, labels), self.discriminator(fake, labels), loss)
        penalty = adversarial.new_zeros(())
        if gp_weight:
            penalty = penalty + gp_weight * gradient_penalty(self.discriminator, real, fake, labels,
                                                             generator=generator)
        if r1_weight:
            penalty = penalty + 0.5 * r1_weight * r1_penalty(self.discriminator, real, labels)
        return DiscriminatorLoss(adversarial + penalty, adversarial, penalty)

    def g_loss(self, batch: int, labels: Optional[Tensor] = None, loss: str = "hinge",
               generator: Optional[torch.Generator] = None) -> Tensor:
        """The generator's loss ``generator_loss(D(G(z)), loss)`` on ``batch`` fresh fakes."""
        check_labels(labels, self.num_classes, batch)
        fake = self.generate(self.sample_latent(batch, generator), labels)
        return generator_loss(self.discriminator(fake, labels), loss)

    def train_step(self, real: Tensor, labels: Optional[Tensor], g_opt: torch.optim.Optimizer,
                   d_opt: torch.optim.Optimizer, loss: str = "hinge", gp_weight: float = 0.0, r1_weight: float = 0.0,
                   d_steps: int = 1, generator: Optional[torch.Generator] = None) -> GANStep:
        """``d_steps`` discriminator updates on ``real`` (WGAN-GP uses 5), then one generator update
        with the same labels.  g_opt / d_opt: optimizers over ``self.generator`` /
        ``self.discriminator`` parameters."""
        if d_steps < 1:
            raise ValueError(f"d_steps must be >= 1, got {d_steps}")
        for _ in range(d_steps):
            d = self.d_loss(real, labels, loss, gp_weight, r1_weight, generator)
            d_opt.zero_grad(set_to_none=True)
            d.total.backward()
            d_opt.step()
        self.discriminator.requires_grad_(False)      # G's step needs no discriminator gradients
        try:
            g = self.g_loss(real.shape[0], labels, loss, generator)
            g_opt.zero_grad(set_to_none=True)
            g.backward()
            g_opt.step()
        finally:
            self.discriminator.requires_grad_(True)
        return GANStep(d.adversarial.item(), g.item(), d.penalty.item())


# --------------------------------------------------------------------------------------------
# DCGAN


def _sn(module: nn.Module, spectral: bool) -> nn.Module:
    return spectral_norm(module) if spectral else module


class DCGANGenerator(nn.Module):
    """z [B, latent] -> linear -> [c 2^k, 4, 4] -> k x (4x4 stride-2 transposed conv, halving the
    channels) -> 3x3 conv -> tanh: [B, C, 4 2^k, 4 2^k].  Batch norm + ReLU after each layer but
    the last, class-conditional (``ConditionalBatchNorm2d``) with ``num_classes``."""

    def __init__(self, image_shape: Sequence[int], latent: int, channels: int,
                 num_classes: Optional[int] = None) -> None:
        super().__init__()
        C, k = check_image_shape(image_shape)
        self.c0 = channels * 2 ** k
        self.fc = nn.Linear(latent, self.c0 * 16, bias=False)
        self.norms = nn.ModuleList([ConditionalBatchNorm2d(self.c0 >> i, num_classes) for i in range(k + 1)])
        self.ups = nn.ModuleList([nn.ConvTranspose2d(self.c0 >> i, self.c0 >> (i + 1), 4, 2, 1, bias=False)
                                  for i in range(k)])
        self.out = nn.Conv2d(channels, C, 3, padding=1)

    def forward(self, z: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        h = F.relu(self.norms[0](self.fc(z).view(-1, self.c0, 4, 4), labels))
        for up, norm in zip(self.ups, self.norms[1:]):
            h = F.relu(norm(up(h), labels))
        return torch.tanh(self.out(h))


class DCGANDiscriminator(nn.Module):
    """x [B, C, H, W] -> 3x3 conv -> k x (4x4 stride-2 conv, doubling the channels) -> [c 2^k, 4, 4]
    -> ``ProjectionHead`` -> logits [B]; leaky ReLU (0.2), no batch norm (so that WGAN-GP's
    per-sample penalty is well defined); ``spectral``: spectral normalisation on every layer."""

    def __init__(self, image_shape: Sequence[int], channels: int, num_classes: Optional[int] = None,
                 spectral: bool = False) -> None:
        super().__init__()
        C, k = check_image_shape(image_shape)
        self.inp = _sn(nn.Conv2d(C, channels, 3, padding=1), spectral)
        self.downs = nn.ModuleList([_sn(nn.Conv2d(channels << i, channels << (i + 1), 4, 2, 1), spectral)
                                    for i in range(k)])
        self.head = ProjectionHead((channels << k) * 16, num_classes, spectral)

    def forward(self, x: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        h = F.leaky_relu(self.inp(x), 0.2)
        for down in self.downs:
            h = F.leaky_relu(down(h), 0.2)
        return self.head(h.flatten(1), labels)


class DCGAN(GAN):
    """DCGAN (Radford et al. 2016) for images ``image_shape`` = (C, H, W), H = W = 4 * 2^k:
    ``DCGANGenerator`` and ``DCGANDiscriminator`` (``channels`` at full resolution, doubling
    per halving).  Any of ``LOSSES`` trains it; 'wgan' with ``gp_weight=10`` is WGAN-GP (the
    discriminator then acts as the critic).  ``num_classes``: conditional batch norm in G and a
    projection discriminator.  ``spectral``: spectral normalisation in D."""

    def __init__(self, image_shape: Sequence[int], latent: int = 64, channels: int = 64,
                 num_classes: Optional[int] = None, spectral: bool = False) -> None:
        super().__init__(image_shape, latent, num_classes)
        self.generator = DCGANGenerator(image_shape, latent, channels, num_classes)
        self.discriminator = DCGANDiscriminator(image_shape, channels, num_classes, spectral)


# --------------------------------------------------------------------------------------------
# SNGAN


class _GBlock(nn.Module):
    """SNGAN's generator block: (c)BN-ReLU-up2-conv3-(c)BN-ReLU-conv3 plus up2-conv1 shortcut."""

    def __init__(self, cin: int, cout: int, num_classes: Optional[int]) -> None:
        super().__init__()
        self.n1, self.n2 = ConditionalBatchNorm2d(cin, num_classes), ConditionalBatchNorm2d(cout, num_classes)
        self.c1, self.c2 = nn.Conv2d(cin, cout, 3, padding=1), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor, labels: Optional[Tensor]) -> Tensor:
        h = F.interpolate(F.relu(self.n1(x, labels)), scale_factor=2)
        h = self.c2(F.relu(self.n2(self.c1(h), labels)))
        return h + self.skip(F.interpolate(x, scale_factor=2))


class _DBlock(nn.Module):
    """SNGAN's spectrally normalised discriminator block: (ReLU)-conv3-ReLU-conv3-(avgpool2) plus a
    conv1 shortcut; the first block (``first``) skips the leading ReLU and pools before its shortcut."""

    def __init__(self, cin: int, cout: int, down: bool, first: bool) -> None:
        super().__init__()
        self.down, self.first = down, first
        self.c1 = spectral_norm(nn.Conv2d(cin, cout, 3, padding=1))
        self.c2 = spectral_norm(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = spectral_norm(nn.Conv2d(cin, cout, 1))

    def forward(self, x: Tensor) -> Tensor:
        h = self.c2(F.relu(self.c1(x if self.first else F.relu(x))))
        if self.down:
            h = F.avg_pool2d(h, 2)
        if self.first:
            return h + self.skip(F.avg_pool2d(x, 2) if self.down else x)
        s = self.skip(x)
        return h + (F.avg_pool2d(s, 2) if self.down else s)


class SNGANGenerator(nn.Module):
    """z [B, latent] -> linear -> [channels, 4, 4] -> k residual up-blocks (``_GBlock``) ->
    BN-ReLU-conv3-tanh -> [B, C, 4 2^k, 4 2^k]; conditional batch norm with ``num_classes``."""

    def __init__(self, image_shape: Sequence[int], latent: int, channels: int,
                 num_classes: Optional[int] = None) -> None:
        super().__init__()
        C, k = check_image_shape(image_shape)
        self.channels = channels
        self.fc = nn.Linear(latent, channels * 16)
        self.blocks = nn.ModuleList([_GBlock(channels, channels, num_classes) for _ in range(k)])
        self.norm = ConditionalBatchNorm2d(channels, num_classes)
        self.out = nn.Conv2d(channels, C, 3, padding=1)

    def forward(self, z: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        h = self.fc(z).view(-1, self.channels, 4, 4)
        for block in self.blocks:
            h = block(h, labels)
        return torch.tanh(self.out(F.relu(self.norm(h, labels))))


class SNGANDiscriminator(nn.Module):
    """x [B, C, H, W] -> k residual down-blocks (the first 'optimized') to 4x4 -> one more block
    -> ReLU -> sum over pixels -> ``ProjectionHead`` (spectral) -> logits [B]; every weight
    spectrally normalised."""

    def __init__(self, image_shape: Sequence[int], channels: int, num_classes: Optional[int] = None) -> None:
        super().__init__()
        C, k = check_image_shape(image_shape)
        blocks = [_DBlock(C, channels, down=k > 0, first=True)]
        blocks += [_DBlock(channels, channels, down=True, first=False) for _ in range(k - 1)]
        blocks.append(_DBlock(channels, channels, down=False, first=False))
        self.blocks = nn.Sequential(*blocks)
        self.head = ProjectionHead(channels, num_classes, spectral=True)

    def forward(self, x: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        return self.head(F.relu(self.blocks(x)).sum((2, 3)), labels)


class SNGAN(GAN):
    """SNGAN (Miyato et al. 2018): ``SNGANGenerator`` + ``SNGANDiscriminator``, trained with the
    hinge loss (``train_step(..., loss='hinge')``); ``num_classes``: conditional batch norm in G
    and the projection discriminator (Miyato & Koyama 2018), as in BigGAN."""

    def __init__(self, image_shape: Sequence[int], latent: int = 64, channels: int = 64,
                 num_classes: Optional[int] = None) -> None:
        super().__init__(image_shape, latent, num_classes)
        self.generator = SNGANGenerator(image_shape, latent, channels, num_classes)
        self.discriminator = SNGANDiscriminator(image_shape, channels, num_classes)


# --------------------------------------------------------------------------------------------
# StyleGAN2


def _normalize_2nd_moment(x: Tensor, eps: float = 1e-8) -> Tensor:
    return x * (x.square().mean(1, keepdim=True) + eps).rsqrt()


class MappingNetwork(nn.Module):
    """z [B, latent] (and labels [B]) -> ws [B, num_ws, w_dim]: z normalised to unit second
    moment (and a class embedding, normalised, concatenated), ``layers`` equalized-lr fully
    connected layers with leaky ReLU at lr multiplier 0.01, broadcast to the ``num_ws`` layers.
    Tracks w_avg, the running mean of w (decay ``w_avg_beta``) in training mode; truncation
    w <- w_avg + psi (w - w_avg) on the first ``cutoff`` ws (all by default)."""

    def __init__(self, latent: int, w_dim: int, num_ws: int, layers: int = 8, num_classes: Optional[int] = None,
                 lr_multiplier: float = 0.01, w_avg_beta: float = 0.995) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"mapping_layers must be >= 1, got {layers}")
        self.num_ws, self.num_classes, self.w_avg_beta = num_ws, num_classes, w_avg_beta
        self.embed = EqualizedLinear(num_classes, w_dim) if num_classes is not None else None
        dims = [latent + (w_dim if num_classes is not None else 0)] + [w_dim] * layers
        self.fcs = nn.ModuleList([EqualizedLinear(a, b, activation="lrelu", lr_multiplier=lr_multiplier)
                                  for a, b in zip(dims[:-1], dims[1:])])
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: Tensor, labels: Optional[Tensor] = None, psi: float = 1.0, cutoff: Optional[int] = None,
                update_w_avg: bool = False) -> Tensor:
        x = _normalize_2nd_moment(z)
        if self.embed is not None:
            y = self.embed(F.one_hot(labels, self.num_classes).to(z.dtype))
            x = torch.cat([x, _normalize_2nd_moment(y)], 1)
        for fc in self.fcs:
            x = fc(x)
        if update_w_avg:   # in w_avg's own dtype: under autocast x is bf16 (the layers' matmuls)
            self.w_avg.copy_(x.detach().to(self.w_avg.dtype).mean(0).lerp(self.w_avg, self.w_avg_beta))
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if psi != 1:
            cutoff = self.num_ws if cutoff is None else cutoff
            ws = torch.cat([self.w_avg.lerp(ws[:, :cutoff], psi), ws[:, cutoff:]], 1)
        return ws


class SynthesisNetwork(nn.Module):
    """ws [B, num_ws, w_dim] -> images [B, C, H, W]: a learned constant [channels, 4, 4], then per
    resolution 4, 8, ..., H a block of ``StyleConv`` layers (the first of each block after 4x4
    upsamples by 2 inside the modulated conv) and a ``ToRGB`` whose output is added to the
    upsampled image so far (the 'skip' generator).  ws: block r uses ws[i : i + convs + 1]
    (its toRGB shares the next block's first w); num_ws = 2 log2(H) - 2."""

    def __init__(self, image_shape: Sequence[int], w_dim: int, channels: int, clamp: Optional[float] = 256.0) -> None:
        super().__init__()
        C, k = check_image_shape(image_shape)
        self.resolutions = [4 * 2 ** i for i in range(k + 1)]
        self.const = nn.Parameter(torch.randn(channels, 4, 4))
        self.convs = nn.ModuleList()
        self.torgbs = nn.ModuleList()
        for r in self.resolutions:
            layers = [StyleConv(channels, channels, w_dim, r, clamp=clamp)]
            if r > 4:
                layers.insert(0, StyleConv(channels, channels, w_dim, r, up=2, clamp=clamp))
            self.convs.append(nn.ModuleList(layers))
            self.torgbs.append(ToRGB(channels, C, w_dim, clamp=clamp))
        self.num_ws = sum(len(c) for c in self.convs) + 1
        self.register_buffer("resample_filter", resample_filter())

    def forward(self, ws: Tensor, noise_mode: str = "random") -> Tensor:
        if ws.dim() != 3 or ws.shape[1] != self.num_ws:
            raise ValueError(f"ws must have shape [B, {self.num_ws}, w_dim], got {tuple(ws.shape)}")
        x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        img, i = None, 0
        for convs, torgb in zip(self.convs, self.torgbs):
            for conv in convs:
                x = conv(x, ws[:, i], noise_mode)
                i += 1
            y = torgb(x, ws[:, i])
            img = y if img is None else upsample2d(img, self.resample_filter) + y
        return img


class StyleGAN2Generator(nn.Module):
    """``MappingNetwork`` then ``SynthesisNetwork``: G(z, labels) [B, C, H, W], with style mixing
    in training mode (probability ``style_mixing_prob``: the ws from a second z replace those from
    a random layer on, so that the network does not assume adjacent styles correlated)."""

    def __init__(self, image_shape: Sequence[int], latent: int, w_dim: int, channels: int, mapping_layers: int,
                 num_classes: Optional[int], style_mixing_prob: float, clamp: Optional[float]) -> None:
        super().__init__()
        self.synthesis = SynthesisNetwork(image_shape, w_dim, channels, clamp)
        self.mapping = MappingNetwork(latent, w_dim, self.synthesis.num_ws, mapping_layers, num_classes)
        self.style_mixing_prob = style_mixing_prob

    def forward(self, z: Tensor, labels: Optional[Tensor] = None, psi: float = 1.0, cutoff: Optional[int] = None,
                noise_mode: str = "random") -> Tensor:
        ws = self.mapping(z, labels, psi, cutoff, update_w_avg=self.training)
        if self.training and self.style_mixing_prob > 0 and torch.rand(()).item() < self.style_mixing_prob:
            layer = int(torch.randint(1, ws.shape[1], ()))
            ws = mix_styles(ws, self.mapping(torch.randn_like(z), labels, psi, cutoff), layer)
        return self.synthesis(ws, noise_mode)


def mix_styles(ws: Tensor, other: Tensor, layer: int) -> Tensor:
    """Style mixing: ws [B, num_ws, w_dim] for layers < ``layer``, ``other`` for the rest."""
    if ws.shape != other.shape:
        raise ValueError(f"other must have the shape of ws {tuple(ws.shape)}, got {tuple(other.shape)}")
    if not 0 <= layer <= ws.shape[1]:
        raise ValueError(f"layer must lie in [0, {ws.shape[1]}], got {layer}")
    return torch.cat([ws[:, :layer], other[:, layer:]], 1)


class _DBlockResidual(nn.Module):
    """StyleGAN2's residual discriminator block: conv3-lrelu, conv3-lrelu-down2, plus a 1x1
    down2 linear skip; both branches scaled by sqrt(1/2)."""

    def __init__(self, channels: int, clamp: Optional[float]) -> None:
        super().__init__()
        self.conv0 = EqualizedConv2d(channels, channels, 3, activation="lrelu", clamp=clamp)
        self.conv1 = EqualizedConv2d(channels, channels, 3, activation="lrelu", down=2, clamp=clamp)
        self.skip = EqualizedConv2d(channels, channels, 1, bias=False, down=2)

    def forward(self, x: Tensor) -> Tensor:
        gain = math.sqrt(0.5)
        return self.skip(x, gain=gain) + self.conv1(self.conv0(x), gain=gain)


class StyleGAN2Discriminator(nn.Module):
    """x [B, C, H, W] -> 1x1 fromRGB (lrelu) -> residual blocks down to 4x4 -> minibatch std ->
    conv3 -> fully connected -> ``ProjectionHead`` -> logits [B]."""

    def __init__(self, image_shape: Sequence[int], channels: int, num_classes: Optional[int] = None,
                 clamp: Optional[float] = 256.0, mbstd_group: int = 4) -> None:
        super().__init__()
        C, k = check_image_shape(image_shape)
        self.fromrgb = EqualizedConv2d(C, channels, 1, activation="lrelu", clamp=clamp)
        self.blocks = nn.Sequential(*[_DBlockResidual(channels, clamp) for _ in range(k)])
        self.mbstd = MinibatchStd(mbstd_group)
        self.conv = EqualizedConv2d(channels + 1, channels, 3, activation="lrelu", clamp=clamp)
        self.fc = EqualizedLinear(channels * 16, channels, activation="lrelu")
        self.head = ProjectionHead(channels, num_classes)

    def forward(self, x: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        h = self.conv(self.mbstd(self.blocks(self.fromrgb(x))))
        return self.head(self.fc(h.flatten(1)), labels)


class StyleGAN2(GAN):
    """A small StyleGAN2 (Karras et al. 2020, config F's architecture at a fraction of the width):
    ``StyleGAN2Generator`` (mapping network of ``mapping_layers``, skip synthesis network of
    modulated convs with per-layer noise, ``channels`` wide at every resolution) and
    ``StyleGAN2Discriminator`` (residual, minibatch std).  Train with
    ``train_step(..., loss='non_saturating', r1_weight=gamma)`` (R1 through the ops' double
    backward).  ``generate(z, labels, psi=, cutoff=, noise_mode=)``: truncation towards the
    tracked mean w (psi = 0 gives the mean-w image), noise 'random' | 'const' | 'none'.
    ``num_classes``: a class embedding in the mapping network and a projection discriminator.
    clamp: StyleGAN2-ADA's conv_clamp on activations (None: off).  ``pl_weight`` > 0 adds
    ``pl_weight * path_length_penalty`` to every generator step's loss (the paper's weight is 2;
    its lazy every-4th-step schedule is not implemented); ``pl_decay``: the running mean's."""

    def __init__(self, image_shape: Sequence[int], latent: int = 64, w_dim: int = 64, channels: int = 64,
                 mapping_layers: int = 4, num_classes: Optional[int] = None, style_mixing_prob: float = 0.9,
                 clamp: Optional[float] = 256.0, pl_weight: float = 0.0, pl_decay: float = 0.01) -> None:
        super().__init__(image_shape, latent, num_classes)
        if not pl_weight >= 0 or not 0 < pl_decay <= 1:
            raise ValueError(f"pl_weight must be >= 0 and pl_decay in (0, 1], got {pl_weight!r}, {pl_decay!r}")
        self.generator = StyleGAN2Generator(image_shape, latent, w_dim, channels, mapping_layers, num_classes,
                                            style_mixing_prob, clamp)
        self.discriminator = StyleGAN2Discriminator(image_shape, channels, num_classes, clamp)
        self.pl_weight, self.pl_decay = float(pl_weight), float(pl_decay)
        if self.pl_weight:
            self.register_buffer("pl_mean", torch.zeros(()))      # a, the running mean of the path lengths

    def path_length_penalty(self, batch: int, labels: Optional[Tensor] = None,
                            generator: Optional[torch.Generator] = None) -> Tensor:
        """Path-length regularisation (Karras et al. 2020, sec. 3.2): E_{w,y} (||J_w^T y||_2 - a)^2
        over max(batch // 2, 1) fresh ws, y ~ N(0, I) / sqrt(H W) images, J_w the Jacobian of the
        synthesis network at w (the lengths averaged over the ws' layers), a the running mean
        of the lengths (updated here by ``pl_decay``).  A scalar with a gradient to G's weights
        through the second derivative -- so it runs on the reference backend: the Triton
        modulated conv's backward is not differentiable (``fastgen.ops._define``)."""
        n = max(batch // 2, 1)
        with ops.use_backend("reference"):
            z = self.sample_latent(n, generator).to(self.pl_mean.dtype)
            ws = self.generator.mapping(z, None if labels is None else labels[:n])
            images = self.generator.synthesis(ws)
            y = torch.randn(images.shape, generator=generator).to(images)
            y = y / math.sqrt(images.shape[2] * images.shape[3])
            grad, = torch.autograd.grad((images * y).sum(), ws, create_graph=True)
        lengths = grad.square().sum(2).mean(1).sqrt()
        with torch.no_grad():
            self.pl_mean.lerp_(lengths.mean().to(self.pl_mean.dtype), self.pl_decay)
        return (lengths - self.pl_mean).square().mean()

    def g_loss(self, batch: int, labels: Optional[Tensor] = None, loss: str = "hinge",
               generator: Optional[torch.Generator] = None) -> Tensor:
        """``GAN.g_loss`` + pl_weight * ``path_length_penalty`` (in training mode, pl_weight > 0)."""
        total = super().g_loss(batch, labels, loss, generator)
        if self.pl_weight and self.training:
            total = total + self.pl_weight * self.path_length_penalty(batch, labels, generator)
        return total

    @property
    def num_ws(self) -> int:
        return self.generator.synthesis.num_ws

    def generate(self, z: Tensor, labels: Optional[Tensor] = None, psi: float = 1.0, cutoff: Optional[int] = None,
                 noise_mode: str = "random") -> Tensor:
        """G(z) [B, C, H, W]; psi / cutoff: truncation; noise_mode: 'random' | 'const' | 'none'."""
        self._check_latent(z, labels)
        return self.generator(z, labels, psi, cutoff, noise_mode)

    def mapping(self, z: Tensor, labels: Optional[Tensor] = None, psi: float = 1.0,
                cutoff: Optional[int] = None) -> Tensor:
        """ws [B, num_ws, w_dim] for z [B, latent] (truncated with psi < 1)."""
        check_labels(labels, self.num_classes, z.shape[0])
        return self.generator.mapping(z, labels, psi, cutoff)

    def synthesis(self, ws: Tensor, noise_mode: str = "random") -> Tensor:
        """Images [B, C, H, W] from ws [B, num_ws, w_dim]."""
        return self.generator.synthesis(ws, noise_mode)
