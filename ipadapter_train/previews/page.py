"""The run's page, `<run>/previews.html`: the loss curve and every preview grid over the steps, newest first,
with its scores. It is rewritten after each round, so it can be opened while the run goes on."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Sequence

from ..storage.weights_io import atomic_write_text

PAGE = "previews.html"


def _fmt(value: Any, signed: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:+.1f}" if signed else f"{value:.4f}"
    return str(value)


def _scores_table(cells: Sequence[dict[str, Any]]) -> str:
    head = ("<tr><th>reference</th><th>prompt</th><th>weight</th><th>CLIP-I</th><th>CLIP-T (cos)</th>"
            "<th>CLIPScore</th><th>percent</th><th>grade</th><th>gain over weight 0</th></tr>")
    rows = []
    for c in cells:
        cols = [Path(c["reference"]).name, c["prompt"] or "(image only)", f"{c['weight']:g}", _fmt(c["clip_i"]),
                _fmt(c["clip_t"]), _fmt(c["clip_score"]), f"{c['percent']:.1f}%", c["grade"],
                _fmt(c["gain_percent"], signed=True)]
        rows.append("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in cols) + "</tr>")
    return "<table>" + head + "".join(rows) + "</table>"


def render_page(steps: Sequence[dict[str, Any]], info: dict[str, Any], scores: dict[str, Any] | None,
                loss_plot: str | None) -> str:
    """The page's HTML. `steps`: [{"step", "grid"}] oldest first; `info`: what the previews show; `scores`:
    scores.json's content or None."""
    parts = ["<!doctype html><meta charset='utf-8'><title>IP-Adapter training previews</title>",
             "<style>body{font-family:sans-serif;max-width:1400px;margin:auto}td,th{padding:2px 8px;"
             "border-bottom:1px solid #ddd;text-align:right}.note{background:#fee;padding:8px}"
             ".world{background:#eef;padding:8px}"
             ".best{background:#efe;padding:8px}.strip{display:flex;gap:12px;overflow-x:auto}"
             "figure.grid{margin:0;flex:0 0 auto}figure.grid img{height:320px}figure.best{outline:3px solid #3a3}"
             "</style>", "<h1>Training previews</h1>"]
    if info.get("random_weights"):
        parts.append("<p class='note'><b>Random-weight models: the images and any scores show that the pipeline "
                     "runs, not what a trained adapter does.</b></p>")
    elif info.get("figures_note"):  # the learned world: what its pictures and scores show, and what they do not
        parts.append(f"<p class='world'><b>{html.escape(info['figures_note'])}</b></p>")
    if info.get("cancelled"):
        parts.append(f"<p class='note'><b>Partial adapter: {html.escape(str(info['cancelled']))}.</b></p>")
    held = info.get("held_out") or []
    refs = ", ".join(Path(r).name for r in info.get("references", []))
    parts.append(f"<p>References: {html.escape(refs)}" + (" (held out of training)" if held else
                                                         " (training images: none was held out)") + ". Prompts: "
                 + html.escape(" | ".join(p or "(image only)" for p in info.get("prompts", []))) + ". "
                 + html.escape(f"{info.get('sampling_steps')} DPM-Solver++ steps, guidance {info.get('guidance')}, seed "
                               f"{info.get('seed')}, the same noise in every round.") + "</p>")
    if scores:
        if scores.get("note"):
            parts.append(f"<p class='note'><b>{html.escape(scores['note'])}</b></p>")
        if scores.get("why"):
            parts.append(f"<p class='best'>{html.escape(scores['why'])}</p>")
        parts.append(f"<p>Scored by {html.escape(scores.get('scorer', ''))}. {html.escape(scores['rank'])} "
                     f"{html.escape(scores['scale'])}</p>")
    if loss_plot:
        parts.append(f"<h2>Loss</h2><img src='{html.escape(loss_plot)}' alt='loss curve'>")
    by_step = {r["step"]: r for r in (scores or {}).get("rounds", [])}
    ordered = sorted(steps, key=lambda e: e["step"])
    # the grids side by side over the steps (scroll sideways), each with its score; the tables below
    parts.append("<h2>Grids over the steps</h2><div class='strip'>")
    for entry in ordered:
        scored = by_step.get(entry["step"])
        label = f"step {entry['step']}" + (f": {scored['score']:.1f}% ({scored['grade']})" if scored else "")
        best = " best" if scores and scores.get("best_step") == entry["step"] else ""
        parts.append(f"<figure class='grid{best}'><a href='{html.escape(entry['grid'])}'><img src='"
                     f"{html.escape(entry['grid'])}' alt='{html.escape(label)}'></a><figcaption>"
                     f"{html.escape(label)}{' (best)' if best else ''}</figcaption></figure>")
    parts.append("</div>")
    for entry in reversed(ordered):
        scored = by_step.get(entry["step"])
        if scored:
            parts.append(f"<h3>Step {entry['step']}: {scored['score']:.1f}% ({html.escape(scored['grade'])})</h3>")
            parts.append(_scores_table(scored["cells"]))
    return "\n".join(parts)


def write_page(run_dir: Path, steps: Sequence[dict[str, Any]], info: dict[str, Any],
               scores: dict[str, Any] | None) -> Path:
    """Write `<run>/previews.html` atomically and return its path."""
    loss = "loss.png" if (Path(run_dir) / "loss.png").is_file() else None
    return atomic_write_text(Path(run_dir) / PAGE, render_page(steps, info, scores, loss))
