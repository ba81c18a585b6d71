"""A tiny SDXL graph in-process: ComfyUI's own SDXL model class (`supported_models.SDXL` -> `model_base.SDXL`, whose
`encode_adm` builds the UNet's `y`), ComfyUI's own SDXL CLIP (`sdxl_clip.SDXLClipModel`: CLIP-L and bigG, their
penultimate states side by side, bigG's projected pooled output) and tokenizer, at tiny depths; and diffusers modules
holding the very same weights for the core's back end.

ComfyUI detects a checkpoint as SDXL only at SDXL's full block structure (5 GB), so the tiny model is built from
its config here, not loaded from a file. Its structure keeps everything that differs from SD1.5: 2048-d context, a
2816-d ADM input (1280 pooled + 6 x 256 size/crop embeddings), a level without attention, two transformer blocks
per attention, linear projections. The UNet weights cross over through ComfyUI's own key map
(`comfy.utils.unet_to_diffusers`), the text encoders' through their shared transformers names.

Every weight is rounded to fp16 first: ComfyUI keeps a CPU text encoder in fp16, and with values fp16 holds
exactly both sides compute from the same numbers.
"""
from __future__ import annotations

import functools

import torch

# ComfyUI's unet_config for the tiny UNet, as `model_detection` writes one (SDXL's keys, tiny sizes).
UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 32,
    "num_res_blocks": [1, 1], "transformer_depth": [0, 2], "channel_mult": [1, 2], "transformer_depth_middle": 2,
    "use_linear_in_transformer": True, "context_dim": 2048, "transformer_depth_output": [0, 0, 2, 2],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
HEAD_CHANNELS = 32  # 2 heads in the 64-wide attention (ComfyUI's SDXL default is 64-d heads)
TEXT_LAYERS, TEXT_FF = 3, 64  # the penultimate state needs at least 3 layers in ComfyUI


def _fp16_exact(*modules: torch.nn.Module) -> None:
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.copy_(p.half().float())


@functools.lru_cache(maxsize=None)
def _diffusers_parts(seed: int = 0):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32, cross_attention_dim=2048,
        attention_head_dim=(1, 2), transformer_layers_per_block=(1, 2), use_linear_projection=True, sample_size=8,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    with torch.no_grad():  # norms and biases start at 1 / 0: make them random, so a mix-up of any weight shows
        for name, p in unet.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    clip_l = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=TEXT_FF, num_hidden_layers=TEXT_LAYERS,
                                          num_attention_heads=12, vocab_size=49408, max_position_embeddings=77,
                                          hidden_act="quick_gelu"))
    clip_g = CLIPTextModelWithProjection(CLIPTextConfig(
        hidden_size=1280, intermediate_size=TEXT_FF, num_hidden_layers=TEXT_LAYERS, num_attention_heads=20,
        vocab_size=49408, projection_dim=1280, max_position_embeddings=77, hidden_act="gelu"))
    for m in (unet, clip_l, clip_g):
        m.eval().requires_grad_(False)
    _fp16_exact(unet, clip_l, clip_g)
    return unet, clip_l, clip_g


def diffusers_sdxl(seed: int = 0):
    """The tiny SDXL as the core's `DiffusionModel` (no VAE: the parity tests feed latents), fp32."""
    import copy

    from comfy_import import pack

    families = pack("ipadapter_train.families")
    sd15 = pack("ipadapter_train.models.sd15")
    unet, clip_l, clip_g = (copy.deepcopy(m) for m in _diffusers_parts(seed))
    tok_g = sd15.load_tokenizer()
    tok_g.pad_token = "!"  # bigG pads with "!" (id 0), as ComfyUI's SDXL tokenizer does
    model = pack("ipadapter_train.models.diffusion_model").DiffusionModel(
        families.SDXL, unet, None, [clip_l, clip_g], [sd15.load_tokenizer(), tok_g],
        families.SDXL.config("scheduler/scheduler_config.json"), "tiny SDXL (random weights)", random_weights=True)
    return model


def _comfy_names(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model's weights under ComfyUI's names (`text_model.*`, `text_projection.weight`);
    transformers 5 may drop the `text_model.` level from its own state dict."""
    out = {}
    for key, value in encoder.state_dict().items():
        if key.endswith("position_ids"):
            continue
        out[key if key.startswith(("text_model.", "text_projection.")) else f"text_model.{key}"] = value
    return out


@functools.lru_cache(maxsize=None)
def comfy_sdxl(seed: int = 0) -> dict:
    """MODEL (a ModelPatcher over ComfyUI's `model_base.SDXL`) and CLIP (ComfyUI's SDXL CLIP) with the weights of
    `diffusers_sdxl(seed)`, built in inference mode as a server loads models."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models
    import comfy.utils

    unet, clip_l, clip_g = _diffusers_parts(seed)
    with torch.inference_mode():
        config = comfy.supported_models.SDXL(dict(UNET_CONFIG))
        config.unet_config["num_head_channels"] = HEAD_CHANNELS  # after the class's own 64-d default
        config.set_inference_dtype(torch.float32, None)
        base = config.get_model({})
        names = comfy.utils.unet_to_diffusers(config.unet_config)
        state = {names[k]: v for k, v in unet.state_dict().items()}
        base.diffusion_model.load_state_dict(state, strict=True)
        device = comfy.model_management.get_torch_device()
        model = comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)

        sizes = {"num_hidden_layers": TEXT_LAYERS, "intermediate_size": TEXT_FF}
        clip = comfy.sd.CLIP(config.clip_target(), model_options={"clip_l_model_config": sizes,
                                                                  "clip_g_model_config": sizes})
        encoders = clip.cond_stage_model
        missing, unexpected = encoders.clip_l.transformer.load_state_dict(_comfy_names(clip_l), strict=False)
        assert list(missing) == ["text_projection.weight"] and not unexpected, (missing, unexpected)  # unused in SDXL
        encoders.clip_g.transformer.load_state_dict(_comfy_names(clip_g), strict=True)
    return {"model": model, "clip": clip}


def bare_model(config_class=None, markers: dict | None = None, **unet_changes):
    """A MODEL (ModelPatcher) of ComfyUI's `config_class` (default: its SDXL class) over the tiny UNet config with
    `unet_changes`, weights left unset: for the checks made before anything runs. `markers` are the state-dict keys
    ComfyUI reads the prediction type from (e.g. {"v_pred": ...})."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    with torch.inference_mode():
        config = (config_class or comfy.supported_models.SDXL)({**UNET_CONFIG, **unet_changes})
        config.unet_config["num_head_channels"] = HEAD_CHANNELS
        config.set_inference_dtype(torch.float32, None)
        base = config.get_model(dict(markers or {}))
        device = comfy.model_management.get_torch_device()
        return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)
