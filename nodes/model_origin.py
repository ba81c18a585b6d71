"""Whether the Train node's models are stand-ins: random-weight files from `make-test-models`.

The core marks the files it writes with random weights (`models.random_init.RANDOM_MARK` in the safetensors header) and
labels every report made from them. In ComfyUI the Train node gets MODEL, CLIP, VAE and CLIP_VISION objects, and
ComfyUI keeps neither the file's path nor its header metadata on them (`comfy.sd.load_checkpoint_guess_config`
and `comfy.clip_vision.load` read the metadata only to detect the model and drop it). So the mark is found the
way ComfyUI found the files: the prompt being executed (the node's hidden PROMPT input) names, in the widgets of
the loader nodes upstream of those four inputs, the model files they loaded; each name that resolves in one of
ComfyUI's model folders (as the loaders resolve it) is opened and its header read (only the header: a few
kilobytes, no tensors, no pickle).

Why this route: it needs no change to ComfyUI or to the files, works for any loader node that names a file in
a model folder (Load Checkpoint, Load CLIP Vision, Load Diffusion Model, Load VAE, LoRA loaders on the way), and
reads exactly the mark the CLI reads. Marking the weights themselves (a recognisable tensor value) would survive
any loader but changes the stand-in models' numbers and ComfyUI's dtype casts; a path kept on the model object
does not exist in ComfyUI 0.3.75. A model built in the graph from no file (or from a path outside the model
folders) is not found: its run is reported as not random, as before.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

import folder_paths

from ..ipadapter_train.api import RANDOM_MARK

log = logging.getLogger(__name__)

MODEL_INPUTS = ("model", "clip", "vae", "clip_vision")  # the Train node's inputs whose sources are checked
SKIPPED_FOLDERS = {"custom_nodes", "configs"}  # folder_paths entries that hold no model files


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))


def upstream_nodes(prompt: dict[str, Any], node_id: str, inputs: Iterable[str]) -> list[dict[str, Any]]:
    """The prompt's nodes that feed `inputs` of node `node_id`, directly or through other nodes."""
    start = (prompt.get(str(node_id)) or {}).get("inputs") or {}
    todo = [str(start[name][0]) for name in inputs if _is_link(start.get(name))]
    seen: set[str] = set()
    found = []
    while todo:
        nid = todo.pop()
        if nid in seen or not isinstance(prompt.get(nid), dict):
            continue
        seen.add(nid)
        found.append(prompt[nid])
        todo.extend(str(v[0]) for v in (prompt[nid].get("inputs") or {}).values() if _is_link(v))
    return found


def _model_file(name: str) -> Path | None:
    """The file a loader widget value names in one of ComfyUI's model folders, or None."""
    if not name.lower().endswith(".safetensors"):
        return None
    for folder in folder_paths.folder_names_and_paths:
        if folder in SKIPPED_FOLDERS:
            continue
        try:
            path = folder_paths.get_full_path(folder, name)
        except Exception:  # noqa: BLE001 - an odd folder entry must not stop a run
            continue
        if path:
            return Path(path)
    return None


def _marked_random(path: Path) -> bool:
    """Whether a safetensors file's header carries the core's random-weight mark."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get(RANDOM_MARK) == "true"
    except Exception as exc:  # noqa: BLE001 - the loader read it; a header we cannot read is not a stand-in
        log.debug("Could not read the header of %s: %s", path, exc)
        return False


def stand_in_models(prompt: dict[str, Any] | None, node_id: str) -> list[str]:
    """The names of the random-weight (stand-in) model files that node `node_id`'s MODEL, CLIP, VAE and
    CLIP_VISION come from in `prompt` (ComfyUI's API prompt); empty when none is, or when unknown."""
    if not isinstance(prompt, dict) or not node_id:
        return []
    names = []
    for node in upstream_nodes(prompt, node_id, MODEL_INPUTS):
        for value in (node.get("inputs") or {}).values():
            if isinstance(value, str):
                path = _model_file(value)
                if path is not None and _marked_random(path) and value not in names:
                    names.append(value)
    return names
