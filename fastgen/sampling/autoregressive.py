"""Sampling autoregressive image models pixel by pixel: the naive and the incremental sampler.

The protocol a model implements (``fastgen.models.PixelCNN`` and ``GatedPixelCNN`` do):

- ``model.image_shape`` -> (C, H, W); ``model.levels`` -> number of values per channel;
- ``model.channel_groups`` -> the channel groups sampled in turn at each pixel, e.g.
  ``[[0, 1, 2]]`` (all channels at once, conditionally independent given the past) or
  ``[[0], [1], [2]]`` (R, then G given R, then B given R and G);
- ``model(x, cond)`` -> logits ``[B, levels, C, H, W]`` for a long image ``x [B, C, H, W]``
  (what the naive sampler calls at every step);
- ``model.incremental(x, cond)`` -> a cache object with ``begin_row(r)``,
  ``logits(r, c) -> [B, levels, C]`` (the logits at pixel (r, c) given everything written so
  far) and ``write(r, c, values [B, C])``.  It computes only what a new pixel changes.
  A cache whose ``step_weights`` is not None also has ``step(r, c, gumbel [B, levels],
  temperature) -> values [B, 1]``, which draws a whole (grey) pixel in one fused launch.

Both samplers draw all their randomness up front -- Gumbel noise ``[n, C, H, W, levels]``
from ``generator`` -- and pick ``argmax(logits / temperature + gumbel)``, so for the same
generator they produce the same image whenever the logits agree (exactly, in fp32, up to
rounding that never decides an argmax in practice; the tests check equality).
"""
import math

import torch


def gumbel_noise(shape, generator=None, device=None):
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
        if tuple(known.shape) != shape:
            raise ValueError(f"known must have shape {shape} ([n, C, H, W]), got {tuple(known.shape)}")
        if tuple(known_mask.shape) != shape or known_mask.dtype != torch.bool:
            raise ValueError(f"known_mask must be a bool tensor of shape {shape}")
        if (known[known_mask] < 0).any() or (known[known_mask] >= model.levels).any():
            raise ValueError(f"known values must lie in [0, {model.levels})")


_GRAPHS = {}   # captured fast sampling loops, one per configuration (see ``sample(cuda_graph=True)``)


def _loop(model, cache, x, noise, temperature, cond=None, known=None, known_mask=None, progress=None):
    """Draw x [n, C, H, W] in place, row by row, pixel by pixel, channel group by group.
    cache None: the naive sampler (full recompute).  A cache with a fused ``step`` (and no
    completion mask) draws a whole pixel in one launch."""
    _, H, W = model.image_shape
    fused = cache is not None and known is None and getattr(cache, "step_weights", None) is not None
    for r in range(H):
        if cache is not None:
            cache.begin_row(r)
        for c in range(W):
            if fused:
                x[:, :, r, c] = cache.step(r, c, noise[:, 0, r, c], temperature)
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


def _graphed_sample(model, n, cond, temperature, noise, device):
    """Replay the whole fast sampling loop (every row's and every pixel's work) as one CUDA
    graph; captured on first use for this model state, batch, cond and temperature.  Sound
    because the loop has no host syncs and the caches never read a position of a buffer
    before this run wrote it (so the previous replay's values are never seen)."""
    C, H, W = model.image_shape
    weights_version = tuple(p._version for p in model.parameters())     # retraining invalidates
    key = (id(model), weights_version, n, id(cond), temperature, str(device))
    if key not in _GRAPHS:
        x = torch.zeros(n, C, H, W, dtype=torch.long, device=device)
        static_noise = noise.clone()
        cache = model.incremental(x, cond)
        _loop(model, cache, x, static_noise, temperature)   # warm up: compile, tune, allocate
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            _loop(model, cache, x, static_noise, temperature)
        _GRAPHS[key] = (graph, x, static_noise, model, cond)       # keep the ids alive
    graph, x, static_noise = _GRAPHS[key][:3]
    static_noise.copy_(noise)
    graph.replay()
    return x.clone()


@torch.no_grad()
def sample(model, n, cond=None, method="fast", generator=None, temperature=1.0, known=None,
           known_mask=None, progress=None, cuda_graph=False):
    """Draw ``n`` images ``[n, C, H, W]`` (long, values in [0, levels)) from ``model``.

    method: 'fast' (incremental caches, only what each new pixel changes) or 'naive' (the
    full model re-run for every pixel and channel group: the reference).
    cond: the model's conditioning for each image (e.g. class ids ``[n]``), or None.
    known, known_mask: image completion -- where ``known_mask`` is True the pixel is taken
    from ``known`` instead of sampled (e.g. the top half given, the bottom half sampled).
    progress: optional callable(row) called after each row.
    cuda_graph: on a GPU, with method='fast' and no completion mask, replay the whole loop as
    one CUDA graph (captured on the first call for this model state, n, cond and temperature;
    no host work per pixel).  With a fused step that is ~2 launches per pixel; for models
    without one (PixelCNN, PixelCNN++) the graph holds every op of every pixel -- hundreds of
    thousands of nodes for PixelCNN++ at 32x32, so the capture takes long and host memory.
    """
    _check(model, n, known, known_mask, temperature, method)
    C, H, W = model.image_shape
    device = next(model.parameters()).device
    noise = gumbel_noise((n, C, H, W, model.levels), generator).to(device)
    if method == "fast" and cuda_graph and known is None and device.type == "cuda":
        return _graphed_sample(model, n, cond, temperature, noise, device)
    x = torch.zeros(n, C, H, W, dtype=torch.long, device=device)
    if known is not None:
        known, known_mask = known.to(device), known_mask.to(device)
    cache = model.incremental(x, cond) if method == "fast" else None
    return _loop(model, cache, x, noise, temperature, cond, known, known_mask, progress)


@torch.no_grad()
def sample_sequence(model, n, method="fast", generator=None, temperature=1.0):
    """Draw ``n`` vectors ``[n, D]`` from a vector autoregressive model (e.g. ``MADE``), one
    dimension at a time in ``model.order``.

    The model provides ``dim``, ``levels``, ``order``, ``model(x) -> logits [B, levels, D]``
    (the naive sampler's full recompute) and ``model.incremental(x)`` with ``logits(d) ->
    [B, levels]`` and ``write(d, values [B])``.  Gumbel noise is drawn up front, so both
    methods give the same vectors for the same generator.
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
