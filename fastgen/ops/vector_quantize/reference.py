"""Vector quantization in plain PyTorch: the specification of ``fastgen.ops.nearest_code``,
``vector_quantize`` and ``ema_codebook_update``, and their CPU path.

VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017, "Neural Discrete Representation Learning"),
for z [N, D] and a codebook c [K, D]:

    index[n]        = argmin_k ||z_n - c_k||^2          ties -> the lowest k
    q_n             = c_{index[n]}
    quantized       = z + sg(q - z)                     straight-through: d quantized / d z = I
    commitment_loss = beta mean((z - sg(q))^2)          trains the encoder (gradient to z)
    codebook_loss   = mean((sg(z) - q)^2)               trains the codebook (gradient to c)

(sg = stop-gradient; the means are over N x D elements).  The search has no gradient.  The
distances are computed densely here (``||z||^2 - 2 z c^T + ||c||^2`` in float32 -- float64 for
float64 inputs -- in row chunks that bound the N x K block); the Triton kernel never
materialises them.  A row whose nearest distance is not finite (non-finite z or codebook)
gets index -1, which the op turns into a ValueError.

EMA codebook (the paper's appendix; Razavi, van den Oord & Vinyals 2019, VQ-VAE-2), with
N_k = #{n : index[n] = k}, S_k = sum_{index[n] = k} z_n:

    cluster_size <- decay cluster_size + (1 - decay) N_k
    embed_sum    <- decay embed_sum    + (1 - decay) S_k
    n_k = (cluster_size_k + eps) / (n + K eps) * n,   n = sum_k cluster_size_k     (Laplace smoothing)
    codebook_k = embed_sum_k / n_k
"""
import torch
import torch.nn.functional as F
from torch import Tensor

from fastgen.ops.vector_quantize.bundles import VQOutput

_CHUNK = 1 << 22             # distance elements per row chunk (16 MB in float32)


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def distances(z: Tensor, codebook: Tensor) -> Tensor:
    """Dense squared distances [N, K] in float32 (float64 for float64 inputs)."""
    acc = _acc(z.dtype)
    zf, cf = z.to(acc), codebook.to(acc)
    return (zf * zf).sum(1, keepdim=True) - 2.0 * zf @ cf.t() + (cf * cf).sum(1)


def nearest_code(z: Tensor, codebook: Tensor) -> Tensor:
    """index [N] int64 of the nearest code of each row of z [N, D] in codebook [K, D]; ties ->
    the lowest index (``argmin`` returns the first minimum); -1 where the nearest distance is not
    finite (NaN distances count as -inf, as in the kernel)."""
    N, K = z.shape[0], codebook.shape[0]
    rows = max(1, _CHUNK // max(K, 1))
    out = []
    for start in range(0, N, rows):
        d = distances(z[start:start + rows], codebook).nan_to_num(nan=float("-inf"), posinf=float("inf"),
                                                                   neginf=float("-inf"))
        idx = d.argmin(1)
        best = d.gather(1, idx[:, None])[:, 0]
        out.append(torch.where(torch.isfinite(best), idx, torch.full_like(idx, -1)))
    return torch.cat(out) if out else z.new_empty(0, dtype=torch.int64)


def vq_outputs(z: Tensor, codebook: Tensor, indices: Tensor, beta: float) -> VQOutput:
    """The differentiable outputs around the (gradient-free) indices: z [N, D], codebook [K, D]
    (z's dtype), indices [N] in [0, K).  Shared by both backends: the kernel only replaces the
    search."""
    acc = _acc(z.dtype)
    q = F.embedding(indices, codebook)                    # gradient -> the codebook rows used
    quantized = z + (q - z).detach()
    commitment = beta * F.mse_loss(z.to(acc), q.detach().to(acc))
    codebook_loss = F.mse_loss(z.detach().to(acc), q.to(acc))
    return VQOutput(indices, quantized, commitment, codebook_loss)


def vector_quantize(z: Tensor, codebook: Tensor, beta: float = 0.25) -> VQOutput:
    """The whole op on z [N, D] (module docstring)."""
    return vq_outputs(z, codebook, nearest_code(z.detach(), codebook.detach()), beta)


def ema_codebook_update(cluster_size: Tensor, embed_sum: Tensor, z: Tensor, indices: Tensor, decay: float,
                        epsilon: float) -> Tensor:
    """Update cluster_size [K] and embed_sum [K, D] (float32) in place from z [N, D] and its
    indices [N]; return the new codebook [K, D] float32 (module docstring)."""
    K = cluster_size.shape[0]
    counts = torch.zeros_like(cluster_size).index_add_(0, indices, torch.ones_like(indices, dtype=cluster_size.dtype))
    sums = torch.zeros_like(embed_sum).index_add_(0, indices, z.to(embed_sum.dtype))
    cluster_size.mul_(decay).add_(counts, alpha=1.0 - decay)
    embed_sum.mul_(decay).add_(sums, alpha=1.0 - decay)
    n = cluster_size.sum()
    smoothed = (cluster_size + epsilon) / (n + K * epsilon) * n
    return embed_sum / smoothed[:, None]
