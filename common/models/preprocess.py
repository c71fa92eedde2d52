"""Image loading for the image towers: PIL -> RGB -> resize -> normalise.

No torchvision (it does not import beside torch 2.13): images are decoded and
resized with Pillow, turned into tensors through numpy and normalised with the
mean/std the tower was trained with (`IMAGENET` for EfficientNet, `CLIP` for
CLIP). Resizing ignores the aspect ratio on purpose: person crops come in many
shapes and every dataset loader in this project resizes to the tower's fixed
(H, W), as IRRA does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from common.data.records import DataError

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std of RGB values in [0, 1]."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def as_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}


IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = Normalization((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def _load_array(path: str | Path, size_hw: tuple[int, int], norm: Normalization) -> np.ndarray:
    """Decode, resize and normalise in numpy (single-threaded: small torch ops would each
    start an OpenMP region, which stalls badly on a busy 2-core machine)."""
    h, w = size_hw
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.float32)
    except FileNotFoundError as e:
        raise DataError(path, "image file not found", kind="missing_image") from e
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(path, f"cannot decode image: {e}", kind="corrupt_image") from e
    scale = np.float32(255.0) * np.asarray(norm.std, dtype=np.float32)
    arr = (arr - np.float32(255.0) * np.asarray(norm.mean, dtype=np.float32)) / scale
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def load_image(path: str | Path, size_hw: tuple[int, int], norm: Normalization = IMAGENET) -> torch.Tensor:
    """Read one image file as a normalised float tensor [3, H, W].

    Raises `DataError` naming the file if it is missing or cannot be decoded.
    """
    return torch.from_numpy(_load_array(path, size_hw, norm))


def load_images(
    paths: Sequence[str | Path],
    size_hw: tuple[int, int],
    norm: Normalization = IMAGENET,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Load several images into one tensor [N, 3, H, W]; `progress(done, total)` after each."""
    out = np.empty((len(paths), 3, *size_hw), dtype=np.float32)
    for i, p in enumerate(paths):
        out[i] = _load_array(p, size_hw, norm)
        if progress is not None:
            progress(i + 1, len(paths))
    return torch.from_numpy(out)


def iter_image_batches(
    paths: Sequence[str | Path],
    size_hw: tuple[int, int],
    norm: Normalization = IMAGENET,
    batch_size: int = 64,
    prefetch: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield [B, 3, H, W] batches in order.

    With `prefetch`, the next batch is decoded in a background thread while the
    caller encodes the current one (Pillow releases the GIL while decoding).
    """
    starts = range(0, len(paths), batch_size)

    def load(s: int) -> torch.Tensor:
        return load_images(paths[s : s + batch_size], size_hw, norm)

    if not prefetch:
        for s in starts:
            yield load(s)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedgckd-imgload") as pool:
        pending = None
        for s in starts:
            nxt = pool.submit(load, s)
            if pending is not None:
                yield pending.result()
            pending = nxt
        if pending is not None:
            yield pending.result()
