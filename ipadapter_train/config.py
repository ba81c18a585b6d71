"""One config object for a training run; its defaults are the kit's and the reference recipe's."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import IPAdapterError

Precision = Literal["auto", "no", "fp16", "bf16"]


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
    buckets: bool = False  # aspect-ratio buckets (buckets.py): each image trains at its own shape, not a square
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
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise IPAdapterError on values that cannot train."""
        if self.variant not in ("base", "plus"):
            raise IPAdapterError(f"Unknown variant {self.variant!r}: use 'base' or 'plus'.")
        if self.resolution is not None and (self.resolution < 64 or self.resolution % 8):
            raise IPAdapterError(f"Resolution {self.resolution} is not usable: give a multiple of 8, at least 64.")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise IPAdapterError(f"{name} must be at least 1, got {getattr(self, name)}.")
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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy."""
        d = dataclasses.asdict(self)
        d["validation_timesteps"] = list(self.validation_timesteps)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Inverse of `to_dict`; unknown keys are an error so a typo never passes silently."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise IPAdapterError(f"Unknown training settings {unknown}: check their spelling.")
        d = dict(d)
        if "validation_timesteps" in d:
            d["validation_timesteps"] = tuple(d["validation_timesteps"])
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
