"""fastgen sample, tried as a new user would: every bad input is one line on stderr and exit
code 2 before any sampling; per-subcommand help shows the defaults; --batch/--n > 1 audio
writes one WAV per clip; WaveNet.save files still sample."""
import json

import pytest
import torch

from fastgen import cli
from fastgen.data import load_wav
from fastgen.models import WaveNet
from fastgen.train import REGISTRY, generate


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, data in (("wavenet", "audio-synthetic"), ("gated-pixelcnn", "digits"), ("glow", "digits")):
        assert cli.main(["train", name, "--data", data, "--steps", "1", "--batch", "2", "--segment", "64",
                         "--out", str(root / name), "--config", json.dumps(REGISTRY[name].tiny),
                         "--device", "cpu", "--no-progress"]) == 0
    legacy = WaveNet(layers=2, cycle=2, residual_channels=8, skip_channels=8, quantization=16)
    legacy.save(root / "w.pt", sample_rate=4000)
    return root


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if sampling starts."""
    def refuse(*args, **kwargs):
        raise AssertionError("sampling started before the bad input was reported")
    monkeypatch.setattr(generate, "draw", refuse)


def _fails(capsys, argv, *words):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fastgen sample: error:"), err
    for word in words:
        assert word in err, err


def test_bad_sampling_inputs_fail_before_any_work(runs, tmp_path, capsys, no_work):
    wav = ["sample", "wavenet", "--checkpoint", str(runs / "wavenet"), "--device", "cpu"]
    img = ["sample", "gated-pixelcnn", "--checkpoint", str(runs / "gated-pixelcnn"), "--device", "cpu"]
    _fails(capsys, ["sample", "nosuch", "--checkpoint", str(runs / "wavenet")], "unknown model")
    _fails(capsys, ["sample", "wavenet", "--checkpoint", str(tmp_path / "missing.pt")], "no such file")
    _fails(capsys, ["sample", "wavenet", "--checkpoint", str(runs / "gated-pixelcnn"), "--device", "cpu"],
           "holds a gated-pixelcnn model, not wavenet")
    _fails(capsys, ["sample", "gated-pixelcnn", "--checkpoint", str(runs / "w.pt"), "--device", "cpu"], "is a file")
    _fails(capsys, ["sample", "gated-pixelcnn", "--checkpoint", str(tmp_path), "--device", "cpu"], "no config.json")
    _fails(capsys, wav + ["--out", str(tmp_path / "nowhere" / "a.wav")], "does not exist")
    _fails(capsys, img + ["--out", str(tmp_path / "a.wav")], ".png")
    _fails(capsys, wav + ["--out", str(tmp_path)], "is a folder")
    _fails(capsys, wav + ["--out", str(tmp_path / "a.wav"), "--seconds", "0.00001"], "less than one sample")
    _fails(capsys, wav + ["--out", str(tmp_path / "a.wav"), "--seconds", "0"], "--seconds must be > 0")
    _fails(capsys, wav + ["--out", str(tmp_path / "a.wav"), "--temperature", "0"], "--temperature 0", "> 0")
    _fails(capsys, wav + ["--out", str(tmp_path / "a.wav"), "--temperature", "nan"], "finite")
    _fails(capsys, wav + ["--out", str(tmp_path / "a.wav"), "--speaker", "1"], "no global conditioning")
    _fails(capsys, img + ["--out", str(tmp_path / "a.png"), "--label", "3"], "not class-conditional")
    _fails(capsys, img + ["--out", str(tmp_path / "a.png"), "--seconds", "1"], "draws images")
    _fails(capsys, img + ["--out", str(tmp_path / "a.png"), "--steps", "10"], "no sampler steps")
    _fails(capsys, img + ["--out", str(tmp_path / "a.png"), "--n", "0"], "--n must be >= 1")
    _fails(capsys, ["sample", "glow", "--checkpoint", str(runs / "glow"), "--device", "cpu", "--out",
                    str(tmp_path / "a.png"), "--method", "naive"], "one sampler")
    _fails(capsys, ["sample", "glow", "--checkpoint", str(runs / "glow"), "--device", "cpu", "--out",
                    str(tmp_path / "a.png"), "--temperature", "-1"], ">= 0")
    if not torch.cuda.is_available():
        _fails(capsys, ["sample", "wavenet", "--checkpoint", str(runs / "w.pt"), "--device", "cuda",
                        "--out", str(tmp_path / "a.wav")], "no usable CUDA")
        _fails(capsys, img + ["--out", str(tmp_path / "a.png"), "--cuda-graph"], "needs a CUDA device")
    assert not list(tmp_path.glob("*.wav")) and not list(tmp_path.glob("*.png"))


def test_checkpoint_is_required(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["sample", "wavenet"])
    assert exit_.value.code == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_sample_help_shows_every_option_with_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["sample", "wavenet", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--checkpoint", "--n", "--out", "--batch", "--method", "--cuda-graph", "--temperature",
                   "--seconds", "--speaker", "--seed", "--device"):
        assert option in text
    assert "(default: 0)" in text and "(default: fast)" in text and "one WAV each" in text


def test_batch_writes_one_wav_per_clip(runs, tmp_path, capsys):
    """The old `--batch 3` on a WaveNet.save file: three clips, three files (it used to keep row 0)."""
    out = tmp_path / "out.wav"
    assert cli.main(["sample", "wavenet", "--checkpoint", str(runs / "w.pt"), "--seconds", "0.005", "--batch", "3",
                     "--out", str(out), "--device", "cpu"]) == 0
    clips = [load_wav(tmp_path / f"out-{i}.wav") for i in range(3)]
    assert all(rate == 4000 and audio.shape == (20,) for audio, rate in clips)
    assert not out.exists()
    assert "samples/s" in capsys.readouterr().out
    one = tmp_path / "one.wav"                       # one clip: the file named by --out
    assert cli.main(["sample", "wavenet", "--checkpoint", str(runs / "wavenet"), "--seconds", "0.001",
                     "--out", str(one), "--device", "cpu", "--method", "naive", "--temperature", "0.5"]) == 0
    audio, rate = load_wav(one)
    assert rate == 16000 and audio.shape == (16,)


def test_speaker_of_a_globally_conditioned_wavenet(tmp_path, capsys, no_work):
    model = WaveNet(layers=2, cycle=2, residual_channels=8, skip_channels=8, quantization=16, global_classes=2)
    model.save(tmp_path / "g.pt", sample_rate=4000)
    _fails(capsys, ["sample", "wavenet", "--checkpoint", str(tmp_path / "g.pt"), "--device", "cpu", "--speaker", "2",
                    "--out", str(tmp_path / "a.wav")], "speakers 0..1")
