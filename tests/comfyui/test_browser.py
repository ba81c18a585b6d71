"""The web extension in a real browser: headless Debian Chromium (Playwright) against the real ComfyUI
frontend served by a real ComfyUI server with this pack, on CPU with random-weight test models.

    python -m pytest -q tests/comfyui/test_browser.py -s   # -s shows where the screenshots go

- every shipped workflow loads in the editor, uses only registered node types, has its thumbnail, and
  converts to the same API prompt with `browser_workflow_api.editor_to_api` as with the editor's own
  `app.graphToPrompt()`;
- the training workflow, queued with the Run button, shows its phases on the Train node's chart (encoding
  images, then "step X/Y, ETA" with no ETA before a step was measured); another workflow whose Train node
  has the same node id shows nothing of that run, another browser tab with the same workflow shows it; the
  page is reloaded mid-run and the chart comes back with the steps it missed (from
  GET /ipadapter_train/runs) and keeps following; Cancel (POST /interrupt) ends it; a short run then
  clears the chart when it starts encoding and shows its preview and validation phases;
- the latest preview grid of that short run appears under the chart on the Train node (loaded through
  ComfyUI's /view), and again after a page reload (from GET /ipadapter_train/runs). Screenshots are saved
  under tests/artifacts/browser/;
- the search template's node shows its running trial's chart ("trial 1/2: ...") and its table of trials from the
  search's events (dispatched in the page: test_server_search.py runs a real search);
- the training workflow with a taken Save name: Run is answered 400, ComfyUI's error dialog shows the sentence,
  and nothing runs.

Skipped only when /usr/bin/chromium is missing (`apt-get install -y chromium`). Needs `pip install
playwright` (its Python package only: the Debian browser is used, `playwright install` is never run)
and ComfyUI installed by tests/comfyui/setup_comfyui.sh.

The module starts its own server with torch on one thread (browser_server.ONE_THREAD: Chromium keeps a core, and a
training step costs far less CPU, measured there) and one Chromium page for its tests. Where the time goes (server start, page loads,
frontend boots, each run's phases, screenshots, waits, CPU per process) is logged at INFO and written to
tests/artifacts/browser/phases.json.
"""
from __future__ import annotations

import contextlib
import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import browser_server as bs  # noqa: E402
from harness import ComfyServer, test_models  # noqa: E402,F401 (fixture)
from browser_workflow_api import SHIPPED as SHIPPED_FILES  # noqa: E402
from browser_workflow_api import FRONTEND_ONLY, editor_to_api, load_workflow, workflow_path  # noqa: E402

pytestmark = pytest.mark.skipif(not Path(bs.CHROMIUM).exists(),
                                reason=f"{bs.CHROMIUM} not found: apt-get install -y chromium")
pytestmark = [pytestmark, pytest.mark.browser]

ARTIFACTS = bs.ROOT / "tests" / "artifacts" / "browser"
SAMPLES = bs.ROOT / "ipadapter_train" / "assets" / "samples"
# input/ folders of photos and captions: each photo costs an encoding with CLIP ViT-L; validation needs 2
TRAIN_FOLDER, ONE_PHOTO = "ipadapter_train_samples", "ipadapter_train_one"
TRAIN_IMAGES = {TRAIN_FOLDER: ("astronaut", "chelsea"), ONE_PHOTO: ("astronaut",)}
CHART = ".ipadapter-train-chart"
PREVIEW = ".ipadapter-train-preview"
SHIPPED = ["train_ip_adapter", "train_ip_adapter_cpu", "train_then_apply", "apply_ip_adapter", "score",
           "train_ip_adapter_sdxl", "search_ip_adapter"]


PHASES = bs.PHASES


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    """A ComfyUI server of this module's own with the test models and the training pictures in input/: torch on
    one thread (`bs.ONE_THREAD`), so that Chromium keeps a core while a run trains. Stopped at the module's end."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.fail("the browser test needs Playwright's Python package: pip install playwright "
                    "(never `playwright install`: the test drives /usr/bin/chromium)")
    with PHASES("test models (make-test-models)"):
        models = request.getfixturevalue("test_models")  # the session's, shared with the server tests
    with PHASES("server start"):
        srv = bs.start_one_thread(ComfyServer(tmp_path_factory.mktemp("comfy-browser-base"),
                                              {"checkpoints": [models["sd15"]], "clip_vision": [models["clip_vision"]]}))
    try:
        for folder, names in TRAIN_IMAGES.items():
            (srv.base / "input" / folder).mkdir(parents=True, exist_ok=True)
            for name in names:
                for suffix in (".jpg", ".txt"):
                    shutil.copy(SAMPLES / f"{name}{suffix}", srv.base / "input" / folder / f"{name}{suffix}")
        cpu, start = PHASES.cpu(srv.proc.pid), time.monotonic()
        PHASES.add_cpu({}, {"ComfyUI server start": cpu["ComfyUI server"]})
        yield srv
        PHASES.add("module wall (after server start)", time.monotonic() - start)
        PHASES.add_cpu(cpu, PHASES.cpu(srv.proc.pid))
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        PHASES.write(ARTIFACTS / "phases.json")
        log = srv.log()
        assert "IMPORT FAILED" not in "\n".join(l for l in log.splitlines() if bs.PACK_DIR_NAME in l), log[-3000:]
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser_page(server):
    """One Chromium and one boot of the frontend for the module's tests; `page` checks each test's console."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser test artefacts: {ARTIFACTS}")
    with bs.chromium() as pg:
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
        pg.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}")
              if m.type in ("error", "warning") and "ipadapter_train" in m.text else None)
        bs.open_comfy(pg, server)
        pg.ipt_errors = errors
        yield pg


@pytest.fixture
def page(browser_page):
    """The module's page; after the test, no error or warning of this pack in its console or uncaught."""
    browser_page.ipt_errors.clear()
    yield browser_page
    # Events that arrive between the socket opening and the extensions' setup() are reported by the
    # frontend as "Unhandled message ... Unknown message type": harmless, /runs covers them.
    ours = [e for e in browser_page.ipt_errors if ("ipadapter_train" in e or "ipadapter-train" in e)
            and "Unknown message type" not in e]
    assert not ours, "\n".join(ours)


def shot(page, name: str) -> None:
    with PHASES("screenshots"):
        page.screenshot(path=str(ARTIFACTS / name))


def when(page, condition: str, arg=None, timeout_ms: int = 10_000) -> None:
    """Wait until the JS function `condition(arg)` returns true, at most `timeout_ms`: if it never does, the caller's
    assertion says what there is instead."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with PHASES("waits on a condition"), contextlib.suppress(PlaywrightTimeout):
        page.wait_for_function(condition, arg=arg, timeout=timeout_ms)


def next_frames(page) -> None:
    """Until the page has drawn twice more: what was made dirty (canvas, chart) is on screen."""
    page.evaluate("() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")


@PHASES("load workflow in editor")
def load_in_editor(page, server, name: str, missing_models_dialog: bool = False) -> dict:
    """Fetch a shipped workflow as the template browser does (the server serves workflows/) and load it; the
    frontend's Missing Models dialog (the test server lacks the public files) only when asked for."""
    wf = page.evaluate("""async ([pack, file, dialog]) => {
        const res = await window.comfyAPI.api.api.fetchApi(`/workflow_templates/${pack}/${encodeURIComponent(file)}.json`);
        if (!res.ok) throw new Error(`template ${file}: HTTP ${res.status}`);
        const wf = await res.json();
        await window.comfyAPI.app.app.loadGraphData(wf, true, true, file,
                                                    {openSource: "template", showMissingModelsDialog: dialog});
        return wf;
    }""", [bs.PACK_DIR_NAME, SHIPPED_FILES[name], missing_models_dialog])
    page.wait_for_function("(n) => window.comfyAPI.app.app.graph._nodes.length === n", arg=len(wf["nodes"]))
    return wf


def set_widgets(page, values: dict[str, dict]) -> None:
    """{node type: {widget name: value}} on every node of that type in the open graph."""
    missing = page.evaluate("""(values) => {
        const missing = [];
        for (const [type, widgets] of Object.entries(values)) {
            const nodes = window.comfyAPI.app.app.graph._nodes.filter((n) => n.type === type);
            if (!nodes.length) missing.push(type);
            for (const node of nodes) for (const [name, v] of Object.entries(widgets)) {
                const w = node.widgets.find((w) => w.name === name);
                if (!w) { missing.push(type + '.' + name); continue; }
                w.value = v;
                w.callback?.(v);
            }
        }
        window.comfyAPI.app.app.graph.setDirtyCanvas(true, true);
        return missing;
    }""", values)
    assert not missing, f"not in the graph: {missing}"


def chart_state(page) -> dict | None:
    return page.evaluate(f"""() => {{
        const el = document.querySelector('{CHART}');
        if (!el) return null;
        const r = el.getBoundingClientRect();
        return {{...el.dataset, text: el.querySelector('.ipadapter-train-status')?.textContent ?? '',
                 visible: r.width > 0 && r.height > 0 && getComputedStyle(el).visibility !== 'hidden'}};
    }}""")


def preview_state(page) -> dict | None:
    return page.evaluate(f"""() => {{
        const el = document.querySelector('{PREVIEW}');
        if (!el) return null;
        const img = el.querySelector('img');
        const r = img.getBoundingClientRect();
        return {{...el.dataset, text: el.querySelector('.ipadapter-train-preview-caption')?.textContent ?? '',
                 width: img.naturalWidth, shown: r.width > 0 && r.height > 0}};
    }}""")


def wait_preview(page, predicate, timeout: float, what: str) -> dict:
    return _wait_for(page, preview_state, predicate, timeout, f"preview grid to {what}")


def wait_chart(page, predicate, timeout: float, what: str) -> dict:
    return _wait_for(page, chart_state, predicate, timeout, f"chart to {what}")


def _wait_for(page, read, predicate, timeout: float, what: str) -> dict:
    """Poll `read(page)` until `predicate` holds of it (timed as a phase), or fail with the last state read."""
    with PHASES(f"wait: {what}"):
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = read(page)
            if state and predicate(state):
                return state
            page.wait_for_timeout(250)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for the {what}; last state: {state}")


def focus_train_node(page) -> None:
    """Zoom to 1 around the Train node so the chart is drawn at full size for the screenshot."""
    page.evaluate("""() => {
        const app = window.comfyAPI.app.app;
        const node = app.graph._nodes.find((n) => n.type === 'IPAdapterTrain_Train');
        const ds = app.canvas.ds;
        ds.scale = 1;
        ds.offset[0] = -node.pos[0] + 420;
        ds.offset[1] = -node.pos[1] + 140;
        app.canvas.setDirty(true, true);
    }""")
    next_frames(page)


def strip(prompt: dict, object_info: dict) -> dict:
    """class_type and the inputs the server reads (the editor also sends its display-only widgets)."""
    def known(node):
        spec = object_info[node["class_type"]]["input"]
        return {**spec.get("required", {}), **spec.get("optional", {})}
    return {k: {"class_type": v["class_type"], "inputs": {i: x for i, x in v["inputs"].items() if i in known(v)}}
            for k, v in prompt.items()}


def test_shipped_workflows_load_and_convert_like_the_editor(server, page):
    object_info = server.object_info()
    for name in SHIPPED:
        thumbnail = workflow_path(name).with_suffix(".jpg")
        assert thumbnail.is_file(), f"{thumbnail} (thumbnail) is missing"
        wf = load_in_editor(page, server, name)
        assert wf == load_workflow(name)
        unknown = sorted({n["type"] for n in wf["nodes"]} - set(object_info) - FRONTEND_ONLY)  # Notes: editor only
        assert not unknown, f"{name}: node types not registered: {unknown}"
        editor = page.evaluate("async () => (await window.comfyAPI.app.app.graphToPrompt()).output")
        ours = editor_to_api(wf, object_info)
        assert strip(ours, object_info) == strip(editor, object_info), \
            f"{name}: editor_to_api differs from the editor's graphToPrompt"
        # the chart and preview widgets are not inputs: they must not reach the prompt
        for node in editor.values():
            assert not {"loss_chart", "preview_grid", "search_trials"} & set(node["inputs"])


# The public files each template's loaders select (what the test server lacks), as the frontend's Missing Models
# dialog labels them: "<models folder> / <file>". The user's own adapter (my_adapter) has no link: never listed.
SD15_FILES = ["checkpoints / v1-5-pruned-emaonly-fp16.safetensors",
              "clip_vision / CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"]
MISSING = {"train_ip_adapter": SD15_FILES, "train_ip_adapter_cpu": SD15_FILES, "train_then_apply": SD15_FILES,
           "apply_ip_adapter": SD15_FILES, "score": SD15_FILES + ["clip_scorers / clip-vit-large-patch14.safetensors"],
           "train_ip_adapter_sdxl": ["checkpoints / sd_xl_base_1.0.safetensors", SD15_FILES[1]],
           "search_ip_adapter": SD15_FILES}


@PHASES("missing models dialog")
def missing_models_dialog(page, expected: int) -> list[str]:
    """The entries of the frontend's Missing Models dialog once it shows `expected` of them, then closes it."""
    page.wait_for_selector(".comfy-missing-models", timeout=30_000)
    when(page, "(n) => document.querySelectorAll('.comfy-missing-models li').length >= n", expected)
    entries = page.evaluate("""() => [...document.querySelectorAll('.comfy-missing-models li')]
                                      .map((li) => li.innerText.trim())""")
    page.keyboard.press("Escape")
    page.wait_for_selector(".comfy-missing-models", state="detached", timeout=10_000)
    return entries


def test_opening_a_template_lists_its_missing_model_files_with_download_links(server, page):
    setting = "Comfy.Workflow.ShowMissingModelsWarning"  # on by default; the other browser tests turn it off
    page.evaluate("(id) => window.comfyAPI.app.app.extensionManager.setting.set(id, true)", setting)
    try:
        check_missing_models_dialog(server, page)
    finally:
        page.evaluate("(id) => window.comfyAPI.app.app.extensionManager.setting.set(id, false)", setting)


def check_missing_models_dialog(server, page) -> None:
    # first as a user does it: Templates, the pack's category, the first card (training comes first by name)
    page.evaluate("() => window.comfyAPI.app.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    page.get_by_text(bs.PACK_DIR_NAME, exact=True).first.click()
    card = page.locator(f'[data-testid="template-workflow-{SHIPPED_FILES["train_ip_adapter"]}"]')
    card.wait_for(timeout=30_000)
    titles = "() => [...document.querySelectorAll('[data-testid^=\"template-workflow-\"] h3')].map((h) => h.textContent.trim())"
    # the default sort ("Newest") finds no dates on a custom node's templates and keeps the server's directory
    # order, which no name decides on most file systems; sorted by name, the numbers put training first
    assert sorted(page.evaluate(titles)) == sorted(SHIPPED_FILES.values())
    page.locator('[role="combobox"]', has_text="Newest").last.click()
    page.get_by_role("option", name="A → Z").click()  # the "alphabetical" sort
    by_name = [SHIPPED_FILES[key] for key in SHIPPED]
    when(page, f"(want) => JSON.stringify(({titles})()) === JSON.stringify(want)", by_name)
    assert page.evaluate(titles) == by_name, page.evaluate(titles)
    shot(page, "template_browser.png")
    card.click()
    page.wait_for_selector(".comfy-missing-models", timeout=30_000)
    shot(page, "missing_models.png")
    entries = missing_models_dialog(page, len(MISSING["train_ip_adapter"]))
    assert [e.splitlines()[0] for e in entries] == MISSING["train_ip_adapter"], entries
    # the download links pass the frontend's rules (hosts, suffixes, a models folder it knows)
    assert not [e for e in entries if "not allowed" in e or "Only allowed" in e or "Invalid directory" in e], entries
    # then every template, the way load_in_editor opens them
    for name in SHIPPED:
        load_in_editor(page, server, name, missing_models_dialog=True)
        entries = missing_models_dialog(page, len(MISSING[name]))
        assert [e.splitlines()[0] for e in entries] == MISSING[name], (name, entries)
        assert not any("my_adapter" in e for e in entries), (name, entries)


# Every change of the chart's state, recorded in the page (a phase can pass between two polls).
RECORD_CHART = """() => {
    window.__iptLog = [];
    if (window.__iptSteps === undefined) {  // the run's step events this page received
        window.__iptSteps = 0;
        window.comfyAPI.api.api.addEventListener('ipadapter_train.progress', () => { window.__iptSteps += 1; });
    }
    const record = (el) => {
        const d = el.dataset;
        const entry = {promptId: d.promptId, phase: d.phase, step: d.step, total: d.total, state: d.state,
                       points: d.points, text: el.querySelector('.ipadapter-train-status')?.textContent ?? ''};
        const last = window.__iptLog[window.__iptLog.length - 1];
        const {t, ...previous} = last ?? {};
        if (!last || JSON.stringify(previous) !== JSON.stringify(entry))
            window.__iptLog.push({...entry, t: performance.now() / 1000});
    };
    new MutationObserver((changes) => {
        for (const c of changes) if (c.target.classList?.contains('ipadapter-train-chart')) record(c.target);
    }).observe(document.body, {subtree: true, attributes: true,
                               attributeFilter: ['data-phase', 'data-step', 'data-state', 'data-prompt-id']});
}"""


def chart_log(page, prompt_id: str) -> list[dict]:
    return [e for e in page.evaluate("() => window.__iptLog") if e["promptId"] == prompt_id]


def time_run_phases(run: str, queued: float, log: list[dict]) -> None:
    """Seconds of each phase of a run as the chart showed them (`queued`: the page's clock at Run)."""
    if not log:
        return
    PHASES.add(f"{run}: Run -> first chart change", log[0]["t"] - queued)
    for entry, following in zip(log, log[1:]):
        PHASES.add(f"{run}: {entry['phase']}", following["t"] - entry["t"])


def page_clock(page) -> float:
    return page.evaluate("() => performance.now() / 1000")


def train_node_id(page) -> str:
    return page.evaluate("() => String(window.comfyAPI.app.app.graph._nodes"
                         ".find((n) => n.type === 'IPAdapterTrain_Train').id)")


def queue_with_run_button(page) -> str:
    with page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST") as resp:
        page.locator('[data-testid="queue-button"]').get_by_role("button").first.click()
    body = resp.value.json()
    assert "prompt_id" in body, body
    return body["prompt_id"]


def training_widgets(steps: int, validation: str, save_name: str, preview_every: int = 0,
                     folder: str = TRAIN_FOLDER) -> dict[str, dict]:
    return {
        "CheckpointLoaderSimple": {"ckpt_name": bs.CHECKPOINT},
        "CLIPVisionLoader": {"clip_name": bs.CLIP_VISION},
        "IPAdapterTrain_LoadTrainingImages": {"folder": folder},
        "IPAdapterTrain_Train": {"steps": steps, "resolution": 64, "batch_size": 1, "validation": validation,
                                 "preview_every": preview_every},
        "IPAdapterTrain_Save": {"name": save_name},
    }


def assert_blank(state: dict | None, what: str) -> None:
    assert state and state["state"] == "idle" and state["points"] == "0" and state["promptId"] == "", (what, state)


def test_loss_chart_follows_its_own_run_through_phases_reload_and_other_workflows(server, page):
    load_in_editor(page, server, "train_ip_adapter")
    # many steps so that the run is still going after the reload; it is cancelled at the end. One photo and no
    # previews: this run shows steps; the short run below shows the previews and the validation
    set_widgets(page, training_widgets(5000, "off", "browser_test", preview_every=-1, folder=ONE_PHOTO))
    before = chart_state(page)
    assert before and before["state"] == "idle", before
    train_id = train_node_id(page)
    page.evaluate(RECORD_CHART)
    queued = page_clock(page)
    prompt_id = queue_with_run_button(page)
    runs_url = lambda r: r.url == server.url + "/api/ipadapter_train/runs"  # noqa: E731 - via api.fetchApi

    def listed() -> dict:
        return next(r for r in server.get("/ipadapter_train/runs")["runs"] if r["prompt_id"] == prompt_id)

    try:
        live = wait_chart(page, lambda s: int(s["step"]) >= 2 and s["state"] == "running", 300,
                          "show training steps")
        assert live["nodeId"] == train_id and live["promptId"] == prompt_id
        assert live["text"].startswith("step ") and "/5000" in live["text"] and "ETA" in live["text"], live
        assert int(live["points"]) >= 2
        log = chart_log(page, prompt_id)
        time_run_phases("long run", queued, log)
        # the run starts by encoding the images, with the chart saying so
        assert log[0]["phase"] == "encoding" and log[0]["text"].startswith("encoding images"), log[:3]
        # no ETA figure before a step was measured: not while encoding (the short run checks it with previews on)
        assert all(not re.search(r"ETA \d", e["text"]) for e in log if e["phase"] == "encoding"), log
        focus_train_node(page)
        shot(page, "loss_chart_live.png")

        # another workflow whose Train node has the same id shows nothing of this run, after a step of it arrived
        load_in_editor(page, server, "train_then_apply")
        assert train_node_id(page) == train_id
        steps_seen = page.evaluate("() => window.__iptSteps")
        with PHASES("wait: a step event on the other workflow"):
            page.wait_for_function("(n) => window.__iptSteps > n", arg=steps_seen, timeout=60_000)
        next_frames(page)  # the chart redraws on the next frame
        assert_blank(chart_state(page), "another workflow")
        assert not listed()["done"]
        focus_train_node(page)
        shot(page, "loss_chart_other_workflow.png")

        # the same workflow opened in another tab (or browser) shows the run too, and follows it
        other = page.context.browser.new_page()  # its own session storage and client id, as a new tab has
        try:
            bs.open_comfy(other, server)
            load_in_editor(other, server, "train_ip_adapter")
            seen = wait_chart(other, lambda s: s["promptId"] == prompt_id and s["state"] == "running"
                              and int(s["points"]) >= int(live["step"]), 60, "show the run in another tab")
            assert seen["nodeId"] == train_id
            wait_chart(other, lambda s: int(s["step"]) > int(seen["step"]), 120, "follow the run in another tab")
            assert not listed()["done"]
        finally:
            other.close()

        # back on its own workflow, the chart shows the run again
        load_in_editor(page, server, "train_ip_adapter")
        wait_chart(page, lambda s: s["promptId"] == prompt_id and int(s["points"]) >= int(live["step"]), 30,
                   "show its run again on its own workflow")

        with page.expect_request(runs_url, timeout=90_000):
            with PHASES("page reload (goto)"):
                page.reload(wait_until="domcontentloaded")
            bs.open_comfy(page, server)
        # the restored workflow has the same node; its chart is redrawn from /ipadapter_train/runs,
        # including the steps that ran while the page was away
        after = wait_chart(page, lambda s: int(s["points"]) >= int(live["step"]), 60, "come back after the reload")
        assert after["nodeId"] == train_id and after["promptId"] == prompt_id
        assert after["state"] == "running", f"the run ended before the reload check: {after}"
        # and it keeps following the events
        later = wait_chart(page, lambda s: int(s["step"]) > int(after["step"]), 120, "keep following after the reload")
        assert later["visible"]
        # a dropped websocket: the page reconnects and asks for the runs again
        with page.expect_request(runs_url, timeout=30_000):
            page.evaluate("() => window.comfyAPI.api.api.socket.close()")
        wait_chart(page, lambda s: s["state"] == "running" and int(s["points"]) >= int(later["step"]), 30,
                   "stay whole after a reconnect")
        focus_train_node(page)
        shot(page, "loss_chart_after_reload.png")
    finally:
        server.interrupt()

    # "cancelled" when the node returns the adapter trained so far (its done event says so); "stopped"
    # when the run ended short of its steps otherwise: either way it no longer claims to run
    done = wait_chart(page, lambda s: s["state"] in ("cancelled", "stopped"), 180, "show the cancelled run")
    assert int(done["step"]) < 5000 and "ETA" not in done["text"], done
    shot(page, "loss_chart_cancelled.png")
    wait_queue_empty(server)

    # a short run with previews (after each of its 2 steps: auto would plan none, over the budget) and validation:
    # the chart is cleared when it starts encoding and names each phase
    set_widgets(page, training_widgets(2, "quick", "browser_test_validated", preview_every=1))
    page.evaluate(RECORD_CHART)
    queued = page_clock(page)
    second = queue_with_run_button(page)
    end = wait_chart(page, lambda s: s["promptId"] == second and s["state"] in ("done", "stopped"), 300,
                     "finish the short run")
    assert end["state"] == "done" and end["total"] == "2" and end["text"].endswith("done"), end
    focus_train_node(page)
    shot(page, "loss_chart_done.png")
    log = chart_log(page, second)
    time_run_phases("short run", queued, log)
    assert log[0]["phase"] == "encoding" and log[0]["points"] == "0", log[:3]  # the cancelled run's curve is gone
    phases = [e["phase"] for e in log]
    changes = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
    assert changes[0] == "encoding" and changes[-2:] == ["validating", "done"], log
    assert set(changes) == {"encoding", "training", "previewing", "validating", "done"}, log
    assert any(re.search(r"validating \d+/4 \(conditioning gain\)", e["text"]) for e in log), log  # 2 images x 2
    # previews on: the core's measured first step and the planned rounds give an ETA from step 1, never while encoding
    assert all(not re.search(r"ETA \d", e["text"]) for e in log if e["phase"] == "encoding"), log
    assert any(re.search(r"previewing \d+/\d+ \(after step [12]\)", e["text"]) for e in log), log

    # the latest preview grid, under the chart, loaded through /view
    grid = wait_preview(page, lambda s: s["promptId"] == second and s["step"] == "2" and s["loaded"] == "1", 60,
                        "show the run's last grid")
    assert grid["count"] == "2" and grid["shown"] and grid["width"] > 0, grid
    assert grid["text"].startswith("preview after step 2") and "/view?" in grid["src"], grid
    assert "type=output" in grid["src"] and "previews" in grid["src"], grid
    shot(page, "preview_grid_done.png")

    # and again after a reload, from GET /ipadapter_train/runs
    with PHASES("page reload (goto)"):
        page.reload(wait_until="domcontentloaded")
    bs.open_comfy(page, server)
    again = wait_preview(page, lambda s: s["promptId"] == second and s["loaded"] == "1", 60,
                         "come back after the reload")
    assert (again["step"], again["src"], again["count"]) == (grid["step"], grid["src"], grid["count"]), again
    focus_train_node(page)
    shot(page, "preview_grid_after_reload.png")
    (ARTIFACTS / "loss_chart_states.json").write_text(json.dumps(
        {"live": live, "after_reload": after, "later": later, "cancelled": done, "short_run": log,
         "preview_grid": grid, "preview_grid_after_reload": again}, indent=2))
    wait_queue_empty(server)


@PHASES("wait: queue empty")
def wait_queue_empty(server, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while server.get("/queue")["queue_running"] and time.monotonic() < deadline:
        time.sleep(0.5)


def test_a_refused_save_name_stops_the_whole_run_and_the_error_dialog_says_why(server, page):
    """Issue 17 item 1: with the Save name taken, Run used to outline Save in red and train anyway (the template's
    "Training report" output is valid on its own). Now the whole prompt is refused and ComfyUI's error dialog
    shows the sentence."""
    from ipadapter_train.adapter.module import IPAdapter
    from ipadapter_train.adapter.fileformat import save_adapter
    from ipadapter_train.layout import adapter_layers
    from ipadapter_train.models.sd15 import tiny_unet_config

    taken = server.base / "models" / "ipadapter" / "ipt_taken.safetensors"
    taken.parent.mkdir(parents=True, exist_ok=True)
    if not taken.exists():
        save_adapter(IPAdapter.new("base", 768, 768, adapter_layers(tiny_unet_config())).state_dict(), taken)
    load_in_editor(page, server, "train_ip_adapter")
    set_widgets(page, training_widgets(1, "off", "ipt_taken", preview_every=-1))
    runs, history = len(server.get("/ipadapter_train/runs")["runs"]), len(server.get("/history"))
    is_queueing = lambda r: r.url.endswith("/prompt") and r.method == "POST"  # noqa: E731
    posts: list = []
    count_posts = lambda r: posts.append(r) if is_queueing(r) else None  # noqa: E731
    page.on("request", count_posts)
    try:
        with page.expect_response(lambda r: is_queueing(r.request)) as resp:
            page.locator('[data-testid="queue-button"]').get_by_role("button").first.click()
        assert resp.value.status == 400, resp.value.text()
        sentence = "ipt_taken.safetensors already exists"
        page.get_by_text(sentence, exact=False).first.wait_for(timeout=20_000)  # in the error dialog
    finally:
        page.remove_listener("request", count_posts)
    shot(page, "refused_save_dialog.png")
    # ComfyUI queues a prompt before it answers /prompt, and Run posted once: nothing is queued, ran or is running
    assert len(posts) == 1, [r.url for r in posts]
    queue = server.get("/queue")
    assert not queue["queue_running"] and not queue["queue_pending"]
    assert len(server.get("/history")) == history
    assert len(server.get("/ipadapter_train/runs")["runs"]) == runs  # Train never ran


TRIALS = ".ipadapter-train-trials"


def test_the_search_node_shows_its_running_trial_and_its_table_of_trials(server, page):
    load_in_editor(page, server, "search_ip_adapter")
    state = page.evaluate(f"""() => {{
        const app = window.comfyAPI.app.app, api = window.comfyAPI.api.api;
        const node = app.graph._nodes.find((n) => n.type === 'IPAdapterTrain_Search');
        const ids = {{node: String(node.id), prompt_id: 'search-p1', workflow_id: String(app.rootGraph.id),
                      client_id: null, started: Date.now() / 1000}};
        const send = (type, detail) => api.dispatchEvent(new CustomEvent(type, {{detail}}));
        const trial = {{number: 1, index: 2, trials: 2}};
        send('ipadapter_train.search', {{...ids, trials: 2, objective: 'held-out validation loss', done: false,
            folder: 'ipadapter_train/search-x', note: null, best: {{number: 0, value: 1.2, text: '1.2000'}},
            rows: [{{number: 0, state: 'finished', value: 1.2, best: true,
                     text: 'trial 1/2: lr 1.0e-04, steps 2, base -> 1.2000'}},
                   {{number: null, state: 'running', value: null, best: false,
                     text: 'trial 2/2: lr 3.0e-04, steps 2, base -> running'}}]}});
        send('ipadapter_train.phase', {{...ids, trial, phase: 'encoding', done: 0, total: 2, eta_seconds: null}});
        send('ipadapter_train.progress', {{...ids, trial, step: 1, total: 2, loss: 0.5, eta_seconds: 3}});
        return new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(() => done({{
            status: document.querySelector('{CHART} .ipadapter-train-status')?.textContent ?? '',
            trials: document.querySelector('{TRIALS}')?.textContent ?? '',
            rows: document.querySelector('{TRIALS}')?.dataset.rows,
        }}))));
    }}""")
    assert state["status"].startswith("trial 2/2: step 1/2, loss 0.5000"), state
    lines = state["trials"].split("\n")
    assert state["rows"] == "2" and lines[0] == "search by the held-out validation loss, best trial 0 (1.2000)", lines
    assert lines[1:] == ["★ trial 1/2: lr 1.0e-04, steps 2, base -> 1.2000",
                         "trial 2/2: lr 3.0e-04, steps 2, base -> running"], lines
    shot(page, "search_node.png")
