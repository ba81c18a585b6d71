"""Editor-format workflow (what the ComfyUI editor saves, workflows/*.json) -> API format (`POST /prompt`).

    from browser_workflow_api import load_workflow, editor_to_api, set_inputs
    api = editor_to_api(load_workflow("train_ip_adapter"), server_object_info)
    set_inputs(api, "IPAdapterTrain_Train", steps=3, resolution=64)
    POST /prompt {"prompt": api, "client_id": ...}

The editor keeps widget values as a list (`widgets_values`) in widget order; the server's `/object_info`
gives each node's inputs in that order, which names them. The editor also stores values of widgets that
are not inputs: the `control_after_generate` choice that follows a seed widget, and the upload button
that follows an image/video/audio combo. Those are skipped. Muted nodes are left out, bypassed nodes are
passed through (by type, as the editor does), Reroute and PrimitiveNode are resolved, Notes ignored.
`test_browser.py` checks the result equals the editor's own conversion (`app.graphToPrompt()`) for
every shipped workflow.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WORKFLOWS_DIR = Path(__file__).resolve().parents[2] / "workflows"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")
MODE_MUTED, MODE_BYPASS = 2, 4
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


# Short ids used in code and tests -> the shipped files' names. ComfyUI's frontend (1.32.9, with ComfyUI 0.3.75)
# lists a custom node's templates from GET /workflow_templates, which gives file names only, and builds each card
# from the name alone: its title is the name (one line, about 33 characters show) and its description the same
# name with "-" and "_" as spaces, so a card always shows its name twice and the name is the one thing a user
# reads: it says what the workflow does. The number gives the order: the cards come in the server's directory
# order (the default sort, "Newest", finds no dates) or by name ("Alphabetical", and Windows lists directories
# by name), so training comes first, then the CPU quick run, then using and scoring an adapter, SDXL, and the search.
SHIPPED = {
    "train_ip_adapter": "1. Train an IP-Adapter",
    "train_ip_adapter_cpu": "2. Train on a CPU, quick first run",
    "train_then_apply": "3. Train and use an IP-Adapter",
    "apply_ip_adapter": "4. Generate with your IP-Adapter",
    "score": "5. Score images with CLIP",
    "train_ip_adapter_sdxl": "6. Train and use an SDXL adapter",
    "search_ip_adapter": "7. Search IP-Adapter settings",
}


def workflow_path(name_or_path: str | Path) -> Path:
    """The file of a shipped workflow by id ("train_ip_adapter") or file name, or any path with a suffix."""
    name = str(name_or_path)
    if name in SHIPPED:
        return WORKFLOWS_DIR / f"{SHIPPED[name]}.json"
    path = Path(name_or_path)
    return path if path.suffix == ".json" else WORKFLOWS_DIR / f"{name}.json"


def load_workflow(name_or_path: str | Path) -> dict:
    """A shipped workflow by id ("train_ip_adapter") or file name, or any editor-format file by path."""
    return json.loads(workflow_path(name_or_path).read_text())


def _input_specs(info: dict) -> list[tuple[str, Any, dict]]:
    """(name, type, options) of a node's inputs in widget order: required then optional."""
    inputs = info.get("input", {})
    order = info.get("input_order") or {sec: list(inputs.get(sec, {})) for sec in ("required", "optional")}
    out = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = inputs.get(section, {}).get(name)
            if spec is None:
                continue
            type_ = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, type_, opts))
    return out


def _is_widget(type_: Any, opts: dict) -> bool:
    if opts.get("forceInput"):
        return False
    return isinstance(type_, list) or type_ in WIDGET_TYPES


def _editor_only(name: str, type_: Any, opts: dict) -> str | None:
    """Which editor-only widget values follow this input's value in `widgets_values`, if any."""
    if opts.get("control_after_generate") or (type_ == "INT" and name in ("seed", "noise_seed")):
        return "control+filter" if isinstance(type_, list) or type_ == "COMBO" else "control"
    if any(opts.get(flag) for flag in UPLOAD_FLAGS):
        return "upload"
    return None


def widget_values(node: dict, info: dict) -> dict[str, Any]:
    """Map a node's `widgets_values` to its input names, using the server's definition of the node."""
    values = node.get("widgets_values")
    if values is None:
        return {}
    specs = [(n, t, o) for n, t, o in _input_specs(info) if _is_widget(t, o)]
    if isinstance(values, dict):  # some nodes save a dict keyed by widget name
        return {n: values[n] for n, _, _ in specs if n in values}
    out: dict[str, Any] = {}
    i = 0
    for name, type_, opts in specs:
        if i >= len(values):
            break
        out[name] = values[i]
        i += 1
        extra = _editor_only(name, type_, opts)
        # older files may lack the control value: skip it only where it is one
        if extra in ("control", "control+filter") and i < len(values) and values[i] in CONTROL_VALUES:
            i += 1
            if extra == "control+filter" and i < len(values) and isinstance(values[i], str):
                i += 1
        elif extra == "upload":
            i += 1
    return out


def editor_to_api(workflow: dict, object_info: dict) -> dict[str, dict]:
    """The `prompt` of a `POST /prompt` body: {node_id: {"class_type", "inputs", "_meta"}}."""
    if workflow.get("definitions", {}).get("subgraphs"):
        raise NotImplementedError("workflows with subgraphs are not converted; flatten them in the editor")
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            links[link["id"]] = (link["origin_id"], link["origin_slot"], link["type"])
        else:
            link_id, src, src_slot, _dst, _dst_slot, type_ = link
            links[link_id] = (src, src_slot, type_)

    def resolve(link_id: int | None, seen: frozenset = frozenset()):
        """("link", [id, slot]) or ("value", v) or None for what feeds an input."""
        if link_id is None or link_id not in links or link_id in seen:
            return None
        src_id, src_slot, type_ = links[link_id]
        src = nodes.get(src_id)
        if src is None or src.get("mode") == MODE_MUTED:
            return None
        seen = seen | {link_id}
        if src["type"] == "Reroute":
            ins = src.get("inputs") or [{}]
            return resolve(ins[0].get("link"), seen)
        if src["type"] == "PrimitiveNode":
            return ("value", (src.get("widgets_values") or [None])[0])
        if src.get("mode") == MODE_BYPASS:  # the editor routes the first input of the same type through
            for inp in src.get("inputs", []):
                if inp.get("link") is not None and inp.get("type") in (type_, "*"):
                    return resolve(inp["link"], seen)
            return None
        return ("link", [str(src_id), src_slot])

    prompt: dict[str, dict] = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode") in (MODE_MUTED, MODE_BYPASS):
            continue
        info = object_info.get(node["type"])
        if info is None:
            raise KeyError(f"node {node['id']}: type {node['type']!r} is not registered on this server")
        inputs: dict[str, Any] = dict(widget_values(node, info))
        for inp in node.get("inputs", []):
            fed = resolve(inp.get("link"))
            if fed is not None:
                inputs[inp["name"]] = fed[1]
        title = node.get("title") or info.get("display_name") or node["type"]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs, "_meta": {"title": title}}
    return prompt


def find_nodes(prompt: dict[str, dict], class_type: str) -> list[str]:
    return [nid for nid, n in prompt.items() if n["class_type"] == class_type]


def set_inputs(prompt: dict[str, dict], class_type: str, **values: Any) -> dict[str, dict]:
    """Set inputs on every node of `class_type` (raises if there is none)."""
    ids = find_nodes(prompt, class_type)
    if not ids:
        raise KeyError(f"no {class_type} node in this prompt")
    for nid in ids:
        prompt[nid]["inputs"].update(values)
    return prompt
