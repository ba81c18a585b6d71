"""The attributes that pixels tell exactly: a picture's background and its shape's colour.

The background is the median of the picture's border; the shape is every pixel far from it; its colour is
the nearest world colour to their median. Generated pictures are read the same way as drawn ones, so a
colour reading needs no model and cannot be fooled by one.
"""
from __future__ import annotations

import numpy as np

from .domain import BACKGROUNDS, COLOURS

# a pixel this far (RGB distance, 0-441) from the background belongs to the shape
_FOREGROUND = 60.0
# fewer shape pixels than this share of the picture: nothing is drawn there (a blank or washed-out sample)
_MIN_SHARE = 0.02


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    distances = np.linalg.norm(np.asarray([palette[n] for n in names], dtype=np.float32) - rgb, axis=1)
    return names[int(distances.argmin())]


def border_colour(picture: np.ndarray) -> np.ndarray:
    """The median RGB of a picture's outermost 3 pixels (H, W, 3 uint8 -> 3 floats)."""
    p = picture.astype(np.float32)
    border = np.concatenate([p[:3].reshape(-1, 3), p[-3:].reshape(-1, 3), p[:, :3].reshape(-1, 3),
                             p[:, -3:].reshape(-1, 3)])
    return np.median(border, axis=0)


def shape_mask(picture: np.ndarray) -> np.ndarray:
    """The pixels that differ from the background by more than `_FOREGROUND` (H, W bool)."""
    distance = np.linalg.norm(picture.astype(np.float32) - border_colour(picture), axis=-1)
    return distance > _FOREGROUND


def read_background(picture: np.ndarray) -> str:
    """The world background nearest to the picture's border."""
    return _nearest(border_colour(picture), BACKGROUNDS)


def read_colour(picture: np.ndarray) -> str | None:
    """The world colour nearest to the shape's median pixel, or None when no shape stands out."""
    mask = shape_mask(picture)
    if mask.mean() < _MIN_SHARE:
        return None
    return _nearest(np.median(picture[mask].astype(np.float32), axis=0), COLOURS)
