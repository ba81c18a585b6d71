"""The trainable IP-Adapter: an image projection plus `to_k_ip`/`to_v_ip` per cross-attention layer.

`IPAdapter.state_dict()` *is* the official file layout (`image_proj.*`, `ip_adapter.<n>.to_k_ip.weight`),
so saving and loading need no renaming. `adapter.spec.AdapterSpec` describes an adapter's shape.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..errors import IPAdapterError
from ..families import FAMILIES
from ..layout import AdapterLayer
from .resampler import HEAD_DIM, Resampler
from .spec import DEFAULT_TOKENS, VARIANTS, AdapterSpec, Variant


class IPLayer(nn.Module):
    """The two new projections of one cross-attention layer (no bias, as in the paper)."""

    def __init__(self, hidden: int, cross_dim: int) -> None:
        super().__init__()
        self.to_k_ip = nn.Linear(cross_dim, hidden, bias=False)
        self.to_v_ip = nn.Linear(cross_dim, hidden, bias=False)


class ImageProjection(nn.Module):
    """Base variant: CLIP image embedding [B, clip_dim] -> `tokens` tokens [B, tokens, cross_dim]."""

    def __init__(self, clip_dim: int, cross_dim: int, tokens: int) -> None:
        super().__init__()
        self.tokens, self.cross_dim = tokens, cross_dim
        self.proj = nn.Linear(clip_dim, tokens * cross_dim)
        self.norm = nn.LayerNorm(cross_dim)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(embeds).reshape(-1, self.tokens, self.cross_dim))


class IPAdapter(nn.Module):
    """Image projection + per-layer `to_k_ip`/`to_v_ip`; state dict = official file layout."""

    def __init__(self, spec: AdapterSpec) -> None:
        super().__init__()
        if spec.variant not in VARIANTS:
            raise IPAdapterError(f"Unknown adapter variant {spec.variant!r}: use one of {', '.join(VARIANTS)}.")
        self.spec = spec
        if spec.variant == "base":
            self.image_proj: nn.Module = ImageProjection(spec.clip_dim, spec.cross_dim, spec.tokens)
        else:
            width = spec.resampler_dim
            if width is None or width <= 0 or width % HEAD_DIM:
                raise IPAdapterError(f"A plus adapter's Resampler width must be a positive multiple of {HEAD_DIM} "
                                     f"(its heads are {HEAD_DIM}-d), not {width}: use "
                                     + " or ".join(f"{f.resampler_dim} ({f.label})" for f in FAMILIES.values()) + ".")
            self.image_proj = Resampler(embedding_dim=spec.clip_dim, output_dim=spec.cross_dim, dim=width,
                                        heads=width // HEAD_DIM, num_queries=spec.tokens)
        self.ip_adapter = nn.ModuleDict({str(n): IPLayer(hidden, spec.cross_dim) for n, hidden in spec.layers})

    @classmethod
    def new(cls, variant: Variant, clip_dim: int, cross_dim: int, layers: list[AdapterLayer],
            tokens: int | None = None, resampler_dim: int | None = None) -> "IPAdapter":
        """A fresh adapter for the given UNet layers (weights still random: see `init_from_unet`).

        `resampler_dim` (plus only): None is the family's width for `cross_dim` (`default_resampler_dim`).
        """
        spec = AdapterSpec(variant, clip_dim, cross_dim, tokens or DEFAULT_TOKENS[variant],
                           tuple((layer.index, layer.hidden) for layer in layers), resampler_dim)
        return cls(spec)

    def init_from_unet(self, to_k_to_v: Mapping[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Copy each layer's own `to_k`/`to_v` into `to_k_ip`/`to_v_ip`, as the training recipe does."""
        with torch.no_grad():
            for n, layer in self.ip_adapter.items():
                k, v = to_k_to_v[int(n)]
                layer.to_k_ip.weight.copy_(k)
                layer.to_v_ip.weight.copy_(v)

    def project(self, image_features: torch.Tensor) -> torch.Tensor:
        """CLIP features (embeds for base, hidden states for plus) -> image tokens [B, T, cross_dim]."""
        return self.image_proj(image_features)

    def layer(self, n: int) -> IPLayer:
        """The `to_k_ip`/`to_v_ip` pair of file index n."""
        return self.ip_adapter[str(n)]
