"""What a training run is given, decided once before any model loads (`plan_run` -> `RunPlan`): its settings with
the model family's defaults, validated; the images it trains on and those held out for previews; its steps, preview
rounds and validation calls; a resume checked against all of that. Also where it writes (`RunPaths`) and what a
caller adds to it (`RunHooks`: one progress hook that gets a `RunEvent` per phase step, work between phases,
records).

    plan = plan_run(config, samples, family, paths=RunPaths(run_dir, out))
    result = train(plan, backend, encoder, RunHooks(progress=show))     # training/trainer.py
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..adapter.module import IPAdapter
from ..config import TrainConfig
from ..diffusion.backend import DiffusionBackend, ImageFeatureEncoder
from ..errors import IPAdapterError
from ..families import ModelFamily, get_family
from ..previews.rounds import VALIDATION_CALL_STEPS_AT_BATCH_1, PreviewPlan, plan_preview_rounds
from ..previews.sources import Previews, PreviewSource, plan_previews
from ..storage.data import Sample
from .adapter_init import FitWords, check_init_adapter
from .batches import total_steps
from .checkpoint import SavedCheckpoint, open_checkpoint
from .encoding import EncodedDataset
from .identity import check_trained_on, image_hashes
from .precision import launched_processes
from .validation import validation_calls

log = logging.getLogger(__name__)

RESUME_MAY_DIFFER = {"epochs", "max_steps", "checkpoint_every", "validation", "validation_timesteps",
                     "validation_max_images", "extra", "mixed_precision", "gradient_checkpointing", "preview_every",
                     "preview_size", "preview_steps", "preview_guidance", "preview_weights", "preview_seed", "keep",
                     "early_stop"}

# A run's phases as its progress events name them (the node's events use the same words).
ENCODING, TRAINING, PREVIEWING, PREVIEWED, VALIDATING = "encoding", "training", "previewing", "previewed", "validating"


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


@dataclass(frozen=True)
class RunEvent:
    """One piece of a run's progress, as the progress hook gets it (on the main process).

    `done` of `total` counts the phase's own work: images encoded (ENCODING), steps (TRAINING, after each step,
    with its `loss`), sampling steps of a preview round, all its renders together (PREVIEWING; PREVIEWED when the
    round is done, with its `round` entry and `grid` image), UNet calls (VALIDATING). `step` is the steps done.
    `schedule` is the preview rounds' plan and estimated cost, with the measured time of a step from the first step
    on: what an ETA needs besides the plan's `total` and `validation_steps`.

    The hook may raise `TrainingCancelled`: while training or previewing, the run stops and saves the adapter of
    the steps done; while validating, validation stops and the report has no conditioning gain. Anything else it
    raises (or a cancel while encoding) ends the run.
    """

    phase: str
    done: int
    total: int
    step: int = 0
    loss: float | None = None
    schedule: PreviewPlan | None = None
    round: dict[str, Any] | None = None  # PREVIEWED: {"step", "grid", "score"?, "grade"?, "best_step"?, ...}
    grid: Any = None  # PREVIEWED: the round's grid image


Progress = Callable[[RunEvent], None]


@dataclass(frozen=True)
class BatchControl:
    """A control experiment's change to every training step (the learned world's shuffled-embedding control):
    `alter` gets each step's batch, its generator and the encoded data set before the UNet sees the batch; `note`
    says what it does, in the adapter's metadata and the report, so that a control's adapter is never taken for a
    normal one."""

    note: str
    alter: Callable[[dict[str, torch.Tensor], torch.Generator, EncodedDataset], dict[str, torch.Tensor]]


@dataclass
class RunHooks:
    """What a caller adds to a run: progress and cancellation, work between phases, its own records."""

    progress: Progress | None = None  # every `RunEvent`; may raise TrainingCancelled (see RunEvent)
    after_encode: Callable[[], None] | None = None  # e.g. free the VAE and encoders: the steps need only the UNet
    metadata: dict[str, Any] = field(default_factory=dict)  # added to the adapter file's metadata
    report_extra: dict[str, Any] = field(default_factory=dict)  # added to report.json (load time, data set, ...)
    control: BatchControl | None = None  # experiments only; None in every normal run, whose steps are the reference's


def fingerprint(samples: Sequence[Sample]) -> list[str]:
    return [f"{s.path.name}|{s.caption}" for s in samples]


def _check_resume(checkpoint: SavedCheckpoint, config: TrainConfig, samples: Sequence[Sample],
                  trained_on: dict[str, Any] | None = None) -> SavedCheckpoint:
    """Refuse a checkpoint of other settings, other images or other models, before any model work is spent on
    the run. `trained_on` is this run's record (`RunPlan.trained_on`): the models' identities, if known, and
    the images' hashes. A config without a resolution takes the checkpoint's."""
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
    """A run decided before any model is loaded (`plan_run`); the trainer runs it as it is."""

    config: TrainConfig  # validated, the family's defaults filled in once the family is known
    samples: list[Sample]  # the images it trains on (held-out preview images are not among them)
    paths: RunPaths | None  # `resume`, if any, is the opened and accepted checkpoint; None: `with_paths` later
    family: ModelFamily | None = None  # None: not known before the models load (a .ckpt pickle)
    world: int = 1  # processes the run trains on
    total: int = 0  # optimizer steps
    validation_calls: int = 0  # UNet calls of the conditioning gain after training
    previews: Previews | None = None  # None: previews are off
    rounds: PreviewPlan | None = None  # when preview rounds come and what they are estimated to cost
    scorer: Any = None  # a `scoring.scorer.Scorer` for the previews, or None
    # the adapter to fine-tune: a module already checked against the models, or a file checked when they load
    init_adapter: IPAdapter | Path | None = None
    # What the run trains on, for its checkpoints' "trained_on": the models' family and identities
    # (`training.identity.model_inputs`, when the run was given paths) and every given image's hash
    trained_on: dict[str, Any] = field(default_factory=dict)

    @property
    def held_out(self) -> list[str]:
        """Names of the training images held out of training for the previews."""
        return list(self.previews.held_out) if self.previews is not None else []

    @property
    def validation_steps(self) -> float:
        """The validation's estimated cost in training steps (`previews.rounds`' rule), for an ETA."""
        return self.validation_calls * VALIDATION_CALL_STEPS_AT_BATCH_1 / max(1, self.config.batch_size)

    def for_family(self, family: ModelFamily) -> RunPlan:
        """This plan for the model family of the loaded models: itself when planned for it; completed (the family's
        resolution, the steps and preview rounds that follow from it) when planned without one."""
        if self.family is not None:
            if self.family.name != family.name:
                raise IPAdapterError(f"This run was planned for an {self.family.label} model but is given an "
                                     f"{family.label} one: plan it again for the model it trains on.")
            return self
        return _resolve(dataclasses.replace(self), family)

    def with_paths(self, run_dir: Path, out_path: Path | None = None) -> RunPlan:
        """This plan writing to `run_dir` (and `out_path`): for a caller that makes its run folder only once the
        plan is accepted (the Train node)."""
        resume = self.paths.resume if self.paths is not None else None
        return dataclasses.replace(self, paths=RunPaths(run_dir, out_path, resume))


def _resolve(plan: RunPlan, family: ModelFamily) -> RunPlan:
    """Fill in what follows from the model family: the resolution, then the steps (with buckets they depend on it)
    and the preview rounds (their size is half the family's resolution)."""
    plan.family, plan.config = family, plan.config.for_family(family)
    plan.total = total_steps(plan.config, [s.image.size for s in plan.samples], plan.world)
    if plan.previews is not None:
        plan.previews.config = plan.config
        plan.previews.side = plan.previews.size(family)  # what the report names, with or without rounds
        plan.rounds = plan_preview_rounds(plan.config, plan.total, len(plan.previews.cells), plan.previews.side,
                                          plan.validation_calls)
        (log.info if plan.rounds.rounds else log.warning)("Previews: %s", plan.rounds.why)
    return plan


def plan_run(config: TrainConfig, samples: Sequence[Sample], family: ModelFamily | str | None = None, *,
             paths: RunPaths | None = None, previews: PreviewSource | None = None,
             init_adapter: IPAdapter | str | Path | None = None,
             models: tuple[DiffusionBackend, ImageFeatureEncoder] | None = None, fit_words: FitWords = FitWords(),
             inputs: dict[str, Any] | None = None, world: int | None = None) -> RunPlan:
    """Decide a run once, before any model work: validate the settings, hold preview images out, refuse a resume of
    other settings, images or models (reading its state.json once), count the steps, plan the preview rounds and
    the validation. The caller's `config` is not changed.

    `family` (or `models`' back end's) fills in the defaults; without one (a .ckpt pickle names no family before it
    loads) the trainer completes the plan for the loaded models (`RunPlan.for_family`). `models` (the back end and
    image encoder, when the caller has them before planning) let the plan check `init_adapter` against them now,
    in `fit_words`; a file given without them is checked once the models load. `inputs`: `training.identity.
    model_inputs` of the run's model files. `world`: processes (default: as launched).
    """
    config = dataclasses.replace(config)  # the resume may fill in the resolution
    config.validate()
    if models is not None and family is None:
        family = models[0].family
    family = get_family(family) if isinstance(family, str) else family
    hashes = image_hashes(samples)  # all of them, the held-out preview images too
    trained, planned = plan_previews(samples, previews, config)
    if paths is not None and paths.resume is not None:
        paths = RunPaths(paths.run_dir, paths.out_path,
                         _check_resume(open_checkpoint(paths.resume), config, trained,
                                       {"inputs": inputs, "images": hashes}))
    if init_adapter is not None and not isinstance(init_adapter, IPAdapter):
        init_adapter = Path(init_adapter)
    if models is not None and init_adapter is not None:
        init_adapter = check_init_adapter(init_adapter, *models, config.for_family(family), fit_words)
    elif isinstance(init_adapter, IPAdapter):
        raise IPAdapterError("An init adapter module is checked against the models it trains with: give plan_run "
                             "the models (models=(backend, encoder)), or the adapter's file.")
    plan = RunPlan(config, trained, paths, world=world or launched_processes(),
                   validation_calls=validation_calls(len(trained), config), previews=planned,
                   scorer=previews.scorer if previews and planned else None, init_adapter=init_adapter,
                   trained_on={**(inputs or {}), "images": hashes})
    return _resolve(plan, family) if family is not None else plan
