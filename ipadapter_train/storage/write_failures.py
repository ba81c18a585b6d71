"""Failed writes and what they leave behind: one sentence for a write error, a writability check made
before any model loads, and removal of the temporaries a killed atomic write (`weights_io`) left.

    check_writable_folder("out/", "the output's folder")   # IPAdapterError if out/ cannot take a file
    remove_stale_temporaries("out/a.safetensors", run_started)
"""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from pathlib import Path

from ..errors import IPAdapterError
from .weights_io import short_error, temp_sibling

log = logging.getLogger(__name__)

# What a failed write means, by errno (EDQUOT is missing from some platforms' errno module).
WRITE_ERRORS = {code: cause for code, cause in (
    (errno.ENOSPC, "the disk is full"), (getattr(errno, "EDQUOT", None), "the disk quota is used up"),
    (errno.EACCES, "no permission to write there"), (errno.EPERM, "no permission to write there"),
    (errno.EROFS, "the file system is read-only")) if code is not None}
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{12}\.tmp")
# What safetensors itself named its temporary before `weights_io` gave it a private folder (tempfile's
# `.tmp` + 6 characters): removed only when its header says this package wrote it, and long stale.
_BARE_SAFETENSORS_TEMP = re.compile(r"\.tmp[A-Za-z0-9_]{6}")
_BARE_GRACE_SECONDS = 60.0


def write_error(path: str | os.PathLike, err: BaseException, existed: bool) -> IPAdapterError:
    """One sentence for a failed write of `path`: the cause, and that the previous file is intact.

    `err` is an OSError or safetensors' own error, which carries the OS error only in its text
    ("... (os error 28)"); `existed` says whether a previous file was there before the write.
    """
    cause = write_cause(err)
    kept = "the previous file there is intact" if existed else "no partial file was left there"
    return IPAdapterError(f"Could not write {path} ({cause}): {kept}; free some space or choose a writable "
                          "folder, then run again.")


def write_cause(err: BaseException) -> str:
    """A failed write's cause in words ("the disk is full"), from an OSError or the OS error in safetensors' text."""
    code = getattr(err, "errno", None)
    if code is None:
        found = re.search(r"os error (\d+)", str(err))
        code = int(found.group(1)) if found else None
    return WRITE_ERRORS.get(code) or short_error(err)


def check_writable_folder(folder: str | os.PathLike, what: str) -> None:
    """Refuse a folder that cannot take new files, by creating and removing a file in it.

    A missing folder is tested where it would be created (its nearest existing parent), so a check
    creates no folder, and processes of one run checking the same folder at once do not disturb each
    other. `what` names the folder's role in the message ("the output's folder").
    """
    folder = Path(folder)
    probe_at = folder
    while not probe_at.exists() and probe_at.parent != probe_at:
        probe_at = probe_at.parent
    if not probe_at.is_dir():
        raise IPAdapterError(f"Cannot write into {folder} ({what}): {probe_at} is a file, not a folder; "
                             "choose another path.")
    try:
        probe = temp_sibling(probe_at / "write-test")
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        cause = WRITE_ERRORS.get(err.errno) or short_error(err)
        raise IPAdapterError(f"Cannot write into {folder} ({what}): {cause}; choose a writable folder.") from err


def remove_stale_temporaries(path: str | os.PathLike, older_than: float) -> list[Path]:
    """Remove what an interrupted atomic write of `path` left beside it; return what was removed.

    Only `.<name>.<12 hex digits>.tmp` entries (files, or folders of `atomic_write_dir`) modified before
    `older_than` (a `time.time()`) are taken: a write in progress now, by this process or another, is newer.
    """
    path = Path(path)
    removed = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        found = _TEMP_NAME.fullmatch(entry.name)
        bare = (not found and path.suffix == ".safetensors" and _BARE_SAFETENSORS_TEMP.fullmatch(entry.name)
                and _written_by_this_package(entry))
        if not bare and (not found or found.group("name") != path.name):
            continue
        try:
            if entry.lstat().st_mtime >= older_than - (_BARE_GRACE_SECONDS if bare else 0.0):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as err:
            log.debug("could not remove the stale temporary %s: %s", entry, err)
            continue
        log.info("Removed %s, left by an interrupted write of %s.", entry, path)
        removed.append(entry)
    return removed


def _written_by_this_package(entry: Path) -> bool:
    """Whether `entry` is a plain file whose safetensors header carries this package's metadata (an adapter
    file's, `adapter.fileformat.file_metadata`): only the header is read."""
    import json

    try:
        if not entry.is_file() or entry.is_symlink():
            return False
        with open(entry, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 2 <= size <= 1 << 20:
                return False
            header = json.loads(handle.read(size))
    except (OSError, ValueError):
        return False
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(meta, dict) and "ipadapter_train.version" in meta
