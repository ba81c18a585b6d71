"""What each training step draws: its images, crops, flips, posterior samples, condition dropout, noise and
timesteps.

Every draw of step s comes from a generator seeded by (seed, s, rank), and the image order of an epoch
from (seed, epoch), so a run stopped and resumed at step s draws exactly what an uninterrupted run draws:
the step number is the whole random state a checkpoint needs.
"""
from __future__ import annotations

import torch

from .config import TrainConfig
from .encoding import EncodedDataset


def seed_of(*parts: int) -> int:
    """Mix integers into one 63-bit seed (stable across runs and machines)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


def batch_indices(step: int, n: int, config: TrainConfig, rank: int, world: int) -> list[int]:
    """This process's images for a step: a fresh permutation per epoch, wrapping so every rank gets a full batch."""
    spe = config.steps_per_epoch(n, world)
    epoch, pos = divmod(step, spe)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed_of(config.seed, epoch, 0xE90C))).tolist()
    start = pos * config.batch_size * world + rank * config.batch_size
    return [perm[(start + j) % n] for j in range(config.batch_size)]


def make_batch(data: EncodedDataset, indices: list[int], gen: torch.Generator, config: TrainConfig,
                alphas: torch.Tensor) -> dict[str, torch.Tensor]:
    """Latent crop + flip + posterior sample + condition dropout + noise, all from `gen`."""
    size = config.resolution // 8
    latents, feats, texts, pooled = [], [], [], []
    dt, di, db = config.drop_text, config.drop_image, config.drop_both
    for i in indices:
        flip = config.flip and bool(torch.rand((), generator=gen) < 0.5)
        mean = data.flip_mean[i] if flip else data.latent_mean[i]
        std = data.flip_std[i] if flip else data.latent_std[i]
        h, w = mean.shape[-2:]
        if config.random_crop:
            top = int(torch.randint(0, h - size + 1, (), generator=gen))
            left = int(torch.randint(0, w - size + 1, (), generator=gen))
        else:
            top, left = (h - size) // 2, (w - size) // 2
        window = (slice(None), slice(top, top + size), slice(left, left + size))
        latents.append(mean[window] + std[window] * torch.randn((4, size, size), generator=gen))
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
    px = size * 8
    batch = {"noisy": a.sqrt() * x0 + (1 - a).sqrt() * noise, "noise": noise, "t": t,
             "text": torch.stack(texts), "feats": torch.stack(feats),
             # size/crop conditioning (original h, w, crop top, left, target h, w) for families that take it
             "time_ids": torch.tensor([[px, px, 0, 0, px, px]] * len(indices), dtype=torch.float32)}
    if pooled:
        batch["pooled"] = torch.stack(pooled)
    return batch
