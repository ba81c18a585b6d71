"""Load a Stable Diffusion model of any supported family from a file or a diffusers folder.

    family = peek_family("model.safetensors")       # header / configs only: SD15 or SDXL
    model = load_model("model.safetensors")         # DiffusionModel, every part frozen

The family is always read from the checkpoint itself (a single file's UNet shapes, a folder's
unet/config.json), never from a file name. Single files go through `single_file`; diffusers folders
(also ones saved with variant="fp16") through diffusers and transformers, with the family's
tokenizers from the folder when it has them, else the shipped CLIP vocabulary.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import IPAdapterError
from ..families import ModelFamily, family_of_unet_config
from ..storage.weights_io import WeightFile
from .diffusion_model import DiffusionModel
from .ldm.unet import family_of_checkpoint
from .parts import family_tokenizers, text_model_class
from .random_init import freeze
from .single_file import Check, read_single_file

log = logging.getLogger(__name__)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IPAdapterError(f"{path} is not a readable JSON file ({exc}).") from None


def _exists(path: Path) -> Path:
    if not path.exists():
        raise IPAdapterError(f"{path} does not exist; give a diffusers model folder or a "
                             ".safetensors/.ckpt single-file checkpoint.")
    return path


def _folder_family(path: Path) -> ModelFamily:
    if not (path / "model_index.json").is_file():
        raise IPAdapterError(f"{path} is a folder without model_index.json; give a diffusers model folder "
                             "or a single-file checkpoint.")
    if not (path / "unet" / "config.json").is_file():
        raise IPAdapterError(f"{path} has no unet/config.json; it is not a complete diffusers model folder.")
    return family_of_unet_config(_read_json(path / "unet" / "config.json"), str(path))


def peek_family(path: str | os.PathLike) -> ModelFamily:
    """The family of a checkpoint, read without loading its weights (a `.safetensors` header or a folder's
    unet/config.json; a `.ckpt` pickle has no header and is read whole). Unsupported models are an
    IPAdapterError."""
    path = _exists(Path(path))
    if path.is_dir():
        return _folder_family(path)
    with WeightFile(path, unwrap_state_dict=True) as wf:
        return family_of_checkpoint(wf.shapes, str(path))


def _variant(folder: Path) -> str | None:
    # folders saved with variant="fp16" only have `*.fp16.safetensors`; from_pretrained needs to be told
    names = [p.name for p in folder.glob("*") if p.suffix in (".safetensors", ".bin")]
    plain = [n for n in names if n.count(".") == 1]
    return "fp16" if not plain and any(".fp16." in n for n in names) else None


def _load_folder(path: Path, dtype: torch.dtype) -> DiffusionModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    family = _folder_family(path)
    for sub in ["vae"] + [e.subfolder for e in family.text_encoders]:
        if not (path / sub / "config.json").is_file():
            raise IPAdapterError(f"{path} has no {sub}/config.json; it is not a complete diffusers "
                                 f"{family.label} folder.")
    sub = "unet"
    try:
        unet = UNet2DConditionModel.from_pretrained(str(path), subfolder="unet", torch_dtype=dtype,
                                                    local_files_only=True, variant=_variant(path / "unet"))
        sub = "vae"
        vae = AutoencoderKL.from_pretrained(str(path), subfolder="vae", torch_dtype=dtype,
                                            local_files_only=True, variant=_variant(path / "vae"))
        texts = []
        for encoder in family.text_encoders:
            sub = encoder.subfolder
            texts.append(text_model_class(encoder).from_pretrained(
                str(path / sub), dtype=dtype, local_files_only=True, variant=_variant(path / sub)))
    except IPAdapterError:
        raise
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise IPAdapterError(f"{path / sub} could not be loaded ({reason}).") from None
    sched = path / "scheduler" / "scheduler_config.json"
    scheduler_config = _read_json(sched) if sched.is_file() else family.config("scheduler/scheduler_config.json")
    return DiffusionModel(family, unet, vae, texts, family_tokenizers(family, path), scheduler_config, str(path))


def load_model(path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               family: ModelFamily | None = None, check: Check | None = None) -> DiffusionModel:
    """Load a model of any supported family (SD1.5, SDXL) from a diffusers folder or an original-layout
    single file (`.safetensors`, `.ckpt`/`.pt`); every part frozen, in `dtype`, on `device`.

    `family`: the family the caller needs; another one is refused before its weights are read.
    `check(shapes, name)`: the caller's own refusals, run on a single file's header first.
    """
    path = _exists(Path(path))
    if path.is_dir():
        found = _folder_family(path)
        if family is not None and found is not family:
            raise IPAdapterError(f"{path} is an {found.label} model; {family.label} is needed here.")
        model = _load_folder(path, dtype)
    else:
        model = read_single_file(path, dtype, check, family)
    for part in model.frozen_parts():
        freeze(part.to(device))  # already in `dtype`: loaded that way (casting again makes diffusers warn)
    log.info("Loaded %s from %s (%s, %s).", model.family.label, path, dtype, device)
    return model
