"""Headless Debian Chromium driven by Playwright, pointed at a real ComfyUI (from `harness.py`).

    with comfy_server(base, {"checkpoints": [...], "clip_vision": [...]}) as srv, chromium() as page:
        open_comfy(page, srv)

The server runs torch on one thread (`ONE_THREAD`), so that Chromium keeps a core while a run trains.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import defaultdict
from pathlib import Path
from unittest import mock

from harness import PACK_NAME as PACK_DIR_NAME  # noqa: F401 (re-exported for the tests)
from harness import ROOT, ComfyServer

log = logging.getLogger(__name__)
CHECKPOINT = "sd15-tiny.safetensors"  # the names make-test-models gives its files
CLIP_VISION = "clip-vision-vit-l.safetensors"


# torch's thread pool in the server: one thread. With two (torch's default on two cores) a test model's training
# step cost 2.0 CPU seconds and with one 0.30, its encoding 7 and 2.4 per image (measured on a 2-core machine shared
# with other jobs: idle pool threads spin for the CPU they do not get); and one thread leaves Chromium a core. Pinning
# the two threads to one core instead (os.sched_setaffinity) made a step cost 15 CPU seconds.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def start_one_thread(srv: ComfyServer) -> ComfyServer:
    """Start `srv` with torch on one thread (`ONE_THREAD` in its environment, which it inherits from this process's:
    set for the start only)."""
    with mock.patch.dict(os.environ, ONE_THREAD):
        return srv.start()


@contextlib.contextmanager
def comfy_server(base: Path, models: dict[str, list[Path]], pack: Path = ROOT):
    """A `harness.ComfyServer` for the duration of a `with` block (the workflow builder uses it)."""
    srv = start_one_thread(ComfyServer(base, models, pack=pack))
    try:
        yield srv
    finally:
        srv.stop()


# ---------------------------------------------------------------------------------------------- timings

class Phases:
    """Seconds spent per phase of the browser tests (server start, frontend boot, training runs, screenshots,
    waits), summed by name: logged at INFO as they end and written as a table at the end of the module."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.monotonic()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds
        self.count[name] += 1
        log.info("browser phase %s: %.2f s", name, seconds)

    def cpu(self, server_pid: int) -> dict[str, float]:
        """CPU seconds so far of the server process, of this process, and of its finished children (Playwright's
        driver and the Chromium it started, once the browser is closed): where the two cores went."""
        own = os.times()
        out = {"ComfyUI server": 0.0, "pytest": own.user + own.system,
               "Chromium + Playwright driver (finished)": own.children_user + own.children_system}
        with contextlib.suppress(OSError, ValueError, IndexError, AttributeError):  # Linux's /proc
            fields = Path(f"/proc/{server_pid}/stat").read_text().rsplit(")", 1)[1].split()
            out["ComfyUI server"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return out

    def add_cpu(self, before: dict[str, float], after: dict[str, float]) -> None:
        for name, seconds in after.items():
            self.add(f"cpu: {name}", seconds - before.get(name, 0.0))

    def table(self) -> str:
        rows = sorted(self.seconds.items(), key=lambda kv: -kv[1])
        return "\n".join(f"{self.count[name]:3d} x {name:<40s} {seconds:8.2f} s" for name, seconds in rows)

    def write(self, path: Path) -> None:
        log.info("browser test phases:\n%s", self.table())
        path.write_text(json.dumps({name: {"seconds": round(s, 2), "count": self.count[name]}
                                    for name, s in sorted(self.seconds.items(), key=lambda kv: -kv[1])}, indent=2))


PHASES = Phases()


# ---------------------------------------------------------------------------------------------- browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
# Settings a first visit would otherwise answer in dialogs (new-user template browser, release notes, and the
# Missing Models dialog the templates raise on a server without the public files: the test that checks that
# dialog turns it back on in its page).
QUIET_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Release.Version": "99.0.0",
                  "Comfy.Release.Status": "skipped", "Comfy.Release.Timestamp": 4102444800000,
                  "Comfy.Workflow.ShowMissingModelsWarning": False}


@contextlib.contextmanager
def chromium(viewport=(1600, 1000)):
    """A headless Debian Chromium driven by Playwright (never Playwright's downloaded browsers)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        with PHASES("chromium launch"):
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            yield page
        finally:
            browser.close()


def open_comfy(page, srv: ComfyServer, timeout_ms: int = 90_000) -> None:
    """Load the real frontend and wait until the app, its node definitions and the graph are up."""
    with contextlib.suppress(Exception):
        srv.request("/settings", QUIET_SETTINGS)
    with PHASES("page load (goto)"):
        page.goto(srv.url + "/", wait_until="domcontentloaded", timeout=timeout_ms)
    with PHASES("frontend boot"):
        page.wait_for_function("() => !!(window.comfyAPI?.app?.app?.graph && window.LiteGraph"
                               " && window.LiteGraph.registered_node_types['KSampler'])", timeout=timeout_ms)
