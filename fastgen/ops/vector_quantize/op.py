"""Vector quantization: checks, dispatch and the ops (math in ``fastgen.ops.vector_quantize.reference``,
kernels in ``fastgen.kernels.vector_quantize``).

- ``nearest_code(z, codebook)``: the search, ``torch.ops.fastgen.vq_nearest_code``.  One pass over
  codebook tiles per block of rows with a running (min, argmin): no N x K distance matrix (what
  ``torch.cdist(z, c).argmin(1)`` allocates: 2 GB at N = 65,536, K = 8,192), extra memory K
  floats.  TF32: declared ``tf32="matmul"`` -- it replaces ``torch.cdist`` / ``z @ c.T``, so fp32
  inputs multiply in TF32 exactly when ``torch.backends.cuda.matmul.allow_tf32`` is set
  (PyTorch's default: off, exact fp32).  TF32 perturbs the scores by ~1e-3 relative, which can
  flip near-ties -- as it would for cdist.
- ``vector_quantize(z, codebook, beta)``: the search, then the quantized vectors with the
  straight-through gradient and the two losses in plain PyTorch around the indices
  (``reference.vq_outputs``: the argmin has no gradient; one copy of that math for both backends).
- ``ema_codebook_update(...)``: the EMA state update with Laplace smoothing,
  ``torch.ops.fastgen.ema_codebook_update`` (mutates cluster_size and embed_sum).

Both ops check their results on the host (one device sync per call): the search raises a
ValueError for rows with no finite nearest distance (non-finite z or codebook), the EMA update
for indices outside [0, K).  Under ``torch.compile`` and CUDA-graph capture those checks are
skipped (no host sync is possible there).
"""
from typing import Optional

import torch
from torch import Tensor

from fastgen.ops import _backend
from fastgen.ops._define import define_op
from fastgen.ops.vector_quantize import reference
from fastgen.ops.vector_quantize.bundles import VQOutput

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _host_checks_allowed(t: Tensor) -> bool:
    if torch.compiler.is_compiling():
        return False
    return not (t.is_cuda and torch.cuda.is_current_stream_capturing())


def _check_pair(op: str, z, codebook) -> None:
    for name, t in (("z", z), ("codebook", codebook)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be floating point, got {t.dtype}")
    if codebook.dim() != 2:
        raise ValueError(f"{op}: codebook must be [K, D], got shape {tuple(codebook.shape)}")
    K, D = codebook.shape
    if K == 0 or D == 0:
        raise ValueError(f"{op}: codebook must hold at least one code of at least one feature, "
                         f"got shape {tuple(codebook.shape)}")
    if z.dim() < 1 or z.shape[-1] != D:
        raise ValueError(f"{op}: z must be [..., D] with D = {D} (the codebook's width), got shape {tuple(z.shape)}")
    if z.numel() == 0:
        raise ValueError(f"{op}: z must hold at least one vector, got shape {tuple(z.shape)}")
    if z.dtype != codebook.dtype:
        raise TypeError(f"{op}: codebook has dtype {codebook.dtype} but z has {z.dtype}; they must match "
                        "(cast the codebook: codebook.to(z.dtype))")
    if z.device != codebook.device:
        raise ValueError(f"{op}: z is on {z.device} but codebook on {codebook.device}; they must match")


def _unsupported(z: Tensor) -> Optional[str]:
    if z.dtype not in _DTYPES:
        return f"z must be float32/float16/bfloat16, got {z.dtype}"
    if z.shape[-1] > 256:
        return f"the kernel keeps a [rows, D] tile resident and takes D <= 256, got D = {z.shape[-1]}"
    return None


@define_op("vq_nearest_code", family="vector_quantize", tf32="matmul",
           fake=lambda z, codebook: z.new_empty(z.shape[0], dtype=torch.int64))
def _nearest_kernel(z: Tensor, codebook: Tensor) -> Tensor:
    """Nearest code per row of z [N, D] in codebook [K, D] (int64, ties to the lowest index; -1: no finite distance)."""
    from fastgen.kernels.vector_quantize import code_norms, nearest_codes
    norms = _backend.empty(codebook.shape[0], dtype=torch.float32, device=z.device)
    code_norms(codebook, norms)
    # (not _backend.empty: the tests' NaN poisoning of outputs has no int64 value; every row is written)
    indices = torch.empty(z.shape[0], dtype=torch.int64, device=z.device)
    nearest_codes(z, codebook, norms, indices, _nearest_kernel.precision(z))
    return indices


def _raise_if_unmatched(op: str, indices: Tensor, z: Tensor, codebook: Tensor) -> None:
    """ValueError for rows with no finite nearest distance (index -1), naming the culprit."""
    if not _host_checks_allowed(indices) or not bool((indices < 0).any()):
        return
    rows = int((indices < 0).sum())
    if not bool(torch.isfinite(z).all()):
        raise ValueError(f"{op}: z holds non-finite values ({rows} vectors have no finite nearest distance)")
    if not bool(torch.isfinite(codebook).all()):
        raise ValueError(f"{op}: codebook holds non-finite values ({rows} vectors have no finite nearest distance)")
    raise ValueError(f"{op}: {rows} vectors have no finite nearest distance (|z| or |codebook| too large for "
                     f"{z.dtype})")


def _nearest(op: str, z2: Tensor, codebook: Tensor, backend: Optional[str]) -> Tensor:
    z2, codebook = z2.detach(), codebook.detach()
    if _nearest_kernel.backend(z2, backend, unsupported=_unsupported(z2)) == "reference":
        indices = reference.nearest_code(z2, codebook)
    else:
        indices = _nearest_kernel(z2, codebook)
    _raise_if_unmatched(op, indices, z2, codebook)
    return indices


def nearest_code(z: Tensor, codebook: Tensor, backend: Optional[str] = None) -> Tensor:
    """The index of the nearest code of each vector: z [..., D], codebook [K, D] -> int64 [...].

    Squared Euclidean distance, ties broken toward the **lowest index**; scores accumulate in
    float32 (the dot products over D by ``tl.dot``; fp32 inputs in TF32 only when
    ``torch.backends.cuda.matmul.allow_tf32`` is set).  z may have any strides; z and the
    codebook share one dtype (float32/bfloat16/float16 on Triton; float64 runs on the reference)
    and D <= 256 on Triton (wider runs on the reference; ``backend="triton"`` raises).  No
    gradient.  Raises a ValueError when a vector has no finite nearest distance (non-finite z
    or codebook; checked with one device sync, skipped under torch.compile)."""
    _check_pair("nearest_code", z, codebook)
    D = codebook.shape[1]
    return _nearest("nearest_code", z.reshape(-1, D), codebook, backend).reshape(z.shape[:-1])


def vector_quantize(z: Tensor, codebook: Tensor, beta: float = 0.25, backend: Optional[str] = None) -> VQOutput:
    """Vector quantization (VQ-VAE): z [..., D] (flattened to [N, D]; any strides), codebook
    [K, D] in z's dtype -> ``VQOutput(indices [N] int64, quantized [N, D] (z's dtype),
    commitment_loss, codebook_loss)`` (float32 scalars; float64 for float64 inputs).

        index[n] = argmin_k ||z_n - c_k||^2  (ties -> lowest k)     q_n = c_{index[n]}
        quantized = z + sg(q - z)         commitment_loss = beta mean((z - sg(q))^2)
        codebook_loss = mean((sg(z) - q)^2)

    The search is ``nearest_code`` (the Triton kernel on CUDA: codebook tiles, running min, no
    N x K distances); ``quantized`` passes its gradient straight to z; the commitment loss
    trains z (the encoder), the codebook loss the codebook (skip it with an EMA codebook).
    Errors: TypeError / ValueError naming the argument (D mismatch, empty codebook, dtype or
    device mismatch, non-finite z)."""
    _check_pair("vector_quantize", z, codebook)
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not beta >= 0:
        raise ValueError(f"vector_quantize: beta must be a number >= 0, got {beta!r}")
    D = codebook.shape[1]
    z2 = z.reshape(-1, D)  # a view when the leading dims merge, else a copy
    indices = _nearest("vector_quantize", z2, codebook, backend)
    return reference.vq_outputs(z2, codebook, indices, float(beta))


def _ema_fake(cluster_size, embed_sum, z, indices, decay, epsilon):
    return embed_sum.new_empty(embed_sum.shape)


@define_op("ema_codebook_update", family="vector_quantize", tf32="matmul",
           mutates_args=("cluster_size", "embed_sum"), fake=_ema_fake)
def _ema_kernel(cluster_size: Tensor, embed_sum: Tensor, z: Tensor, indices: Tensor, decay: float,
                epsilon: float) -> Tensor:
    """EMA codebook update with Laplace smoothing (in place on cluster_size, embed_sum; returns the codebook)."""
    from fastgen.kernels.vector_quantize import ema_update
    codebook = _backend.empty(*embed_sum.shape, dtype=torch.float32, device=embed_sum.device)
    ema_update(cluster_size, embed_sum, z, indices, decay, epsilon, codebook)
    return codebook


def _check_ema(cluster_size, embed_sum, z, indices, decay, epsilon) -> None:
    op = "ema_codebook_update"
    for name, t in (("cluster_size", cluster_size), ("embed_sum", embed_sum), ("z", z), ("indices", indices)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t, dims in (("cluster_size", cluster_size, "[K]"), ("embed_sum", embed_sum, "[K, D]")):
        if t.dtype != torch.float32 or not t.is_contiguous():
            raise TypeError(f"{op}: {name} must be a contiguous float32 tensor {dims} (the EMA state, updated in "
                            f"place), got {t.dtype}{'' if t.is_contiguous() else ', non-contiguous'}")
    if cluster_size.dim() != 1 or cluster_size.shape[0] == 0:
        raise ValueError(f"{op}: cluster_size must be [K] with K >= 1, got shape {tuple(cluster_size.shape)}")
    K = cluster_size.shape[0]
    if embed_sum.dim() != 2 or embed_sum.shape[0] != K or embed_sum.shape[1] == 0:
        raise ValueError(f"{op}: embed_sum must be [K, D] with K = {K} (cluster_size's length), "
                         f"got shape {tuple(embed_sum.shape)}")
    D = embed_sum.shape[1]
    if z.dim() != 2 or z.shape[1] != D or not z.is_floating_point():
        raise ValueError(f"{op}: z must be a floating-point [N, D] tensor with D = {D}, got {z.dtype} "
                         f"{tuple(z.shape)}")
    if indices.dtype != torch.int64 or tuple(indices.shape) != (z.shape[0],):
        raise ValueError(f"{op}: indices must be int64 [N] with N = {z.shape[0]} (z's rows), got {indices.dtype} "
                         f"{tuple(indices.shape)}")
    devices = {t.device for t in (cluster_size, embed_sum, z, indices)}
    if len(devices) != 1:
        raise ValueError(f"{op}: cluster_size, embed_sum, z and indices must be on one device, got {devices}")
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay <= 1.0:
        raise ValueError(f"{op}: decay must be a number in [0, 1], got {decay!r}")
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon > 0:
        raise ValueError(f"{op}: epsilon must be a number > 0 (Laplace smoothing), got {epsilon!r}")
    if indices.numel() and _host_checks_allowed(indices):
        low, high = torch.aminmax(indices)
        if int(low) < 0 or int(high) >= K:
            raise ValueError(f"{op}: indices must lie in [0, {K}) (K = cluster_size's length), got "
                             f"[{int(low)}, {int(high)}]")


def ema_codebook_update(cluster_size: Tensor, embed_sum: Tensor, z: Tensor, indices: Tensor, decay: float = 0.99,
                        epsilon: float = 1e-5, backend: Optional[str] = None) -> Tensor:
    """One EMA step of a VQ-VAE codebook; returns the new codebook [K, D] float32.

    cluster_size [K] and embed_sum [K, D] (contiguous float32) are the EMA state, **updated in
    place**; z [N, D] the batch's vectors (any float dtype and strides; accumulated in float32)
    and indices [N] int64 their codes (``vector_quantize(...).indices``)::

        cluster_size <- decay cluster_size + (1 - decay) N_k       embed_sum <- decay embed_sum + (1 - decay) S_k
        codebook_k = embed_sum_k / n_k,   n_k = (cluster_size_k + eps) / (n + K eps) * n,   n = sum cluster_size

    (N_k, S_k: the batch's count and sum of vectors assigned to code k; van den Oord et al.
    2017, appendix; Razavi et al. 2019).  Triton: a decay kernel, a scatter with float32 atomics
    (summation order -- and the last bits -- vary between runs), a reduction for n and a
    finalize kernel; the reference uses ``index_add_``.  No gradient."""
    _check_ema(cluster_size, embed_sum, z, indices, decay, epsilon)
    unsupported = None if z.dtype in _DTYPES else f"z must be float32/float16/bfloat16, got {z.dtype}"
    if _ema_kernel.backend(z, backend, unsupported=unsupported) == "reference":
        with torch.no_grad():
            return reference.ema_codebook_update(cluster_size, embed_sum, z, indices, float(decay), float(epsilon))
    return _ema_kernel(cluster_size, embed_sum, z.detach(), indices, float(decay), float(epsilon))
