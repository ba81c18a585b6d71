"""Previews during training in a real ComfyUI server: the shipped training workflow, queued through POST /prompt
with preview_every 2 on 5 photos (one is held out), sends `ipadapter_train.preview` events over the websocket
after each round, the grids they name are served by ComfyUI's own /view, GET /ipadapter_train/runs lists them,
and the Train node's `previews` output (shown by a PreviewImage node) holds every grid.

Random-weight test models (tiny SD1.5, ViT-L CLIP vision): the grids are noise, the plumbing is real.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.parse

import numpy as np
import pytest
from PIL import Image

from browser_workflow_api import find_nodes, set_inputs
from harness import ComfyServer, status_messages
from test_server_integration import listed_run, train_set, workflow

pytestmark = pytest.mark.server

STEPS, EVERY = 4, 2


class Events:
    """Every message the server sends over its websocket, collected by a thread (aiohttp, ComfyUI's own
    dependency) from entering the block to leaving it."""

    def __init__(self, server: ComfyServer, client_id: str = "tests-previews") -> None:
        self.url = server.url.replace("http://", "ws://") + f"/ws?clientId={client_id}"
        self.messages: list[dict] = []
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._listen()), daemon=True)

    async def _listen(self) -> None:
        import aiohttp

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with aiohttp.ClientSession() as session, session.ws_connect(self.url) as ws:
            self._ready.set()
            while not self._stop.is_set():
                try:
                    msg = await asyncio.wait_for(ws.receive(), 0.5)
                except asyncio.TimeoutError:
                    continue
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self.messages.append(json.loads(msg.data))
                elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break

    def __enter__(self) -> "Events":
        self._thread.start()
        assert self._ready.wait(30), f"could not open {self.url}"
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def of(self, kind: str, prompt_id: str) -> list[dict]:
        return [m["data"] for m in list(self.messages)
                if m.get("type") == kind and m.get("data", {}).get("prompt_id") == prompt_id]

    def wait_for(self, kind: str, prompt_id: str, timeout: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout
        while not self.of(kind, prompt_id) and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.of(kind, prompt_id)


def test_a_train_run_with_previews_sends_preview_events_and_returns_every_grid(comfy, test_models):
    prompt = workflow(comfy, "train_ip_adapter", test_models)
    set_inputs(prompt, "IPAdapterTrain_LoadTrainingImages", folder=train_set(comfy))  # 5 photos: 1 held out
    set_inputs(prompt, "IPAdapterTrain_Train", steps=STEPS, resolution=64, validation="off", preview_every=EVERY,
               preview_prompts="a photo")
    set_inputs(prompt, "IPAdapterTrain_Save", name="previewed")
    (train_id,) = find_nodes(prompt, "IPAdapterTrain_Train")
    prompt["9001"] = {"class_type": "PreviewImage", "inputs": {"images": [train_id, 3]}}  # the previews output

    with Events(comfy) as events:
        prompt_id = comfy.queue(prompt)
        entry = comfy.wait(prompt_id, 600)
        assert entry["status"]["status_str"] == "success", status_messages(entry, "execution_error")
        assert events.wait_for("ipadapter_train.done", prompt_id), "no done event"

    sent = events.of("ipadapter_train.preview", prompt_id)
    assert [d["step"] for d in sent] == [EVERY, STEPS]
    grids = []
    for d in sent:
        assert d["node"] == train_id and d["type"] == "output" and d["filename"] == f"step_{d['step']:04d}.png"
        assert d["subfolder"].startswith("ipadapter_train/run-") and d["subfolder"].endswith("/previews")
        path = comfy.base / "output" / d["subfolder"] / d["filename"]
        query = urllib.parse.urlencode({"filename": d["filename"], "subfolder": d["subfolder"], "type": "output"})
        served = comfy.get(f"/view?{query}")  # what the page loads
        assert served == path.read_bytes() and served[:8] == b"\x89PNG\r\n\x1a\n"
        grids.append(np.asarray(Image.open(path).convert("RGB")))

    phases = [(d["phase"], d.get("step")) for d in events.of("ipadapter_train.phase", prompt_id)]
    # no round before the first step (the no-adapter images are made in the first round)
    assert ("previewing", 0) not in phases and ("previewing", EVERY) in phases and ("previewing", STEPS) in phases

    # a reloaded page finds the same grids in the runs route
    run = listed_run(comfy, prompt_id, train_id)
    assert run["done"] and [(p["step"], p["filename"], p["subfolder"]) for p in run["previews"]] == [
        (d["step"], d["filename"], d["subfolder"]) for d in sent]

    # the node's previews output: every grid, pixel for pixel (PreviewImage writes them to temp/ as PNG)
    shown = entry["outputs"]["9001"]["images"]
    assert len(shown) == len(grids)
    for image, grid in zip(shown, grids):
        picture = np.asarray(Image.open(comfy.base / image["type"] / image.get("subfolder", "") / image["filename"])
                             .convert("RGB"))
        assert np.array_equal(picture, grid)

    # one photo was held out of training for the previews, and the report says which
    (report_id,) = [k for k, n in prompt.items() if n["inputs"].get("source") == [train_id, 2]]  # Training report
    report = entry["outputs"][report_id]["text"][0]
    photos = sorted(f.name for f in (comfy.base / "input" / "train_set").glob("*.jpg"))
    rep = json.loads(report.split("\n\n", 1)[1])
    # named as the user's file (the template links Load Training Images' names to Train), not image_0001.png
    assert rep["previews"]["held_out"][0] in photos
    assert f"Held out of training for the previews: {rep['previews']['held_out'][0]}." in report.split("\n\n")[0]
    # make-test-models files: the report, its summary and the previews say these are random-weight figures
    assert report.startswith("NOTE: random-weight models")
    assert rep["random_weights"] is True and rep["previews"]["random_weights"] is True
    page = (comfy.base / "output" / sent[0]["subfolder"]).parent / "previews.html"
    assert "Random-weight models" in page.read_text()
