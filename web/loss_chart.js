// Drawing for the "Train IP-Adapter" loss chart: the status line and the canvas chart (raw loss and a
// debiased moving average over an x axis of the run's steps, and the phase: encoding, training,
// previewing, validating). Pure functions of a run record {phase, phaseDone, phaseTotal, previewStep, step, total,
// losses, eta, done, cancelled, failed, stopped}; imported by ipadapter_train.js. ComfyUI also loads this file as an
// extension module, which is harmless: it registers nothing.

const SMOOTHING = 0.9; // exponential moving average weight, debiased (as TensorBoard's smoothing)

function formatDuration(seconds) {
    if (seconds == null || !Number.isFinite(seconds)) return "–";
    const s = Math.max(0, Math.round(seconds));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const pad = (v) => String(v).padStart(2, "0");
    return h ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}

function formatLoss(v) {
    if (!Number.isFinite(v)) return String(v);
    return Math.abs(v) >= 0.01 || v === 0 ? v.toFixed(4) : v.toExponential(2);
}

/** What the running phase is doing, e.g. "encoding images 2/5" (empty while training). */
export function phaseText(run) {
    if (!run || run.done) return "";
    const count = `${run.phaseDone ?? 0}/${run.phaseTotal || "?"}`;
    if (run.phase === "encoding") return `encoding images ${count}`;
    if (run.phase === "validating") return `validating ${count} (conditioning gain)`;
    if (run.phase === "previewing") {
        const step = run.previewStep ?? run.step;
        // every round follows a step (the first one also makes the no-adapter images)
        return `previewing ${count}${step ? ` (after step ${step})` : ""}`;
    }
    return "";
}

export function statusText(run) {
    if (!run) return "Loss chart: shown while this node trains";
    const last = lastFinite(run.losses);
    const loss = last === undefined ? "" : `, loss ${formatLoss(last)}`;
    const steps = `step ${run.step}/${run.total || "?"}`;
    const state = runState(run);
    if (state === "stopped") return `${steps}${loss}, stopped${run.stopped ? ` (${run.stopped})` : ""}`;
    // a cancelled run's adapter is partial: the node's own words, as in the adapter's metadata and report.json
    if (state === "cancelled") return `${run.note || `cancelled after ${run.step} of ${run.total || "?"} steps`}${loss}`;
    if (state === "done") return `${steps}${loss}, ${state}`;
    // The node sends null until a step was measured: with previews on, from the first step (the core's measure),
    // with the planned preview rounds counted in; with previews off, from the second.
    const eta = run.eta == null ? "ETA after the first steps" : `ETA ${formatDuration(run.eta)}`;
    if (run.phase === "encoding") return `${phaseText(run)}…`;
    if (run.phase === "previewing" && !run.step) return `${phaseText(run)}…`;
    if (!run.step) return `${steps}, preparing the first step…`;
    if (run.phase === "validating" || run.phase === "previewing") return `${steps}${loss}, ${phaseText(run)}, ${eta}`;
    return `${steps}${loss}, ${eta}`;
}

/** idle | running | done | cancelled | stopped (ended short of its steps without a cancel) */
export function runState(run) {
    if (!run) return "idle";
    if (!run.done) return "running";
    if (run.cancelled) return "cancelled";
    if (run.stopped || (run.total && run.step < run.total)) return "stopped";
    return "done";
}

function lastFinite(values) {
    for (let i = values.length - 1; i >= 0; i--) if (Number.isFinite(values[i])) return values[i];
    return undefined;
}

/** Debiased exponential moving average over the finite values; gaps stay gaps. */
function movingAverage(values) {
    const out = new Array(values.length);
    let acc = 0;
    let weight = 0;
    for (let i = 0; i < values.length; i++) {
        const v = values[i];
        if (!Number.isFinite(v)) continue;
        acc = SMOOTHING * acc + (1 - SMOOTHING) * v;
        weight = SMOOTHING * weight + (1 - SMOOTHING);
        out[i] = acc / weight;
    }
    return out;
}

function cssVar(name, fallback) {
    const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return v || fallback;
}

export function drawChart(canvas, run) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, canvas.clientWidth);
    const h = Math.max(1, canvas.clientHeight);
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
        canvas.width = Math.round(w * dpr);
        canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const fg = cssVar("--input-text", "#ddd");
    const grid = "rgba(128,128,128,0.25)";
    ctx.fillStyle = cssVar("--comfy-input-bg", "#222");
    ctx.fillRect(0, 0, w, h);

    const pad = { l: 44, r: 8, t: 8, b: 16 };
    const pw = w - pad.l - pad.r;
    const ph = h - pad.t - pad.b;
    ctx.font = "10px sans-serif";
    ctx.fillStyle = fg;
    if (!run || !run.losses.some(Number.isFinite) || pw < 10 || ph < 10) {
        ctx.textAlign = "center";
        ctx.textBaseline = "middle";
        const waiting = run && !run.done ? phaseText(run) || "waiting for the first step" : "";
        ctx.fillText(!run ? "no training run yet" : waiting ? `${waiting}…` : "no steps", w / 2, h / 2);
        return;
    }
    const values = run.losses;
    // The x axis spans the run's steps from the start, so the curve fills it as training goes on.
    const total = Math.max(run.total || 0, values.length, 2);
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of values) {
        if (Number.isFinite(v)) {
            lo = Math.min(lo, v);
            hi = Math.max(hi, v);
        }
    }
    // A flat series still gets a visible band around it.
    const span = hi - lo;
    const margin = span > 0 ? span * 0.08 : Math.max(Math.abs(hi) * 0.05, 1e-3);
    lo -= margin;
    hi += margin;
    const x = (step) => pad.l + (pw * (step - 1)) / Math.max(total - 1, 1);
    const y = (v) => pad.t + ph * (1 - (v - lo) / (hi - lo));

    ctx.strokeStyle = grid;
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 3; i++) {
        const v = lo + ((hi - lo) * i) / 3;
        const yy = Math.round(y(v)) + 0.5;
        ctx.beginPath();
        ctx.moveTo(pad.l, yy);
        ctx.lineTo(w - pad.r, yy);
        ctx.stroke();
        ctx.fillText(formatLoss(v), pad.l - 4, yy);
    }
    ctx.textAlign = "left";
    ctx.textBaseline = "alphabetic";
    ctx.fillText("1", pad.l, h - 4);
    ctx.textAlign = "right";
    ctx.fillText(String(total), w - pad.r, h - 4);

    // Long runs: one min/max pair per pixel column, so drawing stays cheap at 100k steps.
    const line = (series, color, width) => {
        ctx.strokeStyle = color;
        ctx.lineWidth = width;
        ctx.beginPath();
        const perPixel = Math.max(1, Math.floor(series.length / pw));
        let pen = false;
        for (let i = 0; i < series.length; i += perPixel) {
            let a = Infinity;
            let b = -Infinity;
            for (let j = i; j < Math.min(i + perPixel, series.length); j++) {
                if (Number.isFinite(series[j])) {
                    a = Math.min(a, series[j]);
                    b = Math.max(b, series[j]);
                }
            }
            if (a === Infinity) {
                pen = false;
                continue;
            }
            const xx = x(i + 1);
            if (!pen) ctx.moveTo(xx, y(a));
            else ctx.lineTo(xx, y(a));
            if (b !== a) ctx.lineTo(xx, y(b));
            pen = true;
        }
        ctx.stroke();
    };
    line(values, "rgba(100,160,255,0.45)", 1);
    line(movingAverage(values), "#ffb040", 2);

    ctx.textAlign = "right";
    ctx.textBaseline = "top";
    ctx.fillStyle = "#ffb040";
    ctx.fillText("avg", w - pad.r, pad.t);
    ctx.fillStyle = "rgba(100,160,255,0.9)";
    ctx.fillText("loss", w - pad.r - 24, pad.t);

    const phase = phaseText(run);
    if (phase) {
        ctx.textAlign = "left";
        ctx.fillStyle = fg;
        ctx.fillText(phase, pad.l + 4, pad.t);
    }
}
