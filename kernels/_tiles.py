"""Small Triton helpers shared by the fused sampling-step kernels."""
import triton
import triton.language as tl


@triton.jit
def load_rows(ptr, rows, row_stride, cols, row_ok):
    """ptr[rows, cols] as a [len(rows), len(cols)] tile; masked rows read 0."""
    return tl.load(ptr + rows[:, None] * row_stride + cols[None, :], mask=row_ok[:, None], other=0.0)


@triton.jit
def load_matrix(ptr, row_stride, ks, ns):
    """A [len(ks), len(ns)] weight tile ptr[ks, ns]."""
    return tl.load(ptr + ks[:, None] * row_stride + ns[None, :])


@triton.jit
def gumbel_argmax_update(logits, noise, levels, level_ok, inv_temperature, best, best_idx):
    """Fold one chunk of levels into a running Gumbel-max: argmax(logits * inv_t + noise).
    levels: the chunk's level ids; returns the updated (best score, best level) per row."""
    scores = tl.where(level_ok[None, :], logits * inv_temperature + noise, float("-inf"))
    chunk_best = tl.max(scores, axis=1)
    chunk_idx = tl.argmax(scores, axis=1) + tl.min(levels, axis=0)
    take = chunk_best > best
    return tl.where(take, chunk_best, best), tl.where(take, chunk_idx, best_idx)
