"""Key mapping between diffusers module names and the original single-file SD1.5 layout.

A single-file checkpoint keeps the UNet under `model.diffusion_model.*`, the VAE under
`first_stage_model.*` and the CLIP-L text encoder under `cond_stage_model.transformer.text_model.*`.
One table per model (diffusers module prefix -> original module prefix, plus leaf renames) is
built from a diffusers config and used both ways: diffusers -> original to write a file, and
original -> diffusers to read one. The configs themselves are read back from weight shapes, since
a single file carries none. Every function here accepts tensors or bare shapes, so the full SD1.5
layout can be checked without allocating it.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

import torch

from .errors import IPAdapterError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."
OLD_TEXT_PREFIX = "cond_stage_model.transformer."  # pre-2022 transformers kept no `text_model.` level
SD15_CONTEXT_DIM = 768
SD15_HEADS = 8  # weights do not tell the head count; SD1.5 uses 8 everywhere

_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
# The VAE attention projections are 1x1 convolutions [C, C, 1, 1] in the original layout and
# linear layers [C, C] in diffusers: these diffusers leaf names need a reshape in either direction.
_VAE_LINEAR = re.compile(r"mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$")

Table = dict[str, tuple[str, dict[str, str]]]  # diffusers module prefix -> (original prefix, leaf renames)


def _shape(value: Any) -> tuple[int, ...]:
    """Shape of a tensor, a torch.Size or a plain tuple."""
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


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
                "mid_block.attentions.0": ("middle_block.1", {}), "mid_block.resnets.1": ("middle_block.2", _UNET_RESNET)}
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


def _apply_table(keys: Iterable[str], table: Table, prefix: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        for j in range(len(parts) - 1, 0, -1):
            module = ".".join(parts[:j])
            if module in table:
                target, renames = table[module]
                leaf = ".".join(parts[j:])
                for old in sorted(renames, key=len, reverse=True):
                    if leaf == old or leaf.startswith(old + "."):
                        leaf = renames[old] + leaf[len(old):]
                        break
                out[key] = f"{prefix}{target}.{leaf}"
                break
        else:
            # a key the table does not know means diffusers changed its layout: fail loudly
            raise IPAdapterError(f"The diffusers weight {key} has no place in the single-file layout; "
                                 "this diffusers version is not supported.")
    if len(set(out.values())) != len(out):
        raise IPAdapterError("The single-file key table maps two diffusers weights to one name; this is a bug.")
    return out


def _diffusers_keys(cls: Any, config: Mapping[str, Any]) -> list[str]:
    from accelerate import init_empty_weights  # meta tensors: listing keys allocates nothing

    with init_empty_weights(include_buffers=False):
        model = cls.from_config(dict(config))
    return list(model.state_dict().keys())


def unet_key_map(unet_config: Mapping[str, Any], keys: Iterable[str] | None = None) -> dict[str, str]:
    """Map every diffusers UNet weight name to its `model.diffusion_model.*` name.

    `keys` are the diffusers state-dict names; without them they are listed from a meta-device UNet.
    """
    if keys is None:
        from diffusers import UNet2DConditionModel

        keys = _diffusers_keys(UNet2DConditionModel, unet_config)
    return _apply_table(keys, _unet_table(unet_config), UNET_PREFIX)


def vae_key_map(vae_config: Mapping[str, Any], keys: Iterable[str] | None = None) -> dict[str, str]:
    """Map every diffusers AutoencoderKL weight name to its `first_stage_model.*` name."""
    if keys is None:
        from diffusers import AutoencoderKL

        keys = _diffusers_keys(AutoencoderKL, vae_config)
    return _apply_table(keys, _vae_table(vae_config), VAE_PREFIX)


def text_key_map(keys: Iterable[str], ldm_prefix: str = TEXT_PREFIX) -> dict[str, str]:
    """Map transformers CLIPTextModel names to their `cond_stage_model.*` names.

    transformers 5 names them `embeddings.*`/`encoder.*`/`final_layer_norm.*`, older versions kept a
    `text_model.` level: both map to the same original name.
    """
    out = {}
    for key in keys:
        out[key] = ldm_prefix + (key[len("text_model."):] if key.startswith("text_model.") else key)
    return out


def find_text_prefix(keys: Iterable[str]) -> str | None:
    """Return the prefix the checkpoint keeps its CLIP-L text encoder under, or None."""
    keys = set(keys)
    for prefix in (TEXT_PREFIX, OLD_TEXT_PREFIX):
        if prefix + "embeddings.token_embedding.weight" in keys:
            return prefix
    return None


# The DDPM noise schedule that original (LDM) checkpoints store next to the models; diffusers and this
# package rebuild it from the scheduler config.
_SCHEDULE_BUFFERS = frozenset((
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "model_ema.decay", "model_ema.num_updates"))


def is_known_unused(key: str) -> bool:
    """True for entries that single-file SD1.5 checkpoints often carry and no SD1.5 model part uses.

    EMA copies of the UNet, the noise schedule's buffers, CLIP's position ids (transformers rebuilds
    them), the projection and logit scale of CLIP's contrastive head (the text encoder stops before it)
    and the VAE's training loss (LPIPS and discriminator weights).
    """
    if key in _SCHEDULE_BUFFERS or key.startswith(("model_ema.", VAE_PREFIX + "loss.")):
        return True
    if key.startswith("cond_stage_model."):
        return key.endswith(("position_ids", "text_projection", "text_projection.weight", "logit_scale"))
    return False


def summarize_keys(keys: Iterable[str], limit: int = 6) -> str:
    """Describe many checkpoint keys in one short phrase: a group of more than 3 keys under one top-level
    name becomes `name.* (N)`, other keys are named; at most `limit` items, then how many more."""
    groups: dict[str, list[str]] = {}
    for key in sorted(keys):
        groups.setdefault(key.split(".", 1)[0] + ".*" if "." in key else "top-level", []).append(key)
    items: list[str] = []
    for name, members in groups.items():
        if len(members) <= 3:
            items.extend(members)
        elif name == "top-level":
            items.append(f"{len(members)} top-level tensors ({', '.join(members[:2])}, ...)")
        else:
            items.append(f"{name} ({len(members)})")
    if len(items) > limit:
        items = items[:limit] + [f"and {len(items) - limit} more"]
    return ", ".join(items)


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


def _indices(keys: Iterable[str], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def check_sd15(sd: Mapping[str, Any], source: str) -> None:
    """Raise IPAdapterError unless `sd` looks like an original-layout SD1.5 checkpoint."""
    keys = list(sd.keys())
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        if any(k.startswith("vision_model.") for k in keys):
            raise IPAdapterError(f"{source} is a CLIP vision model, not a Stable Diffusion 1.5 checkpoint.")
        if any(k.startswith(("down_blocks.", "text_model.", "encoder.down_blocks.")) for k in keys):
            raise IPAdapterError(f"{source} holds diffusers-format weights of one component: give the "
                                 "diffusers model folder (with model_index.json) or a single-file checkpoint instead.")
        raise IPAdapterError(f"{source} is not a Stable Diffusion checkpoint in the original single-file "
                             "layout (it has no model.diffusion_model.* weights).")
    if f"{UNET_PREFIX}label_emb.0.0.weight" in sd or any(k.startswith("conditioner.") for k in keys):
        raise IPAdapterError(f"{source} is an SDXL (or other class-conditioned) checkpoint; "
                             "only Stable Diffusion 1.5 is supported.")
    to_k = [k for k in keys if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight")]
    if not to_k:
        raise IPAdapterError(f"{source} has a UNet without cross-attention; it is not a Stable Diffusion 1.5 checkpoint.")
    context = _shape(sd[to_k[0]])[1]
    if context != SD15_CONTEXT_DIM:
        kind = {1024: "an SD2.x", 2048: "an SDXL"}.get(context, "a non-SD1.5")
        raise IPAdapterError(f"{source} is {kind} checkpoint (cross-attention width {context}); only "
                             f"Stable Diffusion 1.5 (width {SD15_CONTEXT_DIM}) is supported.")
    proj_in = [k for k in keys if k.startswith(UNET_PREFIX) and k.endswith(".proj_in.weight")]
    if any(len(_shape(sd[k])) == 2 for k in proj_in):
        raise IPAdapterError(f"{source} uses linear transformer projections (SD2.x style); only "
                             "Stable Diffusion 1.5 is supported.")
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise IPAdapterError(f"{source} has an OpenCLIP text encoder (SD2.x); only Stable Diffusion 1.5 is supported.")


def infer_unet_config(sd: Mapping[str, Any], base: Mapping[str, Any] | None = None,
                      source: str = "the checkpoint") -> dict[str, Any]:
    """Read a diffusers UNet2DConditionModel config from original-layout (`model.diffusion_model.*`) shapes.

    Values the weights cannot tell (heads, norms, sample size) come from `base`, else diffusers defaults.
    """
    check_sd15(sd, source)
    p = UNET_PREFIX
    keys = [k for k in sd if k.startswith(p)]

    def has(name: str) -> bool:
        return p + name in sd

    conv_in = _shape(sd[p + "input_blocks.0.0.weight"])
    widths, layers, attn, depth = [], [], [], []
    i, count, level_attn, level_depth = 1, 0, False, 0
    blocks = _indices(keys, re.escape(p) + r"input_blocks\.(\d+)\.")
    while i <= (blocks[-1] if blocks else 0):
        if has(f"input_blocks.{i}.0.op.weight"):  # a downsampler closes the level
            widths.append(_shape(sd[p + f"input_blocks.{i - 1}.0.out_layers.3.weight"])[0])
            layers.append(count)
            attn.append(level_attn)
            depth.append(level_depth or 1)
            count, level_attn, level_depth = 0, False, 0
        elif has(f"input_blocks.{i}.0.in_layers.0.weight"):
            count += 1
            if has(f"input_blocks.{i}.1.proj_in.weight"):
                level_attn = True
                level_depth = len(_indices(keys, re.escape(p + f"input_blocks.{i}.1.transformer_blocks.") + r"(\d+)\."))
        else:
            raise IPAdapterError(f"{source} has an unknown UNet input block {i}; the checkpoint is not SD1.5-shaped.")
        i += 1
    if count == 0:
        raise IPAdapterError(f"{source} has an incomplete UNet (no residual blocks after the last downsampler).")
    widths.append(_shape(sd[p + f"input_blocks.{i - 1}.0.out_layers.3.weight"])[0])
    layers.append(count)
    attn.append(level_attn)
    depth.append(level_depth or 1)
    if not has("middle_block.1.proj_in.weight"):
        raise IPAdapterError(f"{source} has a UNet mid block without attention; it is not SD1.5-shaped.")
    if widths[0] != conv_in[0]:
        raise IPAdapterError(f"{source} has a UNet whose first level width differs from conv_in; it is not SD1.5-shaped.")

    to_k = next(k for k in keys if k.endswith("attn2.to_k.weight"))
    cfg: dict[str, Any] = dict(base or {})
    cfg.update({
        "_class_name": "UNet2DConditionModel",
        "in_channels": conv_in[1],
        "out_channels": _shape(sd[p + "out.2.weight"])[0],
        "block_out_channels": widths,
        "layers_per_block": layers[0] if len(set(layers)) == 1 else layers,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in attn[::-1]],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "transformer_layers_per_block": depth[0] if len(set(depth)) == 1 else depth,
        "cross_attention_dim": _shape(sd[to_k])[1],
        "attention_head_dim": SD15_HEADS,  # diffusers' historical name: for SD1.5 it is the head *count*
        "use_linear_projection": False,
    })
    if cfg["in_channels"] != 4:
        raise IPAdapterError(f"{source} has a UNet with {cfg['in_channels']} input channels (an inpainting or "
                             "other special model); only the 4-channel SD1.5 UNet is supported.")
    return cfg


def infer_vae_config(sd: Mapping[str, Any], base: Mapping[str, Any] | None = None,
                     source: str = "the checkpoint") -> dict[str, Any]:
    """Read a diffusers AutoencoderKL config from original-layout (`first_stage_model.*`) shapes."""
    p = VAE_PREFIX
    keys = [k for k in sd if k.startswith(p)]
    if any(k.startswith(p + "taesd") for k in keys):
        raise IPAdapterError(f"{source} carries a TAESD VAE; training needs the full SD VAE (AutoencoderKL).")
    if p + "encoder.conv_in.weight" not in sd:
        raise IPAdapterError(f"{source} has no VAE (first_stage_model.encoder.* weights are missing).")
    levels = _indices(keys, re.escape(p) + r"encoder\.down\.(\d+)\.")
    layers = _indices(keys, re.escape(p) + r"encoder\.down\.0\.block\.(\d+)\.")
    try:
        widths = [_shape(sd[p + f"encoder.down.{b}.block.0.conv2.weight"])[0] for b in levels]
        cfg: dict[str, Any] = dict(base or {})
        cfg.update({
            "_class_name": "AutoencoderKL",
            "in_channels": _shape(sd[p + "encoder.conv_in.weight"])[1],
            "out_channels": _shape(sd[p + "decoder.conv_out.weight"])[0],
            "latent_channels": _shape(sd[p + "post_quant_conv.weight"])[0],
            "block_out_channels": widths,
            "layers_per_block": len(layers),
            "down_block_types": ["DownEncoderBlock2D"] * len(widths),
            "up_block_types": ["UpDecoderBlock2D"] * len(widths),
        })
    except KeyError as exc:
        raise IPAdapterError(f"{source} has an incomplete VAE: {exc.args[0]} is missing.") from None
    return cfg


def infer_text_config(sd: Mapping[str, Any], base: Mapping[str, Any] | None = None,
                      source: str = "the checkpoint") -> dict[str, Any]:
    """Read a transformers CLIPTextConfig (as a dict) from the checkpoint's text-encoder shapes."""
    if any(k.startswith("cond_stage_model.model.") for k in sd):
        raise IPAdapterError(f"{source} has an OpenCLIP text encoder (SD2.x); only Stable Diffusion 1.5 is supported.")
    p = find_text_prefix(sd.keys())
    if p is None:
        raise IPAdapterError(f"{source} has no CLIP text encoder "
                             f"({TEXT_PREFIX}embeddings.token_embedding.weight is missing).")
    keys = [k for k in sd if k.startswith(p)]
    vocab, hidden = _shape(sd[p + "embeddings.token_embedding.weight"])
    if hidden != SD15_CONTEXT_DIM:
        raise IPAdapterError(f"{source} has a {hidden}-wide text encoder; SD1.5 uses the 768-wide CLIP-L.")
    cfg: dict[str, Any] = dict(base or {})
    cfg.update({
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": _shape(sd[p + "encoder.layers.0.mlp.fc1.weight"])[0],
        "num_hidden_layers": len(_indices(keys, re.escape(p) + r"encoder\.layers\.(\d+)\.")),
        "num_attention_heads": hidden // 64,
        "max_position_embeddings": _shape(sd[p + "embeddings.position_embedding.weight"])[0],
        "hidden_act": cfg.get("hidden_act", "quick_gelu"),
    })
    return cfg
