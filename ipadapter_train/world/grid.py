"""A picture of samples: a grid of 64 px pictures, each captioned underneath (README and world.json's samples)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..storage.weights_io import atomic_write


def grid_image(pictures: np.ndarray, labels: Sequence[str], columns: int = 10, scale: int = 2) -> Image.Image:
    """Pictures (uint8 N x 64 x 64 x 3) at `scale`x in rows of `columns`, each with its label below."""
    side, label_h = pictures.shape[1] * scale, 12
    rows = -(-len(pictures) // columns)
    canvas = Image.new("RGB", (columns * side, rows * (side + label_h)), "white")
    pen = ImageDraw.Draw(canvas)
    for i, (picture, label) in enumerate(zip(pictures, labels)):
        x, y = (i % columns) * side, (i // columns) * (side + label_h)
        canvas.paste(Image.fromarray(picture).resize((side, side), Image.NEAREST), (x, y))
        pen.text((x + 2, y + side), label[:22], fill="black")
    return canvas


def save_samples(pictures: np.ndarray, truth: Sequence, path: Path) -> Path:
    """Write the text-only samples with their prompts' attributes as a PNG grid (atomically)."""
    labels = [f"{a.colour} {a.shape}/{a.background}" for a in truth]
    grid = grid_image(pictures, labels)
    return atomic_write(path, lambda p: grid.save(p, format="PNG"))
