"""The Train and Apply nodes on a tiny SDXL graph, in-process, end to end: Train (buckets on, quick validation) trains
an SDXL adapter that Apply patches into the MODEL and ComfyUI's KSampler samples with; resolution 0 is the model
family's default (1024 SDXL, 512 SD1.5) before the steps are counted; bad resolutions are refused when queued; an
adapter of the other family, a MODEL of no known family and a v-prediction MODEL are refused in one sentence."""
from __future__ import annotations

import json

import pytest
import torch

from test_nodes_support import ROOT, comfy_models, comfy_or_skip, pack, random_adapter

pytestmark = pytest.mark.unit

comfy_or_skip()

import folder_paths  # noqa: E402
from comfy_api.latest import io  # noqa: E402
from comfy_execution.utils import CurrentNodeContext  # noqa: E402
from sdxl_graph import bare_model, comfy_sdxl  # noqa: E402

SAMPLES = ROOT / "ipadapter_train" / "assets" / "samples"


class Stop(Exception):
    """Raised by a spy to end a node run once it has seen what it came for."""


@pytest.fixture(scope="module")
def graph():
    sd15 = comfy_models()
    return {**comfy_sdxl(), "vae": sd15["vae"], "clip_vision": sd15["clip_vision"]}


@pytest.fixture(scope="module")
def wide_images():
    """3 sample photos at 128x64 (2:1) as an IMAGE batch, and their captions."""
    data, image_ops = pack("ipadapter_train.storage.data"), pack("ipadapter_train.storage.image_ops")
    samples, _ = data.load_image_folder(SAMPLES)
    pictures = []
    for sample in samples[:3]:
        cover = image_ops.resize_to_cover(sample.image, 128, 64)
        left, top = (cover.width - 128) // 2, (cover.height - 64) // 2
        pictures.append(cover.crop((left, top, left + 128, top + 64)))
    assert pictures[0].size == (128, 64)
    return pack("nodes.images").pils_to_tensor(pictures), "\n".join(s.caption for s in samples[:3])


@pytest.fixture(autouse=True)
def output_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    return tmp_path / "output"


def train(graph, dataset, **widgets):
    """The Train node as ComfyUI's executor runs it (class clone with hidden inputs, in inference mode)."""
    node_cls = pack("nodes.node_train").TrainIPAdapter
    hidden = {io.Hidden.unique_id: "5", io.Hidden.extra_pnginfo: None}
    settings = dict(variant="base", steps=2, learning_rate=1e-4, batch_size=1, resolution=128, seed=1,
                    checkpoint_every=0, validation="quick", gradient_checkpointing=False, buckets=True)
    settings.update(widgets)
    images, captions = dataset
    with torch.inference_mode(), CurrentNodeContext("p-sdxl", "5"):
        return node_cls.PREPARE_CLASS_CLONE(hidden).execute(
            model=graph["model"], clip=graph["clip"], vae=graph["vae"], clip_vision=graph["clip_vision"],
            images=images, captions=captions, **settings).args


def test_train_node_trains_an_sdxl_adapter_in_its_bucket_that_apply_and_ksampler_use(graph, wide_images):
    import nodes as comfy_nodes  # ComfyUI's nodes.py

    # a round after each step (auto would plan none in a 2-step run with previews as large as its images)
    adapter, plot, report, previews = train(graph, wide_images, preview_every=1)
    layers = pack("nodes.comfy_layers").comfy_adapter_layers(graph["model"])
    assert adapter.spec.family.name == "sdxl" and adapter.spec.cross_dim == 2048
    assert [n for n, _ in adapter.spec.layers] == [layer.index for layer in layers]
    assert adapter.metadata["family"] == "sdxl"
    rep = json.loads(report.split("\n\n", 1)[1])
    assert rep["config"]["resolution"] == 128 and rep["config"]["buckets"] is True
    assert rep["buckets"] == {"128x64": 3}  # the 2:1 images trained whole, not as 128x128 centre crops
    assert rep["steps"] == rep["total_steps"] == 2 and all(map(torch.isfinite, torch.tensor(rep["losses"])))
    assert rep["conditioning_gain"]["gain"] is not None  # validation ran with the pooled text and time_ids
    assert plot.shape[0] == 1
    # previews on the SDXL graph's own models (pooled text and time_ids at the preview size, its VAE decodes):
    # after both steps; 3 images: none held out
    assert rep["previews"]["grids"] == ["previews/step_0001.png", "previews/step_0002.png"]
    assert rep["previews"]["held_out"] == [] and rep["previews"]["size"] == 128
    assert previews.shape[0] == 2 and previews.shape[-1] == 3

    apply = pack("nodes.node_apply").ApplyIPAdapter
    with torch.inference_mode():
        positive = comfy_nodes.CLIPTextEncode().encode(graph["clip"], "a photo")[0]  # SDXL: with pooled_output
        negative = comfy_nodes.CLIPTextEncode().encode(graph["clip"], "")[0]
        latent = {"samples": torch.zeros(1, 4, 8, 16)}

        def sample(model):
            return comfy_nodes.common_ksampler(model, 5, 2, 5.0, "euler", "normal", positive, negative,
                                               latent)[0]["samples"]

        plain = sample(graph["model"])
        off = apply.execute(graph["model"], adapter, graph["clip_vision"], wide_images[0][:2], 0.0, 0.0, 1.0)
        on = apply.execute(graph["model"], adapter, graph["clip_vision"], wide_images[0][:2], 1.0, 0.0, 1.0)
        assert torch.equal(sample(off.args[0]), plain)
        patched = sample(on.args[0])
    assert torch.isfinite(patched).all() and (patched - plain).abs().max() > 1e-4


@pytest.mark.parametrize("family,default", [("sdxl", 1024), ("sd15", 512)])
def test_resolution_0_is_the_model_familys_default_before_the_steps_are_counted(graph, wide_images, monkeypatch,
                                                                               output_dir, family, default):
    training, batches = pack("nodes.training"), pack("ipadapter_train.training.batches")
    plan_run, seen = training.plan_run, []

    def spy(*args, **kwargs):  # the node's one plan of the run: keep it, train nothing
        seen.append(plan_run(*args, **kwargs))
        raise Stop

    monkeypatch.setattr(training, "plan_run", spy)
    models = graph if family == "sdxl" else comfy_models()
    with pytest.raises(Stop):
        train(models, wide_images, resolution=0)
    plan = seen[0]
    sizes = [sample.image.size for sample in plan.samples]
    assert plan.config.resolution == default and plan.config.buckets and sizes == [(128, 64)] * 3 and plan.world == 1
    assert plan.total == batches.total_steps(plan.config, sizes, 1)  # counted at the family's resolution
    assert not list(output_dir.glob("ipadapter_train/*"))  # no run folder before the count


def test_a_resolution_the_trainer_cannot_use_is_refused_when_queued():
    node = pack("nodes.node_train").TrainIPAdapter
    assert node.validate_inputs(resolution=0) is True and node.validate_inputs(resolution=1024) is True
    assert node.validate_inputs(resolution=None) is True  # fed by another node: checked when it runs
    for bad in (32, 100, -8):
        message = node.validate_inputs(resolution=bad)
        assert isinstance(message, str) and f"Resolution {bad}" in message and "multiple of 8" in message
    assert "2048" in node.validate_inputs(resolution=4096)


def test_an_sd15_init_adapter_is_refused_on_an_sdxl_model_before_any_work(graph, wide_images, output_dir):
    errors = pack("ipadapter_train.errors")
    sd15_layers = pack("nodes.comfy_layers").comfy_adapter_layers(comfy_models()["model"])
    with pytest.raises(errors.IPAdapterError) as refused:
        train(graph, wide_images, init_adapter=random_adapter("base", 768, sd15_layers))
    message = str(refused.value)
    assert message.startswith("init_adapter is an SD1.5") and "this MODEL is SDXL" in message, message
    assert not list(output_dir.glob("ipadapter_train/*"))


def test_models_the_pack_cannot_train_are_refused_in_one_sentence(graph):
    import comfy.supported_models_base

    backend = pack("nodes.comfy_backend")
    errors = pack("ipadapter_train.errors")
    unknown = bare_model(comfy.supported_models_base.BASE, context_dim=1024, adm_in_channels=None, num_classes=None)
    v_pred = bare_model(markers={"v_pred": torch.zeros(())})
    for model, words in ((unknown, ("no model family", "1024-d", "SD1.5", "SDXL")),
                         (v_pred, ("SDXL MODEL samples with", "epsilon-prediction"))):
        with torch.inference_mode(False), pytest.raises(errors.IPAdapterError) as refused:
            backend.ComfyBackend(model, graph["clip"], graph["vae"])
        message = str(refused.value)
        assert all(w in message for w in words) and message.endswith(".") and ". " not in message, message
