"""The seam between the training loop and a diffusion model.

The loop never touches a UNet directly: it encodes once through a `DiffusionBackend` and an
`ImageFeatureEncoder`, then asks the backend to predict noise with image tokens patched in. The
diffusers back end lives in `diffusion/diffusers_backend.py`; the node pack gives the same loop a ComfyUI one.
"""
from __future__ import annotations

from typing import Mapping, Protocol, Sequence

import torch
from PIL import Image

from ..adapter.module import IPAdapter
from ..families import ModelFamily
from ..layout import AdapterLayer

# What `encode_text` returns: "context" [B, 77, cross_dim] always, "pooled" [B, P] for families whose UNet takes a
# pooled text embedding (SDXL). `predict_noise` takes "pooled" and "time_ids" [B, 6] as `added` for such families.
TextEmbeddings = dict[str, torch.Tensor]


class DiffusionBackend(Protocol):
    """A frozen diffusion model of some family (`families.py`) that the adapter trains against."""

    family: ModelFamily  # what the model is: layout, conditioning, defaults
    name: str  # what the adapter metadata records as base model
    device: torch.device
    dtype: torch.dtype  # dtype of the frozen weights
    cross_dim: int  # the UNet's cross-attention width (768 for SD1.5)
    alphas_cumprod: torch.Tensor  # [num_train_timesteps] float32 noise schedule

    def adapter_layers(self) -> list[AdapterLayer]:
        """The cross-attention layers in file order."""

    def base_kv(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's own to_k / to_v weights by file index, for initialising a new adapter."""

    def attach(self, adapter: IPAdapter) -> None:
        """Route every cross-attention layer through the adapter's to_k_ip / to_v_ip."""

    def detach(self) -> None:
        """Undo `attach`, leaving the model as it was."""

    def encode_latents(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels [B,3,H,W] in [-1,1] -> scaled latent mean and std [B,4,H/8,W/8] (float32, CPU)."""

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents [B,4,h,w] (as `encode_latents` gives them) -> pixels [B,3,H,W] in [-1,1], float32 on CPU
        (for previews)."""

    def encode_text(self, captions: Sequence[str]) -> TextEmbeddings:
        """Captions -> {"context": [B, 77, cross_dim], and "pooled": [B, P] when the family has one} (float32, CPU)."""

    def predict_noise(self, noisy: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor,
                      ip_tokens: torch.Tensor | None, scale: float = 1.0,
                      added: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Epsilon prediction with the image tokens applied at `scale` (None = adapter off).

        `text` is the context; `added` holds "pooled" and "time_ids" for families that condition on them.
        """

    def enable_gradient_checkpointing(self) -> None:
        """Trade compute for memory in the frozen UNet's backward."""


class ImageFeatureEncoder(Protocol):
    """The frozen CLIP vision model that conditions the adapter."""

    name: str

    def feature_width(self, variant: str) -> int:
        """Width the adapter's image projection reads (embedding dim for base, hidden for plus)."""

    def encode(self, images: Sequence[Image.Image], variant: str) -> torch.Tensor:
        """RGB images -> features [B, D] (base) or [B, N, D] (plus), float32 on CPU."""

    def dropped(self, variant: str) -> torch.Tensor:
        """The features of a dropped image (condition dropout), batch of one."""
