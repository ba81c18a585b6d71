// The latest preview grid of a "Train IP-Adapter" run, shown under the node's loss chart.
//
// The Train node sends `ipadapter_train.preview` after every preview round with the grid's file name and
// folder under ComfyUI's output directory (nodes/CONTRACT.md); GET /ipadapter_train/runs lists the same
// entries per run, so a reloaded page shows the latest grid again. The picture is loaded through ComfyUI's
// own `/view` route. Pure helpers and one DOM builder; imported by ipadapter_train.js. ComfyUI also loads
// this file as an extension module, which is harmless: it registers nothing.

export const PREVIEW_HEIGHT = 180;

/** A preview entry (event payload or runs-route item) as the page keeps it, or null if it names no file. */
export function previewEntry(d) {
    if (!d || d.filename == null || d.step == null) return null;
    const entry = {
        step: Number(d.step) || 0,
        filename: String(d.filename),
        subfolder: String(d.subfolder ?? ""),
        type: String(d.type ?? "output"),
    };
    if (d.score != null && Number.isFinite(Number(d.score))) entry.score = Number(d.score);
    if (d.grade != null) entry.grade = String(d.grade);
    if (d.best_step != null) entry.bestStep = Number(d.best_step);
    if (d.random_weights) entry.randomWeights = true;
    return entry;
}

/** Add (or replace, by step) a preview entry in a run's list, kept in step order. */
export function addPreview(run, entry) {
    if (!entry) return;
    run.previews = (run.previews || []).filter((p) => p.step !== entry.step);
    run.previews.push(entry);
    run.previews.sort((a, b) => a.step - b.step);
}

/** The grid to show: the run's latest round. */
export function latestPreview(run) {
    const list = run?.previews;
    return list && list.length ? list[list.length - 1] : null;
}

/** `/view` query of an entry (the caller adds the API base with api.apiURL). */
export function viewRoute(entry) {
    const q = new URLSearchParams({ filename: entry.filename, subfolder: entry.subfolder, type: entry.type });
    return `/view?${q.toString()}`;
}

/** The caption under the grid, e.g. "preview after step 10: 54.2% (B), best step 10". */
export function previewCaption(run) {
    const entry = latestPreview(run);
    if (!entry) {
        if (!run) return "Preview grid: shown after each preview round";
        return run.done ? "no preview grid in this run" : "preview grid after the first round…";
    }
    let text = `preview after step ${entry.step}`;
    if (entry.score != null) {
        text += `: ${entry.score.toFixed(1)}%${entry.grade ? ` (${entry.grade})` : ""}`;
        if (entry.bestStep != null) text += `, best step ${entry.bestStep}`;
        if (entry.randomWeights) text += ", random-weight figures";
    }
    const count = run.previews.length;
    return count > 1 ? `${text} (${count} grids)` : text;
}

/** The DOM of the grid: {root, update(run, url)}; `url(entry)` gives the picture's address. */
export function makePreviewView(url) {
    const root = document.createElement("div");
    root.className = "ipadapter-train-preview";
    root.style.cssText =
        "display:flex;flex-direction:column;gap:2px;width:100%;height:100%;box-sizing:border-box;min-height:0;";
    const img = document.createElement("img");
    img.alt = "latest preview grid";
    img.style.cssText = "flex:1 1 auto;min-height:0;width:100%;object-fit:contain;border-radius:4px;display:none;";
    const caption = document.createElement("div");
    caption.className = "ipadapter-train-preview-caption";
    caption.style.cssText =
        "flex:0 0 auto;font:11px sans-serif;color:var(--input-text,#ddd);white-space:nowrap;overflow:hidden;text-overflow:ellipsis;";
    root.append(img, caption);
    root.dataset.step = "";
    root.dataset.count = "0";
    root.dataset.loaded = "0";
    img.addEventListener("load", () => {
        root.dataset.loaded = img.naturalWidth > 0 ? "1" : "0";
    });
    img.addEventListener("error", () => {
        root.dataset.loaded = "error";
    });
    // the grid's labels are sized to be read at the node's width; a click shows it at full size
    img.title = "Click to open the full-size grid";
    img.style.cursor = "zoom-in";
    img.addEventListener("click", () => {
        if (img.src) window.open(img.src, "_blank", "noopener");
    });

    return {
        root,
        update(run) {
            const entry = latestPreview(run);
            const text = previewCaption(run);
            if (caption.textContent !== text) caption.textContent = text;
            root.dataset.count = String(run?.previews?.length ?? 0);
            root.dataset.promptId = run?.promptId ?? "";
            if (!entry) {
                if (img.getAttribute("src")) img.removeAttribute("src");
                img.style.display = "none";
                root.dataset.step = "";
                root.dataset.src = "";
                root.dataset.loaded = "0";
                return;
            }
            const src = url(entry);
            if (root.dataset.src !== src) {
                root.dataset.src = src;
                root.dataset.step = String(entry.step);
                root.dataset.loaded = "0";
                img.src = src;
            }
            img.style.display = "";
        },
    };
}
