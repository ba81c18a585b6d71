"""The fault matrix at the server tier: what a client of a real ComfyUI server sends, and the sentence the
server answers with when the graph is queued (HTTP 400, before anything runs). A new case is one line of
CASES: (name, the node's inputs, the fragment its validation error must hold). The CLI tier's matrix is
tests/test_fault_matrix.py; cases that need a run (a hostile data.json) are in test_server_inputs.py.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import pytest
from PIL import Image

from harness import comfy, test_models  # noqa: F401 (fixtures)
from test_server_inputs import OPT_IN, node_error, refusal


class Case(NamedTuple):
    name: str
    node: str  # "load" (Load Training Images) or "save" (Save IP-Adapter)
    inputs: dict
    fragment: str


OUTSIDE = "not inside ComfyUI's input folder"
CASES = [
    Case("loader: ../ out of input", "load", {"folder": "", "path": "../ipt_fm_outside"}, OUTSIDE),
    Case("loader: .. as the folder", "load", {"folder": "..", "path": ""}, OUTSIDE),
    Case("loader: in and out again", "load", {"folder": "", "path": "ipt_fm_inside/../../ipt_fm_outside"}, OUTSIDE),
    Case("loader: a link out of input", "load", {"folder": "", "path": "ipt_fm_link"}, OUTSIDE),
    Case("loader: an absolute path", "load", {"folder": "", "path": "/etc"}, "Absolute paths are off on this server"),
    Case("save: a name that climbs out", "save", {"name": "../../escape", "overwrite": True},
         "Cannot save an adapter as '../../escape'"),
    Case("save: a Windows-forbidden character", "save", {"name": "a:b", "overwrite": True}, "':' (U+003A)"),
    Case("save: a hidden name", "save", {"name": ".hidden", "overwrite": True}, "Cannot save an adapter as '.hidden'"),
    Case("save: a Windows device name", "save", {"name": "con", "overwrite": True}, "Cannot save an adapter as 'con'"),
    Case("save: a taken name without overwrite", "save", {"name": "ipt_fm_source", "overwrite": False},
         "ipt_fm_source.safetensors already exists"),
]


@pytest.fixture(scope="module")
def world(comfy):
    """A folder inside input/, one beside it with a link to it from input/, and an adapter to feed Save."""
    from ipadapter_train.adapter import IPAdapter
    from ipadapter_train.fileformat import save_adapter
    from ipadapter_train.layout import adapter_layers
    from ipadapter_train.sd15 import tiny_unet_config

    inside = comfy.base / "input" / "ipt_fm_inside"
    outside = comfy.base / "ipt_fm_outside"
    for folder in (inside, outside):
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64), (10, 20, 30)).save(folder / "a.png")
    link = comfy.base / "input" / "ipt_fm_link"
    if not link.exists():
        link.symlink_to(outside, target_is_directory=True)
    adapters = comfy.base / "models" / "ipadapter"
    adapters.mkdir(parents=True, exist_ok=True)
    source = adapters / "ipt_fm_source.safetensors"
    if not source.exists():
        save_adapter(IPAdapter.new("base", 768, 768, adapter_layers(tiny_unet_config())).state_dict(), source)
    return {"source": source}


def graph(case: Case) -> dict:
    if case.node == "load":
        return {"1": {"class_type": "IPAdapterTrain_LoadTrainingImages", "inputs": {"prompt": "", **case.inputs}},
                "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 2]}}}
    return {"1": {"class_type": "IPAdapterTrain_Load", "inputs": {"adapter_name": "ipt_fm_source.safetensors"}},
            "2": {"class_type": "IPAdapterTrain_Save", "inputs": {"adapter": ["1", 0], **case.inputs}}}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_server_refuses_when_queued(case: Case, comfy, world):
    if case.node == "load" and os.environ.get(OPT_IN):
        pytest.skip(f"{OPT_IN} is set in this environment, so the server allows any folder")
    before = world["source"].stat().st_mtime_ns
    answer = refusal(comfy, graph(case))
    said = node_error(answer, "1" if case.node == "load" else "2")
    assert case.fragment in said, said
    assert world["source"].stat().st_mtime_ns == before  # nothing written over
