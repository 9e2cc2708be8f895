"""WaveNet (van den Oord et al. 2016): dilated causal convolutions over mu-law audio codes.

codes x: long [B, T] in [0, quantization); ``model(x, local, global_cond)`` -> logits
[B, quantization, T], where logits[:, :, t] is the distribution of x[:, t] given x[:, :t]
(the input at t is the embedding of x[:, t-1]; before the start, silence).

Layer l (dilation d = 2^(l mod cycle), kernel k):
    z = CausalConv1d(h, d) + W_local l(c_up) + W_global g
    u = tanh(z_a) * sigmoid(z_b);  skip += 1x1(u);  h = h + 1x1(u)
Output: 1x1(relu(1x1(relu(skip)))) -> mu-law softmax over ``quantization`` levels, or a
discretized mixture of logistics (``output='mol'``) evaluated as per-level log-probabilities.

Local conditioning ``local [B, local_channels, frames]`` is upsampled by a transposed conv
with kernel = stride = ``hop`` (each frame maps to its own ``hop`` samples, so conditioning
can arrive in pieces); global conditioning is an id ``[B]`` (e.g. a speaker).
Generation lives in ``fastgen.sampling.audio``; ``generate`` and ``stream`` call it.  The model
implements its ``AudioModel`` protocol; its fast caches are ``_FusedQueueCache`` (mu-law models: the
fused step ``fastgen.ops.wavenet_step``, per sample or persistent, which the cache chooses) and
``_QueueCache`` (the eager per-layer queue step).
"""
import math
from typing import Callable, Iterable, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgen.nn import CausalConv1d
from fastgen.nn.functional import gated_activation, mu_law_decode, mu_law_encode
from fastgen.ops import _validate
from fastgen.ops.wavenet_step import WAVENET_DTYPES, WaveNetStepWeights, wavenet_step, wavenet_steps


class WaveNet(nn.Module):
    """The model (see the module docstring); implements ``fastgen.sampling.audio.AudioModel``."""

    def __init__(self, layers: int = 30, cycle: int = 10, residual_channels: int = 64, skip_channels: int = 256,
                 quantization: int = 256, kernel_size: int = 2, output: str = "mulaw", nr_mix: int = 10,
                 local_channels: Optional[int] = None, hop: int = 256, global_classes: Optional[int] = None,
                 global_dim: int = 32):
        super().__init__()
        self.config = dict(layers=layers, cycle=cycle, residual_channels=residual_channels,
                           skip_channels=skip_channels, quantization=quantization, kernel_size=kernel_size,
                           output=output, nr_mix=nr_mix, local_channels=local_channels, hop=hop,
                           global_classes=global_classes, global_dim=global_dim)
        if output not in ("mulaw", "mol"):
            raise ValueError(f"output must be 'mulaw' or 'mol', got {output!r}")
        if kernel_size < 2:
            raise ValueError(f"kernel_size must be >= 2, got {kernel_size}")
        self.quantization, self.kernel_size, self.cycle, self.output = quantization, kernel_size, cycle, output
        self.local_channels, self.hop, self.global_classes = local_channels, hop, global_classes
        R, S = residual_channels, skip_channels
        self.dilations = [2 ** (i % cycle) for i in range(layers)]
        self.embed = nn.Embedding(quantization, R)
        self.convs = nn.ModuleList(CausalConv1d(R, 2 * R, kernel_size, d) for d in self.dilations)
        self.res = nn.ModuleList(nn.Conv1d(R, R, 1) for _ in range(layers))
        self.skip = nn.ModuleList(nn.Conv1d(R, S, 1) for _ in range(layers))
        if local_channels:
            self.upsample = nn.ConvTranspose1d(local_channels, local_channels, hop, stride=hop)
            self.local = nn.ModuleList(nn.Conv1d(local_channels, 2 * R, 1, bias=False) for _ in range(layers))
        if global_classes:
            self.global_embed = nn.Embedding(global_classes, global_dim)
            self.global_proj = nn.ModuleList(nn.Linear(global_dim, 2 * R, bias=False) for _ in range(layers))
        self.nr_mix = nr_mix
        out_channels = quantization if output == "mulaw" else 3 * nr_mix
        self.head = nn.Sequential(nn.ReLU(), nn.Conv1d(S, S, 1), nn.ReLU(), nn.Conv1d(S, out_channels, 1))

    def save(self, path, **extra) -> None:
        """Write a checkpoint (config + weights + ``extra``, e.g. sample_rate) for ``load``."""
        torch.save({"config": self.config, "state_dict": self.state_dict(), **extra}, path)

    @classmethod
    def load(cls, path, map_location="cpu") -> Tuple["WaveNet", dict]:
        """-> (model, the checkpoint dict)."""
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        model = cls(**checkpoint["config"])
        model.load_state_dict(checkpoint["state_dict"])
        return model, checkpoint

    @property
    def receptive_field(self) -> int:
        """Samples of the past one prediction can see (including the shifted input)."""
        return sum(d * (self.kernel_size - 1) for d in self.dilations) + 1

    # ----------------------------------------------------------------- checks
    def check_codes(self, x: Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dtype not in (torch.long, torch.int32, torch.int16):
            raise TypeError(f"codes must be an integer tensor [B, T], got {getattr(x, 'dtype', type(x))}")
        if x.dim() != 2:
            raise ValueError(f"codes must have shape [B, T], got {tuple(x.shape)}")
        _validate.ids_in_range("codes", x, self.quantization)

    def check_cond(self, local: Optional[Tensor], global_cond: Optional[Tensor], batch: int,
                   length: Optional[int] = None) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """Returns (upsampled local [B, Lc, T'] or None, global embedding [B, G] or None)."""
        if (local is None) != (not self.local_channels):
            raise ValueError("local conditioning must be given exactly when the model has local_channels "
                             f"(local_channels={self.local_channels})")
        g = self.check_global(global_cond, batch)
        up = None
        if local is not None:
            if local.dim() != 3 or local.shape[0] != batch or local.shape[1] != self.local_channels:
                raise ValueError(f"local conditioning must have shape [{batch}, {self.local_channels}, frames], "
                                 f"got {tuple(local.shape)}")
            if length is not None and local.shape[2] * self.hop < length:
                raise ValueError(f"local conditioning covers {local.shape[2]} frames x hop {self.hop} = "
                                 f"{local.shape[2] * self.hop} samples, fewer than the {length} needed")
            up = self.upsample(local.float())
        return up, g

    def check_global(self, global_cond: Optional[Tensor], batch: int) -> Optional[Tensor]:
        """-> the global embedding [B, G] or None; checks the ids."""
        if (global_cond is None) != (not self.global_classes):
            raise ValueError("global_cond must be given exactly when the model has global_classes "
                             f"(global_classes={self.global_classes})")
        if global_cond is None:
            return None
        if global_cond.dim() != 1 or global_cond.shape[0] != batch or global_cond.dtype != torch.long:
            raise ValueError(f"global_cond must be long ids of shape [{batch}], got {tuple(global_cond.shape)}")
        _validate.ids_in_range("global_cond ids", global_cond, self.global_classes)
        return self.global_embed(global_cond)

    # ----------------------------------------------------------------- model
    def shifted_input(self, x: Tensor, previous: Optional[Tensor] = None) -> Tensor:
        """Embedding of the previous sample at every position: [B, R, T].  ``previous`` is the
        code before x[:, 0] (silence when None)."""
        silence = self.quantization // 2
        first = torch.full_like(x[:, :1], silence) if previous is None else previous[:, None]
        return self.embed(torch.cat([first, x[:, :-1]], dim=1)).transpose(1, 2)

    def forward(self, x: Tensor, local: Optional[Tensor] = None, global_cond: Optional[Tensor] = None) -> Tensor:
        self.check_codes(x)
        up, g = self.check_cond(local, global_cond, x.shape[0], x.shape[1])
        return self.window_logits(x, None if up is None else up[:, :, :x.shape[1]], g)

    def window_logits(self, x: Tensor, local_up: Optional[Tensor] = None, g: Optional[Tensor] = None,
                      previous: Optional[Tensor] = None) -> Tensor:
        """Logits [B, quantization, T] for codes x [B, T] (no checks).  local_up: upsampled
        local conditioning aligned with x; g: global embedding [B, G]; previous: the code
        before x[:, 0] (silence when None) -- how the naive generator runs on a window."""
        h = self.shifted_input(x, previous)
        skip = 0
        for i, (conv, res, sk) in enumerate(zip(self.convs, self.res, self.skip)):
            z = conv(h)
            if local_up is not None:
                z = z + self.local[i](local_up)
            if g is not None:
                z = z + self.global_proj[i](g)[:, :, None]
            u = gated_activation(z)
            skip = skip + sk(u)
            h = h + res(u)
        return self.levels_log_probs(self.head(skip))

    def levels_log_probs(self, out: Tensor) -> Tensor:
        """Head output [B, P, T] -> per-level logits [B, quantization, T]."""
        if self.output == "mulaw":
            return out
        M, A = self.nr_mix, self.quantization
        logit_w, means, log_scales = out[:, :M], out[:, M:2 * M], out[:, 2 * M:].clamp(min=-7.0)
        centres = torch.linspace(-1, 1, A, device=out.device).view(1, A, 1, 1)     # [1, A, 1, 1]
        half = 1.0 / (A - 1)
        inv_s = torch.exp(-log_scales)[:, None]                                    # [B, 1, M, T]
        upper = torch.where(centres < 1, torch.sigmoid(inv_s * (centres + half - means[:, None])),
                            torch.ones(()))
        lower = torch.where(centres > -1, torch.sigmoid(inv_s * (centres - half - means[:, None])),
                            torch.zeros(()))
        log_mass = torch.log((upper - lower).clamp(min=1e-12))
        return torch.logsumexp(F.log_softmax(logit_w, dim=1)[:, None] + log_mass, dim=2)

    def loss(self, audio: Tensor, local: Optional[Tensor] = None, global_cond: Optional[Tensor] = None) -> Tensor:
        """NLL of the mu-law codes of ``audio`` ([B, T] in [-1, 1]) in bits per sample."""
        if not torch.is_tensor(audio) or not audio.is_floating_point() or audio.dim() != 2:
            raise ValueError("audio must be a float tensor [B, T] with values in [-1, 1]")
        low, high = audio.aminmax()      # one sync per loss call; clipping silently would train on garbage
        if low < -1 or high > 1:
            raise ValueError(f"audio must have values in [-1, 1] (mu-law input), got values in [{float(low):g}, "
                             f"{float(high):g}]; divide raw int16 samples by 32768")
        codes = mu_law_encode(audio, self.quantization)
        return F.cross_entropy(self(codes, local, global_cond), codes) / math.log(2)

    def generate(self, n_samples: int, batch: int = 1, local: Optional[Tensor] = None,
                 global_cond: Optional[Tensor] = None, method: str = "fast",
                 generator: Optional[torch.Generator] = None, temperature: float = 1.0, return_codes: bool = False,
                 progress: Optional[Callable[[int], object]] = None, cuda_graph: bool = False,
                 persistent: Optional[bool] = None, dtype: Optional[torch.dtype] = None) -> Tensor:
        """Generate ``n_samples`` per batch row: audio [batch, n_samples] in [-1, 1] (or codes).
        ``cuda_graph``: on a GPU, replay blocks of fused steps as a CUDA graph.  ``persistent``:
        draw blocks of samples in one launch of the persistent kernel (None: for small batches on
        CUDA).  ``dtype``: torch.float16/bfloat16 store weights and queues in 16 bits (fast
        method, mu-law output).  See ``fastgen.sampling.audio.generate``."""
        from fastgen.sampling.audio import generate
        codes = generate(self, n_samples, batch, local, global_cond, method, generator, temperature, progress,
                         cuda_graph, persistent, dtype)
        return codes if return_codes else mu_law_decode(codes, self.quantization)

    def stream(self, n_samples: int, batch: int = 1, local_chunks: Optional[Iterable[Tensor]] = None,
               global_cond: Optional[Tensor] = None, chunk: int = 4096, generator: Optional[torch.Generator] = None,
               temperature: float = 1.0, return_codes: bool = False, persistent: Optional[bool] = None,
               dtype: Optional[torch.dtype] = None) -> Iterator[Tensor]:
        """Yield audio chunks ``[batch, <= chunk]`` as they are produced.  ``local_chunks`` is an
        iterable of local-conditioning pieces [batch, local_channels, frames] that may arrive
        while generating; each piece is consumed when the samples need it."""
        from fastgen.sampling.audio import stream
        for codes in stream(self, n_samples, batch, local_chunks, global_cond, chunk, generator, temperature,
                            persistent=persistent, dtype=dtype):
            yield codes if return_codes else mu_law_decode(codes, self.quantization)

    def incremental(self, batch: int, global_cond: Optional[Tensor] = None,
                    dtype: torch.dtype = torch.float32) -> Union["_FusedQueueCache", "_QueueCache"]:
        """The fast generator's cache; ``dtype`` (fp16/bf16: weights and queues in 16 bits) needs
        the fused step of mu-law models."""
        if self.output == "mulaw":
            return _FusedQueueCache(self, batch, global_cond, dtype)
        if dtype != torch.float32:
            raise ValueError(f"dtype={dtype} needs the fused step of output='mulaw' models; this model has "
                             f"output={self.output!r} (generate it in float32)")
        return _QueueCache(self, batch, global_cond)

    def packed_step_weights(self, dtype: torch.dtype = torch.float32) -> WaveNetStepWeights:
        """The weights of ``fastgen.ops.wavenet_step`` as a ``WaveNetStepWeights`` (contiguous
        copies): the matrices in ``dtype``, the biases in fp32."""
        R = self.embed.embedding_dim
        mat = lambda conv: conv.weight[:, :, 0].T                          # 1x1 conv -> [in, out]
        wlc = (torch.stack([mat(c) for c in self.local]) if self.local_channels
               else torch.zeros(len(self.convs), 1, 2 * R, device=self.embed.weight.device))
        packed = WaveNetStepWeights(
            embed=self.embed.weight,
            wtap=torch.stack([conv.weight.permute(2, 1, 0) for conv in self.convs]),   # [L, k, R, 2R]
            bconv=torch.stack([conv.bias for conv in self.convs]),
            wlc=wlc,
            wres=torch.stack([mat(c) for c in self.res]), bres=torch.stack([c.bias for c in self.res]),
            wskip=torch.stack([mat(c) for c in self.skip]), bskip=torch.stack([c.bias for c in self.skip]),
            w1=mat(self.head[1]), b1=self.head[1].bias, w2=mat(self.head[3]), b2=self.head[3].bias)
        packed = WaveNetStepWeights(*(t.detach().float().contiguous() for t in packed))
        return packed._replace(**{name: getattr(packed, name).to(dtype) for name in WaveNetStepWeights.MATRICES})


# Batches up to this size generate with the persistent kernel by default on CUDA (one launch
# per block of samples instead of one per sample).  Both kernels use the same grid
# (cdiv(B, 16) programs); the threshold is a conservative choice, not yet measured on a GPU.
PERSISTENT_MAX_BATCH = 64


class _FusedQueueCache:
    """Fast generation with fused launches: one per sample (``fastgen.ops.wavenet_step``) or one
    per block of samples (``fastgen.ops.wavenet_steps``, the persistent kernel) -- a
    ``fastgen.sampling.audio.PersistentDrawCache``.  All layers' queues in one tensor
    [slots, B, R], layer l owning d_l (k-1) rows; queues, scratch [B, S] and the weight
    matrices in ``dtype`` (fp32, fp16 or bf16); gterm [L, B, 2R] fp32 (global conditioning).

    It keeps no reference to its model (only the numbers it needs): a captured CUDA graph
    keeps the cache it was captured with alive, and must not keep the model alive with it."""

    def __init__(self, model: WaveNet, batch: int, global_cond: Optional[Tensor],
                 dtype: torch.dtype = torch.float32):
        if dtype not in WAVENET_DTYPES:
            raise ValueError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16, got {dtype!r}")
        device = model.embed.weight.device
        R = model.embed.embedding_dim
        self.batch, self.cycle, self.kernel_size = batch, model.cycle, model.kernel_size
        spans = [d * (model.kernel_size - 1) for d in model.dilations]
        offsets = torch.tensor([0] + spans[:-1]).cumsum(0)
        self.queue = torch.zeros(sum(spans), batch, R, device=device, dtype=dtype)
        self.queue_offsets = offsets.to(torch.int32).to(device)
        self.weights = model.packed_step_weights(dtype)
        g = model.check_global(global_cond, batch)
        gterm = [proj(g) for proj in model.global_proj] if g is not None else [
            torch.zeros(batch, 2 * R, device=device) for _ in spans]
        self.gterm = torch.stack(gterm).detach().float().contiguous()
        self.scratch = torch.empty(batch, self.weights.w1.shape[0], device=device, dtype=dtype)
        # the queues' slot pattern repeats every `period` steps: a multiple of every span (with
        # kernel 2 or 3 the spans are powers of two and this is max(spans, 256))
        self.period = math.lcm(256, *spans)

    def state(self) -> List[Tensor]:
        """This generation's own tensors that the draws read or write: the queues and the global
        conditioning term (the packed weights are the model's, the same for every generation)."""
        return [self.queue, self.gterm]

    def prefers_persistent(self) -> bool:
        """Whether ``generate``/``stream`` use ``draw_steps`` (persistent kernel) over
        ``draw_at`` (one launch per sample) when the caller leaves ``persistent=None``: small
        batches on CUDA, where a launch per sample costs more than the step itself."""
        return self.queue.is_cuda and self.batch <= PERSISTENT_MAX_BATCH

    def draw_at(self, previous: Tensor, codes_out: Tensor, local_t: Optional[Tensor], gumbel: Tensor,
                temperature: float, t: int) -> None:
        """Draw sample t into codes_out [B] (t matters only modulo ``period``); previous [B],
        local_t [B, Lc] or None, gumbel [B, quantization]."""
        local = None if local_t is None else local_t.float().contiguous()
        wavenet_step(previous, codes_out, self.queue, self.queue_offsets, self.weights, self.gterm, local,
                     gumbel, self.scratch, t % self.period, self.cycle, self.kernel_size, 1.0 / temperature)

    def draw_steps(self, previous: Tensor, codes_out: Tensor, local: Optional[Tensor], gumbel: Tensor,
                   temperature: float, t0: int) -> None:
        """Draw samples t0 .. t0+T-1 into codes_out [T, B] in one launch of the persistent
        kernel; local [T, B, Lc] or None, gumbel [T, B, quantization]."""
        local = None if local is None else local.float().contiguous()
        wavenet_steps(previous, codes_out, self.queue, self.queue_offsets, self.weights, self.gterm, local,
                      gumbel, self.scratch, t0 % self.period, self.cycle, self.kernel_size, 1.0 / temperature)


class _QueueCache:
    """Fast generation state (Paine et al. 2016): per layer, a queue of its last
    d * (k - 1) inputs, so one step costs one matrix-vector product per layer -- a
    ``fastgen.sampling.audio.StepCache`` (the models without a fused step: output='mol')."""

    def __init__(self, model: WaveNet, batch: int, global_cond: Optional[Tensor]):
        self.model = model
        R = model.embed.embedding_dim
        k = model.kernel_size
        device = model.embed.weight.device
        self.queues = [torch.zeros(batch, R, d * (k - 1), device=device) for d in model.dilations]
        self.t = 0
        self.global_terms = None
        if global_cond is not None:
            g = model.global_embed(global_cond)
            self.global_terms = [proj(g) for proj in model.global_proj]
        # weights as matrices: conv tap j multiplies the input from (k - 1 - j) * d steps ago
        self.taps = [conv.weight.permute(2, 0, 1) for conv in model.convs]          # [k, 2R, R]

    def step(self, previous: Tensor, local_t: Optional[Tensor] = None) -> Tensor:
        """previous: codes [B] of the last sample (silence at the start); local_t: upsampled
        local conditioning at this step [B, Lc] or None -> logits [B, quantization]."""
        m, k = self.model, self.model.kernel_size
        h = m.embed(previous)                                           # [B, R]
        skip = 0
        for i, d in enumerate(m.dilations):
            queue = self.queues[i]
            span = d * (k - 1)
            z = m.convs[i].bias + h @ self.taps[i][k - 1].T
            for j in range(k - 1):           # tap j reads the input (k-1-j)*d steps ago
                z = z + queue[:, :, (self.t - (k - 1 - j) * d) % span] @ self.taps[i][j].T
            if local_t is not None:
                z = z + local_t @ m.local[i].weight[:, :, 0].T
            if self.global_terms is not None:
                z = z + self.global_terms[i]
            queue[:, :, self.t % span] = h
            u = gated_activation(z)
            skip = skip + u @ m.skip[i].weight[:, :, 0].T + m.skip[i].bias
            h = h + u @ m.res[i].weight[:, :, 0].T + m.res[i].bias
        self.t += 1
        out = m.head(skip[:, :, None])                                   # [B, P, 1]
        return m.levels_log_probs(out)[:, :, 0]
