"""The shuffled-embedding control: a deliberately broken training step, in which every picture is trained with
the image embedding of a picture drawn at random from the data set, so that the embeddings say nothing about what
the UNet is asked to draw.

    train_adapter(..., control=SHUFFLED_EMBEDDINGS)

An adapter trained so can still learn what all its pictures share (a constant from the projection's biases: five
red pictures make any reference red), but not to follow its reference. Trained on pictures of two colours, a normal
adapter draws the reference's colour; the control does not (api/world.py `run_world_contrast`).
"""
from __future__ import annotations

import torch

from ..errors import IPAdapterError
from ..training.encoding import EncodedDataset
from ..training.plan import BatchControl


def shuffle_embeddings(batch: dict[str, torch.Tensor], gen: torch.Generator,
                       data: EncodedDataset) -> dict[str, torch.Tensor]:
    """The batch with each picture's image features replaced by those of a picture drawn uniformly from the data
    set (from `gen`), so that they are independent of its target; dropped images (condition dropout) stay dropped.

    Drawn from the whole set, not permuted within the batch: a permutation without fixed points pairs a picture
    with another colour more often than chance (a batch of 4 from 5 red and 5 blue: 5 / 9), and the adapter learns
    that anti-correlation."""
    if len(data) < 2:
        raise IPAdapterError("The shuffled-embedding control needs a data set of 2 or more pictures: with one, "
                             "every picture keeps its own embedding.")
    feats = batch["feats"]
    drawn = data.features[torch.randint(0, len(data), (len(feats),), generator=gen)].to(feats)
    dropped = (feats == data.dropped_features.to(feats)).flatten(1).all(dim=1)
    keep = dropped.view(-1, *([1] * (feats.dim() - 1)))
    return {**batch, "feats": torch.where(keep, feats, drawn)}


SHUFFLED_EMBEDDINGS = BatchControl(
    "control run: image embeddings shuffled (each picture trained with a randomly drawn picture's embedding)",
    shuffle_embeddings)
