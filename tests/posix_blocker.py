"""Make the POSIX-only modules unimportable in this process, as they are on Windows.

Used by the portability tests in a subprocess of their own (the block must not leak into the test run):

    import posix_blocker; posix_blocker.install()

Standard-library and third-party modules that already imported one keep their reference; every later
`import resource` (at module level or inside a function) raises ModuleNotFoundError, as on Windows.
"""
from __future__ import annotations

import importlib.abc
import sys

BLOCKED = ("resource", "fcntl", "pwd")


class _Blocker(importlib.abc.MetaPathFinder):
    """Answers every import of a blocked name with ModuleNotFoundError."""

    def find_spec(self, name, path=None, target=None):
        if name in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked to act as Windows)", name=name)
        return None


def install() -> None:
    """Block the names for the rest of this process."""
    for name in BLOCKED:
        sys.modules.pop(name, None)  # a cached module would be handed out without asking the finders
    sys.meta_path.insert(0, _Blocker())
