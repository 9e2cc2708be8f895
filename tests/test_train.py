"""fastgen train: every registered model round-trips train -> checkpoint -> sample at tiny
sizes; resume after an interruption is the uninterrupted run bit for bit; a crash while writing
leaves the last checkpoint intact; two processes under torchrun (gloo, CPU) train to the
parameters of one process with the same global batch and sample the same images."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fastgen import cli
from fastgen.train import NOT_TRAINABLE, REGISTRY, TrainOptions, UsageError, train
from fastgen.train import checkpoint as ckpt_io
from fastgen.train.generate import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {name: json.dumps(spec.tiny) for name, spec in REGISTRY.items()}
SLOW = {"stylegan2", "pixelcnnpp"}       # the slowest round trips (still seconds)


def _data(name):
    return {"image": "digits", "audio": "audio-synthetic", "video": "moving-digits",
            "density": "density:u1"}[REGISTRY[name].data]


def _train(name, out, steps=2, *extra):
    argv = ["train", name, "--data", _data(name), "--steps", str(steps), "--batch", "4", "--out", str(out),
            "--config", TINY[name], "--device", "cpu", "--no-progress", "--segment", "64", *extra]
    assert cli.main(argv) == 0


def _weights(path):
    from safetensors.torch import load_file
    return load_file(path)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in REGISTRY])
def test_train_sample_round_trip(name, tmp_path, capsys):
    spec = REGISTRY[name]
    out = tmp_path / "run"
    _train(name, out)
    ckpt = ckpt_io.open_checkpoint(str(out), name)
    assert ckpt.step == 2 and ckpt.config["model"] == name and ckpt.config["class"] == spec.target
    assert ckpt.config["train"]["batch"] == 4 and ckpt.config["data"]["kind"] == spec.data
    assert sorted(os.listdir(out)) == sorted(["config.json", "log.jsonl", "model-00000002.safetensors",
                                              "state-00000002.pt"])
    # the checkpoint rebuilds the model with exactly the saved weights
    _, model, info, _ = load_model(str(out), name, torch.device("cpu"))
    saved = _weights(ckpt.path("model"))
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    if spec.data == "image":
        path = tmp_path / "s.png"
        extra = ["--steps", "2"] if name in ("ddpm", "ncsn") else []
        assert cli.main(["sample", name, "--checkpoint", str(out), "--n", "5", "--batch", "2", "--out", str(path),
                         "--device", "cpu", *extra]) == 0
        assert Image.open(path).size[0] > 8
        again = tmp_path / "again.png"
        assert cli.main(["sample", name, "--checkpoint", str(out), "--n", "5", "--batch", "2", "--out", str(again),
                         "--device", "cpu", *extra]) == 0
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(again)))   # seeded
        assert "images/s" in capsys.readouterr().out
    elif spec.data == "video":
        # a PNG with one row per clip (frames left to right), or an animated GIF of the T frames
        T, _, H, W = info.shape
        for path in (tmp_path / "s.png", tmp_path / "s.gif"):
            assert cli.main(["sample", name, "--checkpoint", str(out), "--n", "3", "--batch", "2",
                             "--out", str(path), "--device", "cpu"]) == 0
        assert Image.open(tmp_path / "s.png").size == (8 * (T * (W + 1) + 1), 8 * (3 * (H + 1) + 1))
        assert Image.open(tmp_path / "s.gif").n_frames == T
        assert "clips/s" in capsys.readouterr().out
    elif spec.data == "density":
        # points [n, 2]: the raw array (.npy), or the target beside their histogram (.png), seeded
        for path in (tmp_path / "q.npy", tmp_path / "again.npy", tmp_path / "q.png"):
            assert cli.main(["sample", name, "--checkpoint", str(out), "--n", "500", "--batch", "200",
                             "--out", str(path), "--device", "cpu"]) == 0
        points = np.load(tmp_path / "q.npy")
        assert points.shape == (500, 2) and points.dtype == np.float32 and np.isfinite(points).all()
        assert np.array_equal(points, np.load(tmp_path / "again.npy"))
        assert Image.open(tmp_path / "q.png").size == (3 * (2 * 128 + 1), 3 * 128)
        assert "samples/s" in capsys.readouterr().out
    else:
        from fastgen.data import load_wav
        path = tmp_path / "s.wav"
        assert cli.main(["sample", name, "--checkpoint", str(out), "--n", "2", "--seconds", "0.001",
                         "--out", str(path), "--device", "cpu"]) == 0
        for i in range(2):
            audio, rate = load_wav(tmp_path / f"s-{i}.wav")
            assert rate == 16000 and audio.shape == (16,)


@pytest.mark.parametrize("name,extra", [
    ("gated-pixelcnn", ()),                                  # deterministic loss
    ("ddpm", ("--ema", "0.9")),                              # noise drawn per step (timesteps, eps) + EMA
    ("glow", ()),                                            # data-dependent ActNorm init, dequantisation noise
    ("ebm", ("--ema", "0.9")),                               # replay buffer of SGLD chains (state-*.pt) + EMA
    ("jem", ()),                                             # the same with labels (cross-entropy)
    # two stages (autoencoder, then prior): interrupted at the boundary, whose step sorts the codebook
    ("vqvae", ("--ema", "0.9", "--config", json.dumps({**REGISTRY["vqvae"].tiny, "prior_start": 2}))),
    # the boundary inside the resumed part
    ("vqvae2", ("--ema", "0.9", "--config", json.dumps({**REGISTRY["vqvae2"].tiny, "prior_start": 3}))),
    # samples drawn by the loss itself; the annealing schedule's step count (a buffer) + EMA
    ("planar-flow", ("--ema", "0.9", "--config", json.dumps({**REGISTRY["planar-flow"].tiny, "anneal_steps": 3}))),
])
def test_resume_after_interruption_is_bit_exact(name, extra, tmp_path):
    _train(name, tmp_path / "whole", 4, "--checkpoint-every", "2", *extra)
    _train(name, tmp_path / "broken", 2, *extra)                      # "interrupted" after step 2
    with pytest.raises(UsageError, match="already holds a checkpoint"):
        train(TrainOptions(name, data=_data(name), steps=4, out=str(tmp_path / "broken"), device="cpu"))
    _train(name, tmp_path / "broken", 4, "--resume", *extra)          # the same options (a --config after TINY)
    whole = ckpt_io.open_checkpoint(str(tmp_path / "whole"))
    resumed = ckpt_io.open_checkpoint(str(tmp_path / "broken"))
    assert whole.step == resumed.step == 4
    for key in ("model",) + (("ema",) if extra else ()):
        a, b = _weights(whole.path(key)), _weights(resumed.path(key))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), key
    sa = torch.load(whole.path("state"), weights_only=True)
    sb = torch.load(resumed.path("state"), weights_only=True)
    for oa, ob in zip(sa["optimizers"], sb["optimizers"]):
        for k in oa["state"]:
            assert all(torch.equal(oa["state"][k][f], ob["state"][k][f]) for f in oa["state"][k])
    assert sa["sampler"] == sb["sampler"]
    assert sa["model_state"].keys() == sb["model_state"].keys()          # e.g. EBM / JEM's replay buffer
    for k, v in sa["model_state"].items():
        assert torch.equal(v, sb["model_state"][k]) if isinstance(v, torch.Tensor) else v == sb["model_state"][k], k
    assert [json.loads(line)["loss"] for line in open(tmp_path / "whole" / "log.jsonl")][-1] == \
        [json.loads(line)["loss"] for line in open(tmp_path / "broken" / "log.jsonl")][-1]


def test_resume_keeps_made_mask_schedule(tmp_path):
    """MADE with several mask sets moves to the next set every step: the position is saved."""
    config = json.dumps({"hidden": [16], "num_masks": 3})
    common = ["train", "made", "--data", "digits", "--batch", "4", "--config", config, "--device", "cpu",
              "--no-progress"]
    assert cli.main(common + ["--steps", "5", "--out", str(tmp_path / "a")]) == 0
    assert cli.main(common + ["--steps", "2", "--out", str(tmp_path / "b")]) == 0
    assert cli.main(common + ["--steps", "5", "--out", str(tmp_path / "b"), "--resume"]) == 0
    a = _weights(ckpt_io.open_checkpoint(str(tmp_path / "a")).path("model"))
    b = _weights(ckpt_io.open_checkpoint(str(tmp_path / "b")).path("model"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_crash_while_writing_leaves_the_last_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _train("gated-pixelcnn", out, 2)
    before = ckpt_io.read_config(str(out))
    real_replace = os.replace

    def crash_on_commit(src, dst):
        if os.path.basename(dst) == "config.json":
            raise KeyboardInterrupt("killed while committing")
        real_replace(src, dst)
    monkeypatch.setattr(ckpt_io.os, "replace", crash_on_commit)
    with pytest.raises(KeyboardInterrupt):
        train(TrainOptions("gated-pixelcnn", steps=4, batch=4, out=str(out), resume=True, device="cpu",
                           progress=False))
    monkeypatch.setattr(ckpt_io.os, "replace", real_replace)
    ckpt = ckpt_io.open_checkpoint(str(out), "gated-pixelcnn")          # still step 2, complete and loadable
    assert ckpt.config == before and ckpt.step == 2
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]
    load_model(str(out), "gated-pixelcnn", torch.device("cpu"))
    _train("gated-pixelcnn", out, 4, "--resume")                       # and resuming from it works
    assert ckpt_io.open_checkpoint(str(out)).step == 4


def test_bad_training_inputs(tmp_path, monkeypatch, capsys):
    def fails(argv, words):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and all(w in err for w in words), err

    fails(["train", "nosuch", "--steps", "1"], ["unknown model 'nosuch'", "gated-pixelcnn"])
    # a zoo model the registry refuses is named with the reason (none at present: a stand-in)
    monkeypatch.setitem(NOT_TRAINABLE, "some-flow", "it has no loss that fastgen train can compute")
    fails(["train", "some-flow", "--steps", "1"], ["cannot be trained", "no loss that fastgen train"])
    fails(["sample", "some_flow", "--checkpoint", str(tmp_path)], ["cannot be trained", "no loss"])
    monkeypatch.delitem(NOT_TRAINABLE, "some-flow")
    # target densities: only the flows fit them, the flows fit nothing else
    fails(["train", "planar-flow", "--data", "density:u9"], ["no such target density", "density:u1, density:u2, "
                                                             "density:u3, density:u4"])
    fails(["train", "radial-flow", "--data", "digits"], ["not to data", "density:u1"])
    fails(["train", "gated-pixelcnn", "--data", "density:u1"], ["target density", "trains on images",
                                                                 "--data digits"])
    fails(["train", "wavenet", "--data", "density:u2"], ["target density", "trains on audio"])
    fails(["train", "planar-flow", "--data", "density:u1", "--config", '{"anneal_steps": -1}'], ["anneal_steps"])
    unlabelled = tmp_path / "unlabelled.npy"
    np.save(unlabelled, np.zeros((8, 8, 8), dtype=np.int64))
    fails(["train", "jem", "--data", str(unlabelled), "--levels", "17", "--steps", "1", "--out", str(tmp_path / "j")],
          ["jem", "no labels"])
    assert cli.main(["train", "ebm", "--config", '{"buffer_size": 2}', "--batch", "4", "--steps", "1",
                     "--device", "cpu", "--no-progress", "--out", str(tmp_path / "e")]) == 2   # found at step 1
    assert "buffer_size 2): give --config a buffer_size of at least --batch" in capsys.readouterr().err
    fails(["train", "gated-pixelcnn", "--data", str(tmp_path / "missing.npy")], ["no such file"])
    fails(["train", "wavenet", "--data", "digits"], ["audio"])
    fails(["train", "gated-pixelcnn", "--config", '{"nosuch": 1}', "--out", str(tmp_path / "x")], ["nosuch"])
    fails(["train", "gated-pixelcnn", "--config", "{not json"], ["JSON"])
    fails(["train", "gated-pixelcnn", "--steps", "0"], ["--steps"])
    fails(["train", "gated-pixelcnn", "--ema", "1.5"], ["--ema"])
    with pytest.raises(UsageError, match="only bf16"):
        train(TrainOptions("gated-pixelcnn", amp="fp16", out=str(tmp_path / "amp"), device="cpu"))
    if not torch.cuda.is_available():
        fails(["train", "gated-pixelcnn", "--device", "cuda"], ["CUDA"])
    out = tmp_path / "run"
    _train("gated-pixelcnn", out, 1)
    capsys.readouterr()
    fails(["train", "gated-pixelcnn", "--steps", "3", "--out", str(out), "--config", '{"channels": 16}',
           "--resume"], ["does not match"])
    fails(["train", "made", "--steps", "3", "--out", str(out), "--resume"], ["holds a gated-pixelcnn"])
    fails(["train", "gated-pixelcnn", "--steps", "3", "--out", str(out), "--batch", "8", "--resume"], ["--batch"])
    fails(["train", "gated-pixelcnn", "--steps", "1", "--out", str(out), "--resume"], ["step 1 already"])
    # a world size that does not divide the global batch: refused before joining the process group
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    fails(["train", "gated-pixelcnn", "--batch", "8", "--steps", "1", "--out", str(tmp_path / "w"),
           "--device", "cpu"], ["--batch 8", "world size 3"])


def test_train_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: digits)" in text and "(default: 500)" in text and "torchrun" in text


def test_amp_and_sample_every(tmp_path):
    out = tmp_path / "run"
    _train("local-transformer", out, 2, "--amp", "bf16", "--sample-every", "1")
    assert sorted(os.listdir(out / "samples")) == ["step-00000001.png", "step-00000002.png"]
    assert ckpt_io.read_config(str(out))["train"]["amp"] == "bf16"


def test_density_flow_lowers_the_kl_to_its_target(tmp_path):
    """Fitting a planar flow to U2 (a sine ridge, Rezende & Mohamed's figure 3) by the reverse KL:
    from about the base N(0, I), ~3 nats off, to a fraction of a nat in 300 small steps (0.44 measured)."""
    out = tmp_path / "u2"
    train(TrainOptions("planar-flow", data="density:u2", steps=300, batch=128, out=str(out), device="cpu",
                       config={"layers": 8}, progress=False, log_every=1))
    kl = [json.loads(line)["nats"] for line in open(out / "log.jsonl")]     # step 1: the initial flow's
    assert len(kl) == 300 and kl[0] > 2.5 and np.mean(kl[-20:]) < 0.6, kl


def test_density_flow_annealing_weights_the_energy_and_reports_the_kl():
    """With anneal_steps T the gradient is that of E_q[log q + beta_t U], beta_t = min(1, 0.01 + t / T),
    while the loss value stays the KL to the target; t is a buffer counted after each step."""
    from fastgen.data.densities import energy, log_normalizer
    from fastgen.train.registry import Batch, DataInfo, StepRNG, attach_data
    spec = REGISTRY["planar-flow"]
    torch.manual_seed(0)
    model = attach_data(spec.make({"dim": 2, "layers": 3, "anneal_steps": 4}), spec,
                        DataInfo("density", (2,), energy="u3"))
    for _ in range(2):
        spec.after_step(model)
    assert int(model.fit_step) == 2 and "fit_step" in model.state_dict()
    loss = spec.loss(model, Batch(torch.arange(64), None), StepRNG(7))
    loss.backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    z, log_q = model.sample_with_log_prob(64, generator=torch.Generator().manual_seed(7))
    u = energy("u3", z)
    beta = 0.01 + 2 / 4
    (log_q + beta * u).mean().backward()
    for g, p in zip(got, model.parameters()):
        torch.testing.assert_close(g, p.grad)
    torch.testing.assert_close(loss.detach(), (log_q + u).mean().detach() + log_normalizer("u3"))
    spec.after_step(model)
    torch.testing.assert_close(spec.log_values(model)["beta"], torch.tensor(beta))


def test_density_flow_samples_during_training_and_refuses_other_targets(tmp_path, capsys):
    out = tmp_path / "run"
    _train("radial-flow", out, 2, "--sample-every", "2")
    assert os.listdir(out / "samples") == ["step-00000002.png"]
    assert Image.open(out / "samples" / "step-00000002.png").size == (3 * (2 * 128 + 1), 3 * 128)
    assert ckpt_io.open_checkpoint(str(out)).data_info.energy == "u1"
    capsys.readouterr()
    argv = ["train", "radial-flow", "--data", "density:u3", "--steps", "4", "--out", str(out), "--resume"]
    assert cli.main(argv) == 2
    assert "fitted to --data density:u1, not --data density:u3" in capsys.readouterr().err
    for bad, words in ((["--out", str(tmp_path / "q.jpg")], [".png or .npy"]),
                       (["--temperature", "0.5"], ["without a temperature"]),
                       (["--label", "1"], ["not class-conditional"])):
        assert cli.main(["sample", "radial-flow", "--checkpoint", str(out), *bad]) == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words), err


@pytest.mark.parametrize("name", ["pixelcnn", "gated-pixelcnn", "sngan", "stylegan2"])
def test_amp_bf16_trains_models_with_fastgen_convs_and_spectral_norm(name, tmp_path):
    """--amp bf16 through the autocast rules of masked_conv2d (the PixelCNNs) and of
    modulated_conv2d / upfirdn2d / bias_act (StyleGAN2), and SNGAN's fp32 spectral norm."""
    _train(name, tmp_path / "run", 2, "--amp", "bf16")
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "run" / "log.jsonl")]
    assert losses and np.isfinite(losses).all(), losses


def _torchrun(*argv, nproc=2, program=("-m", "fastgen")):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           *program, *argv]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_processes_train_and_sample_like_one(tmp_path):
    """torchrun --nproc-per-node 2 (gloo on CPU): DDP with the same global batch gives the
    single-process parameters (fp32 tolerance); distributed sampling writes the same PNG."""
    # class-conditional: its last layer's cond_vertical is never used, which DDP must be told about
    config = json.dumps({**REGISTRY["gated-pixelcnn"].tiny, "num_classes": 10})
    common = ["gated-pixelcnn", "--data", "digits", "--steps", "3", "--batch", "8", "--config", config,
              "--device", "cpu", "--no-progress"]
    _torchrun("train", *common, "--out", str(tmp_path / "two"))
    assert cli.main(["train", *common, "--out", str(tmp_path / "one")]) == 0
    two = ckpt_io.open_checkpoint(str(tmp_path / "two"))
    one = ckpt_io.open_checkpoint(str(tmp_path / "one"))
    assert two.config["train"]["world_size"] == 2
    a, b = _weights(one.path("model")), _weights(two.path("model"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)

    sample = ["sample", "gated-pixelcnn", "--checkpoint", str(tmp_path / "two"), "--num-samples", "7", "--batch", "2",
              "--device", "cpu", "--seed", "3"]
    _torchrun(*sample, "--out", str(tmp_path / "two.png"))
    assert cli.main([*sample, "--out", str(tmp_path / "one.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "one.png")), np.asarray(Image.open(tmp_path / "two.png")))


def test_two_processes_train_a_gan(tmp_path):
    """torchrun --nproc-per-node 2: models with their own train_step (GANs) average gradients
    before each optimizer step and keep one set of parameters and buffers on every rank
    (tests/distributed_train_check.py)."""
    _torchrun(str(tmp_path / "gan"), TINY["dcgan"], program=[os.path.join(ROOT, "tests", "distributed_train_check.py")])
    assert ckpt_io.open_checkpoint(str(tmp_path / "gan")).config["train"]["world_size"] == 2


@pytest.mark.slow
def test_two_processes_train_a_staged_model_like_one(tmp_path):
    """vqvae under torchrun (2 processes, gloo): each stage leaves the other part's parameters
    unused, which DDP finds (find_unused_parameters) and leaves without gradients, so the
    optimizer states and weights match one process across the stage boundary.  The EMA codebook
    (a buffer) is updated from the vectors of both processes' halves of the batch, as one
    process updates it from the whole batch (fastgen.nn.vq)."""
    config = json.dumps({**REGISTRY["vqvae"].tiny, "prior_start": 2})
    common = ["vqvae", "--data", "digits", "--steps", "4", "--batch", "8", "--config", config, "--device", "cpu",
              "--no-progress"]
    _torchrun("train", *common, "--out", str(tmp_path / "two"))
    assert cli.main(["train", *common, "--out", str(tmp_path / "one")]) == 0
    one, two = ckpt_io.open_checkpoint(str(tmp_path / "one")), ckpt_io.open_checkpoint(str(tmp_path / "two"))
    a, b = _weights(one.path("model")), _weights(two.path("model"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    sa = torch.load(one.path("state"), weights_only=True)
    sb = torch.load(two.path("state"), weights_only=True)
    for oa, ob in zip(sa["optimizers"], sb["optimizers"]):         # autoencoder, prior: 2 Adam steps each
        assert oa["state"].keys() == ob["state"].keys()
        assert {int(v["step"]) for v in ob["state"].values()} == {2}


@pytest.mark.slow
def test_two_processes_resume_jem_exactly_and_sample_like_one(tmp_path):
    """jem under torchrun (2 processes, gloo): DDP over a loss whose SGLD takes input gradients,
    one replay buffer replicated on both ranks (each continues chains from its half, both write
    all chains), saved by rank 0.  An interrupted run resumes to the uninterrupted weights and
    buffer bit for bit (a rank whose copy had drifted would resume from rank 0's and differ);
    two processes sample the images of one."""
    common = ["jem", "--data", "digits", "--batch", "8", "--config", TINY["jem"], "--device", "cpu", "--no-progress"]
    _torchrun("train", *common, "--steps", "4", "--checkpoint-every", "2", "--out", str(tmp_path / "whole"))
    _torchrun("train", *common, "--steps", "2", "--out", str(tmp_path / "broken"))
    _torchrun("train", *common, "--steps", "4", "--out", str(tmp_path / "broken"), "--resume")
    whole, resumed = (ckpt_io.open_checkpoint(str(tmp_path / run)) for run in ("whole", "broken"))
    assert whole.config["train"]["world_size"] == 2 and whole.step == resumed.step == 4
    a, b = _weights(whole.path("model")), _weights(resumed.path("model"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    buffers = [torch.load(c.path("state"), weights_only=True)["model_state"]["replay_buffer"] for c in (whole, resumed)]
    assert torch.equal(*buffers)
    sample = ["sample", "jem", "--checkpoint", str(tmp_path / "whole"), "--num-samples", "5", "--batch", "2",
              "--device", "cpu"]
    _torchrun(*sample, "--out", str(tmp_path / "two.png"))
    assert cli.main([*sample, "--out", str(tmp_path / "one.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "one.png")), np.asarray(Image.open(tmp_path / "two.png")))


@pytest.mark.slow
def test_compile_trains_like_eager_without_graph_breaks(tmp_path, monkeypatch):
    """--compile: the training step traces whole (fastgen's ops as registered custom ops with
    their fakes and autograd; value checks skipped while tracing) and trains to the eager
    parameters.  FASTGEN_BACKEND=triton puts the Triton ops (interpreter) into the graph."""
    from torch._dynamo.utils import counters
    counters.clear()
    monkeypatch.setenv("FASTGEN_BACKEND", "triton")
    config = json.loads(TINY["gated-pixelcnn"])
    for name, compiled in (("eager", False), ("compiled", True)):
        train(TrainOptions("gated-pixelcnn", steps=2, batch=4, out=str(tmp_path / name), config=config, device="cpu",
                           progress=False, compile=compiled))
    assert not counters["graph_break"], dict(counters["graph_break"])
    eager = _weights(ckpt_io.open_checkpoint(str(tmp_path / "eager")).path("model"))
    compiled = _weights(ckpt_io.open_checkpoint(str(tmp_path / "compiled")).path("model"))
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow
def test_fsdp_trains_like_one_process_and_resumes_exactly(tmp_path, capsys):
    """torchrun --nproc-per-node 2 --fsdp (FSDP2 over gloo): parameters, gradients and Adam
    states sharded; the whole weights and EMA gathered into the checkpoint equal one process's
    with the same global batch, and a run resumed from a sharded checkpoint is the whole run."""
    common = ["gated-pixelcnn", "--data", "digits", "--batch", "8", "--config", TINY["gated-pixelcnn"],
              "--device", "cpu", "--no-progress", "--ema", "0.9"]
    assert cli.main(["train", *common, "--steps", "3", "--out", str(tmp_path / "one")]) == 0
    _torchrun("train", *common, "--steps", "3", "--fsdp", "--out", str(tmp_path / "whole"))
    _torchrun("train", *common, "--steps", "2", "--fsdp", "--out", str(tmp_path / "broken"))
    _torchrun("train", "gated-pixelcnn", "--data", "digits", "--steps", "3", "--fsdp", "--resume", "--device", "cpu",
              "--no-progress", "--out", str(tmp_path / "broken"))
    one, whole, resumed = (ckpt_io.open_checkpoint(str(tmp_path / d)) for d in ("one", "whole", "broken"))
    assert whole.config["train"]["fsdp"] and whole.config["train"]["world_size"] == 2
    for key in ("model", "ema"):
        a, b, c = _weights(one.path(key)), _weights(whole.path(key)), _weights(resumed.path(key))
        assert a.keys() == b.keys() == c.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
            assert torch.equal(c[k], b[k]), k
    # one process cannot shard, and a sharded run resumes only sharded
    assert cli.main(["train", *common, "--steps", "1", "--fsdp", "--out", str(tmp_path / "x")]) == 2
    assert "torchrun" in capsys.readouterr().err
    assert cli.main(["train", "gated-pixelcnn", "--data", "digits", "--steps", "4", "--resume", "--device", "cpu",
                     "--out", str(tmp_path / "whole")]) == 2
    assert "with --fsdp" in capsys.readouterr().err
