"""The trainable IP-Adapter: an image projection plus `to_k_ip`/`to_v_ip` per cross-attention layer.

`IPAdapter.state_dict()` *is* the official file layout (`image_proj.*`, `ip_adapter.<n>.to_k_ip.weight`),
so saving and loading need no renaming. `AdapterSpec` describes an adapter's shape and can be read
back from any state dict in that layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import torch
from torch import nn

from .errors import IPAdapterError
from .families import FAMILIES, ModelFamily, family_of_adapter, family_of_width
from .layout import AdapterLayer
from .resampler import DEFAULT_DIM, HEAD_DIM, Resampler

Variant = Literal["base", "plus"]
VARIANTS = ("base", "plus")
DEFAULT_TOKENS = {"base": 4, "plus": 16}


def default_resampler_dim(cross_dim: int) -> int:
    """The Resampler width of a new plus adapter: the family's for that cross width, else `DEFAULT_DIM`."""
    family = family_of_width(cross_dim)
    return family.resampler_dim if family is not None else DEFAULT_DIM


@dataclass(frozen=True)
class AdapterSpec:
    """What an adapter file needs: variant, its image-encoder width, token count and layer widths."""

    variant: Variant
    clip_dim: int  # base: CLIP image-embedding width (after projection); plus: CLIP hidden width
    cross_dim: int  # the UNet's cross-attention width (768 for SD1.5)
    tokens: int
    layers: tuple[tuple[int, int], ...]  # (n, hidden) for each ip_adapter.<n>
    # plus: the Resampler's width (its heads are 64-d: width / 64 heads); None means the default for
    # cross_dim (`default_resampler_dim`), filled in on construction. base: always None.
    resampler_dim: int | None = None

    def __post_init__(self) -> None:
        if self.variant == "plus" and self.resampler_dim is None:
            # Filled in so that a spec built here equals the one read back from its file.
            object.__setattr__(self, "resampler_dim", default_resampler_dim(self.cross_dim))
        elif self.variant == "base" and self.resampler_dim is not None:
            raise IPAdapterError("A base adapter has no Resampler: leave resampler_dim unset.")

    @property
    def family(self) -> ModelFamily | None:
        """The model family the adapter's shapes belong to (`families.family_of_adapter`), or None."""
        return family_of_adapter(self)

    def check_fits(self, feature_width: int, encoder_name: str, cross_dim: int, layers: Sequence[AdapterLayer],
                   model_name: str, source: str = "The adapter", model_family: ModelFamily | None = None,
                   metadata: Mapping[str, str] | None = None, fix: str = "use {file} as the image encoder") -> None:
        """Raise IPAdapterError unless the adapter reads the encoder's features and fits the UNet.

        `feature_width` is what the encoder gives for this adapter's variant (`encoder_name` says which
        encoder), `cross_dim` and `layers` describe the UNet (`model_name`), `model_family` its family when
        the caller knows it (else it is read from `cross_dim` and the layer count). An adapter of another
        family is refused first, naming both families. A wrong image encoder is named, with the one the
        adapter was trained with (its `metadata` records it, else its width tells it) and `fix` (where to
        load `{file}`, the encoder that fits; `image_encoders.mismatch_sentence`). The CLI, generation and
        the nodes all check with this, before any work is spent.
        """
        from .image_encoders import mismatch_sentence

        self.check_family(model_family or family_of_width(cross_dim, len(layers)), model_name, source)
        if self.clip_dim != feature_width:
            raise IPAdapterError(mismatch_sentence(self.variant, self.clip_dim, metadata, feature_width,
                                                   encoder_name, source, fix))
        if self.cross_dim != cross_dim:
            widths = ", ".join(f"{f.label} is {f.cross_dim}" for f in FAMILIES.values())
            raise IPAdapterError(f"{source} is for a {self.cross_dim}-d cross-attention model, but {model_name} has "
                                 f"{cross_dim}-d cross-attention ({widths}): use the base model family the "
                                 "adapter was trained for.")
        self.check_layers(layers, model_name, source)

    def check_family(self, model_family: ModelFamily | None, model_name: str, source: str = "The adapter") -> None:
        """Raise IPAdapterError, naming both families, when the adapter is for another family than the model's
        (nothing is said when either family is unknown). Cheap: callers run it before loading a model."""
        ours = self.family
        if ours is None or model_family is None or ours == model_family:
            return
        from .adapter_check import article, family_phrase

        what = family_phrase(self.variant, len(self.layers), self.cross_dim)
        if len(self.layers) == ours.adapter_layer_count:  # else the phrase already gives the count
            what += f" ({len(self.layers)} cross-attention layers)"
        raise IPAdapterError(
            f"{source} is {what} and is for a {self.cross_dim}-d cross-attention model, but {model_name} is "
            f"{model_family.describe()}: use an adapter trained for {model_family.label}, or "
            f"{article(ours.label)} {ours.label} model.")

    def check_layers(self, layers: Sequence[AdapterLayer], model_name: str = "the model",
                     source: str = "The adapter") -> None:
        """Raise IPAdapterError unless the adapter has weights of the right width for every layer."""
        have = dict(self.layers)
        want = {layer.index: layer.hidden for layer in layers}
        if have != want:
            missing = sorted(set(want) - set(have))
            wrong = sorted(n for n in set(want) & set(have) if want[n] != have[n])
            raise IPAdapterError(
                f"{source} has {len(have)} layers that do not fit {model_name} ({len(want)} cross-attention layers; "
                f"missing indices {missing}, wrong widths at {wrong}): it was trained for another UNet.")

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], source: str = "The adapter") -> "AdapterSpec":
        """Infer the spec from a flat official-layout state dict; raise IPAdapterError if it is not a whole one.

        Every key and shape is checked (`adapter_check.check_adapter_state`); the weights' values are not:
        loading a file checks those too, with `check_adapter_state` itself.
        """
        from .adapter_check import check_adapter_state

        return check_adapter_state(sd, source, values=False)


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
