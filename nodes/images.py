"""Conversions between ComfyUI IMAGE tensors ([B, H, W, C] floats in 0..1) and PIL images, and a small
table picture for showing figures on the canvas."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw


def tensor_to_pils(images: torch.Tensor) -> list[Image.Image]:
    """IMAGE [B, H, W, C] (or [H, W, C]) -> RGB PIL images."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"Expected an IMAGE tensor [B, H, W, C], got shape {tuple(images.shape)}.")
    arrays = (images[..., :3].detach().float().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    if arrays.shape[-1] == 1:
        arrays = np.repeat(arrays, 3, axis=-1)
    return [Image.fromarray(a, mode="RGB") for a in arrays]


def pils_to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """Same-sized PIL images -> IMAGE [B, H, W, 3] float32 in 0..1."""
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays))


def table_image(title: str, rows: Sequence[tuple[str, str]], width: int = 520) -> Image.Image:
    """A white picture with a title line and two-column rows (label, value)."""
    line = 22
    height = 24 + line * (len(rows) + 1) + 12
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((12, 10), title, fill=(20, 20, 20))
    y = 10 + line + 6
    for i, (label, value) in enumerate(rows):
        if i % 2 == 0:
            draw.rectangle([6, y - 3, width - 6, y + line - 5], fill=(238, 242, 250))
        draw.text((14, y), label, fill=(40, 40, 40))
        draw.text((width // 2, y), value, fill=(10, 40, 120))
        y += line
    return img
