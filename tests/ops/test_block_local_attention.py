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


def _interpreting():
    import os
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


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
    q, k, v = (t.double().requires_grad_() for t in _qkv(1, 1, 6, 3))
    assert torch.autograd.gradcheck(lambda q, k, v: reference.block_local_attention(q, k, v, (2, 3), (1, 2),
                                                                                    memory=1), (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: reference.sparse_attention(q, k, v, "strided", 2), (q, k, v))


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


# --------------------------------------------------------------- the kernels (interpreter)

GEOMETRIES = [
    pytest.param((10,), (4,), 2, True, torch.float32, "bnhd", 8, id="1d-ragged-mem2-causal-fp32-strided"),
    pytest.param((150,), (70,), 1, True, torch.float32, "contiguous", 16, id="1d-2tiles-per-block-mem1-causal-fp32"),
    pytest.param((5, 6), (2, 4), 1, True, torch.float32, "contiguous", 8, id="2d-ragged-mem1-causal-fp32"),
    pytest.param((4, 6), (2, 3), None, False, torch.float16, "bnhd", 16, id="2d-nomem-noncausal-fp16"),
    pytest.param((5, 6), (2, 4), 2, False, torch.float16, "contiguous", 8, id="2d-ragged-mem2-noncausal-fp16",
                 marks=pytest.mark.slow),
    pytest.param((3, 4, 5), (2, 2, 3), 1, False, torch.float32, "contiguous", 8, id="3d-ragged-mem1-noncausal-fp32"),
    pytest.param((4, 2, 4), (2, 2, 2), None, True, torch.float16, "contiguous", 16, id="3d-nomem-causal-fp16"),
    pytest.param((4, 3, 4), (2, 2, 2), 1, True, torch.float32, "bnhd", 40, id="3d-ragged-mem1-causal-fp32-D40-strided",
                 marks=pytest.mark.slow),
    pytest.param((3, 2, 4), (2, 2, 2), 1, True, torch.float32, "contiguous", 40, id="3d-small-ragged-mem1-causal-fp32-D40"),
]


def _grads_both(fn_triton, fn_reference, inputs, seed=1):
    results = {}
    for name, fn in (("triton", fn_triton), ("reference", fn_reference)):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        out = fn(*leaves)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
        results[name] = (out, *torch.autograd.grad(out, leaves, grad))
    return results


@pytest.mark.parametrize("grid, block, memory, causal, dtype, layout, D", GEOMETRIES)
def test_kernel_matches_reference_values_and_gradients(grid, block, memory, causal, dtype, layout, D):
    q, k, v = _qkv(1, 2, math.prod(grid), D, dtype, layout=layout)
    results = _grads_both(lambda q, k, v: ops.block_local_attention(q, k, v, grid, block, causal, memory,
                                                                    backend="triton"),
                          lambda q, k, v: reference.block_local_attention(q.double(), k.double(), v.double(), grid,
                                                                          block, causal, memory).to(dtype),
                          (q, k, v))
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for name, got, want in zip(("out", "dq", "dk", "dv"), results["triton"], results["reference"]):
        assert got.dtype == dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, **tol, msg=lambda m: f"{name}: {m}")


def test_scale_argument_and_default():
    q, k, v = _qkv(1, 1, 12, 16)
    for scale in (None, 0.3):
        torch.testing.assert_close(ops.block_local_attention(q, k, v, (3, 4), (2, 2), scale=scale, backend="triton"),
                                   reference.block_local_attention(q, k, v, (3, 4), (2, 2), scale=scale),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("grid, block, memory, dtype", [
    pytest.param((3, 5), (2, 2), 1, torch.float32, id="2d-ragged-mem1-fp32"),
    pytest.param((2, 3, 3), (1, 2, 2), 1, torch.bfloat16, id="3d-ragged-mem1-bf16-decode-has-no-dots"),
    pytest.param((9,), (4,), 2, torch.float32, id="1d-ragged-mem2-fp32", marks=pytest.mark.slow),
])
def test_decode_equals_the_full_forward_at_every_index(grid, block, memory, dtype):
    N = math.prod(grid)
    q, k, v = _qkv(2, 2, N, 16, dtype)
    if dtype == torch.float32:
        full = ops.block_local_attention(q, k, v, grid, block, True, memory, backend="triton")
    else:
        full = reference.block_local_attention(q.double(), k.double(), v.double(), grid, block, True, memory).to(dtype)
    k_cache = torch.full_like(k, float("nan"))      # unfilled positions must never be read
    v_cache = torch.full_like(v, float("nan"))
    for index in range(N):
        k_cache[:, :, index] = k[:, :, index]
        v_cache[:, :, index] = v[:, :, index]
        got = ops.block_local_attention_decode(q[:, :, index:index + 1], k_cache, v_cache, index, grid, block,
                                               memory=memory, backend="triton")
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(got, full[:, :, index:index + 1], **tol, msg=lambda m: f"index {index}: {m}")


@pytest.mark.parametrize("pattern, kwargs, causal", [
    ("strided", dict(stride=5), True), ("strided", dict(stride=70), False), ("fixed", dict(block=32, summary=2), True),
    pytest.param("strided", dict(stride=70), True, marks=pytest.mark.slow),
    pytest.param("fixed", dict(block=32, summary=2), False, marks=pytest.mark.slow)])
def test_sparse_kernel_matches_its_dense_mask(pattern, kwargs, causal):
    q, k, v = _qkv(1, 2, 150, 16)
    results = _grads_both(lambda q, k, v: ops.sparse_attention(q, k, v, pattern, causal=causal, backend="triton",
                                                               **kwargs),
                          lambda q, k, v: ops.sparse_attention(q, k, v, pattern, causal=causal, backend="reference",
                                                               **kwargs), (q, k, v))
    for name, got, want in zip(("out", "dq", "dk", "dv"), results["triton"], results["reference"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_sparse_layout_covers_the_mask_and_skips_empty_tiles():
    from fastgen.kernels.block_local_attention import sparse_layout
    N, tile = 300, 64
    mask = reference.sparse_mask(N, "fixed", 64, 1, True)
    lut, counts, lut_t, counts_t = sparse_layout(N, "fixed", 64, 1, True, tile, tile, torch.device("cpu"))
    tiles = -(-N // tile)
    padded = torch.zeros(tiles * tile, tiles * tile, dtype=torch.bool)
    padded[:N, :N] = mask
    dense = padded.view(tiles, tile, tiles, tile).any(3).any(1)
    listed = torch.zeros_like(dense)
    for i in range(tiles):
        listed[i, lut[i, :counts[i]].long()] = True
    assert torch.equal(listed, dense)                      # exactly the tiles with an allowed pair
    assert int(counts.sum()) == int(counts_t.sum()) < tiles * tiles


def test_sparse_fp16():
    q, k, v = _qkv(1, 2, 70, 32, torch.float16)
    got = ops.sparse_attention(q, k, v, "fixed", block=16, backend="triton")
    want = reference.sparse_attention(q.double(), k.double(), v.double(), "fixed", 16).to(torch.float16)
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


requires_gpu_kernels = pytest.mark.skipif(not torch.cuda.is_available() or _interpreting(),
                                          reason="bfloat16 dots need a GPU (the interpreter has no bfloat16)")


@requires_gpu_kernels
@pytest.mark.parametrize("grid, block, memory, causal", [((16, 8, 8), (4, 4, 4), None, True),
                                                         ((20, 24), (8, 8), 1, True), ((700,), (256,), 1, False)])
def test_bf16_on_the_gpu(grid, block, memory, causal):
    q, k, v = (t.cuda() for t in _qkv(2, 3, math.prod(grid), 64, torch.bfloat16))
    results = _grads_both(lambda q, k, v: ops.block_local_attention(q, k, v, grid, block, causal, memory),
                          lambda q, k, v: reference.block_local_attention(q.double(), k.double(), v.double(), grid,
                                                                          block, causal, memory).to(q.dtype),
                          (q, k, v))
    for name, got, want in zip(("out", "dq", "dk", "dv"), results["triton"], results["reference"]):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2, msg=lambda m: f"{name}: {m}")
    got = ops.sparse_attention(q, k, v, "strided", stride=32)
    torch.testing.assert_close(got, reference.sparse_attention(q.double(), k.double(), v.double(), "strided",
                                                               32).to(q.dtype), rtol=2e-2, atol=2e-2)


def test_bf16_under_the_interpreter_is_refused_with_the_reason():
    q, k, v = _qkv(1, 1, 8, 16, torch.bfloat16)
    if not _interpreting():
        pytest.skip("only the interpreter lacks bfloat16 dots")
    with pytest.raises(ValueError, match="bfloat16 tl.dot does not run in the Triton interpreter"):
        ops.block_local_attention(q, k, v, (8,), (4,), backend="triton")
    got = ops.block_local_attention_decode(q[:, :, 5:6], k, v, 5, (8,), (4,), backend="triton")   # no dots: runs
    torch.testing.assert_close(got, reference.block_local_attention(q, k, v, (8,), (4,))[:, :, 5:6], rtol=1e-2,
                               atol=1e-2)


def test_opcheck():
    q, k, v = (t.requires_grad_() for t in _qkv(1, 1, 6, 16))
    torch.library.opcheck(torch.ops.fastgen.block_local_attention.default,
                          (q, k, v, [2, 3], [1, 2], True, 1, 0.25))


@pytest.mark.slow
def test_opcheck_sparse_and_decode():
    q, k, v = (t.requires_grad_() for t in _qkv(1, 2, 12, 16))
    torch.library.opcheck(torch.ops.fastgen.sparse_attention.default, (q, k, v, "strided", 3, 1, True, 0.25))
    qd = q[:, :, 5:6].detach()
    torch.library.opcheck(torch.ops.fastgen.block_local_attention_decode.default,
                          (qd, k.detach(), v.detach(), 5, [3, 4], [2, 2], 1, 0.25))


def test_torch_compile_fullgraph_with_backward():
    q, k, v = (t.requires_grad_() for t in _qkv(1, 2, 12, 16))

    def loss(q, k, v):
        return ops.block_local_attention(q, k, v, (3, 4), (2, 2), memory=1, backend="triton").square().sum()
    f = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(f(q, k, v), (q, k, v))
    want = torch.autograd.grad(reference.block_local_attention(q, k, v, (3, 4), (2, 2), True, 1).square().sum(),
                               (q, k, v))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_decode_refuses_gradients_loudly():
    q, k, v = _qkv(1, 1, 12, 16)
    q.requires_grad_()
    out = ops.block_local_attention_decode(q[:, :, 3:4], k, v, 3, (3, 4), (2, 2), backend="triton")
    with pytest.raises(RuntimeError):
        out.sum().backward()
