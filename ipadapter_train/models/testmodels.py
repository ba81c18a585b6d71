"""Write random-weight test models: a single-file checkpoint (SD1.5 or SDXL), a CLIP vision file and a full
CLIP scorer (both towers, what `score`, `--clip` and the Score node read).

No real CLIP or SD weights can be downloaded here, so tests, demos and the ComfyUI integration run
on models built from configs. They load everywhere real ones do (this package, diffusers, ComfyUI)
but produce noise: they prove plumbing, never quality. Both are drawn directly in fp16, the dtype
they are written in, so even the full-size SDXL (2.6B UNet) is held once, about 7 GB.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from ..errors import IPAdapterError
from ..families import get_family
from .clip_model import build_clip, save_clip
from .clip_vision import PRESETS, build_clip_vision, save_clip_vision
from .random_models import SIZES, Size, build_model
from .single_file import save_single_file

log = logging.getLogger(__name__)

# The CLIP vision preset each family's public adapters use by default (SD1.5's test default stays ViT-L).
DEFAULT_VISION = {"sd15": "vit-l", "sdxl": "vit-h"}
# The full CLIP scorer's preset per model size (models/clip_model.py's presets).
SCORER_PRESET = {"tiny": "tiny", "narrow": "tiny", "full": "vit-l"}


def make_test_models(out_dir: str | os.PathLike, size: Size = "tiny", vision: str | None = None,
                     seed: int = 0, family: str = "sd15", scorer: str | None = None) -> dict[str, Path]:
    """Write `<family>-<size>.safetensors`, `clip-vision-<vision>.safetensors` and `clip-scorer-<preset>.safetensors`
    (fp16) into `out_dir`.

    `vision` defaults to the family's (SD1.5: vit-l, SDXL: vit-h). The scorer is a full CLIP in the transformers
    key layout; `scorer` defaults to tiny for sizes tiny and narrow and OpenAI ViT-L/14's shape (the paper's
    scorer) for size full, and "none" writes none. Returns
    {family: path, "clip_vision": path, "clip_scorer": path}, e.g. {"sdxl": .../sdxl-tiny.safetensors, ...}.
    """
    fam = get_family(family)
    if size not in SIZES:
        raise IPAdapterError(f"Unknown model size {size!r}; expected one of {', '.join(SIZES)}.")
    vision = vision or DEFAULT_VISION.get(fam.name, "vit-h")
    if vision not in PRESETS:
        raise IPAdapterError(f"Unknown CLIP vision preset {vision!r}; expected one of {', '.join(PRESETS)}.")
    if scorer not in (None, "none", *SCORER_PRESET.values()):
        raise IPAdapterError(f"Unknown CLIP scorer preset {scorer!r}; expected tiny, vit-l or none.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    t0 = time.perf_counter()
    model = build_model(fam, size, seed=seed, dtype=torch.float16)
    written[fam.name] = save_single_file(model, out / f"{fam.name}-{size}.safetensors", dtype=torch.float16)
    del model  # a full model is gigabytes: free it before building the next one
    log.info("%s (%s) ready in %.1f s: %s", fam.label, size, time.perf_counter() - t0, written[fam.name])

    t0 = time.perf_counter()
    clip = build_clip_vision(vision, seed=seed, dtype=torch.float16)
    written["clip_vision"] = save_clip_vision(clip, out / f"clip-vision-{vision}.safetensors", dtype=torch.float16)
    del clip
    log.info("CLIP vision (%s) ready in %.1f s: %s", vision, time.perf_counter() - t0, written["clip_vision"])

    preset = scorer or SCORER_PRESET[size]
    if preset != "none":
        t0 = time.perf_counter()
        model = build_clip(preset, seed=seed, dtype=torch.float16)  # carries the random-weights mark into the file
        written["clip_scorer"] = save_clip(model, out / f"clip-scorer-{preset}.safetensors", dtype=torch.float16)
        del model
        log.info("CLIP scorer (%s) ready in %.1f s: %s", preset, time.perf_counter() - t0, written["clip_scorer"])

    log.warning("The models in %s have RANDOM weights: they load like real ones but generate noise; "
                "use them for tests and demos only.", out)
    return written
