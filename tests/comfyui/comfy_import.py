"""Import the in-repository ComfyUI (what `setup_comfyui.sh` installs) and this node pack in one process.

The in-process node tests and `bench/comfy_sampling.py` both need this; it imports neither pytest nor
anything of the tests, so the benchmark can use it too.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMFY = ROOT / ".comfyui" / "ComfyUI"
PACK = "ipadapter_train_pack"  # the name the pack is imported under here (ComfyUI uses its folder path)


def comfy_installed() -> bool:
    """True when setup_comfyui.sh has put a ComfyUI copy in the repository."""
    return (COMFY / "main.py").is_file()


def import_comfy(cpu: bool = True) -> None:
    """Put ComfyUI first on sys.path (in CPU mode if `cpu`) and import the modules the pack needs.

    ComfyUI's own modules `import nodes` (its nodes.py); this repository has a `nodes/` package too, and
    pytest may put the repository root ahead of ComfyUI on sys.path. Putting ComfyUI first and importing
    its `nodes` now makes every later `import nodes` (ComfyUI's server.py has one) find the cached module.
    An installed copy that cannot be imported raises RuntimeError: a broken set-up must fail, not skip.
    """
    if str(COMFY) in sys.path:
        sys.path.remove(str(COMFY))
    sys.path.insert(0, str(COMFY))
    try:
        import comfy.cli_args

        comfy.cli_args.args.cpu = cpu
        import comfy.model_management  # noqa: F401  (reads args.cpu once, at import)
        import comfy_api.latest  # noqa: F401
        import folder_paths  # noqa: F401
        import nodes
    except ImportError as exc:
        raise RuntimeError(f"ComfyUI at {COMFY} cannot be imported ({exc}): rerun tests/comfyui/setup_comfyui.sh") from exc
    if Path(nodes.__file__).resolve() != (COMFY / "nodes.py").resolve():
        raise RuntimeError(f"`import nodes` found {nodes.__file__}, not ComfyUI's nodes.py")


def pack(module: str = ""):
    """Import the node pack (the repository root) as a package, or one of its modules."""
    if PACK not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACK] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"{PACK}.{module}" if module else PACK)
