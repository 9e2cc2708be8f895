"""WaveNet: causality and receptive field, naive == fast == streamed generation, conditioning,
training, audio I/O and the sample command."""
import pytest
import torch

from fastgen import cli
from fastgen.data import WavFolder, load_wav, save_wav, synthetic_audio
from fastgen.models import WaveNet
from fastgen.nn.functional import mu_law_decode, mu_law_encode

CONFIGS = {
    "k2-mulaw": dict(layers=6, cycle=3, residual_channels=8, skip_channels=16, quantization=32),
    "k3-local-global": dict(layers=5, cycle=3, residual_channels=8, skip_channels=16, quantization=16,
                            kernel_size=3, local_channels=4, hop=5, global_classes=3),
    "k2-mol": dict(layers=4, cycle=2, residual_channels=8, skip_channels=16, quantization=32, output="mol", nr_mix=3),
}


def _model(name):
    torch.manual_seed(0)
    model = WaveNet(**CONFIGS[name]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _cond(model, batch, frames=10):
    local = torch.randn(batch, model.local_channels, frames) if model.local_channels else None
    gc = torch.arange(batch) % model.global_classes if model.global_classes else None
    return local, gc


@pytest.mark.parametrize("name", CONFIGS)
def test_causality_and_receptive_field(name):
    model = _model(name)
    local, gc = _cond(model, 1)
    T, t = 45, 12
    x = torch.randint(model.quantization, (1, T))
    base = model(x, local, gc)
    x1 = x.clone()
    x1[0, t] = (x1[0, t] + 5) % model.quantization
    changed = ((model(x1, local, gc) - base).abs().amax(dim=1)[0] > 1e-6).nonzero().flatten()
    rf = model.receptive_field
    assert changed.min() == t + 1                 # logits at t predict x_t: they must not see it
    assert changed.max() == min(T - 1, t + rf)   # and is seen by exactly the next receptive_field steps


@pytest.mark.parametrize("name", CONFIGS)
def test_fast_naive_and_stream_generate_the_same_codes(name):
    model = _model(name)
    local, gc = _cond(model, 2)
    n = 37
    naive = model.generate(n, 2, local, gc, "naive", torch.Generator().manual_seed(3), 0.9, return_codes=True)
    fast = model.generate(n, 2, local, gc, "fast", torch.Generator().manual_seed(3), 0.9, return_codes=True)
    pieces = list(local.split([1, 4, 2, 3], dim=2)) if local is not None else None    # conditioning in pieces
    chunks = list(model.stream(n, 2, pieces, gc, chunk=6, generator=torch.Generator().manual_seed(3),
                               temperature=0.9, return_codes=True))
    assert torch.equal(naive, fast)
    assert [c.shape[1] for c in chunks] == [6, 6, 6, 6, 6, 6, 1]
    assert torch.equal(torch.cat(chunks, dim=1), fast)
    assert naive.unique().numel() > 3


def test_generate_returns_decoded_audio():
    model = _model("k2-mulaw")
    audio = model.generate(20, 3, generator=torch.Generator().manual_seed(0))
    assert audio.shape == (3, 20) and audio.abs().max() <= 1.0
    codes = model.generate(20, 3, generator=torch.Generator().manual_seed(0), return_codes=True)
    torch.testing.assert_close(audio, mu_law_decode(codes, 32))


def test_mu_law_round_trip():
    x = torch.linspace(-1, 1, 1001)
    codes = mu_law_encode(x, 256)
    assert codes.min() == 0 and codes.max() == 255
    assert (mu_law_decode(codes, 256) - x).abs().max() < 0.022   # half a step at full scale
    assert torch.equal(mu_law_encode(mu_law_decode(codes, 256), 256), codes)


def test_mol_output_is_normalized():
    model = _model("k2-mol")
    log_p = model(torch.randint(32, (2, 15)))
    torch.testing.assert_close(log_p.logsumexp(dim=1), torch.zeros(2, 15), atol=1e-5, rtol=0)


def test_training_on_synthetic_audio_reduces_loss():
    torch.manual_seed(0)
    audio = synthetic_audio(8, 400)
    model = WaveNet(layers=4, cycle=4, residual_channels=16, skip_channels=32, quantization=64)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model.loss(audio).item()
    for _ in range(40):
        loss = model.loss(audio)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 1.0


def test_bad_input_errors():
    model = _model("k3-local-global")
    local, gc = _cond(model, 2)
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        model.generate(0, 2, local, gc)
    with pytest.raises(ValueError, match=r"local conditioning must have shape \[2, 4, frames\]"):
        model.generate(10, 2, torch.randn(2, 3, 10), gc)
    with pytest.raises(ValueError, match="fewer than the 60 needed"):
        model.generate(60, 2, local, gc)
    with pytest.raises(ValueError, match="global_cond must be given"):
        model.generate(10, 2, local, None)
    with pytest.raises(ValueError, match=r"global_cond ids must lie in \[0, 3\)"):
        model.generate(10, 2, local, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="local conditioning ran out"):
        list(model.stream(30, 2, [local[:, :, :2]], gc, chunk=4))
    with pytest.raises(ValueError, match="local conditioning must be given"):
        _model("k2-mulaw").generate(10, 1, torch.randn(1, 4, 3))
    with pytest.raises(ValueError, match="audio must be a float tensor"):
        _model("k2-mulaw").loss(torch.zeros(2, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="output must be"):
        WaveNet(output="wav")


def test_wav_round_trip_and_folder(tmp_path):
    clips = synthetic_audio(2, 800, seed=1)
    assert clips.abs().max() <= 0.8 + 1e-6
    save_wav(tmp_path / "a.wav", clips[0], 8000)
    save_wav(tmp_path / "b.wav", clips, 8000)                    # two channels
    audio, rate = load_wav(tmp_path / "a.wav")
    assert rate == 8000 and audio.shape == (800,)
    assert (audio - clips[0]).abs().max() < 1e-4
    stereo, _ = load_wav(tmp_path / "b.wav")
    assert stereo.shape == (2, 800)
    data = WavFolder(tmp_path, segment=300)
    assert len(data) == 2 and data[0].shape == (300,)


def test_sample_command_writes_a_wav(tmp_path, capsys):
    model = WaveNet(layers=3, cycle=3, residual_channels=8, skip_channels=8, quantization=16)
    model.save(tmp_path / "w.pt", sample_rate=4000)
    out = tmp_path / "out.wav"
    assert cli.main(["sample", "wavenet", "--checkpoint", str(tmp_path / "w.pt"), "--seconds", "0.01",
                     "--out", str(out), "--device", "cpu"]) == 0
    audio, rate = load_wav(out)
    assert rate == 4000 and audio.shape == (40,)
    assert "samples/s" in capsys.readouterr().out


def test_fused_wavenet_step_triton_matches_reference():
    from fastgen.ops.sampling_steps import wavenet_step
    torch.manual_seed(0)
    model = WaveNet(layers=4, cycle=2, residual_channels=16, skip_channels=32, quantization=300,
                    kernel_size=3, local_channels=16, hop=4, global_classes=2).eval()
    B = 3
    cache = model.incremental(B, torch.tensor([0, 1, 1]))
    cache.queue.normal_()                                            # a mid-sequence state
    prev = torch.randint(300, (B,))
    local_t = torch.randn(B, 16)
    gumbel = -torch.log(-torch.log(torch.rand(B, 2, 300)))[:, 0]    # a strided view
    results = {}
    for backend in ("reference", "triton"):
        queue, codes = cache.queue.clone(), torch.full((B,), -1)
        wavenet_step(prev, codes, queue, cache.queue_offsets, cache.weights, cache.gterm, local_t, gumbel,
                     torch.empty(B, 32), 5, model.cycle, model.kernel_size, 1 / 0.8, backend=backend)
        results[backend] = (codes, queue)
    assert torch.equal(results["triton"][0], results["reference"][0])
    torch.testing.assert_close(results["triton"][1], results["reference"][1], rtol=1e-6, atol=1e-6)
    assert not torch.equal(results["reference"][1], cache.queue)     # the step pushed into the queues


@pytest.mark.parametrize("kernel_size,conditioned", [(2, False), (3, True)])
def test_generation_with_fused_triton_step_matches_naive(monkeypatch, kernel_size, conditioned):
    monkeypatch.setenv("FASTGEN_BACKEND", "triton")
    torch.manual_seed(0)
    model = WaveNet(layers=3, cycle=2, residual_channels=16, skip_channels=16, quantization=40,
                    kernel_size=kernel_size, local_channels=16 if conditioned else None, hop=3,
                    global_classes=2 if conditioned else None).eval()
    local = torch.randn(2, 16, 5) if conditioned else None
    gc = torch.tensor([1, 0]) if conditioned else None
    naive = model.generate(13, 2, local, gc, "naive", torch.Generator().manual_seed(2), return_codes=True)
    fast = model.generate(13, 2, local, gc, "fast", torch.Generator().manual_seed(2), return_codes=True)
    assert torch.equal(naive, fast)


@pytest.mark.parametrize("conditioned", [False, True])
def test_block_generation_matches_step_by_step(monkeypatch, conditioned):
    """The block path (static buffers; what a CUDA graph replays on a GPU) draws the same codes."""
    from fastgen.models.wavenet import _FusedQueueCache
    torch.manual_seed(0)
    model = WaveNet(layers=3, cycle=2, residual_channels=8, skip_channels=8, quantization=16,
                    local_channels=4 if conditioned else None, hop=10,
                    global_classes=2 if conditioned else None).eval()
    local = torch.randn(2, 4, 31) if conditioned else None
    gc = torch.tensor([0, 1]) if conditioned else None
    stepwise = model.generate(300, 2, local, gc, "fast", torch.Generator().manual_seed(5), return_codes=True)
    monkeypatch.setattr(_FusedQueueCache, "blocks", True)
    blocked = model.generate(300, 2, local, gc, "fast", torch.Generator().manual_seed(5), return_codes=True)
    assert torch.equal(blocked, stepwise)
    naive = model.generate(300, 2, local, gc, "naive", torch.Generator().manual_seed(5), return_codes=True)
    assert torch.equal(naive, stepwise)


def test_eager_queue_baseline_block_path_matches(monkeypatch):
    """The benchmark's CUDA-graph baseline (eager queue step behind draw_at) draws the same codes."""
    from fastgen.bench import EagerQueueDraw
    torch.manual_seed(0)
    model = WaveNet(layers=3, cycle=2, residual_channels=8, skip_channels=8, quantization=16).eval()
    reference = model.generate(300, 2, generator=torch.Generator().manual_seed(4), return_codes=True)

    def baseline(batch, global_cond=None):
        cache = EagerQueueDraw(model, batch, global_cond)
        cache.blocks = True                       # run the block path eagerly on the CPU
        return cache

    monkeypatch.setattr(model, "incremental", baseline)
    blocked = model.generate(300, 2, generator=torch.Generator().manual_seed(4), return_codes=True)
    assert torch.equal(blocked, reference)
