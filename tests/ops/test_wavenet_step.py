"""The wavenet_step family (wavenet_step, wavenet_steps): the Triton kernels (interpreter on CPU)
against the reference specification, fp16 numerics, the weights bundle, backend choice with
reasons, errors and opcheck."""
import pytest
import torch

from fastgen.models import WaveNet
from fastgen.ops._define import REGISTRY
from fastgen.ops.wavenet_step import WaveNetStepWeights, reference, wavenet_step, wavenet_steps


def _fused_model(kernel_size, conditioned, quantization=40, skip=32, residual=16):
    """A WaveNet whose channels the Triton kernels take (powers of two >= 16), weights spread."""
    torch.manual_seed(0)
    model = WaveNet(layers=4, cycle=2, residual_channels=residual, skip_channels=skip, quantization=quantization,
                    kernel_size=kernel_size, local_channels=16 if conditioned else None, hop=4,
                    global_classes=2 if conditioned else None).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _gumbel(*shape):
    return -torch.log(-torch.log(torch.rand(*shape)))


def _reference_steps(model, cache, prev, local, gumbel, t0, inv_temperature):
    """The per-step reference (``reference.wavenet_step`` and ``wavenet_push``) run T times."""
    queue, codes = cache.queue.clone(), []
    for i in range(gumbel.shape[0]):
        prev, pushed = reference.wavenet_step(prev, queue, cache.queue_offsets, t0 + i, model.cycle,
                                              model.kernel_size, cache.weights, cache.gterm,
                                              None if local is None else local[i], gumbel[i], inv_temperature)
        reference.wavenet_push(queue, pushed, cache.queue_offsets, t0 + i, model.cycle, model.kernel_size)
        codes.append(prev)
    return torch.stack(codes), queue


def test_packed_weights_are_a_named_bundle():
    """packed_step_weights: a WaveNetStepWeights with the documented shapes, matrices in the asked
    dtype and biases in fp32; a plain tuple unpacks it in the kernels' order."""
    model = _fused_model(3, True)
    w = model.packed_step_weights(torch.float16)
    L, k, R, S, A, LC = 4, 3, 16, 32, 40, 16
    shapes = dict(embed=(A, R), wtap=(L, k, R, 2 * R), bconv=(L, 2 * R), wlc=(L, LC, 2 * R), wres=(L, R, R),
                  bres=(L, R), wskip=(L, R, S), bskip=(L, S), w1=(S, S), b1=(S,), w2=(S, A), b2=(A,))
    assert isinstance(w, WaveNetStepWeights) and w._fields == tuple(shapes)
    for name, shape in shapes.items():
        tensor = getattr(w, name)
        assert tuple(tensor.shape) == shape and tensor.is_contiguous(), name
        assert tensor.dtype == (torch.float16 if name in WaveNetStepWeights.MATRICES else torch.float32), name
    assert w.dtype == torch.float16
    assert tuple(w)[1] is w.wtap
    assert tuple(_fused_model(2, False).packed_step_weights().wlc.shape) == (L, 1, 2 * R)   # no local: zeros


def test_fused_wavenet_step_triton_matches_reference():
    torch.manual_seed(0)
    model = WaveNet(layers=4, cycle=2, residual_channels=16, skip_channels=32, quantization=300,
                    kernel_size=3, local_channels=16, hop=4, global_classes=2).eval()
    B = 3
    cache = model.incremental(B, torch.tensor([0, 1, 1]))
    cache.queue.normal_()                                            # a mid-sequence state
    prev = torch.randint(300, (B,))
    local_t = torch.randn(B, 16)
    gumbel = _gumbel(B, 2, 300)[:, 0]                                # a strided view
    results = {}
    for backend in ("reference", "triton"):
        queue, codes = cache.queue.clone(), torch.full((B,), -1)
        wavenet_step(prev, codes, queue, cache.queue_offsets, cache.weights, cache.gterm, local_t, gumbel,
                     torch.empty(B, 32), 5, model.cycle, model.kernel_size, 1 / 0.8, backend=backend)
        results[backend] = (codes, queue)
    assert torch.equal(results["triton"][0], results["reference"][0])
    torch.testing.assert_close(results["triton"][1], results["reference"][1], rtol=1e-6, atol=1e-6)
    assert not torch.equal(results["reference"][1], cache.queue)     # the step pushed into the queues


@pytest.mark.parametrize("kernel_size,conditioned,batch", [
    pytest.param(2, False, 1, id="k2-B1"),
    pytest.param(3, True, 19, id="k3-local-global-B19"),     # two tiles of 16, the second ragged
])
def test_persistent_kernel_matches_per_step_reference(kernel_size, conditioned, batch):
    """wavenet_steps on Triton (interpreter), launched for three consecutive blocks, draws the
    codes and leaves the queues of the per-step reference looped over the same steps."""
    model = _fused_model(kernel_size, conditioned)
    cache = model.incremental(batch, torch.arange(batch) % 2 if conditioned else None)
    cache.queue.normal_()                                            # a mid-sequence state
    blocks, T, t0 = 3, 4, 6
    prev = torch.randint(40, (batch,))
    local = torch.randn(blocks * T, batch, 16) if conditioned else None
    gumbel = _gumbel(blocks * T, batch, 2, 40)[:, :, 1]             # a strided view
    expected_codes, expected_queue = _reference_steps(model, cache, prev, local, gumbel, t0, 1 / 0.7)
    queue, codes, start = cache.queue.clone(), torch.full((blocks * T, batch), -1), prev.clone()
    for b in range(blocks):
        part = slice(b * T, (b + 1) * T)
        wavenet_steps(start, codes[part], queue, cache.queue_offsets, cache.weights, cache.gterm,
                      None if local is None else local[part], gumbel[part], torch.empty(batch, 32),
                      t0 + b * T, model.cycle, kernel_size, 1 / 0.7, backend="triton")
        start = codes[part][-1]
    assert torch.equal(codes, expected_codes)
    torch.testing.assert_close(queue, expected_queue, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(queue, cache.queue)                   # the steps pushed into the queues
    assert expected_codes.unique().numel() > 3


def test_fp16_kernels_match_fp16_reference():
    """fp16 weights/queues (interpreter): both kernels equal the reference's fp16 numerics
    (left operands rounded to fp16, fp32 accumulation): codes identical, queues within one
    fp16 rounding (2e-3 absolute at |h| ~ 1)."""
    model = _fused_model(3, True)
    B, T = 3, 5
    cache = model.incremental(B, torch.tensor([0, 1, 1]), dtype=torch.float16)
    assert cache.queue.dtype == cache.weights.wtap.dtype == torch.float16 and cache.weights.bconv.dtype == torch.float32
    cache.queue.normal_()
    prev = torch.randint(40, (B,))
    local = torch.randn(T, B, 16)
    gumbel = _gumbel(T, B, 40)
    args = (cache.queue_offsets, cache.weights, cache.gterm)
    results = {}
    for backend in ("reference", "triton"):
        queue, codes = cache.queue.clone(), torch.full((T, B), -1)
        wavenet_steps(prev, codes, queue, *args, local, gumbel, torch.empty(B, 32, dtype=torch.float16), 3,
                      model.cycle, 3, 1.0, backend=backend)
        q1, c1 = cache.queue.clone(), torch.full((B,), -1)
        wavenet_step(prev, c1, q1, *args, local[0], gumbel[0], torch.empty(B, 32, dtype=torch.float16), 3,
                     model.cycle, 3, 1.0, backend=backend)
        results[backend] = codes, queue, c1, q1
    for got, want in zip(results["triton"], results["reference"]):
        if got.dtype == torch.long:
            assert torch.equal(got, want)
        else:
            torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=2e-3)
    assert torch.equal(results["triton"][2], results["triton"][0][0])


def test_declared_ops_and_the_tf32_rule():
    """Both ops are declared in the registry under their family; their dots follow the matmul
    TF32 flag, weights-dtype aware: exact fp32 only for fp32 weights (16-bit weights take
    the tensor cores, and the interpreter multiplies fp32 exactly)."""
    from fastgen.ops.wavenet_step import op
    assert {REGISTRY["wavenet_step"].family, REGISTRY["wavenet_steps"].family} == {"wavenet_step"}
    assert REGISTRY["wavenet_step"].tf32 == REGISTRY["wavenet_steps"].tf32 == "matmul"
    queue = torch.zeros(4, 2, 16)
    for kernel in (op._wavenet_step_kernel, op._wavenet_steps_kernel):
        assert kernel.precision(queue, torch.float32) == "ieee"
        assert kernel.precision(queue.half(), torch.float16) == "tf32"
        assert kernel.precision(queue.bfloat16(), torch.bfloat16) == "tf32"


def test_unsupported_channels_fall_back_to_the_reference_or_raise_when_triton_is_forced(monkeypatch):
    """Residual channels 8 (not a power of two >= 16): the automatic choice runs the reference
    (even with FASTGEN_BACKEND unset under the interpreter), a forced Triton backend raises a
    ValueError with the kernels' reason; a plain 12-tuple of weights works like the bundle."""
    model = _fused_model(2, False, residual=8)
    cache = model.incremental(2)
    prev, gumbel = torch.tensor([1, 2]), _gumbel(3, 2, 40)
    expected, _ = reference.wavenet_steps(prev, cache.queue, cache.queue_offsets, 0, model.cycle, 2,
                                          cache.weights, cache.gterm, None, gumbel, 1.0)
    codes = torch.full((3, 2), -1)
    wavenet_steps(prev, codes, cache.queue, cache.queue_offsets, tuple(cache.weights), cache.gterm, None, gumbel,
                  cache.scratch, 0, model.cycle, 2, 1.0)
    assert torch.equal(codes, expected)
    monkeypatch.setenv("FASTGEN_BACKEND", "triton")
    with pytest.raises(ValueError, match=r"wavenet_steps on Triton: residual, skip and local channels must be "
                                         r"powers of two >= 16, got 8, 32, 0"):
        wavenet_steps(prev, codes, cache.queue, cache.queue_offsets, cache.weights, cache.gterm, None, gumbel,
                      cache.scratch, 0, model.cycle, 2, 1.0)
    with pytest.raises(ValueError, match="wavenet_step on Triton: residual"):
        wavenet_step(prev, codes[0], cache.queue, cache.queue_offsets, cache.weights, cache.gterm, None, gumbel[0],
                     cache.scratch, 0, model.cycle, 2, 1.0)


def test_op_errors():
    model = _fused_model(2, False)                   # channels the Triton kernels take
    cache = model.incremental(2, dtype=torch.bfloat16)
    prev, gumbel, scratch = torch.zeros(2, dtype=torch.long), torch.zeros(3, 2, 40), cache.scratch
    args = (cache.queue_offsets, cache.weights, cache.gterm, None, gumbel, scratch, 0, model.cycle, 2, 1.0)
    with pytest.raises(ValueError, match="bfloat16 does not run in the Triton interpreter"):
        wavenet_steps(prev, torch.zeros(3, 2, dtype=torch.long), cache.queue, *args,
                      backend="triton")
    with pytest.raises(TypeError, match="queue must have the weights' dtype torch.bfloat16"):
        wavenet_steps(prev, torch.zeros(3, 2, dtype=torch.long), cache.queue.float(), *args)
    with pytest.raises(ValueError, match=r"codes_out must be long \[3, 2\]"):
        wavenet_steps(prev, torch.zeros(2, 3, dtype=torch.long), cache.queue, *args)
    with pytest.raises(TypeError, match="gumbel must be float32"):
        wavenet_steps(prev, torch.zeros(3, 2, dtype=torch.long), cache.queue, cache.queue_offsets,
                      cache.weights, cache.gterm, None, gumbel.half(), scratch, 0, model.cycle, 2, 1.0)
    with pytest.raises(ValueError, match="weights must be a WaveNetStepWeights"):
        wavenet_steps(prev, torch.zeros(3, 2, dtype=torch.long), cache.queue, cache.queue_offsets,
                      tuple(cache.weights)[:11], cache.gterm, None, gumbel, scratch, 0, model.cycle, 2, 1.0)
    with pytest.raises(TypeError, match="weight w1 is torch.float32; every matrix must be torch.bfloat16"):
        wavenet_step(prev, torch.zeros(2, dtype=torch.long), cache.queue, cache.queue_offsets,
                     cache.weights._replace(w1=cache.weights.w1.float()), cache.gterm, None, gumbel[0], scratch,
                     0, model.cycle, 2, 1.0)


def test_wavenet_ops_opcheck():
    """torch.library.opcheck (schema, fake tensors, in-place mutations) for both WaveNet ops."""
    model = _fused_model(3, True)
    cache = model.incremental(2, torch.tensor([0, 1]))
    cache.queue.normal_()
    prev = torch.tensor([3, 7])
    gumbel = _gumbel(2, 2, 40)
    local = torch.randn(2, 2, 16)
    common = (cache.queue_offsets, list(cache.weights), cache.gterm)
    torch.library.opcheck(torch.ops.fastgen.wavenet_steps.default,
                          (prev, torch.zeros(2, 2, dtype=torch.long), cache.queue.clone(), *common, local, gumbel,
                           cache.scratch, 1, model.cycle, 3, 1.0))
    torch.library.opcheck(torch.ops.fastgen.wavenet_step.default,
                          (prev, torch.zeros(2, dtype=torch.long), cache.queue.clone(), *common, local[0], gumbel[0],
                           cache.scratch, 1, model.cycle, 3, 1.0))
