"""Training data for ``fastgen train``, held in memory: ``digits`` (the bundled 8x8 digits),
an ``.npy`` file of integer images (``fastgen.data.load_array``), ``audio-synthetic`` (chords
and chirps) or a folder of ``.wav`` files cut into fixed segments.  A ``TrainData`` is indexed
by the sampler of ``fastgen.train.loop``; nothing random happens here."""
import os
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from fastgen.train.registry import DataInfo, UsageError

AUDIO_SYNTHETIC = "audio-synthetic"


class TrainData(NamedTuple):
    x: Tensor                    # long images [N, C, H, W] or float audio [N, T]
    labels: Optional[Tensor]     # [N] or None
    info: DataInfo


def check_source(source: str, kind: str) -> None:
    """UsageError unless ``source`` names data of ``kind`` ('image' | 'audio') that exists."""
    if source == "digits":
        if kind != "image":
            raise UsageError("--data digits holds images; this model trains on audio "
                             f"(use --data {AUDIO_SYNTHETIC} or a folder of .wav files)")
        return
    if source == AUDIO_SYNTHETIC:
        if kind != "audio":
            raise UsageError(f"--data {AUDIO_SYNTHETIC} holds audio; this model trains on images "
                             "(use --data digits or an .npy file of integer images)")
        return
    if not os.path.exists(source):
        raise UsageError(f"--data {source}: no such file or folder (or use digits / {AUDIO_SYNTHETIC})")
    if kind == "image" and not (os.path.isfile(source) and source.endswith(".npy")):
        raise UsageError(f"--data {source}: image models read an .npy file of integer images [N, (C,) H, W]")
    if kind == "audio" and not os.path.isdir(source):
        raise UsageError(f"--data {source}: audio models read a folder of .wav files")


def load(source: str, kind: str, levels: int = 256, segment: int = 2048, sample_rate: int = 16000,
         clips: int = 256) -> TrainData:
    """The whole data set in memory (``check_source`` first).  Images: ``levels`` for an .npy
    file.  Audio: clips of ``segment`` samples (``clips`` synthetic ones; every whole segment of
    every file of a folder, mono, at one sample rate)."""
    from fastgen.data import load_array, load_digits, load_wav, synthetic_audio
    check_source(source, kind)
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
