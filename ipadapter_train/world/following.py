"""Whether an adapter follows its reference: trained on pictures of two colours (five red, five blue, captioned by
shape alone), does a red reference make red pictures and a blue one blue ones?

`follows` is the share of generated pictures that carry their own reference's value, `crossed` the share that
carry another reference's value; `effect` = follows - crossed. An adapter that only learned what all its pictures
share (a red-or-blue bias, which any embedding gives) follows as often as it crosses: effect about 0. One that reads
the reference's embedding follows and does not cross: effect near 1.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from PIL import Image

from .reader import ShapeReader, read

# prompt, adapter weight, seed, reference -> uint8 64 x 64 x 3 picture
RenderWith = Callable[[str, float, int, Image.Image], np.ndarray]


def reference_following(render: RenderWith, reader: ShapeReader, references: Sequence[tuple[Image.Image, str]],
                        attribute: str, prompts: Sequence[str], weights: Sequence[float], seed: int = 6000) -> dict:
    """Per weight: follows, crossed and effect over one picture per prompt, the references taken in turn
    (`references`: held-out pictures with their value of `attribute`). The same prompts, seeds and references at
    every weight."""
    values = {value for _, value in references}
    out: dict[str, dict[str, float]] = {}
    for weight in weights:
        pairs = [(references[i % len(references)], prompt) for i, prompt in enumerate(prompts)]
        pictures = np.stack([render(prompt, weight, seed + i, ref[0]) for i, (ref, prompt) in enumerate(pairs)])
        found = [r[attribute] for r in read(reader, pictures)]
        follows = float(np.mean([f == ref[1] for f, (ref, _) in zip(found, pairs)]))
        crossed = float(np.mean([f in values and f != ref[1] for f, (ref, _) in zip(found, pairs)]))
        out[f"{weight:g}"] = {"follows": follows, "crossed": crossed, "effect": follows - crossed}
    return {"attribute": attribute, "values": sorted(values), "samples": len(prompts), "by_weight": out}
