"""The adapter's layer table for a graph's MODEL, and the checks that an adapter fits a MODEL and a CLIP_VISION.

The table comes from the core's fixed key table (`layout.adapter_layers`), fed a diffusers-style
description of ComfyUI's UNet config (SD1.5's 16 layers, SDXL's 70, from the same code), and is then
checked against the UNet's actual modules: every key must reach a cross-attention `attn2` of the listed
width, and no cross-attention layer may be left out. So a UNet the table does not describe is refused
instead of silently patched wrongly.
"""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from ..ipadapter_train.api import (FAMILIES, AdapterLayer, IPAdapterError, ModelFamily, adapter_layers,
                                   check_adapter_state, family_of_comfy_unet)
from .queue_checks import ENCODER_FIX  # the same words when queued and when run


def _per_res_block(value: Any, count: int, what: str) -> list[int]:
    values = list(value) if isinstance(value, (list, tuple)) else [int(value)] * count
    if len(values) != count:
        raise IPAdapterError(f"This MODEL's UNet config lists {len(values)} {what} where its blocks need {count}: "
                             "the UNet is not supported.")
    return [int(v) for v in values]


def diffusers_style_config(unet_config: Mapping[str, Any]) -> dict[str, Any]:
    """ComfyUI's UNet config (model_channels, channel_mult, num_res_blocks, transformer_depth per input block,
    transformer_depth_output per output block, transformer_depth_middle) in the fields `adapter_layers` reads:
    block types, widths, res blocks and transformer depth per level, and whether the mid block has attention.

    SD1.5: depth [1,1,1,1,1,1,0,0], middle 1. SDXL: depth [0,0,2,2,10,10], output [0,0,0,2,2,2,10,10,10],
    middle 10. A diffusers config has one depth per level, shared by the down, up and mid blocks, so a
    UNet whose depths it cannot state (SSD-1B's output blocks, say) is refused here in one sentence.
    """
    mult = list(unet_config["channel_mult"])
    n = len(mult)
    res = _per_res_block(unet_config["num_res_blocks"], n, "res-block counts")
    per_input = _per_res_block(unet_config.get("transformer_depth") or 0, sum(res), "input transformer depths")
    levels, pos = [], 0
    for b in range(n):
        block = per_input[pos:pos + res[b]]
        pos += res[b]
        if len(set(block)) != 1:
            raise IPAdapterError(f"This MODEL's UNet has transformer depths {block} within one level: the UNet is "
                                 "not supported.")
        levels.append(block[0])
    output = unet_config.get("transformer_depth_output")
    if output is not None:
        # ComfyUI lists the output blocks' depths in input-level order (level 0's blocks first) and pops from the end.
        want = [d for b in range(n) for d in [levels[b]] * (res[b] + 1)]
        if [int(d) for d in output] != want:
            raise IPAdapterError(f"This MODEL's UNet has output transformer depths {list(output)} where its input "
                                 f"blocks imply {want}: the UNet is not supported.")
    middle = unet_config.get("transformer_depth_middle")
    middle = levels[-1] if middle is None else int(middle)  # None: ComfyUI's default, the deepest level's depth
    middle = max(middle, 0)  # -1: a mid block without attention, -2: no mid block
    # adapter_layers reads the mid block's depth from the last level, as diffusers does: a last level without
    # attention (SD1.5's) carries it; one with attention must have the mid block's depth.
    if middle and levels[-1] and levels[-1] != middle:
        raise IPAdapterError(f"This MODEL's mid block has {middle} transformer blocks where its deepest level has "
                             f"{levels[-1]}: the UNet is not supported.")
    depths = [d if d > 0 else (middle or 1) for d in levels]
    return {
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in levels],
        "up_block_types": ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(levels)],
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


def model_family(model: Any) -> ModelFamily | None:
    """The model family of a ComfyUI MODEL (from its UNet config's context width and extra conditioning), or None."""
    return family_of_comfy_unet(model.model.model_config.unet_config)


def comfy_adapter_layers(model: Any) -> list[AdapterLayer]:
    """The adapter layers of a ComfyUI MODEL (ModelPatcher), each with its attn2 patch key, verified."""
    base = model.model
    unet = base.diffusion_model
    config = diffusers_style_config(base.model_config.unet_config)
    layers = adapter_layers(config)
    for layer in layers:
        attn = attn2_module(unet, layer.comfy_key)
        if attn is None:
            raise IPAdapterError(f"This MODEL's UNet has no cross-attention at {layer.comfy_key} where its config "
                                 "puts one: the UNet is not supported.")
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
    """The cross-attention (text context) width of a ComfyUI MODEL: 768 for SD1.5, 2048 for SDXL."""
    width = model.model.model_config.unet_config.get("context_dim")
    if not width:
        raise IPAdapterError("This MODEL has no cross-attention context: IP-Adapters need a UNet with "
                             f"cross-attention ({', '.join(f.label for f in FAMILIES.values() if f.comfyui)}).")
    return int(width)


def check_adapter_fits(adapter: Any, feature_width: int, encoder_name: str, model: Any,
                       source: str = "The adapter") -> list[AdapterLayer]:
    """Raise IPAdapterError unless the adapter is sound and fits the CLIP_VISION and the MODEL; return the
    MODEL's layers.

    Called by Apply (and Train, for an adapter to fine-tune) before anything samples or trains; the checks
    are the core's (`check_adapter_state`: every key, shape and value; `AdapterSpec.check_fits`, which refuses
    an adapter of another model family first, naming both), as for the CLI and generation.
    """
    check_adapter_state(adapter.state_dict(), source)
    cross = context_width(model)
    layers = comfy_adapter_layers(model)
    adapter.spec.check_fits(feature_width, encoder_name, cross, layers, "this MODEL", source,
                            model_family=model_family(model), metadata=getattr(adapter, "metadata", None),
                            fix=ENCODER_FIX)
    return layers
