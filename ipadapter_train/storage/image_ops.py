"""Image geometry for training: short-side resize to a multiple of 8, resize to cover a bucket, the aspect
limit that bounds what the VAE encodes, centre crop, flip, and PIL -> [-1, 1] tensor. Pure functions of one
image; `storage/data.py` reads the data set, `training/encoding.py` applies these before the frozen encoders.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image


def resize_short_side(image: Image.Image, size: int, multiple: int = 8) -> Image.Image:
    """Resize so the short side is `size` and the long side a multiple of `multiple`.

    The multiple keeps the long side on the VAE's 8-pixel latent grid; Lanczos keeps detail.
    """
    if size < 1 or multiple < 1:
        raise ValueError(f"size and multiple must be positive, got size={size}, multiple={multiple}")
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = max(multiple, int(long * size / short / multiple + 0.5) * multiple)
    if new_long < size:  # rounding down must not make the long side shorter than the short one
        new_long = math.ceil(size / multiple) * multiple
    target = (size, new_long) if width <= height else (new_long, size)
    if target == image.size:
        return image.copy()
    return image.resize(target, Image.Resampling.LANCZOS)


def aspect_box(width: int, height: int, max_aspect: float) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the central part of a `width` x `height` image that is at most
    `max_aspect` times as long as it is short: the whole image when it already is."""
    if max_aspect < 1:
        raise ValueError(f"max_aspect must be at least 1, got {max_aspect}")
    keep = int(min(width, height) * max_aspect)
    if max(width, height) <= keep:
        return 0, 0, width, height
    if width > height:
        left = (width - keep) // 2
        return left, 0, left + keep, height
    top = (height - keep) // 2
    return 0, top, width, top + keep


def limit_aspect(image: Image.Image, max_aspect: float) -> Image.Image:
    """Centre-crop the long side to at most `max_aspect` times the short side; other images pass untouched."""
    box = aspect_box(*image.size, max_aspect)
    return image if box == (0, 0, *image.size) else image.crop(box)


def resize_to_cover(image: Image.Image, width: int, height: int, multiple: int = 8) -> Image.Image:
    """Resize, keeping the aspect ratio, to the smallest size that covers `width` x `height`, each side
    a multiple of `multiple` (the VAE's latent grid) and never under the target; Lanczos keeps detail.

    What sticks out past the target on one side is the remainder a crop may move in.
    """
    if width < 1 or height < 1 or multiple < 1:
        raise ValueError(f"width, height and multiple must be positive, got {width}, {height}, {multiple}")
    w, h = image.size
    scale = max(width / w, height / h)
    target = (max(width, int(w * scale / multiple + 0.5) * multiple),
              max(height, int(h * scale / multiple + 0.5) * multiple))
    if target == image.size:
        return image.copy()
    return image.resize(target, Image.Resampling.LANCZOS)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Cut the central `size` x `size` square; the image must be at least that large."""
    width, height = image.size
    if width < size or height < size:
        raise ValueError(f"image is {width}x{height}, smaller than the {size}px crop; resize it first")
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> float32 tensor [3, H, W] in [-1, 1], the range the VAE encoder expects."""
    if image.mode != "RGB":
        raise ValueError(f"to_tensor expects an RGB image, got mode {image.mode}; load it with load_image")
    array = np.asarray(image, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous() / 127.5 - 1.0


def hflip(image: Image.Image) -> Image.Image:
    """Mirror left-right (the usual augmentation for a few training images)."""
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
