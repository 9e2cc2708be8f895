"""Energy-based models and score matching.

- ``sgld``: stochastic gradient Langevin dynamics on an energy E(x),
  x <- x - (a/2) grad_x E(x) + sigma z (Welling & Teh 2011; sigma = sqrt(a) is exact Langevin),
  each step one fused ``fastgen.ops.diffusion_step`` (the 'score' prediction with
  ``langevin_coefficients``) -- the same update as ``fastgen.sampling.diffusion``'s 'sgld' sampler.
- ``EBM``: a convolutional energy E(x) trained by contrastive divergence with SGLD negatives
  started from a replay buffer (Du & Mordatch 2019).  The buffer (``ReplayBuffer``) is training
  state, not weights: it is kept out of the state dict, where an EMA would average its chains
  and DDP would overwrite every rank's copy with rank 0's; ``sample`` starts from noise and does
  not need it.  A checkpoint saves ``buffer.images`` beside the weights to resume exactly.
- ``JEM``: a classifier f read as an energy model (Grathwohl et al. 2020):
  p(y | x) = softmax(f(x))_y, log p(x) = logsumexp_y f(x)[y] - log Z, E(x) = -logsumexp_y f(x)[y].
- ``denoising_score_matching_loss`` (Vincent 2011) and ``sliced_score_matching_loss``
  (Song et al. 2019) for score models s(x) ~ grad_x log p(x).

Images are [B, C, H, W] in [-1, 1] (SGLD clamps to that range by default).  Every random draw
(SGLD's noise, the buffer's picks and restarts) comes from the ``generator`` passed in, on that
generator's device; None means the global RNG.
"""
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgen.models.gan import check_image_shape
from fastgen.nn.gan import check_labels, spectral_norm
from fastgen.ops import diffusion_step
from fastgen.sampling.diffusion import langevin_coefficients

# --------------------------------------------------------------------------------------------
# SGLD


class SGLDOptions(NamedTuple):
    """SGLD's settings: ``steps`` updates x <- clamp(x - (a/2) grad E(x) + sigma z) with
    a = ``step_size`` and sigma = ``noise`` (None: sqrt(a), exact Langevin dynamics; EBM training
    uses a much smaller sigma, as Du & Mordatch 2019 and JEM do); ``clamp`` = (lo, hi) or None."""
    steps: int = 20
    step_size: float = 2.0
    noise: Optional[float] = 0.01
    clamp: Optional[Tuple[float, float]] = (-1.0, 1.0)


def sgld_options_of(options: Union[SGLDOptions, Dict[str, Any], Sequence[Any]]) -> SGLDOptions:
    """``SGLDOptions`` from itself, a dict of its fields (JSON configs; missing fields take the
    defaults) or a sequence in field order."""
    if isinstance(options, dict):
        unknown = set(options) - set(SGLDOptions._fields)
        if unknown:
            raise ValueError(f"unknown SGLD options {sorted(unknown)}; the fields are {list(SGLDOptions._fields)}")
        options = SGLDOptions(**options)
    options = SGLDOptions(*options)
    return options._replace(clamp=None if options.clamp is None else tuple(options.clamp))


def _draw_device(generator: Optional[torch.Generator], fallback: torch.device) -> torch.device:
    """Where a draw happens: on the generator's device (a CUDA generator draws on the GPU), else
    where the result goes (the global RNG of that device)."""
    return generator.device if generator is not None else fallback


def energy_grad(energy: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """grad_x sum_b E(x)_b -> like x (no graph kept: SGLD's negatives carry no gradient)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        e = energy(x)
        if e.shape != (x.shape[0],):
            raise ValueError(f"the energy must return one value per sample [{x.shape[0]}], got {tuple(e.shape)}")
        grad, = torch.autograd.grad(e.sum(), x)
    return grad


def sgld(energy: Callable[[Tensor], Tensor], x: Tensor, options: SGLDOptions = SGLDOptions(),
         generator: Optional[torch.Generator] = None, backend: Optional[str] = None) -> Tensor:
    """Run ``options.steps`` SGLD steps on energy(x) -> [B] from x [B, ...]; returns the last x
    (detached).  Each step is the fused diffusion step on the score s = -grad E with
    ``langevin_coefficients(a)`` (x + (a/2) s + sigma z), z ~ N(0, I) from ``generator``."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype if isinstance(x, Tensor) else type(x)}")
    steps, a, noise, clamp = sgld_options_of(options)
    if steps < 0 or a <= 0 or (noise is not None and noise < 0):
        raise ValueError(f"options must have steps >= 0, step_size > 0 and noise >= 0 (or None), got {options}")
    coefficients = langevin_coefficients(a)
    if noise is not None:
        coefficients = coefficients._replace(sigma=float(noise))
    x = x.detach()
    for _ in range(steps):
        score = -energy_grad(energy, x)
        z = None
        if coefficients.sigma:
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype,
                            device=_draw_device(generator, x.device)).to(x.device)
        x = diffusion_step(x, score, coefficients, "score", noise=z, backend=backend)
        if clamp is not None:
            x = x.clamp(*clamp)
    return x


class BufferPart(NamedTuple):
    """The rows of a replay buffer that one of ``parts`` processes continues chains from: the
    contiguous block ``rank`` of ``parts`` nearly equal blocks (data-parallel training)."""
    rank: int = 0
    parts: int = 1


def process_group_part() -> BufferPart:
    """This process's ``BufferPart`` in the default process group (the whole buffer without one)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return BufferPart(dist.get_rank(), dist.get_world_size())
    return BufferPart()


class ReplayBuffer:
    """Past SGLD samples to start new chains from (Du & Mordatch 2019): ``images``
    [capacity, *shape], initialised U[lo, hi] from the global RNG.

    ``sample(n)`` picks n *distinct* rows (so that ``update`` never writes one row twice: the
    write is then the same on every device and run), a fraction ``reinit`` of them replaced by
    fresh uniform noise; ``update(index, x)`` writes the chains' ends back.

    Data-parallel training (``shared=True``) keeps one buffer replicated on every rank of the
    default process group: rank r of K picks its chains only among its own rows (block r of K,
    ``BufferPart``), and ``update`` gathers every rank's (index, x) and writes them all, so the
    copies stay identical and any one of them is the whole buffer (what a checkpoint saves)."""

    def __init__(self, capacity: int, shape: Sequence[int], bounds: Tuple[float, float] = (-1.0, 1.0),
                 device: Union[str, torch.device, None] = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.shape, self.bounds = tuple(shape), bounds
        self.images = self._uniform(capacity, torch.device("cpu"), None).to(device or "cpu")

    def __len__(self) -> int:
        return len(self.images)

    def _uniform(self, n: int, device: torch.device, generator: Optional[torch.Generator]) -> Tensor:
        lo, hi = self.bounds
        return torch.rand(n, *self.shape, generator=generator, device=device) * (hi - lo) + lo

    def rows(self, part: BufferPart = BufferPart()) -> Tuple[int, int]:
        """[start, stop) of the block of rows ``part`` owns."""
        rank, parts = part
        if not 0 <= rank < parts:
            raise ValueError(f"part must have 0 <= rank < parts, got {part}")
        return len(self) * rank // parts, len(self) * (rank + 1) // parts

    def sample(self, n: int, reinit: float = 0.05, generator: Optional[torch.Generator] = None,
               part: BufferPart = BufferPart()) -> Tuple[Tensor, Tensor]:
        """(x [n, *shape], index [n]): n distinct rows of ``part``'s block, each replaced by
        U[lo, hi] noise with probability ``reinit``; every draw from ``generator``."""
        start, stop = self.rows(part)
        if n > stop - start:
            raise ValueError(f"cannot start {n} chains from {stop - start} rows of the replay buffer "
                             f"(capacity {len(self)}{f' over {part.parts} processes' if part.parts > 1 else ''}): "
                             f"its capacity must be at least the batch")
        device = self.images.device
        where = _draw_device(generator, device)
        index = (start + torch.randperm(stop - start, generator=generator, device=where)[:n]).to(device)
        fresh = (torch.rand(n, generator=generator, device=where) < reinit).to(device)
        noise = self._uniform(n, where, generator).to(device)
        x = torch.where(fresh.view(-1, *[1] * len(self.shape)), noise, self.images[index])
        return x, index

    def update(self, index: Tensor, x: Tensor, shared: bool = False) -> None:
        """Write x [n, *shape] into rows ``index`` [n]; ``shared``: every rank of the default
        process group calls this with its own (index, x) of the same n, and every rank writes
        all of them (the ranks' rows are disjoint, see ``sample``'s ``part``)."""
        x = x.detach().to(self.images.device, self.images.dtype)
        index = index.to(self.images.device)
        if shared and process_group_part().parts > 1:
            import torch.distributed as dist
            indices = [torch.empty_like(index) for _ in range(dist.get_world_size())]
            chains = [torch.empty_like(x) for _ in range(dist.get_world_size())]
            dist.all_gather(indices, index.contiguous())
            dist.all_gather(chains, x.contiguous())
            index, x = torch.cat(indices), torch.cat(chains)
        self.images[index] = x

    def load(self, images: Tensor) -> None:
        """Replace the contents by ``images`` [capacity, *shape] (a saved ``images``), kept on
        the buffer's device."""
        if not isinstance(images, Tensor) or tuple(images.shape) != tuple(self.images.shape):
            raise ValueError(f"the saved replay buffer must have shape {tuple(self.images.shape)}, got "
                             f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
        self.images = images.detach().to(self.images.device, self.images.dtype).clone()


# --------------------------------------------------------------------------------------------
# Energy models


class ContrastiveLoss(NamedTuple):
    """Contrastive divergence: ``loss`` = E(x+).mean() - E(x-).mean() + reg (E(x+)^2 + E(x-)^2).mean()
    (the energies of data x+ and SGLD negatives x-, both [B], are returned too) and the negatives."""
    loss: Tensor
    energy_real: Tensor
    energy_fake: Tensor
    negatives: Tensor


class EnergyModel(nn.Module):
    """What EBM and JEM share: an ``energy(x)`` [B], p(x) ~ exp(-E(x)); SGLD sampling; contrastive
    divergence with a replay buffer (``buffer``, not part of the state dict: see the module
    docstring).  ``sample_steps``: SGLD steps of ``sample`` (None: ``sgld_options.steps``); chains
    that start from noise need many more steps than the persistent training chains."""

    def __init__(self, image_shape: Sequence[int], sgld_options: Union[SGLDOptions, Dict[str, Any]],
                 buffer_size: int, reinit: float, reg_weight: float, sample_steps: Optional[int] = None) -> None:
        super().__init__()
        check_image_shape(image_shape)
        self.image_shape, self.sgld_options = tuple(image_shape), sgld_options_of(sgld_options)
        if sample_steps is not None and sample_steps < 0:
            raise ValueError(f"sample_steps must be >= 0, got {sample_steps}")
        self.sample_steps = self.sgld_options.steps if sample_steps is None else sample_steps
        self.reinit, self.reg_weight = reinit, reg_weight
        self.buffer = ReplayBuffer(buffer_size, image_shape)

    def energy(self, x: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        raise NotImplementedError

    def _check_images(self, name: str, x: Tensor) -> None:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point image tensor, got "
                            f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"{name} must have shape [B, {', '.join(map(str, self.image_shape))}], "
                             f"got {tuple(x.shape)}")

    def score(self, x: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """grad_x log p(x) = -grad_x E(x) -> like x."""
        return -energy_grad(lambda v: self.energy(v, labels), x)

    def sample(self, n: int, labels: Optional[Tensor] = None, options: Optional[SGLDOptions] = None,
               init: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> Tensor:
        """n samples [n, C, H, W] by SGLD from ``init`` (default: uniform noise in [-1, 1] drawn
        from ``generator``), ``options`` defaulting to the training ones with ``sample_steps``
        steps; ``labels`` [n] samples p(x | y) for a model with classes (E(x, y))."""
        device = next(self.parameters()).device
        if init is None:
            init = (torch.rand(n, *self.image_shape, generator=generator,
                               device=_draw_device(generator, device)) * 2 - 1).to(device)
        self._check_images("init", init)
        options = self.sgld_options._replace(steps=self.sample_steps) if options is None else options
        return sgld(lambda v: self.energy(v, labels), init, options, generator)

    def contrastive_loss(self, real: Tensor, generator: Optional[torch.Generator] = None,
                         shared: bool = False) -> ContrastiveLoss:
        """Contrastive divergence on a real batch [B, C, H, W]: negatives by SGLD
        (``sgld_options``) from the replay buffer (written back), then ``ContrastiveLoss``.
        ``shared``: data-parallel training, one buffer replicated over the default process
        group (``ReplayBuffer``); every rank must call this once with the same B."""
        self._check_images("real", real)
        if self.buffer.images.device != real.device:
            self.buffer.images = self.buffer.images.to(real.device)
        part = process_group_part() if shared else BufferPart()
        init, index = self.buffer.sample(real.shape[0], self.reinit, generator, part)
        # SGLD differentiates with respect to x only (energy_grad): the parameters' gradient
        # accumulators never run, so inside DDP's forward the reducer sees only this loss's backward
        negatives = sgld(self.energy, init, self.sgld_options, generator)
        self.buffer.update(index, negatives, shared)
        e_real, e_fake = self.energy(real), self.energy(negatives)
        loss = e_real.mean() - e_fake.mean() + self.reg_weight * (e_real.square() + e_fake.square()).mean()
        return ContrastiveLoss(loss, e_real.detach(), e_fake.detach(), negatives)


class EnergyNet(nn.Module):
    """E(x) [B] for x [B, C, 4 2^k, 4 2^k]: 3x3 conv -> k x (4x4 stride-2 conv, doubling the
    channels) -> linear, with swish (SiLU) activations (smooth, so that SGLD's gradients are);
    ``spectral``: spectral normalisation on every layer."""

    def __init__(self, image_shape: Sequence[int], channels: int = 32, spectral: bool = False,
                 outputs: int = 1) -> None:
        super().__init__()
        C, k = check_image_shape(image_shape)
        sn = spectral_norm if spectral else (lambda m: m)
        layers = [sn(nn.Conv2d(C, channels, 3, padding=1)), nn.SiLU()]
        for i in range(k):
            layers += [sn(nn.Conv2d(channels << i, channels << (i + 1), 4, 2, 1)), nn.SiLU()]
        layers += [nn.Flatten(), sn(nn.Linear((channels << k) * 16, outputs))]
        self.net = nn.Sequential(*layers)
        self.outputs = outputs

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return out.squeeze(1) if self.outputs == 1 else out


class EBM(EnergyModel):
    """An image energy model (Du & Mordatch 2019): E(x) = ``EnergyNet``(x) [B], trained by
    ``loss(real)`` = contrastive divergence with SGLD negatives from a replay buffer
    (``buffer_size`` images, ``reinit`` of each batch restarted from noise) and the energy
    regulariser ``reg_weight`` (E+^2 + E-^2); ``sample_steps``: see ``EnergyModel``."""

    def __init__(self, image_shape: Sequence[int], channels: int = 32, spectral: bool = False,
                 sgld_options: Union[SGLDOptions, Dict[str, Any]] = SGLDOptions(), buffer_size: int = 10000,
                 reinit: float = 0.05, reg_weight: float = 1.0, sample_steps: Optional[int] = None) -> None:
        super().__init__(image_shape, sgld_options, buffer_size, reinit, reg_weight, sample_steps)
        self.net = EnergyNet(image_shape, channels, spectral)

    def energy(self, x: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """E(x) -> [B] (unconditional: ``labels`` must be None)."""
        check_labels(labels, None, x.shape[0])
        return self.net(x)

    def loss(self, real: Tensor, generator: Optional[torch.Generator] = None, shared: bool = False) -> ContrastiveLoss:
        """``ContrastiveLoss`` on real images [B, C, H, W] (``shared``: see ``contrastive_loss``)."""
        return self.contrastive_loss(real, generator, shared)


class JEMLoss(NamedTuple):
    """JEM's objective: ``loss`` = ``classification`` (cross-entropy of p(y | x)) +
    gen_weight * ``generative`` (contrastive divergence on log p(x)); ``accuracy`` of the batch."""
    loss: Tensor
    classification: Tensor
    generative: Tensor
    accuracy: Tensor


class JEM(EnergyModel):
    """Joint energy-based model (Grathwohl et al. 2020) over a classifier f: x [B, C, H, W] ->
    logits [B, K]: p(y | x) = softmax(f(x))_y, p(x, y) ~ exp(f(x)[y]), so E(x, y) = -f(x)[y]
    and E(x) = -logsumexp_y f(x)[y].  ``loss(x, y)`` = cross-entropy + gen_weight * contrastive
    divergence on E(x) with SGLD negatives from a replay buffer (JEM's settings: 20 steps,
    step 1 on the gradient, noise 0.01, 5% restarts).  ``EnergyNet(image_shape, outputs=K)`` is
    a classifier to start from."""

    def __init__(self, classifier: nn.Module, image_shape: Sequence[int], num_classes: int,
                 sgld_options: Union[SGLDOptions, Dict[str, Any]] = SGLDOptions(), buffer_size: int = 10000,
                 reinit: float = 0.05, reg_weight: float = 0.0, gen_weight: float = 1.0,
                 sample_steps: Optional[int] = None) -> None:
        super().__init__(image_shape, sgld_options, buffer_size, reinit, reg_weight, sample_steps)
        if not isinstance(classifier, nn.Module):
            raise TypeError(f"classifier must be an nn.Module returning logits [B, K], got {type(classifier).__name__}")
        self.classifier, self.num_classes, self.gen_weight = classifier, num_classes, gen_weight

    def logits(self, x: Tensor) -> Tensor:
        """f(x) -> [B, K]."""
        out = self.classifier(x)
        if out.dim() != 2 or out.shape != (x.shape[0], self.num_classes):
            raise ValueError(f"the classifier must return logits [{x.shape[0]}, {self.num_classes}], "
                             f"got {tuple(out.shape)}")
        return out

    def energy(self, x: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """E(x) = -logsumexp_y f(x)[y], or with ``labels`` E(x, y) = -f(x)[y] -> [B]."""
        logits = self.logits(x)
        if labels is None:
            return -logits.logsumexp(1)
        check_labels(labels, self.num_classes, x.shape[0])
        return -logits.gather(1, labels[:, None]).squeeze(1)

    def log_px_unnormalized(self, x: Tensor) -> Tensor:
        """log p(x) + log Z = logsumexp_y f(x)[y] -> [B]."""
        return -self.energy(x)

    def class_posterior(self, x: Tensor) -> Tensor:
        """p(y | x) = p(x, y) / p(x) = exp(f(x)[y] - logsumexp f(x)) -> [B, K] (the softmax)."""
        logits = self.logits(x)
        return (logits - logits.logsumexp(1, keepdim=True)).exp()

    @torch.no_grad()
    def accuracy(self, x: Tensor, labels: Tensor, batch: int = 512) -> float:
        """Fraction of ``x`` whose most probable class is ``labels``."""
        right = sum((self.logits(x[i:i + batch]).argmax(1) == labels[i:i + batch]).sum().item()
                    for i in range(0, len(x), batch))
        return right / max(len(x), 1)

    def loss(self, x: Tensor, labels: Tensor, generator: Optional[torch.Generator] = None,
             shared: bool = False) -> JEMLoss:
        """``JEMLoss`` on a labelled batch x [B, C, H, W], labels [B] (``shared``: see
        ``contrastive_loss``)."""
        self._check_images("x", x)
        check_labels(labels, self.num_classes, x.shape[0])
        logits = self.logits(x)
        classification = F.cross_entropy(logits, labels)
        generative = (self.contrastive_loss(x, generator, shared).loss if self.gen_weight
                      else logits.new_zeros(()))
        accuracy = (logits.argmax(1) == labels).float().mean().detach()
        return JEMLoss(classification + self.gen_weight * generative, classification, generative, accuracy)


# --------------------------------------------------------------------------------------------
# Score matching


def denoising_score_matching_loss(score: Callable[..., Tensor], x: Tensor, sigma: Union[float, Tensor],
                                  noise: Optional[Tensor] = None, sigma_weighting: bool = False,
                                  generator: Optional[torch.Generator] = None) -> Tensor:
    """Denoising score matching (Vincent 2011): with x~ = x + sigma z, z ~ N(0, I),

        L = 1/2 E || s(x~) - grad_x~ log q(x~ | x) ||^2 = 1/2 E || s(x~) + z / sigma ||^2

    (squared norm summed over each sample's elements, averaged over the batch); its minimiser is
    the score of the noised data, grad log q_sigma.  x [B, ...]; sigma a float (score(x~) is
    called) or a tensor [B] of per-sample levels (score(x~, sigma) is called, a noise-conditional
    model such as NCSN); noise: z like x (drawn from ``generator`` if None).  ``sigma_weighting``:
    each sample's term times lambda(sigma) = sigma^2 (Song & Ermon 2019, so that every noise level
    contributes alike): 1/2 E |sigma s(x~) + z|^2."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype if isinstance(x, Tensor) else type(x)}")
    conditional = isinstance(sigma, Tensor)
    if conditional:
        if sigma.shape != (x.shape[0],):
            raise ValueError(f"sigma must be a float or a tensor [{x.shape[0]}], got shape {tuple(sigma.shape)}")
        if (sigma <= 0).any():
            raise ValueError("sigma must be > 0")
        s = sigma.to(x.dtype).view(-1, *[1] * (x.dim() - 1))
    else:
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma!r}")
        s = sigma
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    elif noise.shape != x.shape:
        raise ValueError(f"noise must have the shape of x {tuple(x.shape)}, got {tuple(noise.shape)}")
    noisy = x + s * noise
    out = score(noisy, sigma) if conditional else score(noisy)
    if out.shape != x.shape:
        raise ValueError(f"the score must have the shape of x {tuple(x.shape)}, got {tuple(out.shape)}")
    per_sample = 0.5 * (out + noise / s).square().flatten(1).sum(1)
    if sigma_weighting:
        per_sample = per_sample * (sigma.to(x.dtype) ** 2 if conditional else sigma ** 2)
    return per_sample.mean()


def sliced_score_matching_loss(score: Callable[[Tensor], Tensor], x: Tensor, projections: int = 1,
                               distribution: str = "gaussian", variance_reduction: bool = False,
                               vectors: Optional[Tensor] = None,
                               generator: Optional[torch.Generator] = None) -> Tensor:
    """Sliced score matching (Song et al. 2019): Hyvarinen's objective
    E[tr(grad_x s(x)) + 1/2 |s(x)|^2] with the trace estimated along random directions v:

        L = E_x E_v [ v^T (grad_x s(x)) v + 1/2 (v^T s(x))^2 ]      (SSM)
        L = E_x E_v [ v^T (grad_x s(x)) v ] + 1/2 E_x |s(x)|^2       (SSM-VR, variance_reduction)

    averaged over the batch and ``projections`` directions per sample; v^T (grad s) v is one
    vector-Jacobian product (the loss is differentiable in s's parameters: create_graph).
    x [B, ...]; distribution 'gaussian' (v ~ N(0, I)) or 'rademacher' (+-1); ``vectors``
    [projections, B, ...] overrides the draw.  E[v v^T] = I, so E_v L is exactly Hyvarinen's
    objective for either distribution."""
    if distribution not in ("gaussian", "rademacher"):
        raise ValueError(f"distribution must be 'gaussian' or 'rademacher', got {distribution!r}")
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype if isinstance(x, Tensor) else type(x)}")
    if vectors is None:
        if projections < 1:
            raise ValueError(f"projections must be >= 1, got {projections}")
        vectors = torch.randn(projections, *x.shape, generator=generator, dtype=x.dtype).to(x.device)
        if distribution == "rademacher":
            vectors = vectors.sign()
    elif vectors.dim() != x.dim() + 1 or vectors.shape[1:] != x.shape:
        raise ValueError(f"vectors must have shape [projections, {', '.join(map(str, x.shape))}], "
                         f"got {tuple(vectors.shape)}")
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        s = score(x)
        if s.shape != x.shape:
            raise ValueError(f"the score must have the shape of x {tuple(x.shape)}, got {tuple(s.shape)}")
        total = s.new_zeros(())
        for v in vectors:
            sv = (s * v).flatten(1).sum(1)                                          # v^T s(x)  [B]
            jvp, = torch.autograd.grad(sv.sum(), x, create_graph=True)              # (grad s)^T v
            trace = (jvp * v).flatten(1).sum(1)                                     # v^T (grad s) v
            second = 0.5 * s.square().flatten(1).sum(1) if variance_reduction else 0.5 * sv.square()
            total = total + (trace + second).mean()
    return total / len(vectors)
