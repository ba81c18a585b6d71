"""Make the POSIX-only modules unimportable for our code in this process, as they are on Windows.

Used by the portability tests in a subprocess of their own (the block must not leak into the test run):

    import posix_blocker; posix_blocker.install(only_for=("ipadapter_train",))

Only imports made by modules of the given packages are refused. Blocking them for every importer is not
a picture of Windows: libraries pick a platform back end at import (psutil's Linux one imports
`resource`, transformers and torch import `pwd` and `fcntl` on Linux; on Windows they load others).
"""
from __future__ import annotations

import builtins

BLOCKED = ("resource", "fcntl", "pwd")


def install(only_for: tuple[str, ...]) -> None:
    """Refuse the names, for the rest of this process, in modules whose `__name__` starts with one of
    `only_for`, whether or not the module is cached already."""
    real_import = builtins.__import__

    def scoped_import(name, globals=None, locals=None, fromlist=(), level=0):
        # every `import x` / `from x import y` statement calls this, also for a module already cached
        importer = str((globals or {}).get("__name__", ""))
        if level == 0 and name.split(".")[0] in BLOCKED and importer.startswith(only_for):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked to act as Windows)", name=name)
        return real_import(name, globals, locals, fromlist, level)

    builtins.__import__ = scoped_import


def blocked_for(module_name: str) -> bool:
    """True when `import resource` fails in a module of that name: the check that the block works."""
    try:
        # what an `import resource` statement inside that module calls
        builtins.__import__("resource", {"__name__": module_name}, None, (), 0)
    except ImportError:
        return True
    return False
