"""Training images: load a folder of pictures (and their captions) robustly, and the small
preprocessing helpers the trainer applies before the VAE.

Every image ends up as 8-bit RGB with its EXIF orientation applied, whatever the file stored
(alpha, palettes, 16-bit, float, CMYK), so the trainer never sees a surprise mode. Files that
cannot be used are skipped and reported rather than aborting the whole run.

Only files inside the data set's folder are read: a data.json entry or an image (or caption) that
leads out of it, by `..`, an absolute path or a link, is skipped and named in the report with the
reason, never opened. Skipping rather than refusing the whole set matches every other unusable file
here, and on a server it keeps a hostile data.json from doing more than shrinking its own data set;
when nothing usable is left the load is refused, naming each entry.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import IPAdapterError
from .safe_paths import is_absolute_anywhere, resolve_inside

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


@dataclass
class Sample:
    """One training image and its caption."""

    path: Path
    image: Image.Image  # RGB, 8-bit, EXIF orientation applied
    caption: str


@dataclass
class DatasetReport:
    """What `load_image_folder` used, skipped and why: shown to the user before training."""

    folder: str
    used: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)
    captions_from: str = "none"  # "txt", "data.json", "prompt", "none" or "mixed"
    missing_captions: list[str] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) of used images

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return {
            "folder": self.folder,
            "used": list(self.used),
            "skipped": [[name, reason] for name, reason in self.skipped],
            "captions_from": self.captions_from,
            "missing_captions": list(self.missing_captions),
            "sizes": [[w, h] for w, h in self.sizes],
        }

    def summary(self) -> str:
        """Short human-readable report: counts, size range, uncaptioned and skipped files."""
        lines = [f"{len(self.used)} image(s) used from {self.folder} (captions: {self.captions_from})."]
        if self.sizes:
            small = min(self.sizes, key=lambda s: s[0] * s[1])
            large = max(self.sizes, key=lambda s: s[0] * s[1])
            lines.append(f"Sizes: smallest {small[0]}x{small[1]}, largest {large[0]}x{large[1]}.")
        if self.missing_captions:
            lines.append(f"{len(self.missing_captions)} without caption: {', '.join(self.missing_captions)}.")
        if self.skipped:
            lines.append(f"{len(self.skipped)} skipped:")
            lines.extend(f"  - {name}: {reason}" for name, reason in self.skipped)
        return "\n".join(lines)


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """Scale 16-bit, 32-bit int and float images to 8 bits by their bit depth or value range.

    Pillow's own convert() clips these to 0..255, which turns most 16-bit photos white.
    """
    values = np.nan_to_num(np.asarray(image).astype(np.float64), posinf=0.0, neginf=0.0)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode.startswith("I;16") or (image.mode == "I" and lo >= 0 and hi <= 65535):
        scaled = values / 65535.0 * 255.0
    elif image.mode == "F" and lo >= 0 and hi <= 1:
        scaled = values * 255.0
    elif hi > lo:  # arbitrary range (signed ints, HDR floats): stretch what is there
        scaled = (values - lo) / (hi - lo) * 255.0
    else:
        scaled = np.clip(values, 0, 255)
    grey = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    return grey.convert("RGB")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparent areas become white."""
    if image.mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_rgb(image)
    # A palette/grey/RGB image can carry a transparent colour key (PNG tRNS) instead of alpha.
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as exc:  # e.g. LAB, which Pillow cannot convert without a colour profile
        raise ValueError(f"unsupported colour mode {image.mode}") from exc


def _open_rgb(path: Path) -> Image.Image:
    """Open, fully decode, orient and convert; raises Pillow's own errors."""
    with Image.open(path) as opened:
        opened.load()  # decode now so truncated files fail here, not mid-training
        try:
            oriented = ImageOps.exif_transpose(opened)
        except Exception as exc:  # a malformed EXIF block should not cost the user a good photo
            logger.warning("Ignoring unreadable EXIF orientation of %s: %s", path, exc)
            oriented = opened
        return _to_rgb(oriented)


def _reason(exc: BaseException) -> str:
    """A short reason for the report, without the path Pillow puts in some messages."""
    if isinstance(exc, UnidentifiedImageError):
        return "not an image or an unsupported format"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 100 else text[:97] + "..."


def load_image(path: str | Path) -> Image.Image:
    """Load one image as 8-bit RGB with EXIF orientation applied; IPAdapterError if unreadable."""
    path = Path(path)
    try:
        return _open_rgb(path)
    except Exception as exc:  # Pillow plugins raise many types (OSError, SyntaxError, struct.error...)
        raise IPAdapterError(
            f"Could not read image '{path}' ({_reason(exc)}); replace it with a valid JPEG, PNG, WebP or BMP file."
        ) from exc


def _read_text(path: Path) -> str:
    """Read a UTF-8 text file (a BOM is tolerated) or fail with a user-facing error."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IPAdapterError(f"'{path}' is not UTF-8 text; re-save it with UTF-8 encoding.") from exc
    except OSError as exc:
        raise IPAdapterError(f"Could not read '{path}' ({exc.strerror or exc}); check its permissions.") from exc


OUTSIDE = "leads out of the data set's folder (through '..' or a link), so it is not read"


def _inside(base: Path, name: str) -> tuple[Path | None, str | None]:
    """`name` (relative to the resolved folder `base`) resolved, or None and why it is not read.

    An absolute name, or one whose `..` climbs out, is refused before anything on the disk is looked at.
    """
    if is_absolute_anywhere(name):
        return None, "an absolute path, so it is not read; name files relative to the data set's folder"
    if Path(os.path.normpath(name)).parts[:1] == (os.pardir,):
        return None, OUTSIDE
    try:
        return resolve_inside(base, name), None
    except IPAdapterError:
        pass
    try:  # refused: either it cannot be resolved at all (a link loop) or it resolves outside
        (base / name).resolve()
    except (OSError, RuntimeError, ValueError):
        return None, "a link that loops back on itself (or a path the system cannot follow)"
    return None, OUTSIDE


def _txt_caption(base: Path, image_name: str) -> tuple[str, tuple[str, str] | None]:
    """The stripped caption from the same-named .txt next to an image ("" when there is none), and the
    (name, reason) of a caption file that was not read because it leads out of the folder."""
    for suffix in (".txt", ".TXT"):
        name = str(Path(image_name).with_suffix(suffix))
        candidate, problem = _inside(base, name)
        if problem is not None:  # the image is inside, so only a link can take its caption out
            return "", (name, f"a caption file that {problem}" if problem == OUTSIDE else problem)
        if candidate is not None and candidate.is_file():
            return _read_text(candidate).strip(), None
    return "", None


def _read_data_json(path: Path) -> list[tuple[str, str]]:
    """Parse the reference recipe's data.json into (image_file, caption) pairs."""
    shape = 'a list of {"image_file": "name.jpg", "text": "caption"} entries'
    try:
        entries = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise IPAdapterError(
            f"'{path}' is not valid JSON ({exc.msg} at line {exc.lineno}); fix it or delete it to use .txt captions."
        ) from exc
    if not isinstance(entries, list):
        raise IPAdapterError(f"'{path}' must be {shape}, but it holds a JSON {type(entries).__name__}.")
    if not entries:
        raise IPAdapterError(f"'{path}' lists no images; add entries to it or delete it to use the folder's images.")
    pairs = []
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("image_file"), str) or not entry["image_file"]:
            raise IPAdapterError(f'Entry {number} of \'{path}\' has no "image_file" name; the file must be {shape}.')
        text = entry.get("text", "")
        if not isinstance(text, str):
            raise IPAdapterError(f'Entry {number} of \'{path}\' has a "text" that is not a string; make it a caption.')
        pairs.append((entry["image_file"], text.strip()))
    return pairs


def _list_preview(items: list[str], limit: int = 5) -> str:
    """Join names for a message, cutting long lists so the sentence stays readable."""
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"


def _scan(folder: Path, base: Path) -> list[tuple[str, Path | None, str | None]]:
    """(name, resolved file, reason it is not read) for each visible entry of `folder` with an image
    extension (any letter case), sorted by name. Links that loop, dangle or lead out of the folder
    are kept with their reason, so the report can name them; folders named like images are left out.
    """
    found: list[tuple[str, Path | None, str | None]] = []
    # Hidden files are skipped: macOS leaves "._name.jpg" metadata twins that are not images.
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith(".") or entry.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        resolved, problem = _inside(base, entry.name)
        if resolved is not None and not resolved.is_file():
            if resolved.exists():
                continue
            problem = "a broken link: the file it points to does not exist"
        found.append((entry.name, resolved, problem))
    return found


def _listed(folder: Path, base: Path, list_file: Path) -> list[tuple[str, Path | None, str, str | None]]:
    """(name, resolved file, caption, reason it is not read) for each entry of a data.json."""
    listed = []
    for name, text in _read_data_json(list_file):
        resolved, problem = _inside(base, name)
        if resolved is not None and not resolved.is_file():
            if os.path.lexists(folder / name) and not resolved.exists():
                problem = "a broken link: the file it points to does not exist"
            else:
                problem = f"listed in {list_file.name} but the file does not exist"
        listed.append((name, resolved, text, problem))
    return listed


def load_image_folder(
    folder: str | Path, prompt: str | None = None, min_side: int = 64
) -> tuple[list[Sample], DatasetReport]:
    """Load the training images of a folder (not recursive, sorted by name) with their captions.

    Captions come from `prompt` when it is non-blank (same caption for every image in the
    folder), else from a `data.json` in the folder (which then also decides the images), else
    from a same-named `.txt` per image. `folder` may also be a `.json` list itself (the reference
    recipe's habit, `--images path/to/data.json`): its folder with that list deciding the images,
    and `prompt`, when given, replacing its captions. Unusable images, and files that lead out of
    the folder, are skipped and reported.
    """
    folder = Path(folder).expanduser()
    list_file: Path | None = None
    if not folder.exists():
        raise IPAdapterError(f"Image folder '{folder}' does not exist; check the path.")
    if folder.is_file() and folder.suffix.lower() == ".json":
        folder, list_file = folder.parent, folder
    elif not folder.is_dir():
        raise IPAdapterError(f"'{folder}' is a file, not a folder; pass the folder that holds the training images "
                             "(or its data.json).")
    base = folder.resolve()
    use_prompt = prompt is not None and prompt.strip() != ""
    data_json = folder / "data.json"
    if list_file is None and data_json.is_file() and not use_prompt:
        list_file = data_json
    elif use_prompt and data_json.is_file():
        logger.info("A prompt was given, so the captions in %s are not used.", data_json)
    if list_file is not None and _inside(base, list_file.name)[1] is not None:
        raise IPAdapterError(f"'{list_file}' is a link to a file outside '{folder}', so it is not read; copy the "
                             "file into that folder.")
    # (report name, resolved file, caption: None = read the .txt, reason it is not read)
    candidates: list[tuple[str, Path | None, str | None, str | None]]
    if list_file is not None:
        captions_from = "prompt" if use_prompt else "data.json"
        candidates = [(name, path, prompt.strip() if use_prompt else text, problem)  # type: ignore[union-attr]
                      for name, path, text, problem in _listed(folder, base, list_file)]
        chosen = {path for _, path, _, _ in candidates if path is not None}
        unlisted = [name for name, path, problem in _scan(folder, base) if problem is None and path not in chosen]
        if unlisted:
            logger.info("Not in %s, so not used: %s", list_file.name, _list_preview(unlisted))
    elif use_prompt:
        captions_from = "prompt"
        candidates = [(name, path, prompt.strip(), problem)  # type: ignore[union-attr]
                      for name, path, problem in _scan(folder, base)]
    else:
        captions_from = "txt"
        candidates = [(name, path, None, problem) for name, path, problem in _scan(folder, base)]
    if not candidates:
        raise IPAdapterError(f"Image folder '{folder}' contains no images (jpg, png, webp, bmp); add some to it.")

    samples: list[Sample] = []
    report = DatasetReport(folder=str(folder))
    for name, path, caption, problem in candidates:
        if problem is not None or path is None:
            report.skipped.append((name, problem or OUTSIDE))
            continue
        try:
            image = _open_rgb(path)
        except Exception as exc:  # any decoder failure means "skip this file", never abort the run
            report.skipped.append((name, f"unreadable: {_reason(exc)}"))
            continue
        width, height = image.size
        if min(width, height) < min_side:
            report.skipped.append((name, f"too small: {width}x{height}, short side under {min_side} px"))
            continue
        if caption is None:
            caption, unread = _txt_caption(base, name)
            if unread is not None:
                report.skipped.append(unread)
        # the name as the folder shows it (a link keeps its own name), so the report and a resume's
        # fingerprint name what the user sees
        samples.append(Sample(path=folder / name, image=image, caption=caption))
        report.used.append(name)
        report.sizes.append((width, height))
        if not caption:
            report.missing_captions.append(name)

    if not samples:
        reasons = [f"{name} ({reason})" for name, reason in report.skipped]
        raise IPAdapterError(
            f"Image folder '{folder}' has no usable image: {_list_preview(reasons)} were skipped; "
            f"use image files inside that folder that open in a viewer and are at least {min_side} px on the short side."
        )
    if report.skipped:
        logger.warning(
            "Skipped %d file(s) in %s (%d of %d image(s) used): %s",
            len(report.skipped), folder, len(samples), len(candidates),
            "; ".join(f"{name} ({reason})" for name, reason in report.skipped),
        )
    if captions_from == "txt" and report.missing_captions:
        captions_from = "none" if len(report.missing_captions) == len(samples) else "mixed"
    report.captions_from = captions_from
    if report.missing_captions:
        logger.warning(
            "%d image(s) have no caption and train with an empty prompt (add a same-named .txt): %s",
            len(report.missing_captions), ", ".join(report.missing_captions),
        )
    return samples, report
