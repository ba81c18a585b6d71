"""The CLI's progress bars: a run's (`training_progress`, the trainer's progress hook: the loss and an ETA that counts
the planned preview rounds) and a plain one for generation (`progress_bar`); logging printed above them."""
from __future__ import annotations

import statistics
import time
from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from ..training.plan import ENCODING, PREVIEWED, PREVIEWING, TRAINING, VALIDATING


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
        """The core's preview plan (a `RunEvent`'s schedule)."""
        self.plan = plan

    def step(self, step: int) -> None:
        """After each step: time it (a round in between is not part of it)."""
        now = self.clock()
        if self._last is not None:
            self._times.append(now - self._last)
        self._last = now

    def round_done(self, step: int) -> None:
        """After each preview round."""
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
def _tqdm(desc: str, unit: str) -> Iterator[Any]:
    """A tqdm bar with logging printed above it, closed at the end."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar = tqdm(desc=desc, unit=unit, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
    with logging_redirect_tqdm():
        try:
            yield bar
        finally:
            bar.close()


@contextmanager
def progress_bar(desc: str, unit: str = "step") -> Iterator[Callable[..., None]]:
    """Yield `update(done, total)` driving a tqdm bar (generation and evaluation); logging goes above the bar."""
    with _tqdm(desc, unit) as bar:
        def update(done: int, total: int) -> None:
            bar.total, bar.n = total, done
            bar.refresh()

        yield update


@contextmanager
def training_progress(desc: str = "training") -> Iterator[Callable[[Any], None]]:
    """Yield the trainer's progress hook (it takes each `training.plan.RunEvent`): a tqdm bar over the steps with the
    loss and an ETA that counts the planned preview rounds (the events' schedule); the images being encoded, a
    preview round's sampling steps and the validation calls show after the step count. Logging goes above the bar."""
    eta = RunEta()
    state = {"step": 0, "total": 0}

    with _tqdm(desc, "step") as bar:
        def eta_text() -> str:
            left = eta.seconds(state["step"], state["total"])
            return f"ETA {_clock(left)}" if left is not None else ""

        def note(text: str) -> None:
            bar.set_postfix_str(", ".join(t for t in (text, eta_text()) if t))

        def on_event(event: Any) -> None:
            if event.schedule is not None:
                eta.set_plan(event.schedule)
            if event.phase == TRAINING:
                eta.step(event.done)
                state.update(step=event.done, total=event.total)
                bar.total, bar.n = event.total, event.done
                if event.loss is not None:
                    bar.set_description(f"{desc} loss={event.loss:.4f}", refresh=False)
                bar.set_postfix_str(eta_text(), refresh=False)
                bar.refresh()
            elif event.phase == PREVIEWED:
                eta.round_done(event.step)
                note("")
            elif event.phase == ENCODING:
                note(f"encoding {event.done}/{event.total} image(s)")
            elif event.phase == PREVIEWING:
                note(f"preview {event.done}/{event.total}")
            elif event.phase == VALIDATING:
                note(f"validating {event.done}/{event.total}")

        on_event.eta = eta
        yield on_event
