"""Lets the package index's torchvision (built against CUDA) import beside a CPU-only torch.

ComfyUI imports `torchvision.transforms` at start-up. That wheel's compiled `_C` library needs CUDA
libraries a CPU torch lacks; torchvision then still registers fake kernels for its `nms`/`qnms` ops,
which fails because their schemas were never defined. Defining the two schemas first (no kernels)
lets the pure-Python parts import; the compiled ops raise if ever called. Installed as a `.pth` hook
into the test environment only, never into the package.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


class _DefineMissingOps(importlib.abc.MetaPathFinder):
    """Acts once, on the first `import torchvision`, and only when its `_C` library cannot load."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname)
        if spec is None or not spec.submodule_search_locations:
            return None
        import pathlib

        import torch

        folder = pathlib.Path(next(iter(spec.submodule_search_locations)))
        compiled = sorted(folder.glob("_C*.so"))
        if not compiled:
            return None
        try:
            torch.ops.load_library(str(compiled[0]))
        except (OSError, ImportError):
            for op in ("nms", "qnms"):
                try:
                    torch.library.define(f"torchvision::{op}", _SCHEMA)
                except RuntimeError:  # already defined
                    pass
        return None  # let the regular finders import it


sys.meta_path.insert(0, _DefineMissingOps())
