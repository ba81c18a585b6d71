"""The fault matrix at the server tier: what a client of a real ComfyUI server sends, and the sentence the
server answers with when the graph is queued (HTTP 400, before anything runs). A new case is one line of
CASES: (name, the node's inputs, the fragment its validation error must hold). The CLI tier's matrix is
tests/test_fault_matrix.py; cases that need a run (a hostile data.json) are in test_server_inputs.py.

WHOLE holds the refusals that must stop a whole graph (the shipped training template, or Apply), not only the
node at fault: a row is (name, graph builder, class of the node at fault, fragment). The server must answer 400
with the sentence where the frontend's error dialog shows it, and nothing may run (no queue entry, no history,
no Train run).
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Callable, NamedTuple

import pytest
from PIL import Image

from browser_workflow_api import editor_to_api, find_nodes, load_workflow, set_inputs
from harness import ROOT
from test_server_inputs import OPT_IN, node_error, refusal

pytestmark = pytest.mark.server


class Case(NamedTuple):
    name: str
    node: str  # "load" (Load Training Images) or "save" (Save IP-Adapter)
    inputs: dict
    fragment: str
    private: bool = False  # the answer must not hold the server's paths or OS error text


SAMPLES = ROOT / "ipadapter_train" / "assets" / "samples"
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
    Case("loader: an empty folder", "load", {"folder": "ipt_fm_empty", "path": ""},
         "The folder 'ipt_fm_empty' holds no images"),
    Case("loader: a folder of text files only", "load", {"folder": "", "path": "ipt_fm_text"},
         "The folder 'ipt_fm_text' holds no images"),
    Case("loader: a 5,000-character path", "load", {"folder": "", "path": "a" * 5000},
         "is 5000 characters long, more than the 1024 a folder path may have", private=True),
    Case("loader: a 300-byte folder name", "load", {"folder": "", "path": "in/" + "b" * 300},
         "a name of 300 bytes, more than the 255 a folder name may have", private=True),
    Case("save: a 5,000-character name", "save", {"name": "n" * 5000, "overwrite": True},
         "(5000 characters): it is longer than 120 characters", private=True),
]


@pytest.fixture(scope="module")
def world(comfy):
    """A folder inside input/, one beside it with a link to it from input/, and an adapter to feed Save."""
    from ipadapter_train.adapter.module import IPAdapter
    from ipadapter_train.adapter.fileformat import save_adapter
    from ipadapter_train.layout import adapter_layers
    from ipadapter_train.models.sd15 import tiny_unet_config

    inside = comfy.base / "input" / "ipt_fm_inside"
    outside = comfy.base / "ipt_fm_outside"
    for folder in (inside, outside):
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64), (10, 20, 30)).save(folder / "a.png")
    (comfy.base / "input" / "ipt_fm_empty").mkdir(exist_ok=True)
    (comfy.base / "input" / "ipt_fm_text").mkdir(exist_ok=True)
    (comfy.base / "input" / "ipt_fm_text" / "notes.txt").write_text("no pictures here")
    (comfy.base / "input" / "3d").mkdir(exist_ok=True)  # ComfyUI's own upload folder (Load 3D)
    train_set = comfy.base / "input" / "ipt_fm_train"
    train_set.mkdir(exist_ok=True)
    for f in SAMPLES.iterdir():
        if f.suffix in (".jpg", ".txt"):
            shutil.copy(f, train_set / f.name)
    link = comfy.base / "input" / "ipt_fm_link"
    if not link.exists():
        link.symlink_to(outside, target_is_directory=True)
    adapters = comfy.base / "models" / "ipadapter"
    adapters.mkdir(parents=True, exist_ok=True)
    source = adapters / "ipt_fm_source.safetensors"
    if not source.exists():
        save_adapter(IPAdapter.new("base", 768, 768, adapter_layers(tiny_unet_config())).state_dict(), source)
    vith = adapters / "ipt_fm_vith.safetensors"  # reads OpenCLIP ViT-H/14's 1024-d embedding; the server has ViT-L
    if not vith.exists():
        save_adapter(IPAdapter.new("base", 1024, 768, adapter_layers(tiny_unet_config())).state_dict(), vith)
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
    if case.private:
        text = json.dumps(answer)
        assert str(comfy.base) not in text and "Errno" not in text and len(text) < 3000, text


# ---------------------------------------------------------------- refusals that stop the whole prompt

class Whole(NamedTuple):
    name: str
    graph: Callable[[object, dict], dict]  # (server, test models) -> API prompt
    node: str  # the class of the node at fault, whose validation error holds the fragment
    fragment: str


def training(server, models, **changes) -> dict:
    """The shipped training template (its "Training report" output is valid on its own) on the test models, one
    small step, Save's name free; `changes` are `<class>__<input>=value`."""
    prompt = editor_to_api(load_workflow("train_ip_adapter"), server.get("/object_info"))
    set_inputs(prompt, "CheckpointLoaderSimple", ckpt_name=models["sd15"].name)
    set_inputs(prompt, "CLIPVisionLoader", clip_name=models["clip_vision"].name)
    set_inputs(prompt, "IPAdapterTrain_LoadTrainingImages", folder="ipt_fm_train")
    set_inputs(prompt, "IPAdapterTrain_Train", steps=1, resolution=64, validation="off", preview_every=-1)
    set_inputs(prompt, "IPAdapterTrain_Save", name="ipt_fm_free", overwrite=False)
    for key, value in changes.items():
        node, _, name = key.partition("__")
        set_inputs(prompt, node, **{name: value})
    return prompt


def with_init_adapter(server, models) -> dict:
    """The training template fine-tuning the ViT-H adapter with the server's ViT-L image encoder."""
    prompt = training(server, models)
    prompt["90"] = {"class_type": "IPAdapterTrain_Load", "inputs": {"adapter_name": "ipt_fm_vith.safetensors"}}
    prompt[find_nodes(prompt, "IPAdapterTrain_Train")[0]]["inputs"]["init_adapter"] = ["90", 0]
    return prompt


def apply_graph(server, models) -> dict:
    """Load Checkpoint, Load IP-Adapter (a ViT-H adapter) and Load CLIP Vision (ViT-L) into Apply IP-Adapter."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": models["sd15"].name}},
        "2": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": models["clip_vision"].name}},
        "3": {"class_type": "IPAdapterTrain_Load", "inputs": {"adapter_name": "ipt_fm_vith.safetensors"}},
        "4": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "5": {"class_type": "IPAdapterTrain_Apply",
              "inputs": {"model": ["1", 0], "adapter": ["3", 0], "clip_vision": ["2", 0], "image": ["4", 0],
                         "weight": 1.0, "start_at": 0.0, "end_at": 1.0}},
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}},
    }


ENCODER = ("was trained with OpenCLIP ViT-H/14 image features (1024-d image embedding) but the CLIP vision model "
           "gives OpenAI CLIP ViT-L/14 image features (768-d image embedding): load "
           "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors in Load CLIP Vision.")
WHOLE = [
    Whole("save: a taken name stops the training",
          lambda s, m: training(s, m, IPAdapterTrain_Save__name="ipt_fm_source"),
          "IPAdapterTrain_Save", "ipt_fm_source.safetensors already exists"),
    Whole("loader: an empty folder stops the training before the checkpoint loads",
          lambda s, m: training(s, m, IPAdapterTrain_LoadTrainingImages__folder="ipt_fm_empty"),
          "IPAdapterTrain_LoadTrainingImages", "The folder 'ipt_fm_empty' holds no images"),
    Whole("train: a scorer outside the scorer folders",
          lambda s, m: training(s, m, IPAdapterTrain_Train__scorer="../../secret.txt"),
          "IPAdapterTrain_Train", "No CLIP scorer named '../../secret.txt' in models/clip_scorers or models/clip"),
    Whole("train: an init adapter for another image encoder", with_init_adapter, "IPAdapterTrain_Train",
          f"init_adapter {ENCODER}"),
    Whole("apply: an adapter for another image encoder", apply_graph, "IPAdapterTrain_Apply", f"The adapter {ENCODER}"),
]


def dialog_text(answer: dict) -> str:
    """What the frontend's error dialog shows for a refused prompt (PromptExecutionError.toString in frontend
    1.32.9): the error's message and details, then each node's class and its errors' messages and details."""
    error = answer["error"]
    text = error if isinstance(error, str) else f"{error['message']}: {error['details']}"
    for node in answer.get("node_errors", {}).values():
        text += "\n" + node["class_type"] + ":"
        for e in node["errors"]:
            text += "\n    - " + e["message"] + ": " + e["details"]
    return text


@pytest.mark.parametrize("case", WHOLE, ids=[c.name for c in WHOLE])
def test_server_refuses_the_whole_prompt(case: Whole, comfy, test_models, world):
    prompt = case.graph(comfy, test_models)
    history, runs = len(comfy.get("/history")), len(comfy.get("/ipadapter_train/runs")["runs"])
    answer = refusal(comfy, prompt)
    (at_fault,) = find_nodes(prompt, case.node)
    assert case.fragment in node_error(answer, at_fault), answer
    assert case.fragment in dialog_text(answer)  # the sentence is in ComfyUI's error dialog, not only in the log
    queue = comfy.get("/queue")
    assert not queue["queue_running"] and not queue["queue_pending"]  # nothing queued, so nothing ran
    assert len(comfy.get("/history")) == history and len(comfy.get("/ipadapter_train/runs")["runs"]) == runs
    assert not (comfy.base / "models" / "ipadapter" / "ipt_fm_free.safetensors").exists()


def test_the_folder_menu_offers_only_folders_with_images(comfy, world):
    spec = comfy.object_info()["IPAdapterTrain_LoadTrainingImages"]["input"]["required"]["folder"]
    listed = spec[1]["options"] if isinstance(spec[0], str) else spec[0]
    assert "ipt_fm_train" in listed and "ipt_fm_inside" in listed
    assert not {"", "3d", "ipt_fm_empty", "ipt_fm_text"} & set(listed), listed
