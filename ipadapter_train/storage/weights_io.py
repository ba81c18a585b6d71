"""Crash-safe writing and safe reading of weights files: the one place the package touches them.

Writes go to a temp file beside the target, are fsynced and renamed over it, so a crash leaves the
old file or the new one, never half of either (`write_failures` says what a failed write means and
cleans up what a killed one left). Pickle files (`.bin`, `.pt`, `.pth`, `.ckpt`) are only
ever read with `torch.load(..., weights_only=True)`: a file carrying code is refused, never run.

    save_safetensors_atomic({"w": torch.zeros(2)}, "out.safetensors")
    with WeightFile("model.safetensors") as wf:
        w = wf.take("w", torch.float32)
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import IPAdapterError

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
WEIGHT_SUFFIXES = (SAFETENSORS_SUFFIX,) + PICKLE_SUFFIXES


# ---------------------------------------------------------------- crash-safe writes

def temp_sibling(path: Path) -> Path:
    """A unique `.NAME.<12 hex>.tmp` path beside `path` (what an interrupted write may leave)."""
    # Same folder as the target, so the final os.replace is a rename on one file system.
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def _fsync_dir(folder: Path) -> None:
    # Makes a rename itself durable; directories cannot be opened this way on Windows.
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


def replace_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename `src` to `dst`, replacing a file there, on every platform (`os.rename` refuses on Windows).

    Retried for a moment on Windows, where a file another program has open cannot be replaced (virus
    scanners and indexers open new files briefly); a lasting lock is an IPAdapterError saying so.
    """
    tries = 10 if sys.platform == "win32" else 1
    for attempt in range(tries):
        try:
            os.replace(src, dst)
            return
        except PermissionError as err:
            if sys.platform != "win32":
                raise
            if attempt == tries - 1:
                raise IPAdapterError(f"Cannot replace {dst}: another program has it open (Windows cannot "
                                     "replace a file in use); close that program and try again.") from err
            time.sleep(0.05 * (attempt + 1))


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], private_folder: bool = False) -> Path:
    """Call `write(tmp)` on a temp file beside `path`, fsync it, then rename it over `path`.

    An exception mid-write leaves an existing `path` untouched and no temp file behind; a crash leaves
    at most the temp, named `.NAME.<12 hex>.tmp` after `path`, which the next run removes
    (`storage.write_failures.remove_stale_temporaries`). An existing file keeps its permissions; a new one gets
    the mode the umask gives any new file. With `private_folder`, the temp file lies in a temp folder of
    that name (`.NAME.<hex>.tmp/.NAME.<hex>.tmp`), for writers that make temporaries of their own beside
    the file they are given.
    """
    path = Path(path)
    if path.is_dir():
        raise IPAdapterError(f"Cannot write {path}: it is a folder; give a file name instead.")
    tmp = temp_sibling(path)
    holder = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if private_folder:
            holder = tmp
            os.mkdir(holder)
            tmp = holder / holder.name
        # os.open applies the umask (mkstemp's fixed 0600 would not). The mode is read now because
        # some writers replace the file: safetensors creates a fresh 0600 one, which a ComfyUI run
        # as another user could not read.
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        try:
            new_mode = os.fstat(fd).st_mode & 0o7777
        finally:
            os.close(fd)
    except OSError as err:
        if holder is not None:
            shutil.rmtree(holder, ignore_errors=True)
        if not isinstance(err, PermissionError):
            raise
        raise IPAdapterError(f"Cannot write {path}: no permission to create files in {path.parent}; "
                             "choose another folder.") from err
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else new_mode)
        replace_file(tmp, path)  # replaces an existing file on Windows too (os.rename would refuse)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if holder is not None:
            shutil.rmtree(holder, ignore_errors=True)
        raise
    if holder is not None:
        shutil.rmtree(holder, ignore_errors=True)
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding))


def save_safetensors_atomic(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                            metadata: Mapping[str, str] | None = None) -> Path:
    """Write `tensors` (and str->str `metadata`) to a `.safetensors` file atomically (see `atomic_write`)."""
    path = Path(path)
    if path.suffix.lower() != SAFETENSORS_SUFFIX:
        raise IPAdapterError(f"{path} must end in .safetensors.")
    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    meta = dict(metadata) if metadata else {"format": "pt"}
    # safetensors (0.6 on) writes a hidden `.tmpXXXXXX` copy beside the file it is given and renames it; a
    # kill mid-write left that copy (0600, the weights' size) where nothing could tell whose it was. In a
    # private folder named after `path`, it goes where the next run's clean-up finds it.
    return atomic_write(path, lambda tmp: save_file(contiguous, str(tmp), metadata=meta), private_folder=True)


def atomic_write_dir(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Fill a new temp folder beside `path` with `write(tmp)`, then swap it in for the folder `path`.

    An exception or a crash while writing leaves the old folder as it was and no temp folder behind.
    The swap is two renames (old aside to `.<name>-old`, new in); the old folder is then deleted.
    Write the files inside with the atomic writers above, so each one is on disk before the swap.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    os.mkdir(tmp)  # umask mode: mkdtemp's 0700 would hide the folder from other users
    old = path.with_name(f".{path.name}-old")
    try:
        write(tmp)
        _fsync_dir(tmp)
        if old.exists():
            shutil.rmtree(old)
        moved_aside = path.exists()
        if moved_aside:
            replace_file(path, old)
        try:
            replace_file(tmp, path)
        except BaseException:
            if moved_aside:  # put the old folder back rather than leave none
                replace_file(old, path)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)
    return path


# ---------------------------------------------------------------- reading files

def short_error(err: BaseException) -> str:
    """The first line of an exception's message (at most 120 characters), or its type if it has none."""
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


def weights_suffix(path: Path) -> str:
    """The lower-case suffix of a weights file, or IPAdapterError if it is not one this package reads."""
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise IPAdapterError(f"{path} has an unsupported extension ({suffix or 'none'}): weights files must be "
                             f".safetensors, or {', '.join(PICKLE_SUFFIXES)}; rename or re-save it.")
    return suffix


def safe_torch_load(path: str | os.PathLike, unwrap_state_dict: bool = False) -> Any:
    """`torch.load` that only rebuilds tensors and plain containers; anything else is refused.

    With `unwrap_state_dict`, a `{"state_dict": {...}, ...}` wrapper (Lightning, the original SD
    releases) is replaced by the dict inside it.
    """
    path = existing_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch names the blocked callable as a GLOBAL: the file wanted to run code. Other unpickling
        # failures (also reported as "weights only load failed") are damaged or foreign files.
        if "GLOBAL" in str(err):
            raise IPAdapterError(f"{path} contains Python objects other than tensors (pickled code) and was "
                                 "refused for safety: only plain tensors are loaded from pickle files, so convert "
                                 "it to .safetensors or save it as a plain state dict.") from err
        raise IPAdapterError(f"{path} is not a readable PyTorch checkpoint of plain tensors (it could not be "
                             "unpickled safely): it is damaged or not a weights file; download or save it "
                             "again.") from err
    except Exception as err:  # torch raises RuntimeError/KeyError/EOFError for damaged archives
        raise IPAdapterError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {short_error(err)}): "
                             "it is damaged or not a weights file; download or save it again.") from err
    if unwrap_state_dict and isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    return obj


def _weights_mapping(obj: Any, path: Path) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise IPAdapterError(f"{path} holds a {type(obj).__name__}, not a dictionary of weights: "
                             "it is not a weights file this package can read.")
    return obj


def read_safetensors(path: str | os.PathLike, keep: Callable[[str], bool] | None = None,
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read the tensors (those `keep` accepts, or all) and the metadata of a `.safetensors` file."""
    path = existing_file(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys() if keep is None or keep(key)}
    except Exception as err:  # SafetensorError for a truncated or foreign file
        raise _unreadable_safetensors(path, err) from err
    return tensors, metadata


def _unreadable_safetensors(path: Path, err: BaseException) -> IPAdapterError:
    return IPAdapterError(f"{path} is not a readable .safetensors file ({short_error(err)}): it is truncated or "
                          "damaged; download or save it again.")


def read_weights_file(path: str | os.PathLike, keep: Callable[[str], bool] | None = None,
                      ) -> tuple[dict[str, Any], dict[str, str]]:
    """Read a `.safetensors` or pickle weights file into (mapping, metadata); pickles have no metadata.

    `keep` filters the keys read from a `.safetensors` file; a pickle comes back whole.
    """
    path = existing_file(path)
    if weights_suffix(path) == SAFETENSORS_SUFFIX:
        return read_safetensors(path, keep)
    return dict(_weights_mapping(safe_torch_load(path), path)), {}


class WeightFile:
    """A weights file opened for reading: all shapes up front, tensors one at a time.

    For `.safetensors` only the header is read until a tensor is asked for, so a wrong file is
    rejected without loading it. A pickle is read whole (safely); only its str-keyed tensors are kept,
    and with `unwrap_state_dict` a `{"state_dict": ...}` wrapper is looked through.
    """

    def __init__(self, path: str | os.PathLike, unwrap_state_dict: bool = False) -> None:
        self.path = existing_file(path)
        self._st = None
        self._tensors: dict[str, torch.Tensor] = {}
        self.metadata: dict[str, str] = {}  # safetensors header metadata; pickles have none
        if weights_suffix(self.path) == SAFETENSORS_SUFFIX:
            try:
                self._st = safe_open(str(self.path), framework="pt", device="cpu")
                self.shapes = {k: tuple(self._st.get_slice(k).get_shape()) for k in self._st.keys()}
                self.metadata = dict(self._st.metadata() or {})
            except Exception as err:
                raise _unreadable_safetensors(self.path, err) from err
        else:
            obj = _weights_mapping(safe_torch_load(self.path, unwrap_state_dict), self.path)
            self._tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
            self.shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}

    def take(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Return one tensor cast to `dtype`; a pickled file's copy is dropped to keep one copy in memory."""
        try:
            t = self._st.get_tensor(key) if self._st is not None else self._tensors.pop(key)
        except Exception as err:
            raise IPAdapterError(f"{self.path} could not be read at {key} ({short_error(err)}); "
                                 "the file is damaged.") from err
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    def close(self) -> None:
        """Release the file handle and any tensors not taken."""
        self._st = None
        self._tensors = {}

    def __enter__(self) -> "WeightFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_transformers_folder(folder: Path, dtype: torch.dtype | None = None,
                             ignore: Callable[[str], bool] = lambda key: False) -> dict[str, torch.Tensor]:
    """The weights of a transformers `save_pretrained` folder (single file, sharded safetensors or
    `pytorch_model.bin`), cast tensor by tensor so only one copy is ever in memory."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():  # sharded save
        try:
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError):
            raise IPAdapterError(f"{index} is not a valid safetensors index.") from None
    else:
        files = [n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()][:1]
    if not files:
        raise IPAdapterError(f"{folder} has no model.safetensors or pytorch_model.bin weights.")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        with WeightFile(folder / name) as wf:
            for key in wf.shapes:
                if not ignore(key):
                    state[key] = wf.take(key, dtype)
    return state
