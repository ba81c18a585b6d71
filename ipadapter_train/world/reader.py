"""Reading a picture's attributes back: its colour and background from pixels, its shape by a small classifier.

The classifier is trained on drawn pictures (stage 4 of the build) and ships with the world; its accuracy on
real world pictures is recorded in world.json. `read` is what every learned-world figure counts with.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import pictures, to_unit
from .domain import SHAPES, Attributes
from .optim import descend, optimiser
from .pixels import read_background, read_colour
from .recipe import Recipe


class ShapeReader(nn.Module):
    """Three strided convolutions and a linear layer: a 64 px picture -> scores for the world's shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.SiLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.SiLU(), nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.SiLU())
        self.head = nn.Linear(64, len(SHAPES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape scores for a batch in [-1, 1] (N x 3 x 64 x 64)."""
        return self.head(self.features(x).mean(dim=(2, 3)))


def train_reader(recipe: Recipe, progress=None) -> ShapeReader:
    """Train the shape classifier on drawn pictures; returns it in eval mode."""
    torch.manual_seed(recipe.seed + 4)
    rng = np.random.default_rng([recipe.seed, 4])
    reader = ShapeReader()
    stage = recipe.reader
    opt, sched = optimiser(reader.parameters(), stage)
    for step in range(stage.steps):
        batch, attrs = pictures(rng, stage.batch)
        target = torch.tensor([SHAPES.index(a.shape) for a in attrs])
        loss = F.cross_entropy(reader(to_unit(batch)), target)
        value = descend(loss, opt, sched)
        if progress:
            progress("reader", step + 1, stage.steps, value)
    return reader.eval().requires_grad_(False)


@torch.no_grad()
def read(reader: ShapeReader, batch: np.ndarray) -> list[dict[str, str | None]]:
    """The attributes of each picture (uint8 N x 64 x 64 x 3): shape, colour (None: nothing stands out), background."""
    shapes = reader(to_unit(batch)).argmax(1).tolist() if len(batch) else []
    return [{"shape": SHAPES[s], "colour": read_colour(p), "background": read_background(p)}
            for s, p in zip(shapes, batch)]


def accuracy(found: Sequence[dict], truth: Sequence[Attributes]) -> dict[str, float]:
    """Per attribute, the share of pictures read as what they are."""
    names = ("shape", "colour", "background")
    return {n: float(np.mean([f[n] == t.value(n) for f, t in zip(found, truth)])) for n in names}


def reader_accuracy(reader: ShapeReader, recipe: Recipe) -> dict[str, float]:
    """The reader on `recipe.eval_pictures` fresh drawn pictures (a generator of their own)."""
    batch, attrs = pictures(np.random.default_rng([recipe.seed, 8]), recipe.eval_pictures)
    return accuracy(read(reader, batch), attrs)


def save_reader(reader: ShapeReader, path: Path) -> Path:
    """Write the classifier as a safetensors file (atomically)."""
    from ..storage.weights_io import save_safetensors_atomic

    return save_safetensors_atomic({k: v.contiguous() for k, v in reader.state_dict().items()}, path,
                                   metadata={"format": "pt"})


def load_reader(path: Path) -> ShapeReader:
    """Read a classifier written by `save_reader` (safetensors: no pickle runs)."""
    from ..storage.weights_io import read_safetensors

    reader = ShapeReader()
    reader.load_state_dict(read_safetensors(path)[0])
    return reader.eval().requires_grad_(False)
