"""The learned-world demo: an adapter trained with the normal training path on five pictures that share a colour
their captions never name, then measured: how often generated pictures carry that colour at weights 0, 0.5, 1.

    result, figures = run_world_demo(Path("ipadapter-demo"))   # ~2 minutes on 2 CPU cores

The run previews and scores (the world's CLIP) on held-out references and prompts as any run does; the figures go
into the run's report.json under `learned_world`. They are learned-world figures: they show that the adapter
learns what its pictures share, nothing about quality on real SD models.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import TrainConfig
from ..families import WORLD
from ..previews.sources import PreviewSource
from ..scoring.generate import GenerationSettings
from ..scoring.scorer import Scorer
from ..storage.data import Sample
from ..storage.weights_io import atomic_write, atomic_write_text
from ..world.attribute_match import attribute_match
from ..world.attribute_set import NAMED, AttributeSet, write_attribute_set
from ..world.domain import caption
from ..world.reader import load_reader
from ..world.shipped import world_files
from .runs import train_adapter
from .use import load_generator

log = logging.getLogger(__name__)

# Demo settings, sized for about 2 minutes on 2 CPU cores at the world's 64 px.
# Previews at the world's full 64 px (half of it, the rule for SD, leaves a 4 x 4 latent the UNet never saw).
WORLD_DEMO = {"resolution": 64, "max_steps": 300, "batch_size": 4, "learning_rate": 1e-3, "checkpoint_every": 100,
              "preview_every": 50, "preview_size": 64, "preview_steps": 20, "keep": "best"}
MATCH_WEIGHTS = (0.0, 0.5, 1.0)


@dataclass(frozen=True)
class MatchSettings:
    """How the attribute match is measured: samples per weight and how each is generated."""

    samples: int = 30
    steps: int = 20
    guidance: float = 5.0


def held_out_references(attribute_set: AttributeSet, folder: Path, n: int = 2) -> list[Sample]:
    """`n` held-out pictures of the set's attribute, written into `folder` (previews and the match use them)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (picture, attrs) in enumerate(attribute_set.pictures(stream=1, n=n)):
        path = atomic_write(folder / f"reference_{i:02d}.png", lambda p, im=picture: im.save(p, format="PNG"))
        out.append(Sample(path, picture, caption(attrs, NAMED)))
    return out


def measure(generator, reader, references: list[Sample], attribute_set: AttributeSet,
            settings: MatchSettings = MatchSettings()) -> dict:
    """The attribute match of `generator`'s adapter at `MATCH_WEIGHTS` (held-out prompts, seeds and references)."""
    def render(prompt: str, weight: float, seed: int) -> np.ndarray:
        reference = references[seed % len(references)].image
        image = generator.generate([reference], GenerationSettings(
            prompt=prompt, scale=weight, steps=settings.steps, guidance=settings.guidance, seed=seed, width=64,
            height=64))[0]
        return np.asarray(image.convert("RGB"))

    figures = attribute_match(render, reader, attribute_set, MATCH_WEIGHTS, settings.samples)
    figures.update(steps=settings.steps, guidance=settings.guidance)
    return figures


def run_world_demo(out_dir: Path, world: Path | None = None, config: TrainConfig | None = None,
                   progress: Callable | None = None, device: str | None = None,
                   attribute_set: AttributeSet = AttributeSet(), settings: MatchSettings = MatchSettings()):
    """Train on the world's five pictures, measure the attribute match, add it to report.json; returns
    (TrainResult, the `learned_world` figures)."""
    files = world_files(world)
    out_dir = Path(out_dir)
    images = write_attribute_set(out_dir / "images", attribute_set)
    references = held_out_references(attribute_set, out_dir / "references")
    scorer = Scorer.load(files["clip"])
    previews = PreviewSource(images=references, prompts=attribute_set.prompts(2), scorer=scorer,
                             folder=out_dir / "references")
    out = out_dir / "demo_adapter.safetensors"
    result = train_adapter(images, files["model"], files["clip"], out, config or TrainConfig(**WORLD_DEMO),
                           run_dir=out_dir / "run", progress=progress, device=device, overwrite=True,
                           previews=previews)
    generator = load_generator(files["model"], files["clip"], out, device=device)
    figures = measure(generator, load_reader(files["reader"]), references, attribute_set, settings)
    figures["note"] = WORLD.figures_note
    report_path = result.run_dir / "report.json"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    report["learned_world"] = figures
    atomic_write_text(report_path, json.dumps(report, indent=2) + "\n")
    log.info("%s", summary(figures))
    return result, figures


def summary(figures: dict) -> str:
    """One line: the match per weight against chance."""
    match = ", ".join(f"weight {w}: {m:.0%}" for w, m in figures["attribute_match"].items())
    return (f"Generated pictures that are {figures['value']} ({figures['samples']} per weight, held-out prompts "
            f"and seeds): {match}; chance {figures['chance']:.0%} (learned-world figures).")
