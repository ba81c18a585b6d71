"""Random-weight models of any family, tiny or full size, for tests, demos and benchmarks.

    model = build_model("sdxl", "tiny", seed=0)                 # seconds; SDXL's block structure
    model = build_model("sdxl", "narrow", dtype=torch.float16)  # what ComfyUI detects as SDXL, 283M UNet
    model = build_model("sdxl", "full", dtype=torch.float16)    # the real 2.6B UNet, ~7 GB in fp16

"full" is the family's shipped configs; the other sizes are changes to them (`SIZES`, data per family).
"tiny" keeps what the adapter and the loaders depend on (the block structure, so every cross-attention
layer of the official adapter file; the context width; the extra conditioning's width; CLIP's vocabulary
and 77 positions) and shrinks the rest. "narrow" is the smallest model ComfyUI detects as the family from
a file: its detection reads the first level's width (320), the transformer depths, the context width and
the extra conditioning's width, never the later levels' widths, so every level is 320 wide; the text
encoders and the VAE stay full size, as ComfyUI builds them at that size whatever the file holds. The weights are
drawn straight in `dtype`, tensor by tensor, into a model built on the meta device: a full model never
exists twice (drawing in fp16 gives exactly the fp32 draw rounded to fp16).
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Literal

import torch

from ..errors import IPAdapterError
from ..families import ModelFamily, get_family
from .diffusion_model import DiffusionModel
from .ldm.unet import head_counts
from .parts import empty_parts, family_tokenizers
from .random_init import fill_random_, freeze

log = logging.getLogger(__name__)

Size = Literal["tiny", "narrow", "full"]

# Per size, per family: what the size changes in the shipped configs (file name under assets/<family>/ ->
# overrides). "full" changes nothing.
SIZES: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "tiny": {
        # SD1.5's block layout (16 cross-attention layers) with every level 320 wide; ComfyUI detects it as SD1.5
        "sd15": {"unet/config.json": {"block_out_channels": [320, 320, 320, 320]}},
        # SDXL's block layout with all 70 cross-attention layers (transformer depth [1, 2, 10]) at widths 32-128,
        # 2048-d context, 2816-d extra conditioning; 1-layer text encoders of the real widths (768, 1280)
        "sdxl": {
            "unet/config.json": {"block_out_channels": [32, 64, 128]},
            "vae/config.json": {"block_out_channels": [32, 32, 64, 64]},
            "text_encoder/config.json": {"num_hidden_layers": 1, "intermediate_size": 128},
            "text_encoder_2/config.json": {"num_hidden_layers": 1, "intermediate_size": 128},
        },
    },
    "narrow": {
        # the block layout with every level 320 wide: SD1.5's tiny; SDXL's 70 layers in a 283M UNet (2,567M full)
        "sd15": {"unet/config.json": {"block_out_channels": [320, 320, 320, 320]}},
        "sdxl": {"unet/config.json": {"block_out_channels": [320, 320, 320]}},
    },
    "full": {},
}


def model_configs(family: ModelFamily | str, size: Size = "tiny") -> dict[str, dict[str, Any]]:
    """The configs of a random model: {"unet": ..., "vae": ..., "<text encoder subfolder>": ...}."""
    family = get_family(family) if isinstance(family, str) else family
    if size not in SIZES:
        raise IPAdapterError(f"Unknown model size {size!r}; expected one of {', '.join(SIZES)}.")
    changes = SIZES[size].get(family.name, {})
    names = ["unet", "vae"] + [e.subfolder for e in family.text_encoders]
    configs = {}
    for name in names:
        cfg = family.config(f"{name}/config.json")
        cfg.update(copy.deepcopy(changes.get(f"{name}/config.json", {})))
        configs[name] = cfg
    shipped_unet = family.config("unet/config.json")
    # heads follow the family's rule, as the single-file reader infers them (SD1.5 8; SDXL 64-dim heads)
    configs["unet"]["attention_head_dim"] = head_counts(configs["unet"]["block_out_channels"], shipped_unet)
    return configs


def build_empty(family: ModelFamily | str, size: Size = "tiny") -> DiffusionModel:
    """A model of the given size with its weights on the meta device: shapes and key tables, no memory."""
    family = get_family(family) if isinstance(family, str) else family
    cfgs = model_configs(family, size)
    unet, vae, texts = empty_parts(family, cfgs["unet"], cfgs["vae"], [cfgs[e.subfolder] for e in family.text_encoders])
    return DiffusionModel(family, unet, vae, texts, [], family.config("scheduler/scheduler_config.json"),
                          f"random:{family.name}:{size}", random_weights=True)


def build_model(family: ModelFamily | str, size: Size = "tiny", seed: int = 0,
                dtype: torch.dtype = torch.float32) -> DiffusionModel:
    """Build a frozen model of `family` ("sd15", "sdxl" or a ModelFamily) with random weights in `dtype`.

    The same seed gives the same weights at every dtype (up to rounding). The model is marked as random
    (`random_weights`), and so is every file written from it.
    """
    model = build_empty(family, size)
    parts = [model.unet, model.vae, *model.text_encoders]
    for i, part in enumerate(parts):  # SD1.5 keeps the seeds it always had: seed * 3 + part index
        freeze(fill_random_(part, seed=seed * len(parts) + i, dtype=dtype))
    model.tokenizers = family_tokenizers(model.family)
    log.debug("built a random %s %s model (seed %d, %s)", size, model.family.label, seed, dtype)
    return model
