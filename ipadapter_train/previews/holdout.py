"""Which training images a run keeps out of training to preview with, when no preview images are given.

A preview of an image the adapter trained on shows how well it memorised that image; one it never saw
shows what a user will get. So with at least `MIN_IMAGES_TO_HOLD_OUT` images, one (or two from
`TWO_FROM` on) is held out. The choice is a function of the seed and the image names alone, so a resumed
run holds out the same images and trains on the same set.
"""
from __future__ import annotations

import random
from typing import Sequence

from ..storage.data import Sample

MIN_IMAGES_TO_HOLD_OUT = 5  # fewer images than this: all train, and previews use training images
TWO_FROM = 10


def holdout_count(num_images: int) -> int:
    """How many of `num_images` are held out: 0 below 5, 1 up to 9, 2 from 10."""
    if num_images < MIN_IMAGES_TO_HOLD_OUT:
        return 0
    return 1 if num_images < TWO_FROM else 2


def split_holdout(samples: Sequence[Sample], seed: int) -> tuple[list[Sample], list[Sample]]:
    """(training samples, held-out samples), both in their original order."""
    count = holdout_count(len(samples))
    names = sorted(str(s.path) for s in samples)  # the draw depends on the set, not on the listing order
    held_names = set(random.Random(f"holdout:{seed}").sample(names, count)) if count else set()
    held = [s for s in samples if str(s.path) in held_names]
    return [s for s in samples if str(s.path) not in held_names], held
