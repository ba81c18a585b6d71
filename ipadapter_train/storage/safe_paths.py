"""Paths that must stay inside a folder: a user-given relative name resolved under a root, refusing escapes.

    from ipadapter_train.storage.safe_paths import resolve_inside
    folder = resolve_inside("/srv/comfyui/input", "cats")        # /srv/comfyui/input/cats
    resolve_inside("/srv/comfyui/input", "../secrets")          # IPAdapterError

Used wherever a name comes from someone who must not reach the rest of the disk (a client of a ComfyUI
server, an entry of a data set's data.json). The check is made on the resolved path, so `..`, symlinks and
Windows junctions that lead out of the root are refused, not only names that look like an escape.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..errors import IPAdapterError


def is_absolute_anywhere(name: str | os.PathLike) -> bool:
    """True for a name that is absolute (or drive-bound) on POSIX or on Windows, or starts with `~`.

    Checked with both path flavours, so `C:\\data` is refused on Linux too: a server must not give
    a name a meaning that depends on the machine it happens to run on.
    """
    text = os.fspath(name)
    windows = PureWindowsPath(text)
    return (PurePosixPath(text).is_absolute() or windows.is_absolute() or bool(windows.drive)
            or bool(windows.root) or text.startswith("~"))


def resolve_inside(root: str | os.PathLike, relative: str | os.PathLike) -> Path:
    """`root / relative`, fully resolved; raises IPAdapterError when the result is not `root` or inside it.

    `relative` must be relative ("" and "." mean the root itself). Symlinks are followed before the
    check, so a link inside `root` that points elsewhere is refused like `../..`.
    """
    text = os.fspath(relative)
    if is_absolute_anywhere(text):
        raise IPAdapterError(f"{text!r} is an absolute path; give a path relative to {root}.")
    try:
        base = Path(root).resolve()
        candidate = (base / text).resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # null bytes, symlink loops, names the OS refuses
        raise IPAdapterError(f"{text!r} is not a usable path inside {root} ({exc}); give a plain relative path.") from None
    if candidate != base and base not in candidate.parents:
        raise IPAdapterError(f"{text!r} leads out of {root} (through '..' or a link); give a path inside that folder.")
    return candidate
