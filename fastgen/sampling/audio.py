"""Sample-by-sample audio generation for WaveNet-style models over mu-law codes [B, T].

What a model must provide is written down as ``typing.Protocol`` classes (``fastgen.models.WaveNet``
implements them; this module never imports a model):

- ``AudioModel``: the model (the naive generator re-runs ``window_logits`` over the last
  ``receptive_field`` samples at every step), whose ``incremental`` builds the fast
  generator's cache, one of
- ``StepCache``: per-layer queues and a ``step`` that returns logits (the sampler draws), or
- ``DrawCache``: a step that includes the draw, as one fused launch (``draw_at``).  Its state
  depends on t only modulo ``period``, so ``generate(cuda_graph=True)`` captures one block of
  ``period`` draws as a CUDA graph (``fastgen.sampling.graphs.GRAPHS``) and replays it.
- ``PersistentDrawCache``: a ``DrawCache`` that can also draw T steps in one launch of a
  persistent kernel that feeds each drawn code back on the device (``draw_steps``), and says
  when it prefers to (``prefers_persistent``: the default of ``persistent=None``).

Where the cache accepts it, ``incremental(batch, global_cond, dtype=...)`` stores weights and
queues in fp16/bf16 (``dtype=``; passed only when asked for, so other caches need not take it).

Randomness: Gumbel noise is drawn from ``generator`` in fixed blocks of ``NOISE_BLOCK`` time
steps ([steps, B, quantization], time-major), so ``generate`` and any chunking of ``stream``
consume the same numbers and produce the same audio.
"""
import math
from typing import (Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Protocol, Sequence, Tuple,
                    Union, runtime_checkable)

import torch
from torch import Tensor

from fastgen.sampling.autoregressive import gumbel_noise
from fastgen.sampling.graphs import GRAPHS, weights_version


# ------------------------------------------------------------------------------ protocols

@runtime_checkable
class StepCache(Protocol):
    """The fast generator's state as queues of past layer inputs: one step, then the sampler draws."""

    def step(self, previous: Tensor, local_t: Optional[Tensor]) -> Tensor:
        """previous: codes [B] of the last sample (silence at the start); local_t: upsampled local
        conditioning at this step [B, Lc] or None -> logits [B, quantization]; advances the state."""


@runtime_checkable
class DrawCache(Protocol):
    """The fast generator's state with a step that includes the Gumbel-max draw (one fused launch)."""

    period: int     # the state depends on the time step t only modulo period

    def draw_at(self, previous: Tensor, codes_out: Tensor, local_t: Optional[Tensor], gumbel: Tensor,
                temperature: float, t: int) -> None:
        """Draw sample t into codes_out [B] (long) given previous [B], local_t [B, Lc] or None and
        gumbel [B, quantization]; advances the state."""

    def state(self) -> Sequence[Tensor]:
        """This generation's own tensors that the draws read or write (queues, conditioning
        terms).  A captured block of draws copies them in before and out after each replay and
        runs on the tensors of the cache it was captured with; so anything else a draw touches
        (packed weights, workspace) must hold no state of its own generation, and the cache
        should not hold its model (the captured graph keeps the cache alive, not the model)."""


@runtime_checkable
class PersistentDrawCache(DrawCache, Protocol):
    """A ``DrawCache`` that can draw a block of samples in one launch of a persistent kernel."""

    def draw_steps(self, previous: Tensor, codes_out: Tensor, local: Optional[Tensor], gumbel: Tensor,
                   temperature: float, t0: int) -> None:
        """Draw samples t0 .. t0+T-1 into codes_out [T, B], each the next one's previous code;
        local [T, B, Lc] or None, gumbel [T, B, quantization]; advances the state."""

    def prefers_persistent(self) -> bool:
        """Whether ``persistent=None`` means ``draw_steps`` (else one ``draw_at`` per sample)."""


class AudioModel(Protocol):
    """An autoregressive model over mu-law codes [B, T] in [0, quantization), with optional local
    conditioning (``local_channels`` features per frame, upsampled to samples) and global
    conditioning (an id per row), e.g. ``fastgen.models.WaveNet``."""

    quantization: int                  # code levels
    local_channels: Optional[int]      # None or 0: no local conditioning
    receptive_field: int               # samples of the past one prediction sees

    def check_cond(self, local: Optional[Tensor], global_cond: Optional[Tensor], batch: int,
                   length: Optional[int] = None) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """Check the conditioning (ValueError) -> (local conditioning upsampled to samples
        [B, Lc, T'] or None, the global embedding [B, G] or None)."""

    def check_global(self, global_cond: Optional[Tensor], batch: int) -> Optional[Tensor]:
        """Check the global conditioning (ValueError) -> its embedding [B, G] or None."""

    def window_logits(self, x: Tensor, local_up: Optional[Tensor] = None, g: Optional[Tensor] = None,
                      previous: Optional[Tensor] = None) -> Tensor:
        """Logits [B, quantization, T] for codes x [B, T] (no checks): the naive generator's
        full recompute.  previous: the code before x[:, 0] (silence when None)."""

    def incremental(self, batch: int, global_cond: Optional[Tensor] = None) -> Union[StepCache, DrawCache]:
        """A fresh cache for the fast generator (may also take ``dtype=``, see the module docstring)."""

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """(An ``nn.Module``'s: the generator reads the device and the weights' versions.)"""


# ------------------------------------------------------------------------------ generation

NOISE_BLOCK = 256


class _Noise:
    """Gumbel noise served one time step at a time, drawn in fixed blocks."""

    def __init__(self, batch, levels, generator, device):
        self.shape, self.generator, self.device = (NOISE_BLOCK, batch, levels), generator, device
        self.block, self.pos = None, NOISE_BLOCK

    def next(self):
        if self.pos == NOISE_BLOCK:
            self.block, self.pos = gumbel_noise(self.shape, self.generator).to(self.device), 0
        self.pos += 1
        return self.block[self.pos - 1]

    def take(self, steps):
        """The next ``steps`` time steps at once: [steps, B, levels] (the same numbers as
        ``steps`` calls of ``next``)."""
        parts = []
        while steps > 0:
            if self.pos == NOISE_BLOCK:
                self.block, self.pos = gumbel_noise(self.shape, self.generator).to(self.device), 0
            n = min(steps, NOISE_BLOCK - self.pos)
            parts.append(self.block[self.pos:self.pos + n])
            self.pos += n
            steps -= n
        return parts[0] if len(parts) == 1 else torch.cat(parts)


DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check(n_samples, temperature, method, chunk=1, persistent=None, dtype=None, batch=1):
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    if method not in ("fast", "naive"):
        raise ValueError(f"method must be 'fast' or 'naive', got {method!r}")
    if persistent not in (None, True, False):
        raise ValueError(f"persistent must be None (automatic), True or False, got {persistent!r}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be None, torch.float32, torch.float16 or torch.bfloat16, got {dtype!r}")
    if method == "naive" and (persistent or dtype not in (None, torch.float32)):
        raise ValueError("persistent and 16-bit dtype apply to method='fast' only (the naive method is the "
                         "fp32 reference)")
    if not isinstance(n_samples, int) or n_samples <= 0:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    if temperature <= 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if not isinstance(chunk, int) or chunk <= 0:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")


class _Generator:
    """The generation loop shared by ``generate``, ``stream`` and ``forced_draws``."""

    def __init__(self, model: AudioModel, batch: int, global_cond: Optional[Tensor], method: str,
                 generator: Optional[torch.Generator], temperature: float, persistent: Optional[bool] = None,
                 dtype: Optional[torch.dtype] = None):
        self.model, self.method, self.temperature = model, method, temperature
        self.device = next(model.parameters()).device
        self.noise = _Noise(batch, model.quantization, generator, self.device)
        self.chunks: List[Tensor] = []   # generated codes, [B, n] pieces (concatenated only on demand)
        self.length = 0
        self.previous = torch.full((batch,), model.quantization // 2, dtype=torch.long, device=self.device)
        self.global_cond = global_cond
        self.local_up: Optional[Tensor] = None   # upsampled local conditioning received so far [B, Lc, T]
        self.cache: Union[StepCache, DrawCache, None] = None
        self.global_embedding: Optional[Tensor] = None    # the naive generator's g [B, G]
        if method == "fast":      # (dtype is passed only when asked for: a plain cache need not accept it)
            low = dtype not in (None, torch.float32)
            self.cache = (model.incremental(batch, global_cond, dtype=dtype) if low
                          else model.incremental(batch, global_cond))
            if not isinstance(self.cache, (StepCache, DrawCache)):
                raise TypeError(f"model.incremental must return a StepCache or a DrawCache "
                                f"(fastgen.sampling.audio), got {type(self.cache).__name__}")
        else:
            with torch.no_grad():
                self.global_embedding = model.check_global(global_cond, batch)
        self.draws = isinstance(self.cache, DrawCache)     # the cache draws itself, one launch per sample
        can = isinstance(self.cache, PersistentDrawCache)
        if persistent and not can:
            raise ValueError("persistent=True needs method='fast' and a model whose cache has the fused "
                             "persistent step (WaveNet with output='mulaw')")
        if persistent is None:
            persistent = can and self.cache.prefers_persistent()
        self.persistent = bool(persistent)

    def add_local(self, piece: Tensor) -> None:
        up, _ = self.model.check_cond(piece, self.global_cond, self.previous.shape[0])
        self.local_up = up if self.local_up is None else torch.cat([self.local_up, up], dim=2)

    def available(self) -> float:
        """How many more samples the conditioning received so far allows."""
        if not self.model.local_channels:
            return math.inf
        have = 0 if self.local_up is None else self.local_up.shape[2]
        return have - self.length

    @torch.no_grad()
    def run(self, steps: int) -> Tensor:
        """Draw the next ``steps`` samples: [B, steps]."""
        if self.persistent:
            return self._run_persistent(steps)
        if self.draws:
            return self._run_draws(steps)
        out = []
        for _ in range(steps):
            t = self.length + len(out)
            local_t = self.local_up[:, :, t] if self.local_up is not None else None
            if self.cache is not None:
                logits = self.cache.step(self.previous, local_t)
            else:
                logits = self._naive_logits(out, t)
            drawn = (logits.float() / self.temperature + self.noise.next()).argmax(dim=1)
            out.append(drawn)
            self.previous = drawn
        new = torch.stack(out, dim=1) if out else self.previous[:, None][:, :0]
        self.append(new)
        return new

    def _run_draws(self, steps: int) -> Tensor:
        """``steps`` samples, one fused launch each, drawn into one buffer allocated per call: the
        loop allocates nothing per sample (its launch budget is one launch per sample)."""
        codes = torch.empty(steps, self.previous.shape[0], dtype=torch.long, device=self.device)
        for i in range(steps):
            t = self.length + i
            local_t = self.local_up[:, :, t] if self.local_up is not None else None
            self.cache.draw_at(self.previous, codes[i], local_t, self.noise.next(), self.temperature, t)
            self.previous = codes[i]
        new = codes.T.contiguous() if steps else self.previous[:, None][:, :0]
        self.append(new)
        return new

    def _run_persistent(self, steps: int) -> Tensor:
        """``steps`` samples, one persistent launch per NOISE_BLOCK of them (bounded noise buffers)."""
        out = []
        while steps > 0:
            n, t = min(NOISE_BLOCK, steps), self.length + sum(o.shape[1] for o in out)
            local = self.local_up[:, :, t:t + n].permute(2, 0, 1) if self.local_up is not None else None
            codes = torch.empty(n, self.previous.shape[0], dtype=torch.long, device=self.device)
            self.cache.draw_steps(self.previous, codes, local, self.noise.take(n), self.temperature, t)
            out.append(codes.T)
            self.previous = codes[-1]
            steps -= n
        new = torch.cat(out, dim=1) if out else self.previous[:, None][:, :0]
        self.append(new)
        return new

    def append(self, new: Tensor) -> None:
        self.chunks.append(new)
        self.length += new.shape[1]

    def codes(self) -> Tensor:
        """All generated codes [B, length] (one concatenation, cached until the next append)."""
        if len(self.chunks) != 1:
            joined = torch.cat(self.chunks, dim=1) if self.chunks else self.previous[:, None][:, :0]
            self.chunks = [joined]
        return self.chunks[0]

    def _naive_logits(self, out: List[Tensor], t: int) -> Tensor:
        """Re-run the model over the last receptive_field samples (the reference)."""
        m = self.model
        history = torch.cat([self.codes()] + [o[:, None] for o in out], dim=1)      # [B, t]
        start = max(0, t - m.receptive_field + 1)
        placeholder = torch.zeros(history.shape[0], 1, dtype=torch.long, device=history.device)  # x[t]: unknown
        window = torch.cat([history[:, start:], placeholder], dim=1)
        local = self.local_up[:, :, start:t + 1] if self.local_up is not None else None
        previous = history[:, start - 1] if start > 0 else None
        return m.window_logits(window, local, self.global_embedding, previous)[:, :, -1]


class _BlockOutputs(NamedTuple):
    """What a captured block of draws returns: buffers that the next replay overwrites."""
    codes: Tensor                 # [period, B] the drawn codes
    state: Sequence[Tensor]       # the cache's state after the block (the captured cache's tensors)
    cache: DrawCache              # the cache the graph draws with: its tensors live as long as the graph


def _block_loop(cache: DrawCache, persistent: bool, temperature: float, batch: int,
                device: torch.device) -> Callable[[Dict[str, Tensor]], _BlockOutputs]:
    """The captured loop: ``cache.period`` draws on ``cache``'s own tensors, from the state in
    the graph's input buffers (``state<i>``, ``previous``, ``noise`` [period, B, A] and
    ``local`` [period, B, Lc]).  It copies that state in first rather than drawing on the input
    buffers themselves: so running it twice -- the warm-up before a capture, then the replay --
    starts from the same state both times, and ``cache`` (the one the graph was captured with,
    from an earlier ``generate`` call when it is replayed) starts every block from the state of
    the generation that replays it."""
    period = cache.period

    def run(buffers: Dict[str, Tensor]) -> _BlockOutputs:
        live = list(cache.state())
        for i, tensor in enumerate(live):
            tensor.copy_(buffers[f"state{i}"])
        noise, local = buffers["noise"], buffers.get("local")
        codes = torch.empty(period, batch, dtype=torch.long, device=device)
        if persistent:                                  # the whole block in one launch
            cache.draw_steps(buffers["previous"], codes, local, noise, temperature, 0)
        else:
            previous = buffers["previous"]
            for i in range(period):
                cache.draw_at(previous, codes[i], None if local is None else local[i], noise[i], temperature, i)
                previous = codes[i]
        return _BlockOutputs(codes, live, cache)
    return run


class _CapturedBlocks:
    """Draws ``period`` samples at a time as one replay of a captured graph (``GRAPHS``: no
    host work per sample).  Valid because a ``DrawCache``'s state depends on t only modulo
    ``period``, and blocks start at t = 0 (so block i draws t = i * period + 0 .. period - 1).

    The graph is the model's, reused by every later ``generate`` call with the same
    configuration.  The state of *this* call -- its cache's ``state()``, the previous code, its
    noise and local conditioning -- goes in as the graph's static inputs before each replay,
    and the cache's state comes back out after it; everything the graph reads besides -- the
    captured cache's packed weights (through the model's ``weights_version``), the
    temperature, the TF32 setting -- is in the configuration."""

    def __init__(self, gen: _Generator):
        self.gen, self.period = gen, gen.cache.period
        batch = gen.previous.shape[0]
        self.run_block = _block_loop(gen.cache, gen.persistent, gen.temperature, batch, gen.device)
        local_channels = None if gen.local_up is None else gen.local_up.shape[1]
        state = tuple((tuple(t.shape), t.dtype) for t in gen.cache.state())
        self.config = ("audio.generate block", type(gen.cache), str(gen.device), batch, self.period,
                       gen.model.quantization, local_channels, state, gen.persistent, float(gen.temperature),
                       weights_version(gen.model),
                       torch.backends.cuda.matmul.allow_tf32)    # the kernels' TF32 choice is baked in

    def _inputs(self) -> Dict[str, Tensor]:
        """This call's values for the graph's static inputs (takes the block's noise)."""
        gen, t0 = self.gen, self.gen.length
        inputs = {"previous": gen.previous, "noise": gen.noise.take(self.period)}
        if gen.local_up is not None:
            inputs["local"] = gen.local_up[:, :, t0:t0 + self.period].permute(2, 0, 1).contiguous()
        inputs.update({f"state{i}": t for i, t in enumerate(gen.cache.state())})
        return inputs

    @torch.no_grad()
    def run(self) -> Tensor:
        """Draw the next ``period`` samples: [B, period]."""
        gen = self.gen
        out = GRAPHS.replay(gen.model, self.config, self._inputs(), self.run_block)
        for live, after in zip(gen.cache.state(), out.state):
            if live is not after:                   # (they are the same in the capturing call)
                live.copy_(after)
        new = out.codes.T.clone()
        gen.append(new)
        gen.previous = new[:, -1]
        return new


def generate(model: AudioModel, n_samples: int, batch: int = 1, local: Optional[Tensor] = None,
             global_cond: Optional[Tensor] = None, method: str = "fast", generator: Optional[torch.Generator] = None,
             temperature: float = 1.0, progress: Optional[Callable[[int], object]] = None, cuda_graph: bool = False,
             persistent: Optional[bool] = None, dtype: Optional[torch.dtype] = None) -> Tensor:
    """Codes [batch, n_samples].  local: [batch, local_channels, frames] covering n_samples.
    ``cuda_graph`` (fast method, a ``DrawCache``, CUDA): replay whole blocks of ``period`` steps
    as a captured graph, kept for later calls (``_CapturedBlocks``); elsewhere it is ignored.
    ``persistent`` (fast method, a ``PersistentDrawCache``): True draws each block of samples in
    one launch of the persistent kernel, False one launch per sample, None lets the cache decide
    (``prefers_persistent``; WaveNet: small batches on CUDA); the codes are the same.
    ``dtype`` (fast method, fused step): torch.float16 or torch.bfloat16 store the weight
    matrices and queues in 16 bits (fp32 accumulation, gating and draw); the codes then differ
    from fp32 where a rounding changes a draw (see ``forced_draws``)."""
    _check(n_samples, temperature, method, persistent=persistent, dtype=dtype, batch=batch)
    model.check_cond(local, global_cond, batch, n_samples)
    gen = _Generator(model, batch, global_cond, method, generator, temperature, persistent, dtype)
    if local is not None:
        gen.add_local(local)
    if cuda_graph and gen.draws and GRAPHS.supports(gen.device):
        blocks = _CapturedBlocks(gen)
        while n_samples - gen.length >= blocks.period:
            blocks.run()
            if progress is not None:
                progress(gen.length)
    done = gen.length
    while done < n_samples:
        step = min(NOISE_BLOCK, n_samples - done)
        gen.run(step)
        done += step
        if progress is not None:
            progress(done)
    return gen.codes()


def stream(model: AudioModel, n_samples: int, batch: int = 1, local_chunks: Optional[Iterable[Tensor]] = None,
           global_cond: Optional[Tensor] = None, chunk: int = 4096, generator: Optional[torch.Generator] = None,
           temperature: float = 1.0, method: str = "fast", persistent: Optional[bool] = None,
           dtype: Optional[torch.dtype] = None) -> Iterator[Tensor]:
    """Yield codes [batch, <= chunk] as they are produced; local conditioning may arrive in
    pieces (``local_chunks``: an iterable of [batch, local_channels, frames]).  ``persistent``
    and ``dtype`` as in ``generate``; the chunks concatenate to ``generate``'s codes."""
    _check(n_samples, temperature, method, chunk, persistent, dtype, batch)
    if bool(model.local_channels) != (local_chunks is not None):
        raise ValueError("local_chunks must be given exactly when the model has local_channels")
    model.check_global(global_cond, batch)
    gen = _Generator(model, batch, global_cond, method, generator, temperature, persistent, dtype)
    pieces = iter(local_chunks) if local_chunks is not None else None
    produced = 0
    while produced < n_samples:
        want = min(chunk, n_samples - produced)
        while gen.available() < want:
            piece = next(pieces, None)
            if piece is None:
                raise ValueError(f"local conditioning ran out after {gen.length + gen.available()} "
                                 f"samples; {n_samples} were asked for")
            gen.add_local(piece)
        out = gen.run(want)
        produced += want
        yield out


@torch.no_grad()
def forced_draws(model: AudioModel, codes: Tensor, local: Optional[Tensor] = None,
                 global_cond: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
                 temperature: float = 1.0, dtype: Optional[torch.dtype] = None, persistent: bool = False) -> Tensor:
    """The codes the fast step draws at each t when fed the true history ``codes[:, :t]``
    (teacher forcing), with the noise ``generate`` uses for ``generator``: [B, T].

    For codes from ``generate(..., generator)`` in fp32 this returns the codes themselves;
    with ``dtype`` fp16/bf16 the fraction of equal codes is how often 16-bit storage changes
    a draw -- the meaningful measure, since free-running generation diverges for good after
    its first different draw.  ``persistent``: draw with the persistent kernel (T = 1 per launch)."""
    batch, n = codes.shape
    gen = _Generator(model, batch, global_cond, "fast", generator, temperature, persistent, dtype)
    if not gen.draws:
        raise ValueError("forced_draws needs a model whose cache has the fused step (WaveNet, output='mulaw')")
    if local is not None:
        gen.add_local(local)
    drawn = torch.empty(n, batch, dtype=torch.long, device=gen.device)
    previous = gen.previous
    for t in range(n):
        local_t = gen.local_up[:, :, t] if gen.local_up is not None else None
        if persistent:
            gen.cache.draw_steps(previous, drawn[t:t + 1], None if local_t is None else local_t[None],
                                 gen.noise.take(1), temperature, t)
        else:
            gen.cache.draw_at(previous, drawn[t], local_t, gen.noise.next(), temperature, t)
        previous = codes[:, t].contiguous()
    return drawn.T
