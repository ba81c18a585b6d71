"""The UNet in the original single-file layout (`model.diffusion_model.*`): key table, config, family.

One table (diffusers module prefix -> original block name, plus resnet leaf renames) is built from a
diffusers config and serves both directions. The config is read back from weight shapes, since a
single file carries none: levels, residual blocks per level, which levels attend and how deep, the
context width, linear or 1x1-conv transformer projections, and SDXL's extra conditioning
(`label_emb.0` = diffusers' `add_embedding`). The family is read from the same shapes, never from a
file name: the context width and the extra-conditioning width (ComfyUI's `adm_in_channels`).
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from ... import families
from ...errors import IPAdapterError
from .keys import Table, apply_table, diffusers_keys, indices, shape_of

UNET_PREFIX = "model.diffusion_model."
LABEL_EMB = UNET_PREFIX + "label_emb.0.0.weight"

_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
# Checkpoints of other models, by (context width, extra-conditioning width) as ComfyUI 0.3.75's
# supported_models lists them: named in the refusal.
_OTHER_MODELS = {(1024, 0): "an SD2.x", (1280, 2560): "an SDXL refiner", (1024, 1536): "an SD2.1 unCLIP",
                 (1024, 2048): "an SD2.1 unCLIP"}


def _per_block(value: Any, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def _unet_table(cfg: Mapping[str, Any]) -> Table:
    widths = list(cfg["block_out_channels"])
    n = len(widths)
    down_types, up_types = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    layers = _per_block(cfg.get("layers_per_block", 2), n)
    rev_layers = layers[::-1]
    t: Table = {"conv_in": ("input_blocks.0.0", {}), "time_embedding.linear_1": ("time_embed.0", {}),
                "time_embedding.linear_2": ("time_embed.2", {}), "conv_norm_out": ("out.0", {}),
                "conv_out": ("out.2", {}), "mid_block.resnets.0": ("middle_block.0", _UNET_RESNET),
                "mid_block.attentions.0": ("middle_block.1", {}), "mid_block.resnets.1": ("middle_block.2", _UNET_RESNET),
                # SDXL's size/pooled-text conditioning; a UNet without it has no such keys
                "add_embedding.linear_1": ("label_emb.0.0", {}), "add_embedding.linear_2": ("label_emb.0.2", {})}
    i = 1  # input_blocks.0 is conv_in
    for b in range(n):
        for a in range(layers[b]):
            t[f"down_blocks.{b}.resnets.{a}"] = (f"input_blocks.{i}.0", _UNET_RESNET)
            if "CrossAttn" in down_types[b]:
                t[f"down_blocks.{b}.attentions.{a}"] = (f"input_blocks.{i}.1", {})
            i += 1
        if b < n - 1:  # the downsampler is an input block of its own
            t[f"down_blocks.{b}.downsamplers.0.conv"] = (f"input_blocks.{i}.0.op", {})
            i += 1
    o = 0
    for b in range(n):
        for a in range(rev_layers[b] + 1):
            t[f"up_blocks.{b}.resnets.{a}"] = (f"output_blocks.{o}.0", _UNET_RESNET)
            slot = 1
            if "CrossAttn" in up_types[b]:
                t[f"up_blocks.{b}.attentions.{a}"] = (f"output_blocks.{o}.1", {})
                slot = 2
            if b < n - 1 and a == rev_layers[b]:  # the upsampler shares the level's last output block
                t[f"up_blocks.{b}.upsamplers.0.conv"] = (f"output_blocks.{o}.{slot}.conv", {})
            o += 1
    return t


def unet_key_map(unet_config: Mapping[str, Any], keys: Iterable[str] | None = None) -> dict[str, str]:
    """Map every diffusers UNet weight name to its `model.diffusion_model.*` name.

    `keys` are the diffusers state-dict names; without them they are listed from a meta-device UNet.
    """
    if keys is None:
        from diffusers import UNet2DConditionModel

        keys = diffusers_keys(UNet2DConditionModel, unet_config)
    return apply_table(keys, _unet_table(unet_config), UNET_PREFIX)


def head_counts(widths: list[int], base: Mapping[str, Any]) -> int | list[int]:
    """Attention heads per level, which weights do not tell, by the rule of the family's config `base`.

    A single number there is a fixed head count (SD1.5: 8 at every width); a list gives heads of a fixed
    width (SDXL: 320 / 5 = 64 dims), so a narrower test model gets fewer heads of the same width.
    """
    heads = base.get("attention_head_dim", 8)
    if not isinstance(heads, (list, tuple)):
        return heads
    head_dim = base["block_out_channels"][0] // heads[0]
    return [max(1, w // head_dim) for w in widths]


def not_stable_diffusion(keys: list[str], source: str) -> IPAdapterError:
    """The refusal for a file without a `model.diffusion_model.*` UNet, saying what it holds instead."""
    if any(k.startswith("vision_model.") for k in keys):
        return IPAdapterError(f"{source} is a CLIP vision model, not a Stable Diffusion checkpoint.")
    if any(k.startswith(("down_blocks.", "text_model.", "encoder.down_blocks.")) for k in keys):
        return IPAdapterError(f"{source} holds diffusers-format weights of one component: give the "
                              "diffusers model folder (with model_index.json) or a single-file checkpoint instead.")
    return IPAdapterError(f"{source} is not a Stable Diffusion checkpoint in the original single-file "
                          "layout (it has no model.diffusion_model.* weights).")


def family_of_checkpoint(sd: Mapping[str, Any], source: str = "the checkpoint") -> families.ModelFamily:
    """The family of an original-layout checkpoint, read from its UNet's shapes (values: tensors or shapes).

    Anything no family describes (SD2.x, the SDXL refiner, inpainting UNets, ...) is one IPAdapterError.
    """
    keys = list(sd.keys())
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        raise not_stable_diffusion(keys, source)
    to_k = sorted(k for k in keys if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight"))
    if not to_k:
        raise IPAdapterError(f"{source} has a UNet without cross-attention; it is not a Stable Diffusion checkpoint.")
    context = shape_of(sd[to_k[0]])[1]
    adm = shape_of(sd[LABEL_EMB])[1] if LABEL_EMB in sd else 0
    family = families.family_of_comfy_unet({"context_dim": context, "adm_in_channels": adm})
    if family is None:
        kind = _OTHER_MODELS.get((context, adm), "an unsupported")
        extra = f" and {adm}-d extra conditioning" if adm else ""
        known = ", ".join(f"{f.label} ({f.cross_dim}-d" + (f", {f.adm_channels}-d extra)" if f.adm_channels else ")")
                          for f in families.FAMILIES.values())
        raise IPAdapterError(f"{source} is {kind} checkpoint ({context}-d cross-attention{extra}); supported "
                             f"are {known}: choose a checkpoint of one of those.")
    conv_in = UNET_PREFIX + "input_blocks.0.0.weight"
    channels = shape_of(sd[conv_in])[1] if conv_in in sd else 4
    if channels != 4:
        raise IPAdapterError(f"{source} has a UNet with {channels} input channels (an inpainting or other "
                             f"special model); only the 4-channel {family.label} UNet is supported.")
    linear = family.config("unet/config.json").get("use_linear_projection", False)
    proj_in = [k for k in keys if k.startswith(UNET_PREFIX) and k.endswith(".proj_in.weight")]
    if any((len(shape_of(sd[k])) == 2) != linear for k in proj_in):
        raise IPAdapterError(f"{source} has {'1x1-convolution' if linear else 'linear'} transformer projections "
                             f"where {family.label} uses {'linear' if linear else '1x1-convolution'} ones; it is "
                             f"not a {family.label} checkpoint.")
    return family


def read_unet_config(sd: Mapping[str, Any], base: Mapping[str, Any], source: str = "the checkpoint") -> dict[str, Any]:
    """Read a diffusers UNet2DConditionModel config from original-layout (`model.diffusion_model.*`) shapes.

    `base` is the family's shipped config: it gives what the weights cannot tell (heads, by
    `head_counts`; norms; the kind of extra conditioning; sample size).
    """
    p = UNET_PREFIX
    keys = [k for k in sd if k.startswith(p)]

    def has(name: str) -> bool:
        return p + name in sd

    if not has("input_blocks.0.0.weight") or not has("out.2.weight"):
        raise IPAdapterError(f"{source} has an incomplete UNet (input_blocks.0.0 or out.2 is missing).")
    conv_in = shape_of(sd[p + "input_blocks.0.0.weight"])
    widths, layers, attn, depth = [], [], [], []
    i, count, level_attn, level_depth = 1, 0, False, 0
    blocks = indices(keys, re.escape(p) + r"input_blocks\.(\d+)\.")

    def close_level() -> None:
        widths.append(shape_of(sd[p + f"input_blocks.{i - 1}.0.out_layers.3.weight"])[0])
        layers.append(count)
        attn.append(level_attn)
        depth.append(level_depth or 1)  # diffusers wants a depth even for levels without attention

    while i <= (blocks[-1] if blocks else 0):
        if has(f"input_blocks.{i}.0.op.weight"):  # a downsampler closes the level
            close_level()
            count, level_attn, level_depth = 0, False, 0
        elif has(f"input_blocks.{i}.0.in_layers.0.weight"):
            count += 1
            if has(f"input_blocks.{i}.1.proj_in.weight"):
                level_attn = True
                level_depth = len(indices(keys, re.escape(p + f"input_blocks.{i}.1.transformer_blocks.") + r"(\d+)\."))
        else:
            raise IPAdapterError(f"{source} has an unknown UNet input block {i}; the UNet layout is not supported.")
        i += 1
    if count == 0:
        raise IPAdapterError(f"{source} has an incomplete UNet (no residual blocks after the last downsampler).")
    close_level()
    if not has("middle_block.1.proj_in.weight"):
        raise IPAdapterError(f"{source} has a UNet mid block without attention; the UNet layout is not supported.")
    if widths[0] != conv_in[0]:
        raise IPAdapterError(f"{source} has a UNet whose first level width differs from conv_in; "
                             "the UNet layout is not supported.")
    to_k = sorted(k for k in keys if k.endswith("attn2.to_k.weight"))
    proj_in = shape_of(sd[p + "middle_block.1.proj_in.weight"])
    cfg: dict[str, Any] = dict(base)
    cfg.update({
        "_class_name": "UNet2DConditionModel",
        "in_channels": conv_in[1],
        "out_channels": shape_of(sd[p + "out.2.weight"])[0],
        "block_out_channels": widths,
        "layers_per_block": layers[0] if len(set(layers)) == 1 else layers,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in attn[::-1]],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "transformer_layers_per_block": depth[0] if len(set(depth)) == 1 else depth,
        "cross_attention_dim": shape_of(sd[to_k[0]])[1],
        "attention_head_dim": head_counts(widths, base),  # diffusers' historical name: the head *count*
        "use_linear_projection": len(proj_in) == 2,
    })
    if LABEL_EMB in sd:  # the extra conditioning's input width (SDXL: 1280 pooled text + 6 x 256 size embeddings)
        cfg["projection_class_embeddings_input_dim"] = shape_of(sd[LABEL_EMB])[1]
    if cfg["in_channels"] != 4:
        raise IPAdapterError(f"{source} has a UNet with {cfg['in_channels']} input channels (an inpainting or "
                             "other special model); only 4-channel UNets are supported.")
    return cfg
