"""Bring pictures of different sizes to one common size with the least loss, for tools that need one
batch (a ComfyUI IMAGE is a single [N, H, W, 3] tensor).

    from ipadapter_train.storage.common_size import to_common_size
    pictures, changes = to_common_size(images, names)   # changes: one line per image that was altered

Images that already share one size pass through untouched. Otherwise each is scaled (never enlarged)
so its short side equals the smallest short side of the set, then centre-cropped to the smallest width
and the smallest height among the scaled images. That crop is never smaller than the short side in
either direction, so it keeps each image's central square whole: training, which resizes the short
side and takes a centred square, sees the same content it would have seen from the original file,
only at the smallest image's detail. Scaling to the largest size instead would keep every pixel but
could make the batch many times larger in memory; no per-image padding is added, since the trainer
would learn the borders.
"""
from __future__ import annotations

from collections.abc import Sequence

from PIL import Image


def common_size(sizes: Sequence[tuple[int, int]]) -> tuple[int, tuple[int, int], list[tuple[int, int]]]:
    """(short side, (width, height) of the common crop, each image's scaled size) for (width, height) sizes."""
    if not sizes:
        raise ValueError("common_size needs at least one size")
    short = min(min(w, h) for w, h in sizes)
    scaled = []
    for w, h in sizes:
        if min(w, h) == short:
            scaled.append((w, h))
        elif w <= h:
            scaled.append((short, max(short, round(h * short / w))))
        else:
            scaled.append((max(short, round(w * short / h)), short))
    return short, (min(w for w, _ in scaled), min(h for _, h in scaled)), scaled


def _centre_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def to_common_size(images: Sequence[Image.Image], names: Sequence[str]) -> tuple[list[Image.Image], list[str]]:
    """The images at one common size (see the module docstring) and a line per changed image saying how."""
    if len(images) != len(names):
        raise ValueError(f"{len(images)} images but {len(names)} names")
    sizes = [im.size for im in images]
    if len(set(sizes)) <= 1:
        return list(images), []
    _, (width, height), scaled = common_size(sizes)
    out, changes = [], []
    for image, name, (w, h), size in zip(images, names, sizes, scaled):
        steps = []
        if size != image.size:
            steps.append(f"scaled to {size[0]}x{size[1]}")
            image = image.resize(size, Image.Resampling.LANCZOS)
        if image.size != (width, height):
            steps.append(f"centre-cropped to {width}x{height}")
            image = _centre_crop(image, width, height)
        if steps:
            changes.append(f"{name}: {w}x{h} {', '.join(steps)}")
        out.append(image)
    return out, changes
