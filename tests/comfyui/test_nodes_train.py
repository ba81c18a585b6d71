"""The Train node in-process (CPU, 64 px, a few steps): it trains on the graph's loaded models, returns an
adapter that Apply uses directly (then KSampler / KSamplerAdvanced sample with it), reports its phases
(encoding, training, validating) and progress through ComfyUI's bar and the CONTRACT events, keeps its run
folder under ComfyUI's output directory, and on cancel returns the partial adapter without letting
ComfyUI's interrupt escape.

These runs turn previews off (preview_every -1), so the phases, the bar and the ETA they check are those of
training alone; test_nodes_previews.py runs the node with previews on."""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from test_nodes_support import ROOT, comfy_models, comfy_or_skip, pack, random_adapter

pytestmark = pytest.mark.unit

comfy_or_skip()

import comfy.model_management  # noqa: E402
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402
from comfy_api.latest import io  # noqa: E402
from comfy_execution.utils import CurrentNodeContext  # noqa: E402

SAMPLES = ROOT / "ipadapter_train" / "assets" / "samples"
STEPS = 3


class FakeServer:
    """Records what the nodes send to the browser."""

    def __init__(self):
        self.sent = []
        self.last_prompt_id = None
        self.client_id = "page-1"  # what ComfyUI sets while it runs a prompt: the queuing page's client id

    def send_sync(self, event, data, sid=None):
        self.sent.append((event, data, sid))


@pytest.fixture(scope="module")
def graph():
    return comfy_models()


@pytest.fixture(scope="module")
def dataset():
    """3 sample photos at 64 px as an IMAGE batch and their captions (3 keep encoding and validation short)."""
    data, image_ops = pack("ipadapter_train.storage.data"), pack("ipadapter_train.storage.image_ops")
    samples, _ = data.load_image_folder(SAMPLES)
    pictures = [image_ops.center_crop(image_ops.resize_short_side(s.image, 64), 64) for s in samples[:3]]
    return pack("nodes.images").pils_to_tensor(pictures), "\n".join(s.caption for s in samples[:3])


@pytest.fixture(autouse=True)
def output_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    monkeypatch.setattr(folder_paths, "temp_directory", str(tmp_path / "temp"))
    return tmp_path / "output"


@pytest.fixture
def server(monkeypatch):
    runs = pack("nodes.runs")
    fake = FakeServer()
    monkeypatch.setattr(runs, "PromptServer", type("PromptServer", (), {"instance": fake}))
    return fake


def train(graph, dataset, steps=STEPS, variant="base", init_adapter=None, node="7", prompt="p-1",
          validation="quick", workflow="wf-1", preview_every=-1, **previews):
    """Run the node as ComfyUI's executor does: a class clone with the hidden inputs, in the node's context.
    Previews are off unless asked for (`preview_every`, and preview_images, preview_prompts, scorer, keep_best)."""
    node_cls = pack("nodes.node_train").TrainIPAdapter
    hidden = {io.Hidden.unique_id: node, io.Hidden.extra_pnginfo: {"workflow": {"id": workflow, "nodes": []}}}
    images, captions = dataset
    with torch.inference_mode(), CurrentNodeContext(prompt, node):
        return node_cls.PREPARE_CLASS_CLONE(hidden).execute(
            model=graph["model"], clip=graph["clip"], vae=graph["vae"], clip_vision=graph["clip_vision"],
            images=images, captions=captions, variant=variant, steps=steps, learning_rate=1e-4, batch_size=1,
            resolution=64, seed=42, checkpoint_every=0, validation=validation, init_adapter=init_adapter,
            preview_every=preview_every, **previews).args


@pytest.fixture
def bar():
    """Every update of ComfyUI's progress bar, as (value, total, has a preview image)."""
    seen = []
    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(
        lambda value, total, preview, prompt_id=None, node_id=None: seen.append((value, total, preview is not None)))
    yield seen
    comfy.utils.set_progress_bar_global_hook(old)


@pytest.fixture(scope="module")
def trained(graph, dataset, tmp_path_factory):
    """One run of the node (quick validation), shared by the tests that read its outputs, the events it sent,
    ComfyUI's bar and the runs route right after it, and its output directory."""
    runs = pack("nodes.runs")
    fake, seen = FakeServer(), []
    output = tmp_path_factory.mktemp("output")
    old = folder_paths.output_directory, runs.PromptServer, comfy.utils.PROGRESS_BAR_HOOK
    folder_paths.output_directory = str(output)
    runs.PromptServer = type("PromptServer", (), {"instance": fake})
    comfy.utils.set_progress_bar_global_hook(
        lambda value, total, preview, prompt_id=None, node_id=None: seen.append((value, total, preview is not None)))
    try:
        outputs = train(graph, dataset, node="42", prompt="prompt-a", workflow="wf-a")
        listed = runs.snapshot()["runs"]
    finally:  # restored at once: the other tests install their own
        folder_paths.output_directory, runs.PromptServer = old[:2]
        comfy.utils.set_progress_bar_global_hook(old[2])
    return SimpleNamespace(outputs=outputs, server=fake, bar=seen, runs=listed, output=output)


def test_train_returns_an_adapter_a_loss_plot_a_report_and_the_previews_notice(trained, graph):
    adapter, plot, report, previews = trained.outputs
    layers = pack("nodes.comfy_layers").comfy_adapter_layers(graph["model"])
    assert [n for n, _ in adapter.spec.layers] == [layer.index for layer in layers]
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in adapter.parameters())
    assert adapter.metadata["steps"] == str(STEPS) and adapter.metadata["variant"] == "base"
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in adapter.metadata.items())
    assert plot.shape[0] == 1 and plot.shape[-1] == 3 and plot.dtype == torch.float32
    assert report.startswith(f"Trained: {STEPS} of {STEPS} steps.")
    assert '"conditioning_gain"' in report
    assert "Previews off." in report.split("\n\n")[0]
    # previews off: one small picture that says so, as an IMAGE
    assert previews.ndim == 4 and previews.shape[0] == 1 and previews.shape[-1] == 3 and previews.shape[1] <= 128


def test_the_trained_adapter_is_used_by_apply_and_ksampler_without_saving(trained, graph, dataset):
    import nodes as comfy_nodes  # ComfyUI's nodes.py

    assert hasattr(comfy_nodes, "common_ksampler")
    apply = pack("nodes.node_apply").ApplyIPAdapter
    adapter = trained.outputs[0]
    image = dataset[0][:2]
    with torch.inference_mode():
        positive = comfy_nodes.CLIPTextEncode().encode(graph["clip"], "a photo")[0]
        negative = comfy_nodes.CLIPTextEncode().encode(graph["clip"], "")[0]
        latent = {"samples": torch.zeros(1, 4, 8, 8)}

        def sample(model, advanced=False):
            extra = {"start_step": 1, "last_step": 3, "force_full_denoise": True} if advanced else {}
            return comfy_nodes.common_ksampler(model, 5, 3, 5.0, "euler", "normal", positive, negative, latent,
                                               **extra)[0]["samples"]

        models = {w: apply.execute(graph["model"], adapter, graph["clip_vision"], image, w, 0.0, 1.0).args[0]
                  for w in (0.0, 1.0)}
        for advanced in (False, True):
            plain = sample(graph["model"], advanced)
            assert torch.equal(sample(models[0.0], advanced), plain)
            assert (sample(models[1.0], advanced) - plain).abs().max() > 1e-4


def events(server, *names):
    """(event, payload) sent to the pages, in order, for the given event names."""
    return [(e.rsplit(".", 1)[1], d) for e, d, _ in server.sent if e in names]


def test_phases_progress_events_runs_state_and_the_run_folder(trained):
    report, server, bar, output_dir = trained.outputs[2], trained.server, trained.bar, trained.output
    sent = events(server, "ipadapter_train.phase", "ipadapter_train.progress", "ipadapter_train.done")
    assert all(sid is None for _, _, sid in server.sent)  # every page, reloaded ones included
    assert all((d["node"], d["prompt_id"], d["workflow_id"], d["client_id"]) == ("42", "prompt-a", "wf-a", "page-1")
               for _, d in sent)
    started = sent[0][1]["started"]
    assert all(d["started"] == started for _, d in sent)
    calls = 3 * 2  # quick validation: min(3 images, 4) x 2 timesteps
    timeline = [(kind, d.get("phase"), d["steps"] if kind == "done" else d.get("done", d.get("step")), d["total"])
                for kind, d in sent]
    assert timeline == (
        [("phase", "encoding", i, 3) for i in range(4)] + [("phase", "training", 0, STEPS)]
        + [("progress", None, s, STEPS) for s in range(1, STEPS + 1)]
        + [("phase", "validating", i, calls) for i in range(calls + 1)]
        + [("done", None, STEPS, STEPS)])
    # the bar counts each phase's units and never carries the loss plot (the chart shows it)
    assert bar == [(i, 3, False) for i in range(4)] + [(s, STEPS, False) for s in range(STEPS + 1)] + [
        (i, calls, False) for i in range(calls + 1)]

    progress = [d for kind, d in sent if kind == "progress"]
    assert set(progress[0]) == {"node", "prompt_id", "workflow_id", "client_id", "started", "step", "total", "loss",
                                "eta_seconds"}
    # no ETA before a step was measured on its own: not while encoding, not after the first step
    assert all(d["eta_seconds"] is None for kind, d in sent if kind == "phase" and d["phase"] != "validating")
    assert progress[0]["eta_seconds"] is None
    # then the remaining steps and the validation: still more than 0 s after the last step
    assert all(isinstance(p["eta_seconds"], float) and p["eta_seconds"] > 0 for p in progress[1:])
    validating = [d for kind, d in sent if kind == "phase" and d["phase"] == "validating"]
    assert validating[0]["eta_seconds"] > 0 and validating[-1]["eta_seconds"] == 0.0
    assert [d for kind, d in sent if kind == "done"] == [{"node": "42", "prompt_id": "prompt-a", "workflow_id": "wf-a",
                                                          "client_id": "page-1", "started": started, "steps": STEPS,
                                                          "total": STEPS, "cancelled": False, "failed": False,
                                                          "note": None}]

    run = next(r for r in trained.runs if (r["prompt_id"], r["node"]) == ("prompt-a", "42"))
    assert run == {"node": "42", "prompt_id": "prompt-a", "workflow_id": "wf-a", "client_id": "page-1",
                   "started": started, "phase": "done",
                   "phase_done": calls, "phase_total": calls, "step": STEPS, "total": STEPS,
                   "losses": [p["loss"] for p in progress], "eta_seconds": 0.0, "validation_calls": calls,
                   "previews": [], "done": True, "cancelled": False, "failed": False, "note": None}

    # the run folder is kept under ComfyUI's output directory, and the report says where
    folders = list((output_dir / "ipadapter_train").iterdir())
    assert len(folders) == 1 and {"adapter.safetensors", "report.json", "loss.png"} <= {
        p.name for p in folders[0].iterdir()}
    assert f": {folders[0]}" in report.split("\n\n")[0]
    saved = json.loads((folders[0] / "report.json").read_text())
    assert saved["conditioning_gain"]["images"] == 3 and saved["conditioning_gain"]["timesteps"] == [300, 700]
    assert "Conditioning gain" in report.split("\n\n")[0]


def first_two(dataset):
    """The first 2 images and captions: enough to validate (it shuffles), cheaper to encode."""
    images, captions = dataset
    return images[:2], "\n".join(captions.split("\n")[:2])


def test_validation_off_skips_the_phase_and_the_gain(graph, dataset, server, bar):
    _, _, report, _ = train(graph, first_two(dataset), steps=2, node="43", validation="off")
    sent = events(server, "ipadapter_train.phase", "ipadapter_train.progress")
    assert [d["phase"] for kind, d in sent if kind == "phase"] == ["encoding"] * 3 + ["training"]
    assert [d["eta_seconds"] for kind, d in sent if kind == "progress"] == [None, 0.0]  # nothing left to wait for
    assert max(total for _, total, _ in bar) == 2  # 2 images, then 2 steps: no validation calls (quick: 4)
    summary, full = report.split("\n\n", 1)
    assert "Validation off: no conditioning gain." in summary
    assert json.loads(full)["conditioning_gain"] is None


def test_runs_of_two_workflows_that_share_a_node_id_are_kept_apart(server, monkeypatch):
    runs = pack("nodes.runs")
    RunReporter = pack("nodes.run_reporter").RunReporter
    monkeypatch.setattr(runs, "RUNS", {})
    first = RunReporter("4", "p-x", total=2, images=1, workflow_id="wf-x")
    first.encoding(1, 1)
    first.step(1, 2, 0.5)
    first.finish(cancelled=False)
    second = RunReporter("4", "p-y", total=3, images=1, workflow_id="wf-y")  # same node id, another workflow
    second.step(1, 3, 0.25)
    listed = [(r["node"], r["prompt_id"], r["workflow_id"], r["losses"], r["phase"], r["done"])
              for r in runs.snapshot()["runs"]]
    assert listed == [("4", "p-x", "wf-x", [0.5], "done", True), ("4", "p-y", "wf-y", [0.25], "training", False)]
    assert runs.snapshot()["runs"][0]["started"] <= runs.snapshot()["runs"][1]["started"]
    # finished runs are forgotten oldest first; the running one stays listed
    for i in range(runs.KEEP_FINISHED + 2):
        RunReporter("4", f"old-{i}", total=1, images=1).finish(cancelled=False)
    kept = [r["prompt_id"] for r in runs.snapshot()["runs"]]
    assert "p-y" in kept and "p-x" not in kept and "old-0" not in kept and "old-1" not in kept
    assert len(kept) == runs.KEEP_FINISHED + 1


def test_run_folders_live_in_the_output_directory_with_windows_safe_names(output_dir):
    training = pack("nodes.training")
    first, second = training.make_run_dir("12:5"), training.make_run_dir("12:5")  # a node inside a subgraph
    assert first != second and first.is_dir() and second.is_dir()
    for folder in (first, second):
        assert folder.parent == output_dir / "ipadapter_train"
        assert re.fullmatch(r"run-\d{8}-\d{6}-node12-5(-\d+)?", folder.name), folder.name
        assert not set(folder.name) & set('<>:"/\\|?*')
    assert not (Path(folder_paths.get_temp_directory()) / "ipadapter_train").exists()


def test_a_300_digit_node_id_gives_a_short_run_folder(output_dir):
    """A node id is the client's text: a 300-digit one must not make a folder name the OS refuses (whose error
    carried the server's absolute path)."""
    training = pack("nodes.training")
    long_id, other = "9" * 300, "9" * 299 + "8"
    folder, folder2 = training.make_run_dir(long_id), training.make_run_dir(other)
    assert folder.is_dir() and len(folder.name) < 80 and folder.name.startswith("run-")
    assert folder.name.split("-node")[1][:20] == "9" * 20
    assert folder.name.split("-node")[1] != folder2.name.split("-node")[1]  # the hash tells the two apart
def test_stand_in_models_are_found_through_the_loaders_upstream(tmp_path, monkeypatch):
    """The Train node learns that its models are random-weight stand-ins from the files the loaders upstream of
    model/clip/vae/clip_vision read (through LoRA loaders too); unmarked files, other inputs' sources and names
    outside the model folders do not count."""
    from safetensors.torch import save_file

    origin, random_init = pack("nodes.model_origin"), pack("ipadapter_train.models.random_init")
    table = dict(folder_paths.folder_names_and_paths)
    monkeypatch.setattr(folder_paths, "folder_names_and_paths", table)
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    for folder in ("checkpoints", "clip_vision", "loras"):
        (tmp_path / folder).mkdir()
        table[folder] = ([str(tmp_path / folder)], {".safetensors"})
    weights = {"w": torch.zeros(1)}
    save_file(weights, str(tmp_path / "checkpoints" / "stand_in.safetensors"), random_init.random_metadata(True))
    save_file(weights, str(tmp_path / "checkpoints" / "real.safetensors"), {"format": "pt"})
    save_file(weights, str(tmp_path / "clip_vision" / "vision.safetensors"), random_init.random_metadata(True))
    save_file(weights, str(tmp_path / "loras" / "style.safetensors"), {"format": "pt"})

    def prompt(ckpt, vision="vision.safetensors"):
        return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
                "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1],
                                                             "lora_name": "style.safetensors"}},
                "3": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": vision}},
                "9": {"class_type": "LoadImage", "inputs": {"image": "stand_in.safetensors"}},
                "7": {"class_type": "IPAdapterTrain_Train",
                      "inputs": {"model": ["2", 0], "clip": ["2", 1], "vae": ["1", 2], "clip_vision": ["3", 0],
                                 "images": ["9", 0], "steps": 3}}}

    assert sorted(origin.stand_in_models(prompt("stand_in.safetensors"), "7")) == ["stand_in.safetensors",
                                                                                    "vision.safetensors"]
    assert origin.stand_in_models(prompt("real.safetensors"), "7") == ["vision.safetensors"]
    unmarked = prompt("real.safetensors", vision="missing.safetensors")
    assert origin.stand_in_models(unmarked, "7") == []  # images' source (node 9) is not a model input
    assert origin.stand_in_models(None, "7") == [] and origin.stand_in_models(unmarked, "") == []


def test_cancel_returns_the_partial_adapter_and_never_raises_the_interrupt(graph, dataset, server):
    steps = 8
    seen = []

    def hook(value, total, preview, prompt_id=None, node_id=None):
        # what ComfyUI's server hook does on every progress update (main.py: hijack_progress)
        seen.append((value, total, preview is not None))
        if total == steps and value == 2:
            comfy.model_management.interrupt_current_processing(True)  # the Cancel button
        comfy.model_management.throw_exception_if_processing_interrupted()

    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        adapter, plot, report, _ = train(graph, dataset, steps=steps, node="9")
    finally:
        comfy.utils.set_progress_bar_global_hook(old)
    assert report.startswith(f"Partial adapter: cancelled after 2 of {steps} steps.")
    assert adapter.metadata["cancelled_at_step"] == "2" and adapter.metadata["steps"] == "2"
    assert not comfy.model_management.processing_interrupted()  # nothing left to cancel the next prompt
    assert [d for e, d, _ in server.sent if e == "ipadapter_train.done"][-1]["cancelled"] is True
    assert "validating" not in [d["phase"] for e, d, _ in server.sent if e == "ipadapter_train.phase"]
    # the bar counts the 3 images, then the steps, with no preview image
    assert seen[:5] == [(0, 3, False), (1, 3, False), (2, 3, False), (3, 3, False), (0, steps, False)]
    assert seen[5:] == [(1, steps, False), (2, steps, False)]


def test_cancel_during_validation_keeps_the_whole_adapter_without_a_gain(graph, dataset, server):
    def hook(value, total, preview, prompt_id=None, node_id=None):
        if total == 4 and value == 2:  # the second of the 4 validation calls (2 images x 2 timesteps)
            comfy.model_management.interrupt_current_processing(True)
        comfy.model_management.throw_exception_if_processing_interrupted()

    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        adapter, _, report, _ = train(graph, first_two(dataset), steps=2, node="11")
    finally:
        comfy.utils.set_progress_bar_global_hook(old)
    summary, full = report.split("\n\n", 1)
    assert summary.startswith("Trained: 2 of 2 steps.") and "cancelled_at_step" not in adapter.metadata
    assert "Validation cancelled" in summary and json.loads(full)["conditioning_gain"] is None
    assert not comfy.model_management.processing_interrupted()
    phases = [(d["phase"], d["done"]) for e, d, _ in server.sent if e == "ipadapter_train.phase"]
    assert phases[-1] == ("validating", 2)  # it stopped after the call that saw the cancel


def test_cancel_while_encoding_stops_the_prompt_at_the_next_image(graph, dataset, server, output_dir):
    def hook(value, total, preview, prompt_id=None, node_id=None):
        if total == 3 and value == 1:  # the first of the 3 images is encoded (the run has 4 steps)
            comfy.model_management.interrupt_current_processing(True)
        comfy.model_management.throw_exception_if_processing_interrupted()

    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            train(graph, dataset, steps=4, node="12", prompt="p-enc")
    finally:
        comfy.utils.set_progress_bar_global_hook(old)
    phases = [(d["phase"], d["done"]) for e, d, _ in server.sent if e == "ipadapter_train.phase"]
    assert phases == [("encoding", 0), ("encoding", 1)]  # not the other 2 images, no training
    assert [d for e, d, _ in server.sent if e == "ipadapter_train.progress"] == []
    done = [d for e, d, _ in server.sent if e == "ipadapter_train.done"]
    assert [(d["steps"], d["cancelled"], d["failed"]) for d in done] == [(0, True, False)]
    assert not comfy.model_management.processing_interrupted()
    assert not any((output_dir / "ipadapter_train").iterdir())  # no empty run folder left behind


def test_cancel_with_no_server_is_seen_through_the_interrupt_flag(graph, dataset):
    RunReporter = pack("nodes.run_reporter").RunReporter
    original = RunReporter.step

    def step(self, step, total, loss):
        if step == 1:
            comfy.model_management.interrupt_current_processing(True)
        return original(self, step, total, loss)

    RunReporter.step = step
    try:
        adapter, _, report, _ = train(graph, dataset, steps=6, node="10")
    finally:
        RunReporter.step = original
    assert report.startswith("Partial adapter: cancelled after 1 of 6 steps.") and adapter.metadata["cancelled_at_step"] == "1"


def test_fine_tuning_an_init_adapter(trained, graph, dataset):
    init = trained.outputs[0]
    adapter, _, _, _ = train(graph, dataset, steps=1, init_adapter=init)
    key = "ip_adapter.1.to_k_ip.weight"
    before, after = init.state_dict()[key], adapter.state_dict()[key]
    assert not torch.equal(before, after) and (before - after).abs().max() < 1e-2  # one small step from init


@pytest.mark.parametrize("variant,width,message", [("plus", 1024, "set variant to plus"),
                                                   ("base", 1024, r"init_adapter was trained with OpenCLIP ViT-H/14 "
                                                                   r"image features \(1024-d image embedding\)")])
def test_a_mismatched_init_adapter_is_refused_before_training(graph, dataset, output_dir, variant, width, message):
    errors = pack("ipadapter_train.errors")
    layers = pack("nodes.comfy_layers").comfy_adapter_layers(graph["model"])
    with pytest.raises(errors.IPAdapterError, match=message):
        train(graph, dataset, init_adapter=random_adapter(variant, width, layers))
    assert not (output_dir / "ipadapter_train").exists()  # no run started


def test_captions_must_match_the_images(graph, dataset):
    errors = pack("ipadapter_train.errors")
    images, _ = dataset
    with pytest.raises(errors.IPAdapterError, match="2 caption lines for 3 images"):
        train(graph, (images, "one\ntwo"))
    training = pack("nodes.training")
    assert training.split_captions("", 3) == ["", "", ""]
    assert training.split_captions("a\nb\nc\n", 3) == ["a", "b", "c"]
    assert training.split_captions("\n\n", 3) == ["", "", ""]
    assert training.split_captions("same", 2) == ["same", "same"]
