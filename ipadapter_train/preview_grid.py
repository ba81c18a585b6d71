"""Lay a preview round out as one image: a row per (reference, prompt), the reference first, then one column per
adapter weight, with a title line (the step, and its score when there is one) and column headers."""
from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw, ImageOps

MAX_CELL = 256  # larger previews (SDXL's 512) are shown smaller in the grid; they are scored at full size
MIN_CELL = 128  # smaller ones larger, so the labels fit
LINE = 16  # height of a text line


def compose_grid(title: str, references: Sequence[Image.Image], row_labels: Sequence[str],
                 weights: Sequence[float], columns: Sequence[Sequence[Image.Image]]) -> Image.Image:
    """`columns[j][i]` is row i's image at `weights[j]`; `references[i]` is row i's reference."""
    side = max(MIN_CELL, min(MAX_CELL, max(im.width for col in columns for im in col)))
    rows = len(references)
    width = side * (1 + len(weights))
    grid = Image.new("RGB", (width, 2 * LINE + rows * (side + LINE)), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((4, 2), title, fill="black")
    for j, header in enumerate(["reference"] + ["no adapter (0)" if w == 0 else f"weight {w:g}" for w in weights]):
        draw.text((j * side + 4, LINE + 2), header, fill="black")
    for i in range(rows):
        top = 2 * LINE + i * (side + LINE)
        draw.text((4, top + 2), row_labels[i][: width // 6], fill="black")
        cells = [references[i]] + [column[i] for column in columns]
        for j, image in enumerate(cells):
            grid.paste(ImageOps.fit(image.convert("RGB"), (side, side)), (j * side, top + LINE))
    return grid
