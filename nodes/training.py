"""What the Train node does, apart from its schema: turn graph inputs into the core's samples and
config, run `ipadapter_train.trainer.train` on the ComfyUI back end, and shape the outputs.

On cancel the trainer stops at the next step and this returns the adapter trained so far (the run's
report says `cancelled`); the adapter is also written to the run folder under ComfyUI's temp directory.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

import folder_paths

from ..ipadapter_train.adapter import IPAdapter
from ..ipadapter_train.config import TrainConfig
from ..ipadapter_train.data import Sample
from ..ipadapter_train.errors import IPAdapterError
from ..ipadapter_train.trainer import TrainResult, train
from .comfy_backend import ComfyBackend, ComfyImageEncoder
from .images import tensor_to_pils
from .runs import RunReporter

log = logging.getLogger(__name__)


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


def run_dir_for(node_id: str) -> Path:
    """A fresh run folder under ComfyUI's temp directory (report.json, loss.png, adapter, checkpoints)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(folder_paths.get_temp_directory()) / "ipadapter_train"
    path = base / f"run-{stamp}-node{node_id or 'x'}"
    n = 1
    while path.exists():
        n += 1
        path = base / f"run-{stamp}-node{node_id or 'x'}-{n}"
    return path


def train_in_graph(model: Any, clip: Any, vae: Any, clip_vision: Any, samples: list[Sample], config: TrainConfig,
                   node_id: str, prompt_id: str, init_adapter: IPAdapter | None = None) -> tuple[IPAdapter, TrainResult]:
    """Train on the graph's models; return the adapter (fp32, CPU, `.metadata` set) and the core's result."""
    run_dir = run_dir_for(node_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "adapter.safetensors"
    reporter = RunReporter(node_id, prompt_id, config.total_steps(len(samples)))
    cancelled = False
    try:
        with torch.inference_mode(False):
            backend = ComfyBackend(model, clip, vae)
            encoder = ComfyImageEncoder(clip_vision)
            result = train(backend, encoder, samples, config, run_dir, out_path=out, init_adapter=init_adapter,
                           callbacks=[reporter.step], encode_progress=reporter.encoding,
                           metadata={"dataset_images": len(samples), "trained_with": "ComfyUI node pack"})
        cancelled = result.cancelled
    finally:
        reporter.finish(cancelled)
    adapter = result.adapter.eval().requires_grad_(False)
    adapter.metadata = result.metadata
    return adapter, result


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
        lines.append(f"Conditioning gain {gain['gain']:+.5f} (positive = the adapter uses the image).")
    lines.append(f"Run folder: {result.run_dir}")
    return "\n".join(lines) + "\n\n" + json.dumps(rep, indent=2, default=str)
