"""The node pack in a real ComfyUI server: the shipped workflows submitted through POST /prompt.

Models are random-weight files from `make-test-models` (tiny SD1.5, ViT-L CLIP vision): the images
they make are noise, but equal/unequal comparisons between runs are exact statements about the pack.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser_workflow_api import editor_to_api, find_nodes, load_workflow, set_inputs
from harness import ROOT, ComfyServer, status_messages

pytestmark = pytest.mark.server

SAMPLES = ROOT / "ipadapter_train" / "assets" / "samples"
PACK_NODES = {"IPAdapterTrain_LoadTrainingImages", "IPAdapterTrain_Train", "IPAdapterTrain_Save",
              "IPAdapterTrain_Load", "IPAdapterTrain_Apply", "IPAdapterTrain_Score", "IPAdapterTrain_Search"}


def workflow(server: ComfyServer, name: str, test_models, **size) -> dict:
    """A shipped workflow in API form, pointed at the test models and made small and fast."""
    prompt = editor_to_api(load_workflow(name), server.get("/object_info"))
    set_inputs(prompt, "CheckpointLoaderSimple", ckpt_name=test_models["sd15"].name)
    if find_nodes(prompt, "CLIPVisionLoader"):
        set_inputs(prompt, "CLIPVisionLoader", clip_name=test_models["clip_vision"].name)
    if find_nodes(prompt, "EmptyLatentImage"):
        set_inputs(prompt, "EmptyLatentImage", width=64, height=64, batch_size=1)
    if find_nodes(prompt, "KSampler"):
        set_inputs(prompt, "KSampler", steps=2, seed=size.get("seed", 1))
    if find_nodes(prompt, "LoadImage"):
        set_inputs(prompt, "LoadImage", image="reference.jpg")
    return prompt


def train_set(server: ComfyServer, name: str = "train_set") -> str:
    folder = server.base / "input" / name
    folder.mkdir(parents=True, exist_ok=True)
    for f in SAMPLES.iterdir():
        if f.suffix in (".jpg", ".txt"):
            shutil.copy(f, folder / f.name)
    shutil.copy(SAMPLES / "chelsea.jpg", server.base / "input" / "reference.jpg")
    return name


def run(server: ComfyServer, prompt: dict, timeout: float = 900) -> dict:
    entry = server.wait(server.queue(prompt), timeout)
    return entry


def saved_by_node(server: ComfyServer, entry: dict) -> dict[str, list[np.ndarray]]:
    """The images each output node of a finished prompt saved (type "output"), by node id."""
    out: dict[str, list[np.ndarray]] = {}
    for node_id, node_out in entry["outputs"].items():
        for im in node_out.get("images", []):
            if im.get("type") == "output":
                path = server.base / "output" / im.get("subfolder", "") / im["filename"]
                out.setdefault(node_id, []).append(np.asarray(Image.open(path), dtype=np.int16))
    return out


def sample_branches(prompt: dict, weights: dict[str, float | None]) -> dict[str, str]:
    """Copy the graph's Apply -> KSampler -> VAEDecode -> SaveImage chain once per entry of `weights`:
    the Apply at that weight, or no Apply at all for None (KSampler takes the checkpoint's MODEL).
    Every copy samples with the same seed, prompt and latent. Returns {branch name: SaveImage id}."""
    apply_id = find_nodes(prompt, "IPAdapterTrain_Apply")[0]
    sampler_id = find_nodes(prompt, "KSampler")[0]
    decode_id = find_nodes(prompt, "VAEDecode")[0]
    save_id = find_nodes(prompt, "SaveImage")[0]
    chain = (apply_id, sampler_id, decode_id, save_id)
    originals = {nid: json.loads(json.dumps(prompt.pop(nid))) for nid in chain}
    saves = {}
    for n, (name, weight) in enumerate(weights.items()):
        ids = {nid: f"{nid}{n:02d}9" for nid in chain}  # new ids, distinct from the workflow's
        nodes = {ids[nid]: json.loads(json.dumps(node)) for nid, node in originals.items()}
        for node in nodes.values():
            for key, value in node["inputs"].items():
                if isinstance(value, list) and len(value) == 2 and value[0] in ids:
                    node["inputs"][key] = [ids[value[0]], value[1]]
        sampler = nodes[ids[sampler_id]]
        if weight is None:
            sampler["inputs"]["model"] = originals[apply_id]["inputs"]["model"]
            del nodes[ids[apply_id]]
        else:
            nodes[ids[apply_id]]["inputs"]["weight"] = weight
        nodes[ids[save_id]]["inputs"]["filename_prefix"] = f"branch_{name}"
        prompt.update(nodes)
        saves[name] = ids[save_id]
    return saves


def assert_adapter_changes_the_image(images: dict[str, list[np.ndarray]], saves: dict[str, str]) -> None:
    """Weight 0 is the unpatched model to the pixel; weight 1 on the same seed gives other pixels."""
    plain, zero, one = (images[saves[name]] for name in ("plain", "zero", "one"))
    assert len(plain) == len(zero) == len(one) == 1
    assert np.array_equal(zero[0], plain[0]), np.abs(zero[0] - plain[0]).max()
    assert np.abs(one[0] - zero[0]).max() > 1


_TRAIN_THEN_APPLY: dict[Path, tuple[dict, dict[str, str]]] = {}


def train_then_apply(server: ComfyServer, test_models) -> tuple[dict, dict[str, str]]:
    """The shipped train-then-apply workflow, run once per server (the one training of these tests that
    finishes): it trains 3 steps at 64 px, saves models/ipadapter/in_graph.safetensors and samples the
    three branches of `sample_branches`. Returns the history entry and {branch: SaveImage id}."""
    if server.base not in _TRAIN_THEN_APPLY:
        prompt = workflow(server, "train_then_apply", test_models)
        set_inputs(prompt, "IPAdapterTrain_LoadTrainingImages", folder=train_set(server))
        # previews off: this checks the adapter in the graph (test_server_previews.py covers previews)
        set_inputs(prompt, "IPAdapterTrain_Train", steps=3, resolution=64, validation="off", preview_every=-1)
        set_inputs(prompt, "IPAdapterTrain_Save", name="in_graph")
        saves = sample_branches(prompt, {"plain": None, "zero": 0.0, "one": 1.0})
        entry = run(server, prompt)
        assert entry["status"]["status_str"] == "success", status_messages(entry, "execution_error")
        _TRAIN_THEN_APPLY[server.base] = entry, saves
    return _TRAIN_THEN_APPLY[server.base]


def test_pack_loads_without_import_failure(comfy):
    info = comfy.get("/object_info")
    assert PACK_NODES <= set(info)
    assert not [line for line in comfy.log().splitlines() if "IMPORT FAILED" in line and "ipadapter-train" in line]


def test_every_shipped_workflow_uses_registered_nodes(comfy):
    info = comfy.get("/object_info")
    for wf in sorted((ROOT / "workflows").glob("*.json")):
        used = {n["type"] for n in load_workflow(wf)["nodes"]}
        assert used <= set(info) | {"Reroute", "Note", "MarkdownNote", "PrimitiveNode"}, (wf.name, used - set(info))
        assert wf.with_suffix(".jpg").is_file()


def test_train_then_apply_in_one_graph(comfy, test_models):
    """The adapter the Train node returns drives the Apply node in the same graph, and changes the image."""
    entry, saves = train_then_apply(comfy, test_models)
    assert (comfy.base / "models" / "ipadapter" / "in_graph.safetensors").is_file()
    assert_adapter_changes_the_image(saved_by_node(comfy, entry), saves)


def test_the_cpu_quick_run_template_runs_as_shipped(comfy, test_models):
    """The CPU template with only what its Note asks for: the two loaders pointed at the (tiny, random-weight)
    test models and a training folder picked. Train runs as shipped (256 px, quick validation, previews off)
    but for 3 steps instead of 20, and the test image at 64 px in 2 sampling steps (the other tests' size), from
    the first training image as shipped: on a busy 2-core machine the shipped 20 steps and 12 sampling steps at
    256 px on the test models took longer than the harness's 900 s. No timing is claimed here."""
    prompt = editor_to_api(load_workflow("train_ip_adapter_cpu"), comfy.get("/object_info"))
    (train_id,) = find_nodes(prompt, "IPAdapterTrain_Train")
    shipped = dict(prompt[train_id]["inputs"])
    assert (shipped["resolution"], shipped["validation"], shipped["preview_every"]) == (256, "quick", -1)
    set_inputs(prompt, "CheckpointLoaderSimple", ckpt_name=test_models["sd15"].name)
    set_inputs(prompt, "CLIPVisionLoader", clip_name=test_models["clip_vision"].name)
    set_inputs(prompt, "IPAdapterTrain_LoadTrainingImages", folder=train_set(comfy, "cpu_first_run"))
    set_inputs(prompt, "IPAdapterTrain_Train", steps=3)
    set_inputs(prompt, "EmptyLatentImage", width=64, height=64)
    set_inputs(prompt, "KSampler", steps=2)
    entry = run(comfy, prompt)
    assert entry["status"]["status_str"] == "success", status_messages(entry, "execution_error")
    saved = prompt[find_nodes(prompt, "IPAdapterTrain_Save")[0]]["inputs"]["name"]
    assert (comfy.base / "models" / "ipadapter" / f"{saved}.safetensors").is_file()
    (image,) = saved_by_node(comfy, entry)[find_nodes(prompt, "SaveImage")[0]]
    assert image.shape[:2] == (64, 64)


def test_saved_adapter_loads_and_applies(comfy, test_models):
    """The file Save wrote, read back by Load, changes the image the same way."""
    from ipadapter_train.adapter.fileformat import inspect_adapter

    train_then_apply(comfy, test_models)
    path = comfy.base / "models" / "ipadapter" / "in_graph.safetensors"
    info = inspect_adapter(path)
    assert info["variant"] == "base" and info["layer_indices"] == list(range(1, 32, 2))
    assert info["metadata"]["steps"] == "3"

    prompt = workflow(comfy, "apply_ip_adapter", test_models)
    set_inputs(prompt, "IPAdapterTrain_Load", adapter_name=path.name)
    saves = sample_branches(prompt, {"plain": None, "zero": 0.0, "one": 1.0})
    entry = run(comfy, prompt)
    assert entry["status"]["status_str"] == "success", status_messages(entry, "execution_error")
    assert_adapter_changes_the_image(saved_by_node(comfy, entry), saves)


def listed_run(server: ComfyServer, prompt_id: str, node: str) -> dict | None:
    """This prompt's run of that node in GET /ipadapter_train/runs (runs are keyed by prompt and node)."""
    return next((r for r in server.get("/ipadapter_train/runs")["runs"]
                 if (r["prompt_id"], r["node"]) == (prompt_id, node)), None)


def test_interrupt_during_training_leaves_a_partial_adapter_that_loads(comfy, test_models):
    from ipadapter_train.adapter.fileformat import load_adapter

    prompt = workflow(comfy, "train_ip_adapter", test_models)
    set_inputs(prompt, "IPAdapterTrain_LoadTrainingImages", folder=train_set(comfy))
    set_inputs(prompt, "IPAdapterTrain_Train", steps=5000, resolution=64, seed=7, validation="off", preview_every=-1)
    set_inputs(prompt, "IPAdapterTrain_Save", name="partial")
    prompt_id = comfy.queue(prompt)
    train_id = find_nodes(prompt, "IPAdapterTrain_Train")[0]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        run_state = listed_run(comfy, prompt_id, train_id)
        if run_state and run_state["step"] >= 2:
            break
        time.sleep(0.2)
    else:
        pytest.fail("training never reached step 2")
    comfy.interrupt()
    entry = comfy.wait(prompt_id, 120)
    state = listed_run(comfy, prompt_id, train_id)
    assert state["done"] and state["cancelled"] and state["step"] < 5000
    # the Train node returns the adapter trained so far and the graph goes on: Save writes it where asked
    partial = sorted((comfy.base / "models" / "ipadapter").glob("partial*.safetensors"))
    assert partial, f"Save wrote no partial adapter to models/ipadapter; status {entry['status']}\n{comfy.log()[-3000:]}"
    weights, meta = load_adapter(partial[0])
    assert "image_proj.proj.weight" in weights
    assert 2 <= int(meta["cancelled_at_step"]) < 5000
    assert comfy.get("/system_stats")  # still serving


def wait_until_trained(server: ComfyServer, prompt_id: str, node: str, step: int = 1, timeout: float = 300) -> dict:
    """This prompt's run of `node` once it has done `step` steps, or its history entry if the prompt ended first
    (a cached Train never runs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = listed_run(server, prompt_id, node)
        if state and state["step"] >= step:
            return state
        history = server.get(f"/history/{prompt_id}").get(prompt_id)
        if history and history.get("status", {}).get("completed") is not None:
            return {"ended": history}
        time.sleep(0.2)
    pytest.fail(f"training never reached step {step}")


def newest_run_folder(server: ComfyServer, node: str) -> Path:
    """The newest run folder of Train node `node` under output/ipadapter_train."""
    return max((server.base / "output" / "ipadapter_train").glob(f"run-*-node{node}*"), key=lambda p: p.stat().st_mtime)


def test_a_cancelled_run_is_not_reused_and_its_partial_adapter_says_so(comfy, test_models):
    """Cancel, then Run again with the same settings and a new save name: Train trains afresh (it is not in
    execution_cached, and the runs route lists a run of the new prompt), and everything made from the first
    run's partial adapter says "cancelled after N of M steps"."""
    from ipadapter_train.adapter.fileformat import load_adapter

    prompt = workflow(comfy, "train_ip_adapter", test_models)
    set_inputs(prompt, "IPAdapterTrain_LoadTrainingImages", folder=train_set(comfy))
    set_inputs(prompt, "IPAdapterTrain_Train", steps=5000, resolution=64, seed=11, validation="off", preview_every=-1)
    set_inputs(prompt, "IPAdapterTrain_Save", name="cancelled_first")
    (train_id,) = find_nodes(prompt, "IPAdapterTrain_Train")
    (save_id,) = find_nodes(prompt, "IPAdapterTrain_Save")
    first = comfy.queue(prompt)
    assert "ended" not in wait_until_trained(comfy, first, train_id)
    comfy.interrupt()
    entry = comfy.wait(first, 120)
    state = listed_run(comfy, first, train_id)
    assert state["cancelled"] and 1 <= state["step"] < 5000
    note = f"cancelled after {state['step']} of 5000 steps"
    assert state["note"] == note  # what the node's status line shows
    _, meta = load_adapter(comfy.base / "models" / "ipadapter" / "cancelled_first.safetensors")
    assert meta["cancelled"] == note
    report = json.loads((newest_run_folder(comfy, train_id) / "report.json").read_text())
    assert report["cancelled"] is True and report["cancelled_note"] == note
    assert f"Partial adapter: {note}." in entry["outputs"][save_id]["text"][0]  # Save's own output
    assert f"Saved a partial IP-Adapter ({note})" in comfy.log()  # and its log line

    set_inputs(prompt, "IPAdapterTrain_Save", name="cancelled_second")
    second = comfy.queue(prompt)
    state = wait_until_trained(comfy, second, train_id)
    if "ended" not in state:
        comfy.interrupt()  # only while it trains: a stray interrupt would stop the next test's prompt
    entry = comfy.wait(second, 120)
    cached = [n for m in status_messages(entry, "execution_cached") for n in m.get("nodes", [])]
    assert train_id not in cached, f"Train's cancelled result was reused: execution_cached lists {cached}"
    assert listed_run(comfy, second, train_id) is not None  # Train ran again, from step 1


def test_a_run_on_random_weight_files_says_so_in_its_report(comfy, test_models):
    """make-test-models files carry the random-weight mark: a ComfyUI run on them is labelled as the CLI's is."""
    from ipadapter_train.adapter.fileformat import load_adapter

    entry, _ = train_then_apply(comfy, test_models)
    reports = sorted((comfy.base / "output" / "ipadapter_train").glob("run-*/report.json"))
    assert reports
    for path in reports:  # every run of this server trained on make-test-models files
        assert json.loads(path.read_text())["random_weights"] is True, path
    assert load_adapter(comfy.base / "models" / "ipadapter" / "in_graph.safetensors")[1]["random_weights"] == "true"


def test_bad_inputs_end_in_execution_error_and_the_server_keeps_serving(comfy, test_models):
    from ipadapter_train.adapter.module import IPAdapter
    from ipadapter_train.adapter.fileformat import save_adapter
    from ipadapter_train.layout import adapter_layers
    from ipadapter_train.models.sd15 import tiny_unet_config

    # (an empty training folder, a bad Save name and a .safetensors adapter for another image encoder never get
    # this far: they are refused when queued, test_server_fault_matrix.py)
    wide = IPAdapter.new("base", 1024, 768, adapter_layers(tiny_unet_config()))  # a ViT-H adapter
    # a .bin file: its encoder is not read when queued (a pickle is loaded whole), so Apply refuses it when it runs
    save_adapter(wide.state_dict(), comfy.base / "models" / "ipadapter" / "vith_adapter.bin")
    train_set(comfy)  # also puts the template's reference.jpg in input/
    prompt = workflow(comfy, "apply_ip_adapter", test_models, seed=3)
    set_inputs(prompt, "IPAdapterTrain_Load", adapter_name="vith_adapter.bin")
    entry = run(comfy, prompt)
    errors = status_messages(entry, "execution_error")
    assert entry["status"]["status_str"] == "error", entry["status"]
    assert ("The adapter was trained with OpenCLIP ViT-H/14 image features (1024-d image embedding) but the CLIP "
            "vision model gives OpenAI CLIP ViT-L/14" in errors[0]["exception_message"])
    assert comfy.get("/system_stats")
