"""Small image datasets that need no download, as integer tensors.

Every loader returns an ``ImageData``: ``images`` uint8/long ``[N, C, H, W]`` with values in
``[0, levels)``, ``labels`` long ``[N]`` (or None) and ``levels``.
"""
import os
from typing import Literal, NamedTuple, Optional, Union

import numpy as np
import torch


class ImageData(NamedTuple):
    images: torch.Tensor          # [N, C, H, W], integer values in [0, levels)
    labels: Optional[torch.Tensor]
    levels: int


def load_digits(split: Literal["train", "test", "all"] = "train", test_fraction: float = 0.2,
                seed: int = 0) -> ImageData:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 17 grey levels 0..16).

    ``split``: 'train', 'test' or 'all'; the split is a fixed shuffle (``seed``) so the test
    images are the same in every run.
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("load_digits needs scikit-learn: pip install scikit-learn") from err
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    digits = sk_load_digits()
    images = torch.from_numpy(digits.images.astype(np.int64))[:, None]   # [N, 1, 8, 8]
    labels = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(images)))
    pick = {"test": order[:n_test], "train": order[n_test:], "all": order}[split]
    return ImageData(images[pick], labels[pick], 17)


def load_array(path: Union[str, os.PathLike], levels: int = 256,
               labels_path: Optional[Union[str, os.PathLike]] = None) -> ImageData:
    """Images from a ``.npy`` file: ``[N, H, W]`` or ``[N, C, H, W]`` (or ``[N, H, W, C]`` with
    C in {1, 3, 4}) of integers in ``[0, levels)``."""
    array = np.load(path)
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[-1] in (1, 3, 4) and array.shape[1] not in (1, 3, 4):
        array = array.transpose(0, 3, 1, 2)
    if array.ndim != 4:
        raise ValueError(f"{path}: expected [N, H, W] or [N, C, H, W] images, got shape {array.shape}")
    check_integer_values(array, levels, path)
    labels = torch.from_numpy(np.load(labels_path).astype(np.int64)) if labels_path else None
    return ImageData(torch.from_numpy(array.astype(np.int64)), labels, levels)


def check_integer_values(array: np.ndarray, levels: int, path: Union[str, os.PathLike]) -> None:
    """ValueError naming ``path`` unless ``array`` holds integers in ``[0, levels)``."""
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{path}: expected integer pixel values, got dtype {array.dtype}")
    if array.min() < 0 or array.max() >= levels:
        raise ValueError(f"{path}: pixel values must lie in [0, {levels}), got [{array.min()}, {array.max()}]")
