"""Launch and sync budgets of every fast sampler's hot loop, counted on the CPU.

A sampler at small batch is bound by how many kernels it launches per generated pixel, audio
sample or diffusion step (~14 us per eager launch from Python, ~1 us per node replayed in a
CUDA graph, on the H100 in shared/anchors).  These tests count, with the Triton kernels forced
and run by the interpreter (``tests/launch_counting.py``), the Triton launches and the other
aten ops each sampler issues, and the host-device synchronisations inside its loop, and hold
each to a budget: a change that adds launches or syncs to a hot loop fails here.

The budgets are today's counts, rounded up a little (where the count depends on a model's
size, at the size used here).  Tighten them when a sampler gets leaner; never loosen one
without saying why in the commit.  Loops are measured *marginally* -- the counts of a run
twice as long minus those of a run as long, so setup work is not charged to the loop."""
import dataclasses

import pytest
import torch

from fastgen.models import GatedPixelCNN, PixelCNNpp, WaveNet
from fastgen.sampling import diffusion, sample
from launch_counting import count_launches


@dataclasses.dataclass
class Budget:
    triton: float       # Triton launches per item
    ops: float          # other aten ops per item (each a launch or an allocation on a GPU)
    syncs: float = 0.0  # host syncs per item inside the loop


BUDGETS = {
    # per pixel, grey 2x28 (rows as wide as the 28x28), 3 layers of 16 channels, batch 1:
    # the fused step (1) and the row's vertical stacks (1 launch per row = 1/28); ops: only the
    # sample's setup (33: noise, weight packing, buffers), none per pixel or row -- the step draws
    # into the image, its state is ping-ponged (was 1.375 + 4.3 ops at 8x8).  At 15 layers x 128
    # channels, 28x28, batch 1: 784 + 28 launches and 69 setup ops, 1.036 + 0.088 = 1.12 per
    # pixel in total (from 1.54 + 4.94; counted with the kernels recorded instead of run)
    "gated_fused": Budget(triton=1.036, ops=0.6),
    # per pixel, grey 4x4, 16 channels, nr_resnet 1, the whole sample() call (setup included):
    # 16.1 in all (22.1 before the one-launch ul step and the head in the draw; 76 before the
    # fused draw).  Triton 7.25: 4 one-launch GatedResnet steps of the ul stream (a position's
    # chain: the cache's docstring) + 2.25 for the u rows' steps (two launches each) + 1
    # head-and-draw of every colour channel.  Ops 8.88: per pixel the first layer's convs and the lower levels'
    # stride-2 convs / deconvs (2.69), their copies (1.69), add (0.56); per sample (amortised over
    # only 16 pixels here) the weight packing, the noise, the level table and one zeroed buffer
    # for every map.  At the size (3x8x8, 160 channels, nr_resnet 5, nr_mix 10, 256
    # levels, batch 1; the kernels recorded with observe_launches(execute=False), not run):
    # 20.125 + 7.66 = 27.8 per pixel, the loop alone 20.125 + 4.64 = 24.8 (was 34.5 + 9.6 and
    # 34.5 + 6.6 = 41.1): ul steps 14.375, u rows 4.75, the draw 1.
    "pixelcnnpp": Budget(triton=7.25, ops=8.9),
    # per audio sample, the per-step kernel (and an empty_like per sample)
    "wavenet_per_step": Budget(triton=1.0, ops=0.0),
    # per block of 256 samples (the persistent kernel's block)
    "wavenet_persistent_per_block": Budget(triton=1.0, ops=25.0),
    # per diffusion step, with a denoiser that launches nothing (B 4, 3x8x8, seed= noise), counted
    # marginally (20 steps minus 10): the fused step's one launch and no other op -- each step
    # writes into the loop's ping-pong buffers (allocated once per run) and passes the denoiser a
    # row of one [steps, B] timestep table made before the loop (was 1 launch + 3 ops per step:
    # the step's two output allocations and a torch.full for t).  The same for ddpm, euler,
    # pf_ode, sgld and langevin (at one sigma: 1 + 2 ops before).
    "ddim": Budget(triton=1.0, ops=0.0),
    "dpmpp2m": Budget(triton=1.0, ops=0.0),
    "ddpm": Budget(triton=1.0, ops=0.0),
    "euler": Budget(triton=1.0, ops=0.0),
    "pf_ode": Budget(triton=1.0, ops=0.0),
    "sgld": Budget(triton=1.0, ops=0.0),
    "langevin": Budget(triton=1.0, ops=0.0),
    # predictor-corrector, one corrector step per level (the default): the predictor's fused step
    # (1) and the corrector's three launches -- the per-sample norms, its [B, 7] step sizes from
    # them (one small kernel, written into a workspace the loop allocates once per run) and its
    # fused step -- and no other op (was 3 launches + 17 ops for pc_ve, + 18 for pc_vp: the rows
    # built by ~15 small torch ops, the norms' sum / sqrt and their allocation)
    "pc_ve": Budget(triton=4.0, ops=0.0),
    "pc_vp": Budget(triton=4.0, ops=0.0),
    # heun: two denoiser calls per step, one launch after each, no other op (was 2 + 5)
    "heun": Budget(triton=2.0, ops=0.0),
    # classifier-free guidance (cond and uncond [4] each, w = 2): one more op per denoiser call,
    # the [x; x] the guided call takes -- t's rows are already [t; t] and [cond; uncond] is
    # joined once per run (was 3 cats per call on top of the 3 ops above)
    "ddim_guided": Budget(triton=1.0, ops=1.0),
    "dpmpp2m_guided": Budget(triton=1.0, ops=1.0),
}


def _within(name, measured_triton, measured_ops, measured_syncs):
    budget = BUDGETS[name]
    assert measured_syncs <= budget.syncs, f"{name}: {measured_syncs} host syncs per item in the loop"
    assert measured_triton <= budget.triton, f"{name}: {measured_triton} Triton launches per item > {budget.triton}"
    assert measured_ops <= budget.ops, f"{name}: {measured_ops} other ops per item > {budget.ops}"


@pytest.fixture
def triton_backend(monkeypatch):
    monkeypatch.setenv("FASTGEN_BACKEND", "triton")


def _every_kernel_through_the_entry_point(counts):
    assert counts.entry_point == counts.triton, "a kernel launched without fastgen.kernels._launch.launch"


def test_gated_pixelcnn_fused_sampler(triton_backend):
    """No warm-up: nothing in the fused path compiles or tunes under the interpreter, and a
    first-call cost would only add to the count.  Issue 15: at most 2 launches per pixel."""
    torch.manual_seed(0)
    model = GatedPixelCNN((1, 2, 28), levels=16, channels=16, layers=3).eval()
    with count_launches() as counts:
        sample(model, 1, generator=torch.Generator().manual_seed(0))
    _every_kernel_through_the_entry_point(counts)
    _within("gated_fused", *counts.per(2 * 28))
    assert sum(counts.per(2 * 28)[:2]) <= 2.0


def test_pixelcnnpp_cached_sampler(triton_backend):
    torch.manual_seed(0)
    model = PixelCNNpp((1, 4, 4), levels=16, channels=16, nr_resnet=1, nr_mix=2).eval()
    with count_launches() as counts:
        sample(model, 1, generator=torch.Generator().manual_seed(0))
    _every_kernel_through_the_entry_point(counts)
    _within("pixelcnnpp", *counts.per(4 * 4))


def _marginal(run, short, long):
    """Counts per item of the extra ``long - short`` items (setup cancels out)."""
    with count_launches() as a:
        run(short)
    with count_launches() as b:
        run(long)
    _every_kernel_through_the_entry_point(b)
    extra = long - short
    return (b.triton - a.triton) / extra, (b.ops - a.ops) / extra, (b.syncs - a.syncs) / extra


@pytest.mark.parametrize("persistent", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["per_step", "persistent"])
def test_wavenet_fused_generation(triton_backend, persistent):
    torch.manual_seed(0)
    model = WaveNet(layers=2, cycle=2, residual_channels=16, skip_channels=16, quantization=16).eval()

    def run(n):
        model.generate(n, 2, generator=torch.Generator().manual_seed(0), persistent=persistent)
    if persistent:      # per block of 256 samples
        triton, ops, syncs = (256 * v for v in _marginal(run, 256, 512))
        _within("wavenet_persistent_per_block", triton, ops, syncs)
    else:
        _within("wavenet_per_step", *_marginal(run, 20, 40))


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m", "ddpm", "euler", "heun", "pf_ode", "sgld", "langevin",
                                     "pc_ve", "pc_vp", "ddim_guided", "dpmpp2m_guided"])
def test_diffusion_step_loop(sampler):
    eps = torch.randn(4, 3, 8, 8)
    denoiser = (lambda x: eps) if sampler == "sgld" else (lambda x, t: eps)
    kw = dict(sigmas=[1.0]) if sampler == "langevin" else {}     # langevin: ``steps`` steps at each sigma
    if sampler.endswith("_guided"):
        eps, denoiser = torch.randn(8, 3, 8, 8), lambda x, t, cond: eps
        kw = dict(guidance=2.0, cond=torch.zeros(4), uncond=torch.ones(4))

    def run(steps):
        diffusion.sample(denoiser, (4, 3, 8, 8), sampler=sampler.replace("_guided", ""), steps=steps, seed=0,
                         backend="triton", device="cpu", **kw)
    _within(sampler, *_marginal(run, 10, 20))


def test_counter_sees_launches_ops_and_syncs():
    """The counter itself: a kernel launch, ops and a host sync are each counted."""
    from fastgen import ops
    x, w = torch.randn(1, 2, 4, 4), torch.randn(2, 2, 3, 3)
    ops.masked_conv2d(x, w, backend="triton")            # first call: builds and caches the taps
    with count_launches() as counts:
        y = ops.masked_conv2d(x, w, backend="triton")
        y.sum().item()
    assert counts.triton >= 1 and counts.entry_point == counts.triton
    assert counts.ops >= 1 and counts.syncs == 1
