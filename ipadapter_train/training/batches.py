"""What each training step draws: its images, crops, flips, posterior samples, condition dropout, noise and
timesteps; and SDXL's size and crop conditioning (`time_ids`) of what it drew.

Every draw of step s comes from a generator seeded by (seed, s, rank), and the image order of an epoch
from (seed, epoch), so a run stopped and resumed at step s draws exactly what an uninterrupted run draws:
the step number is the whole random state a checkpoint needs.

With buckets (`training/buckets.py`) a batch holds images of one bucket, so an epoch is planned by bucket: each
bucket's images shuffled and cut into batches (a short last batch filled with that bucket's images, as the
plain order wraps), then the batches shuffled; the plan is a function of (seed, epoch) too. Steps per epoch
then add up per bucket, which is why the trainer counts its steps here (`total_steps`).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch

from ..config import TrainConfig
from ..seeds import seed_of
from .buckets import Bucket, image_buckets
from .encoding import EncodedDataset


def steps_per_epoch(config: TrainConfig, n: int, world: int = 1, buckets: Sequence[Bucket] | None = None) -> int:
    """Optimizer steps in one pass over `n` images; `buckets` is each image's bucket (None: square crops)."""
    if buckets is None:
        return config.steps_per_epoch(n, world)
    per_step = config.batch_size * world
    return sum(-(-count // per_step) for count in Counter(buckets).values())


def total_steps(config: TrainConfig, sizes: Sequence[tuple[int, int]], world: int = 1) -> int:
    """Steps in the whole run on images of these (width, height) sizes: max_steps if set, else epochs x steps
    per epoch (which, with buckets, depends on how many images each bucket holds)."""
    if config.max_steps is not None:
        return config.max_steps
    return config.epochs * steps_per_epoch(config, len(sizes), world, image_buckets(sizes, config))


def epoch_batches(config: TrainConfig, buckets: Sequence[Bucket], world: int, epoch: int) -> list[list[int]]:
    """An epoch's plan with buckets: the images of each step (batch_size x world of them, all of one bucket)."""
    gen = torch.Generator().manual_seed(seed_of(config.seed, epoch, 0xB0C7))
    per_step = config.batch_size * world
    members: dict[Bucket, list[int]] = {}
    for i, bucket in enumerate(buckets):
        members.setdefault(bucket, []).append(i)
    plan = []
    for bucket in sorted(members):  # a fixed order, so the draws below are the same on every run
        images = [members[bucket][j] for j in torch.randperm(len(members[bucket]), generator=gen).tolist()]
        for start in range(0, len(images), per_step):
            plan.append([images[(start + j) % len(images)] for j in range(per_step)])
    return [plan[j] for j in torch.randperm(len(plan), generator=gen).tolist()]


def batch_indices(step: int, n: int, config: TrainConfig, rank: int, world: int,
                  buckets: Sequence[Bucket] | None = None) -> list[int]:
    """This process's images for a step: a fresh permutation per epoch, wrapping so every rank gets a full batch.

    With `buckets` (each image's bucket) the epoch follows `epoch_batches`, and a rank's images share a bucket.
    """
    spe = steps_per_epoch(config, n, world, buckets)
    epoch, pos = divmod(step, spe)
    if buckets is not None:
        return epoch_batches(config, buckets, world, epoch)[pos][rank * config.batch_size:][:config.batch_size]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed_of(config.seed, epoch, 0xE90C))).tolist()
    start = pos * config.batch_size * world + rank * config.batch_size
    return [perm[(start + j) % n] for j in range(config.batch_size)]


def centre_view(data: EncodedDataset, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i's centre window of latent means [4, h, w] and its time_ids [6], unflipped (for validation)."""
    th, tw = data.target_size[i]
    mean = data.latent_mean[i]
    top, left = (mean.shape[-2] - th // 8) // 2, (mean.shape[-1] - tw // 8) // 2
    return mean[:, top:top + th // 8, left:left + tw // 8], _time_ids(data, i, False, top, left)


def _time_ids(data: EncodedDataset, i: int, flip: bool, top: int, left: int) -> torch.Tensor:
    """(original h, w, crop top, left, target h, w) in pixels: the crop in the resized (mirrored) image."""
    origin_top, origin_left = (data.flip_crop_origin if flip else data.crop_origin)[i]
    return torch.tensor([*data.original_size[i], origin_top + 8 * top, origin_left + 8 * left, *data.target_size[i]],
                        dtype=torch.float32)


def make_batch(data: EncodedDataset, indices: list[int], gen: torch.Generator, config: TrainConfig,
                alphas: torch.Tensor) -> dict[str, torch.Tensor]:
    """Latent window + flip + posterior sample + condition dropout + noise, all from `gen`; and time_ids.

    The window is each image's target size (the resolution square, or its bucket): centred, or anywhere
    in the encoded latents with random crops.
    """
    latents, feats, texts, pooled = [], [], [], []
    time_ids: list[torch.Tensor] = []
    dt, di, db = config.drop_text, config.drop_image, config.drop_both
    for i in indices:
        flip = config.flip and bool(torch.rand((), generator=gen) < 0.5)
        mean = data.flip_mean[i] if flip else data.latent_mean[i]
        std = data.flip_std[i] if flip else data.latent_std[i]
        h, w = mean.shape[-2:]
        size_h, size_w = (side // 8 for side in data.target_size[i])
        if config.random_crop:
            top = int(torch.randint(0, h - size_h + 1, (), generator=gen))
            left = int(torch.randint(0, w - size_w + 1, (), generator=gen))
        else:
            top, left = (h - size_h) // 2, (w - size_w) // 2
        window = (slice(None), slice(top, top + size_h), slice(left, left + size_w))
        latents.append(mean[window] + std[window] * torch.randn((mean.shape[0], size_h, size_w), generator=gen))
        time_ids.append(_time_ids(data, i, flip, top, left))
        r = float(torch.rand((), generator=gen))
        drop_text = r < dt or dt + di <= r < dt + di + db
        drop_image = dt <= r < dt + di + db
        f = data.flip_features[i] if flip else data.features[i]
        feats.append(data.dropped_features[0] if drop_image else f)
        texts.append(data.empty_text[0] if drop_text else data.text[data.text_index[i]])
        if data.pooled is not None:  # the family's UNet also takes the pooled text embedding (SDXL)
            pooled.append(data.empty_pooled[0] if drop_text else data.pooled[data.text_index[i]])
    x0 = torch.stack(latents)
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, len(alphas), (len(indices),), generator=gen)
    a = alphas[t].view(-1, 1, 1, 1)
    batch = {"noisy": a.sqrt() * x0 + (1 - a).sqrt() * noise, "noise": noise, "t": t,
             "text": torch.stack(texts), "feats": torch.stack(feats),
             # size/crop conditioning (original h, w, crop top, left, target h, w): families that take it read it
             "time_ids": torch.stack(time_ids)}
    if pooled:
        batch["pooled"] = torch.stack(pooled)
    return batch
