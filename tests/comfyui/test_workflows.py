"""The shipped workflows as a first user meets them: the template browser shows each by its file name, so the
name says what the workflow does and its number puts training first; a Note in each graph names the files to
get and where they go; every loader declares its public file with a download link the way ComfyUI's frontend
reads them (its Missing Models dialog); the loader has no size of its own; the training templates save under
different names and show where, and name the CPU quick run, whose widgets are all set for minutes on a CPU;
the SDXL one trains at the model's own size with buckets and samples at 1024 px.

The same checks against a running server (GET /workflow_templates, the files it serves, the API
conversion skipping Notes) are in test_server_inputs.py.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from browser_workflow_api import SHIPPED, WORKFLOWS_DIR, load_workflow

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = ["v1-5-pruned-emaonly-fp16.safetensors", "models/checkpoints"]
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
    "train_ip_adapter_cpu": CHECKPOINT + CLIP_VISION + IMAGES,
    "apply_ip_adapter": CHECKPOINT + CLIP_VISION + ADAPTER,
    "train_then_apply": CHECKPOINT + CLIP_VISION + IMAGES,
    "score": CHECKPOINT + CLIP_VISION + ADAPTER + SCORER,
    "train_ip_adapter_sdxl": CHECKPOINT_SDXL + CLIP_VISION_SDXL + IMAGES + REFERENCE,
    "search_ip_adapter": CHECKPOINT + CLIP_VISION + IMAGES + ["models/clip_scorers", "search.html"],
}
TRAINING = ("train_ip_adapter", "train_ip_adapter_cpu", "train_then_apply", "train_ip_adapter_sdxl",
            "search_ip_adapter")
# The order a user should meet them in: training first, then the CPU quick run, then using and scoring.
ORDER = ["train_ip_adapter", "train_ip_adapter_cpu", "train_then_apply", "apply_ip_adapter", "score",
         "train_ip_adapter_sdxl", "search_ip_adapter"]
# The public files the templates' loaders select -> the models folder ComfyUI keeps them in. ComfyUI's frontend
# (1.32.9) lists a file in its Missing Models dialog when the loader's properties.models declares it with a url
# (downloads only from these hosts, only these suffixes) and the folder's model list lacks it.
PUBLIC_FILES = {"v1-5-pruned-emaonly-fp16.safetensors": "checkpoints", "sd_xl_base_1.0.safetensors": "checkpoints",
                "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors": "clip_vision",
                "clip-vit-large-patch14.safetensors": "clip_scorers"}
DOWNLOAD_HOSTS = ("https://huggingface.co/", "https://civitai.com/")
DOWNLOAD_SUFFIXES = (".safetensors", ".sft")
LOADERS = {"CheckpointLoaderSimple", "CLIPVisionLoader", "IPAdapterTrain_Load", "IPAdapterTrain_Score"}


def nodes_of(workflow: dict, type_: str) -> list[dict]:
    return [n for n in workflow["nodes"] if n["type"] == type_]


def widget(node: dict, name: str):
    """A widget's value by input name (the order of `inputs` with a widget, less the seed's control value)."""
    names = [i["name"] for i in node["inputs"] if i.get("widget")]
    values = [v for v in node["widgets_values"] if v not in ("fixed", "increment", "decrement", "randomize")]
    return dict(zip(names, values))[name]


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


def test_the_template_browser_lists_training_first_in_the_intended_order():
    # the card order follows the names where anything does (the "Alphabetical" sort, directories listed by name)
    assert sorted(SHIPPED) == sorted(ORDER)
    assert sorted(SHIPPED.values()) == [SHIPPED[key] for key in ORDER]
    assert SHIPPED[ORDER[0]].split(". ", 1)[1].startswith("Train")


@pytest.mark.parametrize("path", sorted(WORKFLOWS_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_every_loader_declares_its_public_file_with_a_download_link(path):
    workflow = json.loads(path.read_text())
    note = nodes_of(workflow, "Note")[0]["widgets_values"][0]
    assert "Missing Models" in note, f"{path.stem}: the Note does not say that missing files are listed"
    loaders = [n for n in workflow["nodes"] if n["type"] in LOADERS]
    assert loaders
    for node in loaders:
        chosen = [v for v in node["widgets_values"] if isinstance(v, str) and v.endswith((".safetensors", ".bin"))]
        assert len(chosen) == 1, (path.stem, node["type"], node["widgets_values"])
        declared = node.get("properties", {}).get("models")
        if chosen[0] not in PUBLIC_FILES:  # the user's own adapter: no link to give, so nothing is declared
            assert node["type"] == "IPAdapterTrain_Load" and not declared, (path.stem, node["type"], declared)
            assert "no download link" in note, f"{path.stem}: the Note does not say the adapter has no link"
            continue
        assert declared, f"{path.stem}: {node['type']} does not declare {chosen[0]}"
        (entry,) = declared
        assert entry["name"] == chosen[0] and entry["directory"] == PUBLIC_FILES[chosen[0]], entry
        assert entry["url"].startswith(DOWNLOAD_HOSTS) and "/resolve/main/" in entry["url"], entry
        assert entry["name"].endswith(DOWNLOAD_SUFFIXES) and entry["url"].endswith(DOWNLOAD_SUFFIXES), entry
        if entry["url"].rsplit("/", 1)[1] != entry["name"]:  # a browser saves the link's name: say to rename it
            assert f"rename" in note and entry["name"] in note, f"{path.stem}: no rename hint for {entry['name']}"


def test_the_cpu_template_is_set_for_minutes_and_the_other_training_templates_name_it():
    cpu = load_workflow("train_ip_adapter_cpu")
    (train,) = nodes_of(cpu, "IPAdapterTrain_Train")
    assert widget(train, "resolution") <= 256 and 0 < widget(train, "resolution")
    assert widget(train, "steps") <= 30 and widget(train, "batch_size") == 1
    assert widget(train, "preview_every") == -1 and widget(train, "validation") in ("off", "quick")
    (latent,) = nodes_of(cpu, "EmptyLatentImage")
    assert latent["widgets_values"][:2] == [256, 256]
    (sampler,) = nodes_of(cpu, "KSampler")
    assert widget(sampler, "steps") <= 12
    # no picture to upload: the reference is the first training image
    assert not nodes_of(cpu, "LoadImage")
    (ref,) = nodes_of(cpu, "ImageFromBatch")
    (apply,) = nodes_of(cpu, "IPAdapterTrain_Apply")
    (loader,) = nodes_of(cpu, "IPAdapterTrain_LoadTrainingImages")
    links = {link[0]: link for link in cpu["links"]}
    assert any(links[i["link"]][1] == ref["id"] for i in apply["inputs"] if i["name"] == "image")
    assert any(links[i["link"]][1] == loader["id"] for i in ref["inputs"] if i["name"] == "image")
    cpu_note = nodes_of(cpu, "Note")[0]["widgets_values"][0]
    assert "minutes" in cpu_note and "2 CPU cores" in cpu_note
    for key in TRAINING:
        if key != "train_ip_adapter_cpu":
            text = nodes_of(load_workflow(key), "Note")[0]["widgets_values"][0]
            assert f"On a CPU? Open the template \"{SHIPPED['train_ip_adapter_cpu']}\"" in text, key


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
    assert "Missing Models" in section and "On a CPU" in section


def test_the_search_template_feeds_the_training_inputs_to_the_search_and_shows_its_table():
    workflow = load_workflow("search_ip_adapter")
    (search,) = nodes_of(workflow, "IPAdapterTrain_Search")
    (loader,) = nodes_of(workflow, "IPAdapterTrain_LoadTrainingImages")
    links = {link[0]: link for link in workflow["links"]}
    fed = {i["name"]: links[i["link"]][1] for i in search["inputs"] if i.get("link") is not None}
    assert fed["images"] == fed["captions"] == fed["image_names"] == loader["id"]
    assert widget(search, "scorer") == "none" and widget(search, "trials") >= 2  # runs without a scorer to download
    assert widget(search, "steps_low") <= widget(search, "steps_high")
    shown = {n["id"]: n["type"] for n in workflow["nodes"]}
    outputs = {link[2]: shown[link[3]] for link in workflow["links"] if link[1] == search["id"]}
    assert outputs == {0: "IPAdapterTrain_Save", 1: "PreviewImage", 2: "PreviewAny"}
