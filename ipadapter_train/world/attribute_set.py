"""A learned-world data set for an adapter: pictures sharing one attribute that their captions never name.

    folder = write_attribute_set(out / "images", colour="red")     # 5 red pictures, captioned by shape alone

What an adapter trained on it must learn is the shared attribute: the captions cannot carry it, the image
embeddings can. Held-out references and prompts (other pictures of the same attribute, prompts naming only a
shape) are drawn from generators of their own, so nothing evaluated was trained on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..storage.weights_io import atomic_write, atomic_write_text
from .domain import SHAPES, Attributes, caption, draw, sample_attributes

NAMED = ("shape",)  # what the set's captions say


@dataclass(frozen=True)
class AttributeSet:
    """Which attribute the pictures share (e.g. colour = red), how many, and the seed they are drawn from."""

    attribute: str = "colour"
    value: str = "red"
    images: int = 5
    seed: int = 0

    def pictures(self, stream: int = 0, n: int | None = None) -> list[tuple[Image.Image, Attributes]]:
        """`n` pictures sharing the attribute (stream 0: the training set; others: held-out ones), with their
        attributes. Training shapes go round the world's shapes so that five pictures show five shapes."""
        rng = np.random.default_rng([self.seed, 100 + stream])
        out = []
        for i in range(n or self.images):
            fixed = {self.attribute: self.value}
            if stream == 0 and self.attribute != "shape":
                fixed["shape"] = SHAPES[i % len(SHAPES)]
            attrs = sample_attributes(rng, **fixed)
            out.append((draw(attrs, rng), attrs))
        return out

    def prompts(self, n: int) -> list[str]:
        """Held-out prompts naming only a shape, as the training captions do (the attribute is never named)."""
        rng = np.random.default_rng([self.seed, 200])
        return [caption(sample_attributes(rng), NAMED) for _ in range(n)]


def write_attribute_set(folder: Path, attribute_set: AttributeSet, prefix: str = "world") -> Path:
    """Write the training pictures as PNG files with .txt captions (what `train --images` reads), named
    `<prefix>_NN` (several sets may share a folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (picture, attrs) in enumerate(attribute_set.pictures()):
        atomic_write(folder / f"{prefix}_{i:02d}.png", lambda p, im=picture: im.save(p, format="PNG"))
        atomic_write_text(folder / f"{prefix}_{i:02d}.txt", caption(attrs, NAMED) + "\n")
    return folder
