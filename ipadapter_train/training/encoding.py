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

With buckets (`training/buckets.py`) the same bounded part is resized to cover its bucket instead, and a step takes
the bucket's window of the latents; random crops then move only within the small remainder.

SDXL conditions on where each training crop came from, so the geometry is kept per image: the raw
size, where the encoded pixels lie in the whole image resized the same way (for the plain and the mirrored
view), and the trained size. `training.batches.make_batch` adds the latent window's offset to make `time_ids`.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from ..config import TrainConfig
from ..diffusion.backend import DiffusionBackend, ImageFeatureEncoder
from ..storage.data import Sample
from ..storage.image_ops import aspect_box, hflip, resize_short_side, resize_to_cover, to_tensor
from .buckets import Bucket, nearest_bucket

log = logging.getLogger(__name__)

MAX_ASPECT = 2  # the long side encoded is at most this many times the short side (see the module docstring)

Progress = Callable[[int, int], None]


@dataclass
class EncodedDataset:
    """Everything a training step reads, on CPU, float32."""

    latent_mean: list[torch.Tensor]  # per image [4, h, w], at least target_size / 8 (see EncodedView)
    latent_std: list[torch.Tensor]
    flip_mean: list[torch.Tensor] | None
    flip_std: list[torch.Tensor] | None
    # SDXL's size and crop conditioning, per image, in pixels, as (height, width) / (top, left):
    original_size: list[tuple[int, int]]  # the raw image
    crop_origin: list[tuple[int, int]]  # where the encoded pixels start in the whole image, resized alike
    flip_crop_origin: list[tuple[int, int]] | None  # the same in the mirrored image
    target_size: list[tuple[int, int]]  # what a step trains on: the resolution square, or the bucket
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


@dataclass(frozen=True)
class EncodedView:
    """What the VAE encodes from one image, and where it lies in the image (see the module docstring)."""

    image: Image.Image | None
    original: tuple[int, int]  # (height, width) of the raw image
    origin: tuple[int, int]  # (top, left) of `image` in the whole raw image resized by the same scale
    flip_origin: tuple[int, int]  # the same for the mirrored image
    target: tuple[int, int]  # (height, width) a step trains on; `image` covers it


def encoded_view(image: Image.Image, resolution: int) -> Image.Image:
    """The part of an image the VAE encodes without buckets: at most `MAX_ASPECT`:1, centred, short side
    `resolution`."""
    return prepare_view(image, resolution).image


def prepare_view(image: Image.Image, resolution: int, bucket: Bucket | None = None) -> EncodedView:
    """The part of an image the VAE encodes, and its geometry: at most `MAX_ASPECT`:1, centred, then short
    side `resolution`, or, with a (width, height) `bucket`, resized to cover the bucket.

    Cropped before the resize, so the resize too costs no more for a panorama than for a 2:1 photo.
    """
    width, height = image.size
    left, top, right, bottom = aspect_box(width, height, MAX_ASPECT)
    capped = image if (right - left, bottom - top) == (width, height) else image.crop((left, top, right, bottom))
    if bucket is None:
        resized, target = resize_short_side(capped, resolution), (resolution, resolution)
    else:
        resized, target = resize_to_cover(capped, *bucket), (bucket[1], bucket[0])
    sx, sy = resized.width / capped.width, resized.height / capped.height
    return EncodedView(resized, (height, width), (round(top * sy), round(left * sx)),
                       (round(top * sy), round((width - right) * sx)), target)


def encode_dataset(samples: Sequence[Sample], backend: DiffusionBackend, encoder: ImageFeatureEncoder,
                   config: TrainConfig, progress: Progress | None = None,
                   features: torch.Tensor | None = None) -> EncodedDataset:
    """Encode every sample once; `progress(done, total)` is called after each image. `features`: the samples' CLIP
    features when the caller already has them (one row per sample, no flips): the image encoder is not run again."""
    if features is not None and (config.flip or len(features) != len(samples)):
        raise ValueError("encode_dataset: given features need one row per sample and no flips")
    flips = config.flip
    means, stds, fmeans, fstds, feats, ffeats = [], [], [], [], [], []
    geometry: list[EncodedView] = []  # without their images, which are not kept
    total = len(samples)
    for i, sample in enumerate(samples):
        bucket = nearest_bucket(*sample.image.size, config.resolution) if config.buckets else None
        view = prepare_view(sample.image, config.resolution, bucket)
        image = view.image
        geometry.append(dataclasses.replace(view, image=None))
        views = [image, hflip(image)] if flips else [image]
        mean, std = backend.encode_latents(torch.stack([to_tensor(v) for v in views]))
        means.append(mean[0])
        stds.append(std[0])
        if flips:
            fmeans.append(mean[1])
            fstds.append(std[1])
        clip_views = [sample.image, hflip(sample.image)] if flips else [sample.image]
        f = encoder.encode(clip_views, config.variant) if features is None else features[i:i + 1]
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
        original_size=[g.original for g in geometry], crop_origin=[g.origin for g in geometry],
        flip_crop_origin=[g.flip_origin for g in geometry] if flips else None,
        target_size=[g.target for g in geometry],
        features=torch.stack(feats), flip_features=torch.stack(ffeats) if flips else None,
        text=text["context"], text_index=[row[c] for c in captions],
        empty_text=empty["context"],
        dropped_features=encoder.dropped(config.variant),
        captions=captions,
        pooled=text.get("pooled"), empty_pooled=empty.get("pooled"),
    )
