"""Training data for ``fastgen train``, held in memory: ``digits`` (the bundled 8x8 digits),
an ``.npy`` file of integer images (``fastgen.data.load_array``), ``audio-synthetic`` (chords
and chirps), a folder of ``.wav`` files cut into fixed segments, ``moving-digits`` (the digits
bouncing across a canvas, ``fastgen.data.moving_digits``) or an ``.npy`` file of integer videos
(``fastgen.data.load_video_array``).  A ``TrainData`` is indexed by the sampler of
``fastgen.train.loop``; nothing random happens here.

``density:u1`` .. ``density:u4`` are not data but target densities exp(-U) of
``fastgen.data.densities``, which the variational flows (planar-flow, radial-flow) fit by the
reverse KL, drawing their own samples.  So that the loop needs no special case, such a source
is a set of ``DENSITY_SLOTS`` sample slots (x = 0, 1, ...): the sampler deals them out as for
data, the loss draws one sample per slot of its batch and reads nothing else."""
import os
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from fastgen.train.registry import DataInfo, UsageError

AUDIO_SYNTHETIC = "audio-synthetic"
MOVING_DIGITS = "moving-digits"

# per kind of data: its bundled data set, the files it reads otherwise, and its plural noun
BUNDLED = {"image": "digits", "audio": AUDIO_SYNTHETIC, "video": MOVING_DIGITS}
FILES = {"image": "an .npy file of integer images [N, (C,) H, W]", "audio": "a folder of .wav files",
         "video": "an .npy file of integer videos [N, T, (C,) H, W]"}
NOUNS = {"image": "images", "audio": "audio", "video": "videos"}

DENSITY = "density:"            # --data density:<name>, a target of fastgen.data.densities
DENSITY_SLOTS = 1 << 20         # far above any batch; an epoch of slots is 2^20 / batch steps


class TrainData(NamedTuple):
    x: Tensor                    # long images [N, C, H, W], float audio [N, T], long videos [N, T, C, H, W]
                                 # or long sample slots [N] (density)
    labels: Optional[Tensor]     # [N] or None
    info: DataInfo


def _density_names() -> str:
    from fastgen.data.densities import NAMES
    return ", ".join(DENSITY + name for name in NAMES)


def _check_density(source: str, kind: str) -> None:
    from fastgen.data.densities import NAMES
    if kind != "density":
        raise UsageError(f"--data {source} is a target density for the variational flows (planar-flow, radial-flow); "
                         f"this model trains on {NOUNS[kind]} (use --data {BUNDLED[kind]} or {FILES[kind]})")
    if not source.startswith(DENSITY):
        raise UsageError(f"--data {source}: this model is fitted to a 2-D target density exp(-U), not to data; "
                         f"give --data one of {_density_names()}")
    if source[len(DENSITY):] not in NAMES:
        raise UsageError(f"--data {source}: no such target density; choose one of {_density_names()}")


def check_source(source: str, kind: str) -> None:
    """UsageError unless ``source`` names data of ``kind`` ('image' | 'audio' | 'video') that
    exists, or a target density of ``fastgen.data.densities`` for kind 'density'."""
    if kind == "density" or source.startswith(DENSITY):
        _check_density(source, kind)
        return
    holds = {name: k for k, name in BUNDLED.items()}.get(source)
    if holds is not None:
        if holds != kind:
            raise UsageError(f"--data {source} holds {NOUNS[holds]}; this model trains on {NOUNS[kind]} "
                             f"(use --data {BUNDLED[kind]} or {FILES[kind]})")
        return
    if not os.path.exists(source):
        raise UsageError(f"--data {source}: no such file or folder (or use {' / '.join(BUNDLED.values())})")
    found = os.path.isdir(source) if kind == "audio" else os.path.isfile(source) and source.endswith(".npy")
    if not found:
        raise UsageError(f"--data {source}: {kind} models read {FILES[kind]}")


def load(source: str, kind: str, levels: int = 256, segment: int = 2048, sample_rate: int = 16000,
         clips: int = 256) -> TrainData:
    """The whole data set in memory (``check_source`` first).  Images and videos: ``levels``
    for an .npy file.  Audio: clips of ``segment`` samples (``clips`` synthetic ones; every
    whole segment of every file of a folder, mono, at one sample rate).  Density: the sample
    slots of a target (module docstring)."""
    from fastgen.data import load_array, load_digits, load_video_array, load_wav, moving_digits, synthetic_audio
    check_source(source, kind)
    if kind == "density":
        return TrainData(torch.arange(DENSITY_SLOTS), None, DataInfo("density", (2,), energy=source[len(DENSITY):]))
    if source == MOVING_DIGITS:
        data = moving_digits("train")
        return TrainData(data.videos, data.labels, DataInfo("video", tuple(data.videos.shape[1:]), data.levels, 10))
    if kind == "video":
        try:
            data = load_video_array(source, levels)
        except ValueError as err:
            raise UsageError(f"--data {err}") from err
        return TrainData(data.videos, None, DataInfo("video", tuple(data.videos.shape[1:]), levels))
    if source == "digits":
        data = load_digits("train")
        return TrainData(data.images, data.labels, DataInfo("image", tuple(data.images.shape[1:]), data.levels, 10))
    if source == AUDIO_SYNTHETIC:
        audio = synthetic_audio(clips, segment, sample_rate, seed=0)
        return TrainData(audio, None, DataInfo("audio", (segment,), sample_rate=sample_rate))
    if kind == "image":
        try:
            data = load_array(source, levels)
        except ValueError as err:
            raise UsageError(f"--data {err}") from err
        classes = int(data.labels.max()) + 1 if data.labels is not None else None
        return TrainData(data.images, data.labels, DataInfo("image", tuple(data.images.shape[1:]), levels, classes))
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(source) for f in fs if f.lower().endswith(".wav"))
    if not paths:
        raise UsageError(f"--data {source}: no .wav files in this folder")
    pieces, rate = [], None
    for path in paths:
        audio, file_rate = load_wav(path)
        if rate is not None and file_rate != rate:
            raise UsageError(f"--data {source}: {path} has sample rate {file_rate}, the others {rate}")
        rate = file_rate
        audio = audio.mean(0) if audio.dim() == 2 else audio
        whole = len(audio) // segment
        pieces.append(audio[:whole * segment].view(whole, segment))
    audio = torch.cat(pieces)
    if not len(audio):
        raise UsageError(f"--data {source}: every file is shorter than one segment of {segment} samples")
    return TrainData(audio, None, DataInfo("audio", (segment,), sample_rate=rate))
