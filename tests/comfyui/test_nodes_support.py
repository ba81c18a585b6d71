"""Shared set-up for the in-process node tests (no server): ComfyUI on sys.path in CPU mode, the pack
imported as a package, and a small random-weight SD1.5 graph built in memory once per test process
(`sd15_graph.py`; the server tests load the make-test-models files through ComfyUI's loaders).

Every test module of the node pack imports from here. When the ComfyUI copy that
`tests/comfyui/setup_comfyui.sh` installs is missing, the node tests are skipped (the core's tests never
need ComfyUI); a copy that is there but cannot be imported fails them (`comfy_import.import_comfy`).
"""
from __future__ import annotations

import pytest

from comfy_import import ROOT, comfy_installed, import_comfy, pack  # noqa: F401  (ROOT, pack: re-exported)


def comfy_or_skip() -> None:
    """Put ComfyUI on sys.path in CPU mode, or skip the calling test module."""
    if not comfy_installed():
        pytest.skip("ComfyUI is not installed (run tests/comfyui/setup_comfyui.sh)", allow_module_level=True)
    import_comfy(cpu=True)


def comfy_models() -> dict:
    """MODEL, CLIP, VAE and CLIP_VISION of the small SD1.5 graph (`sd15_graph.comfy_sd15`), built by ComfyUI's
    own classes in inference mode as a server loads models; one graph per test process, shared."""
    from sd15_graph import comfy_sd15

    return comfy_sd15()


def diffusers_sd15():
    """The same weights in the core's diffusers modules (fp32), shared."""
    from sd15_graph import diffusers_sd15 as build

    return build()


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
