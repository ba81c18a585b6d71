"""report.json and loss.png for a training run, plus the measurements they hold."""
from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, Sequence

import torch
from PIL import Image, ImageDraw

from ..storage.weights_io import atomic_write
from .memory import peak_rss_bytes

# The first line of every summary of a run on stand-in (random-weight) models, CLI and node alike.
RANDOM_MODELS_NOTE = "NOTE: random-weight models; these figures show the pipeline runs, not adapter quality."


def peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak memory of this process: CUDA max allocated on a GPU, and the process's peak RSS in bytes."""
    out: dict[str, Any] = {}
    if device.type == "cuda":
        out["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
    out["peak_rss_bytes"] = peak_rss_bytes()  # None where the platform cannot tell (see training/memory.py)
    return out


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: torch.device) -> str:
    """A short human name for where training ran."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"{device.type}: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average, so a noisy per-step loss shows its trend."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_losses(losses: Sequence[float], size: tuple[int, int] = (640, 360)) -> Image.Image:
    """Draw the loss curve (raw and smoothed) as an RGB image; a flat or one-point series is fine."""
    w, h = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 60, w - 20, 20, h - 40
    draw.rectangle([left, top, right, bottom], outline=(180, 180, 180))
    finite = [v for v in losses if math.isfinite(v)]
    if not finite:
        draw.text((left + 10, top + 10), "no loss recorded", fill="black")
        return img
    lo, hi = min(finite), max(finite)
    span = hi - lo or max(abs(hi), 1e-8)  # a flat series would divide by zero
    lo, hi = lo - 0.05 * span, hi + 0.05 * span

    def point(i: int, v: float) -> tuple[float, float]:
        x = left + (right - left) * (i / max(len(losses) - 1, 1))
        return x, bottom - (bottom - top) * (v - lo) / (hi - lo)

    for series, colour in ((losses, (150, 180, 230)), (smooth(losses, max(1, len(losses) // 10)), (20, 60, 160))):
        pts = [point(i, v) for i, v in enumerate(series) if math.isfinite(v)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        else:
            x, y = pts[0]
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    for frac in (0.0, 0.5, 1.0):
        v = hi - frac * (hi - lo)
        draw.text((4, top + frac * (bottom - top) - 6), f"{v:.4g}", fill="black")
    draw.text((left, bottom + 8), "step 1", fill="black")
    draw.text((right - 60, bottom + 8), f"step {len(losses)}", fill="black")
    draw.text((left + 10, top + 4), "training loss (light: per step, dark: moving average)", fill="black")
    return img


def write_report(run_dir: Path, report: dict[str, Any], losses: Sequence[float]) -> dict[str, Path]:
    """Write report.json and loss.png atomically; return their paths."""
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {"report": run_dir / "report.json", "loss_plot": run_dir / "loss.png"}
    text = json.dumps(report, indent=2, default=str)
    atomic_write(paths["report"], lambda p: p.write_text(text))
    image = plot_losses(list(losses))
    atomic_write(paths["loss_plot"], lambda p: image.save(p, format="PNG"))
    return paths


@dataclass
class RunTimes:
    """Where a run's time went, in seconds; the trainer fills it in phase by phase."""

    start: float = field(default_factory=time.perf_counter)
    encode: float = 0.0
    training: float = 0.0  # the steps and their checkpoints
    validation: float = 0.0
    steps: list[float] = field(default_factory=list)  # each step's own time

    def speed(self, images_per_step: int) -> dict[str, float | None]:
        """Seconds per step (median and mean) and images per second, leaving out the first step, which
        pays one-off warm-up costs (unless it is the only one)."""
        steady = self.steps[1:] or self.steps
        sec = median(steady) if steady else None
        return {"seconds_per_step": sec, "mean_seconds_per_step": sum(steady) / len(steady) if steady else None,
                "images_per_second": images_per_step / sec if sec else None}


def training_report(run: dict[str, Any], times: RunTimes, images_per_step: int, device: torch.device,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What report.json holds: `run` (what was trained: config, steps, losses, precision, ...), then the
    speed, each phase's time, peak memory and the device, then the caller's own `extra` figures."""
    return {**run, **times.speed(images_per_step),
            "encode_seconds": times.encode, "training_seconds": times.training,
            "validation_seconds": times.validation, "wall_seconds": time.perf_counter() - times.start,
            "peak_memory": peak_memory(device), "device": device_description(device), **(extra or {})}
