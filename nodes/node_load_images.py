"""Load Training Images: a folder of pictures (and captions) under ComfyUI's input folder as an IMAGE batch
for the Train node, at the pictures' own size (the Train node's resolution is the only size setting)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from comfy_api.latest import io

from ..ipadapter_train.api import IPAdapterError, load_image_folder, to_common_size
from .folders import ALLOW_ANY_FOLDER_ENV, folder_problem, input_subfolders, training_folder
from .images import pils_to_tensor
from .io_types import CATEGORY


def size_report(sizes_before: list[tuple[int, int]], size_after: tuple[int, int], changes: list[str]) -> str:
    """The lines the node's report adds about sizes: unchanged, or which images were changed and how."""
    width, height = size_after
    if not changes:
        return f"All images are {width}x{height}: passed on unchanged (Train IP-Adapter's resolution sets the size)."
    short = min(min(w, h) for w, h in sizes_before)
    lines = [(f"Sizes differ and one IMAGE batch needs one size: each image was scaled so its short side is {short} px "
              f"(the smallest), then centre-cropped to {width}x{height}; each image's central square is kept whole. "
              f"{len(changes)} of {len(sizes_before)} changed:")]
    lines.extend(f"  - {line}" for line in changes)
    return "\n".join(lines)


def sample_names(samples: list, folder: Path) -> list[str]:
    """Each image's name for the run's records: its path inside the folder (data.json may name sub-folders),
    with '/' on every system; the bare file name when it lies elsewhere."""
    base = folder.resolve()
    names = []
    for s in samples:
        try:
            names.append(Path(s.path).resolve().relative_to(base).as_posix())
        except ValueError:
            names.append(Path(s.path).name)
    return names


class LoadTrainingImages(io.ComfyNode):
    """Loads every jpg/png/webp/bmp of a folder, with captions from .txt files, data.json or one prompt."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IPAdapterTrain_LoadTrainingImages",
            display_name="Load Training Images",
            category=CATEGORY,
            description="Load a folder of training images under ComfyUI's input folder, with their captions.",
            inputs=[
                io.Combo.Input("folder", options=input_subfolders(), default="",
                               tooltip="A sub-folder of ComfyUI's input folder holding the training images (only "
                                       "folders with images are listed; press R after adding one)."),
                io.String.Input("path", default="",
                                tooltip="Instead of folder: a path inside ComfyUI's input folder, e.g. cats/set1. "
                                        f"Absolute paths only when the server was started with "
                                        f"{ALLOW_ANY_FOLDER_ENV}=1. When set it wins over folder."),
                io.String.Input("prompt", default="",
                                tooltip="One caption for every image; empty = captions from same-named .txt "
                                        "files or data.json."),
            ],
            outputs=[
                io.Image.Output(display_name="images",
                                tooltip="The images, [N, H, W, 3] at their own size; when sizes differ, scaled to "
                                        "the smallest short side and centre-cropped to one size (see report)."),
                io.String.Output(display_name="captions", tooltip="One caption per line, in image order."),
                io.String.Output(display_name="report", tooltip="Counts, sizes, changed and skipped files and why."),
                # last, so graphs saved before it existed keep their links (they are by output index)
                io.String.Output(display_name="names",
                                 tooltip="The images' file names, one per line in image order: connect to Train "
                                         "IP-Adapter's image_names so its previews and report name your files."),
            ],
        )

    @classmethod
    def validate_inputs(cls, folder, path) -> bool | str:
        """Refuse, when the graph is queued, a folder outside input/ (or an absolute path without the opt-in), an
        over-long path, and a folder that is missing or holds no images: before any model of the graph loads."""
        if folder is None or path is None:  # fed by another node: known only when it runs
            return True
        try:
            chosen = training_folder(folder, path)
        except IPAdapterError as exc:
            return str(exc)
        return folder_problem(chosen, (path or folder).strip()) or True

    @classmethod
    def fingerprint_inputs(cls, folder, path, prompt) -> str:
        """Re-run when the folder's files change; only a folder the rules allow is ever listed."""
        digest = hashlib.sha256(f"{folder}|{path}|{prompt}".encode())
        try:
            chosen = training_folder(folder, path)
            for entry in sorted(os.scandir(chosen), key=lambda e: e.name):
                try:
                    stat = entry.stat()
                except OSError:  # a dangling or looping link: the link itself still counts, and the rest too
                    stat = entry.stat(follow_symlinks=False)
                digest.update(f"{entry.name}:{stat.st_mtime_ns}:{stat.st_size};".encode())
        except (OSError, IPAdapterError):
            pass  # execute reports the problem
        return digest.hexdigest()

    @classmethod
    def execute(cls, folder, path, prompt) -> io.NodeOutput:
        chosen = training_folder(folder, path)
        problem = folder_problem(chosen, (path or folder).strip())
        if problem:  # fed by another node, so not checked when queued
            raise IPAdapterError(problem)
        samples, report = load_image_folder(chosen, prompt=prompt or None)
        sizes = [s.image.size for s in samples]
        pictures, changes = to_common_size([s.image for s in samples], [s.path.name for s in samples])
        captions = "\n".join(" ".join(s.caption.split()) for s in samples)  # one line per image
        text = f"{report.summary()}\n{size_report(sizes, pictures[0].size, changes)}"
        return io.NodeOutput(pils_to_tensor(pictures), captions, text, "\n".join(sample_names(samples, chosen)))
