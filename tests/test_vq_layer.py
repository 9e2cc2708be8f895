"""fastgen.nn.VectorQuantizer: shapes ([B, D, H, W] and [N, D]), lookup, the EMA state against a
hand-written EMA over several steps (training mode only), the gradient-trained codebook,
dead-code restarts, the Triton path (interpreter) against the reference, bf16 z, and errors."""
import pytest
import torch

from fastgen import ops
from fastgen.nn import VectorQuantizer
from fastgen.ops.vector_quantize import reference


def test_shapes_lookup_and_losses():
    vq = VectorQuantizer(10, 6).eval()
    z = torch.randn(2, 6, 3, 5)
    out = vq(z)
    assert out.indices.shape == (2, 3, 5) and out.indices.dtype == torch.int64
    assert out.quantized.shape == z.shape and out.quantized.dtype == z.dtype
    looked = vq.lookup(out.indices)
    assert looked.shape == z.shape
    torch.testing.assert_close(out.quantized, looked)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 6)
    assert torch.equal(out.indices.flatten(), reference.nearest_code(flat, vq.codebook))
    torch.testing.assert_close(out.codebook_loss, ((flat - vq.codebook[out.indices.flatten()]) ** 2).mean())
    torch.testing.assert_close(out.commitment_loss, 0.25 * out.codebook_loss)
    vectors = torch.randn(7, 6)
    out = vq(vectors)
    assert out.indices.shape == (7,) and out.quantized.shape == (7, 6)
    assert vq.lookup(out.indices).shape == (7, 6)
    assert vq.lookup(torch.zeros(2, 4, dtype=torch.int64)).shape == (2, 6, 4)      # [B, T] -> [B, D, T]


def test_straight_through_gradient_reaches_the_encoder():
    vq = VectorQuantizer(8, 4)
    z = torch.randn(3, 4, 2, 2, requires_grad=True)
    codebook = vq.codebook.clone()                             # before this step's EMA update
    out = vq(z)
    (out.quantized.sum() + out.commitment_loss).backward()
    q = codebook[out.indices].movedim(-1, 1)
    torch.testing.assert_close(z.grad, 1 + 0.25 * 2 * (z.detach() - q) / z.numel())


def test_ema_state_matches_a_hand_written_ema_and_eval_leaves_it_alone():
    torch.manual_seed(1)
    K, D, decay, eps = 12, 5, 0.9, 1e-5
    vq = VectorQuantizer(K, D, decay=decay, epsilon=eps)
    codebook, cluster_size, embed_sum = vq.codebook.clone(), torch.ones(K), vq.codebook.clone()
    for _ in range(4):
        z = torch.randn(4, D, 3, 3)
        out = vq(z)
        flat = z.permute(0, 2, 3, 1).reshape(-1, D)
        idx = reference.nearest_code(flat, codebook)
        assert torch.equal(out.indices.flatten(), idx)
        onehot = torch.nn.functional.one_hot(idx, K).float()
        cluster_size = decay * cluster_size + (1 - decay) * onehot.sum(0)
        embed_sum = decay * embed_sum + (1 - decay) * onehot.t() @ flat
        n = cluster_size.sum()
        codebook = embed_sum / ((cluster_size + eps) / (n + K * eps) * n)[:, None]
        torch.testing.assert_close(vq.cluster_size, cluster_size)
        torch.testing.assert_close(vq.embed_sum, embed_sum)
        torch.testing.assert_close(vq.codebook, codebook)
    assert not any(p.requires_grad for p in vq.parameters())
    vq.eval()
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    vq(torch.randn(2, D, 3, 3))
    for k, v in vq.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_gradient_trained_codebook():
    vq = VectorQuantizer(6, 3, ema=False)
    assert isinstance(vq.codebook, torch.nn.Parameter)
    before = vq.codebook.detach().clone()
    out = vq(torch.randn(20, 3))
    out.codebook_loss.backward()
    used = torch.unique(out.indices)
    assert vq.codebook.grad[used].abs().sum() > 0
    unused = torch.ones(6, dtype=torch.bool)
    unused[used] = False
    assert (vq.codebook.grad[unused] == 0).all()
    assert torch.equal(vq.codebook.detach(), before)          # no EMA: forward leaves it alone


@pytest.mark.parametrize("ema", [True, False])
def test_dead_codes_restart_from_batch_vectors(ema):
    torch.manual_seed(2)
    K, D = 8, 4
    vq = VectorQuantizer(K, D, ema=ema, dead_code_steps=2)
    with torch.no_grad():
        vq.codebook.copy_(torch.randn(K, D))
        vq.codebook[5:] += 100.0                               # far from the data: never chosen
        if ema:
            vq.embed_sum.copy_(vq.codebook)                    # (cluster_size 1: the EMA keeps them there)
    z = torch.randn(30, D)
    vq(z)
    assert (vq.unused_steps[5:] == 1).all()
    assert vq.codebook[5:].abs().min() > 50                    # not yet: one unused step
    vq(z)                                                      # second unused step: restart
    assert (vq.unused_steps[5:] == 0).all()
    for k in range(5, K):
        assert (vq.codebook[k] - z).abs().amax(1).min() < 1e-6, k     # equals some batch vector
    if ema:
        assert (vq.cluster_size[5:] == 1).all()
        torch.testing.assert_close(vq.embed_sum[5:], vq.codebook[5:])
    used = torch.unique(vq(z).indices)
    assert (vq.unused_steps[used] == 0).all()


def test_triton_path_matches_reference(monkeypatch):
    torch.manual_seed(3)
    runs = {}
    for backend in ("reference", "triton"):
        monkeypatch.setenv("FASTGEN_BACKEND", backend)
        torch.manual_seed(3)
        vq = VectorQuantizer(20, 8, dead_code_steps=1)
        z = torch.randn(2, 8, 4, 4, requires_grad=True)
        outs = [vq(z) for _ in range(3)]
        grad = torch.autograd.grad(sum(o.quantized.sum() + o.commitment_loss for o in outs), z)[0]
        runs[backend] = ([o.indices for o in outs], vq.codebook.clone(), vq.cluster_size.clone(), grad)
    ref, tri = runs["reference"], runs["triton"]
    for a, b in zip(ref[0], tri[0]):
        assert torch.equal(a, b)
    for a, b in zip(ref[1:], tri[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bf16_input_with_float32_codebook():
    vq = VectorQuantizer(16, 8)
    z = torch.randn(2, 8, 3, 3).bfloat16()
    out = vq(z)
    assert out.quantized.dtype == torch.bfloat16 and vq.codebook.dtype == torch.float32
    assert out.commitment_loss.dtype == torch.float32


def test_errors():
    with pytest.raises(ValueError, match="num_codes must be a positive int"):
        VectorQuantizer(0, 4)
    with pytest.raises(ValueError, match="dead_code_steps must be None or a positive int"):
        VectorQuantizer(4, 4, dead_code_steps=0)
    vq = VectorQuantizer(4, 4)
    with pytest.raises(ValueError, match=r"z must be \[N, 4\] or \[B, 4, \*spatial\]"):
        vq(torch.randn(2, 3, 5, 5))
    with pytest.raises(ValueError, match="z holds non-finite values"):
        vq(torch.full((2, 4), float("nan")))
    with pytest.raises(TypeError, match="indices must be an int64/int32 tensor"):
        vq.lookup(torch.zeros(3))


def test_exported():
    assert ops.VQOutput is type(VectorQuantizer(2, 2)(torch.randn(3, 2)))
