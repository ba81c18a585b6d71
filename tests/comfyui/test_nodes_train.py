"""The Train node in-process (CPU, 64 px, a few steps): it trains on the graph's loaded models, returns an
adapter that Apply uses directly (then KSampler / KSamplerAdvanced sample with it), reports progress
through ComfyUI's bar and the CONTRACT events, and on cancel returns the partial adapter without letting
ComfyUI's interrupt escape."""
from __future__ import annotations

import pytest
import torch

from test_nodes_support import ROOT, comfy_models, comfy_or_skip, pack, random_adapter

comfy_or_skip()

import comfy.model_management  # noqa: E402
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402
from comfy_execution.utils import CurrentNodeContext  # noqa: E402

SAMPLES = ROOT / "ipadapter_train" / "assets" / "samples"
STEPS = 3


class FakeServer:
    """Records what the nodes send to the browser."""

    def __init__(self):
        self.sent = []
        self.last_prompt_id = None

    def send_sync(self, event, data, sid=None):
        self.sent.append((event, data, sid))


@pytest.fixture(scope="module")
def graph():
    return comfy_models()


@pytest.fixture(scope="module")
def dataset():
    node = pack("nodes.node_load_images").LoadTrainingImages
    with torch.inference_mode():
        images, captions, _ = node.execute("", str(SAMPLES), "", 64).args
    return images[:3], "\n".join(captions.split("\n")[:3])  # 3 images keep CLIP encoding and validation short


@pytest.fixture(autouse=True)
def temp_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_paths, "temp_directory", str(tmp_path / "temp"))
    return tmp_path / "temp"


@pytest.fixture
def server(monkeypatch):
    runs = pack("nodes.runs")
    fake = FakeServer()
    monkeypatch.setattr(runs, "PromptServer", type("PromptServer", (), {"instance": fake}))
    return fake


def train(graph, dataset, steps=STEPS, variant="base", init_adapter=None, node="7", prompt="p-1"):
    node_cls = pack("nodes.node_train").TrainIPAdapter
    images, captions = dataset
    with torch.inference_mode(), CurrentNodeContext(prompt, node):  # as ComfyUI's executor runs nodes
        return node_cls.execute(graph["model"], graph["clip"], graph["vae"], graph["clip_vision"], images, captions,
                                variant, steps, 1e-4, 1, 64, 42, 0, init_adapter).args


@pytest.fixture(scope="module")
def trained(graph, dataset, tmp_path_factory):
    old = folder_paths.temp_directory
    folder_paths.temp_directory = str(tmp_path_factory.mktemp("temp"))
    try:
        yield train(graph, dataset)
    finally:
        folder_paths.temp_directory = old


def test_train_returns_an_adapter_a_loss_plot_and_a_report(trained, graph):
    adapter, plot, report = trained
    layers = pack("nodes.comfy_layers").comfy_adapter_layers(graph["model"])
    assert [n for n, _ in adapter.spec.layers] == [layer.index for layer in layers]
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in adapter.parameters())
    assert adapter.metadata["steps"] == str(STEPS) and adapter.metadata["variant"] == "base"
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in adapter.metadata.items())
    assert plot.shape[0] == 1 and plot.shape[-1] == 3 and plot.dtype == torch.float32
    assert report.startswith(f"Trained: {STEPS} of {STEPS} steps.")
    assert '"conditioning_gain"' in report


def test_the_trained_adapter_is_used_by_apply_and_ksampler_without_saving(trained, graph, dataset):
    import nodes as comfy_nodes  # ComfyUI's nodes.py

    assert hasattr(comfy_nodes, "common_ksampler")
    apply = pack("nodes.node_apply").ApplyIPAdapter
    adapter = trained[0]
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


def test_progress_events_runs_state_and_the_run_folder(graph, dataset, server, temp_dir):
    runs = pack("nodes.runs")
    adapter, _, _ = train(graph, dataset, node="42", prompt="prompt-a")
    progress = [d for e, d, _ in server.sent if e == "ipadapter_train.progress"]
    done = [d for e, d, _ in server.sent if e == "ipadapter_train.done"]
    assert [p["step"] for p in progress] == list(range(1, STEPS + 1))
    assert set(progress[0]) == {"node", "prompt_id", "step", "total", "loss", "eta_seconds"}
    assert all(p["node"] == "42" and p["prompt_id"] == "prompt-a" and p["total"] == STEPS for p in progress)
    assert all(isinstance(p["loss"], float) and p["eta_seconds"] >= 0 for p in progress)
    assert done == [{"node": "42", "prompt_id": "prompt-a", "steps": STEPS, "total": STEPS, "cancelled": False}]
    assert all(sid is None for _, _, sid in server.sent)  # every page, reloaded ones included
    run = runs.snapshot()["runs"]["42"]
    assert set(run) == {"prompt_id", "step", "total", "losses", "eta_seconds", "done", "cancelled"}
    assert run["done"] and not run["cancelled"] and run["step"] == STEPS
    assert run["losses"] == [p["loss"] for p in progress]
    folders = list((temp_dir / "ipadapter_train").iterdir())
    assert len(folders) == 1 and {"adapter.safetensors", "report.json", "loss.png"} <= {
        p.name for p in folders[0].iterdir()}


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
        adapter, plot, report = train(graph, dataset, steps=steps, node="9")
    finally:
        comfy.utils.set_progress_bar_global_hook(old)
    assert report.startswith(f"Cancelled: 2 of {steps} steps.")
    assert adapter.metadata["cancelled_at_step"] == "2" and adapter.metadata["steps"] == "2"
    assert not comfy.model_management.processing_interrupted()  # nothing left to cancel the next prompt
    assert [d for e, d, _ in server.sent if e == "ipadapter_train.done"][-1]["cancelled"] is True
    # the encode bar counts the 3 images, then the step bar shows the loss plot as its preview
    assert (1, 3, False) in seen and (1, steps, True) in seen and (2, steps) in [(v, t) for v, t, _ in seen]


def test_cancel_with_no_server_is_seen_through_the_interrupt_flag(graph, dataset):
    runs = pack("nodes.runs")
    original = runs.RunReporter.step

    def step(self, step, total, loss):
        if step == 1:
            comfy.model_management.interrupt_current_processing(True)
        return original(self, step, total, loss)

    runs.RunReporter.step = step
    try:
        adapter, _, report = train(graph, dataset, steps=6, node="10")
    finally:
        runs.RunReporter.step = original
    assert report.startswith("Cancelled: 1 of 6 steps.") and adapter.metadata["cancelled_at_step"] == "1"


def test_fine_tuning_an_init_adapter(trained, graph, dataset):
    init = trained[0]
    adapter, _, _ = train(graph, dataset, steps=1, init_adapter=init)
    key = "ip_adapter.1.to_k_ip.weight"
    before, after = init.state_dict()[key], adapter.state_dict()[key]
    assert not torch.equal(before, after) and (before - after).abs().max() < 1e-2  # one small step from init


@pytest.mark.parametrize("variant,width,message", [("plus", 1024, "set variant to plus"),
                                                   ("base", 1024, "image embedding is 1024-d")])
def test_a_mismatched_init_adapter_is_refused_before_training(graph, dataset, temp_dir, variant, width, message):
    errors = pack("ipadapter_train.errors")
    layers = pack("nodes.comfy_layers").comfy_adapter_layers(graph["model"])
    with pytest.raises(errors.IPAdapterError, match=message):
        train(graph, dataset, init_adapter=random_adapter(variant, width, layers))
    assert not (temp_dir / "ipadapter_train").exists()  # no run started


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
