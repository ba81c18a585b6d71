"""Model families as data: everything the package knows about SD1.5 and SDXL, in one table.

A family says how its UNet is laid out (the adapter's layer table is computed from the family's
shipped UNet config, `layout.adapter_layers`), how wide its cross-attention is, which text encoders
condition it and how their outputs become the UNet's inputs, whether it takes SDXL's size and crop
conditioning, its default resolution, and the adapter file's facts (layer count, Resampler width).
The loop, the file format, the nodes and generation read the entry; none of them branches on a
family's name. A third family (SD2.x, say) is a new entry here, a loader and tests.

    family = family_of_unet_config(unet.config)      # from a model
    family = family_of_width(spec.cross_dim, len(spec.layers))  # from an adapter file's shapes
    FAMILIES["sdxl"].adapter_layers()                 # the 70-entry key table
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .errors import IPAdapterError

if TYPE_CHECKING:
    from .layout import AdapterLayer

ASSETS = Path(__file__).resolve().parent / "assets"


@dataclass(frozen=True)
class TextEncoder:
    """One text encoder of a family and how its output enters the UNet."""

    subfolder: str  # diffusers folder name, also the shipped config's folder: "text_encoder", "text_encoder_2"
    checkpoint_prefix: str  # where a single-file checkpoint keeps it (original layout)
    checkpoint_layout: str  # "hf": transformers names under the prefix; "open_clip": OpenCLIP's names
    width: int  # hidden size; the family's context is the encoders' widths side by side
    # Which hidden state is the context: None = the last one after the final layer norm (SD1.5);
    # -2 = the penultimate one, no final norm (SDXL, both encoders).
    hidden_state: int | None
    pooled: bool = False  # its projected pooled embedding is the UNet's `text_embeds` (SDXL's bigG)
    pad_token: str | None = None  # tokenizer pad override: bigG pads with "!" (id 0), CLIP-L with end-of-text

    @property
    def tokenizer_subfolder(self) -> str:
        """Its tokenizer's diffusers folder (and pipeline argument) name: "tokenizer", "tokenizer_2"."""
        return self.subfolder.replace("text_encoder", "tokenizer")


@dataclass(frozen=True)
class ModelFamily:
    """One model family: its layout, conditioning, defaults and adapter file facts."""

    name: str  # recorded in adapter metadata and reports: "sd15", "sdxl"
    label: str  # for people: "SD1.5", "SDXL"
    assets: str  # folder under assets/ with the diffusers configs that ship with the package
    cross_dim: int  # cross-attention (context) width
    adapter_layer_count: int  # cross-attention layers of the official adapter file
    default_resolution: int
    text_encoders: tuple[TextEncoder, ...]
    size_conditioning: bool  # the UNet takes time_ids (original size, crop top-left, target size)
    resampler_dim: int  # "plus" adapters: the Resampler's width (heads of 64 dims: dim / 64 heads)
    addition_embed_type: str | None  # the diffusers UNet config's marker of the extra conditioning
    adm_channels: int  # ComfyUI's adm_in_channels for this family (0: none)
    pipeline: str  # the diffusers pipeline class that generates with it
    public_adapters: str  # the public files a small data set should fine-tune (--init-adapter), in words
    comfyui: bool = True  # ComfyUI loads its checkpoints (the learned world's widths are this project's own)
    figures_note: str | None = None  # what every figure of a run on this family must say about itself
    figures_label: str | None = None  # the same in a few words, after a score: "learned-world figures"

    def config_dir(self) -> Path:
        """The shipped diffusers configs (model_index.json, unet/, vae/, text encoders, scheduler/)."""
        return ASSETS / self.assets

    def config(self, name: str) -> dict[str, Any]:
        """A shipped config, e.g. `config("unet/config.json")`."""
        return _read_json(self.config_dir() / name)

    def adapter_layers(self) -> list["AdapterLayer"]:
        """The official key table of the full-size model: file index -> diffusers name -> ComfyUI key."""
        from .layout import adapter_layers

        return adapter_layers(self.config("unet/config.json"))

    @property
    def pooled_width(self) -> int:
        """Width of the pooled text embedding the UNet takes (0 when it takes none)."""
        return sum(e.width for e in self.text_encoders if e.pooled)

    def describe(self) -> str:
        """The family in words for messages: 'SDXL (70 cross-attention layers, 2048-d)'."""
        return f"{self.label} ({self.adapter_layer_count} cross-attention layers, {self.cross_dim}-d)"


@functools.lru_cache(maxsize=None)
def _read_json_cached(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(_read_json_cached(str(path)))  # a fresh dict each time: callers may change it
    except (OSError, ValueError) as exc:
        raise IPAdapterError(f"{path} is not a readable JSON file ({exc}).") from None


_CLIP_L = "cond_stage_model.transformer.text_model."

SD15 = ModelFamily(
    name="sd15", label="SD1.5", assets="sd15", cross_dim=768, adapter_layer_count=16, default_resolution=512,
    text_encoders=(TextEncoder("text_encoder", _CLIP_L, "hf", 768, hidden_state=None),),
    size_conditioning=False, resampler_dim=768, addition_embed_type=None, adm_channels=0,
    pipeline="StableDiffusionPipeline",
    public_adapters="ip-adapter_sd15 or ip-adapter-plus_sd15 (ViT-H image encoder)",
)

SDXL = ModelFamily(
    name="sdxl", label="SDXL", assets="sdxl", cross_dim=2048, adapter_layer_count=70, default_resolution=1024,
    text_encoders=(
        TextEncoder("text_encoder", "conditioner.embedders.0.transformer.text_model.", "hf", 768, hidden_state=-2),
        TextEncoder("text_encoder_2", "conditioner.embedders.1.model.", "open_clip", 1280, hidden_state=-2,
                    pooled=True, pad_token="!"),
    ),
    size_conditioning=True, resampler_dim=1280, addition_embed_type="text_time", adm_channels=2816,
    pipeline="StableDiffusionXLPipeline",
    public_adapters="ip-adapter_sdxl_vit-h or ip-adapter-plus_sdxl_vit-h (ViT-H image encoder)",
)

# The learned world (ipadapter_train/world): SD1.5's layout, block structure and 16 adapter layers at widths small
# enough to learn on 2 CPU cores and to ship; a 32-d text encoder, so its own family. Trained by
# `ipadapter-train make-learned-world`; it shows that the machinery learns, nothing about SD's quality.
WORLD = ModelFamily(
    name="world", label="learned world", assets="world", cross_dim=32, adapter_layer_count=16, default_resolution=64,
    text_encoders=(TextEncoder("text_encoder", _CLIP_L, "hf", 32, hidden_state=None),),
    size_conditioning=False, resampler_dim=64, addition_embed_type=None, adm_channels=0,
    pipeline="StableDiffusionPipeline", public_adapters="none (train one on the world's pictures)", comfyui=False,
    figures_note="NOTE: learned-world models; these figures show that the machinery learns and selects, and say "
                 "nothing about quality on real SD models.",
    figures_label="learned-world figures",
)

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (SD15, SDXL, WORLD)}


def get_family(name: str) -> ModelFamily:
    """The family called `name` ("sd15", "sdxl"); an unknown name is an IPAdapterError listing the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise IPAdapterError(f"Unknown model family {name!r}: use one of {', '.join(FAMILIES)}.") from None


def family_of_unet_config(config: Mapping[str, Any], source: str = "the model") -> ModelFamily:
    """The family of a diffusers UNet config: by its extra-conditioning marker and its context width.

    Sizes other than the context width may differ (tiny test models keep the family's conditioning).
    """
    marker = config.get("addition_embed_type")
    width = config.get("cross_attention_dim")
    for family in FAMILIES.values():
        if family.addition_embed_type == marker and family.cross_dim == width:
            return family
    known = "; ".join(f"{f.label}: {f.cross_dim}-d, extra conditioning {f.addition_embed_type}"
                      for f in FAMILIES.values())
    raise IPAdapterError(f"{source} has a UNet with {width}-d cross-attention and extra conditioning {marker}, "
                         f"which is no supported model family ({known}).")


def family_of_comfy_unet(unet_config: Mapping[str, Any]) -> ModelFamily | None:
    """The family of a ComfyUI UNet config (context_dim and adm_in_channels), or None."""
    width, adm = unet_config.get("context_dim"), unet_config.get("adm_in_channels") or 0
    for family in FAMILIES.values():
        if family.cross_dim == width and family.adm_channels == adm:
            return family
    return None


def family_of_width(cross_dim: int | None, layer_count: int | None = None) -> ModelFamily | None:
    """The family with this cross-attention width (the layer count decides between families that share
    one), or None. What a UNet's `cross_dim` and layer list, or an adapter's token width, say."""
    by_width = [f for f in FAMILIES.values() if f.cross_dim == cross_dim]
    if len(by_width) == 1:
        return by_width[0]
    by_layers = [f for f in by_width if f.adapter_layer_count == layer_count]
    return by_layers[0] if by_layers else None
