"""One run's live progress (a Train run, or a Search trial): ComfyUI's progress bar, the browser events, cancel,
and the run's record that the `GET /ipadapter_train/runs` route lists (runs.py keeps the records).

A run goes through phases: "encoding" (the images through the VAE and CLIP vision), "training" (the
optimizer steps), "previewing" (a preview round, when the core's plan (`previews/rounds.py`) has one after the
step: "auto" keeps the rounds within the previews' budget; the first round also renders the no-adapter
images), "validating" (the conditioning gain, when the node's
validation setting is on) and "done". ComfyUI's progress bar counts the units of the current phase (images,
steps, a round's sampling steps, validation calls); the events name the phase, so the chart on the node can
say what the bar counts. After every round a preview event names the grid's file, which the page loads
through ComfyUI's `/view`, and the run's record keeps the list, so a reloaded page shows the latest grid.
"""
from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from typing import Any

import comfy.model_management
import comfy.utils

from ..ipadapter_train.api import (ENCODING, PREVIEWED, PREVIEWING, TRAINING, VALIDATING, PreviewPlan, RunEvent,
                                   TrainingCancelled)
from . import runs  # the records: module attributes, so a test's stand-in RUNS is the one written

log = logging.getLogger(__name__)

PHASE_EVENT = "ipadapter_train.phase"
PROGRESS_EVENT = "ipadapter_train.progress"
DONE_EVENT = "ipadapter_train.done"
PREVIEW_EVENT = "ipadapter_train.preview"
ETA_WINDOW = 20


def _interrupted() -> bool:
    """Consume ComfyUI's cancel flag (the Cancel button, POST /interrupt); True if it was set."""
    try:
        comfy.model_management.throw_exception_if_processing_interrupted()
    except comfy.model_management.InterruptProcessingException:
        return True
    return False


class RunReporter:
    """The progress hook of one Train run (`progress`, which takes the core's `RunEvent`s): progress bar, events,
    run state, cancel.

    Once training has started, cancel never lets ComfyUI's InterruptProcessingException out of the node: it
    becomes the core's `TrainingCancelled` at the next step (or validation call), so the trainer stops and
    the node returns the adapter trained so far. A cancel while the images are encoded (which takes
    minutes on a CPU) stops at the next image and lets the interrupt through: nothing is trained yet, so
    ComfyUI ends the prompt as interrupted, as its own nodes do.

    A cancel during a preview round stops it at the next sampling step (`preview_progress` raises the
    core's `TrainingCancelled`): the run ends at once with the adapter of the steps done.

    The ETA covers the rest of the node's work: the remaining steps, the preview rounds still to come and the
    validation after them, from the first step on. The figures are the core's: the run's plan (its steps, its
    validation calls and their estimated cost in steps, `validation_steps`, and the preview schedule with the
    rounds' estimated cost, `previews.rounds.PreviewPlan`), and each event's schedule, which carries the first step's
    measured time; the reporter copies no rule of its own. Later steps are timed here (between events); a round's
    time is measured (from the end of its step to its grid) and replaces the core's estimate from then on.
    """

    def __init__(self, node_id: str, prompt_id: str, total: int, images: int, validation_calls: int = 0,
                 validation_steps: float = 0.0, workflow_id: str | None = None, client_id: str | None = None,
                 previews: PreviewPlan | None = None, subfolder: str = "", random_scores: bool = False,
                 trial: dict[str, Any] | None = None) -> None:
        self.node_id, self.prompt_id, self.workflow_id, self.client_id = node_id, prompt_id, workflow_id, client_id
        # a search's trial: {"number", "index" (1-based, in this search), "trials"}; in every event and the record.
        # Its stops (pruned, cancelled) are the search node's to count, not the run's (see `finish`).
        self.trial = dict(trial) if trial else None
        self.total, self.images, self.validation_calls = total, images, validation_calls
        self.validation_steps = validation_steps  # the validation's estimated cost, in training steps (the core's)
        self.previews, self.subfolder = previews, subfolder.strip("/")
        self.random_scores = random_scores  # the scorer has random weights: its figures say so
        self.cancel_requested = False
        self.steps_done = 0
        self._step_times: deque[float] = deque(maxlen=ETA_WINDOW)
        self._call_times: deque[float] = deque(maxlen=ETA_WINDOW)
        self._sample_times: deque[float] = deque(maxlen=ETA_WINDOW)  # one DDIM step of a preview render
        self._round_times: deque[float] = deque(maxlen=ETA_WINDOW)  # a whole round, its grid included
        self._last_step: float | None = None
        self._last_call: float | None = None
        self._round: dict[str, Any] | None = None  # the preview round in progress: step, done, total, start, last
        self._last_round_step = -1  # the step of the last finished round
        self._rounds_run = 0  # finished rounds (the first one also renders the no-adapter images)
        self.started = time.time()  # orders the runs of one node for the pages (newest is shown)
        self._bar = comfy.utils.ProgressBar(images)
        with runs.LOCK:
            runs.RUNS.pop((prompt_id, node_id), None)  # a re-run of the same prompt starts afresh, at the end
            runs.RUNS[(prompt_id, node_id)] = {
                "node": node_id, "prompt_id": prompt_id, "workflow_id": workflow_id, "client_id": client_id,
                "started": self.started,
                "phase": "encoding", "phase_done": 0, "phase_total": images,
                "step": 0, "total": total, "losses": [], "eta_seconds": None,
                "validation_calls": validation_calls, "previews": [], "done": False, "cancelled": False,
                "failed": False, "note": None}
            if self.trial:
                runs.RUNS[(prompt_id, node_id)]["trial"] = self.trial
            runs.forget_old_runs()
        self._phase("encoding", 0, images)
        self._update_bar(0, images)

    # ------------------------------------------------------------------------------------------ helpers

    def _ids(self) -> dict[str, Any]:
        ids = {"node": self.node_id, "prompt_id": self.prompt_id, "workflow_id": self.workflow_id,
               "client_id": self.client_id, "started": self.started}
        if self.trial:
            ids["trial"] = self.trial
        return ids

    def _update(self, **fields: Any) -> None:
        with runs.LOCK:
            run = runs.RUNS.get((self.prompt_id, self.node_id))
            if run is not None:
                run.update(fields)

    def _phase(self, phase: str, done: int, total: int, eta: float | None = None, **extra: Any) -> None:
        """Record the phase and its progress, and tell the pages."""
        self._update(phase=phase, phase_done=done, phase_total=total, eta_seconds=eta)
        runs.send(PHASE_EVENT, {**self._ids(), "phase": phase, "done": done, "total": total, "eta_seconds": eta,
                            **extra})

    def _update_bar(self, value: int, total: int) -> None:
        try:
            self._bar.update_absolute(value, total)  # with a server, the hook raises on cancel
        except comfy.model_management.InterruptProcessingException:
            self.cancel_requested = True
        if _interrupted():
            self.cancel_requested = True

    def progress(self, event: RunEvent) -> None:
        """The core's progress hook: each `RunEvent` to the bar, the events and the run's record; raises on cancel
        (see the class docstring)."""
        if event.schedule is not None:
            self.preview_plan(event.schedule)
        if event.phase == ENCODING:
            self.encoding(event.done, event.total)
        elif event.phase == TRAINING:
            self.step(event.done, event.total, event.loss)
        elif event.phase == PREVIEWING:
            self.preview_progress(event.done, event.total, event.step)
        elif event.phase == PREVIEWED:
            self.preview_done(event.round, event.grid)
        elif event.phase == VALIDATING:
            self.validating(event.done, event.total)

    def preview_plan(self, plan: PreviewPlan) -> None:
        """The core's preview schedule and its estimated cost (a `RunEvent`'s schedule)."""
        self.previews = plan

    def _step_seconds(self) -> float | None:
        """A step's time: measured here between steps, else the core's measure of the first step."""
        if self._step_times:
            return statistics.median(self._step_times)
        return self.previews.step_seconds if self.previews is not None else None

    def _round_seconds(self) -> float | None:
        """A round's time once one was measured here (None: the core's estimate stands)."""
        return statistics.median(self._round_times) if self._round_times else None

    def _previews_left(self, done: int) -> float:
        """Seconds of the rounds still to come after step `done`, the one due at `done` included if it has not run."""
        p = self.previews
        if p is None:
            return 0.0
        pending = done >= 1 and p.due(done, self.total) and self._last_round_step != done
        return p.seconds_left(done, self.total, self._rounds_run, pending, self._round_seconds()) or 0.0

    def _eta(self, done: int) -> float | None:
        """The rest of the node's work after step `done` (its round not yet run): None before a step was measured."""
        seconds = self._step_seconds()
        if seconds is None:
            return None
        return seconds * (self.total - done) + self._previews_left(done) + self._validation_estimate()

    def _validation_estimate(self) -> float:
        """Seconds the validation after training should take, from the measured step time."""
        seconds = self._step_seconds()
        if not self.validation_calls or seconds is None:
            return 0.0
        return self.validation_steps * seconds

    # ---------------------------------------------------------------------------------- one per phase

    def encoding(self, done: int, total: int) -> None:
        """Encode progress (images through VAE and CLIP vision): the bar counts images."""
        self._phase("encoding", done, total)
        self._update_bar(done, total)
        if self.cancel_requested:
            raise comfy.model_management.InterruptProcessingException()
        if done >= total:
            # the captions are encoded and the optimizer is set up before the first step: no ETA yet
            self._phase("training", 0, self.total)
            self._update_bar(0, self.total)

    def step(self, step: int, total: int, loss: float) -> None:
        """After every optimizer step: record, tell the pages, update the bar, honour a cancel."""
        now = time.perf_counter()
        if self._last_step is not None:
            self._step_times.append(now - self._last_step)
        self._last_step = now
        self.steps_done, self.total = step, total
        eta = self._eta(step)
        with runs.LOCK:
            run = runs.RUNS.get((self.prompt_id, self.node_id))
            if run is not None:
                run.update(phase="training", phase_done=step, phase_total=total, step=step, total=total,
                           eta_seconds=eta)
                run["losses"].append(loss)
        runs.send(PROGRESS_EVENT, {**self._ids(), "step": step, "total": total, "loss": loss, "eta_seconds": eta})
        self._update_bar(step, total)
        if self.cancel_requested:
            raise TrainingCancelled()
        if step >= total and not (self.previews is not None and self.previews.due(step, total)):
            self._start_validation()  # with a round after the last step, validation starts after it

    def _start_validation(self) -> None:
        if self.validation_calls:
            self._last_call = time.perf_counter()
            estimate = self._validation_estimate() if self._step_seconds() is not None else None
            self._phase("validating", 0, self.validation_calls, estimate)
            self._update_bar(0, self.validation_calls)

    def preview_progress(self, done: int, total: int, step: int | None = None) -> None:
        """After every sampling step of a preview round (`done` of `total`, the core's count over all the round's
        renders, the first round's no-adapter images included): the bar counts them; the ETA adds the rest of the
        round; a cancel stops the round at once. `step`: the step the round follows."""
        now = time.perf_counter()
        p = self.previews
        if self._round is None:
            start = self._last_step if self._last_step is not None else now  # a round starts when its step ends
            self._round = {"step": self.steps_done if step is None else step, "done": 0, "total": max(1, total),
                           "start": start, "last": start}
        r = self._round
        if now > r["last"] and r["done"]:
            self._sample_times.append(now - r["last"])
        r["last"] = now
        r["done"] = min(done, r["total"])
        eta = None
        seconds = self._step_seconds()
        if seconds is not None:
            # the rest of this round (from its own sampling steps once measured), then everything after it
            first = self._rounds_run == 0
            if self._sample_times:
                rest_of_round = (r["total"] - r["done"]) * statistics.median(self._sample_times)
            else:
                whole = (self._round_seconds() if not first else None) or (
                    p.round_estimate(first) if p is not None else None) or 0.0
                rest_of_round = whole * (r["total"] - r["done"]) / r["total"]
            later = 0.0
            if p is not None:
                later = p.seconds_left(r["step"], self.total, self._rounds_run + 1, False, self._round_seconds()) or 0.0
            eta = rest_of_round + later + seconds * (self.total - r["step"]) + self._validation_estimate()
        self._phase("previewing", r["done"], r["total"], eta, step=r["step"])
        self._update_bar(r["done"], r["total"])
        if self.cancel_requested:
            raise TrainingCancelled()  # the run stops now and the node returns the adapter of the steps done

    def preview_done(self, entry: dict[str, Any], grid: Any = None) -> None:
        """After every preview round: record its grid for the runs route and tell the pages where it is."""
        now = time.perf_counter()
        if self._round is not None and self._rounds_run > 0:  # the first round also made the no-adapter images
            self._round_times.append(now - self._round["start"])
        self._round = None
        self._rounds_run += 1
        step = int(entry["step"])
        self._last_round_step = step
        self._last_step = now  # the next step's time does not include the round
        folder, _, filename = str(entry["grid"]).replace("\\", "/").rpartition("/")
        item: dict[str, Any] = {"step": step, "filename": filename,
                                "subfolder": "/".join(x for x in (self.subfolder, folder) if x), "type": "output"}
        for key in ("score", "grade", "best_step"):
            if entry.get(key) is not None:
                item[key] = entry[key]
        if "score" in item and (self.random_scores or entry.get("random_weights")):
            item["random_weights"] = True
        offered = entry.get("written", True)  # a grid that could not be written (a full disk) is not offered
        with runs.LOCK:
            run = runs.RUNS.get((self.prompt_id, self.node_id))
            if run is not None and offered:
                run["previews"] = [p for p in run["previews"] if p["step"] != step] + [item]
        if offered:
            runs.send(PREVIEW_EVENT, {**self._ids(), **item})
        if step >= self.total:
            self._start_validation()
        else:
            self._phase("training", step, self.total, self._eta(step))
            self._update_bar(step, self.total)
        if self.cancel_requested:
            raise TrainingCancelled()

    def validating(self, done: int, total: int) -> None:
        """After every validation UNet call: the bar counts calls; the ETA comes from the measured ones."""
        now = time.perf_counter()
        if self._last_call is not None:
            self._call_times.append(now - self._last_call)
        self._last_call = now
        self.validation_calls = total
        eta = statistics.median(self._call_times) * (total - done) if self._call_times else None
        self._phase("validating", done, total, eta)
        self._update_bar(done, total)
        if self.cancel_requested:
            raise TrainingCancelled()  # the trainer keeps the adapter; the report has no conditioning gain

    def finish(self, cancelled: bool, failed: bool = False, note: str | None = None) -> None:
        """Mark the run done (also after an error) and send the done event; `note` is the core's "cancelled
        after N of M steps" of a cancelled run, which the node's status line shows."""
        if (cancelled or failed) and self.trial is None:
            runs.note_stopped_run(self.node_id)
        with runs.LOCK:
            run = runs.RUNS.get((self.prompt_id, self.node_id))
            if run is not None:
                run.update(phase="done", done=True, cancelled=cancelled, failed=failed, note=note,
                           eta_seconds=None if cancelled or failed else 0.0)
            runs.forget_old_runs()
        runs.send(DONE_EVENT, {**self._ids(), "steps": self.steps_done, "total": self.total, "cancelled": cancelled,
                           "failed": failed, "note": note})
