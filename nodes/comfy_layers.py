"""The adapter's layer table for a graph's MODEL, and the checks that an adapter fits a MODEL and a CLIP_VISION.

The table comes from the core's fixed key table (`layout.adapter_layers`), fed a diffusers-style
description of ComfyUI's UNet config, and is then checked against the UNet's actual modules: every
key must reach a cross-attention `attn2` of the listed width, and no cross-attention layer may be
left out. So a UNet the table does not describe is refused instead of silently patched wrongly.
"""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from ..ipadapter_train.adapter_check import check_adapter_state
from ..ipadapter_train.errors import IPAdapterError
from ..ipadapter_train.layout import AdapterLayer, adapter_layers


def diffusers_style_config(unet_config: Mapping[str, Any]) -> dict[str, Any]:
    """ComfyUI's UNet config (model_channels, channel_mult, num_res_blocks, transformer_depth) in the
    fields `adapter_layers` reads (block types, widths, layers and transformer depth per level)."""
    mult = list(unet_config["channel_mult"])
    n = len(mult)
    res = unet_config["num_res_blocks"]
    res = list(res) if isinstance(res, (list, tuple)) else [int(res)] * n
    depth_per_block = list(unet_config.get("transformer_depth") or [0] * sum(res))
    middle = unet_config.get("transformer_depth_middle")
    middle = int(middle) if middle is not None and middle > 0 else 0
    levels, pos = [], 0
    for b in range(n):
        levels.append(int(depth_per_block[pos]) if pos < len(depth_per_block) else 0)
        pos += res[b]
    has_attn = [d > 0 for d in levels]
    # adapter_layers reads the mid block's depth from the last level (which has no attention in SD1.5):
    # levels without attention carry the mid depth, the only place it is read. The module check below
    # catches any UNet where this description is wrong.
    depths = [d if d > 0 else (middle or 1) for d in levels]
    return {
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attn)],
        "block_out_channels": [int(unet_config["model_channels"]) * m for m in mult],
        "layers_per_block": res,
        "transformer_layers_per_block": depths,
        "mid_block_type": "UNetMidBlock2DCrossAttn" if middle else None,
    }


def _blocks(unet: nn.Module, kind: str) -> nn.Module | list:
    return {"input": unet.input_blocks, "output": unet.output_blocks, "middle": [unet.middle_block]}[kind]


def attn2_module(unet: nn.Module, key: tuple[str, int, int]) -> nn.Module | None:
    """The `attn2` module ComfyUI patches under `key` = (block, number, transformer_index), or None."""
    kind, number, index = key
    blocks = _blocks(unet, kind)
    if number >= len(blocks):
        return None
    for sub in blocks[number]:
        transformers = getattr(sub, "transformer_blocks", None)
        if transformers is not None and index < len(transformers):
            return getattr(transformers[index], "attn2", None)
    return None


def _cross_attention_count(unet: nn.Module) -> int:
    return sum(1 for name, module in unet.named_modules() if name.endswith(".attn2") and module is not None)


def comfy_adapter_layers(model: Any) -> list[AdapterLayer]:
    """The adapter layers of a ComfyUI MODEL (ModelPatcher), each with its attn2 patch key, verified."""
    base = model.model
    unet = base.diffusion_model
    config = diffusers_style_config(base.model_config.unet_config)
    layers = adapter_layers(config)
    for layer in layers:
        attn = attn2_module(unet, layer.comfy_key)
        if attn is None:
            raise IPAdapterError(f"This MODEL's UNet has no cross-attention at {layer.comfy_key}: its layout is not "
                                 "the SD1.5 one this pack patches.")
        width = attn.to_q.weight.shape[0]
        if width != layer.hidden:
            raise IPAdapterError(f"This MODEL's cross-attention at {layer.comfy_key} is {width} wide where the "
                                 f"layout expects {layer.hidden}: the UNet is not supported.")
    found = _cross_attention_count(unet)
    if found != len(layers):
        raise IPAdapterError(f"This MODEL has {found} cross-attention layers but the layout lists {len(layers)}: "
                             "the UNet is not supported.")
    return layers


def context_width(model: Any) -> int:
    """The cross-attention (text context) width of a ComfyUI MODEL: 768 for SD1.5."""
    width = model.model.model_config.unet_config.get("context_dim")
    if not width:
        raise IPAdapterError("This MODEL has no cross-attention context: IP-Adapters need an SD1.5-style UNet.")
    return int(width)


def check_adapter_fits(adapter: Any, feature_width: int, encoder_name: str, model: Any,
                       source: str = "The adapter") -> list[AdapterLayer]:
    """Raise IPAdapterError unless the adapter is sound and fits the CLIP_VISION and the MODEL; return the
    MODEL's layers.

    Called by Apply (and Train, for an adapter to fine-tune) before anything samples or trains; the checks
    are the core's (`check_adapter_state`: every key, shape and value; `AdapterSpec.check_fits`), as for the
    CLI and generation.
    """
    check_adapter_state(adapter.state_dict(), source)
    cross = context_width(model)
    layers = comfy_adapter_layers(model)
    adapter.spec.check_fits(feature_width, encoder_name, cross, layers, "this MODEL", source)
    return layers
