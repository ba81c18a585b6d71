"""`ImageFeatureEncoder` over a transformers `CLIPVisionModelWithProjection`.

Base adapters read the projected image embedding; plus adapters read the penultimate hidden
states. A dropped image (condition dropout) is a zero embedding for base and, for plus, the hidden
states of an all-zero pixel tensor after CLIP normalisation, as the reference recipe and diffusers do.
"""
from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image


class CLIPFeatureEncoder:
    """Frozen CLIP vision encoder with the 224 px OpenAI preprocessing (offline defaults)."""

    def __init__(self, model, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 name: str = "clip_vision") -> None:
        try:  # transformers 5 names the Pillow-only processor; it needs no torchvision
            from transformers import CLIPImageProcessorPil as CLIPImageProcessor
        except ImportError:
            from transformers import CLIPImageProcessor

        self.model = model.to(device, dtype).eval().requires_grad_(False)
        self.device, self.dtype, self.name = torch.device(device), dtype, name
        size = int(model.config.image_size)
        self.processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})

    def feature_width(self, variant: str) -> int:
        """Embedding width (base) or hidden width (plus)."""
        cfg = self.model.config
        return int(cfg.projection_dim if variant == "base" else cfg.hidden_size)

    @torch.no_grad()
    def _run(self, pixels: torch.Tensor, variant: str) -> torch.Tensor:
        out = self.model(pixel_values=pixels.to(self.device, self.dtype), output_hidden_states=(variant == "plus"))
        feats = out.image_embeds if variant == "base" else out.hidden_states[-2]
        return feats.float().cpu()

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """CLIP-normalised pixel values [B, 3, S, S]."""
        return self.processor(images=list(images), return_tensors="pt").pixel_values

    def encode(self, images: Sequence[Image.Image], variant: str) -> torch.Tensor:
        """[B, D] image embeddings (base) or [B, N, D] penultimate hidden states (plus)."""
        return self._run(self.pixels(images), variant)

    def dropped(self, variant: str) -> torch.Tensor:
        """Features of a dropped image, batch of one."""
        if variant == "base":
            return torch.zeros(1, self.feature_width("base"))
        size = int(self.model.config.image_size)
        return self._run(torch.zeros(1, 3, size, size), variant)
