"""The original single-file layout, SD1.5 view: the names SD1.5 code and tests have always used.

The key tables live in `ldm_unet` (UNet, family detection), `ldm_vae` (VAE), `ldm_text` (CLIP-L in
transformers names, OpenCLIP names) and `ldm_keys` (entries, shared helpers); `single_file` reads and
writes whole checkpoints of any family. This module re-exports the pieces and keeps the SD1.5-only
checks (`check_sd15`, `infer_unet_config`, `infer_text_config`) whose sentences name SD1.5.
"""
from __future__ import annotations

from typing import Any, Mapping

from ... import families
from ...errors import IPAdapterError
from .keys import indices, is_known_unused, shape_of, summarize_keys  # noqa: F401 (re-exported)
from .text import OLD_TEXT_PREFIX, TEXT_PREFIX, find_text_prefix, read_text_config, text_key_map  # noqa: F401
from .unet import UNET_PREFIX, not_stable_diffusion, read_unet_config, unet_key_map  # noqa: F401
from .vae import VAE_PREFIX, from_ldm_tensor, infer_vae_config, to_ldm_tensor, vae_key_map  # noqa: F401

SD15_CONTEXT_DIM = 768
SD15_HEADS = 8  # weights do not tell the head count; SD1.5 uses 8 everywhere


def check_sd15(sd: Mapping[str, Any], source: str) -> None:
    """Raise IPAdapterError unless `sd` looks like an original-layout SD1.5 checkpoint."""
    keys = list(sd.keys())
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        raise not_stable_diffusion(keys, source)
    if f"{UNET_PREFIX}label_emb.0.0.weight" in sd or any(k.startswith("conditioner.") for k in keys):
        raise IPAdapterError(f"{source} is an SDXL (or other class-conditioned) checkpoint; "
                             "only Stable Diffusion 1.5 is supported here.")
    to_k = [k for k in keys if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight")]
    if not to_k:
        raise IPAdapterError(f"{source} has a UNet without cross-attention; it is not a Stable Diffusion 1.5 checkpoint.")
    context = shape_of(sd[to_k[0]])[1]
    if context != SD15_CONTEXT_DIM:
        kind = {1024: "an SD2.x", 2048: "an SDXL"}.get(context, "a non-SD1.5")
        raise IPAdapterError(f"{source} is {kind} checkpoint (cross-attention width {context}); only "
                             f"Stable Diffusion 1.5 (width {SD15_CONTEXT_DIM}) is supported here.")
    proj_in = [k for k in keys if k.startswith(UNET_PREFIX) and k.endswith(".proj_in.weight")]
    if any(len(shape_of(sd[k])) == 2 for k in proj_in):
        raise IPAdapterError(f"{source} uses linear transformer projections (SD2.x style); only "
                             "Stable Diffusion 1.5 is supported here.")
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise IPAdapterError(f"{source} has an OpenCLIP text encoder (SD2.x); only Stable Diffusion 1.5 is supported here.")


def infer_unet_config(sd: Mapping[str, Any], base: Mapping[str, Any] | None = None,
                      source: str = "the checkpoint") -> dict[str, Any]:
    """Read an SD1.5 UNet config from original-layout shapes (see `models.ldm.unet.read_unet_config`); anything
    but an SD1.5 checkpoint is an IPAdapterError."""
    check_sd15(sd, source)
    return read_unet_config(sd, dict(base or {"attention_head_dim": SD15_HEADS}), source)


def infer_text_config(sd: Mapping[str, Any], base: Mapping[str, Any] | None = None,
                      source: str = "the checkpoint") -> dict[str, Any]:
    """Read SD1.5's CLIP-L text config from the checkpoint's shapes (see `models.ldm.text.read_text_config`)."""
    if any(k.startswith("cond_stage_model.model.") for k in sd):
        raise IPAdapterError(f"{source} has an OpenCLIP text encoder (SD2.x); only Stable Diffusion 1.5 is supported here.")
    return read_text_config(sd, families.SD15.text_encoders[0], dict(base or {}), source)[0]
