"""Sample-by-sample audio generation for WaveNet-style models.

The protocol a model implements (``fastgen.models.WaveNet`` does): ``quantization``,
``receptive_field``, ``hop`` and ``local_channels``, ``check_cond``, ``check_global``,
``global_embed``, ``window_logits(codes, local_up, g, previous) -> logits [B, quantization, T]``
(the naive generator re-runs it over the last ``receptive_field`` samples at every step), and
``incremental(batch, global_cond)`` -> a cache (the fast generator, per-layer queues) with
either ``step(previous_codes [B], local_t [B, Lc] | None) -> logits [B, quantization]``, or
``draw_at(previous, codes_out, local_t, gumbel [B, quantization], temperature, t)``: the whole
step including the draw as one fused launch, writing ``codes_out``; its state depends on t
only modulo ``cache.period``, so ``generate`` can run it in blocks of ``period`` steps over
static buffers and, on a GPU (``cuda_graph=True``), capture one block as a CUDA graph and
replay it (``cache.state()`` lists the tensors the warm-up before the capture must not change).
A cache may also provide ``draw_steps(previous, codes_out [T, B], local [T, B, Lc] | None,
gumbel [T, B, quantization], temperature, t0)``: T steps in one launch of a persistent kernel
that feeds each drawn code back on the device (``persistent=True``, or by default for small
batches on CUDA); ``generate`` and ``stream`` then launch once per block of samples.  Where the
cache accepts it, ``incremental(batch, global_cond, dtype=...)`` stores weights and queues in
fp16/bf16 (``dtype=``).

Randomness: Gumbel noise is drawn from ``generator`` in fixed blocks of ``NOISE_BLOCK`` time
steps ([steps, B, quantization], time-major), so ``generate`` and any chunking of ``stream``
consume the same numbers and produce the same audio.
"""
import math

import torch

from fastgen.sampling.autoregressive import gumbel_noise

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


def _check(n_samples, temperature, method, chunk=1, persistent=None, dtype=None):
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
    """The generation loop shared by ``generate`` and ``stream``."""

    def __init__(self, model, batch, global_cond, method, generator, temperature, persistent=None, dtype=None):
        self.model, self.method, self.temperature = model, method, temperature
        self.device = next(model.parameters()).device
        self.noise = _Noise(batch, model.quantization, generator, self.device)
        self.chunks = []        # generated codes, [B, n] pieces (concatenated only on demand)
        self.length = 0
        self.previous = torch.full((batch,), model.quantization // 2, dtype=torch.long, device=self.device)
        self.global_cond = global_cond
        self.local_up = None    # upsampled local conditioning received so far [B, Lc, T]
        self.cache = None
        if method == "fast":      # (dtype is passed only when asked for: a plain cache need not accept it)
            low = dtype not in (None, torch.float32)
            self.cache = (model.incremental(batch, global_cond, dtype=dtype) if low
                          else model.incremental(batch, global_cond))
        can = hasattr(self.cache, "draw_steps")
        if persistent and not can:
            raise ValueError("persistent=True needs method='fast' and a model whose cache has the fused "
                             "persistent step (WaveNet with output='mulaw')")
        if persistent is None:
            from fastgen.ops.wavenet_step import wavenet_persistent_preferred
            persistent = can and wavenet_persistent_preferred(batch, self.device)
        self.persistent = bool(persistent)

    def add_local(self, piece):
        up, _ = self.model.check_cond(piece, self.global_cond, self.previous.shape[0])
        self.local_up = up if self.local_up is None else torch.cat([self.local_up, up], dim=2)

    def available(self):
        """How many more samples the conditioning received so far allows."""
        if not self.model.local_channels:
            return math.inf
        have = 0 if self.local_up is None else self.local_up.shape[2]
        return have - self.length

    @torch.no_grad()
    def run(self, steps):
        if self.persistent:
            return self._run_persistent(steps)
        out = []
        for _ in range(steps):
            t = self.length + len(out)
            local_t = self.local_up[:, :, t] if self.local_up is not None else None
            if hasattr(self.cache, "draw_at"):        # one fused launch per sample
                drawn = torch.empty_like(self.previous)
                self.cache.draw_at(self.previous, drawn, local_t, self.noise.next(), self.temperature, t)
                out.append(drawn)
                self.previous = drawn
                continue
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

    def _run_persistent(self, steps):
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

    def append(self, new):
        self.chunks.append(new)
        self.length += new.shape[1]

    def codes(self):
        """All generated codes [B, length] (one concatenation, cached until the next append)."""
        if len(self.chunks) != 1:
            joined = torch.cat(self.chunks, dim=1) if self.chunks else self.previous[:, None][:, :0]
            self.chunks = [joined]
        return self.chunks[0]

    def _naive_logits(self, out, t):
        """Re-run the model over the last receptive_field samples (the reference)."""
        m = self.model
        history = torch.cat([self.codes()] + [o[:, None] for o in out], dim=1)      # [B, t]
        start = max(0, t - m.receptive_field + 1)
        placeholder = torch.zeros(history.shape[0], 1, dtype=torch.long, device=history.device)  # x[t]: unknown
        window = torch.cat([history[:, start:], placeholder], dim=1)
        local = self.local_up[:, :, start:t + 1] if self.local_up is not None else None
        g = m.global_embed(self.global_cond) if self.global_cond is not None else None
        previous = history[:, start - 1] if start > 0 else None
        return m.window_logits(window, local, g, previous)[:, :, -1]


class _Blocks:
    """Runs ``period`` fused steps at a time over static buffers (codes, noise, conditioning);
    with ``cuda_graph`` the block is captured once as a CUDA graph and replayed -- no host work
    per sample.  Valid because the cache's state depends on t only modulo ``period``."""

    def __init__(self, gen, cuda_graph):
        cache, period = gen.cache, gen.cache.period
        batch, levels = gen.previous.shape[0], gen.model.quantization
        self.gen, self.period = gen, period
        self.codes = torch.zeros(period + 1, batch, dtype=torch.long, device=gen.device)
        self.noise = torch.zeros(period, batch, levels, device=gen.device)
        self.local = (torch.zeros(period, batch, gen.model.local_channels, device=gen.device)
                      if gen.model.local_channels else None)
        self.graph = None
        if cuda_graph:
            state = [t.clone() for t in cache.state()]
            self._run_block()                           # compile and warm up outside the capture,
            for saved, live in zip(state, cache.state()):
                live.copy_(saved)                       # then forget what the warm-up pushed
            torch.cuda.synchronize()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._run_block()

    def _run_block(self):
        cache, temperature = self.gen.cache, self.gen.temperature
        if self.gen.persistent:                         # the whole block in one launch
            cache.draw_steps(self.codes[0], self.codes[1:], self.local, self.noise, temperature, 0)
            return
        for i in range(self.period):
            local_t = self.local[i] if self.local is not None else None
            cache.draw_at(self.codes[i], self.codes[i + 1], local_t, self.noise[i], temperature, i)

    def run(self):
        """Draw the next ``period`` samples: [B, period]."""
        gen, t0 = self.gen, self.gen.length
        self.codes[0] = gen.previous
        self.noise.copy_(gen.noise.take(self.period))
        if self.local is not None:
            self.local.copy_(gen.local_up[:, :, t0:t0 + self.period].permute(2, 0, 1))
        if self.graph is not None:
            self.graph.replay()
        else:
            self._run_block()
        new = self.codes[1:].T.clone()
        gen.append(new)
        gen.previous = new[:, -1]
        return new


def generate(model, n_samples, batch=1, local=None, global_cond=None, method="fast", generator=None,
             temperature=1.0, progress=None, cuda_graph=False, persistent=None, dtype=None):
    """Codes [batch, n_samples].  local: [batch, local_channels, frames] covering n_samples.
    ``cuda_graph`` (fast method, fused step, CUDA): replay whole blocks of steps as a graph.
    ``persistent`` (fast method, fused step): True draws each block of samples in one launch of
    the persistent kernel, False one launch per sample, None picks persistent for small batches
    on CUDA (``fastgen.ops.wavenet_step.wavenet_persistent_preferred``); the codes are the same.
    ``dtype`` (fast method, fused step): torch.float16 or torch.bfloat16 store the weight
    matrices and queues in 16 bits (fp32 accumulation, gating and draw); the codes then differ
    from fp32 where a rounding changes a draw (see ``forced_draws``)."""
    _check(n_samples, temperature, method, persistent=persistent, dtype=dtype)
    model.check_cond(local, global_cond, batch, n_samples)
    gen = _Generator(model, batch, global_cond, method, generator, temperature, persistent, dtype)
    if local is not None:
        gen.add_local(local)
    if hasattr(gen.cache, "draw_at") and (cuda_graph or getattr(gen.cache, "blocks", False)):
        blocks = _Blocks(gen, cuda_graph and gen.device.type == "cuda")
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


def stream(model, n_samples, batch=1, local_chunks=None, global_cond=None, chunk=4096, generator=None,
           temperature=1.0, method="fast", persistent=None, dtype=None):
    """Yield codes [batch, <= chunk] as they are produced; local conditioning may arrive in
    pieces (``local_chunks``: an iterable of [batch, local_channels, frames]).  ``persistent``
    and ``dtype`` as in ``generate``; the chunks concatenate to ``generate``'s codes."""
    _check(n_samples, temperature, method, chunk, persistent, dtype)
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
def forced_draws(model, codes, local=None, global_cond=None, generator=None, temperature=1.0, dtype=None,
                 persistent=False):
    """The codes the fast step draws at each t when fed the true history ``codes[:, :t]``
    (teacher forcing), with the noise ``generate`` uses for ``generator``: [B, T].

    For codes from ``generate(..., generator)`` in fp32 this returns the codes themselves;
    with ``dtype`` fp16/bf16 the fraction of equal codes is how often 16-bit storage changes
    a draw -- the meaningful measure, since free-running generation diverges for good after
    its first different draw.  ``persistent``: draw with the persistent kernel (T = 1 per launch)."""
    batch, n = codes.shape
    gen = _Generator(model, batch, global_cond, "fast", generator, temperature, persistent, dtype)
    if not hasattr(gen.cache, "draw_at"):
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
