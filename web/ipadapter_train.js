// Live loss chart for the "Train IP-Adapter" node (IPAdapterTrain_Train).
//
// The Train node sends `ipadapter_train.phase` (encoding, training, validating), `ipadapter_train.progress`
// after every step and `ipadapter_train.done` at the end (PromptServer.send_sync to every page; see
// nodes/CONTRACT.md). This module listens once, in setup(), keeps one record per run (prompt id + node
// id), and draws the raw loss, a moving average, the phase and "step X/Y, ETA" in a chart widget on the
// node. A run is drawn on the workflow it was queued from: every event carries the id of the editor
// workflow, so another workflow whose Train node has the same node id stays blank, while the same workflow
// open in another tab or browser shows the run too (the events go to every page). A page opened or
// reloaded mid-run asks `GET /ipadapter_train/runs` (through api.fetchApi, so no host is hard-coded) for
// what it missed, on setup and again on every websocket reconnect.
// Under the chart, the run's latest preview grid (`ipadapter_train.preview` after every preview round, and the
// runs route's `previews` list after a reload), loaded through ComfyUI's /view; same runs, same filters.
// The chart and the grid are extras: the node also returns the loss curve and the grids as IMAGEs and a text
// report.
// The "Search IP-Adapter Settings" node (IPAdapterTrain_Search) gets the same chart and grid, showing its running
// trial (a search's trials are runs whose events carry `trial`), and under them its table of trials
// (`ipadapter_train.search`, search_trials.js).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { drawChart, runState, statusText } from "./loss_chart.js";
import { addPreview, makePreviewView, PREVIEW_HEIGHT, previewEntry, viewRoute } from "./preview_grid.js";
import { makeTrialsView, searchEntry, trialPrefix, TRIALS_HEIGHT } from "./search_trials.js";

const NODE_CLASS = "IPAdapterTrain_Train";
const SEARCH_CLASS = "IPAdapterTrain_Search";
const EVT_PHASE = "ipadapter_train.phase";
const EVT_PROGRESS = "ipadapter_train.progress";
const EVT_DONE = "ipadapter_train.done";
const EVT_PREVIEW = "ipadapter_train.preview";
const EVT_SEARCH = "ipadapter_train.search";
const RUNS_ROUTE = "/ipadapter_train/runs";
const WIDGET_NAME = "loss_chart";
const PREVIEW_WIDGET_NAME = "preview_grid";
const TRIALS_WIDGET_NAME = "search_trials";
const CHART_HEIGHT = 150;

/** "<prompt id>|<node execution id>" -> {node, promptId, workflowId, clientId, started, phase, phaseDone, phaseTotal,
 * step, total, losses: (number|undefined)[] by step-1, eta, done, cancelled, failed, stopped,
 * previews: [{step, filename, subfolder, type, score?, grade?, bestStep?, randomWeights?}] in step order} */
const runs = new Map();
/** "<prompt id>|<node execution id>" -> a search node's table of trials (search_trials.js searchEntry) */
const searches = new Map();
/** the chart controllers of the Train nodes this page created */
const charts = new Set();

// ---------------------------------------------------------------------------------------------- state

function runFor(d) {
    const node = String(d.node);
    const promptId = String(d.prompt_id ?? "");
    // a search's trials share the prompt and the node: each is a run of its own
    const trial = d.trial && d.trial.index != null ? Number(d.trial.index) : null;
    const key = trial == null ? `${promptId}|${node}` : `${promptId}|${node}|${trial}`;
    let run = runs.get(key);
    if (!run) {
        run = {
            node, promptId, workflowId: null, clientId: null, started: 0, phase: "encoding", phaseDone: 0, phaseTotal: 0,
            step: 0, total: 0, losses: [], eta: null, done: false, cancelled: false, failed: false, stopped: "",
            previews: [], previewStep: null, key,
            trial: trial == null ? null : { index: trial, trials: Number(d.trial.trials) || 0 },
        };
        runs.set(key, run);
    }
    if (d.workflow_id != null) run.workflowId = String(d.workflow_id);
    if (d.client_id != null) run.clientId = String(d.client_id);
    if (d.started != null) run.started = Number(d.started) || run.started;
    return run;
}

const eta = (v) => (v == null ? null : Number(v));

function onPhase(event) {
    const d = event.detail || {};
    if (d.node == null) return;
    const run = runFor(d);
    if (run.done) return; // a late event of a run that has ended
    run.phase = String(d.phase);
    run.phaseDone = Number(d.done) || 0;
    run.phaseTotal = Number(d.total) || 0;
    if (run.phase === "training" && run.phaseTotal) run.total = run.phaseTotal;
    run.previewStep = run.phase === "previewing" ? Number(d.step) || 0 : null;
    run.eta = eta(d.eta_seconds);
    redraw();
}

function onPreview(event) {
    const d = event.detail || {};
    if (d.node == null) return;
    addPreview(runFor(d), previewEntry(d));
    redraw();
}

function onProgress(event) {
    const d = event.detail || {};
    if (d.node == null) return;
    const run = runFor(d);
    const step = Number(d.step) || 0;
    if (step >= 1) run.losses[step - 1] = Number(d.loss);
    if (d.total) run.total = Number(d.total);
    if (step >= run.step) {
        run.step = step;
        run.phase = "training";
        run.phaseDone = step;
        run.phaseTotal = run.total;
        run.eta = eta(d.eta_seconds);
    }
    redraw();
}

function onSearch(event) {
    const d = event.detail || {};
    if (d.node == null) return;
    mergeSearch(d);
    redraw();
}

function mergeSearch(d) {
    const entry = searchEntry(d);
    const known = searches.get(`${entry.promptId}|${entry.node}`);
    if (known?.done && !entry.done) return; // a late record of a search that has ended
    searches.set(`${entry.promptId}|${entry.node}`, entry);
}

function onDone(event) {
    const d = event.detail || {};
    if (d.node == null) return;
    const run = runFor(d);
    if (d.total) run.total = Number(d.total);
    run.step = Math.max(run.step, Number(d.steps) || 0);
    run.phase = "done";
    run.done = true;
    run.cancelled = !!d.cancelled;
    run.failed = !!d.failed;
    if (d.note) run.note = String(d.note);
    if (run.failed) run.stopped = "error";
    run.eta = null;
    redraw();
}

// A run that ends without a `done` event, or short of its steps without being cancelled (an error or
// an interrupt that escaped the node), must say so rather than keep claiming to run or to be done.
// ComfyUI sends these two events only to the page that queued the prompt.
function onPromptEnded(event, why) {
    const promptId = event.detail?.prompt_id;
    for (const run of runs.values()) {
        if (promptId && run.promptId !== String(promptId)) continue;
        if (!run.done || (!run.cancelled && run.total && run.step < run.total)) {
            run.done = true;
            run.phase = "done";
            run.stopped = why;
            run.eta = null;
        }
    }
    redraw();
}

/** Merge the server's record of its runs: the losses are aligned so that the last one is `step`. */
function mergeServerRuns(serverRuns) {
    const list = Array.isArray(serverRuns) ? serverRuns : [];
    const listed = new Set();
    for (const r of list) {
        if (r?.node == null) continue;
        const run = runFor(r);
        listed.add(run.key);
        if (r.search) mergeSearch(r.search);
        if (r.total) run.total = Number(r.total);
        for (const p of Array.isArray(r.previews) ? r.previews : []) addPreview(run, previewEntry(p));
        const losses = Array.isArray(r.losses) ? r.losses : [];
        const step = Number(r.step) || losses.length;
        const offset = step - losses.length;
        losses.forEach((loss, i) => {
            if (offset + i >= 0 && run.losses[offset + i] === undefined) run.losses[offset + i] = Number(loss);
        });
        // the server's record is newer unless this page already saw a later step or the end
        if (!run.done && step >= run.step) {
            run.step = step;
            run.phase = String(r.phase ?? run.phase);
            run.phaseDone = Number(r.phase_done) || 0;
            run.phaseTotal = Number(r.phase_total) || 0;
            run.eta = eta(r.eta_seconds);
        }
        if (r.done) {
            run.done = true;
            run.phase = "done";
            run.eta = null;
            if (r.cancelled) run.cancelled = true;
            if (r.note) run.note = String(r.note);
            if (r.failed) {
                run.failed = true;
                run.stopped = "error";
            }
        }
    }
    // Runs this page followed that the server no longer knows (it restarted) are over.
    for (const [key, run] of runs) {
        if (!run.done && !listed.has(key)) {
            run.done = true;
            run.phase = "done";
            run.stopped = "server restarted";
            run.eta = null;
        }
    }
    redraw();
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

function rootGraph() {
    return app.rootGraph ?? app.graph;
}

/** The graph node of an execution id: "12" at the root, "12:5" for node 5 inside subgraph node 12. */
function findNode(executionId) {
    let graph = rootGraph();
    let node = null;
    const parts = String(executionId).split(":");
    for (let i = 0; i < parts.length; i++) {
        node = graph?.getNodeById?.(parts[i]) ?? null;
        if (!node) return null;
        if (i < parts.length - 1) graph = node.subgraph;
    }
    return node;
}

/** The run a Train node shows: the latest one queued from the open workflow whose node id resolves to
 * this very node, from this tab or any other tab or browser that has the same workflow open (a user who
 * opens the workflow elsewhere expects to see its run). Runs of other workflows (which often use the same
 * node ids) are never drawn. */
function runOf(node) {
    const workflowId = rootGraph()?.id;
    if (!workflowId) return undefined;
    let best;
    for (const run of runs.values()) {
        if (run.workflowId !== String(workflowId)) continue;
        if (findNode(run.node) !== node) continue;
        if (!best || run.started > best.started || (run.started === best.started && !run.done)) best = run;
    }
    return best;
}

/** The table of trials a Search node shows: that of the search its shown run belongs to. */
function searchOf(node) {
    const run = runOf(node);
    return run ? searches.get(`${run.promptId}|${run.node}`) : undefined;
}

let frame = 0;

function redraw() {
    if (!frame) frame = requestAnimationFrame(flush);
}

function flush() {
    frame = 0;
    for (const chart of charts) chart.draw();
    app.graph?.setDirtyCanvas?.(true, false);
}

// ---------------------------------------------------------------------------------------------- widget

function addChart(node, search = false) {
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
    // the latest preview grid, in its own widget under the chart
    const preview = makePreviewView((entry) => api.apiURL(viewRoute(entry)));
    const trials = search ? makeTrialsView() : null; // a Search node's table of trials, under the grid

    const chart = {
        draw() {
            const run = runOf(node);
            preview.root.dataset.nodeId = run?.node ?? String(node.id);
            preview.update(run);
            if (trials) {
                trials.root.dataset.nodeId = run?.node ?? String(node.id);
                trials.update(searchOf(node));
            }
            const text = (search ? trialPrefix(run) : "") + statusText(run);
            if (status.textContent !== text) status.textContent = text;
            root.dataset.nodeId = run?.node ?? String(node.id);
            root.dataset.promptId = run?.promptId ?? "";
            root.dataset.phase = run?.phase ?? "";
            root.dataset.step = String(run?.step ?? 0);
            root.dataset.total = String(run?.total ?? 0);
            root.dataset.points = String(run ? run.losses.filter(Number.isFinite).length : 0);
            root.dataset.state = runState(run);
            drawChart(canvas, run);
        },
    };
    charts.add(chart);
    const removed = node.onRemoved;
    node.onRemoved = function () {
        charts.delete(chart);
        return removed?.apply(this, arguments);
    };

    const widget = node.addDOMWidget(WIDGET_NAME, "ipadapter_train_chart", root, {
        serialize: false, // not an input: never in widgets_values nor in the prompt
        hideOnZoom: false,
        getMinHeight: () => CHART_HEIGHT,
        getValue: () => "",
        setValue: () => {},
    });
    widget.serialize = false;
    new ResizeObserver(() => chart.draw()).observe(canvas);
    const previewWidget = node.addDOMWidget(PREVIEW_WIDGET_NAME, "ipadapter_train_preview", preview.root, {
        serialize: false,
        hideOnZoom: false,
        getMinHeight: () => PREVIEW_HEIGHT,
        getValue: () => "",
        setValue: () => {},
    });
    previewWidget.serialize = false;
    if (trials) {
        const trialsWidget = node.addDOMWidget(TRIALS_WIDGET_NAME, "ipadapter_train_trials", trials.root, {
            serialize: false,
            hideOnZoom: false,
            getMinHeight: () => TRIALS_HEIGHT,
            getValue: () => "",
            setValue: () => {},
        });
        trialsWidget.serialize = false;
    }
    const size = node.computeSize();
    node.setSize([Math.max(node.size[0], 320, size[0]), Math.max(node.size[1], size[1])]);
    requestAnimationFrame(() => chart.draw());
}

// ---------------------------------------------------------------------------------------------- extension

app.registerExtension({
    name: "ipadapter_train.loss_chart",

    async setup() {
        api.addEventListener(EVT_PHASE, onPhase);
        api.addEventListener(EVT_PROGRESS, onProgress);
        api.addEventListener(EVT_DONE, onDone);
        api.addEventListener(EVT_PREVIEW, onPreview);
        api.addEventListener(EVT_SEARCH, onSearch);
        api.addEventListener("execution_error", (e) => onPromptEnded(e, "error"));
        api.addEventListener("execution_interrupted", (e) => onPromptEnded(e, "interrupted"));
        api.addEventListener("reconnected", fetchRuns);
        await fetchRuns();
    },

    nodeCreated(node) {
        if (node.comfyClass === NODE_CLASS) addChart(node);
        else if (node.comfyClass === SEARCH_CLASS) addChart(node, true);
    },

    // Ids (of the nodes and of the workflow) are final only after a workflow is loaded, and switching
    // workflow tabs loads another graph: draw every chart again from the runs known by then.
    afterConfigureGraph() {
        redraw();
    },
});
