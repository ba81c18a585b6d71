"""`ImageFeatureEncoder` over a transformers `CLIPVisionModelWithProjection`.

Base adapters read the projected image embedding; plus adapters read the penultimate hidden states.
The encoding itself lives in `models/clip_vision.py`; this class fixes device, dtype and which output to use.
"""
from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from .clip_vision import encode_images, zero_image_features


class CLIPFeatureEncoder:
    """A frozen CLIP vision encoder seen as the training loop's `ImageFeatureEncoder`."""

    def __init__(self, model, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 name: str = "clip_vision") -> None:
        self.model = model.to(device, dtype).eval().requires_grad_(False)
        self.device, self.dtype, self.name = torch.device(device), dtype, name

    def feature_width(self, variant: str) -> int:
        """Embedding width (base) or hidden width (plus)."""
        cfg = self.model.config
        return int(cfg.projection_dim if variant == "base" else cfg.hidden_size)

    def encode(self, images: Sequence[Image.Image], variant: str) -> torch.Tensor:
        """[B, D] image embeddings (base) or [B, N, D] penultimate hidden states (plus), float32 on CPU."""
        embeds, hidden = encode_images(self.model, list(images), self.device, self.dtype)
        return (embeds if variant == "base" else hidden).float().cpu()

    def dropped(self, variant: str) -> torch.Tensor:
        """Features of a dropped image, batch of one."""
        return zero_image_features(self.model, variant, 1, self.device, self.dtype).float().cpu()
