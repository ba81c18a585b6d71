"""The frozen CLIP vision encoder: load, build, save, and turn images into adapter inputs.

Accepted: a transformers folder (a `CLIPVisionModelWithProjection` folder, or a whole `CLIPModel`
folder whose text half is ignored) or one `.safetensors` file in ComfyUI's `models/clip_vision`
layout (`vision_model.*`, `visual_projection.weight`), whose config is read from the weight shapes.
Either way the weights go through one strict load: a missing or unexpected key is an error.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch

from ..errors import IPAdapterError
from ..storage.weights_io import WeightFile, read_transformers_folder, save_safetensors_atomic
from .random_init import (RANDOM_MARK, assign_state, empty_model, fill_random_, freeze, is_random, mark_random,
                          random_metadata)

log = logging.getLogger(__name__)

Preset = Literal["tiny", "vit-l", "vit-h", "vit-bigg"]
PRESETS: dict[str, dict[str, Any]] = {
    # fast unit tests only; gelu and 4 heads are what infer_clip_vision_config reads back for width 64
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                 projection_dim=32, hidden_act="gelu"),
    # OpenAI CLIP ViT-L/14 (224 px)
    "vit-l": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                  projection_dim=768, hidden_act="quick_gelu"),
    # OpenCLIP ViT-H/14, the encoder of the public SD1.5 IP-Adapters
    "vit-h": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, intermediate_size=5120,
                  projection_dim=1024, hidden_act="gelu"),
    # OpenCLIP ViT-bigG/14, the encoder of the public ip-adapter_sdxl (1.8B parameters)
    "vit-bigg": dict(hidden_size=1664, num_hidden_layers=48, num_attention_heads=16, intermediate_size=8192,
                     projection_dim=1280, hidden_act="gelu"),
}
_COMMON = dict(patch_size=14, image_size=224, num_channels=3, layer_norm_eps=1e-5)
# weights do not tell the head count: these are the known widths (64 is the tiny test preset)
_HEADS = {64: 4, 768: 12, 1024: 16, 1280: 16, 1664: 16}
_PATCH = "vision_model.embeddings.patch_embedding.weight"
# a whole CLIPModel (or a ComfyUI file with position_ids) carries keys the vision model does not have
_IGNORED = re.compile(r"^(text_model\.|text_projection\.|logit_scale$)|position_ids$")


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def infer_clip_vision_config(state_dict: Mapping[str, Any], source: str = "the CLIP vision file"):
    """Read a transformers `CLIPVisionConfig` from the shapes of a `vision_model.*` state dict.

    Values may be tensors (meta ones too) or bare shapes.
    """
    from transformers import CLIPVisionConfig

    sd = state_dict
    if _PATCH not in sd:
        if any(k.startswith(("model.diffusion_model.", "first_stage_model.")) for k in sd):
            raise IPAdapterError(f"{source} is a Stable Diffusion checkpoint, not a CLIP vision model.")
        if any(k.startswith("visual.") for k in sd):
            raise IPAdapterError(f"{source} is in the open_clip layout (visual.*); give the transformers "
                                 "layout (vision_model.*) that ComfyUI's clip_vision folder uses.")
        raise IPAdapterError(f"{source} is not a CLIP vision model ({_PATCH} is missing).")
    if "visual_projection.weight" not in sd:
        raise IPAdapterError(f"{source} has no visual_projection.weight; an IP-Adapter needs the projected "
                             "image embedding (CLIPVisionModelWithProjection).")
    try:
        hidden, channels, patch, _ = _shape(sd[_PATCH])
        positions = _shape(sd["vision_model.embeddings.position_embedding.weight"])[0]
        intermediate = _shape(sd["vision_model.encoder.layers.0.mlp.fc1.weight"])[0]
    except KeyError as exc:
        raise IPAdapterError(f"{source} is an incomplete CLIP vision model ({exc.args[0]} is missing).") from None
    side = math.isqrt(positions - 1)
    if side * side != positions - 1:
        raise IPAdapterError(f"{source} has {positions} position embeddings, which is not 1 + a square grid.")
    depth = len({int(m.group(1)) for k in sd if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k))})
    return CLIPVisionConfig(
        hidden_size=hidden, num_channels=channels, patch_size=patch, image_size=patch * side,
        num_hidden_layers=depth, intermediate_size=intermediate,
        num_attention_heads=_HEADS.get(hidden, max(1, hidden // 64)),
        projection_dim=_shape(sd["visual_projection.weight"])[0],
        # OpenAI's ViT-B/L use quick_gelu; OpenCLIP (ViT-H, bigG) uses exact gelu
        hidden_act="quick_gelu" if hidden in (768, 1024) else "gelu",
        layer_norm_eps=1e-5,
    )


def _strict_load(config, state: dict[str, torch.Tensor], source: str):
    from transformers import CLIPVisionModelWithProjection

    return assign_state(lambda: CLIPVisionModelWithProjection(config), state, source, "a CLIP vision model")


def _folder_config(folder: Path):
    from transformers import CLIPVisionConfig

    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IPAdapterError(f"{folder / 'config.json'} is not a readable JSON file ({exc}).") from None
    kind = raw.get("model_type")
    if kind == "clip":  # a whole CLIPModel: the projection width lives on the top-level config
        vision = dict(raw.get("vision_config") or {})
        vision["projection_dim"] = raw.get("projection_dim", vision.get("projection_dim", 512))
        raw = vision
    elif kind != "clip_vision_model":
        raise IPAdapterError(f"{folder / 'config.json'} describes a {kind!r} model; a CLIP vision model "
                             "(model_type clip_vision_model or clip) was expected.")
    raw.pop("model_type", None)
    return CLIPVisionConfig.from_dict(raw)


def load_clip_vision(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                     device: str | torch.device = "cpu"):
    """Load a frozen `CLIPVisionModelWithProjection` from a transformers folder or a ComfyUI-layout file."""
    path = Path(path)
    if not path.exists():
        raise IPAdapterError(f"{path} does not exist; give a CLIP vision .safetensors file or a transformers folder.")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise IPAdapterError(f"{path} has no config.json; it is not a transformers CLIP vision folder.")
        config = _folder_config(path)
        state = read_transformers_folder(path, dtype, lambda k: bool(_IGNORED.search(k)))
    else:
        with WeightFile(path) as wf:
            config = infer_clip_vision_config(wf.shapes, source=str(path))  # header only: cheap rejection
            state = {k: wf.take(k, dtype) for k in wf.shapes if not _IGNORED.search(k)}
            random_weights = wf.metadata.get(RANDOM_MARK) == "true"
    model = _strict_load(config, state, str(path))
    if path.is_file():
        mark_random(model, random_weights)
    freeze(model.to(device))
    log.info("Loaded CLIP vision from %s (hidden %d, %d layers, projection %d).", path,
             config.hidden_size, config.num_hidden_layers, config.projection_dim)
    return model


def preset_config(preset: Preset):
    """The `CLIPVisionConfig` of a named preset ("tiny", "vit-l", "vit-h", "vit-bigg")."""
    from transformers import CLIPVisionConfig

    if preset not in PRESETS:
        raise IPAdapterError(f"Unknown CLIP vision preset {preset!r}; expected one of {', '.join(PRESETS)}.")
    return CLIPVisionConfig(**PRESETS[preset], **_COMMON)


def build_clip_vision(preset: Preset = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32):
    """Build a frozen `CLIPVisionModelWithProjection` of a preset shape with random weights."""
    from transformers import CLIPVisionModelWithProjection

    config = preset_config(preset)
    model = empty_model(lambda: CLIPVisionModelWithProjection(config))
    return mark_random(freeze(fill_random_(model, seed=seed, dtype=dtype)))


def save_clip_vision(model, path: str | os.PathLike, dtype: torch.dtype = torch.float16) -> Path:
    """Write `model` as one `.safetensors` file in ComfyUI's `models/clip_vision` layout."""
    state = {k: v.detach().to(device="cpu", dtype=dtype) for k, v in model.state_dict().items()
             if not k.endswith("position_ids")}
    path = save_safetensors_atomic(state, path, metadata=random_metadata(is_random(model)))
    log.info("Wrote %s (%d tensors, %.1f MiB).", path, len(state), path.stat().st_size / 2**20)
    return path


@functools.lru_cache(maxsize=4)
def image_processor(image_size: int = 224):
    """transformers' CLIP preprocessing (resize short side, centre crop, OpenAI mean/std), offline."""
    try:  # transformers 5 names the Pillow-only processor; it needs no torchvision
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor

    if image_size == 224:
        return CLIPImageProcessor()
    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def _placement(model, device, dtype):
    p = next(model.parameters())
    return (device if device is not None else p.device), (dtype if dtype is not None else p.dtype)


@torch.no_grad()
def encode_images(model, pil_images: Sequence[Any] | Any, device: str | torch.device | None = None,
                  dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode PIL images: (projected image embeddings [B, proj], penultimate hidden states [B, N, hidden])."""
    if not isinstance(pil_images, (list, tuple)):
        pil_images = [pil_images]
    device, dtype = _placement(model, device, dtype)
    pixels = image_processor(model.config.image_size)(images=list(pil_images), return_tensors="pt").pixel_values
    out = model(pixel_values=pixels.to(device=device, dtype=dtype), output_hidden_states=True)
    return out.image_embeds, out.hidden_states[-2]


@torch.no_grad()
def zero_image_features(model, kind: Literal["base", "plus"], batch_size: int = 1,
                        device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Features for a dropped image: base -> a zero embedding [B, proj]; plus -> the penultimate hidden
    states [B, N, hidden] of an all-zero pixel tensor *after* CLIP normalisation (tencent's and
    diffusers' choice; IPAdapter_plus encodes a black image instead, which differs)."""
    device, dtype = _placement(model, device, dtype)
    cfg = model.config
    if kind == "base":
        return torch.zeros(batch_size, cfg.projection_dim, device=device, dtype=dtype)
    if kind != "plus":
        raise IPAdapterError(f"Unknown adapter kind {kind!r}; expected 'base' or 'plus'.")
    pixels = torch.zeros(batch_size, cfg.num_channels, cfg.image_size, cfg.image_size, device=device, dtype=dtype)
    return model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
