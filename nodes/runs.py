"""Live state of the Train node's runs: ComfyUI's progress bar, the browser events, cancel, and the
`GET /ipadapter_train/runs` route.

Events (see CONTRACT.md) go to every connected page, not only the one that queued the prompt, so a
page reloaded mid-run (which gets a new client id) keeps receiving them; the route lets it redraw the
chart first. The state is per server process and keyed by the Train node's id.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import comfy.model_management
import comfy.utils

from ..ipadapter_train.errors import TrainingCancelled
from ..ipadapter_train.report import plot_losses

try:  # absent when the nodes are imported without a server (tests, scripts)
    from server import PromptServer
except ImportError:  # pragma: no cover - depends on how ComfyUI is imported
    PromptServer = None

log = logging.getLogger(__name__)

PROGRESS_EVENT = "ipadapter_train.progress"
DONE_EVENT = "ipadapter_train.done"
ROUTE = "/ipadapter_train/runs"
PREVIEW_EVERY_SECONDS = 1.0
ETA_WINDOW = 20

_LOCK = threading.Lock()
RUNS: dict[str, dict[str, Any]] = {}


def snapshot() -> dict[str, Any]:
    """{"runs": {node id: {prompt_id, step, total, losses, eta_seconds, done}}} of this server process."""
    with _LOCK:
        return {"runs": {node: {**run, "losses": list(run["losses"])} for node, run in RUNS.items()}}


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


class RunReporter:
    """Step and encode callbacks for one Train run: progress bar, events, run state, cancel.

    Cancel never lets ComfyUI's InterruptProcessingException out of the node: it becomes the core's
    `TrainingCancelled` at the next step, so the trainer stops and the node returns the adapter
    trained so far. A cancel during encoding stops after the first step.
    """

    def __init__(self, node_id: str, prompt_id: str, total: int) -> None:
        self.node_id, self.prompt_id, self.total = node_id, prompt_id, total
        self.cancel_requested = False
        self.steps_done = 0
        self._durations: deque[float] = deque(maxlen=ETA_WINDOW)
        self._last_tick = time.perf_counter()
        self._last_preview = 0.0
        self._bar = comfy.utils.ProgressBar(total)
        self._encode_bar = None
        with _LOCK:
            RUNS[node_id] = {"prompt_id": prompt_id, "step": 0, "total": total, "losses": [],
                             "eta_seconds": None, "done": False, "cancelled": False}

    def _update_bar(self, bar, value: int, total: int, preview=None) -> None:
        try:
            bar.update_absolute(value, total, preview)  # with a server, the hook raises on cancel
        except comfy.model_management.InterruptProcessingException:
            self.cancel_requested = True
        if _interrupted():
            self.cancel_requested = True

    def encoding(self, done: int, total: int) -> None:
        """Encode progress (images through VAE and CLIP vision): the bar counts images."""
        if self._encode_bar is None:
            self._encode_bar = comfy.utils.ProgressBar(total)
        self._update_bar(self._encode_bar, done, total)
        self._last_tick = time.perf_counter()

    def step(self, step: int, total: int, loss: float) -> None:
        """After every optimizer step: record, tell the browser, update the bar, honour a cancel."""
        now = time.perf_counter()
        self._durations.append(now - self._last_tick)
        self._last_tick = now
        self.steps_done, self.total = step, total
        eta = sorted(self._durations)[len(self._durations) // 2] * (total - step)
        with _LOCK:
            run = RUNS.setdefault(self.node_id, {"prompt_id": self.prompt_id, "losses": [], "done": False,
                                                 "cancelled": False})
            run.update(step=step, total=total, eta_seconds=eta)
            run["losses"].append(loss)
            losses = list(run["losses"]) if self._want_preview(now, step, total) else None
        _send(PROGRESS_EVENT, {"node": self.node_id, "prompt_id": self.prompt_id, "step": step,
                               "total": total, "loss": loss, "eta_seconds": eta})
        preview = ("JPEG", plot_losses(losses), 512) if losses is not None else None
        self._update_bar(self._bar, step, total, preview)
        if self.cancel_requested:
            raise TrainingCancelled()

    def _want_preview(self, now: float, step: int, total: int) -> bool:
        if step >= total or now - self._last_preview >= PREVIEW_EVERY_SECONDS:
            self._last_preview = now
            return True
        return False

    def finish(self, cancelled: bool) -> None:
        """Mark the run done (also after an error) and send the done event."""
        with _LOCK:
            run = RUNS.get(self.node_id)
            if run is not None:
                run.update(done=True, cancelled=cancelled, eta_seconds=0.0 if not cancelled else None)
        _send(DONE_EVENT, {"node": self.node_id, "prompt_id": self.prompt_id, "steps": self.steps_done,
                           "total": self.total, "cancelled": cancelled})
