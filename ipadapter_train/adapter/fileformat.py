"""Reading and writing IP-Adapter files: the official layout, validated on the way in and out.

The file is the official layout (see `adapter/module.py`): a flat `.safetensors` (`image_proj.*`,
`ip_adapter.<n>.to_k_ip.weight`) with str->str metadata, or tencent's `.bin`,
`torch.save({"image_proj": {...}, "ip_adapter": {...}})`. The bytes are read and written by
`weights_io`: pickles only with `weights_only=True`, every write crash-safe.

    sd, meta = load_adapter("my-adapter.safetensors")
    save_adapter(sd, "copy.safetensors", metadata={"base_model": "sd15"})
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from .. import __version__
from ..errors import IPAdapterError
from ..models.image_encoders import ENCODER_KEY, adapter_encoder
from ..storage.weights_io import (SAFETENSORS_SUFFIX, atomic_write, existing_file, read_weights_file,
                                  save_safetensors_atomic)
from .check import check_adapter_state, describe
from .spec import AdapterSpec

log = logging.getLogger(__name__)

ADAPTER_PREFIXES = ("image_proj.", "ip_adapter.")


# ---------------------------------------------------------------- recognising files

def guess_file_kind(keys: Iterable[str]) -> str | None:
    """Name the kind of model a non-adapter state dict looks like, for error messages (None if unknown)."""
    keys = list(keys)

    def has(*prefixes: str) -> bool:
        return any(key.startswith(prefixes) for key in keys)

    if "state_dict" in keys or has("model.diffusion_model.", "first_stage_model.", "cond_stage_model.",
                                   "down_blocks.", "conv_in.", "mid_block."):
        return "a Stable Diffusion checkpoint"
    if has("vision_model.", "visual_projection."):
        return "a CLIP vision encoder"
    if has("image_proj_model.", "adapter_modules."):
        return "a training checkpoint of the reference script (convert it first with convert_checkpoint)"
    return None


def flatten_adapter(obj: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    """Turn tencent's nested {"image_proj", "ip_adapter"} or a flat file into the flat official layout."""
    if isinstance(obj.get("image_proj"), Mapping) and isinstance(obj.get("ip_adapter"), Mapping):
        flat = {f"image_proj.{k}": v for k, v in obj["image_proj"].items()}
        flat.update({f"ip_adapter.{k}": v for k, v in obj["ip_adapter"].items()})
    else:
        flat = {k: v for k, v in obj.items() if k.startswith(ADAPTER_PREFIXES)}
        if not flat:
            kind = guess_file_kind(obj.keys())
            what = f"it looks like {kind}" if kind else "it has no image_proj/ip_adapter weights"
            raise IPAdapterError(f"{source} is not an IP-Adapter: {what}, so pass an IP-Adapter file instead.")
        dropped = len(obj) - len(flat)
        if dropped:
            log.warning("%s: ignored %d keys outside image_proj/ip_adapter", source, dropped)
    bad = sorted(k for k, v in flat.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise IPAdapterError(f"{source} has non-tensor values at {bad[:3]}: it is not a valid IP-Adapter file.")
    return flat


# ---------------------------------------------------------------- adapter files

def adapter_output_path(path: str | os.PathLike) -> Path:
    """Return `path` as a Path if it names a file an adapter can be saved to, else raise IPAdapterError."""
    path = Path(path)
    if path.suffix.lower() not in (SAFETENSORS_SUFFIX, ".bin"):
        raise IPAdapterError(f"Cannot save an adapter as {path.name}: "
                             "name the file .safetensors (recommended) or .bin.")
    return path


def save_adapter(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike,
                 metadata: Mapping[str, Any] | None = None, dtype: torch.dtype | None = torch.float16) -> Path:
    """Validate and atomically write an official-layout adapter as `.safetensors` (or tencent `.bin`)."""
    path = adapter_output_path(path)
    suffix = path.suffix.lower()
    extra = sorted(k for k in state_dict if not k.startswith(ADAPTER_PREFIXES))
    if extra:
        raise IPAdapterError(f"The state dict to save has keys outside image_proj/ip_adapter (e.g. {extra[0]!r}): "
                             "pass only the adapter's own state_dict().")
    if any(not isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise IPAdapterError("The state dict to save holds non-tensor values: pass the adapter's state_dict().")
    spec = check_adapter_state(state_dict, source="The adapter to save", values=False)

    def prepared(t: torch.Tensor) -> torch.Tensor:
        # copy=True: safetensors refuses tensors that share storage (tied or sliced views).
        cast = dtype if dtype is not None and t.is_floating_point() else t.dtype
        return t.detach().to(device="cpu", dtype=cast, copy=True).contiguous()

    tensors = {key: prepared(value) for key, value in sorted(state_dict.items())}
    if suffix == ".bin":
        if metadata:
            log.info("%s: a .bin file has no metadata; %d metadata keys not stored", path.name, len(metadata))
        nested = {"image_proj": {k[len("image_proj."):]: v for k, v in tensors.items() if k.startswith("image_proj.")},
                  "ip_adapter": {k[len("ip_adapter."):]: v for k, v in tensors.items() if k.startswith("ip_adapter.")}}
        atomic_write(path, lambda tmp: torch.save(nested, tmp))
    else:
        save_safetensors_atomic(tensors, path, file_metadata(spec, metadata))
    log.info("saved %s adapter (%d layers) to %s", spec.variant, len(spec.layers), path)
    return path


def file_metadata(spec: AdapterSpec, extra: Mapping[str, Any] | None) -> dict[str, str]:
    """The metadata `save_adapter` writes: the caller's values as strings, plus keys derived from `spec`."""
    meta = {str(k): v if isinstance(v, str) else json.dumps(v, default=str, sort_keys=True)
            for k, v in (extra or {}).items()}
    # The derived keys describe the tensors actually written, so they win over caller values.
    meta.update({"format": "pt", "ipadapter_train.version": __version__, "variant": spec.variant,
                 "tokens": str(spec.tokens), "clip_dim": str(spec.clip_dim), "cross_dim": str(spec.cross_dim),
                 "num_layers": str(len(spec.layers))})
    if spec.resampler_dim is not None:
        meta["resampler_dim"] = str(spec.resampler_dim)
    family = spec.family  # from the shapes; a tiny test model's width names none, so a caller's value stays
    if family is not None:
        meta["family"] = family.name
    return meta


def load_adapter(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read an adapter file into (flat official-layout state dict, metadata), refusing a damaged one.

    Every key, shape and value is checked (`check_adapter_state`), so what loads can be applied.
    """
    path = existing_file(path)
    raw, metadata = read_weights_file(path)
    state = flatten_adapter(raw, source=str(path))
    check_adapter_state(state, str(path), metadata)
    return state, metadata


def inspect_adapter(path: str | os.PathLike) -> dict[str, Any]:
    """Describe an adapter file as a JSON-able dict: its model family, shape, size, dtype and metadata.

    `summary` says it in words ("an SDXL plus adapter (16 tokens of 2048-d, 1280-d image features,
    70 layers)"); `family` is read from the tensors, so a public file without metadata has one too.
    """
    path = existing_file(path)
    state, metadata = load_adapter(path)
    spec = check_adapter_state(state, source=str(path), values=False)
    dtypes = Counter(str(t.dtype).replace("torch.", "") for t in state.values())
    dtype = next(iter(dtypes)) if len(dtypes) == 1 else "mixed (" + ", ".join(sorted(dtypes)) + ")"
    encoder = adapter_encoder(spec.variant, spec.clip_dim, metadata)
    shown: dict[str, Any] = dict(metadata)
    if "training_config" in shown:
        try:
            shown["training_config"] = json.loads(shown["training_config"])
        except json.JSONDecodeError:
            log.debug("%s: training_config metadata is not JSON; shown as text", path)
    return {
        "file": str(path),
        "size_bytes": path.stat().st_size,
        "format": "safetensors" if path.suffix.lower() == SAFETENSORS_SUFFIX else "bin",
        "summary": describe(spec),
        "family": spec.family.name if spec.family is not None else None,  # from the shapes, metadata or not
        "variant": spec.variant,
        "tokens": spec.tokens,
        "clip_dim": spec.clip_dim,
        # the image encoder it reads: as its metadata records it, else named from clip_dim (None: no known one)
        "image_encoder": encoder.label if encoder is not None else None,
        "image_encoder_from": (None if encoder is None else
                               "metadata" if metadata.get(ENCODER_KEY) == encoder.label else "width"),
        "cross_dim": spec.cross_dim,
        "resampler_dim": spec.resampler_dim,
        "num_layers": len(spec.layers),
        "layer_indices": [n for n, _ in spec.layers],
        "parameters": int(sum(t.numel() for t in state.values())),
        "dtype": dtype,
        "metadata": shown,
    }
