"""fastgen.ops.block_local_attention / block_local_attention_decode / sparse_attention: the
Triton kernels (under the CPU interpreter) against the dense masked reference on small odd
shapes -- 1-D, 2-D and 3-D grids, ragged blocks, with and without memory and causality, fp32
and bf16, non-contiguous inputs --, their gradients, decoding vs the full forward at every
index, the masks against brute-force rules, opcheck, torch.compile, and errors naming the
argument."""
import itertools
import math

import pytest
import torch

from fastgen import ops
from fastgen.ops.block_local_attention import reference


def _qkv(B, H, N, D, dtype=torch.float32, seed=0, layout="contiguous"):
    g = torch.Generator().manual_seed(seed)
    if layout == "bnhd":           # [B, N, H, D] storage viewed as [B, H, N, D] (a projection's output)
        t = [torch.randn(B, N, H, D, generator=g).to(dtype).transpose(1, 2) for _ in range(3)]
    else:
        t = [torch.randn(B, H, N, D, generator=g).to(dtype) for _ in range(3)]
    return t


def _brute_block_local(grid, block, causal, memory):
    """The rule of the docstring, written out position by position."""
    positions = list(itertools.product(*[range(g) for g in grid]))
    n = len(positions)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i, p in enumerate(positions):
        cp = [a // b for a, b in zip(p, block)]
        for j, r in enumerate(positions):
            cr = [a // b for a, b in zip(r, block)]
            ok = cr == cp or bool(memory and cr[1:] == cp[1:] and cp[0] - memory <= cr[0] < cp[0])
            mask[i, j] = ok and (j <= i or not causal)
    return mask


@pytest.mark.parametrize("grid, block, memory", [((7,), (3,), 2), ((5, 6), (2, 4), 1), ((3, 4, 5), (2, 2, 3), 1),
                                                 ((4, 4), (2, 2), None)])
@pytest.mark.parametrize("causal", [True, False])
def test_reference_mask_is_the_rule(grid, block, memory, causal):
    got = reference.block_local_mask(grid, block, causal, memory)
    assert torch.equal(got, _brute_block_local(grid, block, causal, memory))
    assert got.any(1).all()                      # no empty softmax row


@pytest.mark.parametrize("pattern, width, summary", [("strided", 3, 1), ("fixed", 4, 1), ("fixed", 4, 2)])
@pytest.mark.parametrize("causal", [True, False])
def test_reference_sparse_mask_is_the_rule(pattern, width, summary, causal):
    n = 11
    got = reference.sparse_mask(n, pattern, width, summary, causal)
    for i in range(n):
        for j in range(n):
            if pattern == "strided":
                ok = abs(i - j) < width or (i - j) % width == 0
            else:
                ok = j // width == i // width or j % width >= width - summary
            assert bool(got[i, j]) == (ok and (j <= i or not causal)), (i, j)


def test_reference_gradcheck_in_float64():
    q, k, v = (t.double().requires_grad_() for t in _qkv(1, 2, 12, 4))
    assert torch.autograd.gradcheck(lambda q, k, v: reference.block_local_attention(q, k, v, (3, 4), (2, 3),
                                                                                    memory=1), (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: reference.sparse_attention(q, k, v, "strided", 3), (q, k, v))


def test_reference_equals_sdpa_with_the_mask():
    q, k, v = _qkv(2, 2, 20, 8)
    mask = reference.block_local_mask((4, 5), (2, 2), True, 1)
    torch.testing.assert_close(reference.block_local_attention(q, k, v, (4, 5), (2, 2), True, 1),
                               reference.sdpa_with_mask(q, k, v, mask), rtol=1e-5, atol=1e-5)


def test_reference_decode_is_the_row_of_the_full_forward():
    q, k, v = _qkv(1, 2, 12, 8)
    full = reference.block_local_attention(q, k, v, (3, 4), (2, 2), True, 1)
    for index in range(12):
        got = reference.block_local_attention_decode(q[:, :, index:index + 1], k, v, index, (3, 4), (2, 2), True, 1)
        torch.testing.assert_close(got, full[:, :, index:index + 1], rtol=1e-5, atol=1e-6)


def _bad(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


@pytest.mark.parametrize("case, message", [
    (lambda q: ops.block_local_attention(q, q, q, (5, 5), (2, 2)), r"grid \(5, 5\) has 25 positions but .* N = 24"),
    (lambda q: ops.block_local_attention(q, q, q, (4, 6), (5, 2)), r"block\[0\] must be in 1..4, got 5"),
    (lambda q: ops.block_local_attention(q, q, q, (4, 6), (2,)), "block must be a tuple of 2 ints"),
    (lambda q: ops.block_local_attention(q, q, q, (4, 6), 2), "block must be a tuple of 2 ints"),
    (lambda q: ops.block_local_attention(q, q, q, (2, 3, 2, 2), (1, 1, 1, 1)), "grid must be 1, 2 or 3"),
    (lambda q: ops.block_local_attention(q, q[:, :, :12], q, (4, 6), (2, 2)), "same shape"),
    (lambda q: ops.block_local_attention(q, q, q[..., :4], (4, 6), (2, 2)), "same shape"),
    (lambda q: ops.block_local_attention(q, q.double(), q, (4, 6), (2, 2)), "k has dtype"),
    (lambda q: ops.block_local_attention(q[0], q[0], q[0], (4, 6), (2, 2)), r"q must be \[B, heads, N, head_dim\]"),
    (lambda q: ops.block_local_attention(q.long(), q, q, (4, 6), (2, 2)), "floating point"),
    (lambda q: ops.block_local_attention(q, q, q, (4, 6), (2, 2), memory=-1), "memory must be None or an int"),
    (lambda q: ops.block_local_attention(q, q, q, (4, 6), (2, 2), scale=float("nan")), "scale must be"),
    (lambda q: ops.block_local_attention(q.numpy(), q, q, (4, 6), (2, 2)), "q must be a torch.Tensor"),
    (lambda q: ops.block_local_attention_decode(q[:, :, :1], q, q, 3, (4, 6), (2, 2), causal=False),
     "causal must be True"),
    (lambda q: ops.block_local_attention_decode(q[:, :, :1], q, q, 24, (4, 6), (2, 2)), r"index must be an int in 0..23"),
    (lambda q: ops.block_local_attention_decode(q[:, :, :2], q, q, 3, (4, 6), (2, 2)), r"q must be \[B, heads, 1"),
    (lambda q: ops.block_local_attention_decode(q[:, :, :1], q, q[:1], 3, (4, 6), (2, 2)), "k_cache and v_cache"),
    (lambda q: ops.sparse_attention(q, q, q, "dilated", stride=2), "pattern must be one of"),
    (lambda q: ops.sparse_attention(q, q, q, "strided"), "needs stride"),
    (lambda q: ops.sparse_attention(q, q, q, "fixed", stride=4), "takes block=, not stride="),
    (lambda q: ops.sparse_attention(q, q, q, "fixed", block=4, summary=5), "summary must be an int in 1..4"),
])
def test_bad_input_errors(case, message):
    q = _qkv(2, 3, 24, 8)[0]
    _bad(lambda: case(q), message)


def test_unsupported_head_dim_is_refused_on_triton_and_runs_on_the_reference():
    q, k, v = _qkv(1, 1, 8, 160)
    with pytest.raises(ValueError, match="head_dim must be at most 128"):
        ops.block_local_attention(q, k, v, (8,), (4,), backend="triton")
    torch.testing.assert_close(ops.block_local_attention(q, k, v, (8,), (4,)),
                               reference.block_local_attention(q, k, v, (8,), (4,)))
    with pytest.raises(ValueError, match="float32/float16/bfloat16"):
        ops.block_local_attention(q[..., :8].double(), k[..., :8].double(), v[..., :8].double(), (8,), (4,),
                                  backend="triton")
