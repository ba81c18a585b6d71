"""The small public API that the CLI and the ComfyUI nodes call.

    from ipadapter_train.api import train_adapter
    from ipadapter_train.config import TrainConfig
    result = train_adapter("my_photos/", "sd15.safetensors", "clip_vision/", "my_adapter.safetensors",
                           TrainConfig(max_steps=50))
"""
from __future__ import annotations

import contextlib
import gc
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from .training.checkpoint import SavedCheckpoint, open_checkpoint
from .models.clip_features import CLIPFeatureEncoder
from .config import TrainConfig
from .storage.data import load_image_folder
from .diffusion.diffusers_backend import DiffusersBackend
from .errors import IPAdapterError
from .training.precision import cpu_has_bf16, frozen_dtype, launched_rank, make_accelerator, weights_memory_note
from .models.random_init import is_random
from .storage.output_lock import output_lock
from .training.identity import model_inputs
from .training.outputs import check_run_outputs, remove_stale_outputs
from .previews.sources import PreviewSource
from .training.trainer import RunHooks, RunPaths, RunPlan, StepCallback, TrainingRun, TrainResult, last_path, train

log = logging.getLogger(__name__)


def default_run_dir(out: Path) -> Path:
    """Where a run keeps report.json, loss.png and its checkpoint: `<out without suffix>-run/`."""
    return out.with_name(out.stem + "-run")


def check_init_encoder(init_adapter: Path, image_encoder: Path) -> None:
    """Refuse an adapter to fine-tune that reads another image encoder's features than `image_encoder` gives,
    from the files' headers (the adapter file is small), naming both encoders."""
    from .adapter.fileformat import load_adapter
    from .models.image_encoders import ENCODER_FIX, adapter_reads, check_encoder, encoder_widths_of_file

    state, metadata = load_adapter(init_adapter)
    reads = adapter_reads(state)
    if reads is not None:
        check_encoder(*reads, metadata, encoder_widths_of_file(image_encoder), image_encoder.name, str(init_adapter),
                      fix=ENCODER_FIX)


def train_adapter(images: str | Path, base_model: str | Path, image_encoder: str | Path, out: str | Path,
                  config: TrainConfig, run_dir: str | Path | None = None, init_adapter: str | Path | None = None,
                  resume: str | Path | SavedCheckpoint | None = None, prompt: str | None = None,
                  callbacks: Sequence[StepCallback] = (), device: str | None = None,
                  encode_progress=None, overwrite: bool = True, previews: PreviewSource | None = None,
                  preview_progress=None, on_preview_plan=None, on_preview=None) -> TrainResult:
    """Load the models and images from paths, train, save the adapter and the report.

    The settings, a resume's checkpoint and the outputs are checked before the models load; `resume` may be
    a run folder or a checkpoint the caller already opened (`training.checkpoint.open_checkpoint`). An existing `out`
    is replaced only with `overwrite` (the CLI's --overwrite; or when the resumed run wrote it), and no file
    the run reads is ever written over. With `config.preview_every`, the run previews (and with a scorer in
    `previews`, scores) the adapter as it trains (previews/sources.py); `on_preview_plan` gets the rounds' schedule and
    estimated cost (previews/rounds.py), `on_preview` each finished round. A second run to the same `out` or run
    folder is refused while the first holds them (`output_lock`).
    """
    started = time.time()
    out = Path(out)
    if out.suffix not in (".safetensors", ".bin"):
        raise IPAdapterError(f"The output {out} must end in .safetensors (or .bin for the old layout).")
    run_dir = Path(run_dir) if run_dir else default_run_dir(out)
    checkpoint = open_checkpoint(Path(resume) if isinstance(resume, str) else resume) if resume else None
    images = Path(images)
    samples, report = load_image_folder(images, prompt=prompt)
    log.info("%s", report.summary())
    # What the run trains on, for its checkpoints; a resume of other settings, images or models is refused first.
    # The models' identities come from their headers and a few sampled bytes, so nothing is loaded yet.
    inputs = model_inputs(base_model, image_encoder)
    plan = RunPlan.check(config, samples, RunPaths(run_dir, out, checkpoint), previews, inputs)
    check_run_outputs(out, run_dir, [Path(base_model), Path(image_encoder), images.parent if images.is_file()
                                     else images, Path(init_adapter) if init_adapter else None,
                                     previews.folder if previews else None],
                      overwrite, checkpoint, [last_path(out)] if config.keep == "best" else [])
    if init_adapter:  # an adapter for another image encoder is refused from the headers, before the models load
        check_init_encoder(Path(init_adapter), Path(image_encoder))
    with contextlib.ExitStack() as held:
        if launched_rank() == 0:  # one run per output at a time; a run's other processes share their main's lock
            held.enter_context(output_lock(out, "--out"))
            held.enter_context(output_lock(run_dir, "the run folder"))
        remove_stale_outputs(out, run_dir, started)
        return _train_loaded(plan, base_model, image_encoder, init_adapter, samples, report, config, callbacks,
                             device, encode_progress, preview_progress, on_preview_plan, on_preview)


def _train_loaded(plan: RunPlan, base_model, image_encoder, init_adapter, samples, report, config: TrainConfig,
                  callbacks, device, encode_progress, preview_progress, on_preview_plan, on_preview) -> TrainResult:
    """`train_adapter` once its inputs are checked and its outputs locked: load the models and run."""
    from .models.clip_vision import load_clip_vision
    from .models.loading import load_model

    accelerator = make_accelerator(config, device)
    dtype = frozen_dtype(accelerator.mixed_precision)
    t0 = time.perf_counter()
    sd = load_model(Path(base_model), dtype=dtype, device="cpu")
    clip = load_clip_vision(Path(image_encoder), dtype=dtype, device="cpu")
    load_seconds = time.perf_counter() - t0
    if accelerator.device.type == "cpu" and accelerator.mixed_precision == "bf16" and not cpu_has_bf16():
        # the slow-but-small choice training/precision.py allows: say what it saves on this model
        frozen = {id(p): p.numel() for m in (*sd.frozen_parts(), clip)
                  for p in m.parameters()}
        log.info("The frozen models hold %s.", weights_memory_note(sum(frozen.values())))
    random_weights = sd.random_weights or is_random(clip)
    backend = DiffusersBackend(sd, accelerator.device, dtype)
    encoder = CLIPFeatureEncoder(clip, accelerator.device, dtype, name=Path(image_encoder).name)
    del clip  # the encoder holds the only reference, so releasing it frees the model
    backend.name = Path(base_model).name

    def release_encoders() -> None:
        # These models were loaded here for this run alone, and the loop needs only the UNet after
        # encoding: dropping the VAE, the text encoder and the image encoder frees about 2 GB (fp32,
        # ViT-L) before the steps. Measured peak RSS of a full-size fp32 run: 8.6 -> 8.2 GB.
        sd.release_encoders(keep_vae=plan.previews is not None)  # previews decode with the VAE
        encoder.model = None
        gc.collect()
        if accelerator.device.type == "cuda":
            torch.cuda.empty_cache()

    hooks = RunHooks(callbacks=callbacks, encode_progress=encode_progress, after_encode=release_encoders,
                     preview_progress=preview_progress, on_preview_plan=on_preview_plan, on_preview=on_preview,
                     metadata={"dataset_images": len(samples), "random_weights": random_weights},
                     report_extra={"model_load_seconds": load_seconds, "dataset": report.to_dict()})
    return TrainingRun(backend, encoder, plan, hooks, Path(init_adapter) if init_adapter else None, accelerator).run()


def train_in_memory(samples, sd, clip, config: TrainConfig, run_dir: Path, out: Path | None,
                    metadata: dict[str, Any] | None = None, callbacks: Sequence[StepCallback] = (),
                    device: str | None = None, **kwargs) -> TrainResult:
    """Train on already loaded models (the demo and the tests use this with random-weight models).

    `kwargs` are `train`'s: `resume=`, `init_adapter=`, `encode_progress=`, ...
    """
    accelerator = make_accelerator(config, device)
    dtype = frozen_dtype(accelerator.mixed_precision)
    backend = DiffusersBackend(sd, accelerator.device, dtype)
    encoder = CLIPFeatureEncoder(clip, accelerator.device, dtype, name=getattr(clip, "name_or_path", "clip"))
    metadata = {"random_weights": bool(sd.random_weights or is_random(clip)), **(metadata or {})}
    return train(backend, encoder, samples, config, RunPaths(run_dir, out), callbacks=callbacks, metadata=metadata,
                 accelerator=accelerator, **kwargs)
