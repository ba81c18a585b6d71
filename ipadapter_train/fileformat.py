"""Reading and writing IP-Adapter files, and crash-safe file writes for the rest of the package.

The file is the official layout (see `adapter.py`): a flat `.safetensors` (`image_proj.*`,
`ip_adapter.<n>.to_k_ip.weight`) with str->str metadata, or tencent's `.bin`,
`torch.save({"image_proj": {...}, "ip_adapter": {...}})`. Pickle files from users are only ever
read with `torch.load(..., weights_only=True)`, so a file carrying code is refused, never run.

    sd, meta = load_adapter("my-adapter.safetensors")
    save_adapter(sd, "copy.safetensors", metadata={"base_model": "sd15"})
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import secrets
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import __version__
from .adapter import AdapterSpec
from .errors import IPAdapterError

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
ADAPTER_PREFIXES = ("image_proj.", "ip_adapter.")


# ---------------------------------------------------------------- crash-safe writes

def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temp file beside `path`, fsync it, then rename it over `path`.

    A crash or an exception mid-write leaves an existing `path` untouched and no temp file behind.
    """
    path = Path(path)
    if path.is_dir():
        raise IPAdapterError(f"Cannot write {path}: it is a folder; give a file name instead.")
    # Same directory, so os.replace is a rename on one file system; os.open applies the umask,
    # which mkstemp's fixed 0600 would not.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except PermissionError as err:
        raise IPAdapterError(f"Cannot write {path}: no permission to create files in {path.parent}; "
                             "choose another folder.") from err
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; directories cannot be opened this way on Windows.
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        log.debug("could not fsync folder %s", folder)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding))


# ---------------------------------------------------------------- reading files

def _short(err: BaseException) -> str:
    # Library messages can run to paragraphs; the first line is enough to tell causes apart.
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def existing_file(path: str | os.PathLike) -> Path:
    """Return `path` as a Path, or raise IPAdapterError if it is missing or a folder."""
    path = Path(path)
    if path.is_dir():
        raise IPAdapterError(f"{path} is a folder, not a weights file: pass the .safetensors or .bin file inside it.")
    if not path.is_file():
        raise IPAdapterError(f"The file {path} does not exist: check the path.")
    return path


def safe_torch_load(path: str | os.PathLike) -> Any:
    """`torch.load` that only rebuilds tensors and plain containers; anything else is refused."""
    path = existing_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():
            raise IPAdapterError(f"{path} could not be read ({_short(err)}): the file is damaged; "
                                 "download or save it again.") from err
        raise IPAdapterError(f"{path} contains pickled code or objects and was refused: only plain tensors are "
                             "loaded from pickle files, so use a .safetensors file or one saved as a plain "
                             "state dict.") from err
    except Exception as err:  # torch raises RuntimeError/KeyError/EOFError for damaged archives
        raise IPAdapterError(f"{path} could not be read as a PyTorch file ({type(err).__name__}: {_short(err)}): "
                             "it is damaged or not a weights file; download or save it again.") from err


def read_safetensors(path: str | os.PathLike, keep: Callable[[str], bool] | None = None,
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read the tensors (those `keep` accepts, or all) and the metadata of a `.safetensors` file."""
    path = existing_file(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys() if keep is None or keep(key)}
    except Exception as err:  # SafetensorError for a truncated or foreign file
        raise IPAdapterError(f"{path} is not a readable .safetensors file ({_short(err)}): it is truncated or damaged; "
                             "download or save it again.") from err
    return tensors, metadata


def read_weights_file(path: str | os.PathLike, keep: Callable[[str], bool] | None = None,
                      ) -> tuple[dict[str, Any], dict[str, str]]:
    """Read a `.safetensors` or pickle weights file into (mapping, metadata); pickles have no metadata."""
    path = existing_file(path)
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        return read_safetensors(path, keep)
    if suffix in PICKLE_SUFFIXES:
        obj = safe_torch_load(path)
        if not isinstance(obj, Mapping):
            raise IPAdapterError(f"{path} holds a {type(obj).__name__}, not a dict of weights: "
                                 "it is not an IP-Adapter file.")
        return dict(obj), {}
    raise IPAdapterError(f"{path} has the extension {suffix or '(none)'!r}: weights files must be .safetensors, "
                         f"or {', '.join(PICKLE_SUFFIXES)}; rename or re-save it.")


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
    spec = AdapterSpec.from_state_dict(state_dict, source="The adapter to save")

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
        meta = _file_metadata(spec, metadata)
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    log.info("saved %s adapter (%d layers) to %s", spec.variant, len(spec.layers), path)
    return path


def _file_metadata(spec: AdapterSpec, extra: Mapping[str, Any] | None) -> dict[str, str]:
    meta = {str(k): v if isinstance(v, str) else json.dumps(v, default=str, sort_keys=True)
            for k, v in (extra or {}).items()}
    # The derived keys describe the tensors actually written, so they win over caller values.
    meta.update({"format": "pt", "ipadapter_train.version": __version__, "variant": spec.variant,
                 "tokens": str(spec.tokens), "clip_dim": str(spec.clip_dim), "cross_dim": str(spec.cross_dim),
                 "num_layers": str(len(spec.layers))})
    return meta


def load_adapter(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read an adapter file into (flat official-layout state dict, metadata), validating its shape."""
    path = existing_file(path)
    raw, metadata = read_weights_file(path)
    state = flatten_adapter(raw, source=str(path))
    AdapterSpec.from_state_dict(state, source=str(path))
    return state, metadata


def inspect_adapter(path: str | os.PathLike) -> dict[str, Any]:
    """Describe an adapter file as a JSON-able dict (shape, size, dtype and metadata)."""
    path = existing_file(path)
    state, metadata = load_adapter(path)
    spec = AdapterSpec.from_state_dict(state, source=str(path))
    dtypes = Counter(str(t.dtype).replace("torch.", "") for t in state.values())
    dtype = next(iter(dtypes)) if len(dtypes) == 1 else "mixed (" + ", ".join(sorted(dtypes)) + ")"
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
        "variant": spec.variant,
        "tokens": spec.tokens,
        "clip_dim": spec.clip_dim,
        "cross_dim": spec.cross_dim,
        "num_layers": len(spec.layers),
        "layer_indices": [n for n, _ in spec.layers],
        "parameters": int(sum(t.numel() for t in state.values())),
        "dtype": dtype,
        "metadata": shown,
    }
