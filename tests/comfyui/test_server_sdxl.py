"""SDXL in a real ComfyUI server, through its HTTP API: the shipped SDXL workflow ("6. Train and use an SDXL
adapter") runs as a user would run it, only smaller: Load Checkpoint (SDXL) -> Load Training Images -> Train
IP-Adapter (2 steps at 128 px, buckets on, validation off) -> Save -> Apply -> KSampler (1 step, 64 px) -> Preview.
The file it saved is an SDXL adapter (70 layers) that Load IP-Adapter reads back and Apply uses with the same
effect, and an SD1.5 adapter on the SDXL MODEL is refused in one sentence.

ComfyUI detects SDXL by its block structure and widths of the first level, the context and the extra conditioning,
so the checkpoint is the narrow random-weight SDXL of `harness.sdxl_model_files` (SDXL's 70 cross-attention layers,
every UNet level 320 wide; written once per session), loaded from the file as a user's would be: the run's report
names the ComfyUI model class it was detected as. The server is this module's own, with a bf16 UNet
(`harness.SDXL_SERVER_ARGS`). The model load and the training are the expensive part: they run once, in the
shipped workflow, and every case reuses that run and the server's cache of the loaded model.

Training runs with gradient checkpointing, as a user on a small machine would: on the CPU ComfyUI runs a bf16 UNet
by casting each layer's weights to fp32 as it goes, and without checkpointing autograd keeps all those fp32 copies
for the backward pass.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from browser_workflow_api import editor_to_api, find_nodes, load_workflow, set_inputs
from harness import ROOT, ComfyServer, sdxl_model_files, status_messages

pytestmark = pytest.mark.server

SAMPLES = ROOT / "ipadapter_train" / "assets" / "samples"
SAVED = "sdxl_trained"
BUCKET = "128x64"  # where 2:1 pictures train at resolution 128 (the square mode would crop them to 128x128)


def wide_pictures(server: ComfyServer, name: str = "sdxl_set") -> str:
    """Two different 2:1 pictures in input/<name> (one prompt on the node captions both)."""
    folder = server.base / "input" / name
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        ramp = np.linspace(0, 255, 192)[None, :, None] * np.array([1.0, 0.5, 0.2 + 0.6 * i])
        pixels = np.clip(ramp + rng.normal(0, 20, (96, 192, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"wide{i}.png")
    return name


def latent(server: ComfyServer, entry: dict, node_id: str) -> torch.Tensor:
    """The latent a SaveLatent node of a finished prompt wrote."""
    from safetensors.torch import load_file

    (saved,) = entry["outputs"][node_id]["latents"]
    return load_file(server.base / "output" / saved["subfolder"] / saved["filename"])["latent_tensor"].float()


def add_save_latent(prompt: dict, sampler_id: str, prefix: str) -> str:
    node_id = f"{sampler_id}9{len(prompt)}"
    prompt[node_id] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler_id, 0], "filename_prefix": prefix}}
    return node_id


def finished(server: ComfyServer, prompt: dict) -> dict:
    entry = server.wait(server.queue(prompt), 1500)
    assert entry["status"]["status_str"] == "success", (status_messages(entry, "execution_error"), server.log()[-3000:])
    return entry


@pytest.fixture(scope="module")
def shipped(sdxl_comfy) -> dict:
    """The shipped SDXL workflow in API form, pointed at the test files and made small, plus a weight-0 copy of its
    Apply -> KSampler and a SaveLatent on each sampler; run once. Returns the prompt, its history entry and ids."""
    server, files = sdxl_comfy, sdxl_model_files()
    prompt = editor_to_api(load_workflow("train_ip_adapter_sdxl"), server.object_info())
    (train_id,) = find_nodes(prompt, "IPAdapterTrain_Train")
    assert prompt[train_id]["inputs"]["resolution"] == 0 and prompt[train_id]["inputs"]["buckets"] is True  # as shipped
    set_inputs(prompt, "CheckpointLoaderSimple", ckpt_name=files["sdxl"].name)
    set_inputs(prompt, "CLIPVisionLoader", clip_name=files["clip_vision"].name)
    (images_id,) = find_nodes(prompt, "IPAdapterTrain_LoadTrainingImages")
    prompt[images_id]["inputs"].update(folder=wide_pictures(server), prompt="a striped pattern")
    # previews off: test_server_previews.py covers them
    set_inputs(prompt, "IPAdapterTrain_Train", steps=2, resolution=128, seed=3, validation="off",
               gradient_checkpointing=True, preview_every=-1)
    set_inputs(prompt, "IPAdapterTrain_Save", name=SAVED)
    (server.base / "input" / "reference.jpg").write_bytes((SAMPLES / "chelsea.jpg").read_bytes())
    set_inputs(prompt, "LoadImage", image="reference.jpg")
    set_inputs(prompt, "EmptyLatentImage", width=64, height=64, batch_size=1)
    set_inputs(prompt, "KSampler", steps=1, seed=1)
    (apply_id,) = find_nodes(prompt, "IPAdapterTrain_Apply")
    (sampler_id,) = find_nodes(prompt, "KSampler")
    assert prompt[apply_id]["inputs"]["adapter"] == [train_id, 0]  # Apply uses the adapter Train returns
    # the same sampling with the same adapter at weight 0: what the adapter changes
    zero_apply, zero_sampler = f"{apply_id}90", f"{sampler_id}90"
    prompt[zero_apply] = json.loads(json.dumps(prompt[apply_id]))
    prompt[zero_apply]["inputs"]["weight"] = 0.0
    prompt[zero_sampler] = json.loads(json.dumps(prompt[sampler_id]))
    prompt[zero_sampler]["inputs"]["model"] = [zero_apply, 0]
    ids = {"train": train_id, "apply": apply_id, "sampler": sampler_id,
           "one": add_save_latent(prompt, sampler_id, "sdxl_one"),
           "zero": add_save_latent(prompt, zero_sampler, "sdxl_zero")}
    entry = finished(server, prompt)
    return {"prompt": prompt, "entry": entry, "ids": ids}


def test_the_shipped_sdxl_workflow_trains_saves_and_applies(sdxl_comfy, shipped):
    from ipadapter_train.adapter.fileformat import inspect_adapter

    server, entry, ids = sdxl_comfy, shipped["entry"], shipped["ids"]
    path = server.base / "models" / "ipadapter" / f"{SAVED}.safetensors"
    (saved_to,) = find_nodes(shipped["prompt"], "PreviewAny")
    assert entry["outputs"][saved_to]["text"] == [str(path)]
    info = inspect_adapter(path)
    assert info["family"] == "sdxl" and info["num_layers"] == 70, info["summary"]
    assert info["layer_indices"] == list(range(1, 140, 2)) and info["cross_dim"] == 2048
    assert info["clip_dim"] == 768 and info["metadata"]["steps"] == "2"  # trained with the server's ViT-L
    # the run's report: ComfyUI detected the checkpoint as SDXL (its own model class), and the 2:1 pictures trained
    # in their bucket
    (run_dir,) = (server.base / "output" / "ipadapter_train").glob(f"run-*-node{ids['train']}")
    report = json.loads((run_dir / "report.json").read_text())
    assert report["base_model"] == "ComfyUI MODEL (SDXL)" and report["steps"] == 2
    assert report["buckets"] == {BUCKET: 2} and report["config"]["resolution"] == 128
    (preview,) = find_nodes(shipped["prompt"], "PreviewImage")
    assert len(entry["outputs"][preview]["images"]) == 1
    one, zero = latent(server, entry, ids["one"]), latent(server, entry, ids["zero"])
    assert one.shape == zero.shape == (1, 4, 8, 8) and torch.isfinite(one).all()
    assert (one - zero).abs().max() > 0.01 * zero.abs().max()  # the trained adapter changes what SDXL samples


def test_the_saved_sdxl_adapter_loads_and_applies_like_the_trained_one(sdxl_comfy, shipped):
    """Load IP-Adapter reads the file back; Apply with it samples what the in-graph adapter sampled (up to the
    file's fp16 rounding). The loaders, prompts and latent keep their node ids: the server reuses its loaded model."""
    server, ids = sdxl_comfy, shipped["ids"]
    prompt = json.loads(json.dumps(shipped["prompt"]))
    train_id = ids["train"]
    for node_id, node in list(prompt.items()):
        if node_id not in (ids["apply"], ids["sampler"]) and node["class_type"] not in (
                "CheckpointLoaderSimple", "CLIPVisionLoader", "LoadImage", "CLIPTextEncode", "EmptyLatentImage"):
            del prompt[node_id]  # training, saving, the preview and the weight-0 branch
    prompt["load"] = {"class_type": "IPAdapterTrain_Load", "inputs": {"adapter_name": f"{SAVED}.safetensors"}}
    assert prompt[ids["apply"]]["inputs"]["adapter"] == [train_id, 0]
    prompt[ids["apply"]]["inputs"]["adapter"] = ["load", 0]
    loaded_id = add_save_latent(prompt, ids["sampler"], "sdxl_loaded")
    entry = finished(server, prompt)
    loaded = latent(server, entry, loaded_id)
    one, zero = latent(server, shipped["entry"], ids["one"]), latent(server, shipped["entry"], ids["zero"])
    change = (one - zero).abs().max()
    assert (loaded - zero).abs().max() > 0.5 * change  # the loaded adapter acts as the trained one did
    assert (loaded - one).abs().max() < 0.1 * change, ((loaded - one).abs().max(), change)


def test_an_sd15_adapter_on_the_sdxl_model_is_refused_in_one_sentence(sdxl_comfy, shipped):
    from ipadapter_train.adapter.module import IPAdapter
    from ipadapter_train.families import FAMILIES
    from ipadapter_train.adapter.fileformat import save_adapter

    server, ids = sdxl_comfy, shipped["ids"]
    sd15 = IPAdapter.new("base", 768, 768, FAMILIES["sd15"].adapter_layers())  # reads the server's ViT-L too
    save_adapter(sd15.state_dict(), server.base / "models" / "ipadapter" / "sd15_adapter.safetensors")
    prompt = {nid: node for nid, node in json.loads(json.dumps(shipped["prompt"])).items()
              if node["class_type"] in ("CheckpointLoaderSimple", "CLIPVisionLoader", "LoadImage", "CLIPTextEncode",
                                        "EmptyLatentImage") or nid in (ids["apply"], ids["sampler"])}
    prompt["load"] = {"class_type": "IPAdapterTrain_Load", "inputs": {"adapter_name": "sd15_adapter.safetensors"}}
    prompt[ids["apply"]]["inputs"]["adapter"] = ["load", 0]
    add_save_latent(prompt, ids["sampler"], "sdxl_refused")
    entry = server.wait(server.queue(prompt), 600)
    (error,) = status_messages(entry, "execution_error")
    assert entry["status"]["status_str"] == "error" and error["node_id"] == ids["apply"]
    message = error["exception_message"].strip()
    assert error["exception_type"].endswith("IPAdapterError"), error["exception_type"]
    assert "SD1.5" in message and "SDXL (70 cross-attention layers, 2048-d)" in message, message
    assert message.endswith(".") and "\n" not in message and message.count(": ") == 1, message
    assert not list((server.base / "output").glob("sdxl_refused*"))  # refused before anything sampled
    assert server.get("/system_stats")  # still serving
