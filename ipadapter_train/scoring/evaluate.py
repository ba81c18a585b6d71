"""`evaluate`: generate with and without the adapter at the same seeds, sweep the scale, score with CLIP.

A cases file is a JSON list of {"reference": "ref.jpg" or ["a.jpg", "b.jpg"], "prompt": "...",
"caption": "optional description of the reference", "name": "optional"}; paths are relative to the file.
For every case the baseline (adapter off) and each scale get the same seeds, so the report's gains
compare like with like. CLIP-T uses the prompt, or the caption when the prompt is empty.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from ..errors import IPAdapterError
from ..storage.data import load_image
from ..storage.weights_io import atomic_write
from .generate import GenerationSettings, Generator
from .scorer import Scorer, vision_fingerprint

log = logging.getLogger(__name__)

DEFAULT_SCALES = (0.5, 1.0, 1.5, 2.0)  # the kit's sweep
METRICS = ("clip_i_mean", "clip_t_mean", "clip_score_mean", "percent")


@dataclass
class EvalCase:
    """One reference (or several) and the prompt to generate with."""

    name: str
    references: list[Path]
    prompt: str
    caption: str | None = None

    @property
    def text_for_clip_t(self) -> str | None:
        """The text CLIP-T compares with: the prompt, else the caption, else none."""
        return self.prompt.strip() or (self.caption or "").strip() or None


def load_cases(path: Path) -> list[EvalCase]:
    """Read and check a cases file; every reference must exist."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise IPAdapterError(f"The cases file {path} cannot be read ({exc.strerror}).") from None
    except json.JSONDecodeError as exc:
        raise IPAdapterError(f"The cases file {path} is not valid JSON (line {exc.lineno}: {exc.msg}).") from None
    if not isinstance(raw, list) or not raw:
        raise IPAdapterError(f"The cases file {path} must be a non-empty JSON list of "
                             '{"reference": ..., "prompt": ...} objects.')
    cases = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or "reference" not in entry:
            raise IPAdapterError(f"Case {i + 1} in {path} has no \"reference\": give a reference image path.")
        refs = entry["reference"] if isinstance(entry["reference"], list) else [entry["reference"]]
        refs = [(path.parent / r) for r in refs]
        missing = [str(r) for r in refs if not r.is_file()]
        if missing:
            raise IPAdapterError(f"Case {i + 1} in {path} names reference images that do not exist: {missing}.")
        prompt, caption = entry.get("prompt", ""), entry.get("caption")
        if not isinstance(prompt, str) or (caption is not None and not isinstance(caption, str)):
            raise IPAdapterError(f"Case {i + 1} in {path}: \"prompt\" and \"caption\" must be strings.")
        cases.append(EvalCase(str(entry.get("name") or f"case{i + 1}"), refs, prompt, caption))
    return cases


def _save(image: Image.Image, path: Path) -> Path:
    return atomic_write(path, lambda p: image.save(p, format="PNG"))


def _gain(run: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float | None]:
    return {m: (None if run.get(m) is None or baseline.get(m) is None else run[m] - baseline[m]) for m in METRICS}


def evaluate(generator: Generator, scorer: Scorer, cases: Sequence[EvalCase], out_dir: Path,
             settings: GenerationSettings, num_images: int = 2, scales: Sequence[float] = DEFAULT_SCALES,
             random_weights: bool = False, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run every case at scale 0 (baseline) and at each scale; write images and return the report dict."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    fingerprint = vision_fingerprint(generator.encoder.model)
    runs_per_case = 1 + len(scales)
    total, done = len(cases) * runs_per_case, 0
    results = []
    for c, case in enumerate(cases):
        refs = [load_image(r) for r in case.references]
        entry: dict[str, Any] = {"name": case.name, "prompt": case.prompt, "caption": case.caption,
                                 "references": [str(r) for r in case.references], "runs": []}
        for scale in (0.0, *scales):
            run_settings = replace(settings, scale=scale, num_images=num_images, seed=settings.seed + c)
            images = generator.generate(refs, run_settings)
            files = [_save(im, out_dir / "images" / f"{case.name}_scale{scale:g}_{i + 1}.png")
                     for i, im in enumerate(images)]
            score = scorer.score(images, refs, case.text_for_clip_t, conditioning_fingerprint=fingerprint).to_dict()
            scale_sentence = score.pop("scale")  # the scorer's sentence on what `percent` means
            entry["runs"].append({**score, "scale": scale, "baseline": scale == 0.0, "seed": run_settings.seed,
                                  "images": [str(f.relative_to(out_dir)) for f in files]})
            done += 1
            if progress:
                progress(done, total)
        baseline = entry["runs"][0]
        for run in entry["runs"][1:]:
            run["gain_over_baseline"] = _gain(run, baseline)
        results.append(entry)

    summary = []
    for k, scale in enumerate((0.0, *scales)):
        rows = [case["runs"][k] for case in results]
        mean = {m: _mean([r[m] for r in rows]) for m in METRICS}
        row = {"scale": scale, "baseline": scale == 0.0, **mean}
        if scale:
            row["gain_over_baseline"] = {m: _mean([r["gain_over_baseline"][m] for r in rows]) for m in METRICS}
        summary.append(row)
    random = random_weights or generator.random_weights or scorer.random_weights
    return {
        "random_weights": random,
        "note": ("Random-weight models: these numbers show the evaluation runs, not adapter quality."
                 if random else None),
        "scorer": scorer.name, "scorer_fingerprint": scorer.fingerprint, "conditioning_fingerprint": fingerprint,
        "warnings": sorted({w for case in results for run in case["runs"] for w in run["warnings"]}),
        "scale_sentence": scale_sentence, "settings": {**settings.__dict__, "num_images": num_images},
        "scales": list(scales), "summary": summary, "cases": results,
    }


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
