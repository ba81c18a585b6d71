"""The evaluation's files: report.json, a contact sheet PNG and report.html that shows both."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageOps

from ..storage.weights_io import atomic_write

CELL = 192
LABEL = 18


def contact_sheet(report: dict[str, Any], out_dir: Path) -> Image.Image:
    """Rows = cases; columns = reference | baseline | adapter at each scale (first image of each)."""
    headers = ["reference", "baseline (no adapter)"] + [f"adapter x{s:g}" for s in report["scales"]]
    rows = len(report["cases"])
    sheet = Image.new("RGB", (CELL * len(headers), LABEL + rows * (CELL + LABEL)), "white")
    draw = ImageDraw.Draw(sheet)
    for col, text in enumerate(headers):
        draw.text((col * CELL + 4, 2), text, fill="black")
    for row, case in enumerate(report["cases"]):
        top = LABEL + row * (CELL + LABEL)
        draw.text((4, top + 2), f"{case['name']}: {case['prompt'] or case['caption'] or '(image only)'}"[:90],
                  fill="black")
        paths = [Path(case["references"][0])] + [out_dir / run["images"][0] for run in case["runs"]]
        for col, path in enumerate(paths):
            with Image.open(path) as im:
                cell = ImageOps.fit(ImageOps.exif_transpose(im).convert("RGB"), (CELL - 4, CELL - 4))
            sheet.paste(cell, (col * CELL + 2, top + LABEL))
    return sheet


def _fmt(value: Any, signed: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:+.4f}" if signed else f"{value:.4f}"
    return html.escape(str(value))


def _table(rows: list[dict[str, Any]], gain: bool) -> str:
    head = "<tr><th>scale</th><th>CLIP-I</th><th>CLIP-T (cos)</th><th>CLIPScore</th><th>percent</th>"
    head += "<th>grade</th>" if not gain else ""
    head += "<th>gain CLIP-I</th><th>gain CLIPScore</th><th>gain percent</th></tr>" if gain else "</tr>"
    out = [head]
    for r in rows:
        label = "baseline" if r["baseline"] else f"x{r['scale']:g}"
        cells = [label] + [_fmt(r.get(m)) for m in ("clip_i_mean", "clip_t_mean", "clip_score_mean", "percent")]
        if not gain:
            cells.append(_fmt(r.get("grade")))
        else:
            g = r.get("gain_over_baseline") or {}
            cells += [_fmt(g.get(m), signed=True) for m in ("clip_i_mean", "clip_score_mean", "percent")]
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "<table>" + "".join(out) + "</table>"


def render_html(report: dict[str, Any], sheet_name: str) -> str:
    """A self-contained page: notes, the summary with gains over the baseline, per-case tables, images."""
    parts = ["<!doctype html><meta charset='utf-8'><title>IP-Adapter evaluation</title>",
             "<style>body{font-family:sans-serif;max-width:1400px;margin:auto}td,th{padding:2px 8px;"
             "border-bottom:1px solid #ddd;text-align:right}.note{background:#fee;padding:8px}</style>",
             "<h1>IP-Adapter evaluation</h1>"]
    if report.get("note"):
        parts.append(f"<p class='note'><b>{html.escape(report['note'])}</b></p>")
    for w in report.get("warnings", []):
        parts.append(f"<p class='note'>{html.escape(w)}</p>")
    parts.append(f"<p>Scored by <b>{html.escape(report['scorer'])}</b>. {html.escape(report['scale_sentence'])}</p>")
    parts.append("<h2>Summary over all cases</h2>" + _table(report["summary"], gain=True))
    parts.append(f"<h2>Contact sheet</h2><img src='{html.escape(sheet_name)}' alt='contact sheet' style='max-width:100%'>")
    for case in report["cases"]:
        parts.append(f"<h2>{html.escape(case['name'])}</h2><p>prompt: {html.escape(case['prompt'] or '(none)')}</p>")
        parts.append(_table(case["runs"], gain=False))
        for run in case["runs"]:
            label = "baseline" if run["baseline"] else f"x{run['scale']:g}"
            links = " ".join(f"<a href='{html.escape(p)}'><img src='{html.escape(p)}' width='96'></a>"
                             for p in run["images"])
            parts.append(f"<p>{label}: {links}</p>")
    return "\n".join(parts)


def write_eval_files(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write contact_sheet.png, report.json and report.html atomically into `out_dir`."""
    out_dir = Path(out_dir)
    sheet = contact_sheet(report, out_dir)
    paths = {"contact_sheet": out_dir / "contact_sheet.png", "json": out_dir / "report.json",
             "html": out_dir / "report.html"}
    atomic_write(paths["contact_sheet"], lambda p: sheet.save(p, format="PNG"))
    text = json.dumps(report, indent=2, default=str)
    atomic_write(paths["json"], lambda p: p.write_text(text, encoding="utf-8"))
    page = render_html(report, paths["contact_sheet"].name)
    atomic_write(paths["html"], lambda p: p.write_text(page, encoding="utf-8"))
    return paths
