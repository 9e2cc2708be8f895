"""Audio data without downloads: WAV files (standard-library ``wave``, 16-bit PCM) and a
synthetic dataset of chords and chirps for tests and examples.  Audio is float in [-1, 1]."""
import math
import os
import wave
from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor


def load_wav(path: Union[str, os.PathLike]) -> Tuple[Tensor, int]:
    """-> (audio float32 [T] (mono) or [channels, T], sample_rate).  16-bit PCM only."""
    with wave.open(os.fspath(path), "rb") as f:
        if f.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported, got {8 * f.getsampwidth()}-bit")
        channels, rate, frames = f.getnchannels(), f.getframerate(), f.readframes(f.getnframes())
    data = torch.from_numpy(np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0)
    return (data if channels == 1 else data.view(-1, channels).T.contiguous()), rate


def save_wav(path: Union[str, os.PathLike], audio: Union[Tensor, np.ndarray], sample_rate: int = 16000) -> None:
    """audio: float [T] (mono) or [channels, T] in [-1, 1] -> 16-bit PCM WAV."""
    audio = torch.as_tensor(audio).detach().float().cpu()
    if audio.dim() == 1:
        audio = audio[None]
    if audio.dim() != 2:
        raise ValueError(f"audio must be [T] or [channels, T], got shape {tuple(audio.shape)}")
    pcm = (audio.clamp(-1, 1) * 32767).round().short().T.contiguous().numpy()
    with wave.open(os.fspath(path), "wb") as f:
        f.setnchannels(audio.shape[0])
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.astype("<i2").tobytes())


def synthetic_audio(n: int, length: int, sample_rate: int = 16000, seed: int = 0) -> Tensor:
    """``n`` clips [n, length]: half random three-note chords, half linear chirps, with a
    short fade in/out, peak amplitude 0.8."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / sample_rate
    clips = []
    for i in range(n):
        if i % 2 == 0:
            root = 110 * 2 ** (torch.randint(0, 24, (1,), generator=g).item() / 12)
            notes = [root * 2 ** (s / 12) for s in (0, 4, 7)]
            clip = sum(torch.sin(2 * math.pi * f * t) for f in notes)
        else:
            f0, f1 = 100 + 400 * torch.rand(2, generator=g)
            clip = torch.sin(2 * math.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * t[-1].clamp(min=1e-6))))
        fade = torch.minimum(torch.ones(length), torch.minimum(t, t.flip(0)) * 100)
        clip = clip * fade
        clips.append(0.8 * clip / clip.abs().max().clamp(min=1e-6))
    return torch.stack(clips)


class WavFolder(torch.utils.data.Dataset):
    """Random fixed-length mono segments from every ``.wav`` under ``root`` (one per file and
    epoch): item -> float [segment]."""

    def __init__(self, root: Union[str, os.PathLike], segment: int = 16000,
                 sample_rate: Optional[int] = None) -> None:
        self.paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.lower().endswith(".wav"))
        if not self.paths:
            raise ValueError(f"no .wav files under {root}")
        self.segment, self.sample_rate = segment, sample_rate

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        audio, rate = load_wav(self.paths[i])
        if self.sample_rate is not None and rate != self.sample_rate:
            raise ValueError(f"{self.paths[i]}: sample rate {rate}, expected {self.sample_rate}")
        if audio.dim() == 2:
            audio = audio.mean(0)
        if len(audio) < self.segment:
            audio = torch.nn.functional.pad(audio, (0, self.segment - len(audio)))
        start = torch.randint(0, len(audio) - self.segment + 1, (1,)).item()
        return audio[start:start + self.segment]
