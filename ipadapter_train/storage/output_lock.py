"""One writer per output: an OS lock held while a run (or a save) writes a file, so a second one is refused.

    with output_lock(out, "--out"):          # IPAdapterError at once if another process holds it
        train_and_save(out)

The lock is the operating system's (`flock` on POSIX, `msvcrt.locking` on Windows) on a hidden file beside
the output, `.NAME.lock`: the system drops it when the holding process dies, kill -9 included, so a crash never
leaves a lock that blocks the next run. The file is removed on release, so a finished run leaves nothing; a
process that took a lock on a file another one was removing looks again (the inode check below). Both modules
are imported inside the functions, so the package imports on every platform; where neither exists, the output is
written unguarded, with a warning.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path
from typing import Iterator

from ..errors import IPAdapterError

log = logging.getLogger(__name__)


def lock_path(path: Path) -> Path:
    """The lock file of output `path`: `.NAME.lock` beside it."""
    return path.with_name(f".{path.name}.lock")


def _locker() -> str | None:
    """Which OS lock this platform has: "flock" (POSIX), "msvcrt" (Windows), or None (neither importable)."""
    try:
        import fcntl  # noqa: F401
        return "flock"
    except ImportError:
        pass
    try:
        import msvcrt  # noqa: F401
        return "msvcrt"
    except ImportError:
        return None


def _try_lock(fd: int, locker: str) -> bool:
    """Take the lock on the open file `fd` without waiting; False when another process holds it."""
    if locker == "msvcrt":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as err:  # some file systems report contention as EACCES
        if err.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk, held = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def _acquire(path: Path, locker: str) -> int | None:
    """The open, locked lock file of `path`, or None when another process holds it."""
    lock = lock_path(path)
    for _ in range(20):  # another holder may remove the file between our open and our lock: open it again
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        if not _try_lock(fd, locker):
            os.close(fd)
            return None
        if _same_file(fd, lock):
            return fd
        os.close(fd)
    raise IPAdapterError(f"Cannot take the lock {lock}: it keeps being replaced; try again.")


def _release(fd: int, path: Path, locker: str) -> None:
    lock = lock_path(path)
    if locker == "flock":  # removed while still held, so no one takes a lock on a file that is going away
        with contextlib.suppress(OSError):
            os.unlink(lock)
    os.close(fd)  # closing drops the lock (on Windows too: the byte range lock goes with the handle)
    if locker == "msvcrt":  # Windows cannot remove an open file: remove it once closed, unless another has it open
        with contextlib.suppress(OSError):
            os.unlink(lock)


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, what: str = "the output") -> Iterator[None]:
    """Hold the lock of output `path` for the block; refuse at once, in one sentence, if another process holds it.

    `what` names the output as the user gave it (an option such as "--out", or "the adapter"). The folder of
    `path` is created when missing (the run would create it anyway).
    """
    path = Path(path)
    locker = _locker()
    if locker is None:  # a platform with neither module: go on unguarded rather than refuse to train
        log.warning("This platform has no file lock (neither fcntl nor msvcrt): %s is not guarded against a "
                    "second run writing it at the same time.", path)
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path, locker)
    except OSError as err:
        raise IPAdapterError(f"Cannot lock {path} ({what}) against other runs: {err.strerror or err}; choose a "
                             "writable folder.") from err
    if fd is None:
        raise IPAdapterError(f"Another run is writing {path} ({what}) now: wait until it has finished, or "
                             "choose another output.")
    try:
        yield
    finally:
        _release(fd, path, locker)
