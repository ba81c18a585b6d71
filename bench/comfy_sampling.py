"""The ComfyUI side of bench_sampling.py: one UNet step through ComfyUI's own `apply_model`, on the plain
MODEL and on the MODEL that the pack's Apply patch (`nodes.attn_patch.apply_image_prompt`) returns.

ComfyUI is the in-repository copy that `tests/comfyui/setup_comfyui.sh` installs under `.comfyui/ComfyUI`;
`tests/comfyui/comfy_import.py`, which lives beside that script and needs nothing of the tests, puts it
first on sys.path and imports the pack as a package under its own name.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "comfyui"))
from comfy_import import COMFY, comfy_installed, import_comfy, pack  # noqa: E402,F401  (import_comfy: re-exported)

log = logging.getLogger("bench_sampling.comfy")


def comfy_missing() -> str | None:
    """Why the ComfyUI part cannot run (a sentence), or None when the in-repository copy is there."""
    if not comfy_installed():
        return f"ComfyUI is not installed at {COMFY} (run tests/comfyui/setup_comfyui.sh)"
    return None


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
    adapter = pack("ipadapter_train.adapter.module").IPAdapter.new("base", clip_dim, comfy_layers.context_width(model),
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
