"""What a run trained on, recorded in its checkpoint and compared when it is resumed, before any model loads.

    inputs = model_inputs("sd15.safetensors", "clip_vision/vit-l.safetensors")   # headers only: a second
    record = {**inputs, "images": image_hashes(samples)}                          # state.json's "trained_on"
    check_trained_on(checkpoint, inputs, samples)                                 # one sentence if another

A model's identity is its name, its size and a signature: SHA-256 over its safetensors header (shapes, dtypes,
offsets) or its folder's configs, and 4 KiB read at 16 evenly spaced places of every weights file. That tells a
fine-tune from its base (same header, other bytes) for 64 KiB of reading instead of gigabytes; a renamed or
moved file with the same signature is the same model. Images are hashed by their decoded pixels, so the CLI's
files and the node's tensors are hashed alike.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import IPAdapterError

log = logging.getLogger(__name__)

_SAMPLES, _SAMPLE_BYTES = 16, 4096
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


def _sample_file(digest, path: Path) -> int:
    """Add `path`'s header (safetensors) and sampled bytes to `digest`; return its size."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if path.suffix.lower() == ".safetensors":
            head = handle.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else 0
            digest.update(head + handle.read(min(length, 100 << 20)))
        for i in range(_SAMPLES):
            handle.seek(max(0, (size - _SAMPLE_BYTES) * i // (_SAMPLES - 1)))
            digest.update(handle.read(_SAMPLE_BYTES))
    return size


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """{"name", "size", "signature"} of a model file or folder (see the module docstring)."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        size = 0
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            rel = item.relative_to(path).as_posix()
            if item.suffix.lower() == ".json":
                digest.update(rel.encode() + b"\0" + item.read_bytes())
            elif item.suffix.lower() in _WEIGHT_SUFFIXES:
                digest.update(rel.encode() + b"\0")
                size += _sample_file(digest, item)
    else:
        size = _sample_file(digest, path)
    return {"name": path.name, "size": size, "signature": digest.hexdigest()}


def _encoder_widths(path: Path) -> dict[str, int]:
    """The image encoder's hidden width and embedding width, from its header or config.json."""
    if path.is_dir():
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
        vision = raw.get("vision_config") or raw
        return {"width": int(vision.get("hidden_size", 0)),
                "embedding": int(raw.get("projection_dim", vision.get("projection_dim", 0)))}
    from ..storage.weights_io import WeightFile

    with WeightFile(path) as wf:
        patch = wf.shapes.get("vision_model.embeddings.patch_embedding.weight", (0,))
        projection = wf.shapes.get("visual_projection.weight", (0,))
    return {"width": int(patch[0]), "embedding": int(projection[0])}


def model_inputs(base_model: str | os.PathLike, image_encoder: str | os.PathLike) -> dict[str, Any]:
    """The family and identities of a run's base model and image encoder, read without loading either.

    A file this cannot read is left to the loader, which says what is wrong with it: its identity is then
    {} and nothing is compared."""
    from ..models.loading import peek_family

    out: dict[str, Any] = {}
    base = Path(base_model)
    try:
        if base.is_dir() or base.suffix.lower() == ".safetensors":  # a pickle has no header: it would be read whole
            out["family"] = peek_family(base).name
        out["base_model"] = file_identity(base_model)
    except (OSError, ValueError, IPAdapterError) as exc:
        log.debug("no identity for %s: %s", base_model, exc)
    try:
        out["image_encoder"] = {**file_identity(image_encoder), **_encoder_widths(Path(image_encoder))}
    except (OSError, ValueError, KeyError, IPAdapterError) as exc:
        log.debug("no identity for %s: %s", image_encoder, exc)
    return out


def image_hashes(samples: Sequence[Any]) -> list[dict[str, str]]:
    """[{"name", "sha256"}] of the images, hashed by size, mode and pixels."""
    out = []
    for s in samples:
        digest = hashlib.sha256(f"{s.image.size}|{s.image.mode}|".encode())
        digest.update(s.image.tobytes())
        out.append({"name": s.path.name, "sha256": digest.hexdigest()})
    return out


def _details(record: dict[str, Any]) -> str:
    width = f", {record['width']}-d" if record.get("width") else ""
    return f"{record.get('size')} bytes{width}"


def check_trained_on(folder: Path, recorded: dict[str, Any] | None, inputs: dict[str, Any] | None,
                     hashes: list[dict[str, str]] | None) -> None:
    """Refuse, in one sentence, a resume whose base model, image encoder or images are not the checkpoint's.

    `recorded` is state.json's "trained_on" (None: a checkpoint written before it was recorded, accepted with a
    warning); `inputs` are `model_inputs` of this run (None: in-memory models, not compared); `hashes` the
    images' `image_hashes`.
    """
    if not recorded:
        log.warning("The checkpoint in %s does not record the models and images it was trained on (an older "
                    "version wrote it): resuming with the settings and image names checked only, so give the "
                    "base model and image encoder it was trained with.", folder)
        return
    inputs = inputs or {}
    family, was = inputs.get("family"), recorded.get("family")
    if family and was and family != was:
        from ..families import FAMILIES

        def label(name: str) -> str:
            return FAMILIES[name].label if name in FAMILIES else name
        then, now = recorded.get("base_model") or {}, inputs.get("base_model") or {}
        raise IPAdapterError(f"The checkpoint in {folder} was trained on an {label(was)} base model "
                             f"({then.get('name')}), but --base-model {now.get('name')} is an {label(family)} model: "
                             f"resume with {then.get('name')}, or start a new run without --resume.")
    for key, option, what in (("base_model", "--base-model", "base model"),
                              ("image_encoder", "--image-encoder", "image encoder")):
        now, then = inputs.get(key), recorded.get(key)
        if not now or not then:
            continue
        widths = [(r.get("width"), r.get("embedding")) for r in (then, now)]
        if now.get("signature") != then.get("signature") or widths[0] != widths[1]:
            raise IPAdapterError(f"The checkpoint in {folder} was trained with another {what} ({then.get('name')}, "
                                 f"{_details(then)}) than {option} {now.get('name')} ({_details(now)}): resume "
                                 f"with {then.get('name')}, or start a new run without --resume.")
    was_images = recorded.get("images")
    if hashes is not None and isinstance(was_images, list):
        before = {i.get("name"): i.get("sha256") for i in was_images if isinstance(i, dict)}
        changed = sorted(h["name"] for h in hashes if h["name"] in before and before[h["name"]] != h["sha256"])
        added = sorted(h["name"] for h in hashes if h["name"] not in before)
        gone = sorted(set(before) - {h["name"] for h in hashes})
        if changed or added or gone:
            parts = [f"{label} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                     for label, names in (("changed", changed), ("new", added), ("missing", gone)) if names]
            raise IPAdapterError(f"The checkpoint in {folder} was trained on other images ({'; '.join(parts)}): "
                                 "resume with the images it was trained on, or start a new run without --resume.")
