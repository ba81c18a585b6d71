"""Headless Debian Chromium driven by Playwright, pointed at a real ComfyUI (from `harness.py`).

    with comfy_server(base, {"checkpoints": [...], "clip_vision": [...]}) as srv, chromium() as page:
        open_comfy(page, srv)
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from harness import PACK_NAME as PACK_DIR_NAME  # noqa: F401 (re-exported for the tests)
from harness import ROOT, ComfyServer

CHECKPOINT = "sd15-tiny.safetensors"  # the names make-test-models gives its files
CLIP_VISION = "clip-vision-vit-l.safetensors"


@contextlib.contextmanager
def comfy_server(base: Path, models: dict[str, list[Path]], pack: Path = ROOT):
    """A `harness.ComfyServer` for the duration of a `with` block (the workflow builder uses it)."""
    srv = ComfyServer(base, models, pack=pack).start()
    try:
        yield srv
    finally:
        srv.stop()


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
    page.goto(srv.url + "/", wait_until="domcontentloaded", timeout=timeout_ms)
    page.wait_for_function("() => !!(window.comfyAPI?.app?.app?.graph && window.LiteGraph"
                           " && window.LiteGraph.registered_node_types['KSampler'])", timeout=timeout_ms)
