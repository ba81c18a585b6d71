// The trials of a "Search IP-Adapter Settings" run, shown on the node under its loss chart.
//
// Each trial of a search is a training run drawn on the node's chart like a Train run; its events carry
// `trial` ({number, index, trials}). After each trial (and when one starts) the node sends
// `ipadapter_train.search` with its table: one row per trial with a line of text ("trial 2/6: lr 1.2e-04,
// steps 40, base -> 53.2%", pruned, running), the best marked; GET /ipadapter_train/runs repeats it on the run of
// the latest trial (`search`), so a reloaded page shows it again. Pure helpers and one DOM builder; imported by
// ipadapter_train.js. ComfyUI also loads this file as an extension module, which is harmless: it registers nothing.

export const TRIALS_HEIGHT = 96;

/** A search record from an event payload or the runs route's `search`. */
export function searchEntry(d) {
    const rows = Array.isArray(d?.rows) ? d.rows : [];
    return {
        node: String(d.node),
        promptId: String(d.prompt_id ?? ""),
        workflowId: d.workflow_id != null ? String(d.workflow_id) : null,
        trials: Number(d.trials) || 0,
        objective: String(d.objective ?? ""),
        rows: rows.map((r) => ({ text: String(r.text ?? ""), state: String(r.state ?? ""), best: !!r.best })),
        best: d.best ? { number: Number(d.best.number), text: String(d.best.text ?? "") } : null,
        done: !!d.done,
        note: d.note != null ? String(d.note) : null,
    };
}

/** The chart's status line for a search's trial: "trial 2/6: " before the run's own words. */
export function trialPrefix(run) {
    const t = run?.trial;
    return t ? `trial ${t.index}/${t.trials}: ` : "";
}

/** The lines under the chart: a head line, then one per trial (the best marked with ★). */
export function trialLines(search) {
    if (!search) return ["Trials: listed here while this node searches"];
    let head = `search by the ${search.objective}`;
    if (search.done) head += search.note ? `: ${search.note}` : ": done";
    if (search.best) head += `, best trial ${search.best.number} (${search.best.text})`;
    return [head, ...search.rows.map((r) => `${r.best ? "★ " : ""}${r.text}`)];
}

/** The trials view: a small scrolling text box; `update(search)` writes its lines. */
export function makeTrialsView() {
    const root = document.createElement("div");
    root.className = "ipadapter-train-trials";
    root.style.cssText =
        "width:100%;height:100%;box-sizing:border-box;overflow:auto;font:11px sans-serif;line-height:1.35;" +
        "color:var(--input-text,#ddd);white-space:pre;padding:2px 4px;";
    return {
        root,
        update(search) {
            const text = trialLines(search).join("\n");
            if (root.textContent !== text) root.textContent = text;
            root.dataset.rows = String(search ? search.rows.length : 0);
            root.dataset.done = String(!!search?.done);
        },
    };
}
