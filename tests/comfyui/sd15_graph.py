"""A small SD1.5 graph in-process: MODEL, CLIP and VAE built by ComfyUI's own classes from an original-layout
checkpoint state dict held in memory (the one the core's single-file writer would save), a CLIP_VISION of ViT-L/14's
widths at 2 layers, and the core's diffusers model holding the very same weights. Nothing is written or read.

The file loaders (`CheckpointLoaderSimple`, `CLIPVisionLoader`: detection from a file, the sizes ComfyUI recognises)
are the server tests' business (test_server_*.py load the make-test-models files in a real server). Here ComfyUI
reads the UNet config from the state dict (`model_detection.detect_unet_config`) and its SD1.5 classes
(`supported_models.SD15` -> `model_base.BaseModel`, `sd1_clip`, the LDM `AutoencoderKL`, `clip_vision`) load the
weights as `load_state_dict_guess_config` and `clip_vision.load` do, at sizes ComfyUI would not detect from a file:

- UNet: SD1.5's block layout (16 cross-attention layers, the mid block's included, 8 heads, 768-d context) at
  widths 32/64/128/128 instead of 320/640/1280/1280;
- text encoder: CLIP-L's width (768) and vocabulary, 1 layer; VAE: SD's layout at widths 32/32/64/64, 1 res block;
- CLIP vision: ViT-L/14's widths (1024 hidden, 768 embedding; 224 px, 14 px patches), so every adapter width and
  encoder name the tests use stays ViT-L's, at 2 layers with a 256-wide MLP.

The weights are drawn per fan-in (so signals keep their size through the narrow layers), norms and biases random
too (a mixed-up weight shows), and rounded to fp16 first: ComfyUI keeps a CPU text encoder and CLIP vision in
fp16, and with values fp16 holds exactly both sides compute from the same numbers.
"""
from __future__ import annotations

import functools
import json
import math
import tempfile
from pathlib import Path

import torch

UNET_WIDTHS = [32, 64, 128, 128]  # SD1.5's 1:2:4:4 (ComfyUI's group norms need multiples of 32)
VAE = {"block_out_channels": [32, 32, 64, 64], "layers_per_block": 1}
TEXT = {"num_hidden_layers": 1, "intermediate_size": 64}
VISION = {"hidden_size": 1024, "num_hidden_layers": 2, "num_attention_heads": 16, "intermediate_size": 256,
          "projection_dim": 768, "hidden_act": "quick_gelu", "image_size": 224, "patch_size": 14, "num_channels": 3,
          "layer_norm_eps": 1e-5}
UNET_PREFIX = "model.diffusion_model."


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded random weights, fp16-exact: N(0, 1/fan_in) weights, norms near 1, small random biases."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in module.modules():
            is_norm = isinstance(mod, (torch.nn.GroupNorm, torch.nn.LayerNorm))
            for name, p in list(mod._parameters.items()):
                if p is None:
                    continue
                t = torch.randn(p.shape, generator=gen)
                if is_norm and name == "weight":
                    t = 1 + 0.1 * t
                elif name == "bias" or p.ndim < 2:
                    t = 0.1 * t
                else:
                    t = t / math.sqrt(p[0].numel())
                mod._parameters[name] = torch.nn.Parameter(t.half().float(), requires_grad=False)
    return module.eval().requires_grad_(False)


def _configs() -> dict:
    families = _core("families")
    configs = _core("models.random_models").model_configs(families.SD15, "full")
    unet = configs["unet"]
    unet["block_out_channels"] = list(UNET_WIDTHS)
    unet["attention_head_dim"] = _core("models.ldm.unet").head_counts(UNET_WIDTHS, families.SD15.config(
        "unet/config.json"))
    unet["sample_size"] = 8
    configs["vae"].update(VAE)
    configs["text_encoder"].update(TEXT)
    return configs


def _core(module: str):
    from comfy_import import pack

    return pack(f"ipadapter_train.{module}")


@functools.cache
def diffusers_sd15(seed: int = 0):
    """The small SD1.5 as the core's `DiffusionModel` (diffusers UNet and VAE, transformers text encoder), fp32.
    One instance per seed, shared: the tests read it, none changes it."""
    families = _core("families")
    cfgs = _configs()
    unet, vae, texts = _core("models.parts").empty_parts(families.SD15, cfgs["unet"], cfgs["vae"],
                                                         [cfgs["text_encoder"]])
    for i, part in enumerate([unet, vae, *texts]):
        randomize_(part, seed * 4 + i)
    return _core("models.diffusion_model").DiffusionModel(
        families.SD15, unet, vae, texts, _core("models.parts").family_tokenizers(families.SD15),
        families.SD15.config("scheduler/scheduler_config.json"), "small SD1.5 (random weights, in memory)",
        random_weights=True)


def checkpoint_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """`diffusers_sd15(seed)` as an original-layout checkpoint state dict in fp16 (what `save_single_file` writes),
    a fresh dict each call (ComfyUI's loaders take keys out of it)."""
    model = diffusers_sd15(seed)
    keys = _core("models.ldm.keys")
    out = {}
    for part, entries in _core("models.single_file").model_entries(model.family, model.unet, model.vae,
                                                                   model.text_encoders):
        state = part.state_dict()
        for e in entries:
            out[e.ldm] = keys.to_ldm(e, [state[p].detach().half() for p in e.parts])
    return out


def _same_keys(what: str, wanted, given) -> None:
    wanted, given = set(wanted), set(given)
    assert wanted == given, f"{what}: missing {sorted(wanted - given)[:3]}, unexpected {sorted(given - wanted)[:3]}"


def _comfy_model(sd: dict):
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SD15(comfy.model_detection.detect_unet_config(sd, UNET_PREFIX))
    config.set_inference_dtype(torch.float32, None)  # what ComfyUI picks for a UNet on the CPU
    base = config.get_model(sd, UNET_PREFIX)
    given = [k[len(UNET_PREFIX):] for k in sd if k.startswith(UNET_PREFIX)]
    _same_keys("UNet", base.diffusion_model.state_dict(), given)
    base.load_model_weights(sd, UNET_PREFIX)
    device = comfy.model_management.get_torch_device()
    return config, comfy.model_patcher.ModelPatcher(base, load_device=device,
                                                    offload_device=comfy.model_management.unet_offload_device())


def _comfy_vae(config, sd: dict):
    import comfy.sd
    import comfy.utils

    vae_sd = comfy.utils.state_dict_prefix_replace(sd, {k: "" for k in config.vae_key_prefix}, filter_keys=True)
    vae_sd = config.process_vae_state_dict(vae_sd)
    widths = VAE["block_out_channels"]
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": widths[0],
                "ch_mult": [w // widths[0] for w in widths], "num_res_blocks": VAE["layers_per_block"],
                "attn_resolutions": [], "dropout": 0.0}  # ComfyUI's SD VAE config at the small widths
    vae = comfy.sd.VAE(sd=vae_sd, config={"params": {"ddconfig": ddconfig, "embed_dim": 4}})
    _same_keys("VAE", vae.first_stage_model.state_dict(), vae_sd)
    return vae


def _comfy_clip(config, sd: dict):
    import comfy.sd
    import comfy.utils

    clip_sd = config.process_clip_state_dict(sd)
    clip = comfy.sd.CLIP(config.clip_target(state_dict=sd), tokenizer_data=clip_sd,
                         parameters=comfy.utils.calculate_parameters(clip_sd),
                         model_options={"clip_l_model_config": dict(TEXT)})
    missing, unexpected = clip.load_sd(clip_sd, full_model=True)
    assert not unexpected and all(k.endswith(("text_projection.weight", "logit_scale")) for k in missing), missing
    return clip


@functools.cache
def clip_vision_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A CLIP vision model of `VISION`'s shape in the transformers layout (the clip_vision folder's), fp16."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    model = _core("models.random_init").empty_model(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION)))
    randomize_(model, seed * 4 + 3)
    return {k: v.half() for k, v in model.state_dict().items() if not k.endswith("position_ids")}


def _comfy_clip_vision(seed: int):
    import comfy.clip_vision

    with tempfile.TemporaryDirectory() as folder:  # ClipVisionModel reads its config from a JSON file
        path = Path(folder) / "clip_vision_config.json"
        path.write_text(json.dumps({**VISION, "model_type": "clip_vision_model"}))
        clip_vision = comfy.clip_vision.ClipVisionModel(str(path))
    state = dict(clip_vision_state(seed))
    missing, unexpected = clip_vision.load_sd(state)
    assert not missing and not unexpected, (missing, unexpected)
    return clip_vision


@functools.cache
def comfy_sd15(seed: int = 0) -> dict:
    """MODEL (a ModelPatcher over ComfyUI's SD1.5 `BaseModel`), CLIP, VAE and CLIP_VISION with the weights of
    `diffusers_sd15(seed)` (and `clip_vision_state(seed)`), built in inference mode as a server loads models.
    One graph per seed, shared: node tests clone MODEL before they patch it, as ComfyUI's nodes do."""
    sd = checkpoint_state(seed)
    with torch.inference_mode():
        config, model = _comfy_model(sd)
        vae = _comfy_vae(config, sd)
        clip = _comfy_clip(config, sd)
        clip_vision = _comfy_clip_vision(seed)
    return {"model": model, "clip": clip, "vae": vae, "clip_vision": clip_vision}
