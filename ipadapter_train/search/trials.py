"""A search's trials as rows: what the summary, the search page and the ComfyUI node's table show.

    rows = trial_rows(study)          # one `TrialRow` per trial, in order
    best = best_row(rows, objective)  # the best finished one, or None
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .memory import NOTE as MEMORY_NOTE
from .objective import Objective

STATES = {"COMPLETE": "finished", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "queued"}


@dataclass
class TrialRow:
    """One trial: its settings, its value (finished trials), and where its run is."""

    number: int
    state: str  # finished, pruned, failed, running, queued
    settings: dict[str, Any]
    value: float | None
    steps: int | None
    seconds: float | None
    best_step: int | None
    run_dir: str | None
    adapter: str | None
    rounds: list[tuple[int, float]] = field(default_factory=list)  # (step, the objective's figure), per round
    started: float | None = None  # POSIX time
    ended: float | None = None
    # why a pruned trial has no figure: its batch did not fit in memory, or its loss diverged
    note: str | None = None
    label: str | None = None  # the settings it was queued with, when tried first ("defaults")

    @property
    def name(self) -> str:
        """The trial's run name, `trial_NNN`."""
        return f"trial_{self.number:03d}"

    def outcome(self, objective: Objective) -> str:
        """What became of the trial, in words: its figure, or why it has none ("pruned after step 50 (86.3%)",
        "pruned (batch size 4 ran out of memory)", "running")."""
        if self.value is not None:
            return objective.format(self.value)
        if self.note:
            return f"pruned ({self.note})"
        if self.state == "pruned" and self.rounds:
            step, value = self.rounds[-1]
            return f"pruned after step {step} ({objective.format(value)})"
        return self.state

    def grid(self) -> str | None:
        """The trial's preview grid of its chosen step (the best round, or the last), relative to the search folder."""
        step = self.best_step or (self.rounds[-1][0] if self.rounds else None)
        return f"{self.name}/previews/step_{step:04d}.png" if step else None


def setting_text(value: Any) -> str:
    """A setting's value in a few characters: 0.00012 -> "1.2e-04", 0.05 -> "0.05", "plus" -> "plus"."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if value != 0 and abs(value) < 1e-2:
        return f"{value:.1e}"
    return f"{value:.3g}"


def trial_rows(study) -> list[TrialRow]:
    """Every trial of `study` (an optuna.Study), in number order."""
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        attrs = t.user_attrs
        rows.append(TrialRow(
            t.number, STATES.get(t.state.name, t.state.name.lower()), dict(t.params),
            # Optuna gives a pruned trial its last round's figure as value: here only a finished trial has one
            float(t.value) if t.value is not None and t.state.name == "COMPLETE" else None,
            attrs.get("steps"), attrs.get("seconds"),
            attrs.get("best_step"), attrs.get("run_dir"), attrs.get("adapter"),
            sorted((int(s), float(v)) for s, v in t.intermediate_values.items()),
            t.datetime_start.timestamp() if t.datetime_start else None,
            t.datetime_complete.timestamp() if t.datetime_complete else None,
            attrs.get(MEMORY_NOTE) or attrs.get("diverged"), attrs.get("tried")))
    return rows


def best_row(rows: list[TrialRow], objective: Objective) -> TrialRow | None:
    """The finished trial with the best value (the first of equals), or None."""
    done = [r for r in rows if r.state == "finished" and r.value is not None]
    if not done:
        return None
    sign = -1 if objective.higher_is_better else 1
    return min(done, key=lambda r: (sign * r.value, r.number))


def grid_path(folder: Path, row: TrialRow) -> Path | None:
    """The trial's chosen grid on disk, or None when it has none (no round, or the file was not written)."""
    rel = row.grid()
    return folder / rel if rel and (folder / rel).is_file() else None
