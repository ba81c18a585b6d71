"""The learned-world demo: an adapter trained with the normal training path on five pictures that share a colour
their captions never name, then measured: how often generated pictures carry that colour at weights 0, 0.5, 1.

    result, figures = run_world_demo(Path("ipadapter-demo"))   # ~2 minutes on 2 CPU cores

The run previews and scores (the world's CLIP) on held-out references and prompts as any run does; the figures go
into the run's report.json under `learned_world`, with the untrained adapter the run started from as the baseline.

Five red pictures cannot show that the adapter reads its reference (a constant red would do). The contrast does:

    result, figures = run_world_contrast(Path("contrast"), control=SHUFFLED_EMBEDDINGS)   # world/control.py

trains on five red and five blue pictures (normally, or with a deliberately broken step) and measures how often
pictures follow their reference's colour (`reference_following` in report.json). All are learned-world figures:
they show that the adapter learns, nothing about quality on real SD models.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..config import TrainConfig
from ..families import WORLD
from ..previews.sources import PreviewSource
from ..scoring.generate import GenerationSettings
from ..scoring.scorer import Scorer
from ..storage.data import Sample
from ..storage.weights_io import atomic_write, atomic_write_text
from ..training.adapter_init import build_adapter
from ..training.plan import BatchControl
from ..world.attribute_match import attribute_match
from ..world.attribute_set import NAMED, AttributeSet, write_attribute_set
from ..world.domain import caption
from ..world.following import reference_following
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
CONTRAST_VALUES = ("red", "blue")  # run_world_contrast: the two colours its pictures come in


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


def _renderer(generator, settings: MatchSettings) -> Callable[[str, float, int, Image.Image], np.ndarray]:
    """prompt, weight, seed, reference -> the generated 64 px picture as a uint8 array."""
    def render(prompt: str, weight: float, seed: int, reference: Image.Image) -> np.ndarray:
        image = generator.generate([reference], GenerationSettings(
            prompt=prompt, scale=weight, steps=settings.steps, guidance=settings.guidance, seed=seed, width=64,
            height=64))[0]
        return np.asarray(image.convert("RGB"))
    return render


def measure(generator, reader, references: list[Sample], attribute_set: AttributeSet,
            settings: MatchSettings = MatchSettings(), weights: tuple[float, ...] = MATCH_WEIGHTS) -> dict:
    """The attribute match of `generator`'s adapter at `weights` (held-out prompts, seeds and references)."""
    render = _renderer(generator, settings)
    figures = attribute_match(lambda prompt, weight, seed: render(prompt, weight, seed,
                                                                  references[seed % len(references)].image),
                              reader, attribute_set, weights, settings.samples)
    figures.update(steps=settings.steps, guidance=settings.guidance)
    return figures


def use_untrained(generator, config: TrainConfig) -> None:
    """Switch `generator` to the adapter a run of `config` starts from (the same seed, before any step): the
    baseline a trained adapter is measured against. Its to_k_ip / to_v_ip are the UNet's own and its projection is
    random, so it already passes some of the reference into the picture, more or less by the luck of the seed."""
    generator.use_adapter(build_adapter(generator.backend, generator.encoder, config), "the untrained adapter")


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
    reader = load_reader(files["reader"])
    figures = measure(generator, reader, references, attribute_set, settings)
    use_untrained(generator, TrainConfig.from_dict(result.report["config"]))
    figures["untrained"] = measure(generator, reader, references, attribute_set, settings,
                                   (1.0,))["attribute_match"]
    figures["note"] = WORLD.figures_note
    _add_to_report(result.run_dir, "learned_world", figures)
    log.info("%s", summary(figures))
    return result, figures


def run_world_contrast(out_dir: Path, world: Path | None = None, config: TrainConfig | None = None,
                       control: BatchControl | None = None, values: tuple[str, ...] = CONTRAST_VALUES,
                       settings: MatchSettings = MatchSettings(), weights: tuple[float, ...] = (0.0, 1.0),
                       untrained: bool = True, progress: Callable | None = None, device: str | None = None):
    """Train on five pictures of each of `values` (colours), captioned by shape alone, with `control`'s broken
    step if given (world/control.py), and measure how often generated pictures follow their reference's colour
    at `weights` (world/following.py), and, with `untrained`, how often the adapter the run started from does at
    weight 1, and the difference in effect training made (`learned`). Returns (TrainResult, figures), the figures
    also in report.json under `reference_following`."""
    files = world_files(world)
    out_dir = Path(out_dir)
    sets = [AttributeSet(value=value, seed=k) for k, value in enumerate(values)]
    for attribute_set in sets:
        write_attribute_set(out_dir / "images", attribute_set, prefix=attribute_set.value)
    out = out_dir / "contrast_adapter.safetensors"
    result = train_adapter(out_dir / "images", files["model"], files["clip"], out,
                           config or contrast_config(),
                           run_dir=out_dir / "run", progress=progress, device=device, overwrite=True,
                           control=control)
    generator = load_generator(files["model"], files["clip"], out, device=device)
    # held-out references alternate between the values, so every prompt meets each of them as often
    held_out = [s.pictures(stream=1, n=2) for s in sets]
    references = [(held_out[k][i][0], sets[k].value) for i in range(2) for k in range(len(sets))]
    reader, prompts = load_reader(files["reader"]), sets[0].prompts(settings.samples)
    figures = reference_following(_renderer(generator, settings), reader, references, sets[0].attribute, prompts,
                                  weights)
    if untrained:
        use_untrained(generator, TrainConfig.from_dict(result.report["config"]))
        figures["untrained"] = reference_following(_renderer(generator, settings), reader, references,
                                                   sets[0].attribute, prompts, (1.0,))["by_weight"]
        if "1" in figures["by_weight"]:
            figures["learned"] = figures["by_weight"]["1"]["effect"] - figures["untrained"]["1"]["effect"]
    figures.update(steps=settings.steps, guidance=settings.guidance, control=control.note if control else None,
                   note=WORLD.figures_note)
    _add_to_report(result.run_dir, "reference_following", figures)
    log.info("%s", following_summary(figures))
    return result, figures


def contrast_config(**changes) -> TrainConfig:
    """The demo's settings for a contrast run: no previews (nothing to keep or stop on), no checkpoints, and
    `changes` (e.g. max_steps, seed)."""
    return TrainConfig(**{**WORLD_DEMO, "preview_every": 0, "keep": "last", "checkpoint_every": 0, **changes})


def _add_to_report(run_dir: Path, key: str, figures: dict) -> None:
    report_path = run_dir / "report.json"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    report[key] = figures
    atomic_write_text(report_path, json.dumps(report, indent=2) + "\n")


def summary(figures: dict) -> str:
    """One line: the match per weight against chance."""
    match = ", ".join(f"weight {w}: {m:.0%}" for w, m in figures["attribute_match"].items())
    untrained = figures.get("untrained", {}).get("1")
    start = "" if untrained is None else f"; the untrained adapter at weight 1: {untrained:.0%}"
    return (f"Generated pictures that are {figures['value']} ({figures['samples']} per weight, held-out prompts "
            f"and seeds): {match}{start}; chance {figures['chance']:.0%} (learned-world figures).")


def following_summary(figures: dict) -> str:
    """One line: how often pictures carry their reference's colour, and another reference's, per weight."""
    parts = ", ".join(f"weight {w}: {f['follows']:.0%} follow, {f['crossed']:.0%} cross"
                      for w, f in figures["by_weight"].items())
    what = " (" + figures["control"] + ")" if figures.get("control") else ""
    start = figures.get("untrained", {}).get("1")
    if start is not None:
        parts += f"; the untrained adapter at weight 1: {start['follows']:.0%} follow, {start['crossed']:.0%} cross"
    if "learned" in figures:
        parts += f"; effect learned {figures['learned']:+.2f}"
    return (f"Pictures carrying their reference's {figures['attribute']} of {'/'.join(figures['values'])} "
            f"({figures['samples']} per weight){what}: {parts} (learned-world figures).")
