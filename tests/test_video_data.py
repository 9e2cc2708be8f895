"""Video data for fastgen train: the moving-digits set (each frame exactly one bundled digit,
moving by bounded steps and bouncing off the edges, deterministic), .npy videos and their
errors, the PNG / GIF writers (pixel layout), the video-transformer registry entry (data
layout, fast == naive) and the train -> sample round trip on an .npy file."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fastgen import cli
from fastgen.data import load_digits, load_video_array, moving_digits
from fastgen.data.video import bounce
from fastgen.train import REGISTRY, UsageError
from fastgen.train import data as data_io
from fastgen.train.generate import grid_pixels, save_video_gif, save_video_rows
from fastgen.train.registry import Batch, DataInfo, SampleOptions, StepRNG, merge


@pytest.fixture(scope="module")
def clips():
    return moving_digits("test")


def _corner(frame, digit):
    """The (y, x) where ``digit`` [8, 8] sits on an otherwise blank ``frame``, or None."""
    size = frame.shape[-1]
    for y in range(size - 7):
        for x in range(size - 7):
            pasted = torch.zeros_like(frame)
            pasted[y:y + 8, x:x + 8] = digit
            if torch.equal(pasted, frame):
                return y, x
    return None


def test_bounce_reflects_at_both_ends():
    positions = bounce(torch.tensor([0, 3, 4, 2]), torch.tensor([2, -2, 1, 0]), frames=4, span=4)
    assert positions.tolist() == [[0, 2, 4, 2], [3, 1, 1, 3], [4, 3, 2, 1], [2, 2, 2, 2]]
    assert bounce(torch.tensor([0]), torch.tensor([1]), 3, span=0).tolist() == [[0, 0, 0]]


def test_moving_digits_frames_are_the_digit_moving(clips):
    digits = load_digits("test")
    assert clips.videos.shape == (len(digits.images), 4, 1, 12, 12) and clips.videos.dtype == torch.long
    assert clips.levels == 17 and torch.equal(clips.labels, digits.labels)     # the test split's digits
    assert int(clips.videos.min()) == 0 and int(clips.videos.max()) == 16
    for i in range(0, len(clips.videos), 37):
        corners = [_corner(frame[0], digits.images[i, 0]) for frame in clips.videos[i]]
        assert None not in corners, i                                         # whole digit, nothing else
        steps = np.diff(np.array(corners), axis=0)
        assert np.abs(steps).max() <= 2 and len(set(corners)) > 1, corners  # bounded steps, it moves


def test_moving_digits_is_deterministic_and_configurable(clips):
    assert torch.equal(moving_digits("test").videos, clips.videos)
    assert not torch.equal(moving_digits("test", seed=1).videos, clips.videos)
    small = moving_digits("test", frames=6, size=10, max_speed=1)
    assert small.videos.shape[1:] == (6, 1, 10, 10)
    assert (small.videos.flatten(2).sum(-1) == small.videos[:, :1].flatten(2).sum(-1)).all()   # never cropped
    with pytest.raises(ValueError, match="size must be an int >= 8"):
        moving_digits(size=7)
    with pytest.raises(ValueError, match="frames"):
        moving_digits(frames=0)


def test_load_video_array_layouts_and_errors(tmp_path):
    grey = np.random.default_rng(0).integers(0, 5, (3, 2, 4, 6))
    np.save(tmp_path / "grey.npy", grey)
    data = load_video_array(tmp_path / "grey.npy", levels=5)
    assert data.videos.shape == (3, 2, 1, 4, 6) and np.array_equal(data.videos[:, :, 0].numpy(), grey)
    rgb_last = np.random.default_rng(1).integers(0, 256, (2, 3, 5, 6, 3)).astype(np.uint8)
    np.save(tmp_path / "rgb.npy", rgb_last)
    data = load_video_array(tmp_path / "rgb.npy")
    assert data.videos.shape == (2, 3, 3, 5, 6) and np.array_equal(data.videos.permute(0, 1, 3, 4, 2), rgb_last)
    for name, array, message in (("images.npy", grey[:, 0], "holds images"),
                                 ("float.npy", grey.astype(np.float32), "integer"),
                                 ("range.npy", grey + 5, r"\[0, 5\)"),
                                 ("empty.npy", grey[:0], "at least one video")):
        np.save(tmp_path / name, array)
        with pytest.raises(ValueError, match=message):
            load_video_array(tmp_path / name, levels=5)


def test_train_data_sources_name_the_right_data(tmp_path):
    data = data_io.load("moving-digits", "video")
    assert data.info == DataInfo("video", (4, 1, 12, 12), 17, 10) and data.x.shape[1:] == (4, 1, 12, 12)
    np.save(tmp_path / "v.npy", np.zeros((5, 3, 4, 4), dtype=np.int64))
    data = data_io.load(str(tmp_path / "v.npy"), "video", levels=4)
    assert data.info == DataInfo("video", (3, 1, 4, 4), 4) and data.labels is None
    np.save(tmp_path / "img.npy", np.zeros((5, 4, 4), dtype=np.int64))
    with pytest.raises(UsageError, match="^--data .*img.npy: expected .* videos.*holds images"):
        data_io.load(str(tmp_path / "img.npy"), "video")
    for source, kind, words in (("moving-digits", "image", ["holds videos", "trains on images", "--data digits"]),
                                ("moving-digits", "audio", ["holds videos", "trains on audio"]),
                                ("digits", "video", ["holds images", "trains on videos", "--data moving-digits"]),
                                ("audio-synthetic", "video", ["holds audio", "[N, T, (C,) H, W]"]),
                                (str(tmp_path), "video", ["video models read an .npy file of integer videos"]),
                                (str(tmp_path / "v.npy"), "audio", ["audio models read a folder"]),
                                (str(tmp_path / "nope.npy"), "video", ["no such file", "moving-digits"])):
        with pytest.raises(UsageError) as err:
            data_io.check_source(source, kind)
        assert all(w in str(err.value) for w in words), (source, kind, str(err.value))


def test_video_writers_lay_out_frames(tmp_path):
    videos = torch.randint(0, 17, (3, 4, 1, 5, 6))
    save_video_rows(videos, 17, tmp_path / "rows.png", scale=1)
    rows = np.asarray(Image.open(tmp_path / "rows.png"))
    assert rows.shape == (3 * 6 + 1, 4 * 7 + 1)
    for i in range(3):                                         # clip i is row i, frame t column t
        for t in range(4):
            cell = rows[1 + i * 6:1 + i * 6 + 5, 1 + t * 7:1 + t * 7 + 6]
            expected = np.round((1 - videos[i, t, 0].numpy() / 16) * 255)   # dark ink on white
            assert np.array_equal(cell, expected.astype(np.uint8))
    save_video_gif(videos, 17, tmp_path / "clips.gif", scale=1)
    gif = Image.open(tmp_path / "clips.gif")
    assert gif.n_frames == 4 and gif.info["loop"] == 0
    for t in range(4):                                         # frame t: every clip's frame t in a 2x2 grid
        gif.seek(t)
        assert np.array_equal(np.asarray(gif.convert("L")), grid_pixels(videos[:, t], 17, cols=2))
    rgb = torch.randint(0, 4, (2, 3, 3, 4, 4))
    save_video_gif(rgb, 4, tmp_path / "rgb.gif")
    save_video_rows(rgb, 4, tmp_path / "rgb.png")
    assert Image.open(tmp_path / "rgb.gif").n_frames == 3 and Image.open(tmp_path / "rgb.png").mode == "RGB"


def test_registry_entry_keeps_frames_first_and_fast_equals_naive():
    spec = REGISTRY["video-transformer"]
    info = DataInfo("video", (2, 1, 3, 4), 4, 3)
    torch.manual_seed(0)
    model = spec.make(merge(spec.defaults(info), {**spec.tiny, "num_classes": 3})).eval()
    assert model.video_shape == (1, 2, 3, 4)                  # the model's layout is [C, T, H, W]
    x = torch.randint(0, 4, (5, 2, 1, 3, 4))                  # data: [B, T, C, H, W]
    labels = torch.tensor([0, 1, 2, 0, 1])
    loss = spec.loss(model, Batch(x, labels), StepRNG(0))
    assert torch.equal(loss, model.loss(x.transpose(1, 2), labels))
    draws = {method: spec.sample(model, 3, SampleOptions(method=method, temperature=0.7),
                                 torch.Generator().manual_seed(4), labels[:3]) for method in spec.methods}
    assert draws["fast"].shape == (3, 2, 1, 3, 4) and torch.equal(draws["fast"], draws["naive"])
    assert spec.methods == ("fast", "naive") and spec.temperature == ">0" and spec.units == "bits/dim"


def test_train_and_sample_videos_from_npy(tmp_path, capsys):
    """An .npy of videos trains (with samples every step) and samples to a PNG and a GIF; a
    wrong --out is refused before any work."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "v.npy", rng.integers(0, 4, (8, 3, 4, 5)))
    out = tmp_path / "run"
    config = json.dumps(REGISTRY["video-transformer"].tiny)
    assert cli.main(["train", "video-transformer", "--data", str(tmp_path / "v.npy"), "--levels", "4",
                     "--steps", "2", "--batch", "4", "--sample-every", "1", "--out", str(out), "--config", config,
                     "--device", "cpu", "--no-progress"]) == 0
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-00000001.png", "step-00000002.png"]
    for name in ("c.png", "c.gif"):
        assert cli.main(["sample", "video-transformer", "--checkpoint", str(out), "--n", "2", "--out",
                         str(tmp_path / name), "--device", "cpu", "--method", "naive", "--temperature", "0.5"]) == 0
    assert Image.open(tmp_path / "c.png").size == (8 * (3 * 6 + 1), 8 * (2 * 5 + 1))
    assert Image.open(tmp_path / "c.gif").n_frames == 3
    capsys.readouterr()
    for argv, words in ((["--out", str(tmp_path / "c.wav")], ["writes video clips", ".png or .gif"]),
                        (["--out", str(tmp_path / "c.gif"), "--seconds", "1"], ["draws videos"]),
                        (["--out", str(tmp_path / "c.gif"), "--label", "1"], ["not class-conditional"])):
        assert cli.main(["sample", "video-transformer", "--checkpoint", str(out), "--device", "cpu", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and all(w in err for w in words), err
