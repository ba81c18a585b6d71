"""Load Training Images: a folder of pictures (and captions) as an IMAGE batch for the Train node."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from comfy_api.latest import io

import folder_paths

from ..ipadapter_train.data import center_crop, load_image_folder, resize_short_side
from ..ipadapter_train.errors import IPAdapterError
from .images import pils_to_tensor
from .io_types import CATEGORY


def input_subfolders() -> list[str]:
    """"" plus the visible sub-folders of ComfyUI's input folder, sorted."""
    root = folder_paths.get_input_directory()
    names = []
    if os.path.isdir(root):
        names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    return [""] + names


def resolve_folder(folder: str, path: str) -> Path:
    """The folder to read: an absolute `path` wins; else a sub-folder of input/ that cannot leave it."""
    path = (path or "").strip()
    if path:
        chosen = Path(path).expanduser()
        if not chosen.is_absolute():
            raise IPAdapterError(f"path {path!r} is not absolute: give a full path, or pick a folder of input/.")
        return chosen
    if not folder:
        raise IPAdapterError("No images chosen: pick a sub-folder of ComfyUI's input folder, or give an absolute path.")
    root = Path(folder_paths.get_input_directory()).resolve()
    chosen = (root / folder).resolve()
    if chosen == root or root not in chosen.parents:
        raise IPAdapterError(f"{folder!r} is not a sub-folder of ComfyUI's input folder.")
    return chosen


class LoadTrainingImages(io.ComfyNode):
    """Loads every jpg/png/webp/bmp of a folder, with captions from .txt files, data.json or one prompt."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IPAdapterTrain_LoadTrainingImages",
            display_name="Load Training Images",
            category=CATEGORY,
            description="Load a folder of training images (resized and centre-cropped) with their captions.",
            inputs=[
                io.Combo.Input("folder", options=input_subfolders(), default="",
                               tooltip="A sub-folder of ComfyUI's input folder holding the training images."),
                io.String.Input("path", default="",
                                tooltip="An absolute folder path instead; when set it wins over folder."),
                io.String.Input("prompt", default="",
                                tooltip="One caption for every image; empty = captions from same-named .txt "
                                        "files or data.json."),
                io.Int.Input("resolution", default=512, min=64, max=2048, step=8,
                             tooltip="Output size: short side resized to this, then a centre square crop."),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="The images, [N, resolution, resolution, 3]."),
                io.String.Output(display_name="captions", tooltip="One caption per line, in image order."),
                io.String.Output(display_name="report", tooltip="Counts, sizes, skipped files and why."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, folder, path, prompt, resolution) -> str:
        """Re-run when the folder's files change."""
        digest = hashlib.sha256(f"{folder}|{path}|{prompt}|{resolution}".encode())
        try:
            chosen = resolve_folder(folder, path)
            for entry in sorted(os.scandir(chosen), key=lambda e: e.name):
                stat = entry.stat()
                digest.update(f"{entry.name}:{stat.st_mtime_ns}:{stat.st_size};".encode())
        except (OSError, IPAdapterError):
            pass  # execute reports the problem
        return digest.hexdigest()

    @classmethod
    def execute(cls, folder, path, prompt, resolution) -> io.NodeOutput:
        chosen = resolve_folder(folder, path)
        samples, report = load_image_folder(chosen, prompt=prompt or None)
        pictures = [center_crop(resize_short_side(s.image, resolution), resolution) for s in samples]
        captions = "\n".join(" ".join(s.caption.split()) for s in samples)  # one line per image
        return io.NodeOutput(pils_to_tensor(pictures), captions, report.summary())
