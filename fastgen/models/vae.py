"""The variational autoencoder (Kingma & Welling 2014; Rezende et al. 2014) with its estimators:
the ELBO (analytic Gaussian KL), the importance-weighted bound (IWAE, Burda et al. 2016), the
beta-VAE objective (Higgins et al. 2017) and semi-amortised posterior refinement (SA-VAE,
Kim et al. 2018).  The math shared with the hierarchical VAE lives in ``fastgen.nn.latent``.

Model: p(z) = N(0, I) over ``latent`` dims, q(z|x) = N(mu(x), diag(exp(log_var(x)))), and a
decoder p(x|z) of one of three kinds:

- ``"logistic"``: integer data in [0, levels) (images as ``fastgen.data`` returns them: 17 levels
  for ``load_digits``), one discretised logistic per value (``fastgen.nn.latent``).  Likelihoods
  are probabilities of the integer data, so ``bits_per_dim`` is an upper bound on the discrete
  NLL in the units of ``GatedPixelCNN.loss`` and the flows' ``bits_per_dim`` (bits per sub-pixel
  over L levels) and compares directly with them.
- ``"bernoulli"``: binary data (values 0/1, integer or float), logits per value.
- ``"gaussian"``: real-valued float data, N(mean(z), diag(exp(x_log_var))) with a learned
  per-value log-variance ``x_log_var`` (a parameter of the data's shape, not a function of z).

The encoder sees integer data scaled to [-1, 1] (``scale_levels``), binary data as 2x - 1, real
data as it is.  Images ``image_shape=(C, H, W)`` (H, W divisible by 4) get a convolutional
encoder and decoder of width ``hidden`` (an int); vectors ``image_shape=D`` get MLPs with
``hidden`` a sequence of widths (``()``: linear maps, e.g. a linear-Gaussian model).

Estimators, for data x [B, ...] and a posterior q (the encoder's, or a refined one):

    ELBO     = E_q[log p(x|z)] - beta KL(q || p(z))                 (1 sample per row unless ``samples``)
    IWAE_k   = log (1/k) sum_i p(x, z_i) / q(z_i|x),  z_i ~ q      (log-mean-exp in float32, or float64)
    bits/dim = -bound / (D log 2),  D = values per example
"""
import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgen.nn.latent import (ELBO, DiagonalGaussian, discretized_logistic_log_prob, discretized_logistic_sample,
                               gaussian_kl, gaussian_log_prob, log_mean_exp, scale_levels)
from fastgen.ops import _validate

__all__ = ["ELBO", "VAE"]

_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
DECODERS = ("bernoulli", "gaussian", "logistic")
REFINE_GRADS = ("unrolled", "stop")


def check_int(value, name: str, minimum: int) -> int:
    """``value`` as an int >= minimum, or a TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_float(value, name: str, positive: bool = False) -> float:
    """``value`` as a finite float >= 0 (> 0 if ``positive``), or an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {'>' if positive else '>='} 0, got {value}")
    return float(value)


class VAE(nn.Module):
    """A VAE over images [B, C, H, W] or vectors [B, D].

    image_shape: (C, H, W) (convolutional encoder/decoder; H, W divisible by 4) or an int D (MLPs).
    latent: the number of latent dims. hidden: conv width (images, int) or MLP widths (vectors,
    an int or a sequence; ``()`` makes encoder and decoder linear). decoder: "logistic" (integer
    data, needs ``levels``), "bernoulli" (binary data) or "gaussian" (real data); see the module
    docstring. beta: the default KL weight of ``elbo``/``loss`` (1: the ELBO; beta-VAE otherwise).
    """

    def __init__(self, image_shape: Union[int, Sequence[int]], latent: int = 16,
                 hidden: Union[int, Sequence[int], None] = None, decoder: str = "logistic",
                 levels: Optional[int] = None, beta: float = 1.0):
        super().__init__()
        self.latent = check_int(latent, "latent", 1)
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.decoder_kind = decoder
        if decoder == "logistic":
            if levels is None:
                raise ValueError("decoder='logistic' models integer data: pass levels (e.g. 17 for load_digits)")
            self.levels = check_int(levels, "levels", 2)
        elif levels is not None:
            raise ValueError(f"levels is only used by decoder='logistic', got levels={levels} with {decoder!r}")
        else:
            self.levels = None
        self.beta = check_float(beta, "beta")
        if isinstance(image_shape, int) and not isinstance(image_shape, bool):
            self.data_shape: Tuple[int, ...] = (check_int(image_shape, "image_shape", 1),)
        else:
            shape = tuple(image_shape)
            if len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape):
                raise ValueError(f"image_shape must be (C, H, W) or an int D, got {image_shape!r}")
            if shape[1] % 4 or shape[2] % 4:
                raise ValueError(f"image_shape (C, H, W) needs H and W divisible by 4 (two stride-2 convs), "
                                 f"got {shape}")
            self.data_shape = shape
        self.is_image = len(self.data_shape) == 3
        per_value = 2 if decoder == "logistic" else 1          # (mean, log-scale) or (logit | mean)
        if self.is_image:
            width = 32 if hidden is None else check_int(hidden, "hidden", 1)
            C, H, W = self.data_shape
            flat = 2 * width * (H // 4) * (W // 4)
            self.encoder = nn.Sequential(
                nn.Conv2d(C, width, 3, padding=1), nn.ELU(),
                nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.ELU(),
                nn.Conv2d(2 * width, 2 * width, 4, stride=2, padding=1), nn.ELU(),
                nn.Flatten(), nn.Linear(flat, 2 * self.latent))
            self.decoder = nn.Sequential(
                nn.Linear(self.latent, flat), nn.ELU(), nn.Unflatten(1, (2 * width, H // 4, W // 4)),
                nn.ConvTranspose2d(2 * width, 2 * width, 4, stride=2, padding=1), nn.ELU(),
                nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.ELU(),
                nn.Conv2d(width, per_value * C, 3, padding=1))
        else:
            widths = (256,) if hidden is None else ((hidden,) if isinstance(hidden, int) else tuple(hidden))
            for i, w in enumerate(widths):
                check_int(w, f"hidden[{i}]", 1)
            D = self.data_shape[0]
            self.encoder = _mlp(D, widths, 2 * self.latent)
            self.decoder = _mlp(self.latent, widths[::-1], per_value * D)
        self.x_log_var = nn.Parameter(torch.zeros(self.data_shape)) if decoder == "gaussian" else None

    @property
    def dims(self) -> int:
        """D, the number of values per example (the bits/dim denominator)."""
        return math.prod(self.data_shape)

    # ----------------------------------------------------------------------------- checks
    def check_data(self, x, name: str = "x") -> None:
        """TypeError/ValueError unless x is a batch [B, *data_shape] this decoder models."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a tensor [B, {', '.join(map(str, self.data_shape))}], got "
                            f"{type(x).__name__}")
        if x.dim() != 1 + len(self.data_shape) or tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"{name} must have shape [B, {', '.join(map(str, self.data_shape))}] for this model, "
                             f"got {tuple(x.shape)}")
        if self.decoder_kind == "logistic":
            if x.dtype not in _INT_DTYPES:
                raise TypeError(f"{name} must hold integer levels in [0, {self.levels}) for decoder='logistic', "
                                f"got dtype {x.dtype}")
            _validate.ids_in_range(f"{name} values", x, self.levels, f" (levels={self.levels})")
        elif self.decoder_kind == "bernoulli":
            if x.numel() and not ((x == 0) | (x == 1)).all():
                raise ValueError(f"{name} must be binary (values 0 and 1) for decoder='bernoulli'; binarise "
                                 f"integer images first, e.g. (images >= levels // 2)")
        else:
            if not x.is_floating_point():
                raise TypeError(f"{name} must be a float tensor for decoder='gaussian', got dtype {x.dtype}")
            if not torch.isfinite(x).all():
                raise ValueError(f"{name} must be finite for decoder='gaussian'")

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _encoder_input(self, x: Tensor) -> Tensor:
        if self.decoder_kind == "logistic":
            return scale_levels(x, self.levels, self._dtype())
        if self.decoder_kind == "bernoulli":
            return x.to(self._dtype()) * 2 - 1
        return x.to(self._dtype())

    # ----------------------------------------------------------------------------- model
    def encode(self, x: Tensor) -> DiagonalGaussian:
        """q(z|x): ``DiagonalGaussian`` with mean and log_var [B, latent]."""
        self.check_data(x)
        mean, log_var = self.encoder(self._encoder_input(x)).chunk(2, dim=1)
        return DiagonalGaussian(mean, log_var)

    def decode(self, z: Tensor) -> Tensor:
        """The decoder's raw output for latents z [N, latent]: [N, P, *spatial] (images) or
        [N, P * D] (vectors), P = 2 (logistic: means then log-scales) or 1 (logits / means)."""
        return self.decoder(z)

    def _split(self, out: Tensor) -> Tuple[Tensor, Tensor]:
        """Decoder output -> (location, log-scale) of the data's shape each; the log-scale is
        ``x_log_var`` (gaussian) or None (bernoulli)."""
        n = out.shape[0]
        if self.decoder_kind == "logistic":
            a, b = out.reshape(n, 2, -1).unbind(1)
            return a.reshape(n, *self.data_shape), b.reshape(n, *self.data_shape)
        loc = out.reshape(n, *self.data_shape)
        return loc, (self.x_log_var.expand_as(loc) if self.x_log_var is not None else None)

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x|z) [N] for data x [N, ...] (checked by the caller) and latents z [N, latent]."""
        loc, scale = self._split(self.decode(z))
        if self.decoder_kind == "logistic":
            return discretized_logistic_log_prob(x, loc, scale, self.levels)
        if self.decoder_kind == "bernoulli":
            bce = F.binary_cross_entropy_with_logits(loc, x.to(loc.dtype), reduction="none")
            return -bce.reshape(x.shape[0], -1).sum(1)
        return gaussian_log_prob(x.to(loc.dtype), loc, scale)

    def _draw(self, out: Tensor, generator: Optional[torch.Generator], mean: bool) -> Tensor:
        loc, scale = self._split(out)
        if self.decoder_kind == "logistic":
            if mean:
                return ((loc.clamp(-1, 1) + 1) * ((self.levels - 1) / 2)).round().long()
            return discretized_logistic_sample(loc, scale, self.levels, generator)
        if self.decoder_kind == "bernoulli":
            p = torch.sigmoid(loc)
            return p if mean else torch.bernoulli(p, generator=generator)
        if mean:
            return loc
        return DiagonalGaussian(loc, scale).rsample(generator)

    # ----------------------------------------------------------------------------- estimators
    def _elbo_of(self, x: Tensor, q: DiagonalGaussian, beta: float, samples: int,
                 generator: Optional[torch.Generator]) -> ELBO:
        """The ELBO of posterior q for data x (checked), reconstruction averaged over ``samples`` draws."""
        B = x.shape[0]
        rep = DiagonalGaussian(q.mean.repeat(samples, 1), q.log_var.repeat(samples, 1))
        z = rep.rsample(generator)
        rec = self.log_likelihood(x.repeat(samples, *([1] * (x.dim() - 1))), z).view(samples, B).mean(0)
        kl = gaussian_kl(q)
        return ELBO(rec - beta * kl, rec, kl)

    def refine_posterior(self, x: Tensor, steps: int, lr: float, posterior: Optional[DiagonalGaussian] = None,
                         unrolled: bool = False, samples: int = 1,
                         generator: Optional[torch.Generator] = None) -> DiagonalGaussian:
        """SA-VAE refinement (Kim et al. 2018): ``steps`` gradient-ascent steps on each row's
        variational parameters lambda = (mean, log_var), starting from ``posterior`` (default:
        the encoder's q(z|x)):

            lambda_{k+1} = lambda_k + lr * d ELBO(lambda_k; x) / d lambda_k

        with the ELBO (beta = 1) estimated from ``samples`` fresh reparameterised draws per step.
        Rows are independent (the summed ELBO's gradient w.r.t. a row's lambda is that row's).
        ``unrolled=False``: the result is detached (no gradient reaches the encoder or the
        decoder through the steps); ``unrolled=True``: the steps are differentiable
        (``create_graph``), so the result carries the gradient back through every step and the
        initial point to the encoder, as in the paper (which approximates those Hessian-vector
        products by finite differences; here they are exact, by double backward)."""
        self.check_data(x)
        check_int(steps, "steps", 0)
        lr = check_float(lr, "lr", positive=True)
        check_int(samples, "samples", 1)
        q = self.encode(x) if posterior is None else posterior
        if not isinstance(q, DiagonalGaussian):
            raise TypeError(f"posterior must be a DiagonalGaussian, got {type(q).__name__}")
        if tuple(q.mean.shape) != (x.shape[0], self.latent) or q.log_var.shape != q.mean.shape:
            raise ValueError(f"posterior mean and log_var must be [B, {self.latent}] = [{x.shape[0]}, {self.latent}], "
                             f"got {tuple(q.mean.shape)} and {tuple(q.log_var.shape)}")
        with torch.enable_grad():
            mean, log_var = q
            if not unrolled or not mean.requires_grad:
                mean = mean.detach().requires_grad_()
            if not unrolled or not log_var.requires_grad:
                log_var = log_var.detach().requires_grad_()
            for _ in range(steps):
                elbo = self._elbo_of(x, DiagonalGaussian(mean, log_var), 1.0, samples, generator).elbo.sum()
                g_mean, g_log_var = torch.autograd.grad(elbo, (mean, log_var), create_graph=unrolled)
                mean, log_var = mean + lr * g_mean, log_var + lr * g_log_var
        if not unrolled:
            mean, log_var = mean.detach(), log_var.detach()
        return DiagonalGaussian(mean, log_var)

    def elbo(self, x: Tensor, beta: Optional[float] = None, refine_steps: int = 0, refine_lr: float = 0.01,
             refine_grad: str = "unrolled", posterior: Optional[DiagonalGaussian] = None, samples: int = 1,
             generator: Optional[torch.Generator] = None) -> ELBO:
        """``ELBO`` (elbo, reconstruction, kl), each [B] in nats, for data x [B, *data_shape]:

            elbo = E_q[log p(x|z)] - beta * KL(q(z|x) || N(0, I))

        KL analytic, the expectation from ``samples`` reparameterised draws per row.  ``beta``
        (default: the model's) weights the KL (beta-VAE; beta = 1 is the ELBO, a bound on log p(x)).
        ``posterior``: evaluate this q instead of the encoder's.  ``refine_steps`` > 0: first refine
        q with ``refine_posterior`` (SA-VAE) at step size ``refine_lr``; ``refine_grad`` says how the
        gradient reaches the encoder: "unrolled" (through the steps and the initial point, as in
        Kim et al. 2018) or "stop" (the refined q is detached: this ELBO trains the decoder only)."""
        self.check_data(x)
        beta = self.beta if beta is None else check_float(beta, "beta")
        check_int(refine_steps, "refine_steps", 0)
        check_int(samples, "samples", 1)
        if refine_grad not in REFINE_GRADS:
            raise ValueError(f"refine_grad must be one of {REFINE_GRADS}, got {refine_grad!r}")
        q = self.encode(x) if posterior is None else posterior
        if refine_steps:
            q = self.refine_posterior(x, refine_steps, refine_lr, posterior=q, unrolled=refine_grad == "unrolled",
                                      generator=generator)
        return self._elbo_of(x, q, beta, samples, generator)

    def iwae_bound(self, x: Tensor, k: int, posterior: Optional[DiagonalGaussian] = None,
                   generator: Optional[torch.Generator] = None) -> Tensor:
        """The importance-weighted bound (Burda et al. 2016) [B], nats:

            IWAE_k = log (1/k) sum_{i=1..k} p(x|z_i) p(z_i) / q(z_i|x),   z_i ~ q(z|x)

        (``posterior``: this q instead of the encoder's).  The log-weights are combined by
        ``log_mean_exp`` in float32 (float64 for a float64 model).  k = 1 is a one-sample ELBO
        with a Monte-Carlo KL; E[IWAE_k] rises with k towards log p(x)."""
        self.check_data(x)
        check_int(k, "k", 1)
        q = self.encode(x) if posterior is None else posterior
        B = x.shape[0]
        rep = DiagonalGaussian(q.mean.repeat(k, 1), q.log_var.repeat(k, 1))
        z = rep.rsample(generator)                                             # [k * B, latent]
        log_px = self.log_likelihood(x.repeat(k, *([1] * (x.dim() - 1))), z)
        log_pz = gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z))
        log_w = (log_px + log_pz - rep.log_prob(z)).view(k, B)
        return log_mean_exp(log_w, dim=0)

    def bits_per_dim(self, x: Tensor, k: int = 1, generator: Optional[torch.Generator] = None) -> Tensor:
        """-bound / (D log 2) [B]: the ELBO (k = 1) or IWAE_k bound in bits per value (an upper
        bound on the NLL in bits/dim; for integer images the same units as ``GatedPixelCNN.loss``)."""
        if k == 1:
            bound = self.elbo(x, beta=1.0, generator=generator).elbo
        else:
            bound = self.iwae_bound(x, k, generator=generator)
        return -bound / (self.dims * math.log(2))

    def loss(self, x: Tensor, beta: Optional[float] = None, refine_steps: int = 0, refine_lr: float = 0.01,
             refine_grad: str = "unrolled", generator: Optional[torch.Generator] = None) -> Tensor:
        """The training loss: -mean(elbo) / (D log 2), the (beta-)ELBO in bits/dim (arguments as ``elbo``)."""
        bound = self.elbo(x, beta=beta, refine_steps=refine_steps, refine_lr=refine_lr, refine_grad=refine_grad,
                          generator=generator).elbo
        return -bound.mean() / (self.dims * math.log(2))

    # ----------------------------------------------------------------------------- generation
    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None, mean: bool = False) -> Tensor:
        """n draws x ~ p(x|z), z ~ N(0, I): [n, *data_shape] (long levels for "logistic", 0/1 floats
        for "bernoulli", floats for "gaussian").  ``mean=True``: the decoder's mean instead of a
        draw (the level nearest the logistic's location; Bernoulli probabilities; Gaussian means)."""
        check_int(n, "n", 0)
        p = next(self.parameters())
        z = torch.randn(n, self.latent, generator=generator, dtype=p.dtype, device=p.device)
        return self._draw(self.decode(z), generator, mean)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """The decoder's mean (as ``sample(mean=True)``) at the posterior mean of each x: [B, *data_shape]."""
        return self._draw(self.decode(self.encode(x).mean), None, mean=True)


def _mlp(d_in: int, widths: Sequence[int], d_out: int) -> nn.Sequential:
    """Linear layers d_in -> widths... -> d_out with ELU between them (no widths: one linear map)."""
    layers, prev = [], d_in
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ELU()]
        prev = w
    return nn.Sequential(*layers, nn.Linear(prev, d_out))
