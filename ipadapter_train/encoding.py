"""Run the frozen encoders once per image, before training: VAE latents (flipped too when flips
are on), CLIP image features and text embeddings. The training step never calls an encoder.

Random crops are taken in latent space: each image is resized so its short side is the training
resolution and encoded, and a step crops a `resolution / 8` window of the latents. This keeps the
encode-once guarantee with random crops; the CLIP features come from the whole image, as in the
reference recipe (which feeds the raw image to CLIP, not the training crop).

What is encoded is bounded: an image wider (or taller) than `MAX_ASPECT`:1 is first centre-cropped
to that ratio, so the VAE never sees more than `MAX_ASPECT` squares of the training resolution.
The VAE's memory grows with the pixels it encodes, so without the bound one 6000x600 panorama at
512 px needed over 9 GB, three times a square photo; with it, peak memory no longer depends on an
image's aspect ratio. Random crops keep their full range on every usual photo (4:3, 3:2, 16:9 and 2:1
are all within the bound); a panorama trains on its central 2:1 part.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from collections.abc import Callable, Sequence

import torch
from PIL import Image

from .backend import DiffusionBackend, ImageFeatureEncoder
from .config import TrainConfig
from .data import Sample
from .image_ops import hflip, limit_aspect, resize_short_side, to_tensor

log = logging.getLogger(__name__)

MAX_ASPECT = 2  # the long side encoded is at most this many times the short side (see the module docstring)

Progress = Callable[[int, int], None]


@dataclass
class EncodedDataset:
    """Everything a training step reads, on CPU, float32."""

    latent_mean: list[torch.Tensor]  # per image [4, h, w]; h or w equals resolution / 8
    latent_std: list[torch.Tensor]
    flip_mean: list[torch.Tensor] | None
    flip_std: list[torch.Tensor] | None
    features: torch.Tensor  # [N, D] (base) or [N, L, D] (plus)
    flip_features: torch.Tensor | None
    text: torch.Tensor  # [U, 77, cross_dim], one row per distinct caption
    text_index: list[int]  # image i uses text[text_index[i]]
    empty_text: torch.Tensor  # [1, 77, cross_dim]: the caption "" for text dropout
    dropped_features: torch.Tensor  # [1, ...]: features of a dropped image
    captions: list[str]
    pooled: torch.Tensor | None = None  # [U, P]: pooled text embeddings, for families whose UNet takes them
    empty_pooled: torch.Tensor | None = None  # [1, P]: the pooled embedding of ""

    def __len__(self) -> int:
        return len(self.latent_mean)


def encoded_view(image: Image.Image, resolution: int) -> Image.Image:
    """The part of an image the VAE encodes: at most `MAX_ASPECT`:1, centred, short side `resolution`.

    Cropped before the resize, so the resize too costs no more for a panorama than for a 2:1 photo.
    """
    return resize_short_side(limit_aspect(image, MAX_ASPECT), resolution)


def encode_dataset(samples: Sequence[Sample], backend: DiffusionBackend, encoder: ImageFeatureEncoder,
                   config: TrainConfig, progress: Progress | None = None) -> EncodedDataset:
    """Encode every sample once; `progress(done, total)` is called after each image."""
    flips = config.flip
    means, stds, fmeans, fstds, feats, ffeats = [], [], [], [], [], []
    total = len(samples)
    for i, sample in enumerate(samples):
        image = encoded_view(sample.image, config.resolution)
        views = [image, hflip(image)] if flips else [image]
        mean, std = backend.encode_latents(torch.stack([to_tensor(v) for v in views]))
        means.append(mean[0])
        stds.append(std[0])
        if flips:
            fmeans.append(mean[1])
            fstds.append(std[1])
        clip_views = [sample.image, hflip(sample.image)] if flips else [sample.image]
        f = encoder.encode(clip_views, config.variant)
        feats.append(f[0])
        if flips:
            ffeats.append(f[1])
        if progress:
            progress(i + 1, total)
    captions = [s.caption for s in samples]
    distinct = sorted(set(captions))
    text = backend.encode_text(distinct)
    empty = backend.encode_text([""])
    row = {c: i for i, c in enumerate(distinct)}
    log.info("Encoded %d images and %d distinct captions once; training never runs the encoders again.",
             total, len(distinct))
    return EncodedDataset(
        latent_mean=means, latent_std=stds,
        flip_mean=fmeans if flips else None, flip_std=fstds if flips else None,
        features=torch.stack(feats), flip_features=torch.stack(ffeats) if flips else None,
        text=text["context"], text_index=[row[c] for c in captions],
        empty_text=empty["context"],
        dropped_features=encoder.dropped(config.variant),
        captions=captions,
        pooled=text.get("pooled"), empty_pooled=empty.get("pooled"),
    )
