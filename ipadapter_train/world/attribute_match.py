"""How often generated pictures carry the reference's attribute, per adapter weight: the learned world's measure
of whether an adapter learned what its pictures share.

The reader reads each generated picture; the match is the share whose attribute equals the set's value.
Chance is one over the attribute's values (what the base model gives when nothing names it).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .attribute_set import AttributeSet
from .domain import choices
from .reader import ShapeReader, read

Render = Callable[[str, float, int], np.ndarray]  # prompt, adapter weight, seed -> uint8 64 x 64 x 3 picture


def attribute_match(render: Render, reader: ShapeReader, attribute_set: AttributeSet, weights: Sequence[float],
                    samples: int, seed: int = 5000) -> dict:
    """Per weight, the share of `samples` generated pictures (held-out prompts and seeds) that carry the set's
    attribute; with chance and what was read. The same prompts and seeds at every weight."""
    prompts = attribute_set.prompts(samples)
    match, seen = {}, {}
    for weight in weights:
        pictures = np.stack([render(prompt, weight, seed + i) for i, prompt in enumerate(prompts)])
        found = [r[attribute_set.attribute] or "nothing" for r in read(reader, pictures)]  # None: no shape stands out
        match[f"{weight:g}"] = float(np.mean([f == attribute_set.value for f in found]))
        seen[f"{weight:g}"] = {v: found.count(v) for v in sorted(set(found))}
    return {"attribute": attribute_set.attribute, "value": attribute_set.value, "attribute_match": match,
            "chance": 1 / len(choices(attribute_set.attribute)), "samples": samples, "read": seen}
