"""What the world's base model draws from captions alone: text-only samples read back by the reader."""
from __future__ import annotations

import numpy as np
import torch

from .data import from_unit
from .domain import ATTRIBUTES, Attributes, caption, choices, sample_attributes
from .reader import ShapeReader, accuracy, read


@torch.no_grad()
def text_only_samples(pipe, prompts: list[str], seed: int, steps: int, guidance: float) -> np.ndarray:
    """One 64 px sample per prompt (uint8 N x 64 x 64 x 3), seeded per prompt (seed + its index)."""
    out = []
    for i, prompt in enumerate(prompts):
        gen = torch.Generator().manual_seed(seed + i)
        image = pipe(prompt, height=64, width=64, num_inference_steps=steps, guidance_scale=guidance,
                     generator=gen, output_type="pt").images
        out.append(from_unit(image * 2 - 1)[0])
    return np.stack(out)


def sample_accuracy(pipe, reader: ShapeReader, n: int, seed: int, steps: int, guidance: float):
    """Per attribute, how often `n` samples of full captions show what their caption names, with chance per
    attribute; returns (figures, samples, their attributes)."""
    rng = np.random.default_rng([seed, 7])
    truth: list[Attributes] = [sample_attributes(rng) for _ in range(n)]
    samples = text_only_samples(pipe, [caption(a) for a in truth], seed, steps, guidance)
    found = accuracy(read(reader, samples), truth)
    chance = {name: 1 / len(choices(name)) for name in ATTRIBUTES}
    return {"attribute_accuracy": found, "chance": chance}, samples, truth
