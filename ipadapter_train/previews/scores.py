"""Scores of preview rounds with a full CLIP model, and the book that ranks the steps by them.

Every preview image gets CLIP-I against its reference, CLIP-T (CLIPScore) against its prompt when it has
one, the kit's combined percent and grade (scoring/scorer.py), and its gain: its percent minus that of the
weight-0 image of the same reference, prompt and seed. A step's score is the mean percent of its images at
the highest preview weight (the adapter at full strength); the best step is the highest score, the earlier
one on a tie. `ScoreBook` is what scores.json holds, and what a checkpoint keeps so a resumed run keeps its
best-so-far.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..scoring.scorer import SCALE_SENTENCE, Scorer, combined, grade
from .sources import Previews

RANK_SENTENCE = ("A step's score is the mean combined percent of its previews at the highest preview weight; "
                 "the best step has the highest score (the earlier one on a tie).")
RANDOM_NOTE = ("Random-weight figures: a model of this run (the scorer, the base model or the image encoder) has "
               "random weights, so these scores say nothing about quality.")


class PreviewScorer:
    """A `Scorer` with a run's references and prompts embedded once."""

    def __init__(self, scorer: Scorer, previews: Previews) -> None:
        self.scorer, self.previews = scorer, previews
        self.references = scorer.image_embeddings([r.image for r in previews.references])
        prompts = previews.prompts
        texts = [p for p in prompts if p.strip()]
        embedded = dict(zip(texts, scorer.text_embeddings(texts))) if texts else {}
        self.prompts = [embedded.get(p) for p in prompts]  # None: an empty prompt has no CLIP-T
        self._baseline: list[dict[str, Any]] | None = None

    def _figures(self, images: list[Image.Image]) -> list[dict[str, Any]]:
        generated = self.scorer.image_embeddings(images)
        out = []
        for cell, emb in zip(self.previews.cells, generated):
            clip_i = float(emb @ self.references[cell.reference])
            text = self.prompts[cell.prompt]
            clip_t = float(emb @ text) if text is not None else None
            clip_score = 2.5 * max(clip_t, 0.0) if clip_t is not None else None
            percent = 100.0 * combined(clip_i, clip_score)
            out.append({"clip_i": clip_i, "clip_t": clip_t, "clip_score": clip_score, "percent": percent,
                        "grade": grade(percent)})
        return out

    def score(self, images: dict[float, list[Image.Image]]) -> tuple[float, list[dict[str, Any]]]:
        """(the step's score, one entry per cell and weight) for a round's images {weight: [per cell]}."""
        figures = {}
        for weight, pictures in images.items():
            if weight == 0:
                self._baseline = self._baseline or self._figures(pictures)  # the same images every round
                figures[weight] = self._baseline
            else:
                figures[weight] = self._figures(pictures)
        base = figures.get(0.0)
        rows = []
        for weight, per_cell in figures.items():
            for i, (cell, fig) in enumerate(zip(self.previews.cells, per_cell)):
                gain = fig["percent"] - base[i]["percent"] if base is not None and weight != 0 else None
                rows.append({"reference": str(self.previews.references[cell.reference].path),
                             "prompt": self.previews.prompts[cell.prompt], "seed": cell.seed, "weight": weight,
                             **fig, "gain_percent": gain})
        top = max(images)
        ranked = [r["percent"] for r in rows if r["weight"] == top]
        return sum(ranked) / len(ranked), rows


@dataclass
class ScoreBook:
    """Every scored round of a run, best first by `RANK_SENTENCE`; what scores.json holds."""

    scorer: str = ""
    random_weights: bool = False
    rounds: list[dict[str, Any]] = field(default_factory=list)  # {"step", "grid", "score", "grade", "cells"}
    label: str | None = None  # what the figures are, said after them: "random-weight figures", "learned-world figures"

    @property
    def best(self) -> dict[str, Any] | None:
        """The best round so far (None before the first)."""
        return max(self.rounds, key=lambda r: (r["score"], -r["step"]), default=None)

    def add(self, step: int, grid: str, score: float, cells: list[dict[str, Any]]) -> bool:
        """Record a round; True when it is the new best."""
        before = self.best
        self.rounds = [r for r in self.rounds if r["step"] != step]  # a resumed run re-renders a step
        self.rounds.append({"step": step, "grid": grid, "score": score, "grade": grade(score), "cells": cells})
        return before is None or score > before["score"]

    def rounds_without_improvement(self) -> int:
        """Scored rounds since the best one."""
        best = self.best
        return 0 if best is None else sum(1 for r in self.rounds if r["step"] > best["step"])

    def until(self, step: int) -> "ScoreBook":
        """The book as it was at `step` (a resumed run goes on from its checkpoint's step)."""
        return ScoreBook(self.scorer, self.random_weights, [r for r in self.rounds if r["step"] <= step], self.label)

    def why(self) -> str | None:
        """One sentence naming the best step and why it is the best."""
        best = self.best
        if best is None:
            return None
        others = len(self.rounds) - 1
        return (f"Step {best['step']} scored best: {best['score']:.1f}% ({best['grade']}), the mean combined "
                f"percent of its full-weight previews, against {others} other scored preview round(s)"
                + (f" ({self.label})" if self.label else " (random-weight figures)" if self.random_weights else "")
                + ".")

    def to_dict(self) -> dict[str, Any]:
        """scores.json: the scale, the rule, every round, the best step and why; labelled when random."""
        best = self.best
        return {"scorer": self.scorer, "random_weights": self.random_weights,
                "note": RANDOM_NOTE if self.random_weights else self.label, "scale": SCALE_SENTENCE,
                "rank": RANK_SENTENCE, "best_step": best["step"] if best else None,
                "best_score": best["score"] if best else None, "why": self.why(),
                "rounds": sorted(self.rounds, key=lambda r: r["step"])}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ScoreBook":
        """Inverse of `to_dict` (a checkpoint's copy)."""
        random_weights = bool(d.get("random_weights"))
        return cls(d.get("scorer", ""), random_weights, list(d.get("rounds", [])),
                   None if random_weights else d.get("note"))
