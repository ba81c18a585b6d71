"""The VAE in the original single-file layout (`first_stage_model.*`): key table and config from shapes.

SD1.5 and SDXL share this layout (SDXL's VAE differs only in its scaling factor, which the family's
shipped config gives). The attention projections are 1x1 convolutions there and linear layers in
diffusers: their entries are `CONV1X1`.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

import torch

from ...errors import IPAdapterError
from .keys import CONV1X1, SAME, Entry, Table, apply_table, diffusers_keys, indices, shape_of

VAE_PREFIX = "first_stage_model."

_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
# The diffusers leaf names that are linear here and 1x1 convolutions in the original layout.
_VAE_LINEAR = re.compile(r"mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$")


def _vae_table(cfg: Mapping[str, Any]) -> Table:
    n = len(cfg["block_out_channels"])
    layers = cfg.get("layers_per_block", 2)
    t: Table = {"quant_conv": ("quant_conv", {}), "post_quant_conv": ("post_quant_conv", {})}
    for part in ("encoder", "decoder"):
        t.update({f"{part}.conv_in": (f"{part}.conv_in", {}), f"{part}.conv_out": (f"{part}.conv_out", {}),
                  f"{part}.conv_norm_out": (f"{part}.norm_out", {}),
                  f"{part}.mid_block.resnets.0": (f"{part}.mid.block_1", _VAE_RESNET),
                  f"{part}.mid_block.resnets.1": (f"{part}.mid.block_2", _VAE_RESNET),
                  f"{part}.mid_block.attentions.0": (f"{part}.mid.attn_1", _VAE_ATTENTION)})
    for b in range(n):
        for a in range(layers):
            t[f"encoder.down_blocks.{b}.resnets.{a}"] = (f"encoder.down.{b}.block.{a}", _VAE_RESNET)
        if b < n - 1:
            t[f"encoder.down_blocks.{b}.downsamplers.0.conv"] = (f"encoder.down.{b}.downsample.conv", {})
        # the original decoder numbers its levels from the lowest resolution up, diffusers the other way
        for a in range(layers + 1):
            t[f"decoder.up_blocks.{b}.resnets.{a}"] = (f"decoder.up.{n - 1 - b}.block.{a}", _VAE_RESNET)
        if b < n - 1:
            t[f"decoder.up_blocks.{b}.upsamplers.0.conv"] = (f"decoder.up.{n - 1 - b}.upsample.conv", {})
    return t


def vae_key_map(vae_config: Mapping[str, Any], keys: Iterable[str] | None = None) -> dict[str, str]:
    """Map every diffusers AutoencoderKL weight name to its `first_stage_model.*` name."""
    if keys is None:
        from diffusers import AutoencoderKL

        keys = diffusers_keys(AutoencoderKL, vae_config)
    return apply_table(keys, _vae_table(vae_config), VAE_PREFIX)


def vae_entries(vae_config: Mapping[str, Any], keys: Iterable[str] | None = None) -> list[Entry]:
    """The VAE's entries: one per weight, the attention projections marked CONV1X1."""
    return [Entry(lk, (dk,), CONV1X1 if _VAE_LINEAR.search(dk) else SAME)
            for dk, lk in vae_key_map(vae_config, keys).items()]


def to_ldm_tensor(diffusers_key: str, tensor: torch.Tensor) -> torch.Tensor:
    """Reshape a diffusers tensor to its original-layout shape (VAE attention linear -> 1x1 conv)."""
    if tensor.ndim == 2 and _VAE_LINEAR.search(diffusers_key):
        return tensor[:, :, None, None]
    return tensor


def from_ldm_tensor(diffusers_key: str, tensor: torch.Tensor) -> torch.Tensor:
    """Reshape an original-layout tensor to its diffusers shape (VAE attention 1x1 conv -> linear)."""
    if tensor.ndim == 4 and _VAE_LINEAR.search(diffusers_key):
        return tensor.reshape(tensor.shape[:2])
    return tensor


def infer_vae_config(sd: Mapping[str, Any], base: Mapping[str, Any] | None = None,
                     source: str = "the checkpoint") -> dict[str, Any]:
    """Read a diffusers AutoencoderKL config from original-layout (`first_stage_model.*`) shapes; values
    the weights cannot tell (norm groups, scaling factor) come from `base`, the family's shipped config."""
    p = VAE_PREFIX
    keys = [k for k in sd if k.startswith(p)]
    if any(k.startswith(p + "taesd") for k in keys):
        raise IPAdapterError(f"{source} carries a TAESD VAE; training needs the full SD VAE (AutoencoderKL).")
    if p + "encoder.conv_in.weight" not in sd:
        raise IPAdapterError(f"{source} has no VAE (first_stage_model.encoder.* weights are missing).")
    levels = indices(keys, re.escape(p) + r"encoder\.down\.(\d+)\.")
    layers = indices(keys, re.escape(p) + r"encoder\.down\.0\.block\.(\d+)\.")
    try:
        widths = [shape_of(sd[p + f"encoder.down.{b}.block.0.conv2.weight"])[0] for b in levels]
        cfg: dict[str, Any] = dict(base or {})
        cfg.update({
            "_class_name": "AutoencoderKL",
            "in_channels": shape_of(sd[p + "encoder.conv_in.weight"])[1],
            "out_channels": shape_of(sd[p + "decoder.conv_out.weight"])[0],
            "latent_channels": shape_of(sd[p + "post_quant_conv.weight"])[0],
            "block_out_channels": widths,
            "layers_per_block": len(layers),
            "down_block_types": ["DownEncoderBlock2D"] * len(widths),
            "up_block_types": ["UpDecoderBlock2D"] * len(widths),
        })
    except KeyError as exc:
        raise IPAdapterError(f"{source} has an incomplete VAE: {exc.args[0]} is missing.") from None
    return cfg
