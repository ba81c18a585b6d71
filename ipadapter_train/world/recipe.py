"""The world's recipe: every number `make-learned-world` trains with, in one place, recorded in world.json.

`scale` shortens every stage by the same factor (tests build a tiny world in seconds with scale 0.01); the
shipped world is built at scale 1.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Stage:
    """One training stage: steps, batch size, learning rate (AdamW, cosine decay after a short warm-up)."""

    steps: int
    batch: int
    lr: float


@dataclass(frozen=True)
class Recipe:
    """What the world is built from: the seed, each stage, and the size of the sets they draw on."""

    seed: int = 0
    # sized for about 50 minutes on 2 CPU cores (AMD EPYC): CLIP 6, VAE 7, UNet 34, the rest 3
    clip: Stage = field(default_factory=lambda: Stage(steps=1500, batch=128, lr=1e-3))
    vae: Stage = field(default_factory=lambda: Stage(steps=2000, batch=16, lr=1e-3))
    unet: Stage = field(default_factory=lambda: Stage(steps=6000, batch=64, lr=5e-4))
    reader: Stage = field(default_factory=lambda: Stage(steps=1000, batch=64, lr=2e-3))
    unet_pictures: int = 24000  # drawn and encoded once; the UNet samples its batches from them
    ema: float = 0.999  # the UNet's weights are an average over its last steps (sampling uses them)
    caption_drop: float = 0.1  # empty caption, for classifier-free guidance
    kl_weight: float = 1e-6  # the VAE's KL term, as small as SD's
    eval_pictures: int = 500  # real pictures the reader is scored on
    eval_samples: int = 60  # text-only samples the base model is scored on
    sample_steps: int = 25
    guidance: float = 5.0

    def scaled(self, scale: float) -> "Recipe":
        """Every stage's steps (and the UNet's picture set) times `scale`, at least a few."""
        def shorter(stage: Stage) -> Stage:
            return replace(stage, steps=max(2, round(stage.steps * scale)))

        return replace(self, clip=shorter(self.clip), vae=shorter(self.vae), unet=shorter(self.unet),
                       reader=shorter(self.reader), unet_pictures=max(64, round(self.unet_pictures * scale)),
                       eval_pictures=max(20, round(self.eval_pictures * scale)),
                       eval_samples=max(5, round(self.eval_samples * scale)))

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data (world.json)."""
        return asdict(self)
