"""Search IP-Adapter Settings in a real ComfyUI server: the shipped search template, queued through POST /prompt with
2 trials of 2 steps at 64 px on 2 photos (no scorer: judged by the held-out validation loss), returns the best trial's
adapter (Save writes it, Apply samples with it), the table image and the report; each trial's run sits in the search
folder under output/, its events say which trial it is, and the node's table of trials is sent after each trial and
listed by GET /ipadapter_train/runs. A cancel in the first trial fails the node in one sentence.

Random-weight test models (tiny SD1.5, ViT-L CLIP vision): the figures are noise, the plumbing is real.
"""
from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
from PIL import Image

from browser_workflow_api import find_nodes, set_inputs
from harness import ComfyServer, status_messages
from test_server_integration import SAMPLES, listed_run, workflow
from test_server_previews import Events

pytestmark = pytest.mark.server

TRIALS, STEPS = 2, 2
PHOTOS = ("astronaut", "chelsea")  # every trial encodes them again: two keep the trials short (none is held out)


def search_set(server: ComfyServer, name: str = "search_set") -> str:
    """Two sample photos and their captions in input/<name>."""
    folder = server.base / "input" / name
    folder.mkdir(parents=True, exist_ok=True)
    for photo in PHOTOS:
        for suffix in (".jpg", ".txt"):
            shutil.copy(SAMPLES / f"{photo}{suffix}", folder / f"{photo}{suffix}")
    return name


def search_prompt(server: ComfyServer, test_models, save_name: str, **search) -> tuple[dict, str]:
    """The shipped search template on the test models and the sample photos, small and fast; returns it and the
    search node's id."""
    prompt = workflow(server, "search_ip_adapter", test_models)
    set_inputs(prompt, "IPAdapterTrain_LoadTrainingImages", folder=search_set(server))
    set_inputs(prompt, "IPAdapterTrain_Search", **{
        "trials": TRIALS, "steps_low": STEPS, "steps_high": STEPS, "learning_rate_low": 1e-5,
        "learning_rate_high": 1e-2, "variant": "base", "batch_sizes": "1", "resolution": 64, "seed": 3,
        "preview_every": STEPS, "scorer": "none", **search})
    set_inputs(prompt, "IPAdapterTrain_Save", name=save_name, overwrite=True)
    (search_id,) = find_nodes(prompt, "IPAdapterTrain_Search")
    return prompt, search_id


def add_apply(prompt: dict, search_id: str) -> str:
    """Apply the search's adapter and sample one 64 px image in one step; returns the PreviewImage's id."""
    (ckpt,) = find_nodes(prompt, "CheckpointLoaderSimple")
    (clipv,) = find_nodes(prompt, "CLIPVisionLoader")
    (images,) = find_nodes(prompt, "IPAdapterTrain_LoadTrainingImages")
    prompt.update({
        "9101": {"class_type": "IPAdapterTrain_Apply", "inputs": {
            "model": [ckpt, 0], "adapter": [search_id, 0], "clip_vision": [clipv, 0], "image": [images, 0],
            "weight": 1.0, "start_at": 0.0, "end_at": 1.0}},
        "9102": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": [ckpt, 1]}},
        "9103": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "9104": {"class_type": "KSampler", "inputs": {
            "model": ["9101", 0], "positive": ["9102", 0], "negative": ["9102", 0], "latent_image": ["9103", 0],
            "seed": 1, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "9105": {"class_type": "VAEDecode", "inputs": {"samples": ["9104", 0], "vae": [ckpt, 2]}},
        "9106": {"class_type": "PreviewImage", "inputs": {"images": ["9105", 0]}},
    })
    return "9106"


def test_a_search_runs_its_trials_in_output_and_returns_the_best_adapter_a_table_and_a_report(comfy, test_models):
    from ipadapter_train.adapter.fileformat import load_adapter

    prompt, search_id = search_prompt(comfy, test_models, "searched")
    sampled = add_apply(prompt, search_id)
    (table_id,) = [k for k, n in prompt.items() if n["inputs"].get("images") == [search_id, 1]]
    (report_id,) = [k for k, n in prompt.items() if n["inputs"].get("source") == [search_id, 2]]
    with Events(comfy, "tests-search") as events:
        prompt_id = comfy.queue(prompt)
        entry = comfy.wait(prompt_id, 600)
        assert entry["status"]["status_str"] == "success", status_messages(entry, "execution_error")
        tables = events.wait_for("ipadapter_train.search", prompt_id)

    # every trial is a run of the node whose events say which trial it is, 1 of 2 then 2 of 2
    progress = events.of("ipadapter_train.progress", prompt_id)
    assert {(d["node"], d["trial"]["index"], d["trial"]["trials"]) for d in progress} == {
        (search_id, 1, TRIALS), (search_id, 2, TRIALS)}
    assert len(events.of("ipadapter_train.done", prompt_id)) == TRIALS
    # the node's table of trials: one running line as a trial starts, then the finished ones, the best marked
    last = tables[-1]
    assert last["done"] and last["note"] is None and last["trials"] == TRIALS
    assert last["objective"] == "held-out validation loss"
    assert [r["state"] for r in last["rows"]] == ["finished"] * TRIALS
    assert sum(r["best"] for r in last["rows"]) == 1 and last["best"]["number"] in (0, 1)
    assert any(r["state"] == "running" for t in tables for r in t["rows"])
    assert last["rows"][0]["text"].startswith(f"trial 1/{TRIALS}: lr ")
    # a page reloaded after the search finds the table on the last trial's run
    run = listed_run(comfy, prompt_id, search_id)
    assert run["done"] and run["trial"]["index"] == TRIALS and run["search"]["rows"] == last["rows"]

    # the search folder: inside output/, a run folder and an adapter per trial, and the search page
    folder = comfy.base / "output" / last["folder"]
    assert folder.parent == comfy.base / "output" / "ipadapter_train" and folder.name.startswith("search-")
    for n in range(TRIALS):
        assert (folder / f"trial_{n:03d}" / "report.json").is_file()
        assert (folder / f"trial_{n:03d}.safetensors").is_file()
    assert (folder / "search.html").is_file()

    # the adapter Save wrote is the best trial's file, tensor for tensor; Apply sampled with it
    best = folder / f"trial_{last['best']['number']:03d}.safetensors"
    saved, _ = load_adapter(comfy.base / "models" / "ipadapter" / "searched.safetensors")
    want, _ = load_adapter(best)
    assert saved.keys() == want.keys() and all(np.array_equal(saved[k].float().numpy(), want[k].float().numpy())
                                               for k in want)
    assert len(entry["outputs"][sampled]["images"]) == 1

    # the table image: a row per trial (taller than the header and title alone), and the report's summary
    (shown,) = entry["outputs"][table_id]["images"]
    table = Image.open(comfy.base / shown["type"] / shown.get("subfolder", "") / shown["filename"])
    assert table.width > 300 and table.height >= 20 * (TRIALS + 2)
    report = entry["outputs"][report_id]["text"][0]
    summary = report.split("\n\n")[0]
    assert summary.startswith("NOTE: random-weight models")
    assert f"Searched {TRIALS} trial(s) by the held-out validation loss: {TRIALS} finished, 0 pruned." in summary
    assert f"Best: trial {last['best']['number']}," in summary and str(folder) in summary.splitlines()[-1]


def test_a_cancel_before_any_trial_finished_fails_in_one_sentence(comfy, test_models):
    prompt, search_id = search_prompt(comfy, test_models, "never_searched", steps_low=5000, steps_high=5000,
                                      preview_every=5000)
    prompt_id = comfy.queue(prompt)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        run = listed_run(comfy, prompt_id, search_id)
        if run:  # the first trial has begun (encoding the photos, or training): cancel it there
            break
        time.sleep(0.1)
    else:
        pytest.fail("the first trial never began")
    comfy.interrupt()
    entry = comfy.wait(prompt_id, 120)
    (error,) = status_messages(entry, "execution_error")
    assert error["node_id"] == search_id
    assert error["exception_message"].strip() == (f"The search was cancelled during trial 1 of {TRIALS}, before any "
                                                  "trial finished: there is no adapter to return.")
    run = listed_run(comfy, prompt_id, search_id)
    assert run["done"] and run["cancelled"] and run["search"]["done"]
    assert not (comfy.base / "models" / "ipadapter" / "never_searched.safetensors").exists()
