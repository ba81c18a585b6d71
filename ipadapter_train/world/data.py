"""Batches of world pictures for the stages: drawn from a seeded generator, as tensors each model reads.

`to_unit` is what the VAE reads ([-1, 1]); `to_clip` is exactly what `models.clip_vision.encode_images` feeds
a 64 px CLIP (the processor's rescale and CLIP's mean and std; no resize at 64 px), so the world's CLIP is
trained on the inputs it will be given.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .domain import ATTRIBUTES, Attributes, caption, choices, draw_batch, sample_attributes



def pictures(rng: np.random.Generator, n: int, **fixed: str) -> tuple[np.ndarray, list[Attributes]]:
    """`n` pictures (uint8, N x 64 x 64 x 3) and their attributes, uniform except those `fixed`."""
    attrs = [sample_attributes(rng, **fixed) for _ in range(n)]
    return draw_batch(attrs, rng), attrs


def to_unit(batch: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x H x W in [-1, 1]."""
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_clip(batch: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x 3 -> CLIP's normalised float N x 3 x H x W."""
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255.0)
    return (x - torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)


def from_unit(images: torch.Tensor) -> np.ndarray:
    """float N x 3 x H x W in [-1, 1] -> uint8 N x H x W x 3 (what a decoder gives back, as pictures)."""
    return images.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).numpy()


def named_subset(rng: np.random.Generator, full: float) -> tuple[str, ...]:
    """The attributes a training caption names: all of them with probability `full`, else each one by a coin."""
    if rng.random() < full:
        return ATTRIBUTES
    return tuple(a for a in ATTRIBUTES if rng.random() < 0.5)


def captions(attrs: Sequence[Attributes], rng: np.random.Generator, full: float) -> tuple[list[str], list[tuple]]:
    """A caption per picture naming a random subset of its attributes (see `named_subset`), and the subsets."""
    subsets = [named_subset(rng, full) for _ in attrs]
    return [caption(a, s) for a, s in zip(attrs, subsets)], subsets


def compatible(attrs: Sequence[Attributes], named: Sequence[Sequence[str]], said: Sequence[Attributes]) -> torch.Tensor:
    """M[i, j] = 1 when caption j (naming `named[j]` of `said[j]`) is true of picture i: the positives of CLIP's
    contrastive loss (a batch holds many pictures a caption fits)."""
    fits = torch.ones(len(attrs), len(said))
    for name in ATTRIBUTES:
        values = choices(name)
        pictures_have = torch.tensor([values.index(a.value(name)) for a in attrs])
        captions_say = torch.tensor([values.index(s.value(name)) for s in said])
        names_it = torch.tensor([name in n for n in named])
        fits *= ((pictures_have[:, None] == captions_say[None, :]) | ~names_it[None, :]).float()
    return fits
