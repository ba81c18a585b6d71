"""The model folders the pack reads and writes, registered with ComfyUI's `folder_paths` only if missing.

`models/ipadapter` is the folder ComfyUI_IPAdapter_plus also reads: when another pack (or
extra_model_paths.yaml) registered it first, its entry is left exactly as it is. `models/clip_scorers`
holds full CLIP models (vision + text) for the Score node.
"""
from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import folder_paths

from ..ipadapter_train.api import IMAGE_EXTENSIONS, IPAdapterError, is_absolute_anywhere, resolve_inside

ADAPTERS = "ipadapter"
SCORERS = "clip_scorers"
TEXT_ENCODERS = "text_encoders"  # ComfyUI's name for models/text_encoders and models/clip
ADAPTER_SUFFIXES = (".safetensors", ".bin")
# Windows device names, also with an extension ("nul.txt"); its superscript digits count as digits there.
_RESERVED = {"con", "prn", "aux", "nul", "conin$", "conout$",
             *(f"{port}{digit}" for port in ("com", "lpt") for digit in "123456789\u00b9\u00b2\u00b3")}
_WINDOWS_FORBIDDEN = frozenset('<>:"|?*')
# Control, format (zero-width, bidi overrides), unassigned, surrogate and line/paragraph separator
# characters: invisible in a file list, or refused by some file system.
_INVISIBLE = frozenset({"Cc", "Cf", "Cn", "Cs", "Zl", "Zp"})
MAX_NAME = 120
MAX_NAME_BYTES = 240  # with ".safetensors" still under the 255 bytes ext4 and APFS allow per name
# The server owner's opt-in for training images from any folder. An environment variable, not a UI
# setting: settings are written by clients, and the clients are who the default protects against.
ALLOW_ANY_FOLDER_ENV = "IPADAPTER_TRAIN_ALLOW_ANY_FOLDER"
# Sub-folders of input/ that ComfyUI and its frontend fill with their own uploads (Load 3D, the mask editor's
# clipspace, pasted and webcam pictures, audio, backgrounds): not training sets, so never offered in the menu.
COMFY_UPLOAD_FOLDERS = frozenset({"3d", "audio", "backgrounds", "clipspace", "pasted", "threed", "webcam"})
# A client's folder path longer than this is refused before the file system sees it (no OS allows a
# longer name per component, and no training folder needs a longer path).
MAX_PATH_CHARS = 1024
MAX_COMPONENT_BYTES = 255
SHOWN_CHARS = 60  # how much of a client's text a message repeats


def shown(text: str) -> str:
    """A client's text quoted for a message, cut short when long (a 5,000-character path is not echoed)."""
    text = str(text)
    if len(text) <= SHOWN_CHARS:
        return repr(text)
    return f"{text[:SHOWN_CHARS - 20]!r}... ({len(text)} characters)"


def ensure_model_folders() -> None:
    """Add `ipadapter` and `clip_scorers` under ComfyUI's models folder, unless already registered."""
    table = folder_paths.folder_names_and_paths
    if ADAPTERS not in table:
        table[ADAPTERS] = ([os.path.join(folder_paths.models_dir, ADAPTERS)], set(ADAPTER_SUFFIXES))
    if SCORERS not in table:
        table[SCORERS] = ([os.path.join(folder_paths.models_dir, SCORERS)], {".safetensors"})


def _visible(name: str) -> bool:
    return not any(part.startswith(".") for part in Path(name).parts)


def adapter_files() -> list[str]:
    """Adapter files (.safetensors, .bin) in every registered ipadapter folder, without temp files."""
    ensure_model_folders()
    return [n for n in folder_paths.get_filename_list(ADAPTERS)
            if n.lower().endswith(ADAPTER_SUFFIXES) and _visible(n)]


def adapter_path(name: str) -> Path:
    """The full path of an adapter listed by `adapter_files`."""
    ensure_model_folders()
    path = folder_paths.get_full_path(ADAPTERS, name)
    if path is None:  # the server's own paths are not told to a client
        raise IPAdapterError(f"No adapter named {shown(name)} in models/ipadapter: refresh the node list or save "
                             "one with Save IP-Adapter first.")
    return Path(path)


def scorer_choices() -> list[str]:
    """Full CLIP models: folders with a config.json and .safetensors files in clip_scorers, then models/clip files."""
    ensure_model_folders()
    found: list[str] = []
    for root in folder_paths.get_folder_paths(SCORERS):
        if not os.path.isdir(root):
            continue
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if entry.is_dir() and os.path.isfile(os.path.join(entry.path, "config.json")):
                found.append(entry.name)
            elif entry.is_file() and entry.name.lower().endswith(".safetensors"):
                found.append(entry.name)
    extra = [n for n in folder_paths.get_filename_list(TEXT_ENCODERS) if n.lower().endswith(".safetensors")]
    return list(dict.fromkeys(found + extra))


def scorer_path(name: str) -> Path:
    """The file or folder behind a `scorer_choices` entry; clip_scorers wins over models/clip."""
    ensure_model_folders()
    missing = IPAdapterError(f"No CLIP model named {shown(name)} in models/clip_scorers or models/clip: put a full "
                             "CLIP model (vision and text towers, e.g. openai/clip-vit-large-patch14) there.")
    relative = os.path.relpath(os.path.join(os.sep, name), os.sep)  # cannot climb out of the folder
    for root in folder_paths.get_folder_paths(SCORERS):
        candidate = Path(root) / relative
        try:
            if (candidate.is_dir() and (candidate / "config.json").is_file()) or candidate.is_file():
                return candidate
        except (OSError, ValueError):  # a name the OS refuses (too long, a NUL): no such model, no OS text
            raise missing from None
    path = folder_paths.get_full_path(TEXT_ENCODERS, name)
    if path is None:
        raise missing
    return Path(path)


def _char(c: str) -> str:
    """A character as a message shows it: quoted when visible, always with its code point."""
    code = f"U+{ord(c):04X}"
    if c.isprintable() and not c.isspace():
        return f"'{c}' ({code})"
    return f"{code} ({unicodedata.name(c, 'a control character')})"


def _name_problem(text: str) -> str | None:
    """Why `text` (the name without .safetensors) cannot be a file name on every OS, or None."""
    if not text:
        return "it is empty"
    if len(text) > MAX_NAME:
        return f"it is longer than {MAX_NAME} characters"
    if len(text.encode("utf-8")) > MAX_NAME_BYTES:
        return f"it takes {len(text.encode('utf-8'))} bytes, more than the {MAX_NAME_BYTES} a file name may have"
    for c in text:
        if c in "/\\":
            return f"it contains {_char(c)}, a folder separator"
        if c in _WINDOWS_FORBIDDEN:
            return f"it contains {_char(c)}, which Windows does not allow in file names"
        if unicodedata.category(c) in _INVISIBLE:
            return f"it contains {_char(c)}, an invisible or control character"
    if ".." in text:
        return "it contains '..'"
    if text.startswith("."):
        return "it starts with '.', which hides the file"
    if text.endswith("."):
        return "it ends with '.'"
    stem = text.split(".")[0].rstrip(" ").lower()
    if stem in _RESERVED:
        return f"{stem.upper()!r} is a device name on Windows (CON, PRN, AUX, NUL, COM1-9, LPT1-9), not a file name"
    return None


def safe_adapter_name(name: str) -> str:
    """Check a user-given adapter name and return it without a .safetensors suffix.

    A name must be a plain file name on Windows, macOS and Linux: no folder separator (`/`, `\\`), no `..`,
    not hidden (leading `.`), none of the characters Windows forbids (`<>:"|?*`), no control or invisible
    characters, not a Windows device name. Anything else passes, including letters of any script and
    lookalikes of a slash (U+2215, U+2044, U+FF0F), which no OS takes for a separator. A bad name is refused,
    naming the character at fault, rather than silently changed, so the user sees what happened.
    """
    text = unicodedata.normalize("NFC", (name or "").strip())
    if text.lower().endswith(".safetensors"):
        text = text[: -len(".safetensors")].rstrip()
    problem = _name_problem(text)
    if problem:
        raise IPAdapterError(f"Cannot save an adapter as {shown(name)}: {problem}. Give a plain name such as "
                             "'my_adapter'; it is saved in models/ipadapter.")
    return text


def adapter_target(name: str) -> Path:
    """models/ipadapter/<name>.safetensors for a checked name; the result never leaves that folder."""
    ensure_model_folders()
    folder = Path(folder_paths.get_folder_paths(ADAPTERS)[0])
    target = folder / f"{safe_adapter_name(name)}.safetensors"
    if os.path.commonpath([os.path.abspath(target), os.path.abspath(folder)]) != os.path.abspath(folder):
        raise IPAdapterError(f"Cannot save {shown(name)}: the file would leave {folder}.")
    return target


def any_folder_allowed() -> bool:
    """True when the server's owner set IPADAPTER_TRAIN_ALLOW_ANY_FOLDER to 1/true/yes/on (read on each call)."""
    return os.environ.get(ALLOW_ANY_FOLDER_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def holds_images(folder: str | os.PathLike) -> bool:
    """True when `folder` has a visible file with an image extension (jpg, png, webp, bmp) or a data.json
    (which lists the images), as Load Training Images reads them: not recursive. False when unreadable."""
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name.lower()
                if not name.startswith(".") and (os.path.splitext(name)[1] in IMAGE_EXTENSIONS
                                                 or name == "data.json"):
                    return True
    except (OSError, ValueError):
        return False
    return False


def input_subfolders() -> list[str]:
    """The sub-folders of ComfyUI's input folder that hold training images, sorted: what the folder menu offers.

    A user picks a training set here, so only folders that `holds_images` are listed: not empty ones, not
    hidden ones, not ComfyUI's own upload folders (`COMFY_UPLOAD_FOLDERS`: 3d, clipspace, pasted, ...), and
    no empty entry. A symlinked folder that leads out of input/ is listed only when the owner opted in,
    since reading it would be refused otherwise. Other folders (nested ones too) are still read through
    the node's `path` input.
    """
    root = folder_paths.get_input_directory()
    names = []
    if os.path.isdir(root):
        for entry in os.scandir(root):
            if entry.name.startswith(".") or entry.name.lower() in COMFY_UPLOAD_FOLDERS or not entry.is_dir():
                continue
            if not any_folder_allowed():
                try:
                    resolve_inside(root, entry.name)
                except IPAdapterError:
                    continue
            if holds_images(entry.path):
                names.append(entry.name)
    return sorted(names)


def _check_length(text: str) -> None:
    """Refuse a client's folder path too long for any file system, before the OS sees it (its error would
    carry the server's absolute path)."""
    too_long = len(text) > MAX_PATH_CHARS
    part = next((p for p in text.replace("\\", "/").split("/") if len(p.encode("utf-8")) > MAX_COMPONENT_BYTES), None)
    if too_long or part is not None:
        what = (f"is {len(text)} characters long, more than the {MAX_PATH_CHARS} a folder path may have" if too_long
                else f"has a name of {len(part.encode('utf-8'))} bytes, more than the {MAX_COMPONENT_BYTES} a folder "
                     "name may have")
        raise IPAdapterError(f"The folder path {shown(text)} {what}: give the path of a sub-folder of ComfyUI's "
                             "input folder, such as cats/set1.")


def folder_problem(chosen: Path, given: str) -> str | None:
    """Why a folder the rules allow cannot be trained on (missing, not a folder, unreadable, no images), or None.

    Says it in one sentence with the client's own words (`given`), never the server's path or OS text with it.
    """
    try:
        if not chosen.is_dir():
            return f"No folder {shown(given)} in ComfyUI's input folder: create it and put the images in it."
        with os.scandir(chosen):
            pass
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or "the server cannot open it"
        return f"The folder {shown(given)} cannot be read ({reason}): pick another sub-folder of ComfyUI's input folder."
    if not holds_images(chosen):
        kinds = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
        return (f"The folder {shown(given)} holds no images ({kinds}, or a data.json that lists them): put the "
                "training images in it, or pick another folder.")
    return None


def training_folder(folder: str, path: str) -> Path:
    """The folder Load Training Images reads: `path` when given, else `folder`; both inside input/.

    A relative `path` (e.g. a nested "cats/set1") is taken under ComfyUI's input folder, like `folder`.
    An absolute `path` is accepted only when the server's owner opted in with IPADAPTER_TRAIN_ALLOW_ANY_FOLDER=1;
    without it nothing outside input/ is read or even looked at, so a client of a server on a network
    learns nothing about the rest of the disk.
    """
    path = (path or "").strip()
    root = folder_paths.get_input_directory()
    opted_in = any_folder_allowed()
    _check_length(path or (folder or ""))
    if path and is_absolute_anywhere(path):
        if not opted_in:
            raise IPAdapterError(f"Absolute paths are off on this server, so {shown(path)} is not read: put the images in "
                                 f"a sub-folder of ComfyUI's input folder, or have the server's owner start ComfyUI "
                                 f"with {ALLOW_ANY_FOLDER_ENV}=1.")
        return Path(path).expanduser()
    chosen = path or (folder or "")
    if not chosen:
        raise IPAdapterError("No images chosen: pick a sub-folder of ComfyUI's input folder, or give a path inside it.")
    if opted_in:  # the owner allows any folder, so a link out of input/ is fine too
        target = Path(root, chosen).resolve()
    else:
        try:
            target = resolve_inside(root, chosen)
        except IPAdapterError:
            raise IPAdapterError(f"{shown(chosen)} is not inside ComfyUI's input folder (through '..' or a link): pick a "
                                 f"sub-folder of input/, or have the server's owner start ComfyUI with "
                                 f"{ALLOW_ANY_FOLDER_ENV}=1.") from None
    if target == Path(root).resolve():
        raise IPAdapterError("The input folder itself holds every upload: put the training images in a sub-folder of "
                             "it and pick that.")
    return target
