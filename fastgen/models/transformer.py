"""Autoregressive transformers on causal block-local attention: ``LocalImageTransformer``
(images, Image Transformer / Image GPT style) and ``VideoTransformer`` (videos, the block-local
video transformer of Weissenborn et al. 2020).

Tokens are *pixels* (voxels for video) in raster order: the C channels of a pixel are one token,
embedded as the sum of one learned embedding per (channel, value), and drawn together --
independent given the pixels before (``channel_groups = [[0, ..., C-1]]``, as in
``GatedPixelCNN``; for grey images that is no restriction).  Sub-pixel tokens would triple the
sequence of an RGB image; the joint draw keeps one token per raster position, so the attention
blocks are blocks of pixels.

The network (pre-LayerNorm GPT blocks):

    h_0[p] = e(x[p - 1]) + pos[p] (+ class embedding)      e(x[-1]) = a learned start vector,
                                                          pos = the sum of one learned
                                                          embedding per grid axis
    h <- h + BlockLocalAttention(LN h)   (causal, ``block``, ``memory`` blocks above / before)
    h <- h + MLP(LN h)                   (dim -> 4 dim -> dim, GELU)       x ``layers``
    logits[p] = Linear(LN h[p]) -> [levels, C]

Position p sees pixels < p only through the shifted input, so causal attention that includes the
diagonal keeps the model autoregressive.  Receptive field: a block sees its own block and the
``memory`` blocks before it along the first axis (rows of blocks for images, frames of blocks for
video), and each layer reaches ``memory`` blocks further; pixels in *other block columns* are
never seen -- use blocks as wide as the image (the default) for full context along rows.

Sampling: ``incremental`` keeps every layer's KV cache (``fastgen.nn.AttentionCache``) and runs
each new token through ``BlockLocalAttention.step`` (``block_local_attention_decode``): one token's
work per pixel instead of the whole image's.  Images sample with ``fastgen.sampling.sample``;
videos with ``VideoTransformer.sample`` (``fastgen.sampling.sample``'s loop is 2-D, so the
video's tokens go through ``fastgen.sampling.sample_sequence`` as a flat sequence of C*T*H*W
values -- the same Gumbel-max draw with noise drawn up front, so fast equals naive).
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from fastgen.models.pixelcnn import _PixelModel
from fastgen.nn.attention import AttentionCache, BlockLocalAttention
from fastgen.ops import _validate
from fastgen.sampling import sample_sequence


class _Block(nn.Module):
    """Pre-LayerNorm transformer block: h + attn(LN h), then h + MLP(LN h); h [B, n, dim]."""

    def __init__(self, dim: int, heads: int, grid: Tuple[int, ...], block: Tuple[int, ...], memory: Optional[int],
                 dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = BlockLocalAttention(dim, heads, grid, block, causal=True, memory=memory, dropout=dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))

    def forward(self, h: Tensor) -> Tensor:
        h = h + self.attn(self.norm1(h))
        return h + self.mlp(self.norm2(h))

    def step(self, h_t: Tensor, cache: AttentionCache, index: int) -> Tensor:
        """Token ``index`` alone (h_t [B, 1, dim]) given the cache of the tokens before it."""
        h_t = h_t + self.attn.step(self.norm1(h_t), cache, index)
        return h_t + self.mlp(self.norm2(h_t))


class _GridTransformer(nn.Module):
    """The network of the module docstring over the N = prod(grid) tokens of a raster grid:
    values x [B, C, N] (long) and a conditioning vector [B, dim] or None -> logits
    [B, levels, C, N]."""

    def __init__(self, channels: int, levels: int, grid: Tuple[int, ...], dim: int, heads: int, layers: int,
                 block: Tuple[int, ...], memory: Optional[int], dropout: float) -> None:
        super().__init__()
        if not isinstance(layers, int) or layers < 1:
            raise ValueError(f"layers must be a positive int, got {layers!r}")
        self.channels, self.levels, self.grid, self.dim = channels, levels, grid, dim
        self.value_embedding = nn.Embedding(channels * levels, dim)
        self.start = nn.Parameter(0.02 * torch.randn(dim))
        self.axis_embeddings = nn.ParameterList(nn.Parameter(0.02 * torch.randn(size, dim)) for size in grid)
        self.blocks = nn.ModuleList(_Block(dim, heads, grid, block, memory, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, channels * levels)
        self.register_buffer("offsets", torch.arange(channels) * levels, persistent=False)

    def positions(self) -> Tensor:
        """[N, dim]: position p's embedding, the sum of its coordinates' axis embeddings."""
        pos = self.axis_embeddings[0]
        for table in self.axis_embeddings[1:]:         # raster order: the last axis fastest
            pos = (pos[:, None, :] + table[None]).flatten(0, 1)
        return pos

    def embed(self, x: Tensor) -> Tensor:
        """Values x [B, C, n] -> [B, n, dim], the sum of every channel's (channel, value) embedding."""
        return self.value_embedding(x + self.offsets[:, None]).sum(1)

    def to_logits(self, h: Tensor) -> Tensor:
        """h [B, n, dim] -> logits [B, levels, C, n]."""
        B, n, _ = h.shape
        return self.head(self.norm(h)).view(B, n, self.channels, self.levels).permute(0, 3, 2, 1)

    def forward(self, x: Tensor, cond: Optional[Tensor]) -> Tensor:
        B = x.shape[0]
        h = torch.cat([self.start.expand(B, 1, self.dim), self.embed(x[:, :, :-1])], dim=1) + self.positions()
        if cond is not None:
            h = h + cond[:, None]
        for block in self.blocks:
            h = block(h)
        return self.to_logits(h)


class _TokenCache:
    """Incremental state of a ``_GridTransformer``: every block's KV cache and the values written
    so far (``values [B, C, N]``).  ``logits(p)`` runs token p -- and any token before it not run
    yet -- through the blocks' ``step`` and returns its logits [B, levels, C]."""

    def __init__(self, net: _GridTransformer, batch: int, cond: Optional[Tensor], device: torch.device) -> None:
        self.net, self.cond = net, cond
        self.caches: List[AttentionCache] = [block.attn.new_cache(batch) for block in net.blocks]
        self.values = torch.zeros(batch, net.channels, math.prod(net.grid), dtype=torch.long, device=device)
        self.positions = net.positions()
        self.done = 0               # tokens 0 .. done-1 are in the KV caches

    def write(self, p: int, values: Tensor) -> None:
        self.values[:, :, p] = values

    def _token(self, p: int) -> Tensor:
        net = self.net
        B = self.values.shape[0]
        h = net.start.expand(B, 1, net.dim) if p == 0 else net.embed(self.values[:, :, p - 1:p])
        h = h + self.positions[p]
        if self.cond is not None:
            h = h + self.cond[:, None]
        for block, cache in zip(net.blocks, self.caches):
            h = block.step(h, cache, p)
        return net.to_logits(h)[..., 0]

    def logits(self, p: int) -> Tensor:
        # a token asked again (several channel groups, or logits after write) is recomputed:
        # its key and value depend only on the values before it, so the cache is unchanged
        for i in range(min(self.done, p), p + 1):
            out = self._token(i)
        self.done = max(self.done, p + 1)
        return out


def _block_arg(block, default: Tuple[int, ...], dims: int) -> Tuple[int, ...]:
    block = default if block is None else ((block,) if isinstance(block, int) else tuple(block))
    if len(block) != dims:
        raise ValueError(f"block must have {dims} sizes, got {block!r}")
    return block


class LocalImageTransformer(_PixelModel):
    """An Image-GPT-style autoregressive image model on causal block-local attention (module
    docstring): ``forward(x [B, C, H, W] long, cond) -> logits [B, levels, C, H, W]``,
    ``loss(x, cond)`` in bits per dimension, sampled with ``fastgen.sampling.sample`` (the fast
    method runs one token per pixel through the layers' KV caches).

    block (bh, bw): the attention blocks over the H x W pixel grid (default: 4 full rows);
    memory: how many blocks above each block it also attends (None/0: its own block only).
    num_classes: class-conditional (``cond`` = class ids [B]), its embedding added to every token.
    """

    def __init__(self, image_shape: Tuple[int, int, int] = (1, 28, 28), levels: int = 256, dim: int = 64,
                 heads: int = 4, layers: int = 4, block: Optional[Sequence[int]] = None, memory: Optional[int] = 1,
                 num_classes: Optional[int] = None, dropout: float = 0.0) -> None:
        super().__init__()
        self._setup(image_shape, levels, num_classes, None, cond_dim=dim)
        C, H, W = self.image_shape
        self.channel_groups = [list(range(C))]
        self.block = _block_arg(block, (min(4, H), W), 2)
        self.net = _GridTransformer(C, levels, (H, W), dim, heads, layers, self.block, memory, dropout)

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        self.check_images(x)
        B = x.shape[0]
        return self.net(x.long().flatten(2), self.embed_cond(cond, B)).view(B, self.levels, *self.image_shape)

    def incremental(self, x: Tensor, cond: Optional[Tensor] = None, check: bool = True) -> "_ImageCache":
        """The sampling cache for images like x [B, C, H, W] (``fastgen.sampling.PixelCache``);
        ``check=False``: cond has passed ``check_cond`` already."""
        return _ImageCache(self, x, cond, check)


class _ImageCache:
    """``fastgen.sampling.PixelCache`` of a ``LocalImageTransformer``: pixel (r, c) is token
    r * W + c of a ``_TokenCache``."""

    def __init__(self, model: LocalImageTransformer, x: Tensor, cond: Optional[Tensor], check: bool = True):
        self.W = model.image_shape[2]
        self.tokens = _TokenCache(model.net, x.shape[0], model.embed_cond(cond, x.shape[0], check), x.device)

    @property
    def fused_step(self) -> None:
        """No fused per-pixel step: the sampler calls ``logits`` and ``write``."""
        return None

    def begin_row(self, r: int) -> None:
        pass  # nothing is shared across a row

    def write(self, r: int, c: int, values: Tensor) -> None:
        self.tokens.write(r * self.W + c, values)

    def logits(self, r: int, c: int) -> Tensor:
        """[B, levels, C] logits at pixel (r, c) given the pixels before it."""
        return self.tokens.logits(r * self.W + c)


class VideoTransformer(_PixelModel):
    """An autoregressive video model on causal 3-D block-local attention (module docstring):
    videos ``x [B, C, T, H, W]`` (long, values in [0, levels)), ``forward(x, cond) -> logits
    [B, levels, C, T, H, W]``, ``loss`` in bits per dimension, ``sample(n, ...)``.

    video_shape: (T, H, W) (grey, C = 1) or (C, T, H, W).  block (bt, bh, bw): the attention
    blocks over the T x H x W voxel grid (default: one whole frame); memory: how many blocks
    before each block along time it also attends (default 1: the same block of the previous
    frame block).  num_classes: class-conditional, as ``LocalImageTransformer``.
    """

    def __init__(self, video_shape: Sequence[int] = (4, 8, 8), levels: int = 256, dim: int = 64, heads: int = 4,
                 layers: int = 4, block: Optional[Sequence[int]] = None, memory: Optional[int] = 1,
                 num_classes: Optional[int] = None, dropout: float = 0.0) -> None:
        super().__init__()
        video_shape = tuple(video_shape)
        if len(video_shape) == 3:
            video_shape = (1,) + video_shape
        if len(video_shape) != 4 or not all(isinstance(s, int) and s >= 1 for s in video_shape):
            raise ValueError(f"video_shape must be (T, H, W) or (C, T, H, W) positive ints, got {video_shape!r}")
        C, T, H, W = video_shape
        # the conditioning and checks of the image models, over a (C, T, H * W) "image"
        self._setup((C, T, H * W), levels, num_classes, None, cond_dim=dim)
        self.video_shape, self.image_shape = video_shape, None
        self.block = _block_arg(block, (1, H, W), 3)
        self.net = _GridTransformer(C, levels, (T, H, W), dim, heads, layers, self.block, memory, dropout)

    def check_images(self, x: Tensor) -> None:
        """TypeError / ValueError unless x is integer videos [B, C, T, H, W] in [0, levels)."""
        if not isinstance(x, Tensor) or x.dtype not in (torch.long, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"x must be an integer tensor [B, C, T, H, W], got {getattr(x, 'dtype', type(x))}")
        if x.dim() != 5 or tuple(x.shape[1:]) != self.video_shape:
            raise ValueError(f"x must have shape [B, {', '.join(map(str, self.video_shape))}] ([B, C, T, H, W]) "
                             f"for this model, got {tuple(x.shape)}")
        _validate.ids_in_range("x values", x, self.levels)

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        self.check_images(x)
        B = x.shape[0]
        return self.net(x.long().flatten(2), self.embed_cond(cond, B)).view(B, self.levels, *self.video_shape)

    @torch.no_grad()
    def sample(self, n: int, cond: Optional[Tensor] = None, method: str = "fast",
               generator: Optional[torch.Generator] = None, temperature: float = 1.0) -> Tensor:
        """Draw ``n`` videos [n, C, T, H, W] (long) voxel by voxel in raster order (t, h, w), the
        C channels of a voxel together.  method 'fast': one token per voxel through the KV
        caches; 'naive': the whole model re-run per value.  Runs
        ``fastgen.sampling.sample_sequence`` on the flat sequence of the C*T*H*W values (token
        major), whose Gumbel noise [n, C*T*H*W, levels] is drawn up front from ``generator``:
        both methods draw the same videos for the same generator."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        self.check_cond(cond, n)
        flat = sample_sequence(_FlatVideo(self, cond), n, method, generator, temperature)   # [n, N * C]
        C, T, H, W = self.video_shape
        return flat.view(n, T, H, W, C).permute(0, 4, 1, 2, 3).contiguous()


class _FlatVideo:
    """A ``VideoTransformer`` with its conditioning bound, as a ``fastgen.sampling.SequenceModel``
    over the flat values d = token * C + channel (token = raster position (t, h, w))."""

    def __init__(self, model: VideoTransformer, cond: Optional[Tensor]) -> None:
        self.model, self.cond = model, cond
        self.channels = model.video_shape[0]
        self.dim = math.prod(model.video_shape)
        self.levels = model.levels
        self.order = list(range(self.dim))

    def _videos(self, x: Tensor) -> Tensor:
        C, T, H, W = self.model.video_shape
        return x.view(x.shape[0], T, H, W, C).permute(0, 4, 1, 2, 3)

    def __call__(self, x: Tensor) -> Tensor:
        """x [B, D] -> logits [B, levels, D] (the naive sampler's full recompute)."""
        logits = self.model(self._videos(x), self.cond).flatten(3)                  # [B, levels, C, N]
        return logits.transpose(2, 3).reshape(x.shape[0], self.levels, self.dim)

    def incremental(self, x: Tensor) -> "_VideoCache":
        return _VideoCache(self, x)

    def parameters(self):
        return self.model.parameters()


class _VideoCache:
    """``fastgen.sampling.SequenceCache`` of a ``_FlatVideo``: value d is channel d % C of token
    d // C; a token's logits are computed at its first channel and kept for the others."""

    def __init__(self, flat: _FlatVideo, x: Tensor) -> None:
        self.C = flat.channels
        cond = flat.model.embed_cond(flat.cond, x.shape[0], check=False)
        self.tokens = _TokenCache(flat.model.net, x.shape[0], cond, x.device)
        self.token, self.last = None, None

    def logits(self, d: int) -> Tensor:
        token, channel = divmod(d, self.C)
        if token != self.token:
            self.token, self.last = token, self.tokens.logits(token)
        return self.last[:, :, channel]

    def write(self, d: int, values: Tensor) -> None:
        token, channel = divmod(d, self.C)
        self.tokens.values[:, channel, token] = values
