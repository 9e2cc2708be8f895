"""fastgen.ops.vector_quantize / nearest_code / ema_codebook_update: the tiled nearest-code kernel
(Triton under the CPU interpreter) against the dense reference (distances + argmin) on odd shapes
(K not a multiple of the code tile, D padded), 16-bit inputs and strided z; ties to the lowest
index within and across code tiles; the straight-through gradient and both losses' gradients;
the EMA update against the reference over several steps; opcheck, torch.compile, and errors
naming the argument.  bf16 searches run on a GPU only (``gpu``-marked tests below): the
interpreter's tl.dot multiplies bf16 bit patterns as integers (numpy has no bf16); fp16 is
checked here, bf16 for the EMA update (no dot)."""
import pytest
import torch

from fastgen import ops
from fastgen.kernels.vector_quantize import search_config
from fastgen.ops.vector_quantize import reference


def _data(N, K, D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, D, generator=g).to(dtype), torch.randn(K, D, generator=g).to(dtype)


def assert_nearest(z, codebook, indices, rtol=1e-4):
    """indices are a nearest code of each row (distances in float64 of the inputs' values), and
    equal the dense reference wherever the best code wins by more than the tolerance."""
    d = torch.cdist(z.double(), codebook.double()) ** 2
    best = d.min(1).values
    scale = (z.double() ** 2).sum(1) + (codebook.double() ** 2).sum(1).max()
    got = d.gather(1, indices.view(-1, 1))[:, 0]
    assert (got <= best + rtol * scale).all(), "a row's code is not the nearest"
    second = d.sort(1).values[:, 1] if d.shape[1] > 1 else best + scale
    clear = second - best > 2 * rtol * scale
    want = reference.nearest_code(z, codebook)
    assert torch.equal(indices[clear], want[clear])
    assert clear.float().mean() > 0.9


SHAPES = [pytest.param(37, 100, 24, id="N37-K100-D24"), pytest.param(130, 257, 64, id="N130-K257-D64"),
          pytest.param(5, 1, 8, id="N5-K1-D8"), pytest.param(70, 65, 200, id="N70-K65-D200"),
          pytest.param(64, 64, 16, id="N64-K64-D16")]


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("N, K, D", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_search_matches_dense_reference(N, K, D, dtype):
    z, codebook = _data(N, K, D, dtype, seed=N + K + D)
    got = ops.nearest_code(z, codebook, backend="triton")
    assert got.dtype == torch.int64 and got.shape == (N,)
    assert_nearest(z, codebook, got)


def test_ties_go_to_the_lowest_index_within_and_across_code_tiles():
    """Duplicated codes give bit-equal scores; the lowest copy must win, whether the copies sit in
    one code tile or in different ones (the tile is BLOCK_K codes wide)."""
    block_k = search_config(16, 4, "ieee")[1]
    K = 2 * block_k + 30
    z, codebook = _data(40, K, 16, seed=3)
    for copies in ([7, 9, block_k - 1], [block_k + 5, 2 * block_k + 3], [2, block_k + 2, 2 * block_k + 2]):
        cb = codebook.clone()
        cb[copies] = 3.0                                             # far from the other codes
        zz = z.clone()
        zz[:20] = 3.0 + 0.01 * z[:20]                                # these rows pick the duplicated code
        for dtype in (torch.float32, torch.float16):
            for backend in ("triton", "reference"):
                got = ops.nearest_code(zz.to(dtype), cb.to(dtype), backend=backend)
                assert (got[:20] == min(copies)).all(), (copies, backend, dtype, got[:20])
    # rows exactly between two different codes (4 and block_k + 1): equal distances
    cb = torch.full((K, 16), 10.0)
    cb[4], cb[block_k + 1] = -torch.eye(16)[0], torch.eye(16)[0]
    zero = torch.zeros(3, 16)
    assert ops.nearest_code(zero, cb, backend="triton").tolist() == [4, 4, 4]
    assert reference.nearest_code(zero, cb).tolist() == [4, 4, 4]


def test_strided_and_batched_z():
    g = torch.Generator().manual_seed(4)
    codebook = torch.randn(50, 12, generator=g)
    wide = torch.randn(33, 24, generator=g)
    z_cols = wide[:, ::2]                                   # column stride 2
    z_t = torch.randn(12, 33, generator=g).t()             # row stride 1, column stride 33
    maps = torch.randn(2, 12, 3, 5, generator=g)            # an NCHW map read as [B, H, W, D]
    for z in (z_cols, z_t):
        assert not z.is_contiguous()
        assert torch.equal(ops.nearest_code(z, codebook, backend="triton"), reference.nearest_code(z, codebook))
    z_bhwd = maps.permute(0, 2, 3, 1)
    got = ops.nearest_code(z_bhwd, codebook, backend="triton")
    assert got.shape == (2, 3, 5)
    assert torch.equal(got.flatten(), reference.nearest_code(z_bhwd.reshape(-1, 12), codebook))
    out = ops.vector_quantize(z_bhwd, codebook, backend="triton")
    assert out.indices.shape == (30,) and out.quantized.shape == (30, 12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_outputs_and_gradients_match_reference(dtype):
    z, codebook = _data(45, 70, 24, dtype, seed=5)
    g = torch.randn(45, 24).to(dtype)
    results = {}
    for backend in ("triton", "reference"):
        zz, cb = z.clone().requires_grad_(), codebook.clone().requires_grad_()
        out = ops.vector_quantize(zz, cb, beta=0.3, backend=backend)
        assert out.quantized.dtype == dtype and out.commitment_loss.dtype == torch.float32
        assert out.codebook_loss.dtype == torch.float32 and out.commitment_loss.shape == ()
        loss = (out.quantized.float() * g.float()).sum() + 2.0 * out.commitment_loss + 3.0 * out.codebook_loss
        results[backend] = (out.indices, out.quantized, out.commitment_loss, out.codebook_loss,
                            *torch.autograd.grad(loss, (zz, cb)))
    for got, want in zip(results["triton"], results["reference"]):
        torch.testing.assert_close(got, want)
    indices, quantized, commitment, codebook_loss, gz, gc = results["triton"]
    q = codebook[indices].float()
    torch.testing.assert_close(quantized.float(), q, rtol=0, atol=2e-2 if dtype != torch.float32 else 1e-6)
    mse = ((z.float() - q) ** 2).mean()
    torch.testing.assert_close(commitment, 0.3 * mse)
    torch.testing.assert_close(codebook_loss, mse)
    # straight-through + commitment: g + 2 * 0.3 * 2 (z - q) / (N D); codebook: 3 * 2 (q - z) / (N D) summed per code
    n = z.numel()
    torch.testing.assert_close(gz.float(), g.float() + 1.2 * (z.float() - q) / n, rtol=2e-2, atol=1e-4)
    want_gc = torch.zeros(70, 24).index_add_(0, indices, 6.0 * (q - z.float()) / n)
    torch.testing.assert_close(gc.float(), want_gc, rtol=2e-2, atol=1e-4)


def test_reference_gradcheck_float64():
    """Each loss w.r.t. the input it trains (the stop-gradients make the others zero by design,
    and the straight-through gradient is not the derivative of the value -- quantized equals q
    whatever z is --: both are checked in the test above)."""
    z, codebook = _data(6, 5, 3, torch.float64, seed=6)
    z.requires_grad_()
    codebook.requires_grad_()
    assert torch.autograd.gradcheck(lambda z: reference.vector_quantize(z, codebook, 0.7).commitment_loss, (z,))
    assert torch.autograd.gradcheck(lambda c: reference.vector_quantize(z, c, 0.7).codebook_loss, (codebook,))


@pytest.mark.parametrize("K, D, dtype", [pytest.param(40, 12, torch.float32, id="K40-D12-fp32"),
                                         pytest.param(70, 200, torch.bfloat16, id="K70-D200-bf16")])
def test_ema_update_matches_reference_over_steps(K, D, dtype):
    g = torch.Generator().manual_seed(7)
    state = {b: (torch.rand(K, generator=g) + 0.5, torch.randn(K, D, generator=g)) for b in ("triton",)}
    state["reference"] = tuple(t.clone() for t in state["triton"])
    for step in range(3):
        z = torch.randn(90 + step, D, generator=g).to(dtype)
        indices = torch.randint(0, K // 2, (z.shape[0],), generator=g)   # half the codes unused
        new = {b: ops.ema_codebook_update(*state[b], z, indices, decay=0.8, epsilon=1e-3, backend=b)
               for b in ("triton", "reference")}
        torch.testing.assert_close(new["triton"], new["reference"], rtol=1e-5, atol=1e-5)
        for got, want in zip(state["triton"], state["reference"]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    cluster_size, embed_sum = state["reference"]
    n = cluster_size.sum()
    torch.testing.assert_close(new["reference"], embed_sum / ((cluster_size + 1e-3) / (n + K * 1e-3) * n)[:, None])


def test_ema_update_strided_z_and_one_step_by_hand():
    K, D = 3, 4
    cluster_size, embed_sum = torch.ones(K), torch.zeros(K, D)
    z = torch.arange(24.0).view(3, 8)[:, ::2]                         # rows [0,2,4,6], [8,...], [16,...]
    indices = torch.tensor([2, 0, 2])
    codebook = ops.ema_codebook_update(cluster_size, embed_sum, z, indices, decay=0.5, epsilon=1e-5,
                                       backend="triton")
    torch.testing.assert_close(cluster_size, torch.tensor([1.0, 0.5, 1.5]))
    torch.testing.assert_close(embed_sum[2], 0.5 * (z[0] + z[2]))
    n = 3.0
    smoothed = (cluster_size + 1e-5) / (n + 3e-5) * n
    torch.testing.assert_close(codebook, embed_sum / smoothed[:, None])


def test_d_over_256_runs_on_the_reference_and_is_refused_on_triton():
    z, codebook = _data(4, 3, 300)
    with pytest.raises(ValueError, match="D <= 256"):
        ops.nearest_code(z, codebook, backend="triton")
    assert ops.vector_quantize(z, codebook).indices.shape == (4,)
    with pytest.raises(ValueError, match="float32/float16/bfloat16"):
        ops.nearest_code(z[:, :8].double(), codebook[:, :8].double(), backend="triton")


def test_opcheck():
    z, codebook = _data(9, 11, 8)
    torch.library.opcheck(torch.ops.fastgen.vq_nearest_code.default, (z, codebook))
    indices = torch.randint(0, 11, (9,))
    torch.library.opcheck(torch.ops.fastgen.ema_codebook_update.default,
                          (torch.rand(11) + 1, torch.randn(11, 8), z, indices, 0.9, 1e-5),
                          test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph():
    z, codebook = _data(12, 10, 8, seed=8)
    z.requires_grad_()
    codebook.requires_grad_()

    def loss(z, codebook, backend):
        out = ops.vector_quantize(z, codebook, beta=0.25, backend=backend)
        return out.quantized.sum() + out.commitment_loss + out.codebook_loss, out.indices
    compiled = torch.compile(lambda z, c: loss(z, c, "triton"), fullgraph=True, backend="aot_eager")
    got, got_idx = compiled(z, codebook)
    want, want_idx = loss(z, codebook, "reference")
    assert torch.equal(got_idx, want_idx)
    for a, b in zip(torch.autograd.grad(got, (z, codebook)), torch.autograd.grad(want, (z, codebook))):
        torch.testing.assert_close(a, b)
    cs, es = torch.ones(10), torch.randn(10, 8)
    update = torch.compile(lambda cs, es, z, i: ops.ema_codebook_update(cs, es, z, i, 0.9, 1e-5, backend="triton"),
                           fullgraph=True, backend="aot_eager")
    cs2, es2 = cs.clone(), es.clone()
    torch.testing.assert_close(update(cs, es, z.detach(), want_idx),
                               reference.ema_codebook_update(cs2, es2, z.detach(), want_idx, 0.9, 1e-5))
    torch.testing.assert_close(es, es2)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_non_finite_inputs_raise(backend):
    z, codebook = _data(10, 6, 8)
    bad = z.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="z holds non-finite values"):
        ops.vector_quantize(bad, codebook, backend=backend)
    bad[3, 1] = float("inf")
    with pytest.raises(ValueError, match="z holds non-finite values"):
        ops.nearest_code(bad, codebook, backend=backend)
    cb = codebook.clone()
    cb[2, 0] = float("nan")
    with pytest.raises(ValueError, match="codebook holds non-finite values"):
        ops.nearest_code(z, cb, backend=backend)


@pytest.mark.parametrize("call, message", [
    (lambda z, c: ops.vector_quantize(z[:, :7], c), r"z must be \[..., D\] with D = 8"),
    (lambda z, c: ops.vector_quantize(z, c[:0]), "codebook must hold at least one code"),
    (lambda z, c: ops.vector_quantize(z, c[0]), r"codebook must be \[K, D\]"),
    (lambda z, c: ops.vector_quantize(z[:0], c), "z must hold at least one vector"),
    (lambda z, c: ops.vector_quantize(z, c.half()), "codebook has dtype torch.float16 but z has torch.float32"),
    (lambda z, c: ops.vector_quantize(z.long(), c), "z must be floating point"),
    (lambda z, c: ops.vector_quantize(z.numpy(), c), "z must be a torch.Tensor"),
    (lambda z, c: ops.vector_quantize(z, c, beta=-1.0), "beta must be a number >= 0"),
    (lambda z, c: ops.ema_codebook_update(torch.ones(6), torch.zeros(6, 8), z, torch.full((10,), 6)),
     r"indices must lie in \[0, 6\)"),
    (lambda z, c: ops.ema_codebook_update(torch.ones(6), torch.zeros(6, 8), z, torch.zeros(10, dtype=torch.int32)),
     "indices must be int64"),
    (lambda z, c: ops.ema_codebook_update(torch.ones(6).double(), torch.zeros(6, 8), z, torch.zeros(10).long()),
     "cluster_size must be a contiguous float32"),
    (lambda z, c: ops.ema_codebook_update(torch.ones(6), torch.zeros(5, 8), z, torch.zeros(10).long()),
     r"embed_sum must be \[K, D\] with K = 6"),
    (lambda z, c: ops.ema_codebook_update(torch.ones(6), torch.zeros(6, 9), z, torch.zeros(10).long()),
     r"z must be a floating-point \[N, D\] tensor with D = 9"),
    (lambda z, c: ops.ema_codebook_update(torch.ones(6), torch.zeros(6, 8), z, torch.zeros(10).long(), decay=1.5),
     r"decay must be a number in \[0, 1\]"),
    (lambda z, c: ops.ema_codebook_update(torch.ones(6), torch.zeros(6, 8), z, torch.zeros(10).long(), epsilon=0),
     "epsilon must be a number > 0"),
])
def test_bad_input_errors(call, message):
    z, codebook = _data(10, 6, 8)
    with pytest.raises((ValueError, TypeError), match=message):
        call(z, codebook)


def test_fp32_dot_precision_follows_the_matmul_tf32_flag():
    """The op replaces cdist / z @ c.T: on CUDA it reads torch.backends.cuda.matmul.allow_tf32;
    the interpreter always multiplies exactly; 16-bit operands use the tensor cores."""
    from fastgen.kernels._launch import observe_launches
    z, codebook = _data(8, 5, 8)
    seen = []
    with observe_launches(seen.append):
        ops.nearest_code(z, codebook, backend="triton")
    search = [s for s in seen if s.kernel.fn.__name__ == "vq_search_kernel"]
    assert len(search) == 1 and search[0].constexprs["PRECISION"] == "ieee"
    from fastgen.ops._define import dot_precision
    assert dot_precision(torch.float32, torch.device("cpu"), "matmul") == "ieee"


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("K, D", [(512, 64), (8192, 64), (1000, 256), (77, 8)])
def test_search_on_gpu(K, D, dtype):
    """The compiled kernel at benchmark-like sizes (exact fp32: TF32 off, PyTorch's default)."""
    z, codebook = (t.cuda() for t in _data(8192, K, D, dtype, seed=K + D))
    got = ops.nearest_code(z, codebook)
    assert_nearest(z.cpu(), codebook.cpu(), got.cpu(), rtol=1e-3 if dtype != torch.float32 else 1e-4)
    cb = codebook.clone()
    cb[K // 2] = cb[3]                                       # a duplicate in another code tile
    got = ops.nearest_code(cb[3:4].expand(5, D).contiguous(), cb)
    assert (got == 3).all()
