"""Training through the front door: plan a run once, then train it; or both from paths (`train_adapter`) or from
models already in memory (`train_in_memory`).

    plan = plan_run(config, samples, backend.family, paths=RunPaths(run_dir, out), previews=source)
    result = train(plan, backend, encoder, RunHooks(progress=on_event))
"""
from __future__ import annotations

import contextlib
import gc
import logging
import time
from pathlib import Path
from typing import Any

import torch

from ..config import TrainConfig
from ..errors import IPAdapterError
from ..previews.sources import PreviewSource
from ..storage.data import Sample, load_image_folder
from ..storage.output_lock import output_lock
from ..training.checkpoint import SavedCheckpoint, open_checkpoint
from ..training.identity import model_inputs
from ..training.outputs import check_run_outputs, last_path, remove_stale_outputs
from ..training.plan import BatchControl, Progress, RunHooks, RunPaths, RunPlan, plan_run
from ..training.precision import cpu_has_bf16, frozen_dtype, launched_rank, make_accelerator, weights_memory_note
from ..training.trainer import TrainResult, train

log = logging.getLogger(__name__)


def default_run_dir(out: Path) -> Path:
    """Where a run keeps report.json, loss.png and its checkpoint: `<out without suffix>-run/`."""
    return out.with_name(out.stem + "-run")


def check_init_encoder(init_adapter: Path, image_encoder: Path) -> None:
    """Refuse an adapter to fine-tune that reads another image encoder's features than `image_encoder` gives,
    from the files' headers (the adapter file is small), naming both encoders."""
    from ..adapter.fileformat import load_adapter
    from ..models.image_encoders import ENCODER_FIX, adapter_reads, check_encoder, encoder_widths_of_file

    state, metadata = load_adapter(init_adapter)
    reads = adapter_reads(state)
    if reads is not None:
        check_encoder(*reads, metadata, encoder_widths_of_file(image_encoder), image_encoder.name, str(init_adapter),
                      fix=ENCODER_FIX)


def train_adapter(images: str | Path, base_model: str | Path, image_encoder: str | Path, out: str | Path,
                  config: TrainConfig, run_dir: str | Path | None = None, init_adapter: str | Path | None = None,
                  resume: str | Path | SavedCheckpoint | None = None, prompt: str | None = None,
                  progress: Progress | None = None, device: str | None = None, overwrite: bool = True,
                  previews: PreviewSource | None = None, control: BatchControl | None = None) -> TrainResult:
    """Load the models and images from paths, train, save the adapter and the report.

    The run is planned (`plan_run`: settings, a resume's checkpoint) and its outputs checked before the models load;
    `resume` may be a run folder or a checkpoint the caller already opened (`training.checkpoint.open_checkpoint`).
    An existing `out` is replaced only with `overwrite` (the CLI's --overwrite; or when the resumed run wrote it),
    and no file the run reads is ever written over. With `config.preview_every`, the run previews (and with a scorer
    in `previews`, scores) the adapter as it trains (previews/sources.py). `progress` gets every `RunEvent`. A second
    run to the same `out` or run folder is refused while the first holds them (`output_lock`). `control` is for
    experiments only (training/plan.py `BatchControl`).
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
    # The models' family and identities come from their headers and a few sampled bytes, so nothing is loaded yet.
    inputs = model_inputs(base_model, image_encoder)
    plan = plan_run(config, samples, inputs.get("family"), paths=RunPaths(run_dir, out, checkpoint),
                    previews=previews, init_adapter=init_adapter, inputs=inputs)
    check_run_outputs(out, run_dir, [Path(base_model), Path(image_encoder), images.parent if images.is_file()
                                     else images, Path(init_adapter) if init_adapter else None,
                                     previews.folder if previews else None],
                      overwrite, checkpoint, [last_path(out)] if plan.config.keep == "best" else [])
    if init_adapter:  # an adapter for another image encoder is refused from the headers, before the models load
        check_init_encoder(Path(init_adapter), Path(image_encoder))
    with contextlib.ExitStack() as held:
        if launched_rank() == 0:  # one run per output at a time; a run's other processes share their main's lock
            held.enter_context(output_lock(out, "--out"))
            held.enter_context(output_lock(run_dir, "the run folder"))
        remove_stale_outputs(out, run_dir, started)
        return _train_loaded(plan, Path(base_model), Path(image_encoder), len(samples), report, progress, device,
                             control)


def _train_loaded(plan: RunPlan, base_model: Path, image_encoder: Path, images: int, report, progress: Progress | None,
                  device: str | None, control: BatchControl | None = None) -> TrainResult:
    """`train_adapter` once its run is planned and its outputs locked: load the models and run."""
    from ..diffusion.diffusers_backend import DiffusersBackend
    from ..models.clip_features import CLIPFeatureEncoder
    from ..models.clip_vision import load_clip_vision
    from ..models.loading import load_model
    from ..models.random_init import is_random

    accelerator = make_accelerator(plan.config, device)
    dtype = frozen_dtype(accelerator.mixed_precision)
    t0 = time.perf_counter()
    sd = load_model(base_model, dtype=dtype, device="cpu")
    clip = load_clip_vision(image_encoder, dtype=dtype, device="cpu")
    load_seconds = time.perf_counter() - t0
    if accelerator.device.type == "cpu" and accelerator.mixed_precision == "bf16" and not cpu_has_bf16():
        # the slow-but-small choice training/precision.py allows: say what it saves on this model
        frozen = {id(p): p.numel() for m in (*sd.frozen_parts(), clip)
                  for p in m.parameters()}
        log.info("The frozen models hold %s.", weights_memory_note(sum(frozen.values())))
    random_weights = sd.random_weights or is_random(clip)
    backend = DiffusersBackend(sd, accelerator.device, dtype)
    encoder = CLIPFeatureEncoder(clip, accelerator.device, dtype, name=image_encoder.name)
    del clip  # the encoder holds the only reference, so releasing it frees the model
    backend.name = base_model.name

    def release_encoders() -> None:
        # These models were loaded here for this run alone, and the loop needs only the UNet after
        # encoding: dropping the VAE, the text encoder and the image encoder frees about 2 GB (fp32,
        # ViT-L) before the steps. Measured peak RSS of a full-size fp32 run: 8.6 -> 8.2 GB.
        sd.release_encoders(keep_vae=plan.previews is not None)  # previews decode with the VAE
        encoder.model = None
        gc.collect()
        if accelerator.device.type == "cuda":
            torch.cuda.empty_cache()

    hooks = RunHooks(progress=progress, after_encode=release_encoders,
                     metadata={"dataset_images": images, "random_weights": random_weights},
                     report_extra={"model_load_seconds": load_seconds, "dataset": report.to_dict()}, control=control)
    return train(plan, backend, encoder, hooks, accelerator)


def train_in_memory(samples: list[Sample], sd, clip, config: TrainConfig, run_dir: Path, out: Path | None,
                    metadata: dict[str, Any] | None = None, progress: Progress | None = None,
                    device: str | None = None, *, resume: Path | SavedCheckpoint | None = None,
                    init_adapter: Any = None, previews: PreviewSource | None = None,
                    control: BatchControl | None = None) -> TrainResult:
    """Train on already loaded models (the demo and the tests use this with random-weight models): plan the run on
    them (`init_adapter`, a file or an `IPAdapter`, is checked against them there) and train it. `control`: as
    `train_adapter`'s."""
    from ..diffusion.diffusers_backend import DiffusersBackend
    from ..models.clip_features import CLIPFeatureEncoder
    from ..models.random_init import is_random

    accelerator = make_accelerator(config, device)
    dtype = frozen_dtype(accelerator.mixed_precision)
    backend = DiffusersBackend(sd, accelerator.device, dtype)
    encoder = CLIPFeatureEncoder(clip, accelerator.device, dtype, name=getattr(clip, "name_or_path", "clip"))
    plan = plan_run(config, samples, paths=RunPaths(run_dir, out, resume), previews=previews,
                    init_adapter=init_adapter, models=(backend, encoder), world=accelerator.num_processes)
    metadata = {"random_weights": bool(sd.random_weights or is_random(clip)), **(metadata or {})}
    return train(plan, backend, encoder, RunHooks(progress=progress, metadata=metadata, control=control), accelerator)
