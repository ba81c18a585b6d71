"""Stable Diffusion 1.5: the names SD1.5 code has always called, over the family-neutral loaders.

`load_sd15` loads an SD1.5 diffusers folder or single file and refuses anything else with one
sentence (an SDXL file says so); `load_model` (model_loading) loads any family. `build_sd15` and
`save_single_file` are `build_model("sd15", ...)` and `models.single_file.save_single_file`. The tokenizer
and the configs ship with the package (`assets/sd15/`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch

from .. import families
from .diffusion_model import DiffusionModel
from .ldm import layout as L
from .loading import load_model
from .parts import load_tokenizer  # noqa: F401 (re-exported: the SD1.5 tokenizer is the shipped default)
from .random_models import build_model, model_configs
from .single_file import save_single_file  # noqa: F401 (re-exported)


def SD15(unet: Any, vae: Any, text_encoder: Any, tokenizer: Any, scheduler_config: dict, source: str,
         random_weights: bool = False) -> DiffusionModel:  # noqa: N802 (the name the SD1.5 container had)
    """An SD1.5 `DiffusionModel`: one CLIP-L text encoder and its tokenizer."""
    return DiffusionModel(families.SD15, unet, vae, [text_encoder], [tokenizer], scheduler_config, source,
                          random_weights)


def shipped_config_dir() -> Path:
    """Folder of the SD1.5 configs and tokenizer that ship with the package."""
    return families.SD15.config_dir()


def tiny_unet_config() -> dict:
    """The tiny UNet: SD1.5's block layout (16 cross-attention layers) with every level 320 wide."""
    return model_configs(families.SD15, "tiny")["unet"]


def build_sd15(size: Literal["tiny", "full"] = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32) -> DiffusionModel:
    """Build an SD1.5 with random weights: "full" is the real shape, "tiny" a cheap ComfyUI-loadable one."""
    model = build_model(families.SD15, size, seed=seed, dtype=dtype)
    model.source = f"random:{size}"
    return model


def load_sd15(path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> DiffusionModel:
    """Load SD1.5 from a diffusers folder or an original-layout single file; every part frozen, in `dtype`.

    Any other model is refused with one sentence; `models.loading.load_model` loads every family.
    """
    return load_model(path, dtype, device, family=families.SD15, check=L.check_sd15)
