"""The server's record of the Train and Search nodes' runs: every run's state for the
`GET /ipadapter_train/runs` route, the events sent to every page, the search node's table of trials, and which
nodes' runs stopped (so ComfyUI does not reuse a cancelled run's output). One run's progress is turned into that
record, ComfyUI's progress bar and the events by `run_reporter.RunReporter`.

Events (see CONTRACT.md) go to every connected page, not only the one that queued the prompt, so a
page reloaded mid-run keeps receiving them, and the same workflow opened in a second tab or browser shows
the run as well; the route lets a page opened or reloaded mid-run draw the chart first. Runs are keyed by
(prompt id, node id) and carry the id of the workflow (and, for the record, the client id of the page that
queued them), so a page draws a run only on the workflow it came from: two workflows often share node ids.
"""
from __future__ import annotations

import threading
from typing import Any

try:  # absent when the nodes are imported without a server (tests, scripts)
    from server import PromptServer
except ImportError:  # pragma: no cover - depends on how ComfyUI is imported
    PromptServer = None

SEARCH_EVENT = "ipadapter_train.search"
ROUTE = "/ipadapter_train/runs"
KEEP_FINISHED = 16  # finished runs the route still lists, for pages reloaded after their run ended

LOCK = threading.Lock()
RUNS: dict[tuple[str, str], dict[str, Any]] = {}  # (prompt id, node id) -> run, in start order
# (prompt id, node id) -> the search node's table of trials (`search_update`); each trial is a run of RUNS in turn
SEARCHES: dict[tuple[str, str], dict[str, Any]] = {}


# Train node id -> runs of it that ended cancelled or failed (at any phase). The node's
# `fingerprint_inputs` returns this count, so ComfyUI's output cache (keyed on it) never hands a cancelled run's
# partial adapter to the next Run of the same settings: that Run trains afresh. Only the cancelled prompt itself
# passes its partial adapter on (to Save, Apply), and it says "cancelled after N of M steps" there.
_STOPPED_RUNS: dict[str, int] = {}


def note_stopped_run(node_id: str) -> None:
    """Count a run of node `node_id` that was cancelled or failed: its result must not be reused."""
    with LOCK:
        _STOPPED_RUNS[node_id] = _STOPPED_RUNS.get(node_id, 0) + 1


def stopped_runs(node_id: str) -> int:
    """How many runs of node `node_id` this server process saw cancelled or failed (see `note_stopped_run`)."""
    with LOCK:
        return _STOPPED_RUNS.get(node_id, 0)


def snapshot() -> dict[str, Any]:
    """{"runs": [run, ...]} of this server process, oldest first (see CONTRACT.md for the fields); a search's trial
    also carries the search's table (`search`)."""
    with LOCK:
        out = []
        for key, run in RUNS.items():
            item = {**run, "losses": list(run["losses"]), "previews": [dict(p) for p in run["previews"]]}
            if key in SEARCHES:
                item["search"] = SEARCHES[key]
            out.append(item)
        return {"runs": out}


def search_update(prompt_id: str, node_id: str, state: dict[str, Any]) -> None:
    """Record the search node's table of trials (`state`: trials, objective, rows, best, done, ...) for the runs route
    and send it to every page (`ipadapter_train.search`, with the node and prompt ids)."""
    payload = {"node": node_id, "prompt_id": prompt_id, **state}
    with LOCK:
        SEARCHES[(prompt_id, node_id)] = payload
        for key in [k for k in SEARCHES if k not in RUNS][:-KEEP_FINISHED]:
            del SEARCHES[key]  # the searches whose last trial the route no longer lists
    send(SEARCH_EVENT, payload)


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


def send(event: str, payload: dict[str, Any]) -> None:
    """Send `event` to every connected page (none when there is no server)."""
    server = _server()
    if server is not None:
        server.send_sync(event, payload)  # no client id: every page, reloaded ones included


def forget_old_runs() -> None:
    """Keep every unfinished run and the last KEEP_FINISHED finished ones (called with LOCK held)."""
    finished = [key for key, run in RUNS.items() if run["done"]]
    for key in finished[:max(0, len(finished) - KEEP_FINISHED)]:
        del RUNS[key]
