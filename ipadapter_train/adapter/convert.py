"""Turn the reference training script's checkpoints into the official adapter file.

tencent-ailab/IP-Adapter's tutorial_train.py (SD1.5) and tutorial_train_sdxl.py (SDXL) train a module
holding `unet`, `image_proj_model` and `adapter_modules` (a ModuleList of ALL the UNet's attention
processors, so the cross-attention ones sit at the odd positions i = n of the file). Its accelerate
`save_state` folder stores either `adapter_modules.<i>.to_k_ip.weight` or, when accelerate's
safetensors writer dropped those shared copies (tencent issues #375, #246, #436), only
`unet.<path>.processor.to_k_ip.weight`. This module maps both through the fixed key table of the
checkpoint's model family (read from its own shapes and names), so the indices are right.

    convert_checkpoint("output/checkpoint-2000", "my-adapter.safetensors")
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import IPAdapterError
from ..families import FAMILIES, SD15, ModelFamily, family_of_width
from ..layout import AdapterLayer, adapter_layers, index_for_module_name
from ..storage.weights_io import existing_file, read_weights_file
from .fileformat import adapter_output_path, flatten_adapter, guess_file_kind, save_adapter

log = logging.getLogger(__name__)

# `.0` allowed: diffusers' own IPAdapterAttnProcessor keeps to_k_ip in a ModuleList.
_IP_WEIGHT = re.compile(r"^(?P<module>.+)\.(?P<proj>to_[kv]_ip)(?:\.0)?\.weight$")


def default_unet_config() -> dict[str, Any]:
    """The SD1.5 UNet config shipped with the package (a checkpoint's own family: `checkpoint_family`)."""
    return SD15.config("unet/config.json")


def _wanted(key: str) -> bool:
    # The frozen UNet is most of a save_state file: skip its tensors, keep only IP processor weights.
    key = key.removeprefix("module.")
    return not key.startswith("unet.") or ".processor." in key


def _checkpoint_files(folder: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
            return [folder / name for name in sorted(set(weight_map.values()))]
    for pattern in ("model*.safetensors", "pytorch_model*.bin"):
        files = sorted(folder.glob(pattern))
        if files:
            return files
    runs = sorted(folder.glob("checkpoint-*"), key=lambda p: (len(p.name), p.name))
    hint = f" such as {runs[-1].name}" if runs else ""
    raise IPAdapterError(f"{folder} has no model.safetensors or pytorch_model.bin: pass an accelerate "
                         f"save_state folder{hint} (a checkpoint-<step> folder of the training run).")


def read_reference_state(src: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the adapter-relevant tensors of a save_state folder or a single weights file, keys as stored.

    A tencent-layout `.bin` comes back flattened to `image_proj.*` / `ip_adapter.*`.
    """
    src = Path(src)
    if not src.exists():
        raise IPAdapterError(f"The checkpoint {src} does not exist: check the path.")
    files = _checkpoint_files(src) if src.is_dir() else [existing_file(src)]
    state: dict[str, torch.Tensor] = {}
    for file in files:
        raw, _ = read_weights_file(existing_file(file), keep=_wanted)
        if isinstance(raw.get("image_proj"), Mapping) and isinstance(raw.get("ip_adapter"), Mapping):
            raw = flatten_adapter(raw, source=str(file))
        for key, value in raw.items():
            if not _wanted(key):
                continue
            if not isinstance(value, torch.Tensor):
                raise IPAdapterError(f"{file} has a non-tensor value at {key!r}: it is not a weights file.")
            key = key.removeprefix("module.")
            if key in state and not torch.equal(state[key], value):
                raise IPAdapterError(f"{src} stores {key!r} twice with different values: pass a single checkpoint.")
            state[key] = value
    log.info("read %d candidate tensors from %s", len(state), src)
    return state


def checkpoint_family(state: Mapping[str, torch.Tensor]) -> ModelFamily:
    """The model family a reference checkpoint was trained for, from its own tensors.

    First the width the IP weights read (to_k_ip is [hidden, 2048] for SDXL), then the UNet paths of
    its processors, then the layer count of `adapter_modules`; none telling (a tiny test model), SD1.5,
    whose key table then names what does not fit.
    """
    widths, paths, top = set(), set(), 0
    for key, value in state.items():
        match = _IP_WEIGHT.match(key)
        if match is None:
            continue
        if value.dim() == 2:
            widths.add(int(value.shape[1]))
        if key.startswith("unet.") and match["module"].endswith(".processor"):
            paths.add(match["module"][len("unet."):-len(".processor")])
        elif key.startswith(("adapter_modules.", "ip_adapter.")) and match["module"].split(".", 1)[1].isdigit():
            top = max(top, int(match["module"].split(".", 1)[1]))
    by_width = {family_of_width(width) for width in widths} - {None}
    if len(by_width) == 1:
        return by_width.pop()
    by_path = [f for f in FAMILIES.values() if paths and paths <= {layer.name for layer in f.adapter_layers()}]
    if len(by_path) == 1:
        return by_path[0]
    by_count = [f for f in FAMILIES.values() if top and f.adapter_layer_count == (top + 1) // 2]
    return by_count[0] if len(by_count) == 1 else SD15


def _key_table(state: Mapping[str, torch.Tensor], unet_config: Mapping[str, Any] | None) -> list[AdapterLayer]:
    if unet_config is not None:
        return adapter_layers(unet_config)
    family = checkpoint_family(state)
    log.info("converting as %s (%d cross-attention layers)", family.label, family.adapter_layer_count)
    return family.adapter_layers()


def reference_to_official(state: Mapping[str, torch.Tensor], unet_config: Mapping[str, Any] | None = None,
                          source: str = "The checkpoint") -> dict[str, torch.Tensor]:
    """Rename reference-script keys to the official layout and check them against the key table.

    The table is `unet_config`'s, or without one that of the family the checkpoint's shapes name
    (`checkpoint_family`): SD1.5's 16 layers or SDXL's 70.
    """
    layers = _key_table(state, unet_config)
    by_path = index_for_module_name(layers)
    image_proj: dict[str, torch.Tensor] = {}
    from_list: dict[str, torch.Tensor] = {}  # adapter_modules.<i>.* and official ip_adapter.<n>.*
    from_unet: dict[str, torch.Tensor] = {}  # unet.<path>.processor.*
    for key, value in state.items():
        if key.startswith("image_proj_model."):
            image_proj["image_proj." + key[len("image_proj_model."):]] = value
        elif key.startswith("image_proj."):
            image_proj[key] = value
        elif (match := _IP_WEIGHT.match(key)) is None:
            continue  # frozen UNet/VAE/encoder weights and anything else the script saved
        elif key.startswith(("adapter_modules.", "ip_adapter.")):
            n = match["module"].split(".", 1)[1]
            if not n.isdigit():
                continue
            from_list[f"ip_adapter.{n}.{match['proj']}.weight"] = value
        elif key.startswith("unet.") and match["module"].endswith(".processor"):
            path = match["module"][len("unet."):]
            if path not in by_path:
                raise IPAdapterError(f"{source} has IP weights at {path}, which is not a cross-attention layer of the "
                                     "UNet config: pass the UNet config the adapter was trained with.")
            from_unet[f"ip_adapter.{by_path[path]}.{match['proj']}.weight"] = value
    for key in sorted(from_list.keys() & from_unet.keys()):
        if not torch.equal(from_list[key], from_unet[key]):
            raise IPAdapterError(f"{source} holds two different copies of {key} (adapter_modules and the UNet's "
                                 "processor): the checkpoint is inconsistent; use another one.")
    ip = {**from_unet, **from_list}
    if not image_proj and not ip:
        kind = guess_file_kind(state.keys())
        what = f"it looks like {kind}" if kind else "it has no image_proj_model/adapter_modules weights"
        raise IPAdapterError(f"{source} is not an IP-Adapter training checkpoint ({what}): pass the "
                             "checkpoint-<step> folder of a training run or its model file.")
    if not image_proj:
        raise IPAdapterError(f"{source} has IP layer weights but no image projection (image_proj_model.*): "
                             "the checkpoint is incomplete; use the whole save_state folder.")
    _check_layers(ip, {layer.index: layer.hidden for layer in layers}, source)
    return {**image_proj, **dict(sorted(ip.items(), key=lambda kv: _order(kv[0])))}


def _order(key: str) -> tuple[int, str]:
    return int(key.split(".")[1]), key


def _check_layers(ip: Mapping[str, torch.Tensor], want: Mapping[int, int], source: str) -> None:
    have: dict[int, int] = {}
    for key, value in ip.items():
        n, proj = int(key.split(".")[1]), key.split(".")[2]
        if f"ip_adapter.{n}.{'to_v_ip' if proj == 'to_k_ip' else 'to_k_ip'}.weight" not in ip:
            raise IPAdapterError(f"{source} has {proj} but not its partner for layer {n}: "
                                 "the checkpoint is incomplete.")
        have[n] = value.shape[0]
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    wrong = sorted(n for n in set(want) & set(have) if want[n] != have[n])
    if missing or extra or wrong:
        raise IPAdapterError(f"{source} does not match the UNet's {len(want)} cross-attention layers "
                             f"(missing indices {missing}, unexpected {extra}, wrong widths at {wrong}): "
                             "it was trained for another UNet or saved incompletely.")


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, unet_config: Mapping[str, Any] | None = None,
                       metadata: Mapping[str, Any] | None = None, dtype: torch.dtype | None = torch.float16) -> Path:
    """Convert a reference-script checkpoint (folder, flat file or tencent `.bin`) into an official adapter file."""
    src, dst = Path(src), adapter_output_path(dst)  # refuse a bad name before reading gigabytes
    state = read_reference_state(src)
    official = reference_to_official(state, unet_config, source=str(src))
    meta = {**(metadata or {}), "converted_from": src.name}
    return save_adapter(official, dst, metadata=meta, dtype=dtype)
