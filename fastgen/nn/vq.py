"""``VectorQuantizer``: the VQ-VAE bottleneck over ``fastgen.ops.vector_quantize``.

van den Oord, Vinyals & Kavukcuoglu 2017 ("Neural Discrete Representation Learning"), with the
EMA codebook of its appendix and VQ-VAE-2 (Razavi et al. 2019), and dead-code restarts.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastgen import ops
from fastgen.ops import VQOutput


class VectorQuantizer(nn.Module):
    """Quantize each D-vector of z to its nearest code of a learned codebook [num_codes, dim].

    forward(z): z [B, D, *spatial] (channels = D, e.g. an encoder's [B, D, H, W] map) or [N, D]
    -> ``VQOutput(indices [B, *spatial] (or [N]) int64, quantized shaped like z (z's dtype, the
    straight-through gradient), commitment_loss, codebook_loss)`` (float32 scalars).  Train with
    ``recon + out.commitment_loss`` (beta is already in it), plus ``out.codebook_loss`` when
    ``ema=False``.

    Codebook updates:

    - ``ema=True`` (default): the codebook is a buffer updated, in training mode only, by an
      exponential moving average of the vectors assigned to each code
      (``fastgen.ops.ema_codebook_update``, ``decay``, Laplace smoothing ``epsilon``); the codebook
      loss is returned for monitoring and trains nothing.  The EMA state starts at
      cluster_size = 1, embed_sum = the initial codebook (so an unused code stays where it is
      while its state decays).
    - ``ema=False``: the codebook is an ``nn.Parameter`` trained by ``codebook_loss``.

    Dead-code restarts (``dead_code_steps = s``, training mode only, both modes): a code that no
    vector of z chose for s consecutive forward passes is re-initialised to a random vector of
    the current batch (drawn uniformly with replacement by ``torch.randint`` on z's device, one
    per dead code), its EMA state reset to cluster_size = 1, embed_sum = that vector, and its
    unused-step counter to 0.  Done with masks (no host sync).

    Data-parallel training (an initialised ``torch.distributed`` process group of more than one
    process, e.g. DDP under torchrun): the training-mode updates see the vectors and codes of
    every process's batch (one all-gather), so every process makes the update of the global
    batch -- what one process with the whole batch makes -- as ``nn.SyncBatchNorm`` does for its
    statistics.  Every process must then run the same training-mode forwards on batches of one
    size.

    The codebook is kept in float32 and cast to z's dtype for the search (bf16/fp16 z under
    autocast).  ``lookup(indices)`` returns the code vectors of an index map (e.g. codes sampled
    from a prior) in the layout forward returns: [N] -> [N, D], [B, *spatial] -> [B, D, *spatial].
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, ema: bool = True, decay: float = 0.99,
                 epsilon: float = 1e-5, dead_code_steps: Optional[int] = None):
        super().__init__()
        for name, value in (("num_codes", num_codes), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VectorQuantizer: {name} must be a positive int, got {value!r}")
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"VectorQuantizer: decay must be in [0, 1], got {decay!r}")
        if not epsilon > 0:
            raise ValueError(f"VectorQuantizer: epsilon must be > 0, got {epsilon!r}")
        if dead_code_steps is not None and (isinstance(dead_code_steps, bool) or not isinstance(dead_code_steps, int)
                                            or dead_code_steps < 1):
            raise ValueError(f"VectorQuantizer: dead_code_steps must be None or a positive int, got {dead_code_steps!r}")
        if not beta >= 0:
            raise ValueError(f"VectorQuantizer: beta must be >= 0, got {beta!r}")
        self.num_codes, self.dim, self.beta, self.ema = num_codes, dim, float(beta), bool(ema)
        self.decay, self.epsilon, self.dead_code_steps = float(decay), float(epsilon), dead_code_steps
        if self.ema:
            codebook = torch.randn(num_codes, dim)
            self.register_buffer("codebook", codebook)
            self.register_buffer("cluster_size", torch.ones(num_codes))
            self.register_buffer("embed_sum", codebook.clone())
        else:
            # uniform(-1/K, 1/K), as the VQ-VAE paper's reference implementation
            self.codebook = nn.Parameter(torch.empty(num_codes, dim).uniform_(-1.0 / num_codes, 1.0 / num_codes))
        if dead_code_steps is not None:
            self.register_buffer("unused_steps", torch.zeros(num_codes, dtype=torch.int64))

    def extra_repr(self) -> str:
        return (f"num_codes={self.num_codes}, dim={self.dim}, beta={self.beta}, ema={self.ema}"
                + (f", decay={self.decay}, epsilon={self.epsilon}" if self.ema else "")
                + (f", dead_code_steps={self.dead_code_steps}" if self.dead_code_steps is not None else ""))

    def _flat(self, z: Tensor) -> Tensor:
        if not isinstance(z, Tensor):
            raise TypeError(f"VectorQuantizer: z must be a torch.Tensor, got {type(z).__name__}")
        if z.dim() < 2 or z.shape[1] != self.dim:
            raise ValueError(f"VectorQuantizer: z must be [N, {self.dim}] or [B, {self.dim}, *spatial] "
                             f"(channels = dim), got shape {tuple(z.shape)}")
        if z.dim() == 2:
            return z
        return z.movedim(1, -1).reshape(-1, self.dim)

    def forward(self, z: Tensor) -> VQOutput:
        flat = self._flat(z)
        codebook = self.codebook if self.codebook.dtype == flat.dtype else self.codebook.to(flat.dtype)
        out = ops.vector_quantize(flat, codebook, self.beta)
        if self.training:
            with torch.no_grad():
                self._update(flat.detach(), out.indices)
        if z.dim() == 2:
            return out
        spatial = (z.shape[0], *z.shape[2:])
        quantized = out.quantized.view(*spatial, self.dim).movedim(-1, 1)
        return VQOutput(out.indices.view(spatial), quantized, out.commitment_loss, out.codebook_loss)

    def _update(self, flat: Tensor, indices: Tensor) -> None:
        """Training-mode codebook maintenance: the EMA step, then dead-code restarts."""
        flat, indices = _global_batch(flat, indices)
        if self.ema:
            self.codebook.copy_(ops.ema_codebook_update(self.cluster_size, self.embed_sum, flat, indices,
                                                        self.decay, self.epsilon))
        if self.dead_code_steps is None:
            return
        used = torch.zeros(self.num_codes, dtype=torch.int64, device=indices.device)
        used.index_add_(0, indices, torch.ones_like(indices))
        self.unused_steps.add_(1).masked_fill_(used > 0, 0)
        dead = self.unused_steps >= self.dead_code_steps
        samples = flat[torch.randint(0, flat.shape[0], (self.num_codes,), device=flat.device)].float()
        self.codebook.copy_(torch.where(dead[:, None], samples.to(self.codebook.dtype), self.codebook))
        if self.ema:
            self.embed_sum.copy_(torch.where(dead[:, None], samples, self.embed_sum))
            self.cluster_size.masked_fill_(dead, 1.0)
        self.unused_steps.masked_fill_(dead, 0)

    def lookup(self, indices: Tensor) -> Tensor:
        """Code vectors of ``indices``: [N] -> [N, D]; [B, *spatial] -> [B, D, *spatial] (float32,
        the codebook's dtype)."""
        if not isinstance(indices, Tensor) or indices.dtype not in (torch.int64, torch.int32) or indices.dim() < 1:
            raise TypeError(f"VectorQuantizer.lookup: indices must be an int64/int32 tensor [N] or [B, *spatial], "
                            f"got {getattr(indices, 'dtype', type(indices).__name__)}")
        vectors = F.embedding(indices.long(), self.codebook)
        return vectors if indices.dim() == 1 else vectors.movedim(-1, 1)


def _global_batch(flat: Tensor, indices: Tensor):
    """(flat [N, D], indices [N]) of all processes, in rank order, under a process group of more
    than one process; the arguments unchanged otherwise (see the class docstring)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flat, indices
    world = dist.get_world_size()
    parts = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(parts, flat.contiguous())
    codes = [torch.empty_like(indices) for _ in range(world)]
    dist.all_gather(codes, indices.contiguous())
    return torch.cat(parts), torch.cat(codes)
