"""The full CLIP model (vision and text towers with their projections) that scores generated images.

Scoring needs both towers, unlike conditioning, which needs only the vision half. Accepted: a
transformers `CLIPModel` folder (config.json with model_type "clip"), or one weights file in the
transformers key layout (`text_model.*`, `vision_model.*`, `visual_projection.weight`,
`text_projection.weight`, `logit_scale`) whose config is read from the weight shapes. Everything is
offline: the tokenizer comes from the folder when it has one, else the shipped OpenAI CLIP BPE one.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping

import torch

from ..errors import IPAdapterError
from ..storage.weights_io import WeightFile, read_transformers_folder, save_safetensors_atomic
from .clip_vision import PRESETS as VISION_PRESETS
from .clip_vision import infer_clip_vision_config
from .random_init import (RANDOM_MARK, assign_state, empty_model, fill_random_, freeze, is_random, mark_random,
                          random_metadata)
from .sd15 import load_tokenizer

log = logging.getLogger(__name__)

ClipPreset = Literal["tiny", "vit-l"]
# Text towers of the presets; the vision towers are clip_vision's presets of the same name.
_TEXT_PRESETS: dict[str, dict[str, Any]] = {
    # heads = width // 64 and gelu for width 64 are what infer_clip_text_config reads back
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=1, intermediate_size=128,
                 hidden_act="gelu"),
    # OpenAI CLIP ViT-L/14's text tower, the scorer of the IP-Adapter paper
    "vit-l": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                  hidden_act="quick_gelu"),
}
_VISION_COMMON = dict(patch_size=14, image_size=224, num_channels=3, layer_norm_eps=1e-5)
# OpenAI's ids; pooling takes the first EOS token, which is what the BPE tokenizer appends
_TEXT_COMMON = dict(vocab_size=49408, max_position_embeddings=77, layer_norm_eps=1e-5,
                    bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
_TOKEN_EMB = "text_model.embeddings.token_embedding.weight"
_VISION_PATCH = "vision_model.embeddings.patch_embedding.weight"
# a marker carried in the config and in file metadata so random test models are never mistaken for real ones
_FULL_CLIP_HINT = "scoring needs a full CLIP model with both towers, e.g. openai/clip-vit-large-patch14"


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def _check_full_clip(keys: set[str], source: str) -> None:
    """Reject files that are something other than a whole transformers CLIPModel, saying what they are."""
    has_text = _TOKEN_EMB in keys
    has_vision = _VISION_PATCH in keys
    if has_text and has_vision:
        for k in ("text_projection.weight", "visual_projection.weight"):
            if k not in keys:
                raise IPAdapterError(f"{source} has no {k}; {_FULL_CLIP_HINT}, with its projections.")
        return
    if has_vision:
        raise IPAdapterError(f"{source} has only a vision tower (a CLIP vision model, as in models/clip_vision); "
                             f"{_FULL_CLIP_HINT}.")
    if has_text:
        raise IPAdapterError(f"{source} has only a text tower (a CLIP text encoder); {_FULL_CLIP_HINT}.")
    if any(k.startswith(("model.diffusion_model.", "first_stage_model.")) for k in keys):
        raise IPAdapterError(f"{source} is a Stable Diffusion checkpoint, not a CLIP model; {_FULL_CLIP_HINT}.")
    if any(k.startswith("visual.") for k in keys):
        raise IPAdapterError(f"{source} is in the open_clip layout (visual.*); give the transformers layout "
                             "(text_model.*, vision_model.*) of a full CLIP model.")
    raise IPAdapterError(f"{source} is not a CLIP model ({_TOKEN_EMB} and {_VISION_PATCH} are missing); "
                         f"{_FULL_CLIP_HINT}.")


def infer_clip_text_config(state_dict: Mapping[str, Any], source: str = "the CLIP file"):
    """Read a transformers `CLIPTextConfig` from the shapes of a `text_model.*` state dict."""
    from transformers import CLIPTextConfig

    sd = state_dict
    try:
        vocab, hidden = _shape(sd[_TOKEN_EMB])
        positions = _shape(sd["text_model.embeddings.position_embedding.weight"])[0]
        intermediate = _shape(sd["text_model.encoder.layers.0.mlp.fc1.weight"])[0]
        projection = _shape(sd["text_projection.weight"])[0]
    except KeyError as exc:
        raise IPAdapterError(f"{source} is an incomplete CLIP text tower ({exc.args[0]} is missing).") from None
    depth = len({int(m.group(1)) for k in sd if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k))})
    common = {**_TEXT_COMMON, "vocab_size": vocab, "max_position_embeddings": positions}
    return CLIPTextConfig(
        hidden_size=hidden, num_hidden_layers=depth, intermediate_size=intermediate,
        # every released CLIP text tower uses 64-wide heads; the weights cannot tell the count
        num_attention_heads=max(1, hidden // 64), projection_dim=projection,
        # OpenAI's text towers (ViT-B 512, ViT-L 768) use quick_gelu; OpenCLIP's wider ones use exact gelu
        hidden_act="quick_gelu" if hidden in (512, 768) else "gelu", **common)


def infer_clip_config(state_dict: Mapping[str, Any], source: str = "the CLIP file"):
    """Read a whole `CLIPConfig` from the shapes of a transformers-layout CLIPModel state dict."""
    from transformers import CLIPConfig

    _check_full_clip(set(state_dict), source)
    vision = infer_clip_vision_config(state_dict, source=source)
    text = infer_clip_text_config(state_dict, source=source)
    if vision.projection_dim != text.projection_dim:
        raise IPAdapterError(f"{source} projects images to {vision.projection_dim} and text to "
                             f"{text.projection_dim} dimensions; a CLIP model needs one shared width.")
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=text.projection_dim)


def _strict_load(config, state: dict[str, torch.Tensor], source: str):
    """Assign `state` into a meta-built CLIPModel; any missing, extra or mis-shaped tensor is an error."""
    from transformers import CLIPModel

    if "logit_scale" not in state:  # unused by scoring; some exports drop it, so give CLIP's initial value
        state["logit_scale"] = torch.tensor(config.logit_scale_init_value)
    return assign_state(lambda: CLIPModel(config), state, source, "a full CLIP model")


def _folder_config(folder: Path):
    from transformers import CLIPConfig

    cfg_path = folder / "config.json"
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IPAdapterError(f"{cfg_path} is not a readable JSON file ({exc}).") from None
    kind = raw.get("model_type")
    if kind == "clip_vision_model":
        raise IPAdapterError(f"{folder} has only a vision tower (a CLIP vision model); {_FULL_CLIP_HINT}.")
    if kind != "clip":
        raise IPAdapterError(f"{cfg_path} describes a {kind!r} model; a full CLIP model (model_type clip) "
                             "is needed for scoring.")
    return CLIPConfig.from_dict(raw)


def load_clip(path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Load a frozen transformers `CLIPModel` (both towers) from a folder or one weights file, offline."""
    path = Path(path)
    if not path.exists():
        raise IPAdapterError(f"{path} does not exist; give a full CLIP model as a transformers folder or one "
                             ".safetensors file.")
    random_weights = False
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise IPAdapterError(f"{path} has no config.json; it is not a transformers CLIP folder.")
        config = _folder_config(path)
        state = read_transformers_folder(path, dtype, lambda k: k.endswith("position_ids"))
        _check_full_clip(set(state), str(path))
        random_weights = bool(getattr(config, RANDOM_MARK, False))
    else:
        with WeightFile(path) as wf:
            config = infer_clip_config(wf.shapes, source=str(path))  # header only: cheap rejection
            state = {k: wf.take(k, dtype) for k in wf.shapes if not k.endswith("position_ids")}
            random_weights = wf.metadata.get(RANDOM_MARK) == "true"
    model = _strict_load(config, state, str(path))
    setattr(model.config, RANDOM_MARK, random_weights)
    freeze(model.to(device))
    log.info("Loaded CLIP from %s (vision %d x %d, text %d x %d, projection %d).", path,
             config.vision_config.hidden_size, config.vision_config.num_hidden_layers,
             config.text_config.hidden_size, config.text_config.num_hidden_layers, config.projection_dim)
    return model


def load_clip_tokenizer(path: str | os.PathLike | None = None):
    """The folder's own tokenizer when it ships one, else the packaged OpenAI CLIP BPE tokenizer (77 tokens)."""
    folder = Path(path) if path is not None else None
    if folder is not None and folder.is_dir() and any(
            (folder / n).is_file() for n in ("vocab.json", "tokenizer.json")):
        return load_tokenizer(folder)
    return load_tokenizer()


def preset_config(preset: ClipPreset):
    """The `CLIPConfig` of a named preset ("tiny" or "vit-l")."""
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    if preset not in _TEXT_PRESETS:
        raise IPAdapterError(f"Unknown CLIP preset {preset!r}; expected one of {', '.join(_TEXT_PRESETS)}.")
    vision = CLIPVisionConfig(**VISION_PRESETS[preset], **_VISION_COMMON)
    text = CLIPTextConfig(**_TEXT_PRESETS[preset], **_TEXT_COMMON, projection_dim=vision.projection_dim)
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=vision.projection_dim)


def build_clip(preset: ClipPreset = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32):
    """Build a frozen `CLIPModel` of a preset shape with random weights, marked as random."""
    from transformers import CLIPModel

    config = preset_config(preset)
    model = fill_random_(empty_model(lambda: CLIPModel(config)), seed=seed, dtype=dtype)
    with torch.no_grad():  # the random fill would give a near-zero temperature; keep CLIP's initial one
        model.logit_scale.fill_(math.log(1 / 0.07))
    return freeze(mark_random(model))


def save_clip(model, path: str | os.PathLike, dtype: torch.dtype = torch.float16,
              metadata: dict[str, str] | None = None) -> Path:
    """Write a `CLIPModel` as one `.safetensors` file in the transformers key layout (atomically), `metadata` added."""
    state = {k: v.detach().to(device="cpu", dtype=dtype if v.is_floating_point() else v.dtype)
             for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    path = save_safetensors_atomic(state, path, metadata={**random_metadata(is_random(model)), **(metadata or {})})
    log.info("Wrote %s (%d tensors, %.1f MiB).", path, len(state), path.stat().st_size / 2**20)
    return path
