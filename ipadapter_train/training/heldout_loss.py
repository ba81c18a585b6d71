"""The held-out validation loss: how well the adapter predicts the noise of pictures it was not trained on.

Measured at each preview round of a run without a scorer that asks for it (`PreviewSource.heldout_loss`; the trainer
hands it to previews/runner.py), so a round has a figure even with no CLIP model to score it; a search without a
scorer judges its trials by it (search/objective.py). The preview references (held out of training, or the user's
preview images) are encoded once, like the training set, at the training resolution (centre square); each round
computes the denoising loss of every reference with its own CLIP features at the validation timesteps, with the
same noise every round, so two rounds differ only by training.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from ..adapter.module import IPAdapter
from ..config import TrainConfig
from ..diffusion.backend import DiffusionBackend, ImageFeatureEncoder
from ..storage.data import Sample
from .batches import centre_view
from .encoding import EncodedDataset, encode_dataset
from .validation import noise_losses

NOISE_SEED_OFFSET = 104729  # the noise's seed is the run's plus this: fixed, apart from the training draws


def planned_heldout_loss(plan) -> HeldOutLoss | None:
    """The held-out loss a run's preview rounds measure (its `RunPlan`): asked for (PreviewSource.heldout_loss) and
    no scorer; else None."""
    p = plan.previews
    return HeldOutLoss(p.references, p.config) if p is not None and p.heldout_loss and plan.scorer is None else None


class HeldOutLoss:
    """The references' denoising loss; `set_up` encodes them once, `measure` is one round's figure."""

    def __init__(self, references: Sequence[Sample], config: TrainConfig) -> None:
        # a centre square at the training resolution, no flips: one fixed view per reference
        self.references = list(references)
        self.config = dataclasses.replace(config, flip=False, buckets=False, random_crop=False)
        self.data: EncodedDataset | None = None

    @property
    def calls(self) -> int:
        """UNet calls one round's measure makes."""
        return len(self.references) * len(self.config.validation_timesteps)

    def set_up(self, backend: DiffusionBackend, encoder: ImageFeatureEncoder,
               features: torch.Tensor | None = None) -> None:
        """Encode the references (latents, captions; CLIP features unless the previews' `features` are given) once."""
        if self.references:
            self.data = encode_dataset(self.references, backend, encoder, self.config, features=features)

    def measure(self, adapter: IPAdapter, backend: DiffusionBackend, autocast=None) -> float | None:
        """The mean loss over references and timesteps (None without references)."""
        if self.data is None:
            return None
        gen = torch.Generator().manual_seed(self.config.seed + NOISE_SEED_OFFSET)
        total, count = 0.0, 0
        for i in range(len(self.data)):
            shape = centre_view(self.data, i)[0].unsqueeze(0).shape
            for t in self.config.validation_timesteps:
                noise = torch.randn(shape, generator=gen)
                total += float(noise_losses(adapter, backend, self.data, i, self.data.features[i:i + 1], t, noise,
                                            autocast)[0])
                count += 1
        return total / count
