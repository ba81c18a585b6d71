"""Live state of the Train node's runs: ComfyUI's progress bar, the browser events, cancel, and the
`GET /ipadapter_train/runs` route.

A run goes through phases: "encoding" (the images through the VAE and CLIP vision), "training" (the
optimizer steps), "validating" (the conditioning gain, when the node's validation setting is on) and
"done". ComfyUI's progress bar counts the units of the current phase (images, then steps, then validation
calls); the events name the phase, so the chart on the node can say what the bar counts.

Events (see CONTRACT.md) go to every connected page, not only the one that queued the prompt, so a
page reloaded mid-run (which gets a new client id) keeps receiving them; the route lets it redraw the
chart first. Runs are keyed by (prompt id, node id) and carry the id of the workflow and the client id
of the page that queued them, so a page draws a run only on the workflow it came from, and only in
the browser tab that queued it (two workflows often share node ids; the same workflow may be open in
several tabs).
"""
from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from typing import Any

import comfy.model_management
import comfy.utils

from ..ipadapter_train.errors import TrainingCancelled

try:  # absent when the nodes are imported without a server (tests, scripts)
    from server import PromptServer
except ImportError:  # pragma: no cover - depends on how ComfyUI is imported
    PromptServer = None

log = logging.getLogger(__name__)

PHASE_EVENT = "ipadapter_train.phase"
PROGRESS_EVENT = "ipadapter_train.progress"
DONE_EVENT = "ipadapter_train.done"
ROUTE = "/ipadapter_train/runs"
ETA_WINDOW = 20
KEEP_FINISHED = 16  # finished runs the route still lists, for pages reloaded after their run ended
# A validation call is one forward pass over 2 samples (own and shuffled features) without a backward
# pass; a training step is a forward and a backward pass over batch_size samples, and the backward pass
# costs about one forward here (the frozen weights need no gradients of their own). So a call costs
# about a step at batch 1 and a step / batch_size above. Only the ETA before validation starts uses
# this estimate; once it runs, the ETA comes from the measured calls.
VALIDATION_CALL_STEPS_AT_BATCH_1 = 1.0

_LOCK = threading.Lock()
RUNS: dict[tuple[str, str], dict[str, Any]] = {}  # (prompt id, node id) -> run, in start order


def snapshot() -> dict[str, Any]:
    """{"runs": [run, ...]} of this server process, oldest first (see CONTRACT.md for the fields)."""
    with _LOCK:
        return {"runs": [{**run, "losses": list(run["losses"])} for run in RUNS.values()]}


def _server():
    return getattr(PromptServer, "instance", None) if PromptServer is not None else None


def register_routes() -> bool:
    """Add the runs route to the running PromptServer once; True if it is (now or already) registered."""
    server = _server()
    if server is None:
        return False
    if getattr(server, "_ipadapter_train_routes", False):
        return True
    from aiohttp import web

    async def runs(request):  # noqa: ARG001 - aiohttp passes the request
        return web.json_response(snapshot())

    server.routes.get(ROUTE)(runs)
    server._ipadapter_train_routes = True
    return True


def _send(event: str, payload: dict[str, Any]) -> None:
    server = _server()
    if server is not None:
        server.send_sync(event, payload)  # no client id: every page, reloaded ones included


def _interrupted() -> bool:
    """Consume ComfyUI's cancel flag (the Cancel button, POST /interrupt); True if it was set."""
    try:
        comfy.model_management.throw_exception_if_processing_interrupted()
    except comfy.model_management.InterruptProcessingException:
        return True
    return False


def _forget_old_runs() -> None:
    """Keep every unfinished run and the last KEEP_FINISHED finished ones (called with _LOCK held)."""
    finished = [key for key, run in RUNS.items() if run["done"]]
    for key in finished[:max(0, len(finished) - KEEP_FINISHED)]:
        del RUNS[key]


class RunReporter:
    """Encode, step and validation callbacks for one Train run: progress bar, events, run state, cancel.

    Once training has started, cancel never lets ComfyUI's InterruptProcessingException out of the node: it
    becomes the core's `TrainingCancelled` at the next step (or validation call), so the trainer stops and
    the node returns the adapter trained so far. A cancel while the images are encoded (which takes
    minutes on a CPU) stops at the next image and lets the interrupt through: nothing is trained yet, so
    ComfyUI ends the prompt as interrupted, as its own nodes do.

    The ETA covers the rest of the node's work: the remaining steps and the validation after them. It is
    None until a step has been measured on its own: the first step also pays the set-up after encoding
    and one-off warm-up costs, so the first figure comes after the second step.
    """

    def __init__(self, node_id: str, prompt_id: str, total: int, images: int, validation_calls: int = 0,
                 batch_size: int = 1, workflow_id: str | None = None, client_id: str | None = None) -> None:
        self.node_id, self.prompt_id, self.workflow_id, self.client_id = node_id, prompt_id, workflow_id, client_id
        self.total, self.images, self.validation_calls = total, images, validation_calls
        self.batch_size = max(1, batch_size)
        self.cancel_requested = False
        self.steps_done = 0
        self._step_times: deque[float] = deque(maxlen=ETA_WINDOW)
        self._call_times: deque[float] = deque(maxlen=ETA_WINDOW)
        self._last_step: float | None = None
        self._last_call: float | None = None
        self.started = time.time()  # orders the runs of one node for the pages (newest is shown)
        self._bar = comfy.utils.ProgressBar(images)
        with _LOCK:
            RUNS.pop((prompt_id, node_id), None)  # a re-run of the same prompt starts afresh, at the end
            RUNS[(prompt_id, node_id)] = {
                "node": node_id, "prompt_id": prompt_id, "workflow_id": workflow_id, "client_id": client_id,
                "started": self.started,
                "phase": "encoding", "phase_done": 0, "phase_total": images,
                "step": 0, "total": total, "losses": [], "eta_seconds": None,
                "validation_calls": validation_calls, "done": False, "cancelled": False, "failed": False}
            _forget_old_runs()
        self._phase("encoding", 0, images)
        self._update_bar(0, images)

    # ------------------------------------------------------------------------------------------ helpers

    def _ids(self) -> dict[str, Any]:
        return {"node": self.node_id, "prompt_id": self.prompt_id, "workflow_id": self.workflow_id,
                "client_id": self.client_id, "started": self.started}

    def _update(self, **fields: Any) -> None:
        with _LOCK:
            run = RUNS.get((self.prompt_id, self.node_id))
            if run is not None:
                run.update(fields)

    def _phase(self, phase: str, done: int, total: int, eta: float | None = None) -> None:
        """Record the phase and its progress, and tell the pages."""
        self._update(phase=phase, phase_done=done, phase_total=total, eta_seconds=eta)
        _send(PHASE_EVENT, {**self._ids(), "phase": phase, "done": done, "total": total, "eta_seconds": eta})

    def _update_bar(self, value: int, total: int) -> None:
        try:
            self._bar.update_absolute(value, total)  # with a server, the hook raises on cancel
        except comfy.model_management.InterruptProcessingException:
            self.cancel_requested = True
        if _interrupted():
            self.cancel_requested = True

    def _step_seconds(self) -> float | None:
        return statistics.median(self._step_times) if self._step_times else None

    def _validation_estimate(self) -> float:
        """Seconds the validation after training should take, from the measured step time."""
        seconds = self._step_seconds()
        if not self.validation_calls or seconds is None:
            return 0.0
        return self.validation_calls * seconds * VALIDATION_CALL_STEPS_AT_BATCH_1 / self.batch_size

    # ---------------------------------------------------------------------------------------- callbacks

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
        seconds = self._step_seconds()
        eta = None if seconds is None else seconds * (total - step) + self._validation_estimate()
        with _LOCK:
            run = RUNS.get((self.prompt_id, self.node_id))
            if run is not None:
                run.update(phase="training", phase_done=step, phase_total=total, step=step, total=total,
                           eta_seconds=eta)
                run["losses"].append(loss)
        _send(PROGRESS_EVENT, {**self._ids(), "step": step, "total": total, "loss": loss, "eta_seconds": eta})
        self._update_bar(step, total)
        if self.cancel_requested:
            raise TrainingCancelled()
        if step >= total and self.validation_calls:
            self._last_call = time.perf_counter()
            self._phase("validating", 0, self.validation_calls, self._validation_estimate() if seconds else None)
            self._update_bar(0, self.validation_calls)

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

    def finish(self, cancelled: bool, failed: bool = False) -> None:
        """Mark the run done (also after an error) and send the done event."""
        with _LOCK:
            run = RUNS.get((self.prompt_id, self.node_id))
            if run is not None:
                run.update(phase="done", done=True, cancelled=cancelled, failed=failed,
                           eta_seconds=None if cancelled or failed else 0.0)
            _forget_old_runs()
        _send(DONE_EVENT, {**self._ids(), "steps": self.steps_done, "total": self.total, "cancelled": cancelled,
                           "failed": failed})
