"""The frozen parts of a Stable Diffusion model of any family, as the loaders hand them over.

    model = DiffusionModel(SDXL, unet, vae, [clip_l, clip_g], [tok_l, tok_g], scheduler_config, "sdxl.safetensors")

`text_encoders[i]` and `tokenizers[i]` follow `family.text_encoders[i]`. `text_encoder` / `tokenizer`
name the first pair, which is all an SD1.5 model has.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..families import ModelFamily


@dataclass
class DiffusionModel:
    """UNet, VAE, text encoders and tokenizers of one family, the noise schedule's config, and the source."""

    family: ModelFamily
    unet: Any  # diffusers UNet2DConditionModel
    vae: Any  # diffusers AutoencoderKL (None once released)
    text_encoders: list[Any]  # transformers CLIPTextModel / CLIPTextModelWithProjection, in family order
    tokenizers: list[Any]  # transformers CLIPTokenizer, one per text encoder
    scheduler_config: dict
    source: str
    random_weights: bool = False  # built here with random weights, or loaded from a file marked so
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def text_encoder(self) -> Any:
        """The first text encoder (SD1.5's only one)."""
        return self.text_encoders[0] if self.text_encoders else None

    @property
    def tokenizer(self) -> Any:
        """The first tokenizer."""
        return self.tokenizers[0] if self.tokenizers else None

    def frozen_parts(self) -> list[Any]:
        """Every model part still held: UNet, VAE, text encoders."""
        return [m for m in (self.unet, self.vae, *self.text_encoders) if m is not None]

    def release_encoders(self, keep_vae: bool = False) -> None:
        """Drop the VAE and the text encoders (training needs only the UNet once the images are encoded, and the
        VAE's decoder when it previews: `keep_vae`)."""
        if not keep_vae:
            self.vae = None
        self.text_encoders = [None] * len(self.text_encoders)
