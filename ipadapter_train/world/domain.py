"""The world's pictures: a shape of one colour on a plain background, drawn at 64 px from a seed.

    picture = draw(Attributes("star", "red", "grey"), rng)      # a 64 x 64 RGB PIL image
    caption(picture_attrs, named=("shape",))                    # "a star"
    sample_attributes(rng)                                       # uniform over the 5 x 5 x 3 world

Shapes, colours and backgrounds are far apart, so `reader.py` can tell them apart in generated pictures
too. Position, size and rotation vary within a picture's attributes, so a model has something to learn
beyond the three words. Drawing is deterministic: the same attributes and generator state give the same
pixels on every machine (PIL polygons at 4x, reduced with a box filter).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64  # pixels per side
_SCALE = 4  # drawn at 4x and reduced: smooth edges without anti-aliasing code

SHAPES = ("circle", "square", "triangle", "star", "cross")
# saturated hues, far from each other and from every background
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 90, 225), "yellow": (235, 205, 40),
    "purple": (150, 60, 190)}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (20, 20, 20), "grey": (128, 128, 128),
                                                "white": (235, 235, 235)}
ATTRIBUTES = ("shape", "colour", "background")


@dataclass(frozen=True)
class Attributes:
    """What a world picture shows: one shape, its colour, the background."""

    shape: str
    colour: str
    background: str

    def value(self, name: str) -> str:
        """The value of one attribute by name ("shape", "colour" or "background")."""
        return getattr(self, name)


def choices(attribute: str) -> tuple[str, ...]:
    """The values an attribute takes."""
    return {"shape": SHAPES, "colour": tuple(COLOURS), "background": tuple(BACKGROUNDS)}[attribute]


def sample_attributes(rng: np.random.Generator, **fixed: str) -> Attributes:
    """Attributes drawn uniformly, except those given (e.g. `colour="red"`)."""
    values = {name: fixed.get(name) or choices(name)[int(rng.integers(len(choices(name))))] for name in ATTRIBUTES}
    return Attributes(**values)


def caption(attrs: Attributes, named: Iterable[str] = ATTRIBUTES) -> str:
    """The caption naming the attributes in `named`: "a red star on a grey background", "a star", "a red shape"."""
    named = set(named)
    colour = f"{attrs.colour} " if "colour" in named else ""
    shape = attrs.shape if "shape" in named else "shape"
    background = f" on a {attrs.background} background" if "background" in named else ""
    return f"a {colour}{shape}{background}"


def _outline(shape: str, radius: float, angle: float) -> list[tuple[float, float]] | None:
    """The shape's polygon around (0, 0) (None for the circle), rotated by `angle` radians."""
    if shape == "circle":
        return None
    if shape == "square":
        points = [(math.cos(a), math.sin(a)) for a in (math.pi / 4 + k * math.pi / 2 for k in range(4))]
        points = [(x * radius * 0.9, y * radius * 0.9) for x, y in points]
    elif shape == "triangle":
        points = [(radius * math.cos(a), radius * math.sin(a) + radius * 0.15)
                  for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
    elif shape == "star":
        points = [((radius if k % 2 == 0 else radius * 0.45) * math.cos(-math.pi / 2 + k * math.pi / 5),
                   (radius if k % 2 == 0 else radius * 0.45) * math.sin(-math.pi / 2 + k * math.pi / 5))
                  for k in range(10)]
    elif shape == "cross":
        w = radius * 0.35
        points = [(-w, -radius), (w, -radius), (w, -w), (radius, -w), (radius, w), (w, w), (w, radius),
                  (-w, radius), (-w, w), (-radius, w), (-radius, -w), (-w, -w)]
    else:
        raise ValueError(f"unknown shape {shape!r}; the world's shapes are {', '.join(SHAPES)}")
    c, s = math.cos(angle), math.sin(angle)
    return [(x * c - y * s, x * s + y * c) for x, y in points]


def draw(attrs: Attributes, rng: np.random.Generator) -> Image.Image:
    """A 64 x 64 RGB picture of `attrs`; its size (radius 14-22 px), place and a small turn come from `rng`."""
    radius = float(rng.uniform(14, 22))
    margin = radius + 2
    cx, cy = (float(rng.uniform(margin, SIZE - margin)) for _ in range(2))
    angle = float(rng.uniform(-0.25, 0.25))
    big = Image.new("RGB", (SIZE * _SCALE, SIZE * _SCALE), BACKGROUNDS[attrs.background])
    pen = ImageDraw.Draw(big)
    fill = COLOURS[attrs.colour]
    outline = _outline(attrs.shape, radius, angle)
    if outline is None:
        box = [(cx - radius) * _SCALE, (cy - radius) * _SCALE, (cx + radius) * _SCALE, (cy + radius) * _SCALE]
        pen.ellipse(box, fill=fill)
    else:
        pen.polygon([((cx + x) * _SCALE, (cy + y) * _SCALE) for x, y in outline], fill=fill)
    return big.reduce(_SCALE)


def draw_batch(attrs: Sequence[Attributes], rng: np.random.Generator) -> np.ndarray:
    """Pictures of each attribute set as one uint8 array (N, 64, 64, 3)."""
    return np.stack([np.asarray(draw(a, rng)) for a in attrs])
