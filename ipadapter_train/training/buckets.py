"""Aspect-ratio buckets: train each image at its own shape instead of a square crop.

A bucket is a (width, height) of about resolution^2 pixels, sides multiples of `BUCKET_STEP`, never
more pixels than resolution^2 and never longer than `MAX_BUCKET_ASPECT` times its short side. Each
image goes to the bucket whose aspect ratio is nearest its own (compared as log ratios, so 2:1 and 1:2
are equally far from square); it is resized to cover that bucket and trains on the bucket's window of
its latents, so only the small remainder between its ratio and the bucket's is cut away. Images of one
bucket can share a batch (`training/batches.py` plans the batches).

At 1024 px the table holds SDXL's usual training sizes (1024x1024, 1152x896, 1216x832, 1344x768,
1408x704 and their transposes); at 512 px, 512x512, 576x448, 640x384, 640x320 and theirs.
"""
from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Sequence

from ..config import TrainConfig

BUCKET_STEP = 64  # sides are multiples of this: the latent grid (8) times the UNet's downsampling (up to 8)
MAX_BUCKET_ASPECT = 2  # the same bound as the square mode's crop (encoding.MAX_ASPECT)

Bucket = tuple[int, int]  # (width, height) in pixels


@functools.lru_cache(maxsize=16)
def bucket_table(resolution: int) -> tuple[Bucket, ...]:
    """Every bucket for `resolution`, from the tallest to the widest.

    For each width, the tallest height that keeps the area within resolution^2 (clamped to twice the
    width), then the transposes; of buckets with the same aspect ratio only the largest is kept.
    """
    area = resolution * resolution
    found: dict[tuple[int, int], Bucket] = {}  # reduced ratio -> largest bucket of that ratio

    def add(w: int, h: int) -> None:
        if w < BUCKET_STEP or h < BUCKET_STEP or max(w, h) > MAX_BUCKET_ASPECT * min(w, h) or w * h > area:
            return
        g = math.gcd(w, h)
        key = (w // g, h // g)
        if key not in found or w * h > found[key][0] * found[key][1]:
            found[key] = (w, h)

    width = BUCKET_STEP
    while width * BUCKET_STEP <= area:
        height = min(area // width // BUCKET_STEP * BUCKET_STEP, MAX_BUCKET_ASPECT * width)
        add(width, height)
        add(height, width)
        width += BUCKET_STEP
    side = resolution // BUCKET_STEP * BUCKET_STEP  # the square, even where no width above reaches it
    add(side, side)
    if not found:
        raise ValueError(f"resolution {resolution} is below the smallest bucket ({BUCKET_STEP}x{BUCKET_STEP})")
    return tuple(sorted(found.values(), key=lambda b: b[0] / b[1]))


def nearest_bucket(width: int, height: int, resolution: int) -> Bucket:
    """The bucket for a `width` x `height` image: the nearest aspect ratio; of equally near ones the larger."""
    ratio = math.log(width / height)
    return min(bucket_table(resolution), key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1], b[0]))


def image_buckets(sizes: Sequence[tuple[int, int]], config: TrainConfig) -> list[Bucket] | None:
    """The bucket of each image (sizes as (width, height)), or None when the run trains square crops."""
    if not config.buckets:
        return None
    return [nearest_bucket(w, h, config.resolution) for w, h in sizes]


def bucket_counts(buckets: Sequence[Bucket]) -> dict[str, int]:
    """Images per bucket, as {"640x320": 2, "512x512": 3}, widest first (for the report)."""
    counts = Counter(buckets)
    return {f"{w}x{h}": counts[(w, h)] for w, h in sorted(counts, key=lambda b: (-b[0] / b[1], -b[0]))}
