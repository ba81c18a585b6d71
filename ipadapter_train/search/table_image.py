"""A search's trials as a picture: one row per trial (its state, settings, figure, steps and time), the best one
marked. What the ComfyUI search node returns as its table IMAGE; a headless user gets the same picture:

    from ipadapter_train.search.table_image import table_image
    from ipadapter_train.search.trials import trial_rows
    table_image(trial_rows(study), objective).save("trials.png")
"""
from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from .objective import Objective
from .trials import TrialRow, best_row, setting_text

LINE = 20  # pixels per row
PAD = 10  # around the table, and between columns
BEST_FILL, STRIPE_FILL, HEAD_FILL = (253, 226, 226), (240, 244, 250), (225, 228, 235)
TEXT, MUTED, HEAD = (30, 30, 30), (120, 120, 120), (10, 30, 90)


def table_rows(rows: Sequence[TrialRow], objective: Objective) -> tuple[list[str], list[list[str]]]:
    """(the column heads, one list of cell texts per trial): trial, state, each setting, the figure, steps, time."""
    names: list[str] = []
    for row in rows:
        names += [name for name in row.settings if name not in names]
    figure = "score (%)" if objective.unit == "%" else "held-out loss"
    heads = ["trial", "state", *names, figure, "steps", "seconds"]
    cells = []
    for row in rows:
        value = "-" if row.value is None else objective.format(row.value).rstrip("%")
        cells.append([str(row.number), row.state, *(setting_text(row.settings[n]) if n in row.settings else "-"
                                                    for n in names),
                      value, "-" if row.steps is None else str(row.steps),
                      "-" if row.seconds is None else f"{row.seconds:.1f}"])
    return heads, cells


def table_image(rows: Sequence[TrialRow], objective: Objective, title: str | None = None,
                note: str | None = None) -> Image.Image:
    """A white picture of the trials (`trial_rows(study)`), the best finished one (by `objective`) shaded; `title`
    above (default: the objective and the best trial), `note` below (e.g. that the figures are from random-weight
    models). No trials: one line that says so."""
    font = ImageFont.load_default()
    best = best_row(list(rows), objective)
    if title is None:
        title = f"Search by the {objective.name}: " + (
            f"best trial {best.number} ({objective.format(best.value)})" if best else "no finished trial")
    heads, cells = table_rows(rows, objective)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width_of = lambda text: int(probe.textlength(text, font=font))  # noqa: E731 - local measure
    columns = [max([width_of(h)] + [width_of(c[i]) for c in cells]) + 2 * PAD for i, h in enumerate(heads)]
    lines = [title] + ([note] if note else [])
    width = max([sum(columns) + 2 * PAD] + [width_of(t) + 2 * PAD for t in lines])
    height = PAD + LINE * (len(cells) + 2 + (1 if note else 0) + (0 if cells else 1)) + PAD
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((PAD, PAD), title, fill=TEXT, font=font)
    y = PAD + LINE
    draw.rectangle([PAD // 2, y - 3, width - PAD // 2, y + LINE - 4], fill=HEAD_FILL)
    _row(draw, heads, columns, y, HEAD, font)
    for i, (row, texts) in enumerate(zip(rows, cells)):
        y += LINE
        fill = BEST_FILL if best is not None and row.number == best.number else STRIPE_FILL if i % 2 else None
        if fill:
            draw.rectangle([PAD // 2, y - 3, width - PAD // 2, y + LINE - 4], fill=fill)
        _row(draw, texts, columns, y, TEXT if row.state == "finished" else MUTED, font)
    if not cells:
        y += LINE
        draw.text((PAD, y), "No trial has run.", fill=MUTED, font=font)
    if note:
        draw.text((PAD, y + LINE), note, fill=MUTED, font=font)
    return image


def _row(draw: ImageDraw.ImageDraw, texts: Sequence[str], columns: Sequence[int], y: int, fill, font) -> None:
    x = PAD
    for text, width in zip(texts, columns):
        draw.text((x + PAD // 2, y), text, fill=fill, font=font)
        x += width
