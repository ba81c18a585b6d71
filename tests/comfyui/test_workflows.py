"""The shipped workflows as a first user meets them: the template browser shows each by its file name, so the
name says what the workflow does; a Note in each graph names the files to get and where they go; the
loader has no size of its own; the training templates save under different names and show where; the SDXL
one trains at the model's own size with buckets and samples at 1024 px.

The same checks against a running server (GET /workflow_templates, the files it serves, the API
conversion skipping Notes) are in test_server_inputs.py.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from browser_workflow_api import SHIPPED, WORKFLOWS_DIR, load_workflow

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = ["v1-5-pruned-emaonly.safetensors", "models/checkpoints"]
CLIP_VISION = ["models/clip_vision", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "ip-adapter_sd15",
               "ip-adapter-plus_sd15", "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors", "vit-G"]
IMAGES = ["input/<folder>", ".txt"]
ADAPTER = ["models/ipadapter", "ip-adapter_sd15.safetensors", "ip-adapter-plus_sd15.safetensors"]
SCORER = ["models/clip_scorers", "clip-vit-large-patch14", "config.json", "model.safetensors"]
CHECKPOINT_SDXL = ["sd_xl_base_1.0.safetensors", "models/checkpoints"]
CLIP_VISION_SDXL = ["models/clip_vision", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "ip-adapter_sdxl_vit-h",
                    "ip-adapter-plus_sdxl_vit-h", "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors", "ip-adapter_sdxl"]
REFERENCE = ["Reference image"]
NEEDS = {
    "train_ip_adapter": CHECKPOINT + CLIP_VISION + IMAGES,
    "apply_ip_adapter": CHECKPOINT + CLIP_VISION + ADAPTER,
    "train_then_apply": CHECKPOINT + CLIP_VISION + IMAGES,
    "score": CHECKPOINT + CLIP_VISION + ADAPTER + SCORER,
    "train_ip_adapter_sdxl": CHECKPOINT_SDXL + CLIP_VISION_SDXL + IMAGES + REFERENCE,
}
TRAINING = ("train_ip_adapter", "train_then_apply", "train_ip_adapter_sdxl")


def nodes_of(workflow: dict, type_: str) -> list[dict]:
    return [n for n in workflow["nodes"] if n["type"] == type_]


def test_the_workflows_folder_holds_exactly_the_shipped_templates_with_thumbnails():
    assert {p.stem for p in WORKFLOWS_DIR.glob("*.json")} == set(SHIPPED.values())
    for stem in SHIPPED.values():
        assert (WORKFLOWS_DIR / f"{stem}.jpg").is_file(), stem


@pytest.mark.parametrize("key", sorted(SHIPPED))
def test_the_name_the_template_browser_shows_says_what_the_workflow_does(key):
    stem = SHIPPED[key]
    # ComfyUI 0.3.75's frontend shows a custom template's file name as its title and, with - and _ as spaces,
    # as its description: a sentence, not an identifier; short enough for the card's one-line title.
    shown = re.sub(r"[-_]", " ", stem)
    assert stem != key and "_" not in stem and len(shown.split()) >= 4 and len(stem) <= 34, stem
    assert not set(stem) & set('<>:"/\\|?*'), f"{stem!r} is not a valid file name on Windows"


@pytest.mark.parametrize("key", sorted(SHIPPED))
def test_every_workflow_has_a_note_naming_the_files_it_needs(key):
    notes = nodes_of(load_workflow(key), "Note")
    assert len(notes) == 1, key
    text = notes[0]["widgets_values"][0]
    missing = [name for name in NEEDS[key] if name not in text]
    assert not missing, f"{SHIPPED[key]}: the Note does not name {missing}"


def test_the_loader_has_no_resolution_and_the_training_templates_save_apart_and_show_the_path():
    names = []
    for key in TRAINING:
        workflow = load_workflow(key)
        (loader,) = nodes_of(workflow, "IPAdapterTrain_LoadTrainingImages")
        assert loader["widgets_values"] == ["", "", ""]  # folder, path, prompt: Train's resolution is the only size
        assert [i["name"] for i in loader["inputs"] if i.get("widget")] == ["folder", "path", "prompt"]
        (save,) = nodes_of(workflow, "IPAdapterTrain_Save")
        names.append(save["widgets_values"][0])
        shown_by = {link[3] for link in workflow["links"] if link[1] == save["id"]}
        assert {n["type"] for n in workflow["nodes"] if n["id"] in shown_by} == {"PreviewAny"}, key
    assert len(set(names)) == len(names)  # running one template never trips over another's file
    assert "my_adapter.safetensors" in nodes_of(load_workflow("apply_ip_adapter"), "Note")[0]["widgets_values"][0]


def test_the_sdxl_template_trains_at_the_models_own_size_with_buckets_and_samples_at_1024():
    workflow = load_workflow("train_ip_adapter_sdxl")
    (train,) = nodes_of(workflow, "IPAdapterTrain_Train")
    widgets = [i["name"] for i in train["inputs"] if i.get("widget")]
    values = dict(zip(widgets, [v for v in train["widgets_values"] if v != "fixed"]))  # less the seed's control
    assert values["resolution"] == 0 and values["buckets"] is True  # 0 = the MODEL's default: 1024 px for SDXL
    (latent,) = nodes_of(workflow, "EmptyLatentImage")
    assert latent["widgets_values"][:2] == [1024, 1024]
    (checkpoint,) = nodes_of(workflow, "CheckpointLoaderSimple")
    assert checkpoint["widgets_values"] == [CHECKPOINT_SDXL[0]]
    # it trains, saves and applies the adapter it trained, and shows the result
    types = {n["type"] for n in workflow["nodes"]}
    assert {"IPAdapterTrain_Save", "IPAdapterTrain_Apply", "KSampler", "PreviewImage"} <= types
    (apply,) = nodes_of(workflow, "IPAdapterTrain_Apply")
    fed_by = {link[1] for link in workflow["links"] if link[3] == apply["id"]}
    assert train["id"] in fed_by


def test_the_readme_lists_the_same_files_and_the_opt_in():
    readme = (ROOT / "README.md").read_text()
    section = " ".join(readme[readme.index("## In ComfyUI"):readme.index("## Python API")].split())
    wanted = set(CHECKPOINT + CLIP_VISION + IMAGES + ADAPTER + SCORER + CHECKPOINT_SDXL + CLIP_VISION_SDXL)
    wanted -= {".txt", "config.json", "model.safetensors"}
    assert not [name for name in wanted if name not in section]
    assert "IPADAPTER_TRAIN_ALLOW_ANY_FOLDER=1" in section
    assert all(stem in section for stem in SHIPPED.values())
