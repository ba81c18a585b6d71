"""Write random-weight test models: an SD1.5 single file and a CLIP vision file.

No real CLIP or SD weights can be downloaded here, so tests, demos and the ComfyUI integration run
on models built from configs. They load everywhere real ones do (this package, diffusers, ComfyUI)
but produce noise: they prove plumbing, never quality.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Literal

import torch

from .clip_vision import PRESETS, build_clip_vision, save_clip_vision
from .errors import IPAdapterError
from .sd15 import build_sd15, save_single_file

log = logging.getLogger(__name__)


def make_test_models(out_dir: str | os.PathLike, size: Literal["tiny", "full"] = "tiny",
                     vision: str = "vit-l", seed: int = 0) -> dict[str, Path]:
    """Write `sd15-<size>.safetensors` and `clip-vision-<vision>.safetensors` (fp16) into `out_dir`.

    Returns {"sd15": path, "clip_vision": path}.
    """
    if size not in ("tiny", "full"):
        raise IPAdapterError(f"Unknown model size {size!r}; expected 'tiny' or 'full'.")
    if vision not in PRESETS:
        raise IPAdapterError(f"Unknown CLIP vision preset {vision!r}; expected one of {', '.join(PRESETS)}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    t0 = time.perf_counter()
    sd15 = build_sd15(size, seed=seed)
    written["sd15"] = save_single_file(sd15, out / f"sd15-{size}.safetensors", dtype=torch.float16)
    del sd15  # the full model is 4 GiB in fp32: free it before building the next one
    log.info("SD1.5 (%s) ready in %.1f s: %s", size, time.perf_counter() - t0, written["sd15"])

    t0 = time.perf_counter()
    clip = build_clip_vision(vision, seed=seed)
    written["clip_vision"] = save_clip_vision(clip, out / f"clip-vision-{vision}.safetensors", dtype=torch.float16)
    log.info("CLIP vision (%s) ready in %.1f s: %s", vision, time.perf_counter() - t0, written["clip_vision"])

    log.warning("The models in %s have RANDOM weights: they load like real ones but generate noise; "
                "use them for tests and demos only.", out)
    return written
