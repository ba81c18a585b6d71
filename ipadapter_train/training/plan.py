"""What a training run is given, checked before any model loads: its settings and images (`RunPlan`, which
holds preview images out and refuses a resume of other settings or images), where it writes (`RunPaths`) and
what a caller adds to it (`RunHooks`: progress, cancellation, work between phases, records)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .checkpoint import SavedCheckpoint, open_checkpoint
from ..config import TrainConfig
from ..storage.data import Sample
from .encoding import Progress
from ..errors import IPAdapterError
from ..previews.sources import PreviewSource, Previews, plan_previews
from .identity import check_trained_on, image_hashes

StepCallback = Callable[[int, int, float], None]

RESUME_MAY_DIFFER = {"epochs", "max_steps", "checkpoint_every", "validation", "validation_timesteps",
                     "validation_max_images", "extra", "mixed_precision", "gradient_checkpointing", "preview_every",
                     "preview_size", "preview_steps", "preview_guidance", "preview_weights", "preview_seed", "keep",
                     "early_stop"}
PreviewHook = Callable[[dict, Any], None]  # (the round: step, grid path, score..., the grid image)


@dataclass
class RunPaths:
    """Where a run reads and writes."""

    run_dir: Path  # report.json, loss.png and the resumable checkpoint/
    out_path: Path | None = None  # the adapter file; None: not saved
    resume: Path | SavedCheckpoint | None = None  # the run folder (or opened checkpoint) of a stopped run

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.out_path = Path(self.out_path) if self.out_path is not None else None
        if self.resume is not None and not isinstance(self.resume, SavedCheckpoint):
            self.resume = Path(self.resume)


@dataclass
class RunHooks:
    """What a caller adds to a run: progress and cancellation, work between phases, its own records."""

    callbacks: Sequence[StepCallback] = ()  # after every step on the main process; may raise TrainingCancelled
    encode_progress: Progress | None = None  # (done, total) while the images are encoded
    validation_progress: Progress | None = None  # (done, total), one call per UNet call; TrainingCancelled
    #                                              skips the rest of validation
    preview_progress: Progress | None = None  # (done, total) sampling steps of a preview round; TrainingCancelled
    #                                           stops the run at once
    on_preview: PreviewHook | None = None  # after every preview round, on the main process
    on_preview_plan: Callable[[Any], None] | None = None  # the `previews.rounds.PreviewPlan`, at set-up and again
    #                                                       with the measured step time after the first step
    after_encode: Callable[[], None] | None = None  # e.g. free the VAE and encoders: the steps need only the UNet
    metadata: dict[str, Any] = field(default_factory=dict)  # added to the adapter file's metadata
    report_extra: dict[str, Any] = field(default_factory=dict)  # added to report.json (load time, data set, ...)


def fingerprint(samples: Sequence[Sample]) -> list[str]:
    return [f"{s.path.name}|{s.caption}" for s in samples]


def _check_resume(checkpoint: SavedCheckpoint, config: TrainConfig, samples: Sequence[Sample],
                  trained_on: dict[str, Any] | None = None) -> SavedCheckpoint:
    """Refuse a checkpoint of other settings, other images or other models, before any model work is spent on
    the run. `trained_on` is this run's record (`RunPlan.trained_on`): the models' identities, if known, and
    the images' hashes."""
    resume, info = checkpoint.folder, checkpoint.info
    saved = TrainConfig.from_dict(info["config"]).to_dict()
    if config.resolution is None:  # no size given: the resumed run goes on at its own
        config.resolution = saved["resolution"]
    differs = sorted(k for k, v in config.to_dict().items() if k not in RESUME_MAY_DIFFER and saved.get(k) != v)
    if differs:
        raise IPAdapterError(f"The checkpoint in {resume} was trained with other settings ({', '.join(differs)}): "
                             "resume with the same settings, or start a new run.")
    if info.get("dataset") != fingerprint(samples):
        raise IPAdapterError(f"The checkpoint in {resume} was trained on other images or captions: resume with "
                             "the same folder, or start a new run.")
    if trained_on is not None:
        check_trained_on(resume, info.get("trained_on"), trained_on.get("inputs"), trained_on.get("images"))
    return checkpoint


@dataclass
class RunPlan:
    """A run's settings, images and paths, checked before any model is loaded: `RunPlan.check`."""

    config: TrainConfig
    samples: Sequence[Sample]  # the images it trains on (held-out preview images are not among them)
    paths: RunPaths  # `resume`, if any, is the opened and accepted checkpoint
    previews: Previews | None = None  # None: previews are off
    scorer: Any = None  # a `scoring.scorer.Scorer` for the previews, or None
    # What the run trains on, for its checkpoints' "trained_on": the models' family and identities
    # (`training.identity.model_inputs`, when the run was given paths) and every given image's hash
    trained_on: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def check(cls, config: TrainConfig, samples: Sequence[Sample], paths: RunPaths,
              previews: PreviewSource | None = None, inputs: dict[str, Any] | None = None) -> RunPlan:
        """Validate the settings, hold preview images out, and refuse a resume of other settings, images or
        models (reading its state.json once). `inputs`: `training.identity.model_inputs` of the run's model files."""
        config.validate()
        hashes = image_hashes(samples)  # all of them, the held-out preview images too
        samples, planned = plan_previews(samples, previews, config)
        if paths.resume is not None:
            paths = RunPaths(paths.run_dir, paths.out_path,
                             _check_resume(open_checkpoint(paths.resume), config, samples,
                                           {"inputs": inputs, "images": hashes}))
        return cls(config, samples, paths, planned, previews.scorer if previews and planned else None,
                   {**(inputs or {}), "images": hashes})
