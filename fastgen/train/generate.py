"""Drawing samples from a registered model and writing them: ``draw`` (in chunks, sharded over
ranks), ``write`` (a PNG grid of images; WAV files, one per audio clip; video clips as a PNG of
one row per clip or an animated GIF; points of a density flow as a PNG of their histogram
beside the target density, or the raw points as .npy -- ``OUTPUTS`` lists the formats of each
kind of data),
``load_model`` (a model and its data facts from a ``fastgen train`` checkpoint).

Same samples whatever the world size: the n samples are cut into chunks of ``batch``; chunk c
(samples c*batch ...) is drawn with a generator seeded by ``derive(seed, 'sample', c * batch)``
and the conditioning of its sample indices, by rank c mod world_size; the chunks are gathered
in index order.  A single process draws every chunk the same way, so one process and K
processes write the same file (for the same --batch).
"""
import math
import os
from typing import List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from fastgen.train import checkpoint as ckpt_io
from fastgen.train.distributed import DistEnv, derive
from fastgen.train.registry import DataInfo, ModelSpec, SampleOptions, attach_data, get


class OutputFormat(NamedTuple):
    """The files ``write`` makes for one kind of data."""
    extensions: Tuple[str, ...]    # accepted endings of --out (lower case)
    description: str               # for messages: "this model writes <description>"
    default: str                   # --out when none is given


OUTPUTS = {
    "image": OutputFormat((".png",), "a PNG grid", "samples.png"),
    "audio": OutputFormat((".wav",), "WAV audio", "out.wav"),
    "video": OutputFormat((".png", ".gif"), "video clips as a PNG (one row per clip) or an animated GIF",
                          "clips.gif"),
    "density": OutputFormat((".png", ".npy"), "points as a PNG (the target density beside the samples' histogram) "
                            "or as an .npy array [n, 2]", "samples.png"),
}


def labels_for(num_classes: Optional[int], start: int, count: int, label: Optional[int],
               device: torch.device) -> Optional[Tensor]:
    """Class ids of samples start..start+count: ``label`` for all, or cycling through the classes."""
    if num_classes is None:
        return None
    if label is not None:
        return torch.full((count,), label, dtype=torch.long, device=device)
    return (torch.arange(start, start + count, device=device) % num_classes).long()


@torch.no_grad()
def draw(spec: ModelSpec, model: nn.Module, n: int, batch: int, seed: int, options: SampleOptions,
         env: DistEnv = DistEnv(0, 1, 0), label: Optional[int] = None, progress=None) -> Optional[Tensor]:
    """n samples (long images [n, C, H, W], audio [n, T], long videos [n, T, C, H, W] or points
    [n, D]); under torchrun every rank returns them all (gathered in index order).
    ``progress(count)`` after each chunk on rank 0."""
    device = next(model.parameters()).device
    mine = []
    for c, start in enumerate(range(0, n, batch)):
        if c % env.world_size != env.rank:
            continue
        count = min(batch, n - start)
        chunk_seed = derive(seed, "sample", start)
        where = device if spec.sample_generator == "model" else torch.device("cpu")
        generator = torch.Generator(device=where).manual_seed(chunk_seed)
        labels = labels_for(spec.num_classes(model), start, count, label, device)
        # ops that draw from the global RNG (StyleGAN2's per-layer noise) are seeded per chunk too,
        # inside fork_rng so that the caller's RNG state is left as it was
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(chunk_seed)
            out = spec.sample(model, count, options._replace(seed=chunk_seed % (2 ** 31)), generator, labels)
        mine.append((start, out.detach().cpu()))
        if progress is not None:
            progress(count * env.world_size)
    if env.world_size > 1:
        import torch.distributed as dist
        gathered: List[list] = [None] * env.world_size
        dist.all_gather_object(gathered, mine)
        mine = [item for part in gathered for item in part]
    return torch.cat([out for _, out in sorted(mine, key=lambda item: item[0])])


def grid_pixels(images: Tensor, levels: int, cols: int) -> np.ndarray:
    """Long images [N, C, H, W] in [0, levels), C = 1 (grey: dark ink on white, as
    ``fastgen.demo.save_grid``) or 3 (RGB), laid out row by row in ``cols`` columns with 1-pixel
    white gutters -> uint8 pixels [rows * (H + 1) + 1, cols * (W + 1) + 1] (grey) or [..., 3]."""
    n, C, H, W = images.shape
    if C not in (1, 3):
        raise ValueError(f"image grids show 1 or 3 channels, got {C}")
    rows = math.ceil(n / cols)
    grid = torch.ones(C, rows * (H + 1) + 1, cols * (W + 1) + 1)     # unused cells stay white
    values = images.float() / (levels - 1)
    if C == 1:
        values = 1.0 - values                                         # ink (high values) is dark
    for i in range(n):
        r, c = divmod(i, cols)
        grid[:, 1 + r * (H + 1):1 + r * (H + 1) + H, 1 + c * (W + 1):1 + c * (W + 1) + W] = values[i]
    pixels = (grid * 255).round().byte()
    return (pixels[0] if C == 1 else pixels.permute(1, 2, 0)).numpy()


def _picture(pixels: np.ndarray, scale: int):
    """uint8 pixels (grey [h, w] or RGB [h, w, 3]) as a PIL image enlarged ``scale`` times."""
    from PIL import Image
    image = Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB")
    return image.resize((pixels.shape[1] * scale, pixels.shape[0] * scale), Image.NEAREST)


def save_image_grid(images: Tensor, levels: int, path: str, scale: int = 8) -> None:
    """Long images [N, C, H, W] in [0, levels), C = 1 or 3, as a near-square grid PNG."""
    _picture(grid_pixels(images, levels, math.ceil(math.sqrt(len(images)))), scale).save(path)


def save_video_rows(videos: Tensor, levels: int, path: str, scale: int = 8) -> None:
    """Long videos [N, T, C, H, W] in [0, levels), C = 1 or 3, as a PNG: one row per clip, its
    T frames left to right."""
    _picture(grid_pixels(videos.flatten(0, 1), levels, cols=videos.shape[1]), scale).save(path)


def save_video_gif(videos: Tensor, levels: int, path: str, scale: int = 8, frame_ms: int = 250) -> None:
    """Long videos [N, T, C, H, W] in [0, levels), C = 1 or 3, as an animated GIF (looping,
    ``frame_ms`` per frame) whose frame t is the near-square grid of every clip's frame t."""
    n, T = videos.shape[:2]
    cols = math.ceil(math.sqrt(n))
    frames = [_picture(grid_pixels(videos[:, t], levels, cols), scale) for t in range(T)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)


# a colour map for densities, dark (0) to light (the maximum): five anchors interpolated linearly
_COLOURS = torch.tensor([[0, 0, 4], [81, 18, 124], [183, 55, 121], [252, 137, 97], [252, 253, 191]],
                        dtype=torch.float32)


def _colour(values: Tensor) -> Tensor:
    """values [...] in [0, 1] -> RGB [..., 3] in [0, 255] along ``_COLOURS``."""
    position = values.clamp(0, 1) * (len(_COLOURS) - 1)
    low = position.floor().long().clamp(max=len(_COLOURS) - 2)
    frac = (position - low)[..., None]
    return _COLOURS[low] * (1 - frac) + _COLOURS[low + 1] * frac


def density_pixels(points: Tensor, energy_name: str, size: int = 128) -> np.ndarray:
    """Points [n, 2] of a flow fitted to the target ``energy_name`` (``fastgen.data.densities``)
    -> uint8 RGB [size, 2 * size + 1, 3]: left the target density exp(-U), right the points'
    2-D histogram, on the same size x size grid over the square [-4, 4]^2 (z1 left to right,
    z2 bottom to top), each scaled to its own maximum, a white column between them."""
    from fastgen.data.densities import BOX, energy, grid
    cells = grid(size, BOX)
    log_p = -energy(energy_name, cells.points.double()).view(size, size)
    target = (log_p - log_p.max()).exp()
    z = points.double()
    inside = (z.abs() < BOX).all(1)
    z1, z2 = z[inside, 0], z[inside, 1]
    col = ((z1 + BOX) / cells.cell).long().clamp(0, size - 1)
    row = ((BOX - z2) / cells.cell).long().clamp(0, size - 1)          # row 0 is the top: z2 = +BOX
    counts = torch.bincount(row * size + col, minlength=size * size).view(size, size).double()
    histogram = counts / counts.max().clamp_min(1)
    gutter = torch.full((size, 1, 3), 255.0)
    picture = torch.cat([_colour(target.float()), gutter, _colour(histogram.float())], 1)
    return picture.round().byte().numpy()


def save_density_picture(points: Tensor, energy_name: str, path: str, scale: int = 3) -> None:
    """``density_pixels`` as a PNG enlarged ``scale`` times."""
    _picture(density_pixels(points, energy_name), scale).save(path)


def audio_paths(out: str, n: int) -> List[str]:
    """One WAV per clip: ``out`` itself for one clip, else ``<stem>-<i>.wav`` (i = 0..n-1)."""
    if n == 1:
        return [out]
    stem, ext = os.path.splitext(out)
    return [f"{stem}-{i}{ext}" for i in range(n)]


def write(samples: Tensor, info: DataInfo, out: str) -> List[str]:
    """Write ``samples`` to ``out`` in a format of ``OUTPUTS[info.kind]`` (videos: chosen by the
    extension of ``out``); returns the paths written."""
    if info.kind == "image":
        save_image_grid(samples, info.levels, out)
        return [out]
    if info.kind == "video":
        save = save_video_gif if out.lower().endswith(".gif") else save_video_rows
        save(samples, info.levels, out)
        return [out]
    if info.kind == "density":
        if out.lower().endswith(".npy"):
            with open(out, "wb") as f:                  # (np.save would add .npy to a name ending in .NPY)
                np.save(f, samples.float().numpy())
        else:
            save_density_picture(samples, info.energy, out)
        return [out]
    from fastgen.data import save_wav
    paths = audio_paths(out, len(samples))
    for clip, path in zip(samples, paths):
        save_wav(path, clip, info.sample_rate)
    return paths


def load_model(folder: str, model_name: str, device: torch.device, ema: bool = True):
    """(spec, model in eval mode on ``device``, DataInfo, Checkpoint) from a ``fastgen train``
    checkpoint; the EMA weights when the checkpoint has them and ``ema``."""
    spec = get(model_name)
    ckpt = ckpt_io.open_checkpoint(folder, spec.name)
    info = ckpt.data_info
    model = attach_data(spec.make(ckpt.config["args"]), spec, info)
    weights = ckpt.path("ema") if ema and ckpt.path("ema") else ckpt.path("model")
    ckpt_io.load_weights(model, weights)
    state = torch.load(ckpt.path("state"), map_location="cpu", weights_only=True)
    if spec.set_state and state.get("model_state"):
        spec.set_state(model, state["model_state"])
    return spec, model.to(device).eval(), info, ckpt
