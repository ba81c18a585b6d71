"""The ComfyUI side of bench_sampling.py: one UNet step through ComfyUI's own `apply_model`, on the plain
MODEL and on the MODEL that the pack's Apply patch (`nodes.attn_patch.apply_image_prompt`) returns.

ComfyUI is the in-repository copy that `tests/comfyui/setup_comfyui.sh` installs under `.comfyui/ComfyUI`.
The set-up mirrors `tests/comfyui/test_nodes_support.py` (not imported: a benchmark must not depend on the
tests): ComfyUI goes first on sys.path and the pack is imported as a package under its own name.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMFY = ROOT / ".comfyui" / "ComfyUI"
PACK = "ipadapter_train_pack"  # the pack's package name here (ComfyUI itself imports it by folder path)

log = logging.getLogger("bench_sampling.comfy")


def comfy_missing() -> str | None:
    """Why the ComfyUI part cannot run (a sentence), or None when the in-repository copy is there."""
    if not (COMFY / "main.py").is_file():
        return f"ComfyUI is not installed at {COMFY} (run tests/comfyui/setup_comfyui.sh)"
    return None


def import_comfy(device: str) -> None:
    """Put ComfyUI on sys.path (CPU mode unless a GPU is asked for) and import the modules the patch needs."""
    # ComfyUI's modules `import nodes` (its nodes.py) and this repository has a `nodes/` package on sys.path
    # too: put ComfyUI first and import its `nodes` now, so every later `import nodes` finds that module.
    if str(COMFY) in sys.path:
        sys.path.remove(str(COMFY))
    sys.path.insert(0, str(COMFY))
    import comfy.cli_args

    comfy.cli_args.args.cpu = device == "cpu"
    import comfy.model_management  # reads args.cpu once, at import: after setting it
    import nodes

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


def load_model(checkpoint: Path, dtype: str):
    """The MODEL (a ModelPatcher) of a single-file checkpoint, by ComfyUI's own loader; no CLIP, no VAE."""
    import torch

    import comfy.sd

    # bf16 asks ComfyUI for bf16 weights; on the CPU it then computes in fp32 with per-layer casts (its
    # `manual_cast`), as a server started with --bf16-unet would. `describe` records which it chose.
    options = {"dtype": torch.bfloat16} if dtype == "bf16" else {"dtype": torch.float32}
    with torch.inference_mode():  # as a server loads
        model, _, _, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=False, output_clip=False,
                                                               model_options=options)
    return model


def describe(model) -> dict:
    """Weight dtype, compute (manual cast) dtype and attention function ComfyUI uses for this MODEL."""
    import comfy.ldm.modules.attention as comfy_attention

    return {"weight_dtype": str(model.model.get_dtype()), "manual_cast_dtype": str(model.model.manual_cast_dtype),
            "attention": getattr(comfy_attention.optimized_attention, "__name__", "?")}


def patched(model, clip_dim: int, seed: int = 0):
    """`model` with the pack's Apply patch of a random base adapter at weight 1 on all its layers.

    The image tokens are the adapter's projection of random CLIP features: the step costs the same as with
    a real image, so no CLIP vision model is loaded.
    """
    import torch

    attn_patch, comfy_layers = pack("nodes.attn_patch"), pack("nodes.comfy_layers")
    layers = comfy_layers.comfy_adapter_layers(model)
    torch.manual_seed(seed)
    adapter = pack("ipadapter_train.adapter").IPAdapter.new("base", clip_dim, comfy_layers.context_width(model),
                                                            layers)
    adapter.eval().requires_grad_(False)
    with torch.no_grad():  # Apply projects once, in fp32 on the CPU, outside sampling
        cond, uncond = adapter.project(torch.randn(1, clip_dim)), adapter.project(torch.randn(1, clip_dim))
        return attn_patch.apply_image_prompt(model, adapter, layers, cond, uncond, weight=1.0)


def step(model, latents, timesteps, text, cond_or_uncond: list[int]) -> tuple[Callable[[], None], Callable[[], object]]:
    """(prepare, run): `run` is one `apply_model` call as comfy.samplers makes it; `prepare` loads the MODEL.

    Loading happens once per sampling in ComfyUI, not per step, so it is kept out of the timed call.
    """
    import torch

    import comfy.model_management

    device = comfy.model_management.get_torch_device()
    sigma = model.get_model_object("model_sampling").sigmas[timesteps.cpu()].to(device)
    # apply_model takes the sampler's x (latent scaled up by the noise level), not the UNet input
    x = latents.to(device) * (sigma ** 2 + 1).sqrt().view(-1, 1, 1, 1)
    options = dict(model.model_options.get("transformer_options", {}))
    options.update(cond_or_uncond=list(cond_or_uncond), sigmas=sigma)
    text = text.to(device)

    def prepare() -> None:
        """Load the MODEL (and its patches) as comfy.samplers does before the first step."""
        with torch.inference_mode():
            comfy.model_management.load_models_gpu([model])

    def run():
        """One CFG step: apply_model on the batch of 2."""
        with torch.inference_mode():  # as ComfyUI samples
            return model.model.apply_model(x, sigma, c_crossattn=text, transformer_options=options)

    return prepare, run
