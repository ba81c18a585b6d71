"""What a search judges its trials by: the held-out preview score, or without a scorer the held-out validation loss.

    objective = objective_for(has_scorer=True)     # SCORE: the best preview round's score, higher is better
    objective.value(result.report)                # a finished trial's value, or None when it had no round

Both are measured on the references the run holds out of training (or the user's preview images), at every preview
round, so the pruner compares trials at the same step by the same figure. The score is the mean combined percent of
the round's full-weight previews (CLIP-I against the reference, CLIP-T against the prompt); the trial's value is its
best round, which is the adapter `keep = "best"` writes. The held-out loss is the denoising loss of the held-out
images with their own CLIP features, at fixed timesteps and noise (training/heldout_loss.py); lower is better, and a
trial's value is its last round, the adapter it writes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..previews.sources import PreviewSource


@dataclass(frozen=True)
class Objective:
    """One way to judge a trial: the preview round's key, the study's direction, and words for the summary."""

    name: str
    round_key: str  # the PREVIEWED round entry's key, reported to the pruner
    direction: str  # Optuna's: "maximize" or "minimize"
    unit: str
    note: str | None = None  # said once when a search starts (why this objective)

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "maximize"

    def round_value(self, entry: dict[str, Any] | None) -> float | None:
        """A preview round's value (the PREVIEWED event's `round`), or None when it has none."""
        value = (entry or {}).get(self.round_key)
        return None if value is None else float(value)

    def value(self, report: dict[str, Any]) -> float | None:
        """A finished run's value from its report.json, or None when it ran no round."""
        previews = report.get("previews") or {}
        value = previews.get("best_score") if self.round_key == "score" else previews.get("heldout_loss")
        return None if value is None else float(value)

    def format(self, value: float | None) -> str:
        """A value in words: "87.3%" or "0.1234"."""
        if value is None:
            return "-"
        return f"{value:.1f}%" if self.unit == "%" else f"{value:.4f}"


SCORE = Objective("held-out preview score", "score", "maximize", "%")
HELDOUT_LOSS = Objective(
    "held-out validation loss", "heldout_loss", "minimize", "",
    note="No scorer was given: the search judges trials by the held-out validation loss (the denoising loss of the "
         "held-out images with their own CLIP features, lower is better), which says less about what generated "
         "pictures look like than CLIP scores; give a scorer (--clip, or the node's scorer) for the preview score.")


def objective_for(has_scorer: bool) -> Objective:
    """The preview score with a scorer, else the held-out validation loss."""
    return SCORE if has_scorer else HELDOUT_LOSS


def judged_previews(previews: PreviewSource | None) -> tuple[Objective, PreviewSource]:
    """What a search with these previews judges its trials by, and the previews set to measure it (without a
    scorer, each round measures the held-out loss)."""
    previews = previews or PreviewSource()
    objective = objective_for(previews.scorer is not None)
    return objective, dataclasses.replace(previews, heldout_loss=previews.scorer is None)
