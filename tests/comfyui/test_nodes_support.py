"""Shared set-up for the in-process node tests (no server): ComfyUI on sys.path in CPU mode, the pack
imported as a package, and random-weight models written once per test session.

Every test module of the node pack imports from here. When the ComfyUI copy that
`tests/comfyui/setup_comfyui.sh` installs is missing, or its requirements are not importable, the
node tests are skipped (the core's tests never need ComfyUI).
"""
from __future__ import annotations

import atexit
import functools
import importlib
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMFY = ROOT / ".comfyui" / "ComfyUI"
PACK = "ipadapter_train_pack"  # the name the tests import the pack under (ComfyUI uses its folder path)


def comfy_or_skip() -> None:
    """Put ComfyUI on sys.path in CPU mode, or skip the calling test module."""
    if not (COMFY / "main.py").is_file():
        pytest.skip("ComfyUI is not installed (run tests/comfyui/setup_comfyui.sh)", allow_module_level=True)
    # ComfyUI's own modules `import nodes` (its nodes.py); this repository has a `nodes/` package too, and
    # pytest may put the repository root ahead of ComfyUI on sys.path. Put ComfyUI first and import its
    # `nodes` now, so every later `import nodes` (ComfyUI's server.py has one) finds the cached module.
    if str(COMFY) in sys.path:
        sys.path.remove(str(COMFY))
    sys.path.insert(0, str(COMFY))
    try:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        import comfy.model_management  # noqa: F401  (reads args.cpu once, at import)
        import comfy_api.latest  # noqa: F401
        import folder_paths  # noqa: F401
        import nodes
    except ImportError as exc:  # installed but not importable: a broken setup must fail, not skip
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


@functools.lru_cache(maxsize=None)
def model_files() -> dict[str, Path]:
    """sd15-tiny.safetensors (ComfyUI-loadable SD1.5) and clip-vision-vit-l.safetensors, written once."""
    folder = Path(tempfile.mkdtemp(prefix="ipadapter-train-nodes-"))
    atexit.register(shutil.rmtree, folder, True)
    return pack("ipadapter_train.testmodels").make_test_models(folder, size="tiny", vision="vit-l")


@functools.lru_cache(maxsize=None)
def comfy_models() -> dict:
    """MODEL, CLIP, VAE and CLIP_VISION loaded by ComfyUI's own loaders, in inference mode as a server does."""
    import torch

    import comfy.clip_vision
    import comfy.sd

    files = model_files()
    with torch.inference_mode():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(files["sd15"]), output_vae=True,
                                                                     output_clip=True)
        clip_vision = comfy.clip_vision.load(str(files["clip_vision"]))
    return {"model": model, "clip": clip, "vae": vae, "clip_vision": clip_vision}


@functools.lru_cache(maxsize=None)
def diffusers_sd15():
    """The same single file loaded by the core into diffusers modules (fp32)."""
    return pack("ipadapter_train.sd15").load_sd15(model_files()["sd15"])


def random_adapter(variant: str, clip_dim: int, layers, seed: int = 1):
    """An adapter with non-trivial random weights everywhere (norms included)."""
    import torch

    core = pack("ipadapter_train.adapter")
    torch.manual_seed(seed)
    adapter = core.IPAdapter.new(variant, clip_dim, 768, layers)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    adapter.metadata = {"note": "random test adapter"}
    return adapter.requires_grad_(False)
