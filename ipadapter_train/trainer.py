"""The training loop. It reads top to bottom: encode once -> (batch -> forward -> backward -> step ->
log -> checkpoint) x N -> save -> validate -> report.

It knows nothing of any UI: progress and cancellation go through step callbacks
`callback(step, total, loss)`, which may raise `TrainingCancelled`. Every random draw of step s comes
from a generator seeded by (seed, s, rank), so a run stopped and resumed draws exactly what an
uninterrupted run draws, and `checkpoint.py` needs to store no RNG state beyond the step.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .adapter import IPAdapter
from .backend import DiffusionBackend, ImageFeatureEncoder
from .checkpoint import load_checkpoint, read_checkpoint_info, save_checkpoint
from .config import TrainConfig
from .data import Sample
from .encoding import EncodedDataset, Progress, encode_dataset
from .errors import IPAdapterError, TrainingCancelled, TrainingDiverged
from .fileformat import file_metadata, save_adapter
from .adapter_init import build_adapter
from .precision import make_accelerator
from .report import device_description, peak_memory, write_report
from .validation import conditioning_gain

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int, float], None]
RESUME_MAY_DIFFER = {"epochs", "max_steps", "checkpoint_every", "validation", "validation_timesteps",
                     "validation_max_images", "extra", "mixed_precision", "gradient_checkpointing"}


@dataclass
class TrainResult:
    """What a run produced."""

    adapter: IPAdapter  # fp32, on CPU
    steps_done: int
    total_steps: int
    cancelled: bool
    losses: list[float]
    report: dict[str, Any]
    run_dir: Path
    out_path: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)  # what the adapter file holds (or would hold)


def _seed(*parts: int) -> int:
    """Mix integers into one 63-bit seed (stable across runs and machines)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


class _StepModule(nn.Module):
    """What DDP wraps: the adapter's parameters, with the frozen model reached through the backend."""

    def __init__(self, adapter: IPAdapter, backend: DiffusionBackend) -> None:
        super().__init__()
        self.adapter = adapter
        self.backend = backend  # a plain object, so the frozen UNet is never a registered submodule

    def forward(self, noisy: torch.Tensor, t: torch.Tensor, text: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        return self.backend.predict_noise(noisy, t, text, self.adapter.project(feats))


def _batch_indices(step: int, n: int, config: TrainConfig, rank: int, world: int) -> list[int]:
    """This process's images for a step: a fresh permutation per epoch, wrapping so every rank gets a full batch."""
    spe = config.steps_per_epoch(n, world)
    epoch, pos = divmod(step, spe)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(config.seed, epoch, 0xE90C))).tolist()
    start = pos * config.batch_size * world + rank * config.batch_size
    return [perm[(start + j) % n] for j in range(config.batch_size)]


def _make_batch(data: EncodedDataset, indices: list[int], gen: torch.Generator, config: TrainConfig,
                alphas: torch.Tensor) -> dict[str, torch.Tensor]:
    """Latent crop + flip + posterior sample + condition dropout + noise, all from `gen`."""
    size = config.resolution // 8
    latents, feats, texts = [], [], []
    dt, di, db = config.drop_text, config.drop_image, config.drop_both
    for i in indices:
        flip = config.flip and bool(torch.rand((), generator=gen) < 0.5)
        mean = data.flip_mean[i] if flip else data.latent_mean[i]
        std = data.flip_std[i] if flip else data.latent_std[i]
        h, w = mean.shape[-2:]
        if config.random_crop:
            top = int(torch.randint(0, h - size + 1, (), generator=gen))
            left = int(torch.randint(0, w - size + 1, (), generator=gen))
        else:
            top, left = (h - size) // 2, (w - size) // 2
        window = (slice(None), slice(top, top + size), slice(left, left + size))
        latents.append(mean[window] + std[window] * torch.randn((4, size, size), generator=gen))
        r = float(torch.rand((), generator=gen))
        drop_text = r < dt or dt + di <= r < dt + di + db
        drop_image = dt <= r < dt + di + db
        f = data.flip_features[i] if flip else data.features[i]
        feats.append(data.dropped_features[0] if drop_image else f)
        texts.append(data.empty_text[0] if drop_text else data.text[data.text_index[i]])
    x0 = torch.stack(latents)
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, len(alphas), (len(indices),), generator=gen)
    a = alphas[t].view(-1, 1, 1, 1)
    return {"noisy": a.sqrt() * x0 + (1 - a).sqrt() * noise, "noise": noise, "t": t,
            "text": torch.stack(texts), "feats": torch.stack(feats)}


def _fingerprint(samples: Sequence[Sample]) -> list[str]:
    return [f"{s.path.name}|{s.caption}" for s in samples]


def _check_resume(resume: Path, config: TrainConfig, samples: Sequence[Sample]) -> None:
    """Refuse a checkpoint of other settings or other images, before any model work is spent on the run."""
    info = read_checkpoint_info(resume)
    saved = TrainConfig.from_dict(info["config"]).to_dict()
    differs = sorted(k for k, v in config.to_dict().items() if k not in RESUME_MAY_DIFFER and saved.get(k) != v)
    if differs:
        raise IPAdapterError(f"The checkpoint in {resume} was trained with other settings ({', '.join(differs)}): "
                             "resume with the same settings, or start a new run.")
    if info.get("dataset") != _fingerprint(samples):
        raise IPAdapterError(f"The checkpoint in {resume} was trained on other images or captions: resume with "
                             "the same folder, or start a new run.")


def _restore(resume: Path, adapter: IPAdapter, optimizer) -> tuple[int, list[float]]:
    """Load a checkpoint `_check_resume` accepted into the adapter and the optimizer."""
    state = load_checkpoint(resume)
    adapter.load_state_dict(state.adapter)
    optimizer.load_state_dict(state.optimizer)
    log.info("Resumed from %s at step %d.", resume, state.step)
    return state.step, list(state.info.get("losses", []))


def train(backend: DiffusionBackend, encoder: ImageFeatureEncoder, samples: Sequence[Sample], config: TrainConfig,
          run_dir: Path, out_path: Path | None = None, init_adapter: Path | IPAdapter | None = None,
          resume: Path | None = None,
          callbacks: Sequence[StepCallback] = (), encode_progress: Progress | None = None,
          metadata: dict[str, Any] | None = None, accelerator=None,
          after_encode: Callable[[], None] | None = None, report_extra: dict[str, Any] | None = None,
          validation_progress: Progress | None = None) -> TrainResult:
    """Train an adapter on `samples`; save it to `out_path` and write report.json/loss.png in `run_dir`.

    `after_encode` runs once the dataset is encoded: from then on the loop needs only the UNet, so a
    caller that owns the VAE and the encoders can free them there. `report_extra` adds the caller's own
    figures (model load time, data set summary) to report.json. `validation_progress(done, total)` follows
    the validation phase (one call per UNet call); a `TrainingCancelled` from it skips the rest of validation.
    """
    config.validate()
    run_dir = Path(run_dir)
    wall_start = time.perf_counter()
    accelerator = accelerator or make_accelerator(config, backend.device, backend.dtype)
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process

    if resume is not None:
        _check_resume(Path(resume), config, samples)
    adapter = build_adapter(backend, encoder, config, init_adapter).to(backend.device)
    t0 = time.perf_counter()
    data = encode_dataset(samples, backend, encoder, config, encode_progress)
    encode_seconds = time.perf_counter() - t0
    if after_encode is not None:
        after_encode()
    if config.gradient_checkpointing:
        backend.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    total = config.total_steps(len(samples), world)
    start, losses = (0, [])
    if resume is not None:
        start, losses = _restore(Path(resume), adapter, optimizer)
    step_module, optimizer = accelerator.prepare(_StepModule(adapter, backend), optimizer)
    info = {"config": config.to_dict(), "dataset": _fingerprint(samples), "world_size": world}

    def checkpoint(step: int) -> None:
        if main and config.checkpoint_every:
            save_checkpoint(run_dir, step, adapter.state_dict(), optimizer.state_dict(), {**info, "losses": losses})
        accelerator.wait_for_everyone()

    backend.attach(adapter)
    step_times: list[float] = []
    train_start = time.perf_counter()
    done, cancelled = start, False
    try:
        for step in range(start, total):
            tick = time.perf_counter()
            gen = torch.Generator().manual_seed(_seed(config.seed, step, rank))
            batch = _make_batch(data, _batch_indices(step, len(samples), config, rank, world), gen, config,
                                backend.alphas_cumprod)
            batch = {k: v.to(backend.device) for k, v in batch.items()}
            with accelerator.autocast():
                pred = step_module(batch["noisy"], batch["t"], batch["text"], batch["feats"])
            loss = F.mse_loss(pred.float(), batch["noise"])
            loss_value = float(accelerator.gather(loss.detach().reshape(1)).mean())
            if not math.isfinite(loss_value):
                last = (step // config.checkpoint_every) * config.checkpoint_every if config.checkpoint_every else 0
                raise TrainingDiverged(
                    f"The loss became {loss_value} at step {step + 1}: training stopped, the last good checkpoint "
                    f"(step {last}) in {run_dir} is kept; lower the learning rate or train in fp32/bf16.")
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            losses.append(loss_value)
            step_times.append(time.perf_counter() - tick)
            stop = False
            if main:
                try:
                    for callback in callbacks:
                        callback(done, total, loss_value)
                except TrainingCancelled:
                    stop = True
            if world > 1:  # every process must leave the loop together, or the others hang in all-reduce
                stop = bool(accelerator.reduce(torch.tensor([float(stop)], device=backend.device), "sum") > 0)
            if stop:
                raise TrainingCancelled()
            if config.checkpoint_every and done % config.checkpoint_every == 0 and done < total:
                checkpoint(done)
    except (TrainingCancelled, KeyboardInterrupt):
        cancelled = True
        log.warning("Training cancelled after %d of %d steps; saving the adapter trained so far.", done, total)
    finally:
        backend.detach()

    training_seconds = time.perf_counter() - train_start  # steps plus checkpoints
    checkpoint(done)
    adapter = accelerator.unwrap_model(step_module).adapter
    meta = {**(metadata or {}), "steps": done, "training_config": config.to_dict(),
            "base_model": backend.name, "image_encoder": encoder.name}
    if cancelled:
        meta["cancelled_at_step"] = done
    files: dict[str, Path] = {}
    if main and out_path is not None:
        files["adapter"] = save_adapter(adapter.state_dict(), Path(out_path), meta)
    gain, t0 = None, time.perf_counter()
    if config.validation and not cancelled:
        log.info("Validating: conditioning gain over %d image(s) x %d timestep(s), one UNet call each "
                 "(--no-validation skips it).", min(len(samples), config.validation_max_images),
                 len(config.validation_timesteps))
        backend.attach(adapter)
        try:
            gain = conditioning_gain(adapter, backend, data, config, accelerator.autocast, validation_progress)
        except TrainingCancelled:
            log.warning("Validation cancelled; the adapter is saved, the report has no conditioning gain.")
        finally:
            backend.detach()
    validation_seconds = time.perf_counter() - t0
    new_times = step_times[1:] or step_times  # the first step pays one-off warm-up costs
    sec = median(new_times) if new_times else None
    report = {
        "random_weights": bool((metadata or {}).get("random_weights", False)),
        "config": config.to_dict(), "steps": done, "total_steps": total, "cancelled": cancelled,
        "losses": losses, "seconds_per_step": sec,
        "mean_seconds_per_step": sum(new_times) / len(new_times) if new_times else None,
        "images_per_second": config.batch_size * world / sec if sec else None,
        "encode_seconds": encode_seconds, "training_seconds": training_seconds,
        "validation_seconds": validation_seconds, "wall_seconds": time.perf_counter() - wall_start,
        "peak_memory": peak_memory(backend.device), "device": device_description(backend.device),
        "precision": accelerator.mixed_precision, "frozen_dtype": str(backend.dtype).replace("torch.", ""),
        "world_size": world, "conditioning_gain": gain, "base_model": backend.name,
        "image_encoder": encoder.name, "adapter": str(out_path) if out_path else None,
        **(report_extra or {}),
    }
    if main:
        files.update(write_report(run_dir, report, losses))
    return TrainResult(adapter.cpu(), done, total, cancelled, losses, report, run_dir,
                       Path(out_path) if out_path else None, files, file_metadata(adapter.spec, meta))
