"""Where a training run writes, checked before any model is loaded.

A run writes its adapter file (`out`) and its run folder (report.json, loss.png, checkpoint/). Before the
models load (minutes for real ones) both must be writable, `out` must not replace an existing file unless
asked, and nothing the run reads (model files and folders, the image folder, the init adapter, the
checkpoint it resumes) may be written over, asked or not. Temporaries an interrupted earlier save left
beside these outputs are removed.

    check_run_outputs(out, run_dir, inputs=[base_model, image_encoder, images], overwrite=False)
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Iterable

from ..errors import IPAdapterError
from ..storage.write_failures import check_writable_folder, remove_stale_temporaries
from .checkpoint import CHECKPOINT_DIR, SavedCheckpoint

log = logging.getLogger(__name__)

# what a run writes into its run folder (previews/runner.py: the previews' grids, scores and page)
RUN_FILES = (CHECKPOINT_DIR, "report.json", "loss.png", "previews", "scores.json", "previews.html")


def _resolved(path: Path) -> Path:
    try:
        return Path(os.path.realpath(path))
    except OSError:
        return Path(os.path.abspath(path))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return _resolved(a) == _resolved(b)


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies anywhere under it (links resolved)."""
    path, folder = _resolved(path), _resolved(folder)
    return path == folder or folder in path.parents


def run_folder_of(checkpoint: SavedCheckpoint) -> Path:
    """The run folder that holds a checkpoint (the checkpoint folder itself if it stands alone)."""
    folder = Path(checkpoint.folder)
    return folder.parent if folder.name == CHECKPOINT_DIR else folder


def _continues(out: Path, resume: SavedCheckpoint | None) -> bool:
    """Whether `out` is the adapter file of the run being resumed, which a resume is meant to replace."""
    if resume is None:
        return False
    written = resume.info.get("adapter")
    if written:
        return _same_file(out, Path(written))
    # checkpoints written before they named their adapter: the default run folder is `<out stem>-run`
    return _same_file(run_folder_of(resume), out.with_name(out.stem + "-run"))


def check_run_outputs(out: Path | None, run_dir: Path, inputs: Iterable[Path | None] = (), overwrite: bool = False,
                      resume: SavedCheckpoint | None = None, others: Iterable[Path] = ()) -> None:
    """Refuse, in one sentence, outputs that would replace an input, an existing file not to be replaced,
    or that lie in a folder that cannot be written; call before loading any model.

    `inputs` are the files and folders the run reads (None entries are skipped); `resume` the opened
    checkpoint, whose folder is an input too, though its run folder may be the run's own. `others` are more
    files the run writes beside `out` (keep="best"'s `<out>-last.safetensors`), held to the same rules.
    """
    for other in others:
        check_run_outputs(other, run_dir, inputs, overwrite or resume is not None, resume)
    out, run_dir = (Path(out) if out is not None else None), Path(run_dir)
    reads = [Path(p) for p in inputs if p is not None]
    if resume is not None:
        reads.append(Path(resume.folder))
    if out is not None:
        for source in reads:
            if (source.is_file() and _same_file(out, source)) or (source.is_dir() and _inside(out, source)):
                raise IPAdapterError(f"The output {out} would write over {source}, which this run reads: "
                                     "choose another --out.")
        if out.is_dir():
            raise IPAdapterError(f"The output {out} is a folder: give a file name ending in .safetensors.")
        if out.exists() and not overwrite and not _continues(out, resume):
            raise IPAdapterError(f"The output {out} already exists: pass --overwrite to replace it, or choose "
                                 "another --out.")
    for source in reads[:len(reads) - (resume is not None)]:  # a resume continues in its own run folder
        if source.is_dir() and _inside(run_dir, source):
            raise IPAdapterError(f"The run folder {run_dir} lies inside {source}, which this run reads (its "
                                 f"{', '.join(RUN_FILES)} would land there): choose another --run-dir.")
    if out is not None:
        check_writable_folder(out.parent, "the output's folder")
    check_writable_folder(run_dir, "the run folder")


def remove_stale_outputs(out: Path | None, run_dir: Path, started: float | None = None) -> None:
    """Remove the temporaries that a run killed mid-save left beside `out` and in `run_dir` (older than
    `started`, a `time.time()`, default now)."""
    started = time.time() if started is None else started
    targets = ([Path(out)] if out is not None else []) + [Path(run_dir) / name for name in RUN_FILES]
    for target in targets:
        remove_stale_temporaries(target, started)


def cancelled_note(done: int, total: int) -> str:
    """The words every record of a cancelled run uses (adapter metadata, report, summaries, the node)."""
    return f"cancelled after {done} of {total} steps"


def last_path(out: Path) -> Path:
    """Where keep="best" puts the last step's adapter: `<out>-last.safetensors` beside the output."""
    return out.with_name(f"{out.stem}-last{out.suffix}")
