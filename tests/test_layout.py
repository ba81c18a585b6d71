"""The core's layout holds: no import circle, each wing imports only the wings below it, and the node pack reaches
the core only through its front door (`ipadapter_train.api`). Read from the source with `ast`, lazy imports
(inside functions) included; `if TYPE_CHECKING:` blocks are left out of the wings' checks (they never run), not out
of the front door's (a node names no type past it either)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
CORE = "ipadapter_train"
# Bottom to top: a module may import its own wing and the wings before it in this list.
WINGS = ("ground", "storage", "models", "adapter", "diffusion", "scoring", "previews", "training", "world", "search",
         "api", "cli")


def module_name(path: Path, root: Path) -> str:
    """`ipadapter_train/adapter/check.py` -> `ipadapter_train.adapter.check` (a package is its __init__)."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runs(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """False for an import under `if TYPE_CHECKING:`, which only type checkers read."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return False
    return True


def imports_of(path: Path, root: Path, modules: set[str]) -> dict[str, int]:
    """Every module of `modules` that the file imports (relative or absolute), with the line of its first import."""
    name = module_name(path, root)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and _runs(node, parents):
            base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]) if node.level \
                else node.module or ""
            base = base.strip(".")
            for alias in node.names:
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                found.setdefault(target, node.lineno)
        elif isinstance(node, ast.Import) and _runs(node, parents):
            for alias in node.names:
                found.setdefault(alias.name, node.lineno)
    return {target: line for target, line in found.items() if target in modules and target != name}


def import_graph(package_dir: Path) -> dict[str, dict[str, int]]:
    """Module -> the modules of the same package it imports (with line numbers)."""
    root = package_dir.parent
    files = sorted(package_dir.rglob("*.py"))
    modules = {module_name(p, root) for p in files}
    return {module_name(p, root): imports_of(p, root, modules) for p in files}


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The import circles of `graph` (strongly connected groups of more than one module, or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def wing_of(module: str) -> str:
    """The wing a core module lives in: its sub-package, `api`, `cli` for `__main__`, else the ground."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in WINGS:
        return parts[1]
    return "cli" if parts[-1] == "__main__" else "ground"


def upward_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    """Each import that runs from a wing up to a wing above it, as 'module:line -> module'."""
    return [f"{m}:{line} -> {t}" for m, targets in graph.items() for t, line in targets.items()
            if WINGS.index(wing_of(t)) > WINGS.index(wing_of(m))]


def test_the_core_has_no_import_circle():
    assert circles(import_graph(ROOT / CORE)) == []


def test_each_wing_imports_only_its_own_and_the_wings_below_it():
    graph = import_graph(ROOT / CORE)
    assert {wing_of(m) for m in graph} == set(WINGS)  # every wing exists (a renamed one would slip through)
    assert upward_imports(graph) == []


def test_every_wing_says_what_lives_in_it():
    for init in sorted((ROOT / CORE).glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc) > 80, f"{init.parent.name}/ has no docstring saying where a change goes"


@pytest.mark.parametrize("planted,expected", [
    ({"a.py": "from . import b\n", "b.py": "def f():\n    from .a import x\n"}, [["pkg.a", "pkg.b"]]),
    ({"a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import x\n",
      "b.py": "from .a import y\n"}, []),
    ({"sub/__init__.py": "", "sub/c.py": "from ..a import z\n", "a.py": "from .sub.c import w\n"},
     [["pkg.a", "pkg.sub.c"]]),
])
def test_the_circle_check_finds_a_planted_circle_lazy_or_relative(tmp_path, planted, expected):
    pkg = tmp_path / "pkg"
    for name, text in {"__init__.py": "", **planted}.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    assert circles(import_graph(pkg)) == expected


def test_the_wing_check_finds_an_import_running_up():
    graph = {"ipadapter_train.storage.data": {"ipadapter_train.training.trainer": 3},
             "ipadapter_train.cli.main": {"ipadapter_train.api": 1}}
    assert upward_imports(graph) == ["ipadapter_train.storage.data:3 -> ipadapter_train.training.trainer"]


FRONT_DOOR = f"{CORE}.api"


def core_imports_past_the_front_door(pack: Path) -> list[str]:
    """Each import of the core in the node pack (nodes/*.py and the pack's __init__.py, lazy and type-only imports
    included) that is not `from ..ipadapter_train.api import ...` (`.ipadapter_train.api` from the pack's root), as
    'file:line module'. An absolute import of the core counts too: inside ComfyUI the pack is not on sys.path."""
    found = []
    for path in [pack / "__init__.py", *sorted((pack / "nodes").glob("*.py"))]:
        package = path.relative_to(pack).parts[:-1]  # () for the root, ("nodes",) for a node module
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    targets = [node.module or ""]
                elif node.level - 1 > len(package):
                    continue  # above the pack: not the core
                else:
                    base = ".".join([*package[:len(package) - node.level + 1], node.module or ""]).strip(".")
                    targets = [base] if node.module else [f"{base}.{alias.name}".strip(".") for alias in node.names]
                relative_ok = node.level > 0
            elif isinstance(node, ast.Import):
                targets, relative_ok = [alias.name for alias in node.names], False
            else:
                continue
            for target in targets:
                if (target == CORE or target.startswith(CORE + ".")) and not (relative_ok and target == FRONT_DOOR):
                    found.append(f"{path.relative_to(pack).as_posix()}:{node.lineno} {target}")
    return found


def test_the_nodes_reach_the_core_only_through_its_front_door():
    assert core_imports_past_the_front_door(ROOT) == []


def test_the_front_door_check_finds_a_planted_import_past_it(tmp_path):
    (tmp_path / "nodes").mkdir()
    (tmp_path / "__init__.py").write_text("async def comfy_entrypoint():\n"
                                          "    from .ipadapter_train.errors import IPAdapterError\n")
    (tmp_path / "nodes" / "good.py").write_text("from ..ipadapter_train.api import TrainConfig, train\n"
                                                "from .runs import RunReporter\nimport torch\n")
    (tmp_path / "nodes" / "bad.py").write_text(
        "from ..ipadapter_train.training.trainer import train\n"
        "from ..ipadapter_train import api\n"
        "import ipadapter_train.api\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..ipadapter_train.config import TrainConfig\n"
        "def lazy():\n    from ..ipadapter_train.previews.rounds import PREVIEW_BUDGET\n")
    assert core_imports_past_the_front_door(tmp_path) == [
        "__init__.py:2 ipadapter_train.errors",
        "nodes/bad.py:1 ipadapter_train.training.trainer", "nodes/bad.py:2 ipadapter_train",
        "nodes/bad.py:3 ipadapter_train.api", "nodes/bad.py:6 ipadapter_train.config",
        "nodes/bad.py:8 ipadapter_train.previews.rounds"]
