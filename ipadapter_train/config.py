"""One config object for a training run; its defaults are the kit's and the reference recipe's."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import IPAdapterError

Precision = Literal["auto", "no", "fp16", "bf16"]
# preview_every "auto": at most a round after each third of the run (and so at the end), fewer where the rounds would
# pass the previews' budget (previews/rounds.py)
PREVIEW_ROUNDS_AUTO = 3
# The bounds of the settings whose size a run's memory grows with, inclusive: `TrainConfig.validate` enforces them
# for every caller (CLI, API) and the Train node's widgets read their min/max from here. 2048 px is twice SDXL's
# native size; 64 images a step is 8x the reference recipe's per-GPU batch. Larger values end in an out-of-memory
# death minutes into a run, not in a better adapter.
LIMITS: dict[str, tuple[int, int]] = {"resolution": (64, 2048), "batch_size": (1, 64), "preview_size": (64, 2048)}


@dataclass
class TrainConfig:
    """Everything that shapes a run. Saved in the adapter's metadata and in report.json."""

    variant: Literal["base", "plus"] = "base"
    epochs: int = 10
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    resolution: int | None = None  # None: the model family's default (512 for SD1.5, 1024 for SDXL)
    random_crop: bool = False  # centre crop otherwise
    flip: bool = False  # random horizontal flip
    # aspect-ratio buckets (training/buckets.py): each image trains at its own shape, not a square
    buckets: bool = False
    seed: int = 42
    checkpoint_every: int = 5  # steps; 0 turns resumable checkpoints off
    # The recipe's condition dropout, which classifier-free guidance needs at inference.
    drop_text: float = 0.05
    drop_image: float = 0.05
    drop_both: float = 0.05
    mixed_precision: Precision = "auto"
    gradient_checkpointing: bool = False
    validation: bool = True  # conditioning gain after training
    validation_timesteps: tuple[int, ...] = (200, 400, 600, 800)
    validation_max_images: int = 8
    # Previews while training (previews/sources.py): a fixed grid of generated images every N steps and at the end.
    preview_every: int | Literal["auto"] = 0  # 0 = off; "auto" = up to a round after each third, within the budget
    preview_size: int | None = None  # pixels; None: half the family's resolution (256 SD1.5, 512 SDXL), at most the
    #                                  training resolution
    preview_steps: int = 5  # sampling steps (DPM-Solver++ 2M) per preview image: the 15% budget (BENCHMARKS.md)
    preview_guidance: float = 5.0  # classifier-free guidance over text and image (as at generation)
    preview_weights: tuple[float, ...] = (0.0, 0.5, 1.0)  # adapter weights of a grid's columns
    preview_seed: int = 1234  # the grid's noise: the same for every round, so grids differ only by training
    keep: Literal["last", "best"] = "last"  # the output adapter: the last step's, or the best-scored preview's
    early_stop: int = 0  # stop after this many scored previews without a better score; 0 = never
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise IPAdapterError on values that cannot train."""
        if self.variant not in ("base", "plus"):
            raise IPAdapterError(f"Unknown variant {self.variant!r}: use 'base' or 'plus'.")
        low, high = LIMITS["resolution"]
        if self.resolution is not None and not (low <= self.resolution <= high and self.resolution % 8 == 0):
            raise IPAdapterError(f"Resolution {self.resolution} is not usable: give a multiple of 8 from {low} to "
                                 f"{high}.")
        if self.epochs < 1:
            raise IPAdapterError(f"epochs must be at least 1, got {self.epochs}.")
        low, high = LIMITS["batch_size"]
        if not low <= self.batch_size <= high:
            raise IPAdapterError(f"The batch size {self.batch_size} is not usable: give {low} to {high} images per "
                                 "step.")
        if self.max_steps is not None and self.max_steps < 1:
            raise IPAdapterError(f"max_steps must be at least 1, got {self.max_steps}.")
        if not self.learning_rate > 0:
            raise IPAdapterError(f"The learning rate must be positive, got {self.learning_rate}.")
        if self.checkpoint_every < 0:
            raise IPAdapterError(f"checkpoint_every must be 0 (off) or more, got {self.checkpoint_every}.")
        drops = (self.drop_text, self.drop_image, self.drop_both)
        if min(drops) < 0 or sum(drops) > 1:
            raise IPAdapterError(f"Condition dropout rates {drops} must be non-negative and sum to at most 1.")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise IPAdapterError(f"Unknown precision {self.mixed_precision!r}: use auto, no, fp16 or bf16.")
        self._validate_previews()

    def _validate_previews(self) -> None:
        every = self.preview_every
        if every != "auto" and (not isinstance(every, int) or isinstance(every, bool) or every < 0):
            raise IPAdapterError(f"preview_every must be 0 (off), a number of steps or 'auto', got {every!r}.")
        low, high = LIMITS["preview_size"]
        if self.preview_size is not None and not (low <= self.preview_size <= high and self.preview_size % 8 == 0):
            raise IPAdapterError(f"Preview size {self.preview_size} is not usable: give a multiple of 8 from {low} "
                                 f"to {high}.")
        if self.preview_steps < 1:
            raise IPAdapterError(f"preview_steps must be at least 1, got {self.preview_steps}.")
        if not self.preview_weights or any(not 0 <= w <= 2 for w in self.preview_weights):
            raise IPAdapterError(f"Preview weights {list(self.preview_weights)} must be one or more values "
                                 "from 0 to 2.")
        if self.keep not in ("last", "best"):
            raise IPAdapterError(f"keep must be 'last' or 'best', got {self.keep!r}.")
        if self.early_stop < 0:
            raise IPAdapterError(f"early_stop must be 0 (off) or more, got {self.early_stop}.")
        if (self.keep == "best" or self.early_stop) and not self.previews_on:
            raise IPAdapterError("Keeping the best step and stopping early both judge the previews: turn previews "
                                 "on (--preview-every; preview_every on the Train node) and give a CLIP model to "
                                 "score them (--clip; the node's scorer).")

    @property
    def previews_on(self) -> bool:
        """Whether the run renders previews."""
        return self.preview_every != 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy."""
        d = dataclasses.asdict(self)
        d["validation_timesteps"] = list(self.validation_timesteps)
        d["preview_weights"] = list(self.preview_weights)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Inverse of `to_dict`; unknown keys are an error so a typo never passes silently."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise IPAdapterError(f"Unknown training settings {unknown}: check their spelling.")
        d = dict(d)
        for name in ("validation_timesteps", "preview_weights"):
            if name in d:
                d[name] = tuple(d[name])
        return cls(**d)

    def for_family(self, family) -> "TrainConfig":
        """This config with the resolution filled in from the model family when none was given."""
        if self.resolution is not None:
            return self
        return dataclasses.replace(self, resolution=family.default_resolution)

    def steps_per_epoch(self, num_images: int, world_size: int = 1) -> int:
        """Optimizer steps in one pass over the images (each process takes its share of a batch)."""
        per_step = self.batch_size * world_size
        return max(1, -(-num_images // per_step))

    def total_steps(self, num_images: int, world_size: int = 1) -> int:
        """Steps in the whole run: max_steps if set, else epochs x steps per epoch."""
        if self.max_steps is not None:
            return self.max_steps
        return self.epochs * self.steps_per_epoch(num_images, world_size)
