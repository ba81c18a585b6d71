"""Lay a preview round out as one image: a row per (reference, prompt), the reference first, then one column per
adapter weight, with a title line (the step, and its score when there is one) and column headers.

The labels are sized for where the grid is seen: the Train node shows it scaled to the node's width (about 340
px) and previews.html at 320 px high, so the text grows with the grid's width (`label_size`): 12 px or more on
the node, where Pillow's fixed 11 px font shrank to 4-5 px and could not be read.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont, ImageOps

log = logging.getLogger(__name__)

MAX_CELL = 256  # larger previews (SDXL's 512) are shown smaller in the grid; they are scored at full size
MIN_CELL = 128  # smaller ones larger, so the labels fit
SHOWN_WIDTH = 340  # about how wide the Train node shows the grid (its minimum width is 320 px)
SHOWN_TEXT = 12  # the label size wanted there, in pixels


def label_size(width: int) -> int:
    """Font size (px) of a grid `width` px wide, so that its labels are SHOWN_TEXT px high at SHOWN_WIDTH."""
    return max(SHOWN_TEXT, round(width * SHOWN_TEXT / SHOWN_WIDTH))


def line_height(width: int) -> int:
    """Height of one text line of a grid `width` px wide."""
    return round(label_size(width) * 1.35)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's own scalable font at `size` px (no font file to ship); the fixed bitmap font where Pillow has no
    FreeType (the labels are then small, but the grid is still made)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError) as exc:  # Pillow < 10.1 or built without FreeType
        log.debug("No scalable font (%s): grid labels use Pillow's bitmap font.", exc)
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, room: int) -> str:
    """`text`, cut with an ellipsis to fit `room` px."""
    if draw.textlength(text, font=font) <= room:
        return text
    while text and draw.textlength(text + "…", font=font) > room:
        text = text[:-1]
    return text + "…"


def compose_grid(title: str, references: Sequence[Image.Image], row_labels: Sequence[str],
                 weights: Sequence[float], columns: Sequence[Sequence[Image.Image]]) -> Image.Image:
    """`columns[j][i]` is row i's image at `weights[j]`; `references[i]` is row i's reference."""
    side = max(MIN_CELL, min(MAX_CELL, max(im.width for col in columns for im in col)))
    rows = len(references)
    width = side * (1 + len(weights))
    line, font = line_height(width), _font(label_size(width))
    pad = max(2, line // 8)
    grid = Image.new("RGB", (width, 2 * line + rows * (side + line)), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((pad, pad), _fit(draw, title, font, width - 2 * pad), fill="black", font=font)
    for j, header in enumerate(["reference"] + ["no adapter" if w == 0 else f"weight {w:g}" for w in weights]):
        draw.text((j * side + pad, line + pad), _fit(draw, header, font, side - 2 * pad), fill="black", font=font)
    for i in range(rows):
        top = 2 * line + i * (side + line)
        draw.text((pad, top + pad), _fit(draw, row_labels[i], font, width - 2 * pad), fill="black", font=font)
        cells = [references[i]] + [column[i] for column in columns]
        for j, image in enumerate(cells):
            grid.paste(ImageOps.fit(image.convert("RGB"), (side, side)), (j * side, top + line))
    return grid
