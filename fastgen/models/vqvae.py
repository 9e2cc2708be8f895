"""VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017) and the two-level VQ-VAE-2 (Razavi, van den
Oord & Vinyals 2019), with Gated PixelCNN priors over their code maps sampled by
``fastgen.sampling.sample`` (the fast incremental sampler or the naive one).

Shapes: images x are integer ``[B, C, H, W]`` in [0, levels) (``fastgen.data`` images: 17 levels
for ``load_digits``); a code map is long ``[B, h, w]`` in [0, codes) with (h, w) = (H, W) /
``downsample`` (VQ-VAE-2: the bottom map at that size, the top map half of it again).

Model (VQ-VAE)::

    z_e = E(x) [B, code_dim, h, w]      z_q = nearest code of each z_e vector (fastgen.nn.VectorQuantizer)
    p(x | z_q) = D(z_q): a discretised logistic per value ("logistic", fastgen.nn.latent) or a
                 softmax over the levels per value ("categorical")
    loss = reconstruction + commitment (+ codebook when ema=False)
         reconstruction = -log p(x | z_q) / (C H W log 2)    bits/dim, batch mean
         commitment = beta mean((z_e - sg(z_q))^2)            codebook = mean((sg(z_e) - z_q)^2)

The gradient reaches the encoder through the straight-through estimator (``quantized = z_e +
sg(z_q - z_e)``).  E and D are small convolutional stacks as in the paper: stride-2 4x4 convs
(one per factor 2 of ``downsample``), a 3x3 conv and ``res_blocks`` residual blocks
(ReLU, 3x3 conv, ReLU, 1x1 conv) of width ``hidden``; the decoder mirrors it with transposed convs.

Prior and sampling: the prior is a ``GatedPixelCNN(image_shape=(1, h, w), levels=codes, ...)``
over the code map viewed as a 1-channel image (``make_prior`` builds one; ``fit_prior`` trains
it on the code maps of training images, best after ``sort_codes``).  ``sample`` draws a code map with
``fastgen.sampling.sample`` and decodes it (each value the level nearest the decoder's mean, or
the arg-max level: deterministic, so the fast and the naive sampler give the same images for the
same generator).  Note that the Gated PixelCNN reads its input as one scalar per position (the
index scaled to [-1, 1]): code indices have no natural order, so the prior's first layer sees
a 1-D embedding of them -- ``sort_codes`` orders the codebook along its first principal
component to make that embedding meaningful; the prior's output softmax over the ``codes``
values is exact either way.

With the deterministic posterior (one code map per image), log p(x) >= log p(x | z_q) + log
p(z_q), so ``bits_per_dim(x, prior)`` = reconstruction bits/dim + prior bits / (C H W) is an
upper bound on the NLL in the units of ``GatedPixelCNN.loss``.

VQ-VAE-2 (two levels).  The bottom encoder E_b gives h_b at (H, W) / downsample; the top
encoder E_t (one more factor 2) gives the top map, quantized to q_t; a top decoder brings q_t to
the bottom resolution, where it joins h_b to give the bottom map, quantized to q_b; the decoder
reads [q_b, upsample(q_t)].  Priors: a Gated PixelCNN over the top map, and one over the bottom
map *conditioned on the top codes*.  fastgen's Gated PixelCNN conditions on a vector per image
(``cond_channels``), not on a spatial map, so the bottom prior's condition is the whole top map
as one vector: its code vectors flattened, ``[B, code_dim * h_t * w_t]``
(``VQVAE2.bottom_condition``) -- every layer adds a linear function of it to every position.
That is a simpler choice than the paper's (which feeds the top map spatially through a
conditioning stack) and it fits small top maps like the 2x2 of the 8x8 digits.

Two stages, one model (``VQVAEWithPrior``, ``VQVAE2WithPriors``: what ``fastgen train vqvae`` /
``vqvae2`` train and checkpoint as one model).  The wrapper holds the autoencoder and its
prior(s) and counts its optimizer steps in a buffer; the first ``prior_start`` steps train the
autoencoder (stage 1: the VQ loss above), every later one the prior(s) with the autoencoder
frozen (stage 2: the NLL bound above, ``nll_bound``, codes under no_grad, so only prior parameters
get gradients and an optimizer skips the autoencoder's, Adam moments included).  The step that
ends stage 1 sorts the codebooks (``sort_codes``).  Stage 2's loss is the bound in bits/dim,
reconstruction (a constant of the frozen autoencoder) + the prior's bits / (C H W): the prior's
usual bits-per-code loss scaled by codes / (C H W), which Adam's updates do not see.
"""
import math
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgen.models.pixelcnn import GatedPixelCNN
from fastgen.models.vae import check_float, check_int
from fastgen.nn.latent import discretized_logistic_log_prob, discretized_logistic_sample, scale_levels
from fastgen.nn.vq import VectorQuantizer
from fastgen.ops import nearest_code
from fastgen.sampling import gumbel_noise
from fastgen.sampling import sample as _sample_autoregressive

__all__ = ["NLLBound", "StageLoss", "VQCodes", "VQLoss", "VQSample", "VQVAE", "VQVAE2", "VQVAE2WithPriors",
           "VQVAEWithPrior", "fit_prior", "make_prior"]

_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
DECODERS = ("logistic", "categorical")


class VQLoss(NamedTuple):
    """The VQ-VAE training loss and its terms (float32 scalars): ``total = reconstruction +
    commitment`` (+ ``codebook`` when the codebook is trained by gradient, ``ema=False``);
    ``reconstruction`` in bits/dim; ``commitment`` beta-weighted; ``codebook`` reported always
    (with the EMA codebook it trains nothing).  VQ-VAE-2: the sums over both levels."""
    total: Tensor
    reconstruction: Tensor
    commitment: Tensor
    codebook: Tensor


class VQCodes(NamedTuple):
    """The two code maps of a VQ-VAE-2: ``top`` [B, h_t, w_t] and ``bottom`` [B, h_b, w_b] (long)."""
    top: Tensor
    bottom: Tensor


class NLLBound(NamedTuple):
    """The upper bound on a batch's NLL through a prior, in bits/dim (float32 scalars, batch
    means): ``total = reconstruction + prior``; ``reconstruction`` = -log2 p(x | z_q) / (C H W),
    ``prior`` = -log2 p(z_q) / (C H W) (the code maps' bits spread over the image's values)."""
    total: Tensor
    reconstruction: Tensor
    prior: Tensor


class VQSample(NamedTuple):
    """Samples through a prior: ``images`` [n, C, H, W] long in [0, levels) and the ``codes``
    they decode ([n, h, w] long, or ``VQCodes`` for a VQ-VAE-2)."""
    images: Tensor
    codes: Union[Tensor, VQCodes]


# --------------------------------------------------------------------------------- building blocks

class _Residual(nn.Module):
    """x + 1x1(ReLU(3x3(ReLU(x)))) (the VQ-VAE paper's residual block), [B, C, h, w] -> same."""

    def __init__(self, channels: int, inner: int):
        super().__init__()
        self.conv3 = nn.Conv2d(channels, inner, 3, padding=1)
        self.conv1 = nn.Conv2d(inner, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv1(F.relu(self.conv3(F.relu(x))))


def _residual_stack(channels: int, blocks: int) -> List[nn.Module]:
    return [*(_Residual(channels, max(channels // 2, 1)) for _ in range(blocks)), nn.ReLU()]


def _encoder(c_in: int, hidden: int, factor: int, blocks: int) -> nn.Sequential:
    """[B, c_in, H, W] -> [B, hidden, H / factor, W / factor]: log2(factor) stride-2 4x4 convs,
    a 3x3 conv, a residual stack."""
    layers: List[nn.Module] = []
    widths = [hidden // 2, hidden] if factor == 4 else [hidden]
    for w in widths:
        layers += [nn.Conv2d(c_in, w, 4, stride=2, padding=1), nn.ReLU()]
        c_in = w
    return nn.Sequential(*layers, nn.Conv2d(c_in, hidden, 3, padding=1), *_residual_stack(hidden, blocks))


def _decoder(c_in: int, hidden: int, c_out: int, factor: int, blocks: int) -> nn.Sequential:
    """[B, c_in, h, w] -> [B, c_out, h * factor, w * factor]: a 3x3 conv, a residual stack,
    log2(factor) stride-2 4x4 transposed convs."""
    layers: List[nn.Module] = [nn.Conv2d(c_in, hidden, 3, padding=1), *_residual_stack(hidden, blocks)]
    if factor == 4:
        layers += [nn.ConvTranspose2d(hidden, hidden // 2, 4, stride=2, padding=1), nn.ReLU()]
        hidden //= 2
    layers.append(nn.ConvTranspose2d(hidden, c_out, 4, stride=2, padding=1))
    return nn.Sequential(*layers)


def _code_vectors(quantizer: VectorQuantizer, codes: Tensor, dtype: torch.dtype) -> Tensor:
    """The code vectors of a code map [B, h, w] -> [B, code_dim, h, w] in ``dtype``."""
    return quantizer.lookup(codes).to(dtype)


# --------------------------------------------------------------------------------- shared base

class _VQBase(nn.Module):
    """What VQVAE and VQVAE2 share: argument and input checks, the encoder's input scaling, the
    decoder's likelihood (``decoder`` kind), decoding to integer images."""

    def _setup(self, image_shape, levels, hidden, codes, code_dim, downsample, decoder, res_blocks, beta, ema,
               decay, dead_code_steps, factor_needed):
        shape = tuple(image_shape) if isinstance(image_shape, (tuple, list, torch.Size)) else None
        if shape is None or len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                                                       for s in shape):
            raise ValueError(f"image_shape must be (C, H, W) of positive ints, got {image_shape!r}")
        if downsample not in (2, 4) or isinstance(downsample, bool):
            raise ValueError(f"downsample must be 2 or 4, got {downsample!r}")
        if shape[1] % factor_needed or shape[2] % factor_needed:
            again = " and the top level halves it again" if factor_needed > downsample else ""
            raise ValueError(f"image_shape {shape}: H and W must be divisible by {factor_needed} "
                             f"(downsample={downsample}{again})")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.image_shape: Tuple[int, int, int] = shape
        self.levels = check_int(levels, "levels", 2)
        self.hidden = check_int(hidden, "hidden", 2)
        self.codes = check_int(codes, "codes", 2)
        self.code_dim = check_int(code_dim, "code_dim", 1)
        self.res_blocks = check_int(res_blocks, "res_blocks", 0)
        self.downsample = downsample
        self.decoder_kind = decoder
        self.beta = check_float(beta, "beta")
        self._vq_args = dict(beta=self.beta, ema=bool(ema), decay=decay, dead_code_steps=dead_code_steps)
        C = shape[0]
        self.out_channels = 2 * C if decoder == "logistic" else self.levels * C

    @property
    def dims(self) -> int:
        """C * H * W, the values per image (the bits/dim denominator)."""
        return math.prod(self.image_shape)

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def check_images(self, x, name: str = "images") -> None:
        """TypeError/ValueError unless x is an integer batch [B, C, H, W] in [0, levels)."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a tensor [B, {', '.join(map(str, self.image_shape))}], "
                            f"got {type(x).__name__}")
        if x.dtype not in _INT_DTYPES:
            raise TypeError(f"{name} must hold integer levels in [0, {self.levels}), got dtype {x.dtype}")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape or x.shape[0] < 1:
            raise ValueError(f"{name} must have shape [B, {', '.join(map(str, self.image_shape))}] for this model, "
                             f"got {tuple(x.shape)}")
        if x.min() < 0 or x.max() >= self.levels:
            raise ValueError(f"{name} values must lie in [0, {self.levels}) (levels={self.levels}), "
                             f"got [{int(x.min())}, {int(x.max())}]")

    def check_codes(self, codes, shape: Tuple[int, int], name: str = "codes") -> None:
        """TypeError/ValueError unless codes is a long map [B, h, w] in [0, self.codes)."""
        if not isinstance(codes, Tensor) or codes.dtype not in _INT_DTYPES:
            raise TypeError(f"{name} must be an integer tensor [B, {shape[0]}, {shape[1]}], got "
                            f"{getattr(codes, 'dtype', type(codes).__name__)}")
        if codes.dim() != 3 or tuple(codes.shape[1:]) != tuple(shape) or codes.shape[0] < 1:
            raise ValueError(f"{name} must have shape [B, {shape[0]}, {shape[1]}], got {tuple(codes.shape)}")
        if codes.min() < 0 or codes.max() >= self.codes:
            raise ValueError(f"{name} values must lie in [0, {self.codes}) (codes={self.codes}), "
                             f"got [{int(codes.min())}, {int(codes.max())}]")

    def _encoder_input(self, x: Tensor) -> Tensor:
        return scale_levels(x, self.levels, self._dtype())

    def _log_likelihood(self, x: Tensor, out: Tensor) -> Tensor:
        """log p(x | codes) [B] (nats) from the decoder's output [B, out_channels, H, W]."""
        C = self.image_shape[0]
        if self.decoder_kind == "logistic":
            return discretized_logistic_log_prob(x, out[:, :C], out[:, C:], self.levels)
        return -F.cross_entropy(self._logits(out), x.long(), reduction="none").flatten(1).sum(1)

    def _logits(self, out: Tensor) -> Tensor:
        """[B, levels * C, H, W] (channel-major) -> [B, levels, C, H, W]."""
        B, _, H, W = out.shape
        return out.view(B, self.image_shape[0], self.levels, H, W).transpose(1, 2)

    def _to_images(self, out: Tensor, sample: bool, generator: Optional[torch.Generator]) -> Tensor:
        """Decoder output -> long images [B, C, H, W]: a draw from p(x | codes) (``sample``) or,
        deterministically, the level nearest the logistic's mean / the arg-max level."""
        C = self.image_shape[0]
        if self.decoder_kind == "logistic":
            mean, log_scale = out[:, :C].float(), out[:, C:].float()
            if sample:
                return discretized_logistic_sample(mean, log_scale, self.levels, generator)
            return ((mean + 1) * ((self.levels - 1) / 2)).round().clamp(0, self.levels - 1).long()
        logits = self._logits(out).float()
        if sample:
            logits = logits + gumbel_noise(logits.shape, generator).to(logits.device)
        return logits.argmax(1)

    def _reconstruction_bits(self, x: Tensor, out: Tensor) -> Tensor:
        return -self._log_likelihood(x, out).float().mean() / (self.dims * math.log(2))

    @torch.no_grad()
    def sort_codes(self) -> None:
        """Re-index each codebook along its first principal component (code k+1 lies next to code
        k along the direction the codes spread most), keeping every per-code state (EMA sums,
        cluster sizes, dead-code counters) with its code.  Reconstructions do not change; code
        maps encoded before the call are stale.  Why: the Gated PixelCNN prior reads a code index
        as one scalar, so an order in which nearby indices are similar codes is easier for it to
        use than the arbitrary one training leaves (on the digits, ~0.2 bits/code lower test NLL
        for the demo's prior).  Call it after training the model, before ``fit_prior``."""
        for quantizer in (m for m in self.modules() if isinstance(m, VectorQuantizer)):
            codebook = quantizer.codebook.float()
            direction = torch.linalg.svd(codebook - codebook.mean(0), full_matrices=False).Vh[0]
            order = torch.argsort(codebook @ direction)
            for tensor in (*quantizer.parameters(recurse=False), *quantizer.buffers(recurse=False)):
                if tensor.dim() >= 1 and tensor.shape[0] == quantizer.num_codes:
                    tensor.copy_(tensor[order])

    @staticmethod
    def _check_prior(prior, name: str, shape: Tuple[int, int], levels: int, cond_channels: Optional[int]) -> None:
        expected = (1, *shape)
        if not isinstance(prior, nn.Module) or not hasattr(prior, "image_shape") or not hasattr(prior, "levels"):
            raise TypeError(f"{name} must be an autoregressive image model such as GatedPixelCNN(image_shape="
                            f"{expected}, levels={levels}), got {type(prior).__name__}")
        if tuple(prior.image_shape) != expected or prior.levels != levels:
            raise ValueError(f"{name} must model the code map: image_shape={expected} and levels={levels}, "
                             f"got image_shape={tuple(prior.image_shape)} and levels={prior.levels}")
        if cond_channels is not None and getattr(prior, "cond_channels", None) != cond_channels:
            raise ValueError(f"{name} must be conditioned on the top codes: build it with cond_channels="
                             f"{cond_channels} (make_prior(model, 'bottom')), got "
                             f"cond_channels={getattr(prior, 'cond_channels', None)}")


# --------------------------------------------------------------------------------- VQ-VAE

class VQVAE(_VQBase):
    """A VQ-VAE over integer images [B, C, H, W] in [0, levels).

    image_shape: (C, H, W) with H, W divisible by ``downsample`` (2 or 4); the code map is
    [B, H / downsample, W / downsample] over ``codes`` code vectors of ``code_dim`` dims.
    hidden: conv width; res_blocks: residual blocks in encoder and decoder. decoder: "logistic"
    (a discretised logistic per value) or "categorical" (a softmax over the levels per value).
    beta, ema, decay, dead_code_steps: the ``fastgen.nn.VectorQuantizer``'s (commitment weight,
    EMA codebook or a gradient-trained one, EMA decay, dead-code restarts).  See the module
    docstring for the math.
    """

    def __init__(self, image_shape: Sequence[int] = (1, 8, 8), levels: int = 17, hidden: int = 64, codes: int = 32,
                 code_dim: int = 16, downsample: int = 2, decoder: str = "logistic", res_blocks: int = 2,
                 beta: float = 0.25, ema: bool = True, decay: float = 0.99, dead_code_steps: Optional[int] = None):
        super().__init__()
        self._setup(image_shape, levels, hidden, codes, code_dim, downsample, decoder, res_blocks, beta, ema, decay,
                    dead_code_steps, factor_needed=downsample)
        C, H, W = self.image_shape
        self.code_shape: Tuple[int, int] = (H // downsample, W // downsample)
        self.encoder = _encoder(C, self.hidden, downsample, self.res_blocks)
        self.pre_quantize = nn.Conv2d(self.hidden, self.code_dim, 1)
        self.quantizer = VectorQuantizer(self.codes, self.code_dim, **self._vq_args)
        self.decoder = _decoder(self.code_dim, self.hidden, self.out_channels, downsample, self.res_blocks)

    def _z(self, images: Tensor) -> Tensor:
        """z_e [B, code_dim, h, w], the encoder's output before quantization."""
        self.check_images(images)
        return self.pre_quantize(self.encoder(self._encoder_input(images)))

    def loss(self, images: Tensor) -> VQLoss:
        """The training loss of a batch (``VQLoss``); in training mode it also updates the EMA
        codebook (and restarts dead codes) through the quantizer."""
        vq = self.quantizer(self._z(images))
        reconstruction = self._reconstruction_bits(images, self.decoder(vq.quantized))
        total = reconstruction + vq.commitment_loss + (0 if self.quantizer.ema else vq.codebook_loss)
        return VQLoss(total, reconstruction, vq.commitment_loss, vq.codebook_loss)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """The code map of each image: [B, h, w] long (the nearest code of each z_e vector; no
        codebook update, whatever the mode)."""
        z = self._z(images)
        codebook = self.quantizer.codebook.to(z.dtype)
        return nearest_code(z.movedim(1, -1), codebook)

    @torch.no_grad()
    def decode(self, codes: Tensor, sample: bool = False, generator: Optional[torch.Generator] = None) -> Tensor:
        """Code maps [B, h, w] -> images [B, C, H, W] long: the level nearest the decoder's mean
        (logistic) or the arg-max level (categorical), or a draw from p(x | codes) with
        ``sample=True`` (``generator`` for its noise)."""
        self.check_codes(codes, self.code_shape)
        out = self.decoder(_code_vectors(self.quantizer, codes, self._dtype()))
        return self._to_images(out, sample, generator)

    def reconstruct(self, images: Tensor, sample: bool = False, generator: Optional[torch.Generator] = None) -> Tensor:
        """decode(encode(images)): [B, C, H, W] long."""
        return self.decode(self.encode(images), sample, generator)

    def nll_bound(self, images: Tensor, prior: nn.Module, cond: Optional[Tensor] = None) -> NLLBound:
        """The upper bound on the NLL, -log p(x) <= -log p(x | z_q) - log p(z_q), in bits/dim
        (batch means) as ``NLLBound(total, reconstruction, prior)``: reconstruction bits/dim +
        the prior's bits for the code map / (C H W).  The autoencoder runs under no_grad (frozen);
        the prior's term carries its gradient, so a prior trains on it.  ``cond``: the prior's
        conditioning (e.g. class ids [B]) or None."""
        self._check_prior(prior, "prior", self.code_shape, self.codes, None)
        with torch.no_grad():
            codes = self.encode(images)
            out = self.decoder(_code_vectors(self.quantizer, codes, self._dtype()))
            reconstruction = self._reconstruction_bits(images, out)
        prior_bits = prior.loss(codes[:, None], cond) * math.prod(self.code_shape) / self.dims
        return NLLBound(reconstruction + prior_bits, reconstruction, prior_bits)

    @torch.no_grad()
    def bits_per_dim(self, images: Tensor, prior: nn.Module) -> Tensor:
        """Upper bound on the NLL in bits/dim (batch mean, a scalar): ``nll_bound(...).total``."""
        return self.nll_bound(images, prior).total

    @torch.no_grad()
    def sample(self, n: int, prior: nn.Module, cond: Optional[Tensor] = None, method: str = "fast",
               generator: Optional[torch.Generator] = None, temperature: float = 1.0, sample_pixels: bool = False,
               progress: Optional[Callable[[int], None]] = None, cuda_graph: bool = False) -> VQSample:
        """Draw ``n`` code maps from ``prior`` (a ``GatedPixelCNN(image_shape=(1, h, w),
        levels=codes, ...)``, e.g. from ``make_prior``) with ``fastgen.sampling.sample`` (method
        'fast' or 'naive', ``generator``, ``temperature`` and ``cuda_graph`` as there; ``cond``:
        the prior's conditioning, e.g. class ids [n]) and decode them (``decode``;
        ``sample_pixels`` draws from p(x | codes), with the same generator).  Returns
        ``VQSample(images, codes)``."""
        self._check_prior(prior, "prior", self.code_shape, self.codes, None)
        codes = _sample_codes(prior, n, cond, method, generator, temperature, progress, cuda_graph)
        return VQSample(self.decode(codes, sample_pixels, generator), codes)


def _sample_codes(prior, n, cond, method, generator, temperature, progress, cuda_graph=False) -> Tensor:
    """A code map [n, h, w] from a prior over [n, 1, h, w] (``fastgen.sampling.sample``)."""
    return _sample_autoregressive(prior, n, cond, method=method, generator=generator, temperature=temperature,
                                  progress=progress, cuda_graph=cuda_graph)[:, 0]


# --------------------------------------------------------------------------------- VQ-VAE-2

class VQVAE2(_VQBase):
    """A two-level VQ-VAE-2 over integer images [B, C, H, W] in [0, levels).

    The bottom code map is [B, H / downsample, W / downsample], the top one half that again
    (H, W divisible by 2 * downsample); each level has its own codebook of ``codes`` vectors of
    ``code_dim`` dims.  Other arguments as ``VQVAE``.  Priors: ``make_prior(model, "top")`` and
    ``make_prior(model, "bottom")`` (conditioned on ``bottom_condition(top codes)``); see the
    module docstring.
    """

    def __init__(self, image_shape: Sequence[int] = (1, 8, 8), levels: int = 17, hidden: int = 64, codes: int = 32,
                 code_dim: int = 16, downsample: int = 2, decoder: str = "logistic", res_blocks: int = 2,
                 beta: float = 0.25, ema: bool = True, decay: float = 0.99, dead_code_steps: Optional[int] = None):
        super().__init__()
        self._setup(image_shape, levels, hidden, codes, code_dim, downsample, decoder, res_blocks, beta, ema, decay,
                    dead_code_steps, factor_needed=2 * downsample)
        C, H, W = self.image_shape
        self.bottom_shape: Tuple[int, int] = (H // downsample, W // downsample)
        self.top_shape: Tuple[int, int] = (H // (2 * downsample), W // (2 * downsample))
        hid, D, blocks = self.hidden, self.code_dim, self.res_blocks
        self.encoder_bottom = _encoder(C, hid, downsample, blocks)
        self.encoder_top = _encoder(hid, hid, 2, blocks)
        self.pre_quantize_top = nn.Conv2d(hid, D, 1)
        self.quantizer_top = VectorQuantizer(self.codes, D, **self._vq_args)
        self.decoder_top = _decoder(D, hid, D, 2, blocks)           # q_t -> the bottom resolution
        self.pre_quantize_bottom = nn.Conv2d(hid + D, D, 1)
        self.quantizer_bottom = VectorQuantizer(self.codes, D, **self._vq_args)
        self.upsample_top = nn.ConvTranspose2d(D, D, 4, stride=2, padding=1)
        self.decoder = _decoder(2 * D, hid, self.out_channels, downsample, blocks)

    @property
    def bottom_cond_channels(self) -> int:
        """The size of the bottom prior's condition vector: code_dim * h_t * w_t."""
        return self.code_dim * math.prod(self.top_shape)

    def _top(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """(h_b [B, hidden, h_b, w_b], z_top [B, code_dim, h_t, w_t])."""
        self.check_images(images)
        h_b = self.encoder_bottom(self._encoder_input(images))
        return h_b, self.pre_quantize_top(self.encoder_top(h_b))

    def _z_bottom(self, h_b: Tensor, q_top: Tensor) -> Tensor:
        return self.pre_quantize_bottom(torch.cat([h_b, self.decoder_top(q_top)], 1))

    def _decode_vectors(self, q_top: Tensor, q_bottom: Tensor) -> Tensor:
        return self.decoder(torch.cat([q_bottom, self.upsample_top(q_top)], 1))

    def loss(self, images: Tensor) -> VQLoss:
        """The training loss of a batch, both levels' VQ terms summed (``VQLoss``); in training
        mode it also updates both EMA codebooks."""
        h_b, z_top = self._top(images)
        top = self.quantizer_top(z_top)
        bottom = self.quantizer_bottom(self._z_bottom(h_b, top.quantized))
        reconstruction = self._reconstruction_bits(images, self._decode_vectors(top.quantized, bottom.quantized))
        commitment = top.commitment_loss + bottom.commitment_loss
        codebook = top.codebook_loss + bottom.codebook_loss
        total = reconstruction + commitment + (0 if self.quantizer_top.ema else codebook)
        return VQLoss(total, reconstruction, commitment, codebook)

    @torch.no_grad()
    def encode(self, images: Tensor) -> VQCodes:
        """``VQCodes(top [B, h_t, w_t], bottom [B, h_b, w_b])`` (long; no codebook update)."""
        h_b, z_top = self._top(images)
        top = nearest_code(z_top.movedim(1, -1), self.quantizer_top.codebook.to(z_top.dtype))
        z_bottom = self._z_bottom(h_b, _code_vectors(self.quantizer_top, top, self._dtype()))
        bottom = nearest_code(z_bottom.movedim(1, -1), self.quantizer_bottom.codebook.to(z_bottom.dtype))
        return VQCodes(top, bottom)

    def _checked_vectors(self, codes) -> Tuple[Tensor, Tensor]:
        if not isinstance(codes, tuple) or len(codes) != 2:
            raise TypeError(f"codes must be VQCodes(top, bottom), got {type(codes).__name__}")
        top, bottom = codes
        self.check_codes(top, self.top_shape, "codes.top")
        self.check_codes(bottom, self.bottom_shape, "codes.bottom")
        if top.shape[0] != bottom.shape[0]:
            raise ValueError(f"codes.top and codes.bottom must have one batch size, got {top.shape[0]} and "
                             f"{bottom.shape[0]}")
        dtype = self._dtype()
        return (_code_vectors(self.quantizer_top, top, dtype),
                _code_vectors(self.quantizer_bottom, bottom, dtype))

    @torch.no_grad()
    def decode(self, codes: VQCodes, sample: bool = False, generator: Optional[torch.Generator] = None) -> Tensor:
        """``VQCodes`` -> images [B, C, H, W] long (deterministic or drawn, as ``VQVAE.decode``)."""
        q_top, q_bottom = self._checked_vectors(codes)
        return self._to_images(self._decode_vectors(q_top, q_bottom), sample, generator)

    def reconstruct(self, images: Tensor, sample: bool = False, generator: Optional[torch.Generator] = None) -> Tensor:
        """decode(encode(images)): [B, C, H, W] long."""
        return self.decode(self.encode(images), sample, generator)

    @torch.no_grad()
    def bottom_condition(self, top: Tensor) -> Tensor:
        """The bottom prior's condition for top code maps [B, h_t, w_t]: their code vectors
        flattened, [B, code_dim * h_t * w_t] (``bottom_cond_channels``), in the model's dtype."""
        self.check_codes(top, self.top_shape, "top")
        return _code_vectors(self.quantizer_top, top, self._dtype()).flatten(1)

    def nll_bound(self, images: Tensor, top_prior: nn.Module, bottom_prior: nn.Module,
                  cond: Optional[Tensor] = None) -> NLLBound:
        """The upper bound on the NLL in bits/dim (batch means) as ``NLLBound(total,
        reconstruction, prior)``: reconstruction bits/dim + both priors' bits for the code maps /
        (C H W).  As ``VQVAE.nll_bound``: the autoencoder frozen (no_grad), the priors' terms
        carry their gradients.  ``cond``: the top prior's conditioning or None."""
        self._check_prior(top_prior, "top_prior", self.top_shape, self.codes, None)
        self._check_prior(bottom_prior, "bottom_prior", self.bottom_shape, self.codes, self.bottom_cond_channels)
        with torch.no_grad():
            codes = self.encode(images)
            reconstruction = self._reconstruction_bits(images, self._decode_vectors(*self._checked_vectors(codes)))
            bottom_cond = self.bottom_condition(codes.top)
        prior_bits = (top_prior.loss(codes.top[:, None], cond) * math.prod(self.top_shape)
                      + bottom_prior.loss(codes.bottom[:, None], bottom_cond) * math.prod(self.bottom_shape))
        prior_bits = prior_bits / self.dims
        return NLLBound(reconstruction + prior_bits, reconstruction, prior_bits)

    @torch.no_grad()
    def bits_per_dim(self, images: Tensor, top_prior: nn.Module, bottom_prior: nn.Module) -> Tensor:
        """Upper bound on the NLL in bits/dim (batch mean): ``nll_bound(...).total``."""
        return self.nll_bound(images, top_prior, bottom_prior).total

    @torch.no_grad()
    def sample(self, n: int, top_prior: nn.Module, bottom_prior: nn.Module, cond: Optional[Tensor] = None,
               method: str = "fast", generator: Optional[torch.Generator] = None, temperature: float = 1.0,
               sample_pixels: bool = False, cuda_graph: bool = False) -> VQSample:
        """Draw ``n`` top maps from ``top_prior`` (``cond``: its conditioning, or None), then the
        bottom maps from ``bottom_prior`` given ``bottom_condition(top)``, both with
        ``fastgen.sampling.sample`` (method, generator -- used for both, in that order --,
        temperature, cuda_graph), and decode.  Returns ``VQSample(images, VQCodes(top, bottom))``."""
        self._check_prior(top_prior, "top_prior", self.top_shape, self.codes, None)
        self._check_prior(bottom_prior, "bottom_prior", self.bottom_shape, self.codes, self.bottom_cond_channels)
        top = _sample_codes(top_prior, n, cond, method, generator, temperature, None, cuda_graph)
        bottom = _sample_codes(bottom_prior, n, self.bottom_condition(top), method, generator, temperature, None,
                               cuda_graph)
        codes = VQCodes(top, bottom)
        return VQSample(self.decode(codes, sample_pixels, generator), codes)


# --------------------------------------------------------------------------------- priors

def make_prior(model: Union[VQVAE, VQVAE2], level: Optional[str] = None, channels: int = 64, layers: int = 6,
               num_classes: Optional[int] = None, **kwargs) -> GatedPixelCNN:
    """A Gated PixelCNN prior over a model's code map: ``GatedPixelCNN(image_shape=(1, h, w),
    levels=model.codes, channels, layers, ...)`` on the model's device.  VQVAE: ``level`` None;
    VQVAE2: ``level`` "top" (optionally class-conditional through ``num_classes``) or "bottom"
    (conditioned on the top codes: ``cond_channels=model.bottom_cond_channels``)."""
    if isinstance(model, VQVAE2):
        if level not in ("top", "bottom"):
            raise ValueError(f"level must be 'top' or 'bottom' for a VQVAE2, got {level!r}")
        shape = model.top_shape if level == "top" else model.bottom_shape
        if level == "bottom":
            if num_classes is not None:
                raise ValueError("the bottom prior is conditioned on the top codes; num_classes applies to the top")
            kwargs["cond_channels"] = model.bottom_cond_channels
    elif isinstance(model, VQVAE):
        if level is not None:
            raise ValueError(f"a VQVAE has one code map: level must be None, got {level!r}")
        shape = model.code_shape
    else:
        raise TypeError(f"model must be a VQVAE or VQVAE2, got {type(model).__name__}")
    prior = GatedPixelCNN(image_shape=(1, *shape), levels=model.codes, channels=channels, layers=layers,
                          num_classes=num_classes, **kwargs)
    return prior.to(next(model.parameters()).device)


@torch.no_grad()
def _prior_data(model, images: Tensor, level: Optional[str], batch: int = 512) -> Tuple[Tensor, Optional[Tensor]]:
    """(code maps [N, 1, h, w], the prior's condition or None) of ``images`` for ``level``."""
    was_training = model.training
    model.eval()
    try:
        parts = [model.encode(images[i:i + batch]) for i in range(0, len(images), batch)]
    finally:
        model.train(was_training)
    if isinstance(model, VQVAE):
        return torch.cat(parts)[:, None], None
    top = torch.cat([p.top for p in parts])
    if level == "top":
        return top[:, None], None
    bottom = torch.cat([p.bottom for p in parts])
    return bottom[:, None], model.bottom_condition(top)


def fit_prior(model: Union[VQVAE, VQVAE2], images: Tensor, prior: nn.Module, steps: int,
              level: Optional[str] = None, labels: Optional[Tensor] = None, batch: int = 64, lr: float = 3e-3,
              generator: Optional[torch.Generator] = None, progress: bool = False) -> List[float]:
    """Train ``prior`` (e.g. from ``make_prior``) by Adam (one-cycle schedule to ``lr``) on the
    code maps of ``images`` [N, C, H, W] (encoded once, in eval mode), ``steps`` minibatches of
    ``batch``.  ``level``: None (VQVAE), "top" or "bottom" (VQVAE2; the bottom prior is
    conditioned on ``model.bottom_condition`` of the top codes).  ``labels`` [N]: class ids for
    a class-conditional prior (VQVAE, or the VQVAE2's top).  ``generator``: the minibatch picks.
    Returns the training losses (bits per code), one per step."""
    if isinstance(model, VQVAE2):
        if level not in ("top", "bottom"):
            raise ValueError(f"level must be 'top' or 'bottom' for a VQVAE2, got {level!r}")
        shape, cond_channels = ((model.top_shape, None) if level == "top"
                                else (model.bottom_shape, model.bottom_cond_channels))
    elif isinstance(model, VQVAE):
        if level is not None:
            raise ValueError(f"a VQVAE has one code map: level must be None, got {level!r}")
        shape, cond_channels = model.code_shape, None
    else:
        raise TypeError(f"model must be a VQVAE or VQVAE2, got {type(model).__name__}")
    _VQBase._check_prior(prior, "prior", shape, model.codes, cond_channels)
    check_int(steps, "steps", 0)
    check_int(batch, "batch", 1)
    model.check_images(images)
    codes, cond = _prior_data(model, images, level)
    if labels is not None:
        if cond is not None:
            raise ValueError("labels condition a top-level or single-level prior, not the bottom prior")
        if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be class ids [{images.shape[0]}] (one per image), got "
                             f"{tuple(getattr(labels, 'shape', ()))}")
        cond = labels.to(codes.device)
    opt = torch.optim.Adam(prior.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
    losses: List[float] = []
    iterator = range(steps)
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, desc="prior", unit="step", mininterval=0.5)
    prior.train()
    for _ in iterator:
        pick = torch.randint(len(codes), (min(batch, len(codes)),), generator=generator).to(codes.device)
        loss = prior.loss(codes[pick], None if cond is None else cond[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress:
            iterator.set_postfix(bits_per_code=f"{losses[-1]:.3f}", refresh=False)
    prior.eval()
    return losses


# --------------------------------------------------------------------------------- two stages, one model

STAGES = ("autoencoder", "prior")


class StageLoss(NamedTuple):
    """One training step of a ``VQVAEWithPrior`` / ``VQVAE2WithPriors``: ``total`` (the scalar
    to minimise), the ``stage`` ("autoencoder" or "prior") and its terms: ``autoencoder`` (the
    ``VQLoss``) in stage 1, ``bound`` (the ``NLLBound``) in stage 2; the other one is None."""
    total: Tensor
    stage: str
    autoencoder: Optional[VQLoss]
    bound: Optional[NLLBound]

    def log_terms(self) -> Dict[str, Union[str, Tensor]]:
        """The stage and its terms for a training log (detached scalars): stage 1 the
        reconstruction bits/dim and the commitment term; stage 2 the NLL bound in bits/dim and
        the prior's share of it."""
        if self.stage == "autoencoder":
            return {"stage": self.stage, "reconstruction bits/dim": self.autoencoder.reconstruction.detach(),
                    "commitment": self.autoencoder.commitment.detach()}
        return {"stage": self.stage, "bits/dim": self.bound.total.detach(), "prior bits/dim": self.bound.prior.detach()}


def _refresh_host_steps(module: "_TwoStage", incompatible_keys) -> None:
    """load_state_dict's post-hook: the host copy of the loaded step count."""
    module._host_steps(int(module.trained_steps))


class _TwoStage(nn.Module):
    """What VQVAEWithPrior and VQVAE2WithPriors share: the step counter and the stage schedule,
    the per-stage loss, sampling through the prior(s).

    ``trained_steps`` (an int64 buffer, so checkpoints and resumes carry it) counts the
    optimizer steps taken (``count_step`` after each); ``stage``, the stage of the next step, is
    "autoencoder" while ``trained_steps < prior_start``, then "prior".  The model keeps a host
    copy of the count (refreshed by ``load_state_dict``), so choosing the stage never waits for
    the device, and ``stage`` is a plain attribute that changes once (torch.compile recompiles
    once).

    Stage 1 trains the autoencoder on its VQ loss (EMA codebook updates in training mode);
    stage 2 trains the prior(s) on the NLL bound in bits/dim with the autoencoder frozen
    (``nll_bound``: codes and reconstruction under no_grad), so only the prior parameters get
    gradients.  With ``sort_codes``, the step that ends stage 1 re-indexes the codebook(s)
    (``_VQBase.sort_codes``) so that the prior, which reads a code index as a scalar, sees
    nearby indices for similar codes.
    """

    autoencoder: Union["VQVAE", "VQVAE2"]

    def _setup_stages(self, prior_start: int, sort_codes: bool, num_classes: Optional[int]) -> None:
        self.prior_start = check_int(prior_start, "prior_start", 0)
        self.sort_at_boundary = bool(sort_codes)
        self.num_classes = None if num_classes is None else check_int(num_classes, "num_classes", 1)
        self.register_buffer("trained_steps", torch.zeros((), dtype=torch.int64))
        self._host_steps(0)
        self.register_load_state_dict_post_hook(_refresh_host_steps)

    def _host_steps(self, steps: int) -> None:
        self._steps = steps                                   # trained_steps on the host
        self.stage = STAGES[steps >= self.prior_start]        # the stage of the next step

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return self.autoencoder.image_shape

    @property
    def levels(self) -> int:
        return self.autoencoder.levels

    @torch.no_grad()
    def set_trained_steps(self, steps: int) -> None:
        """Set the step counter (and with it the stage), e.g. to start in stage 2."""
        self.trained_steps.fill_(check_int(steps, "steps", 0))
        self._host_steps(steps)

    @torch.no_grad()
    def count_step(self) -> None:
        """Call after every optimizer step: one more step trained; the step that ends stage 1
        sorts the codebooks (``sort_codes``)."""
        self.trained_steps.add_(1)
        self._host_steps(self._steps + 1)
        if self.sort_at_boundary and self._steps == self.prior_start:
            self.autoencoder.sort_codes()

    def loss(self, images: Tensor, labels: Optional[Tensor] = None) -> StageLoss:
        """The loss of the current stage for images [B, C, H, W] (long, [0, levels)) and, for a
        class-conditional prior, class ids ``labels`` [B] (read in stage 2 only)."""
        if self.stage == "autoencoder":
            vq = self.autoencoder.loss(images)
            return StageLoss(vq.total, "autoencoder", vq, None)
        bound = self._nll_bound(images, labels)
        return StageLoss(bound.total, "prior", None, bound)

    def _nll_bound(self, images: Tensor, labels: Optional[Tensor]) -> NLLBound:
        raise NotImplementedError


class VQVAEWithPrior(_TwoStage):
    """A ``VQVAE`` and a Gated PixelCNN prior over its code map, trained in two stages as one
    model (what ``fastgen train vqvae`` trains; see ``_TwoStage`` for the schedule).

    image_shape, levels and ``**autoencoder`` (hidden, codes, code_dim, downsample, decoder,
    res_blocks, beta, ema, decay, dead_code_steps): the ``VQVAE``'s arguments.  prior: the
    prior's ``GatedPixelCNN`` arguments (channels, layers, kernel_size, head_channels; see
    ``make_prior``).  prior_start: the number of autoencoder steps (stage 1); every later step
    trains the prior.  num_classes: a class-conditional prior (class ids [B]) or None.
    ``sample`` draws codes from the prior and decodes them."""

    def __init__(self, image_shape: Sequence[int] = (1, 8, 8), levels: int = 17, prior: Optional[dict] = None,
                 prior_start: int = 600, sort_codes: bool = True, num_classes: Optional[int] = None, **autoencoder):
        super().__init__()
        self._setup_stages(prior_start, sort_codes, num_classes)
        self.autoencoder = VQVAE(image_shape, levels, **autoencoder)
        self.prior = make_prior(self.autoencoder, num_classes=self.num_classes, **(prior or {}))

    def _nll_bound(self, images: Tensor, labels: Optional[Tensor]) -> NLLBound:
        return self.autoencoder.nll_bound(images, self.prior, labels)

    @torch.no_grad()
    def sample(self, n: int, cond: Optional[Tensor] = None, method: str = "fast",
               generator: Optional[torch.Generator] = None, temperature: float = 1.0, sample_pixels: bool = False,
               cuda_graph: bool = False) -> VQSample:
        """``VQSample(images [n, C, H, W] long, codes [n, h, w])`` through the prior
        (``VQVAE.sample``; ``cond``: class ids [n] for a class-conditional prior)."""
        return self.autoencoder.sample(n, self.prior, cond, method, generator, temperature, sample_pixels,
                                       cuda_graph=cuda_graph)


class VQVAE2WithPriors(_TwoStage):
    """A ``VQVAE2`` and its two Gated PixelCNN priors (the top map's; the bottom map's,
    conditioned on the top codes), trained in two stages as one model (``fastgen train
    vqvae2``; the schedule as ``_TwoStage``: stage 2 trains both priors at once, on the NLL
    bound, whose top and bottom terms involve disjoint parameters).  Arguments as
    ``VQVAEWithPrior``, ``**autoencoder`` the ``VQVAE2``'s; ``prior`` configures both priors;
    num_classes conditions the top prior."""

    def __init__(self, image_shape: Sequence[int] = (1, 8, 8), levels: int = 17, prior: Optional[dict] = None,
                 prior_start: int = 600, sort_codes: bool = True, num_classes: Optional[int] = None, **autoencoder):
        super().__init__()
        self._setup_stages(prior_start, sort_codes, num_classes)
        self.autoencoder = VQVAE2(image_shape, levels, **autoencoder)
        self.top_prior = make_prior(self.autoencoder, "top", num_classes=self.num_classes, **(prior or {}))
        self.bottom_prior = make_prior(self.autoencoder, "bottom", **(prior or {}))

    def _nll_bound(self, images: Tensor, labels: Optional[Tensor]) -> NLLBound:
        return self.autoencoder.nll_bound(images, self.top_prior, self.bottom_prior, labels)

    @torch.no_grad()
    def sample(self, n: int, cond: Optional[Tensor] = None, method: str = "fast",
               generator: Optional[torch.Generator] = None, temperature: float = 1.0, sample_pixels: bool = False,
               cuda_graph: bool = False) -> VQSample:
        """``VQSample(images [n, C, H, W] long, VQCodes(top, bottom))`` through both priors
        (``VQVAE2.sample``; ``cond``: class ids [n] for a class-conditional top prior)."""
        return self.autoencoder.sample(n, self.top_prior, self.bottom_prior, cond, method, generator, temperature,
                                       sample_pixels, cuda_graph=cuda_graph)
