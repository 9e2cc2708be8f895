"""GPU checks of the fused sampling steps: Gated PixelCNN, WaveNet (per-step and persistent kernels,
fp16/bf16), diffusion (run by benchmarks/run_gpu.sh)."""
import pytest
import torch

from fastgen.models import GatedPixelCNN
from fastgen.sampling import sample

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _assert_most_images_identical(naive, fast):
    """On a GPU the two samplers sum in different orders (cuDNN vs fastgen's kernels): a draw whose
    top two scores tie to within fp32 rounding may flip, and every later pixel of that image
    then differs.  Rare, so: at least 3 of 4 images identical (and the teacher-forced logits
    tests check the values themselves)."""
    same = (naive == fast).flatten(1).all(dim=1).float().mean().item()
    assert same >= 0.75, f"only {same:.0%} of the images are identical"


@pytest.mark.parametrize("levels,channels", [(256, 64), (17, 32)])
def test_fused_fast_sampler_matches_naive_on_gpu(levels, channels):
    torch.backends.cudnn.allow_tf32 = False          # exact fp32 on both paths
    try:
        torch.manual_seed(0)
        model = GatedPixelCNN((1, 10, 12), levels=levels, channels=channels, layers=4).cuda().eval()
        naive = sample(model, 8, method="naive", generator=torch.Generator().manual_seed(1))
        fast = sample(model, 8, method="fast", generator=torch.Generator().manual_seed(1))
        _assert_most_images_identical(naive, fast)
    finally:
        torch.backends.cudnn.allow_tf32 = True


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_fused_wavenet_generation_matches_naive_on_gpu(kernel_size):
    from fastgen.models import WaveNet
    torch.backends.cudnn.allow_tf32 = False
    try:
        torch.manual_seed(0)
        model = WaveNet(layers=8, cycle=4, residual_channels=32, skip_channels=64, quantization=256,
                        kernel_size=kernel_size).cuda().eval()
        naive = model.generate(300, 4, method="naive", generator=torch.Generator().manual_seed(1), return_codes=True)
        fast = model.generate(300, 4, method="fast", generator=torch.Generator().manual_seed(1), return_codes=True)
        assert (naive == fast).float().mean() > 0.99
    finally:
        torch.backends.cudnn.allow_tf32 = True


def test_wavenet_cuda_graph_generation_matches_eager_on_gpu():
    """generate(cuda_graph=True) draws the eager codes; a later call with other noise and global
    conditioning replays the block graph the first call captured (fastgen.sampling.graphs.GRAPHS)
    from its own state, and draws its own eager codes too."""
    from fastgen.models import WaveNet
    from fastgen.sampling.graphs import GRAPHS
    torch.manual_seed(0)
    model = WaveNet(layers=10, cycle=5, residual_channels=32, skip_channels=64, quantization=256,
                    global_classes=3).cuda().eval()
    captures = GRAPHS.captures
    for seed, ids in ((2, [0, 1, 2]), (3, [2, 2, 0])):
        gc = torch.tensor(ids, device="cuda")
        run = lambda **kw: model.generate(700, 3, global_cond=gc, generator=torch.Generator().manual_seed(seed),
                                          return_codes=True, **kw)
        assert torch.equal(run(), run(cuda_graph=True)), f"seed {seed}"
    assert GRAPHS.captures == captures + 1


@pytest.mark.parametrize("kernel_size,batch", [(2, 1), (3, 19)])
def test_wavenet_persistent_kernel_matches_reference_on_gpu(kernel_size, batch):
    """The persistent kernel compiled for CUDA (fp32, no TF32) against the per-step reference
    looped on the same GPU: 3 launches of 40 steps, local + global conditioning, a batch of one
    and a batch of two tiles (the second ragged)."""
    from fastgen.models import WaveNet
    from fastgen.ops.wavenet_step import reference
    from fastgen.ops.wavenet_step import wavenet_steps
    torch.manual_seed(0)
    model = WaveNet(layers=10, cycle=5, residual_channels=64, skip_channels=128, quantization=256,
                    kernel_size=kernel_size, local_channels=16, hop=4, global_classes=3).cuda().eval()
    cache = model.incremental(batch, torch.arange(batch, device="cuda") % 3)
    cache.queue.normal_()
    T, blocks = 40, 3
    prev = torch.randint(256, (batch,), device="cuda")
    local = torch.randn(blocks * T, batch, 16, device="cuda")
    gumbel = -torch.log(-torch.log(torch.rand(blocks * T, batch, 256, device="cuda")))
    queue, codes = cache.queue.clone(), torch.full((blocks * T, batch), -1, device="cuda")
    start = prev
    for b in range(blocks):
        part = slice(b * T, (b + 1) * T)
        wavenet_steps(start, codes[part], queue, cache.queue_offsets, cache.weights, cache.gterm, local[part],
                      gumbel[part], cache.scratch, 5 + b * T, model.cycle, kernel_size, 1.25)
        start = codes[part][-1]
    # the reference fed the kernel's own codes, so that a near-tie decided differently by
    # summation order changes one draw, not the rest of the sequence
    expected_queue, expected = cache.queue.clone(), []
    for i in range(blocks * T):
        before = prev if i == 0 else codes[i - 1]
        drawn, pushed = reference.wavenet_step(before, expected_queue, cache.queue_offsets, 5 + i, model.cycle,
                                               kernel_size, cache.weights, cache.gterm, local[i], gumbel[i], 1.25)
        reference.wavenet_push(expected_queue, pushed, cache.queue_offsets, 5 + i, model.cycle, kernel_size)
        expected.append(drawn)
    assert (codes == torch.stack(expected)).float().mean() >= 0.999
    torch.testing.assert_close(queue, expected_queue, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype,bound", [(torch.float16, 0.98), (torch.bfloat16, 0.9)])
@pytest.mark.parametrize("persistent", [False, True])
def test_wavenet_16_bit_draws_agree_with_fp32_on_gpu(dtype, bound, persistent):
    """Teacher-forced draws in fp16/bf16 (per-step and persistent kernels) equal the fp32 codes
    at >= 98% / 90% of 1000 x 4 steps (asserted tolerances), and free-running 16-bit generation
    runs with both kernels."""
    from fastgen.models import WaveNet
    from fastgen.sampling.audio import forced_draws
    torch.manual_seed(0)
    model = WaveNet(layers=10, cycle=5, residual_channels=64, skip_channels=128, quantization=256).cuda().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))                 # sharper logits than at initialisation
    codes = model.generate(1000, 4, generator=torch.Generator().manual_seed(1), return_codes=True)
    same = forced_draws(model, codes, generator=torch.Generator().manual_seed(1), dtype=dtype, persistent=persistent)
    assert (same == codes).float().mean() >= bound
    free = model.generate(300, 4, generator=torch.Generator().manual_seed(1), return_codes=True, dtype=dtype,
                          persistent=persistent)
    assert free.min() >= 0 and free.max() < 256 and free.unique().numel() > 10


def test_wavenet_persistent_generation_matches_per_step_on_gpu():
    """generate on CUDA: persistent (default at batch 3) == per-step == per-step as a CUDA graph."""
    from fastgen.models import WaveNet
    torch.manual_seed(0)
    model = WaveNet(layers=10, cycle=5, residual_channels=32, skip_channels=64, quantization=256).cuda().eval()
    run = lambda **kw: model.generate(700, 3, generator=torch.Generator().manual_seed(2), return_codes=True, **kw)
    persistent = run()
    assert torch.equal(persistent, run(persistent=False))
    assert torch.equal(persistent, run(persistent=False, cuda_graph=True))
    assert torch.equal(persistent, run(persistent=True, cuda_graph=True))


def test_diffusion_fused_step_and_cuda_graph_loop_on_gpu():
    from fastgen.ops.diffusion_step import diffusion_step
    from fastgen.sampling import diffusion
    x, out, noise = (torch.randn(64, 3, 64, 64, device="cuda") for _ in range(3))
    coefficients = diffusion.ddpm_coefficients(0.4, 0.7)
    torch.testing.assert_close(diffusion_step(x, out, coefficients, noise=noise),
                               diffusion_step(x, out, coefficients, noise=noise, backend="reference"),
                               rtol=1e-5, atol=1e-5)
    den = lambda x, t: 0.1 * x
    eager = diffusion.sample(den, (8, 3, 16, 16), "ddpm", 20, seed=3)
    graphed = diffusion.sample(den, (8, 3, 16, 16), "ddpm", 20, seed=3, cuda_graph=True)
    torch.testing.assert_close(graphed, eager)


@pytest.mark.parametrize("name", ["heun", "dpmpp2m", "langevin", "pc_ve_predictor", "pf_ode", "pc_vp_corrector",
                                  "pc_ve_corrector_philox"])
def test_diffusion_new_fused_steps_compiled_on_gpu(name):
    from fastgen.ops.diffusion_step import diffusion_step, score_noise_norms
    from fastgen.sampling import diffusion
    g = torch.Generator().manual_seed(0)
    x, out, noise, aux = (torch.randn(64, 3, 64, 64, generator=g).cuda() for _ in range(4))
    if name.endswith("corrector") or name.endswith("philox"):
        kw = dict(noise=noise) if not name.endswith("philox") else dict(seed=5, offset=123)
        s0, s1, prediction = (1.0, 2.0, "score") if "ve" in name else (0.6, 0.8, "eps")
        got = diffusion.langevin_corrector_step(x, out, s0, s1, prediction, 0.16, **kw)
        if "philox" in name:      # the reference gets the very z the kernel draws (y = z)
            noise = diffusion_step(torch.zeros_like(x), out, (1, 1, 0, 0, 0, 1.0), "x0", seed=5, offset=123)
            torch.testing.assert_close(score_noise_norms(out, seed=5, offset=123)[:, 1], noise.flatten(1).norm(dim=1),
                                       rtol=1e-5, atol=1e-5)
        expected = diffusion.langevin_corrector_step(x, out, s0, s1, prediction, 0.16, noise=noise,
                                                     backend="reference")
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        return
    coefficients, kw = {
        "heun": (diffusion.heun_correction_coefficients(2.0, 1.0), dict(prediction="x0", aux=aux, keep=(1.0, 0.5))),
        "dpmpp2m": (diffusion.dpmpp2m_coefficients(0.3, 0.5, 0.2).coefficients,
                    dict(prediction="v", aux=aux, keep=(1.0, 0.0), clip=True)),
        "langevin": (diffusion.langevin_coefficients(0.01, 0.5), dict(prediction="score", noise=noise)),
        "pc_ve_predictor": (diffusion.ve_predictor_coefficients(3.0, 2.0), dict(prediction="score", noise=noise)),
        "pf_ode": (diffusion.pf_ode_coefficients(3.0, 2.0), dict(prediction="score")),
    }[name]
    got = diffusion_step(x, out, coefficients, **kw)
    expected = diffusion_step(x, out, coefficients, backend="reference", **kw)
    for a, b in zip(got if isinstance(got, tuple) else [got], expected if isinstance(expected, tuple) else [expected]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", ["heun", "dpmpp2m", "pc_ve", "pc_vp", "sgld"])
def test_diffusion_cuda_graph_loop_beyond_ddim_on_gpu(sampler):
    from fastgen.sampling import diffusion
    if sampler == "pc_ve":
        den = lambda x, s: -x / (0.25 + s.view(-1, 1, 1, 1) ** 2)
    elif sampler == "sgld":
        den = lambda x: -x / 0.25
    else:
        den = lambda x, t: 0.1 * x
    eager = diffusion.sample(den, (8, 3, 16, 16), sampler, 6, seed=3)
    graphed = diffusion.sample(den, (8, 3, 16, 16), sampler, 6, seed=3, cuda_graph=True)
    replayed = diffusion.sample(den, (8, 3, 16, 16), sampler, 6, seed=3, cuda_graph=True)
    assert torch.isfinite(eager).all()
    torch.testing.assert_close(graphed, eager)
    torch.testing.assert_close(replayed, eager)


def test_gated_pixelcnn_cuda_graph_sampling_matches_eager_on_gpu():
    """One CUDA graph (the fused step's loop, the cache built inside it) serves requests with new
    conditioning tensors: each replay draws what the eager sampler draws for its labels."""
    from fastgen.sampling.graphs import GRAPHS
    torch.manual_seed(0)
    model = GatedPixelCNN((1, 8, 8), levels=64, channels=32, layers=3, num_classes=4).cuda().eval()
    captures = GRAPHS.captures
    for labels in ([0, 1, 2, 3], [0, 1, 2, 3], [3, 3, 1, 0]):      # capture, replay, replay with new labels
        cond = torch.tensor(labels, device="cuda")
        eager = sample(model, 4, cond, generator=torch.Generator().manual_seed(3))
        graphed = sample(model, 4, cond.clone(), generator=torch.Generator().manual_seed(3), cuda_graph=True)
        assert torch.equal(eager, graphed)
    assert GRAPHS.captures == captures + 1


def test_pixelcnnpp_layer_cache_logits_match_full_forward_on_gpu():
    """Teacher forcing: the cache (fused resnet kernels on CUDA) fed a fixed image gives, at every
    pixel and channel, the log-probabilities of the full forward (cuDNN) on that image."""
    from fastgen.models import PixelCNNpp
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        torch.manual_seed(0)
        model = PixelCNNpp((3, 8, 8), levels=256, channels=32, nr_resnet=2, nr_mix=5, num_classes=4).cuda().eval()
        cond = torch.arange(4, device="cuda")
        x = torch.randint(256, (4, 3, 8, 8), device="cuda")
        with torch.no_grad():
            full = model(x, cond)                                   # [B, levels, C, H, W]
            cache = model.incremental(torch.zeros_like(x), cond)
            for r in range(8):
                cache.begin_row(r)
                for c in range(8):
                    first = cache.logits(r, c)                      # nothing of pixel (r, c) written
                    torch.testing.assert_close(first[:, :, 0], full[:, :, 0, r, c], rtol=1e-4, atol=1e-4)
                    cache.write(r, c, x[:, :, r, c])
                    torch.testing.assert_close(cache.logits(r, c), full[:, :, :, r, c], rtol=1e-4, atol=1e-4)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def test_pixelcnnpp_layer_cache_sampler_matches_naive_on_gpu():
    from fastgen.models import PixelCNNpp
    torch.backends.cudnn.allow_tf32 = False          # exact fp32 on both paths
    try:
        torch.manual_seed(0)
        model = PixelCNNpp((3, 8, 8), levels=256, channels=32, nr_resnet=2, nr_mix=5, num_classes=4).cuda().eval()
        cond = torch.arange(4, device="cuda")
        naive = sample(model, 4, cond, "naive", generator=torch.Generator().manual_seed(1))
        fast = sample(model, 4, cond, "fast", generator=torch.Generator().manual_seed(1))
        _assert_most_images_identical(naive, fast)
    finally:
        torch.backends.cudnn.allow_tf32 = True


def test_pixelcnnpp_cuda_graph_sampling_matches_eager_on_gpu():
    """Without a fused step, cuda_graph=True captures every op of the per-layer caches."""
    from fastgen.models import PixelCNNpp
    from fastgen.sampling import sample
    torch.manual_seed(0)
    model = PixelCNNpp((3, 8, 8), levels=16, channels=16, nr_resnet=1, nr_mix=3).cuda().eval()
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        eager = sample(model, 4, method="fast", generator=torch.Generator().manual_seed(2))
        graphed = sample(model, 4, method="fast", generator=torch.Generator().manual_seed(2), cuda_graph=True)
        again = sample(model, 4, method="fast", generator=torch.Generator().manual_seed(2), cuda_graph=True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
    assert torch.equal(eager, graphed) and torch.equal(graphed, again)


def test_sampling_kernels_take_the_direct_launch():
    """The diffusion step, its norms and the Gated PixelCNN step launch their compiled kernels
    directly after the first call (kernels/_launch.py) -- and the first direct launch agreed."""
    from fastgen.kernels import _launch
    from fastgen.kernels.diffusion_step import diffusion_step_kernel, score_noise_norms_kernel
    from fastgen.kernels.gated_pixel_step import gated_pixel_step_kernel
    from fastgen.sampling import diffusion
    torch.manual_seed(0)
    x, out = torch.randn(4, 3, 16, 16, device="cuda"), torch.randn(4, 3, 16, 16, device="cuda")
    for step in range(3):   # new coefficients and Philox offsets every step: one key
        diffusion.langevin_corrector_step(x, out, 1.0, 2.0 + step, "score", 0.16, seed=3, offset=step * x.numel())
    model = GatedPixelCNN((1, 6, 6), levels=16, channels=16, layers=2).cuda().eval()
    sample(model, 2, method="fast", generator=torch.Generator().manual_seed(0))
    from fastgen.kernels.pixelcnnpp_resnet import resnet_conv1_kernel, resnet_conv2_gate_kernel
    from fastgen.models import PixelCNNpp
    pp = PixelCNNpp((1, 4, 4), levels=16, channels=16, nr_resnet=1, nr_mix=2).cuda().eval()
    sample(pp, 2, method="fast", generator=torch.Generator().manual_seed(0))
    for kernel in (diffusion_step_kernel, score_noise_norms_kernel, gated_pixel_step_kernel, resnet_conv1_kernel,
                   resnet_conv2_gate_kernel):
        assert kernel not in _launch._BROKEN
        assert any(key[0] is kernel for key in _launch._COMPILED), kernel
