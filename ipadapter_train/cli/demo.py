"""`ipadapter-train demo`: train on the five shipped sample photos, save, inspect and report.

Without model paths it builds small random-weight SD1.5-layout models in memory and says so: the
run shows the whole pipeline working, not adapter quality. With real paths it does the same for real.
"""
from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Any

from ..api import (IPAdapterError, Progress, TrainConfig, TrainResult, inspect_adapter, load_image_folder,
                   train_adapter, train_in_memory)

log = logging.getLogger(__name__)

# Random-weight demo settings: small enough for 2 CPU cores in well under two minutes.
RANDOM_DEMO = {"resolution": 128, "max_steps": 40, "checkpoint_every": 10, "learning_rate": 1e-4}


def samples_dir() -> Path:
    """The folder of shipped sample photos and captions."""
    return Path(str(resources.files("ipadapter_train") / "assets" / "samples"))


def run_demo(out_dir: Path, base_model: Path | None = None, image_encoder: Path | None = None,
             config: TrainConfig | None = None, progress: Progress | None = None,
             device: str | None = None) -> tuple[TrainResult, dict[str, Any]]:
    """Train on the samples; return the run's result and the inspected adapter."""
    out_dir = Path(out_dir)
    out = out_dir / "demo_adapter.safetensors"
    if base_model is not None or image_encoder is not None:
        if base_model is None or image_encoder is None:
            raise IPAdapterError("Give both --base-model and --image-encoder, or neither for the random-weight demo.")
        result = train_adapter(samples_dir(), base_model, image_encoder, out, config or TrainConfig(),
                               run_dir=out_dir / "run", progress=progress, device=device,
                               overwrite=True)  # the demo's folder is its own: a second demo replaces the first
        return result, inspect_adapter(out)

    from ..models.clip_vision import build_clip_vision
    from ..models.sd15 import build_sd15

    log.warning("No --base-model given: building small SD1.5-layout models with RANDOM weights. The demo shows "
                "the pipeline working end to end; its losses and scores say nothing about adapter quality.")
    config = config or TrainConfig(**RANDOM_DEMO)
    samples, report = load_image_folder(samples_dir())
    log.info("%s", report.summary())
    sd = build_sd15("tiny", seed=0)
    sd.source = "random-weight tiny SD1.5 (demo)"
    clip = build_clip_vision("tiny", seed=0)
    result = train_in_memory(samples, sd, clip, config, out_dir / "run", out,
                             metadata={"random_weights": True, "dataset_images": len(samples)},
                             progress=progress, device=device)
    return result, inspect_adapter(out)
