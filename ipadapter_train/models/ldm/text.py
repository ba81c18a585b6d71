"""Text encoders in the original single-file layout: transformers names and OpenCLIP names.

A family's `TextEncoder` says where a checkpoint keeps the encoder (`checkpoint_prefix`) and in which
names (`checkpoint_layout`):

- "hf": transformers' CLIPTextModel names under the prefix (SD1.5's and SDXL's CLIP-L). transformers 5
  names them `embeddings.*`/`encoder.*`/`final_layer_norm.*`; files from before transformers 4.17 lack
  the `text_model.` level of the prefix: both are read, the current one is written.
- "open_clip": OpenCLIP's own names (SDXL's ViT-bigG text tower): `token_embedding.weight`,
  `positional_embedding`, `transformer.resblocks.N.{ln_1, attn.in_proj_weight/bias, attn.out_proj,
  ln_2, mlp.c_fc, mlp.c_proj}`, `ln_final`, and `text_projection` [width, projection] applied as
  `x @ P`. q, k and v live in one `in_proj` tensor (entries of kind QKV) and the projection is the
  transpose of transformers' `text_projection.weight` (TRANSPOSE).
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from ...errors import IPAdapterError
from .keys import QKV, SAME, TRANSPOSE, Entry, indices, shape_of

if TYPE_CHECKING:
    from ...families import TextEncoder

TEXT_PREFIX = "cond_stage_model.transformer.text_model."  # SD1.5's CLIP-L
OLD_TEXT_PREFIX = "cond_stage_model.transformer."  # pre-2022 transformers kept no `text_model.` level
_OLD_LEVEL = "text_model."

_OPEN_CLIP_TOP = {"embeddings.token_embedding.weight": "token_embedding.weight",
                  "embeddings.position_embedding.weight": "positional_embedding",
                  "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                    "self_attn.out_proj": "attn.out_proj"}
_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_QKV_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


def text_key_map(keys: Iterable[str], ldm_prefix: str = TEXT_PREFIX) -> dict[str, str]:
    """Map transformers CLIP text-model names to their names under `ldm_prefix` ("hf" layout).

    With or without transformers' `text_model.` level, a name maps to the same original name.
    """
    return {key: ldm_prefix + key.removeprefix(_OLD_LEVEL) for key in keys}


def find_text_prefix(keys: Iterable[str], prefix: str = TEXT_PREFIX) -> str | None:
    """The prefix a checkpoint keeps an "hf"-layout encoder under (`prefix`, or it without its
    `text_model.` level, as old files have it), or None when neither holds one."""
    keys = set(keys)
    candidates = [prefix] + ([prefix[:-len(_OLD_LEVEL)]] if prefix.endswith(_OLD_LEVEL) else [])
    for candidate in candidates:
        if candidate + "embeddings.token_embedding.weight" in keys:
            return candidate
    return None


def open_clip_entries(keys: Iterable[str], prefix: str) -> list[Entry]:
    """The OpenCLIP-layout entries under `prefix` for a transformers CLIPTextModel(WithProjection)'s keys."""
    entries: list[Entry] = []
    qkv: dict[tuple[str, str], dict[str, str]] = {}
    for key in keys:
        k = key.removeprefix(_OLD_LEVEL)
        if k == "text_projection.weight":
            entries.append(Entry(prefix + "text_projection", (key,), TRANSPOSE))
            continue
        if k in _OPEN_CLIP_TOP:
            entries.append(Entry(prefix + _OPEN_CLIP_TOP[k], (key,)))
            continue
        m = _LAYER.match(k)
        if m and m.group(2) in _QKV_MODULES:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = key
            continue
        if m and m.group(2) in _OPEN_CLIP_LAYER:
            n, module, leaf = m.groups()
            entries.append(Entry(f"{prefix}transformer.resblocks.{n}.{_OPEN_CLIP_LAYER[module]}.{leaf}", (key,)))
            continue
        raise IPAdapterError(f"The transformers weight {key} has no place in the OpenCLIP layout; "
                             "this transformers version is not supported.")
    for (n, leaf), parts in sorted(qkv.items(), key=lambda item: (int(item[0][0]), item[0][1])):
        if set(parts) != set(_QKV_MODULES):
            raise IPAdapterError(f"Text encoder layer {n} lacks one of q/k/v; this is a bug.")
        entries.append(Entry(f"{prefix}transformer.resblocks.{n}.attn.in_proj_{leaf}",
                             tuple(parts[m] for m in _QKV_MODULES), QKV))
    return entries


def text_entries(encoder: "TextEncoder", keys: Iterable[str], prefix: str | None = None) -> list[Entry]:
    """The entries of one text encoder in its family's checkpoint layout (`prefix` overrides where)."""
    prefix = prefix or encoder.checkpoint_prefix
    if encoder.checkpoint_layout == "open_clip":
        return open_clip_entries(keys, prefix)
    return [Entry(lk, (dk,), SAME) for dk, lk in text_key_map(keys, prefix).items()]


def _missing(source: str, encoder: "TextEncoder", key: str) -> IPAdapterError:
    return IPAdapterError(f"{source} has no {encoder.width}-wide text encoder at {encoder.checkpoint_prefix} "
                          f"({key} is missing): the file is incomplete or another kind of checkpoint.")


def read_text_config(sd: Mapping[str, Any], encoder: "TextEncoder", base: Mapping[str, Any],
                     source: str = "the checkpoint") -> tuple[dict[str, Any], str]:
    """Read a transformers CLIPTextConfig (as a dict, over `base`) from a checkpoint's shapes.

    Returns the config and the prefix the encoder was found under. Heads are 64 dims wide (CLIP-L 12,
    bigG 20); the activation comes from `base`.
    """
    open_clip = encoder.checkpoint_layout == "open_clip"
    if open_clip:
        p = encoder.checkpoint_prefix
        if p + "token_embedding.weight" not in sd:
            raise _missing(source, encoder, p + "token_embedding.weight")
        names = {"tokens": "token_embedding.weight", "positions": "positional_embedding",
                 "fc1": "transformer.resblocks.0.mlp.c_fc.weight", "layers": r"transformer\.resblocks\.(\d+)\."}
    else:
        found = find_text_prefix(sd.keys(), encoder.checkpoint_prefix)
        if found is None:
            raise _missing(source, encoder, encoder.checkpoint_prefix + "embeddings.token_embedding.weight")
        p = found
        names = {"tokens": "embeddings.token_embedding.weight", "positions": "embeddings.position_embedding.weight",
                 "fc1": "encoder.layers.0.mlp.fc1.weight", "layers": r"encoder\.layers\.(\d+)\."}
    vocab, hidden = shape_of(sd[p + names["tokens"]])
    if hidden != encoder.width:
        raise IPAdapterError(f"{source} has a {hidden}-wide text encoder at {encoder.checkpoint_prefix}; "
                             f"this model family uses a {encoder.width}-wide one there.")
    try:
        cfg: dict[str, Any] = dict(base)
        cfg.update({
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": shape_of(sd[p + names["fc1"]])[0],
            "num_hidden_layers": len(indices([k for k in sd if k.startswith(p)], re.escape(p) + names["layers"])),
            "num_attention_heads": max(1, hidden // 64),  # 64-wide heads; the learned world's 32 has one
            "max_position_embeddings": shape_of(sd[p + names["positions"]])[0],
            "hidden_act": base.get("hidden_act", "quick_gelu"),
        })
    except KeyError as exc:
        raise _missing(source, encoder, exc.args[0]) from None
    if open_clip and p + "text_projection" in sd:
        cfg["projection_dim"] = shape_of(sd[p + "text_projection"])[1]
    return cfg, p
