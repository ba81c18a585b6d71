"""Which CLIP image encoder an adapter was trained with, and which one a CLIP vision file is.

An adapter reads one encoder's features: a base adapter the projected image embedding, a plus adapter the
penultimate hidden states. The public encoders differ in both widths, so either width names the encoder:

| encoder | embedding (base) | hidden states (plus) | the file people have |
| --- | --- | --- | --- |
| OpenAI CLIP ViT-L/14 | 768 | 1024 | openai/clip-vit-large-patch14's vision tower |
| OpenCLIP ViT-H/14 | 1024 | 1280 | CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors (the public SD1.5 adapters') |
| OpenCLIP ViT-bigG/14 | 1280 | 1664 | CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors (ip-adapter_sdxl's) |

The widths come from `models.clip_vision.PRESETS`; note that 1024 is ViT-H's embedding but ViT-L's hidden width, so
the variant decides which row a width means. An adapter this package writes records its encoder in its
metadata (`encoder_metadata`); for any other file the encoder is inferred from the width. Everything here
reads headers only (no weights), so the CLI and the node pack refuse a mismatch before any big model loads.

    trained = adapter_encoder(spec.variant, spec.clip_dim, metadata)
    given = encoder_widths_of_file("CLIP-ViT-L-14.safetensors")      # (768, 1024)
    check_encoder(spec.variant, spec.clip_dim, metadata, given, "CLIP-ViT-L-14.safetensors", "my.safetensors",
                  fix="pass --image-encoder {file}")
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import IPAdapterError

# Adapter metadata keys this package writes (str values, as safetensors metadata must be).
ENCODER_KEY = "image_encoder_type"  # e.g. "OpenCLIP ViT-H/14"; absent when the widths name no known encoder
EMBEDDING_KEY = "image_embedding_dim"
HIDDEN_KEY = "image_hidden_dim"
ENCODER_FIX = "pass --image-encoder {file}"  # the CLI's way to give the encoder that fits


@dataclass(frozen=True)
class KnownEncoder:
    """A public CLIP image encoder: its name, its two widths and the file a user loads for it."""

    preset: str  # clip_vision.PRESETS key
    label: str  # "OpenCLIP ViT-H/14"
    embedding: int  # projected image embedding: what a base adapter reads
    hidden: int  # hidden states: what a plus adapter reads
    file: str  # what to load, in words a user can search for

    def width(self, variant: str) -> int:
        """The width an adapter of `variant` reads from this encoder."""
        return self.embedding if variant == "base" else self.hidden


def _known() -> tuple[KnownEncoder, ...]:
    from .clip_vision import PRESETS

    files = {"vit-l": ("OpenAI CLIP ViT-L/14", "the image encoder of openai/clip-vit-large-patch14"),
             "vit-h": ("OpenCLIP ViT-H/14", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"),
             "vit-bigg": ("OpenCLIP ViT-bigG/14", "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors")}
    return tuple(KnownEncoder(key, label, PRESETS[key]["projection_dim"], PRESETS[key]["hidden_size"], file)
                 for key, (label, file) in files.items())


ENCODERS: tuple[KnownEncoder, ...] = _known()


def encoder_of_width(variant: str, width: int) -> KnownEncoder | None:
    """The public encoder whose features an adapter of `variant` reads at `width`, or None."""
    return next((e for e in ENCODERS if e.width(variant) == width), None)


def encoder_metadata(embedding: int, hidden: int) -> dict[str, str]:
    """What a written adapter records about its image encoder: both widths, and its name when they name one."""
    meta = {EMBEDDING_KEY: str(embedding), HIDDEN_KEY: str(hidden)}
    known = next((e for e in ENCODERS if (e.embedding, e.hidden) == (embedding, hidden)), None)
    if known is not None:
        meta[ENCODER_KEY] = known.label
    return meta


def adapter_encoder(variant: str, clip_dim: int, metadata: Mapping[str, str] | None = None) -> KnownEncoder | None:
    """The encoder an adapter was trained with: as its metadata records it, else inferred from its width.

    A recorded name whose widths disagree with the adapter's tensors is ignored (the tensors decide).
    """
    recorded = (metadata or {}).get(ENCODER_KEY)
    for encoder in ENCODERS:
        if encoder.label == recorded and encoder.width(variant) == clip_dim:
            return encoder
    return encoder_of_width(variant, clip_dim)


def _features(variant: str) -> str:
    return "image embedding" if variant == "base" else "hidden states"


def _phrase(variant: str, width: int, encoder: KnownEncoder | None) -> str:
    if encoder is None:  # a width of no public encoder (a test model's): the width alone
        return f"{width}-d {'image embeddings' if variant == 'base' else 'hidden states'}"
    return f"{encoder.label} image features ({width}-d {_features(variant)})"


def mismatch_sentence(variant: str, clip_dim: int, metadata: Mapping[str, str] | None, given_width: int,
                      given_name: str, source: str = "The adapter", fix: str = "use {file} as the image encoder") -> str:
    """One sentence naming the encoder the adapter was trained with, the one given, and what fits.

    `fix` says where to put the right file; `{file}` in it becomes that file (or a description of it).
    """
    trained = adapter_encoder(variant, clip_dim, metadata)
    given = encoder_of_width(variant, given_width)
    wanted = trained.file if trained is not None else f"an image encoder with {_phrase(variant, clip_dim, None)}"
    return (f"{source} was trained with {_phrase(variant, clip_dim, trained)} but {given_name} gives "
            f"{_phrase(variant, given_width, given)}: {fix.format(file=wanted)}.")


def check_encoder(variant: str, clip_dim: int, metadata: Mapping[str, str] | None, given: tuple[int, int],
                  given_name: str, source: str = "The adapter", fix: str = "use {file} as the image encoder") -> None:
    """Raise IPAdapterError (the `mismatch_sentence`) unless the encoder's widths (embedding, hidden) fit."""
    width = given[0] if variant == "base" else given[1]
    if width != clip_dim:
        raise IPAdapterError(mismatch_sentence(variant, clip_dim, metadata, width, given_name, source, fix))


def encoder_widths_of_file(path: str | os.PathLike) -> tuple[int, int]:
    """(embedding, hidden) widths of a CLIP vision `.safetensors` file or transformers folder, from its header
    or config.json alone; IPAdapterError when it is not a CLIP vision model."""
    from ..storage.weights_io import WeightFile
    from .clip_vision import _folder_config, infer_clip_vision_config

    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise IPAdapterError(f"{path} has no config.json; it is not a transformers CLIP vision folder.")
        config = _folder_config(path)
    else:
        with WeightFile(path) as wf:
            config = infer_clip_vision_config(wf.shapes, source=str(path))
    return int(config.projection_dim), int(config.hidden_size)


def encoder_widths_of_shapes(shapes: Mapping[str, Any]) -> tuple[int, int] | None:
    """(embedding, hidden) of a CLIP vision state dict's shapes (`visual_projection.weight` is [embedding,
    hidden]), or None when it has no projection (not a CLIP vision model with one)."""
    shape = shapes.get("visual_projection.weight")
    shape = tuple(shape.shape) if hasattr(shape, "shape") else shape
    if not shape or len(shape) != 2:
        return None
    return int(shape[0]), int(shape[1])


def adapter_reads(shapes: Mapping[str, Any]) -> tuple[str, int] | None:
    """(variant, width of the features it reads) from an official-layout adapter's shapes, or None."""
    for key, variant in (("image_proj.proj.weight", "base"), ("image_proj.proj_in.weight", "plus")):
        shape = shapes.get(key)
        shape = tuple(shape.shape) if hasattr(shape, "shape") else shape
        if shape and len(shape) == 2:
            return variant, int(shape[1])
    return None

