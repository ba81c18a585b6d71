"""Shared set-up for the in-process node tests (no server): ComfyUI on sys.path in CPU mode, the pack
imported as a package, and random-weight models written once per test session.

Every test module of the node pack imports from here. When the ComfyUI copy that
`tests/comfyui/setup_comfyui.sh` installs is missing, the node tests are skipped (the core's tests never
need ComfyUI); a copy that is there but cannot be imported fails them (`comfy_import.import_comfy`).
"""
from __future__ import annotations

import functools
from pathlib import Path

import pytest

from comfy_import import ROOT, comfy_installed, import_comfy, pack  # noqa: F401  (ROOT, pack: re-exported)
from harness import shared_model_files


def comfy_or_skip() -> None:
    """Put ComfyUI on sys.path in CPU mode, or skip the calling test module."""
    if not comfy_installed():
        pytest.skip("ComfyUI is not installed (run tests/comfyui/setup_comfyui.sh)", allow_module_level=True)
    import_comfy(cpu=True)


def model_files() -> dict[str, Path]:
    """sd15-tiny.safetensors (ComfyUI-loadable SD1.5) and clip-vision-vit-l.safetensors, shared with the
    server tests (written once per test process)."""
    return shared_model_files()


@functools.lru_cache(maxsize=None)
def comfy_models() -> dict:
    """MODEL, CLIP, VAE and CLIP_VISION loaded by ComfyUI's own loaders, in inference mode as a server does."""
    import torch

    import comfy.clip_vision
    import comfy.sd

    files = model_files()
    with torch.inference_mode():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(files["sd15"]), output_vae=True,
                                                                     output_clip=True)
        clip_vision = comfy.clip_vision.load(str(files["clip_vision"]))
    return {"model": model, "clip": clip, "vae": vae, "clip_vision": clip_vision}


@functools.lru_cache(maxsize=None)
def diffusers_sd15():
    """The same single file loaded by the core into diffusers modules (fp32)."""
    return pack("ipadapter_train.models.sd15").load_sd15(model_files()["sd15"])


def random_adapter(variant: str, clip_dim: int, layers, seed: int = 1, cross_dim: int = 768,
                   resampler_dim: int | None = None):
    """An adapter with non-trivial random weights everywhere (norms included); SD1.5-wide unless `cross_dim` says
    otherwise (2048 for SDXL; a small `resampler_dim` keeps a plus adapter's Resampler tiny)."""
    import torch

    core = pack("ipadapter_train.adapter.module")
    torch.manual_seed(seed)
    adapter = core.IPAdapter.new(variant, clip_dim, cross_dim, layers, resampler_dim=resampler_dim)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    adapter.metadata = {"note": "random test adapter"}
    return adapter.requires_grad_(False)
