"""Small video data sets that need no download, as integer tensors.

``moving_digits`` is synthetic: every clip is one of the bundled 8x8 digits (``load_digits``)
travelling in a straight line across a larger blank canvas and bouncing off its edges.
``load_video_array`` reads your own videos from a ``.npy`` file.

Every loader returns a ``VideoData``: ``videos`` long ``[N, T, C, H, W]`` (frames first, each
frame an image as ``ImageData`` holds them) with values in ``[0, levels)``, ``labels`` long
``[N]`` (or None) and ``levels``.
"""
import os
from typing import Literal, NamedTuple, Optional, Union

import numpy as np
import torch
from torch import Tensor

from fastgen.data.images import check_integer_values, load_digits

DIGIT_SIZE = 8          # the bundled digits are 8x8


class VideoData(NamedTuple):
    videos: Tensor                # long [N, T, C, H, W], values in [0, levels)
    labels: Optional[Tensor]      # long [N] or None
    levels: int


def bounce(start: Tensor, velocity: Tensor, frames: int, span: int) -> Tensor:
    """Positions [..., frames] of points moving from ``start`` by ``velocity`` per frame inside
    [0, span], reflected at both ends: p(t) = span - |((start + velocity * t) mod 2 span) - span|
    (the unfolded straight line folded back into the interval; span = 0 stands still)."""
    t = torch.arange(frames)
    line = start[..., None] + velocity[..., None] * t
    if span == 0:
        return torch.zeros_like(line)
    return span - ((line % (2 * span)) - span).abs()


def moving_digits(split: Literal["train", "test", "all"] = "train", frames: int = 4, size: int = 12,
                  max_speed: int = 2, seed: int = 0) -> VideoData:
    """One clip per digit of ``load_digits(split)``: the 8x8 digit on a blank ``size`` x ``size``
    canvas (1 channel, 17 levels 0..16, 0 = no ink), moving for ``frames`` frames.

    Clip i starts at a top-left corner (y0, x0) uniform in [0, size - 8]^2 and moves by a
    velocity (vy, vx) per frame drawn uniformly from the nonzero pairs in [-max_speed,
    max_speed]^2, bouncing off the canvas edges (``bounce``).  Deterministic: the positions
    come from a generator seeded with ``seed``, the digits from ``load_digits``'s fixed split,
    so the test clips show the test digits.  labels: the digit (10 classes).
    """
    for name, value, low in (("frames", frames, 1), ("size", size, DIGIT_SIZE), ("max_speed", max_speed, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    digits = load_digits(split)
    n, span = len(digits.images), size - DIGIT_SIZE
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, span + 1, (n, 2), generator=g)                          # (y0, x0)
    speeds = torch.arange(-max_speed, max_speed + 1)
    pairs = torch.cartesian_prod(speeds, speeds)
    pairs = pairs[(pairs != 0).any(dim=1)]                                          # a clip always moves
    velocity = pairs[torch.randint(0, len(pairs), (n,), generator=g)]               # (vy, vx)
    corner = bounce(start, velocity, frames, span)                                  # [n, 2, frames]
    # paste: canvas[i, t, 0, y_t + r, x_t + c] = digit_i[r, c] for the 8x8 offsets (r, c)
    offsets = torch.arange(DIGIT_SIZE)
    rows = (corner[:, 0, :, None] + offsets)[:, :, :, None]                        # [n, frames, 8, 1]
    cols = (corner[:, 1, :, None] + offsets)[:, :, None, :]                        # [n, frames, 1, 8]
    clip = torch.arange(n)[:, None, None, None]
    frame = torch.arange(frames)[None, :, None, None]
    videos = torch.zeros(n, frames, 1, size, size, dtype=torch.long)
    videos[clip, frame, 0, rows, cols] = digits.images[:, None, 0].long()
    return VideoData(videos, digits.labels, digits.levels)


def load_video_array(path: Union[str, os.PathLike], levels: int = 256,
                     labels_path: Optional[Union[str, os.PathLike]] = None) -> VideoData:
    """Videos from a ``.npy`` file: ``[N, T, H, W]`` (grey) or ``[N, T, C, H, W]`` (or
    ``[N, T, H, W, C]`` with C in {1, 3, 4}) of integers in ``[0, levels)``; ValueError naming
    the file otherwise."""
    array = np.load(path)
    if array.ndim == 4:
        array = array[:, :, None]
    elif array.ndim == 5 and array.shape[-1] in (1, 3, 4) and array.shape[2] not in (1, 3, 4):
        array = array.transpose(0, 1, 4, 2, 3)
    if array.ndim != 5:
        hint = " (an [N, H, W] array holds images, not videos)" if array.ndim == 3 else ""
        raise ValueError(f"{path}: expected [N, T, H, W] or [N, T, C, H, W] videos, got shape {array.shape}{hint}")
    if 0 in array.shape:
        raise ValueError(f"{path}: expected at least one video with frames of at least one pixel, "
                         f"got shape {array.shape}")
    check_integer_values(array, levels, path)
    labels = torch.from_numpy(np.load(labels_path).astype(np.int64)) if labels_path else None
    return VideoData(torch.from_numpy(array.astype(np.int64)), labels, levels)
