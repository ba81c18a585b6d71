"""The conditioning gain: does the adapter use the image at all?

For each validation image we compute the denoising loss twice with the same noise, timesteps and
caption: once with the image's own CLIP features and once with another image's (a shuffle). If the
adapter learned to use the image, its own features predict the noise better. We report both losses
and their difference; no threshold is set, the figure is for the user to read.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..adapter.module import IPAdapter
from ..config import TrainConfig
from ..diffusion.backend import DiffusionBackend
from .batches import centre_view
from .encoding import EncodedDataset, Progress


def validation_calls(num_images: int, config: TrainConfig) -> int:
    """UNet calls `conditioning_gain` makes for a data set of `num_images` (0 when it is off or skipped)."""
    n = min(num_images, config.validation_max_images)
    return n * len(config.validation_timesteps) if config.validation and n >= 2 else 0


@torch.no_grad()
def noise_losses(adapter: IPAdapter, backend: DiffusionBackend, data: EncodedDataset, i: int,
                 features: torch.Tensor, t: int, noise: torch.Tensor, autocast=None) -> torch.Tensor:
    """The denoising loss of image `i` (its trained window and caption) noised to timestep `t` with `noise`, once per
    row of `features` (the CLIP features the adapter reads), in one batch: a tensor of one loss per row."""
    window, time_ids = centre_view(data, i)  # the trained window (the square, or the bucket), its time_ids
    latents = window.unsqueeze(0)
    rows = features.shape[0]
    text = data.text[data.text_index[i]].unsqueeze(0)
    added = {"time_ids": time_ids.unsqueeze(0)}  # one row: the back end broadcasts it over the batch
    if data.pooled is not None:
        added["pooled"] = data.pooled[data.text_index[i]].unsqueeze(0)
    a = backend.alphas_cumprod[t]
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    dev = backend.device
    with autocast() if autocast else torch.autocast(dev.type, enabled=False):
        tokens = adapter.project(features.to(dev))
        pred = backend.predict_noise(noisy.repeat(rows, 1, 1, 1).to(dev), torch.full((rows,), t, device=dev),
                                     text.repeat(rows, 1, 1).to(dev), tokens, added=added)
    target = noise.repeat(rows, 1, 1, 1).to(dev)
    return F.mse_loss(pred.float(), target, reduction="none").mean(dim=(1, 2, 3))


@torch.no_grad()
def conditioning_gain(adapter: IPAdapter, backend: DiffusionBackend, data: EncodedDataset,
                      config: TrainConfig, autocast=None, progress: Progress | None = None) -> dict[str, Any]:
    """Validation loss with each image's own features versus a shuffled image's features.

    `progress(done, total)` is called after each UNet call (one per image and timestep), so a UI can
    show validation as a phase of its own; it may raise `TrainingCancelled`.
    """
    n = min(len(data), config.validation_max_images)
    if n < 2:
        return {"own_loss": None, "shuffled_loss": None, "gain": None,
                "note": "needs at least 2 images to shuffle; skipped"}
    gen = torch.Generator().manual_seed(config.seed + 7919)  # fixed, independent of training draws
    own_total, shuffled_total, count = 0.0, 0.0, 0
    calls = n * len(config.validation_timesteps)
    for i in range(n):
        j = (i + 1) % n  # a derangement: never the image's own features
        for t in config.validation_timesteps:
            noise = torch.randn(centre_view(data, i)[0].unsqueeze(0).shape, generator=gen)
            losses = noise_losses(adapter, backend, data, i, torch.stack([data.features[i], data.features[j]]), t,
                                  noise, autocast)  # own and shuffled in one batch
            own_total += float(losses[0])
            shuffled_total += float(losses[1])
            count += 1
            if progress is not None:
                progress(count, calls)
    own, shuffled = own_total / count, shuffled_total / count
    return {"own_loss": own, "shuffled_loss": shuffled, "gain": shuffled - own,
            "relative_gain": (shuffled - own) / shuffled if shuffled else None,
            "images": n, "timesteps": list(config.validation_timesteps),
            "note": "positive gain = the adapter predicts noise better with the image's own embedding"}
