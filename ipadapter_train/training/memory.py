"""Peak resident memory of this process on Linux, macOS and Windows.

`resource` exists only on POSIX systems, so it is imported inside the function that needs it: the package
must import on Windows, where the peak working set comes from psutil instead. psutil is not a direct
dependency: accelerate (which training needs) and ComfyUI both depend on it, so it is there wherever a
training runs; it is still imported lazily, so a missing one costs one report field, never an import.
"""
from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)


def _rusage_peak() -> int | None:
    """ru_maxrss in bytes, or None where the `resource` module does not exist (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # macOS reports bytes; Linux and the BSDs report KiB
    return int(rss if sys.platform == "darwin" else rss * 1024)


def proc_status_peak(pid: int | str = "self") -> int | None:
    """A process's peak resident set in bytes, from Linux's /proc/<pid>/status (VmHWM), or None elsewhere (or when
    that process is gone). The test harness reads its ComfyUI server's with it."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _psutil_peak() -> int | None:
    """The peak working set in bytes (psutil has it on Windows only), or None."""
    try:
        import psutil
    except ImportError:
        return None
    peak = getattr(psutil.Process().memory_info(), "peak_wset", None)
    return int(peak) if peak else None


def peak_rss_bytes() -> int | None:
    """The most physical memory this process has used so far, in bytes; None where it cannot be read."""
    if sys.platform == "win32":
        sources = (_psutil_peak,)
    else:  # /proc also answers on Linux builds without `resource`
        sources = (_rusage_peak, proc_status_peak, _psutil_peak)
    for source in sources:
        peak = source()
        if peak:
            return peak
    log.debug("peak memory is not measurable on %s", sys.platform)
    return None
