"""The fixed key table: which UNet cross-attention layer gets which `ip_adapter.<n>` weights.

The official file numbers the UNet's attention processors in diffusers' `unet.attn_processors`
order (down blocks, then up blocks, then the mid block) and gives the cross-attention (`attn2`)
layers the odd numbers 1, 3, 5, ... . The table is computed from a UNet *config*, so it can be
checked on the full SD1.5 shape without allocating the model, and it never depends on module
registration order at run time (the bug of tencent issue #155).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class AdapterLayer:
    """One cross-attention layer that gets `to_k_ip`/`to_v_ip`."""

    index: int  # n in `ip_adapter.<n>.to_k_ip.weight`
    name: str  # diffusers module path of the attention, e.g. "mid_block.attentions.0.transformer_blocks.0.attn2"
    hidden: int  # query width of the layer = output width of to_k_ip / to_v_ip
    comfy_key: tuple[str, int, int]  # ComfyUI attn2 patch key: (block, number, transformer_index)


def _per_block(value: Any, n_blocks: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n_blocks


def adapter_layers(unet_config: Mapping[str, Any]) -> list[AdapterLayer]:
    """List the cross-attention layers of a diffusers `UNet2DConditionModel` config in file order."""
    down_types = list(unet_config["down_block_types"])
    up_types = list(unet_config["up_block_types"])
    widths = list(unet_config["block_out_channels"])
    n = len(widths)
    layers_per_block = _per_block(unet_config.get("layers_per_block", 2), n)
    depth = _per_block(unet_config.get("transformer_layers_per_block", 1), n)
    rev_widths, rev_layers, rev_depth = widths[::-1], layers_per_block[::-1], depth[::-1]

    found: list[tuple[str, int, tuple[str, int, int]]] = []
    comfy_input = 1  # input_blocks.0 is conv_in
    for b, kind in enumerate(down_types):
        for a in range(layers_per_block[b]):
            if "CrossAttn" in kind:
                for t in range(depth[b]):
                    found.append((f"down_blocks.{b}.attentions.{a}.transformer_blocks.{t}.attn2",
                                  widths[b], ("input", comfy_input, t)))
            comfy_input += 1
        if b < n - 1:
            comfy_input += 1  # the downsampler has its own input block
    comfy_output = 0
    for b, kind in enumerate(up_types):
        for a in range(rev_layers[b] + 1):
            if "CrossAttn" in kind:
                for t in range(rev_depth[b]):
                    found.append((f"up_blocks.{b}.attentions.{a}.transformer_blocks.{t}.attn2",
                                  rev_widths[b], ("output", comfy_output, t)))
            comfy_output += 1
    mid_type = unet_config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid_type and "CrossAttn" in mid_type:
        for t in range(depth[-1]):
            found.append((f"mid_block.attentions.0.transformer_blocks.{t}.attn2", widths[-1], ("middle", 0, t)))
    return [AdapterLayer(2 * i + 1, name, hidden, key) for i, (name, hidden, key) in enumerate(found)]


def index_for_module_name(layers: list[AdapterLayer]) -> dict[str, int]:
    """Map a diffusers attention path (with or without `.processor`) to its file index `n`."""
    table: dict[str, int] = {}
    for layer in layers:
        table[layer.name] = layer.index
        table[layer.name + ".processor"] = layer.index
    return table
