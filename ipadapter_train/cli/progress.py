"""The CLI's progress bar: tqdm with the loss and an ETA that counts the planned preview rounds; logging printed
above it."""
from __future__ import annotations

import statistics
import time
from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, Iterator


class RunEta:
    """The rest of a run's steps and preview rounds, in seconds, from the measured steps and the core's preview plan
    (`previews.rounds.PreviewPlan`): the first figure comes with the first step, rounds included. `clock` is
    injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter, window: int = 20) -> None:
        self.clock, self.plan = clock, None
        self._times: deque[float] = deque(maxlen=window)
        self._last: float | None = None
        self._round_times: list[float] = []
        self._round_start: float | None = None
        self.rounds_run = 0
        self._round_step = -1  # the step of the last finished round

    def set_plan(self, plan: Any) -> None:
        """The core's preview plan (the trainer's `on_preview_plan` hook)."""
        self.plan = plan

    def step(self, step: int) -> None:
        """After each step: time it (a round in between is not part of it)."""
        now = self.clock()
        if self._last is not None:
            self._times.append(now - self._last)
        self._last = now

    def round_done(self, step: int) -> None:
        """After each preview round (the trainer's `on_preview` hook)."""
        now = self.clock()
        if self._last is not None and self.rounds_run:  # the first round also renders the weight-0 images
            self._round_times.append(now - self._last)
        self.rounds_run += 1
        self._round_step = step
        self._last = now

    def seconds(self, step: int, total: int) -> float | None:
        """Estimated seconds left after step `step` (its round, when due, not yet run); None before a step."""
        per_step = statistics.median(self._times) if self._times else getattr(self.plan, "step_seconds", None)
        if per_step is None:
            return None
        left = per_step * (total - step)
        p = self.plan
        if p is not None:
            pending = step >= 1 and p.due(step, total) and self._round_step != step
            measured = statistics.median(self._round_times) if self._round_times else None
            left += p.seconds_left(step, total, self.rounds_run, pending, measured) or 0.0
        return left


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60:02d}:{seconds % 60:02d}"


@contextmanager
def progress_bar(desc: str, unit: str = "step") -> Iterator[Callable[..., None]]:
    """Yield `update(step, total, loss=None)` driving a tqdm bar whose ETA counts the planned preview rounds;
    logging goes above the bar. `update.note(done, total)` shows a preview round's sampling progress after the
    step count; `update.plan(plan)` and `update.round_done(entry, grid)` are the trainer's `on_preview_plan` and
    `on_preview` hooks."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    eta = RunEta()
    state = {"step": 0, "total": 0}
    bar = tqdm(desc=desc, unit=unit, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")

    def show_eta() -> None:
        left = eta.seconds(state["step"], state["total"])
        bar.set_postfix_str(f"ETA {_clock(left)}" if left is not None else "", refresh=False)

    def update(step: int, total: int, loss: float | None = None) -> None:
        eta.step(step)
        state.update(step=step, total=total)
        bar.total = total
        bar.n = step
        if loss is not None:
            bar.set_description(f"{desc} loss={loss:.4f}", refresh=False)
        show_eta()
        bar.refresh()

    def note(done: int, total: int) -> None:
        left = eta.seconds(state["step"], state["total"])
        bar.set_postfix_str(f"preview {done}/{total}" + (f", ETA {_clock(left)}" if left is not None else ""))

    def plan(p: Any) -> None:
        eta.set_plan(p)

    def round_done(entry: dict, grid: Any = None) -> None:
        eta.round_done(int(entry["step"]))
        show_eta()
        bar.refresh()

    update.note, update.plan, update.round_done, update.eta = note, plan, round_done, eta
    with logging_redirect_tqdm():
        try:
            yield update
        finally:
            bar.close()
