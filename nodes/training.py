"""What the Train node does, apart from its schema: turn graph inputs into the core's samples and
config, run `ipadapter_train.trainer.train` on the ComfyUI back end, and shape the outputs.

On cancel the trainer stops at the next step and this returns the adapter trained so far (the run's
report says `cancelled`). Each run keeps its files (adapter, report.json, loss.png, checkpoints) in
`output/ipadapter_train/<run>`: ComfyUI's output directory survives a restart, its temp directory does not.
"""
from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import torch

import comfy.model_management
import folder_paths

from ..ipadapter_train.adapter import IPAdapter
from ..ipadapter_train.batches import total_steps
from ..ipadapter_train.config import TrainConfig
from ..ipadapter_train.data import Sample
from ..ipadapter_train.errors import IPAdapterError
from ..ipadapter_train.trainer import TrainResult, train
from ..ipadapter_train.validation import validation_calls
from .comfy_backend import ComfyBackend, ComfyImageEncoder
from .images import tensor_to_pils
from .runs import RunReporter

log = logging.getLogger(__name__)

RUNS_FOLDER = "ipadapter_train"  # under ComfyUI's output directory
# The Train node's validation setting -> TrainConfig fields. "full" is the core's default (8 images x 4
# timesteps = 32 UNet calls); "quick" makes 8 calls, a rough figure for a fraction of the time.
VALIDATION_MODES: dict[str, dict[str, Any]] = {
    "off": {"validation": False},
    "quick": {"validation": True, "validation_max_images": 4, "validation_timesteps": (300, 700)},
    "full": {"validation": True},
}


def split_captions(captions: str, count: int) -> list[str]:
    """One caption per line for `count` images; a single line (or nothing) is used for all of them."""
    lines = (captions or "").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    while len(lines) > count and lines[-1].strip() == "":
        lines.pop()  # a trailing newline is not an extra caption
    lines = [line.strip() for line in lines]
    if len(lines) == 1:
        return lines * count
    if len(lines) != count:
        raise IPAdapterError(f"Got {len(lines)} caption lines for {count} images: give one caption per line, in "
                             "image order, or a single line for all images.")
    return lines


def samples_from_images(images: torch.Tensor, captions: str) -> list[Sample]:
    """IMAGE [N,H,W,C] + captions -> the core's samples (named image_0000.png ... for the run's records)."""
    if images is None or images.ndim != 4 or images.shape[0] == 0:
        raise IPAdapterError("No training images: connect Load Training Images (or any IMAGE batch) to images.")
    pictures = tensor_to_pils(images)
    texts = split_captions(captions, len(pictures))
    return [Sample(path=Path(f"image_{i:04d}.png"), image=p, caption=c)
            for i, (p, c) in enumerate(zip(pictures, texts))]


def validation_settings(mode: str) -> dict[str, Any]:
    """TrainConfig fields for the node's validation setting (off, quick, full)."""
    if mode not in VALIDATION_MODES:
        raise IPAdapterError(f"Unknown validation setting {mode!r}: use one of {', '.join(VALIDATION_MODES)}.")
    return dict(VALIDATION_MODES[mode])


def make_run_dir(node_id: str) -> Path:
    """Create a fresh run folder `output/ipadapter_train/run-<date>-<time>-node<id>` and return it.

    The name holds only letters, digits and '-' (a subgraph node's id "12:5" becomes "12-5"), so it is a
    valid folder name on Windows too; a second run in the same second gets a "-2" suffix.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    node = re.sub(r"[^A-Za-z0-9]+", "-", node_id).strip("-") or "x"
    base = Path(folder_paths.get_output_directory()) / RUNS_FOLDER
    base.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        path = base / (f"run-{stamp}-node{node}" + (f"-{n}" if n > 1 else ""))
        try:
            path.mkdir()  # exist_ok=False: two runs never share a folder
            return path
        except FileExistsError:
            n += 1


def train_in_graph(model: Any, clip: Any, vae: Any, clip_vision: Any, samples: list[Sample], config: TrainConfig,
                   node_id: str, prompt_id: str, init_adapter: IPAdapter | None = None,
                   workflow_id: str | None = None, client_id: str | None = None) -> tuple[IPAdapter, TrainResult]:
    """Train on the graph's models; return the adapter (fp32, CPU, `.metadata` set) and the core's result.

    `workflow_id` (the id of the editor workflow that queued the prompt) and `client_id` (the page that
    queued it) go into the run's events, so only that page draws the run, on that workflow's Train node.
    """
    with torch.inference_mode(False):  # the back end's schedule and state must be ordinary tensors
        backend = ComfyBackend(model, clip, vae)
        encoder = ComfyImageEncoder(clip_vision)
    # The model's family fills in the resolution (0 on the node = 512 SD1.5, 1024 SDXL) before counting: with
    # buckets the step count depends on it. The trainer resolves and counts the same way.
    config = config.for_family(backend.family)
    config.validate()
    steps = total_steps(config, [s.image.size for s in samples], 1)
    run_dir = make_run_dir(node_id)
    out = run_dir / "adapter.safetensors"
    reporter = RunReporter(node_id, prompt_id, steps, len(samples), validation_calls(len(samples), config),
                           config.batch_size, workflow_id, client_id)
    cancelled, failed = False, True
    try:
        with torch.inference_mode(False):
            result = train(backend, encoder, samples, config, run_dir, out_path=out, init_adapter=init_adapter,
                           callbacks=[reporter.step], encode_progress=reporter.encoding,
                           validation_progress=reporter.validating,
                           metadata={"dataset_images": len(samples), "trained_with": "ComfyUI node pack"})
        cancelled, failed = result.cancelled, False
    except comfy.model_management.InterruptProcessingException:
        cancelled, failed = True, False  # cancelled before the first step: the prompt stops, nothing was trained
        raise
    finally:
        reporter.finish(cancelled, failed)
        _remove_if_empty(run_dir)
    adapter = result.adapter.eval().requires_grad_(False)
    adapter.metadata = result.metadata
    return adapter, result


def _remove_if_empty(run_dir: Path) -> None:
    """A run that stopped before writing anything leaves no empty folder behind in output/."""
    try:
        run_dir.rmdir()
    except OSError:  # not empty (the run's files, or a checkpoint of a failed run): keep what is there
        pass


def report_text(result: TrainResult) -> str:
    """A short summary for the canvas, then the full report.json."""
    rep = result.report
    lines = [f"{'Cancelled' if result.cancelled else 'Trained'}: {result.steps_done} of {result.total_steps} steps."]
    if result.losses:
        tail = result.losses[-min(10, len(result.losses)):]
        lines.append(f"Loss: first {result.losses[0]:.4f}, mean of the last {len(tail)} {sum(tail) / len(tail):.4f}.")
    if rep.get("seconds_per_step"):
        lines.append(f"{rep['seconds_per_step']:.3f} s per step on {rep.get('device')}.")
    gain = rep.get("conditioning_gain") or {}
    if gain.get("gain") is not None:
        lines.append(f"Conditioning gain {gain['gain']:+.5f} over {gain.get('images')} images x "
                     f"{len(gain.get('timesteps') or [])} timesteps (positive = the adapter uses the image).")
    elif gain.get("note"):
        lines.append(f"Conditioning gain: {gain['note']}.")
    elif not rep.get("config", {}).get("validation", True):
        lines.append("Validation off: no conditioning gain.")
    elif not result.cancelled:
        lines.append("Validation cancelled: no conditioning gain (the adapter is complete).")
    lines.append(f"Run folder (adapter, report.json, loss.png): {result.run_dir}")
    return "\n".join(lines) + "\n\n" + json.dumps(rep, indent=2, default=str)
