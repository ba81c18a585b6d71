"""The search page, `<search folder>/search.html`: each trial's settings, figure, steps and time; the best trials'
preview grids side by side; the figure against each searched setting and over time (inline SVG, no script).

It is rewritten after every trial (search/study.py), so it can be opened while the search goes on; its images are
the trials' own grids (`trial_NNN/previews/step_NNNN.png`), linked, not copied.
"""
from __future__ import annotations

import html
import math
import time
from pathlib import Path
from typing import Any, Sequence

from ..storage.weights_io import atomic_write_text
from .objective import Objective
from .space import SearchSpace, Setting
from .trials import TrialRow, best_row, grid_path, trial_rows

PAGE = "search.html"
BEST_GRIDS = 3  # grids shown side by side
W, H, PAD = 320, 200, 40  # one plot's size and margin, in pixels
COLOURS = {"finished": "#1f5fbf", "pruned": "#d08a1a", "best": "#c0262d"}

STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;font-size:90%}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}tr.best td{background:#fdeaea}
td.l{text-align:left}.plots{display:flex;flex-wrap:wrap;gap:12px}.grids{display:flex;gap:12px;overflow-x:auto}
.grids figure{margin:0}.grids img{max-height:420px}.note{color:#555;max-width:60em}"""


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return html.escape(str(value))


def _scale(low: float, high: float, log: bool):
    """A value -> [0, 1] map for an axis (log when asked and possible)."""
    if log and low > 0:
        low, high = math.log10(low), math.log10(high)
        span = high - low or 1.0
        return lambda v: (math.log10(v) - low) / span
    span = high - low or 1.0
    return lambda v: (v - low) / span


def _plot(title: str, xlabel: str, points: Sequence[tuple[Any, float, str]], setting: Setting | None = None,
          line: Sequence[tuple[float, float]] = (), x_from: float | None = None) -> str:
    """An SVG scatter plot: `points` are (x, y, state); x is a number, or a choice of `setting`; the x axis starts
    at `x_from` when given."""
    if not points:
        return ""
    ys = [y for _, y, _ in points] + [y for _, y in line]
    ylo, yhi = min(ys), max(ys)
    if ylo == yhi:
        ylo, yhi = ylo - 1, yhi + 1
    fy = _scale(ylo, yhi, False)
    choices = list(setting.choices) if setting is not None and setting.choices is not None else None
    if choices is not None:
        def fx(v):
            return (choices.index(v) + 0.5) / len(choices) if v in choices else 0.5
        ticks = [(fx(c), str(c)) for c in choices]
    else:
        xs = [float(x) for x, _, _ in points] + [x for x, _ in line]
        xlo, xhi = (setting.low, setting.high) if setting is not None and setting.low is not None else (min(xs),
                                                                                                         max(xs))
        xlo, xhi = min([xlo, *xs]) if x_from is None else x_from, max([xhi, *xs])
        fx = _scale(xlo, xhi, bool(setting and setting.log))
        ticks = [(0.0, f"{xlo:.3g}"), (1.0, f"{xhi:.3g}")]

    def at(x, y) -> tuple[float, float]:
        return PAD + fx(x) * (W - 2 * PAD), H - PAD - fy(y) * (H - 2 * PAD)

    parts = [f"<svg width='{W}' height='{H}' xmlns='http://www.w3.org/2000/svg' role='img' "
             f"aria-label='{html.escape(title)}'><title>{html.escape(title)}</title>",
             f"<rect x='{PAD}' y='{PAD}' width='{W - 2 * PAD}' height='{H - 2 * PAD}' fill='none' stroke='#bbb'/>",
             f"<text x='{W / 2}' y='16' text-anchor='middle' font-size='12'>{html.escape(title)}</text>",
             f"<text x='{W / 2}' y='{H - 6}' text-anchor='middle' font-size='11'>{html.escape(xlabel)}</text>",
             f"<text x='4' y='{PAD + 4}' font-size='10'>{ylo + (yhi - ylo):.4g}</text>",
             f"<text x='4' y='{H - PAD}' font-size='10'>{ylo:.4g}</text>"]
    for frac, label in ticks:
        parts.append(f"<text x='{PAD + frac * (W - 2 * PAD)}' y='{H - PAD + 14}' text-anchor='middle' "
                     f"font-size='10'>{html.escape(label)}</text>")
    if len(line) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (at(a, b) for a, b in line))
        parts.append(f"<polyline points='{path}' fill='none' stroke='{COLOURS['best']}' stroke-width='1.5'/>")
    for x, y, state in points:
        cx, cy = at(x, y)
        colour = COLOURS.get(state, "#888")
        fill = colour if state != "pruned" else "white"
        parts.append(f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='4' fill='{fill}' stroke='{colour}' stroke-width='1.5'/>")
    parts.append("</svg>")
    return "".join(parts)


def _figure(row: TrialRow) -> float | None:
    """What a trial shows in the plots: a finished trial's value, a pruned one's last round."""
    if row.value is not None:
        return row.value
    return row.rounds[-1][1] if row.state == "pruned" and row.rounds else None


def _plots(rows: list[TrialRow], space: SearchSpace, objective: Objective, best: TrialRow | None) -> list[str]:
    shown = [(r, _figure(r)) for r in rows if _figure(r) is not None]
    state = {r.number: ("best" if best is not None and r.number == best.number else r.state) for r, _ in shown}
    out = []
    for setting in space.settings:
        if setting.fixed:
            continue
        points = [(r.settings[setting.name], y, state[r.number]) for r, y in shown if setting.name in r.settings]
        out.append(_plot(f"{objective.name} against {setting.name}", setting.name, points, setting))
    timed = [(r, y) for r, y in shown if r.ended is not None]
    if timed:
        start = min(r.started or r.ended for r, _ in timed)
        points = [((r.ended - start) / 60, y, state[r.number]) for r, y in timed]
        line, best_so_far = [], None
        for r, y in sorted(((r, y) for r, y in timed if r.state == "finished"), key=lambda ry: ry[0].ended):
            better = best_so_far is None or (y > best_so_far if objective.higher_is_better else y < best_so_far)
            best_so_far = y if better else best_so_far
            line.append(((r.ended - start) / 60, best_so_far))
        out.append(_plot(f"{objective.name} over time (line: best so far)", "minutes since the first trial began",
                         points, None, line, x_from=0.0))
    return [p for p in out if p]


def render_search_page(folder: Path, rows: list[TrialRow], space: SearchSpace, objective: Objective,
                       study_name: str = "") -> str:
    """The page's HTML for `rows` (trial_rows) of a search in `folder`."""
    best = best_row(rows, objective)
    counts = {s: sum(r.state == s for r in rows) for s in ("finished", "pruned", "failed", "running")}
    head = (f"<h1>IP-Adapter settings search{': ' + html.escape(study_name) if study_name else ''}</h1>"
            f"<p>{len(rows)} trial(s): " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ". Judged by the "
            f"{html.escape(objective.name)} ({'higher' if objective.higher_is_better else 'lower'} is better). "
            f"Updated {time.strftime('%Y-%m-%d %H:%M:%S')}.</p>")
    if objective.note:
        head += f"<p class='note'>{html.escape(objective.note)}</p>"
    if best is not None:
        settings = ", ".join(f"{k} = {_num(v)}" for k, v in best.settings.items())
        head += (f"<p><b>Best: trial {best.number}</b>, {objective.format(best.value)} ({settings}); its adapter: "
                 f"{html.escape(best.name)}.safetensors.</p>")
    names = [s.name for s in space.settings if not s.fixed]
    fixed = ", ".join(f"{s.name} = {_num(s.value)}" for s in space.settings if s.fixed)
    table = ["<h2>Trials</h2>", "<p class='note'>Searched: " + ", ".join(
        f"{s.name} ({html.escape(s.describe())})" for s in space.settings if not s.fixed) + "."
        + (f" Fixed: {fixed}." if fixed else "") + " A pruned trial was stopped at a preview round where it was "
        "clearly worse than the other trials at that step; its figure is that round's.</p>",
        "<table><tr><th>trial</th><th>state</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names)
        + f"<th>{html.escape(objective.name)}</th><th>steps</th><th>best step</th><th>seconds</th><th>run</th></tr>"]
    for r in rows:
        cls = " class='best'" if best is not None and r.number == best.number else ""
        figure = _figure(r)
        state = f"{r.state}: {r.note}" if r.note else r.state
        cells = [f"{r.number} ({r.label})" if r.label else str(r.number), state,
                 *[_num(r.settings.get(n, "-")) for n in names],
                 objective.format(figure) if figure is not None else "-", _num(r.steps if r.steps is not None else "-"),
                 _num(r.best_step or "-"), f"{r.seconds:.1f}" if r.seconds is not None else "-"]
        link = (f"<a href='{html.escape(r.name)}/previews.html'>{html.escape(r.name)}</a>"
                if (folder / r.name / "previews.html").is_file() else html.escape(r.name))
        table.append(f"<tr{cls}>" + "".join(f"<td>{c if i > 1 else html.escape(c)}</td>" for i, c in enumerate(cells))
                     + f"<td class='l'>{link}</td></tr>")
    table.append("</table>")
    ranked = sorted((r for r in rows if r.state == "finished" and r.value is not None),
                    key=lambda r: (-r.value if objective.higher_is_better else r.value, r.number))
    grids = []
    for r in ranked[:BEST_GRIDS]:
        if grid_path(folder, r) is not None:
            grids.append(f"<figure><img src='{html.escape(r.grid())}' alt='trial {r.number} previews'><figcaption>"
                         f"trial {r.number}: {objective.format(r.value)}</figcaption></figure>")
    parts = [head, *table]
    if grids:
        parts += ["<h2>The best trials' previews</h2>", "<div class='grids'>", *grids, "</div>"]
    plots = _plots(rows, space, objective, best)
    if plots:
        parts += ["<h2>Figures</h2><p class='note'>Filled: finished; hollow: pruned (its last round); red: the "
                  "best trial.</p><div class='plots'>", *plots, "</div>"]
    return ("<!doctype html><html><head><meta charset='utf-8'><title>IP-Adapter settings search</title>"
            f"<style>{STYLE}</style></head><body>" + "".join(parts) + "</body></html>")


def write_search_page(folder: Path, study, space: SearchSpace, objective: Objective) -> Path:
    """Write `folder/search.html` for `study` atomically; return its path."""
    path = Path(folder) / PAGE
    atomic_write_text(path, render_search_page(Path(folder), trial_rows(study), space, objective,
                                               getattr(study, "study_name", "")))
    return path
