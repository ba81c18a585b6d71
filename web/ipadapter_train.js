// Live loss chart for the "Train IP-Adapter" node (IPAdapterTrain_Train).
//
// The Train node sends `ipadapter_train.progress` after every step and `ipadapter_train.done` at the end
// (PromptServer.send_sync, node id in the payload). This module listens once, in setup(), keeps one run
// state per node id, and draws the raw loss, a moving average and "step X/Y, ETA" in a chart widget on
// the node. A page opened or reloaded mid-run asks `GET /ipadapter_train/runs` (through api.fetchApi,
// so no host is hard-coded) for what it missed, on setup and again on every websocket reconnect.
// The chart is an extra: the node also returns the loss curve as an IMAGE and a text report.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { drawChart, runState, statusText } from "./loss_chart.js";

const NODE_CLASS = "IPAdapterTrain_Train";
const EVT_PROGRESS = "ipadapter_train.progress";
const EVT_DONE = "ipadapter_train.done";
const RUNS_ROUTE = "/ipadapter_train/runs";
const WIDGET_NAME = "loss_chart";
const CHART_HEIGHT = 150;

/** node execution id (string) -> {promptId, step, total, losses: (number|undefined)[] by step-1, eta, done, cancelled, stopped} */
const runs = new Map();
/** graph node -> its chart controller */
const charts = new WeakMap();

// ---------------------------------------------------------------------------------------------- state

function newRun(promptId, total) {
    return { promptId, step: 0, total: total || 0, losses: [], eta: null, done: false, cancelled: false, stopped: "" };
}

function runFor(nodeId, promptId, total) {
    let run = runs.get(nodeId);
    if (!run || (promptId && run.promptId !== promptId)) {
        run = newRun(promptId, total);
        runs.set(nodeId, run);
    }
    if (total) run.total = total;
    return run;
}

function onProgress(event) {
    const d = event.detail || {};
    if (d.node == null) return;
    const id = String(d.node);
    const run = runFor(id, d.prompt_id, d.total);
    const step = Number(d.step) || 0;
    if (step >= 1) run.losses[step - 1] = Number(d.loss);
    run.step = Math.max(run.step, step);
    run.eta = d.eta_seconds == null ? null : Number(d.eta_seconds);
    run.done = false;
    run.stopped = "";
    redraw(id);
}

function onDone(event) {
    const d = event.detail || {};
    if (d.node == null) return;
    const id = String(d.node);
    const run = runFor(id, d.prompt_id, d.total);
    run.step = Math.max(run.step, Number(d.steps) || 0);
    run.done = true;
    run.cancelled = !!d.cancelled;
    run.eta = null;
    redraw(id);
}

// A run that ends without a `done` event, or short of its steps without being cancelled (an error or
// an interrupt that escaped the node), must say so rather than keep claiming to run or to be done.
function onPromptEnded(event, why) {
    const promptId = event.detail?.prompt_id;
    for (const [id, run] of runs) {
        if (promptId && run.promptId !== promptId) continue;
        if (!run.done || (!run.cancelled && run.total && run.step < run.total)) {
            run.done = true;
            run.stopped = why;
            run.eta = null;
            redraw(id);
        }
    }
}

/** Merge the server's record of its runs: the losses are aligned so that the last one is `step`. */
function mergeServerRuns(serverRuns) {
    for (const [id, r] of Object.entries(serverRuns || {})) {
        const key = String(id);
        const run = runFor(key, r.prompt_id, r.total);
        const losses = Array.isArray(r.losses) ? r.losses : [];
        const step = Number(r.step) || losses.length;
        const offset = step - losses.length;
        losses.forEach((loss, i) => {
            if (offset + i >= 0 && run.losses[offset + i] === undefined) run.losses[offset + i] = Number(loss);
        });
        if (step >= run.step) {
            run.step = step;
            run.eta = r.eta_seconds == null ? null : Number(r.eta_seconds);
        }
        if (r.done) {
            run.done = true;
            run.eta = null;
            if (r.cancelled) run.cancelled = true;
        }
    }
    // Runs this page followed that the server no longer knows (it restarted) are over.
    for (const [id, run] of runs) {
        if (!run.done && !(id in (serverRuns || {}))) {
            run.done = true;
            run.stopped = "server restarted";
        }
    }
    redrawAll();
}

async function fetchRuns() {
    try {
        const res = await api.fetchApi(RUNS_ROUTE, { cache: "no-store" });
        if (!res.ok) return;
        const body = await res.json();
        mergeServerRuns(body.runs);
    } catch (err) {
        console.warn("[ipadapter_train] could not fetch", RUNS_ROUTE, err);
    }
}

// ---------------------------------------------------------------------------------------------- routing

/** The graph node of an execution id: "12" at the root, "12:5" for node 5 inside subgraph node 12. */
function findNode(executionId) {
    let graph = app.rootGraph ?? app.graph;
    let node = null;
    const parts = String(executionId).split(":");
    for (let i = 0; i < parts.length; i++) {
        node = graph?.getNodeById?.(parts[i]) ?? null;
        if (!node) return null;
        if (i < parts.length - 1) graph = node.subgraph;
    }
    return node;
}

/** The execution id a node's chart reads: its own id at the root; inside a subgraph, the run's id
 * ("12:5") that resolves to this very node. */
function executionIdOf(node) {
    const own = String(node.id);
    const root = app.rootGraph ?? app.graph;
    if (!node.graph || node.graph === root) return own;
    for (const key of runs.keys()) if (key.includes(":") && findNode(key) === node) return key;
    return own;
}

let frame = 0;
const dirty = new Set();

function redraw(id) {
    dirty.add(id);
    if (!frame) frame = requestAnimationFrame(flush);
}

function redrawAll() {
    for (const id of runs.keys()) dirty.add(id);
    dirty.add("*");
    if (!frame) frame = requestAnimationFrame(flush);
}

function flush() {
    frame = 0;
    const all = dirty.has("*");
    const ids = [...dirty].filter((id) => id !== "*");
    dirty.clear();
    const nodes = new Set(ids.map(findNode).filter(Boolean));
    if (all) {
        const graph = app.canvas?.graph ?? app.graph;
        for (const n of graph?.nodes ?? graph?._nodes ?? []) if (charts.has(n)) nodes.add(n);
    }
    for (const node of nodes) charts.get(node)?.draw();
    app.graph?.setDirtyCanvas?.(true, false);
}

// ---------------------------------------------------------------------------------------------- widget

function addChart(node) {
    const root = document.createElement("div");
    root.className = "ipadapter-train-chart";
    root.style.cssText = "display:flex;flex-direction:column;gap:2px;width:100%;height:100%;box-sizing:border-box;";
    const canvas = document.createElement("canvas");
    canvas.style.cssText = "flex:1 1 auto;min-height:0;width:100%;border-radius:4px;";
    const status = document.createElement("div");
    status.className = "ipadapter-train-status";
    status.style.cssText =
        "flex:0 0 auto;font:11px sans-serif;color:var(--input-text,#ddd);white-space:nowrap;overflow:hidden;text-overflow:ellipsis;";
    root.append(canvas, status);

    const chart = {
        draw() {
            const id = executionIdOf(node);
            const run = runs.get(id);
            const text = statusText(run);
            if (status.textContent !== text) status.textContent = text;
            root.dataset.nodeId = id;
            root.dataset.step = String(run?.step ?? 0);
            root.dataset.total = String(run?.total ?? 0);
            root.dataset.points = String(run ? run.losses.filter(Number.isFinite).length : 0);
            root.dataset.state = runState(run);
            drawChart(canvas, run);
        },
    };
    charts.set(node, chart);

    const widget = node.addDOMWidget(WIDGET_NAME, "ipadapter_train_chart", root, {
        serialize: false, // not an input: never in widgets_values nor in the prompt
        hideOnZoom: false,
        getMinHeight: () => CHART_HEIGHT,
        getValue: () => "",
        setValue: () => {},
    });
    widget.serialize = false;
    new ResizeObserver(() => chart.draw()).observe(canvas);
    const size = node.computeSize();
    node.setSize([Math.max(node.size[0], 320, size[0]), Math.max(node.size[1], size[1])]);
    requestAnimationFrame(() => chart.draw());
}

// ---------------------------------------------------------------------------------------------- extension

app.registerExtension({
    name: "ipadapter_train.loss_chart",

    async setup() {
        api.addEventListener(EVT_PROGRESS, onProgress);
        api.addEventListener(EVT_DONE, onDone);
        api.addEventListener("execution_error", (e) => onPromptEnded(e, "error"));
        api.addEventListener("execution_interrupted", (e) => onPromptEnded(e, "interrupted"));
        api.addEventListener("reconnected", fetchRuns);
        await fetchRuns();
    },

    nodeCreated(node) {
        if (node.comfyClass === NODE_CLASS) addChart(node);
    },

    // Ids are final only after a workflow is loaded: draw every chart from the runs known by then.
    afterConfigureGraph() {
        redrawAll();
    },
});
