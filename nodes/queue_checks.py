"""Refusals that need the whole graph, and the gate that makes any refusal of this pack stop the whole prompt.

Two problems with ComfyUI 0.3.75's own validation (`execution.validate_prompt`), both seen by users:

1. It runs every output whose own inputs validate. A refused Save IP-Adapter only gets a red outline
   while Train IP-Adapter still trains for the template's "Training report" output, and the trained
   adapter is never saved. Only when NO output validates does POST /prompt answer 400, and only then does
   the frontend show the reasons in its error dialog (its PromptExecutionError lists every node error).
2. A node's `validate_inputs` sees only its own widget values, not what is linked in: Apply and Train
   cannot tell at queue time that the adapter of Load IP-Adapter and the encoder of Load CLIP Vision do
   not fit, although both file names are in the prompt. The mismatch showed only after the models loaded.

The fix is an on-prompt handler (`PromptServer.add_on_prompt_handler`, run by POST /prompt before it
validates), `gate`. It reads the prompt dict only:
- `encoder_refusals` finds Apply / Train nodes fed by Load IP-Adapter and Load CLIP Vision whose files do
  not fit (from the files' headers: nothing is loaded), and Train nodes whose variant differs from their
  init adapter's; each verdict is kept for that prompt id and node id, where the node's own
  `validate_inputs` finds it (`queued_refusal`), so the sentence is the node's own validation error;
- every node of this pack is checked with its own `validate_inputs` (the same functions ComfyUI calls);
- when anything is refused, the prompt's `partial_execution_targets` becomes exactly the outputs that
  depend on a refused node. ComfyUI then validates only those, all of them fail, and it answers 400 with
  the sentences in `node_errors`: the whole prompt is refused before anything runs, and the browser shows
  the error dialog. A graph with no refusal is passed on untouched.

Alternatives weighed: raising from the handler does nothing (ComfyUI logs handler exceptions and goes on);
answering the request from the handler is impossible (it returns the JSON, not a response); a route that
replaces POST /prompt would fork ComfyUI's queueing code; making Train's own validation look downstream is
impossible (validation sees no prompt); an injected refusal node would show in the node menu. Narrowing
the targets uses only what POST /prompt already honours; API clients get the same 400, and each node's own
`validate_inputs` still refuses its own values whatever the handler does (e.g. a Save whose name is taken).
"""
from __future__ import annotations

import functools
import inspect
import logging
import threading
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable

from ..ipadapter_train.api import WeightFile, adapter_reads, encoder_widths_of_shapes, mismatch_sentence

log = logging.getLogger(__name__)

LOAD_ADAPTER = "IPAdapterTrain_Load"
LOAD_CLIP_VISION = "CLIPVisionLoader"  # ComfyUI's own Load CLIP Vision
APPLY, TRAIN = "IPAdapterTrain_Apply", "IPAdapterTrain_Train"
ENCODER_FIX = "load {file} in Load CLIP Vision"  # where a ComfyUI user puts the encoder that fits
GIVEN_ENCODER = "the CLIP vision model"
# Train's refusal of an init adapter of another variant than its variant input, queued or run
INIT_VARIANT = "{source} is a {have} adapter but variant is {want}: set variant to {have}."
KEEP_PROMPTS = 64  # verdicts are kept for this many recent prompts (a refused prompt is validated at once)

_LOCK = threading.Lock()
_VERDICTS: "OrderedDict[str, dict[str, str]]" = OrderedDict()  # prompt id -> node id -> sentence


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def _source(prompt: dict, node: dict, name: str, class_type: str) -> dict | None:
    """The node feeding input `name` when it is of `class_type`, else None."""
    value = (node.get("inputs") or {}).get(name)
    if not _is_link(value):
        return None
    upstream = prompt.get(value[0])
    return upstream if isinstance(upstream, dict) and upstream.get("class_type") == class_type else None


def _literal(node: dict | None, name: str) -> str | None:
    value = (node or {}).get("inputs", {}).get(name) if node else None
    return value if isinstance(value, str) else None


def _adapter_header(name: str) -> tuple[str, int, dict[str, str]] | None:
    """(variant, feature width, metadata) of an adapter file in models/ipadapter, from its safetensors header;
    None when it cannot be told without loading (a .bin pickle, a missing or damaged file: execution says)."""
    from .folders import adapter_path

    try:
        path = adapter_path(name)
        if path.suffix.lower() != ".safetensors":
            return None
        with WeightFile(path) as wf:
            reads = adapter_reads(wf.shapes)
            return (*reads, dict(wf.metadata)) if reads else None
    except Exception:  # noqa: BLE001 - anything unreadable is the loader's to report when it runs
        return None


def _encoder_widths(name: str) -> tuple[int, int] | None:
    """(embedding, hidden) of a file in models/clip_vision, from its safetensors header, or None."""
    import folder_paths

    try:
        path = folder_paths.get_full_path("clip_vision", name)
        if path is None or Path(path).suffix.lower() != ".safetensors":
            return None
        with WeightFile(path) as wf:
            return encoder_widths_of_shapes(wf.shapes)
    except Exception:  # noqa: BLE001 - ComfyUI's loader reports its own file's problems
        return None


def encoder_refusals(prompt: dict) -> dict[str, str]:
    """{node id: sentence} for Apply and Train nodes whose adapter (from Load IP-Adapter) does not fit their
    image encoder (from Load CLIP Vision), and Train nodes whose variant is not their init adapter's.

    The sentences are the ones the nodes raise when they run (`AdapterSpec.check_fits` with ENCODER_FIX, and
    Train's variant check), so a user sees the same words whichever catches it.
    """
    refusals: dict[str, str] = {}
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or node.get("class_type") not in (APPLY, TRAIN):
            continue
        train = node["class_type"] == TRAIN
        adapter_name = _literal(_source(prompt, node, "init_adapter" if train else "adapter", LOAD_ADAPTER),
                                "adapter_name")
        header = _adapter_header(adapter_name) if adapter_name else None
        if header is None:
            continue
        variant, width, metadata = header
        source = "init_adapter" if train else "The adapter"
        wanted = _literal(node, "variant")
        if train and wanted in ("base", "plus") and wanted != variant:
            refusals[str(node_id)] = INIT_VARIANT.format(source=source, have=variant, want=wanted)
            continue
        clip_name = _literal(_source(prompt, node, "clip_vision", LOAD_CLIP_VISION), "clip_name")
        widths = _encoder_widths(clip_name) if clip_name else None
        if widths is None:
            continue
        given = widths[0] if variant == "base" else widths[1]
        if given != width:
            refusals[str(node_id)] = mismatch_sentence(variant, width, metadata, given, GIVEN_ENCODER, source,
                                                       ENCODER_FIX)
    return refusals


def queued_refusal() -> str | None:
    """The graph-wide verdict on the node being validated now (its prompt id and node id come from ComfyUI's
    executing context, which validation sets), or None. Called from a node's `validate_inputs`."""
    from comfy_execution.utils import get_executing_context

    context = get_executing_context()
    if context is None:
        return None
    with _LOCK:
        return _VERDICTS.get(str(context.prompt_id), {}).get(str(context.node_id))


def _remember(prompt_id: str, verdicts: dict[str, str]) -> None:
    with _LOCK:
        _VERDICTS.pop(prompt_id, None)
        if verdicts:
            _VERDICTS[prompt_id] = verdicts
            while len(_VERDICTS) > KEEP_PROMPTS:
                _VERDICTS.popitem(last=False)


def own_refusal(node_class: type, inputs: dict) -> str | None:
    """What a node's own `validate_inputs` says about its widget values (linked inputs are None, as in ComfyUI's
    validation), or None when it accepts them or cannot tell."""
    check = getattr(node_class, "validate_inputs", None)
    if check is None:
        return None
    names = [a for a in inspect.getfullargspec(check).args if a != "cls"]
    values = {n: (None if _is_link(inputs[n]) else inputs[n]) for n in names if n in inputs}
    try:
        verdict = check(**values)
    except Exception:  # noqa: BLE001 - ComfyUI's own validation reports it
        return None
    if verdict is True or verdict is None:
        return None
    return verdict if isinstance(verdict, str) else "refused"


def _ancestors(prompt: dict, start: str) -> set[str]:
    """`start` and every node it depends on through links."""
    seen, todo = set(), [start]
    while todo:
        node_id = todo.pop()
        if node_id in seen or not isinstance(prompt.get(node_id), dict):
            continue
        seen.add(node_id)
        todo.extend(v[0] for v in (prompt[node_id].get("inputs") or {}).values() if _is_link(v))
    return seen


def refused_outputs(prompt: dict, refused: Iterable[str], is_output: Callable[[str], bool],
                    targets: list | None) -> list[str]:
    """The outputs that would run (all, or the client's `targets`) and depend on a refused node, sorted."""
    refused = set(refused)
    outputs = [i for i, n in prompt.items() if isinstance(n, dict) and is_output(str(n.get("class_type")))]
    if isinstance(targets, list):
        outputs = [o for o in outputs if o in targets]
    return sorted(o for o in outputs if _ancestors(prompt, o) & refused)


@functools.lru_cache(maxsize=1)
def _pack_classes() -> dict[str, type]:
    from .extension import NODES

    return {n.define_schema().node_id: n for n in NODES}


def _is_output(class_type: str) -> bool:
    import nodes

    node_class = nodes.NODE_CLASS_MAPPINGS.get(class_type)
    return bool(node_class is not None and getattr(node_class, "OUTPUT_NODE", False) is True)


def gate(json_data: Any) -> Any:
    """ComfyUI on-prompt handler: refuse the whole prompt when any node of this pack refuses (see the module
    docstring). Never raises, and passes a graph without refusals on unchanged."""
    try:
        prompt = json_data.get("prompt") if isinstance(json_data, dict) else None
        if not isinstance(prompt, dict):
            return json_data
        verdicts = encoder_refusals(prompt)
        classes = _pack_classes()
        refused = set(verdicts)
        for node_id, node in prompt.items():
            node_class = classes.get(node.get("class_type")) if isinstance(node, dict) else None
            if node_class is not None and own_refusal(node_class, node.get("inputs") or {}):
                refused.add(node_id)
        prompt_id = json_data.get("prompt_id")
        if verdicts and prompt_id is None:  # ComfyUI would draw one; drawn here so the verdicts can be found
            prompt_id = json_data["prompt_id"] = str(uuid.uuid4())
        if prompt_id is not None:
            _remember(str(prompt_id), verdicts)
        failing = refused_outputs(prompt, refused, _is_output, json_data.get("partial_execution_targets"))
        if failing:
            json_data["partial_execution_targets"] = failing
            log.info("Prompt refused before it runs: %s", "; ".join(sorted(refused)))
    except Exception:  # noqa: BLE001 - a bug here must not stop ComfyUI from queueing
        log.exception("ipadapter_train's prompt check failed; the prompt is validated by ComfyUI alone")
    return json_data


def register_gate() -> bool:
    """Add `gate` to the running PromptServer's on-prompt handlers once; True if it is (now or already) there."""
    try:
        from server import PromptServer
    except ImportError:  # nodes imported without a server (tests, scripts)
        return False
    server = getattr(PromptServer, "instance", None)
    if server is None:
        return False
    if not getattr(server, "_ipadapter_train_gate", False):
        server.add_on_prompt_handler(gate)
        server._ipadapter_train_gate = True
    return True
