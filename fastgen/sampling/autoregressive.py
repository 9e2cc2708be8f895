"""Sampling autoregressive models value by value: the naive and the incremental sampler.

What a model must provide is written down as ``typing.Protocol`` classes (the models of
``fastgen.models`` implement them; this module never imports a model):

- images (``sample``): ``ImageModel``, whose ``incremental`` returns a ``PixelCache``; a cache
  that can draw a whole pixel in one fused launch says so through ``PixelCache.fused_step``
  (a ``FusedPixelStep``, or None);
- vectors (``sample_sequence``, e.g. MADE): ``SequenceModel`` and its ``SequenceCache``.

Both samplers draw all their randomness up front -- Gumbel noise ``[n, C, H, W, levels]``
(``[n, D, levels]`` for vectors) from ``generator`` -- and pick
``argmax(logits / temperature + gumbel)``, so for the same generator the naive and the
incremental sampler produce the same values whenever the logits agree (exactly, in fp32, up
to rounding that never decides an argmax in practice; the tests check equality).
"""
import math
from typing import Callable, Iterator, List, Optional, Protocol, Sequence, Tuple

import torch
from torch import Tensor

from fastgen.sampling.graphs import GRAPHS, weights_version


# ------------------------------------------------------------------------------ protocols

class FusedPixelStep(Protocol):
    """A cache that draws a whole pixel, every colour channel, in one fused step."""

    def step(self, r: int, c: int, gumbel: Tensor, temperature: float) -> Optional[Tensor]:
        """Draw pixel (r, c) of every image: gumbel -> values [B, C] (long), and record them as
        ``write`` would.  gumbel: the pixel's noise, [B, levels] for grey images (C = 1) and
        [B, C, levels] for colour ones (channel j draws argmax(logits_j / temperature +
        gumbel[:, j]), given the channels before it).  The values belong in x[:, :, r, c] of the
        image the cache samples (``incremental(x)``): a step that writes them there itself
        returns None -- no copy per pixel -- and one that does not returns them."""


class PixelCache(Protocol):
    """The incremental state of an ``ImageModel`` while it samples ``x [B, C, H, W]``: it
    computes only what a new pixel changes.  The sampler calls, in raster order,
    ``begin_row(r)`` once per row, then per pixel either ``fused_step.step`` or, per channel
    group, ``logits`` and ``write``."""

    def begin_row(self, r: int) -> None:
        """Row r starts: compute what depends only on the rows above."""

    def logits(self, r: int, c: int) -> Tensor:
        """[B, levels, C] logits at pixel (r, c) given everything written so far."""

    def write(self, r: int, c: int, values: Tensor) -> None:
        """Pixel (r, c) took ``values [B, C]`` (long; channels not drawn yet hold anything)."""

    @property
    def fused_step(self) -> Optional[FusedPixelStep]:
        """The cache's fused per-pixel step, or None where it has none for this model (then
        the sampler calls ``logits`` and ``write``)."""


class ImageModel(Protocol):
    """An autoregressive image model over long images ``x [B, C, H, W]`` in [0, levels), e.g.
    ``fastgen.models.PixelCNN``, ``GatedPixelCNN``, ``PixelCNNpp``."""

    image_shape: Tuple[int, int, int]          # (C, H, W)
    levels: int                                # values per channel
    # The channel groups drawn in turn at each pixel: [[0, 1, 2]] (all at once, independent
    # given the past) or [[0], [1], [2]] (R, then G given R, then B given R and G).
    channel_groups: Sequence[Sequence[int]]

    def __call__(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """Logits [B, levels, C, H, W] of every pixel (the naive sampler's full recompute)."""

    def check_cond(self, cond: Optional[Tensor], batch: int) -> None:
        """Raise a ValueError unless ``cond`` is valid conditioning for ``batch`` images (None
        for an unconditional model).  May read values (a host sync)."""

    def incremental(self, x: Tensor, cond: Optional[Tensor] = None, check: bool = True) -> PixelCache:
        """A fresh cache for images like ``x``.  ``check=False``: ``cond`` passed ``check_cond``
        already, so building the cache syncs nothing and can be captured in a CUDA graph."""

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """(An ``nn.Module``'s: the sampler reads the device and the weights' versions.)"""


class SequenceCache(Protocol):
    """The incremental state of a ``SequenceModel`` while it samples ``x [B, D]``."""

    def logits(self, d: int) -> Tensor:
        """[B, levels] logits of dimension d given everything written so far."""

    def write(self, d: int, values: Tensor) -> None:
        """Dimension d took ``values [B]`` (long)."""


class SequenceModel(Protocol):
    """A vector autoregressive model over long vectors ``x [B, D]`` in [0, levels) that draws
    its dimensions in ``order`` (e.g. ``fastgen.models.MADE``)."""

    dim: int
    levels: int
    order: List[int]

    def __call__(self, x: Tensor) -> Tensor:
        """Logits [B, levels, D] (the naive sampler's full recompute)."""

    def incremental(self, x: Tensor) -> SequenceCache:
        """A fresh cache for vectors like ``x``."""

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """(An ``nn.Module``'s: the sampler reads the device.)"""


# ------------------------------------------------------------------------------ samplers

def gumbel_noise(shape: Sequence[int], generator: Optional[torch.Generator] = None,
                 device: Optional[torch.device] = None) -> Tensor:
    """Standard Gumbel noise -log(-log(u)), u ~ U(0, 1) drawn in float64 then cast to fp32."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
    u = u.clamp(1e-12, 1 - 1e-12)
    return (-torch.log(-torch.log(u))).float()


def _check_common(n, temperature, method):
    if method not in ("fast", "naive"):
        raise ValueError(f"method must be 'fast' or 'naive', got {method!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if temperature <= 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")


def _check(model, n, known, known_mask, temperature, method):
    _check_common(n, temperature, method)
    shape = (n, *model.image_shape)
    if (known is None) != (known_mask is None):
        raise ValueError("known and known_mask must be given together")
    if known is not None:
        if not torch.is_tensor(known) or not torch.is_tensor(known_mask):
            raise TypeError("known and known_mask must be tensors")
        if known.is_floating_point() and bool((known[known_mask] != known[known_mask].round()).any()):
            raise ValueError("known must hold integer pixel values (an integer dtype, or integer-valued floats)")
        if not (known.is_floating_point() or known.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32,
                                                              torch.int64)):
            raise TypeError(f"known must be an integer tensor of pixel values, got dtype {known.dtype}")
        if tuple(known.shape) != shape:
            raise ValueError(f"known must have shape {shape} ([n, C, H, W]), got {tuple(known.shape)}")
        if tuple(known_mask.shape) != shape or known_mask.dtype != torch.bool:
            raise ValueError(f"known_mask must be a bool tensor of shape {shape}")
        if (known[known_mask] < 0).any() or (known[known_mask] >= model.levels).any():
            raise ValueError(f"known values must lie in [0, {model.levels})")


def _loop(model: ImageModel, cache: Optional[PixelCache], x: Tensor, noise: Tensor, temperature: float,
          cond: Optional[Tensor] = None, known: Optional[Tensor] = None, known_mask: Optional[Tensor] = None,
          progress: Optional[Callable[[int], None]] = None) -> Tensor:
    """Draw x [n, C, H, W] in place, row by row, pixel by pixel, channel group by group.
    cache None: the naive sampler (full recompute).  A cache with a fused step (and no
    completion mask, which the fused step does not apply) draws a whole pixel in one launch."""
    C, H, W = model.image_shape
    fused = cache.fused_step if cache is not None and known is None else None
    for r in range(H):
        if cache is not None:
            cache.begin_row(r)
        for c in range(W):
            if fused is not None:
                values = fused.step(r, c, noise[:, 0, r, c] if C == 1 else noise[:, :, r, c], temperature)
                if values is not None:          # (None: drawn straight into x)
                    x[:, :, r, c] = values
                continue
            for group in model.channel_groups:
                if cache is not None:
                    logits = cache.logits(r, c)                 # [n, levels, C]
                else:
                    logits = model(x, cond)[:, :, :, r, c]      # full recompute
                scores = logits[:, :, group].float() / temperature + noise[:, group, r, c].transpose(1, 2)
                x[:, group, r, c] = scores.argmax(dim=1)
                if known is not None:
                    keep = known_mask[:, group, r, c]
                    x[:, group, r, c] = torch.where(keep, known[:, group, r, c], x[:, group, r, c])
                if cache is not None:
                    cache.write(r, c, x[:, :, r, c])
        if progress is not None:
            progress(r)
    return x


def _graphed_sample(model: ImageModel, n: int, cond: Optional[Tensor], temperature: float, noise: Tensor,
                    device: torch.device) -> Tensor:
    """Replay the whole fast sampling loop (building the cache, every row's and every pixel's
    work) as one captured graph from ``fastgen.sampling.graphs.GRAPHS``: one per model state,
    batch, conditioning shape and temperature.  The noise and the conditioning are the graph's
    static inputs -- copied in before each replay -- so a new ``cond`` tensor per request
    replays the same graph with its values.  Sound because the loop has no host syncs (cond
    is checked here, outside the graph) and builds its cache afresh in every replay."""
    C, H, W = model.image_shape
    model.check_cond(cond, n)
    weights = next(model.parameters())
    config = ("autoregressive.sample", weights_version(model), weights.dtype, str(device), n, float(temperature),
              None if cond is None else (tuple(cond.shape), cond.dtype, str(cond.device)),
              # the kernels' TF32 choice is baked into the graph at capture
              torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    inputs = {"noise": noise} if cond is None else {"noise": noise, "cond": cond}

    def run(buffers):
        x = torch.zeros(n, C, H, W, dtype=torch.long, device=device)
        cache = model.incremental(x, buffers.get("cond"), check=False)
        return _loop(model, cache, x, buffers["noise"], temperature)

    return GRAPHS.replay(model, config, inputs, run).clone()


@torch.no_grad()
def sample(model: ImageModel, n: int, cond: Optional[Tensor] = None, method: str = "fast",
           generator: Optional[torch.Generator] = None, temperature: float = 1.0, known: Optional[Tensor] = None,
           known_mask: Optional[Tensor] = None, progress: Optional[Callable[[int], None]] = None,
           cuda_graph: bool = False) -> Tensor:
    """Draw ``n`` images ``[n, C, H, W]`` (long, values in [0, levels)) from ``model``.

    method: 'fast' (incremental caches, only what each new pixel changes) or 'naive' (the
    full model re-run for every pixel and channel group: the reference).
    cond: the model's conditioning for each image (e.g. class ids ``[n]``), or None.
    known, known_mask: image completion -- where ``known_mask`` is True the pixel is taken
    from ``known`` instead of sampled (e.g. the top half given, the bottom half sampled).
    progress: optional callable(row) called after each row.
    cuda_graph: on a GPU, with method='fast' and no completion mask, replay the whole loop as
    one CUDA graph (captured on the first call for this model state, n, cond's shape and
    temperature -- a new cond of the same shape replays it; no host work per pixel).  With a
    fused step that is ~2 launches per pixel; for models without one (PixelCNN, PixelCNN++)
    the graph holds every op of every pixel -- hundreds of thousands of nodes for PixelCNN++
    at 32x32, so the capture takes long and host memory.  ``progress`` is not called then.
    """
    _check(model, n, known, known_mask, temperature, method)
    C, H, W = model.image_shape
    device = next(model.parameters()).device
    noise = gumbel_noise((n, C, H, W, model.levels), generator).to(device)
    if method == "fast" and cuda_graph and known is None and GRAPHS.supports(device):
        return _graphed_sample(model, n, cond, temperature, noise, device)
    x = torch.zeros(n, C, H, W, dtype=torch.long, device=device)
    if known is not None:
        known, known_mask = known.to(device, torch.long), known_mask.to(device)   # integer-valued floats too
    cache = model.incremental(x, cond) if method == "fast" else None
    return _loop(model, cache, x, noise, temperature, cond, known, known_mask, progress)


@torch.no_grad()
def sample_sequence(model: SequenceModel, n: int, method: str = "fast", generator: Optional[torch.Generator] = None,
                    temperature: float = 1.0) -> Tensor:
    """Draw ``n`` vectors ``[n, D]`` (long, values in [0, levels)) from a vector autoregressive
    model (``SequenceModel``, e.g. ``MADE``), one dimension at a time in ``model.order``.

    method: 'fast' (the model's ``SequenceCache``) or 'naive' (the full model re-run for every
    dimension).  Gumbel noise is drawn up front, so both methods give the same vectors for the
    same generator.
    """
    _check_common(n, temperature, method)
    device = next(model.parameters()).device
    noise = gumbel_noise((n, model.dim, model.levels), generator).to(device)
    x = torch.zeros(n, model.dim, dtype=torch.long, device=device)
    cache = model.incremental(x) if method == "fast" else None
    for d in model.order:
        logits = cache.logits(d) if cache is not None else model(x)[:, :, d]
        x[:, d] = (logits.float() / temperature + noise[:, d]).argmax(dim=1)
        if cache is not None:
            cache.write(d, x[:, d])
    return x
