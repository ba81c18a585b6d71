"""The file nodes in-process: Save (models/ipadapter, sanitised names, no silent overwrite, atomic, core
metadata), Load (this pack's files and the public .safetensors/.bin layouts), Load Training Images, Score,
and the folder registration that must not disturb other packs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from test_nodes_support import ROOT, comfy_or_skip, pack, random_adapter

comfy_or_skip()

import folder_paths  # noqa: E402

SAMPLES = ROOT / "ipadapter_train" / "assets" / "samples"


def layers():
    layout = pack("ipadapter_train.layout")
    return layout.adapter_layers(pack("ipadapter_train.sd15").tiny_unet_config())


def errors():
    return pack("ipadapter_train.errors")


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """Point ipadapter, clip_scorers, text_encoders and input/ at empty temporary folders."""
    table = dict(folder_paths.folder_names_and_paths)
    monkeypatch.setattr(folder_paths, "folder_names_and_paths", table)
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    monkeypatch.setattr(folder_paths, "input_directory", str(tmp_path / "input"))
    for name in ("ipadapter", "clip_scorers", "text_encoders", "input"):
        (tmp_path / name).mkdir()
    table["ipadapter"] = ([str(tmp_path / "ipadapter")], {".safetensors", ".bin"})
    table["clip_scorers"] = ([str(tmp_path / "clip_scorers")], {".safetensors"})
    table["text_encoders"] = ([str(tmp_path / "text_encoders")], folder_paths.supported_pt_extensions)
    return tmp_path


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def save(adapter, name, overwrite=False):
    node = pack("nodes.node_save").SaveIPAdapter
    with torch.inference_mode():
        return node.execute(adapter, name, overwrite)


def load(name):
    node = pack("nodes.node_load").LoadIPAdapter
    with torch.inference_mode():
        return node.execute(name).args[0]


# ---------------------------------------------------------------- folders

def test_folders_are_added_only_when_missing(monkeypatch):
    folders_mod = pack("nodes.folders")
    theirs = (["/somewhere/ipadapter"], {".bin"})
    table = {"ipadapter": theirs}
    monkeypatch.setattr(folder_paths, "folder_names_and_paths", table)
    folders_mod.ensure_model_folders()
    assert table["ipadapter"] is theirs  # another pack's (or the yaml's) entry is left as it was
    assert table["clip_scorers"][0] == [os.path.join(folder_paths.models_dir, "clip_scorers")]
    table.pop("ipadapter")
    folders_mod.ensure_model_folders()
    assert table["ipadapter"] == ([os.path.join(folder_paths.models_dir, "ipadapter")], {".safetensors", ".bin"})


# ---------------------------------------------------------------- save

def test_save_writes_models_ipadapter_name_with_the_core_metadata(folders):
    fileformat = pack("ipadapter_train.fileformat")
    adapter = random_adapter("base", 768, layers())
    out = save(adapter, "my_adapter")
    path = folders / "ipadapter" / "my_adapter.safetensors"
    assert out.args[0] == str(path) and out.ui is not None
    state, meta = fileformat.load_adapter(path)
    assert meta["variant"] == "base" and meta["num_layers"] == "16" and meta["note"] == "random test adapter"
    assert meta["ipadapter_train.version"]
    torch.testing.assert_close(state["ip_adapter.1.to_k_ip.weight"].float(),
                               adapter.state_dict()["ip_adapter.1.to_k_ip.weight"], atol=1e-2, rtol=1e-3)
    assert tree(folders / "ipadapter") == {"my_adapter.safetensors"}  # no temp files left


def test_save_never_overwrites_unless_asked_then_replaces_atomically(folders):
    first, second = random_adapter("base", 768, layers(), seed=1), random_adapter("base", 768, layers(), seed=2)
    save(first, "same")
    path = folders / "ipadapter" / "same.safetensors"
    before = path.read_bytes()
    with pytest.raises(errors().IPAdapterError, match="already exists.*overwrite"):
        save(second, "same.safetensors")
    assert path.read_bytes() == before
    save(second, "same", overwrite=True)
    assert path.read_bytes() != before
    assert tree(folders / "ipadapter") == {"same.safetensors"}


@pytest.mark.parametrize("name", ["../../x", "../x", "a/b", "a\\b", "..", "", "   ", ".hidden", "con", "x?",
                                  "/abs/path", "name.", "x" * 200])
def test_bad_names_are_refused_and_nothing_is_written(folders, name):
    before = tree(folders.parent)
    with pytest.raises(errors().IPAdapterError, match="Cannot save an adapter as"):
        save(random_adapter("base", 768, layers()), name)
    assert tree(folders.parent) == before


def test_names_keep_dots_and_spaces_inside_the_folder(folders):
    save(random_adapter("base", 768, layers()), "v1.2 final")
    assert tree(folders / "ipadapter") == {"v1.2 final.safetensors"}


# ---------------------------------------------------------------- load

def test_load_lists_adapter_files_and_reads_this_packs_and_the_public_layouts(folders):
    fileformat = pack("ipadapter_train.fileformat")
    base = random_adapter("base", 1024, layers(), seed=3)  # the public ip-adapter_sd15 reads ViT-H embeddings
    plus = random_adapter("plus", 1280, layers(), seed=4)
    ours = random_adapter("base", 768, layers(), seed=5)
    folder = folders / "ipadapter"
    fileformat.save_adapter(base.state_dict(), folder / "ip-adapter_sd15.safetensors")
    fileformat.save_adapter(plus.state_dict(), folder / "ip-adapter-plus_sd15.bin")  # tencent's torch.save layout
    save(ours, "mine")
    (folder / "notes.txt").write_text("not an adapter")
    (folder / ".mine.abc.tmp").write_bytes(b"")
    listed = pack("nodes.folders").adapter_files()
    assert listed == ["ip-adapter-plus_sd15.bin", "ip-adapter_sd15.safetensors", "mine.safetensors"]
    schema = pack("nodes.node_load").LoadIPAdapter.define_schema()
    assert schema.inputs[0].options == listed
    for name, original in (("ip-adapter_sd15.safetensors", base), ("ip-adapter-plus_sd15.bin", plus),
                           ("mine.safetensors", ours)):
        loaded = load(name)
        assert loaded.spec == original.spec and isinstance(loaded.metadata, dict)
        assert all(p.dtype == torch.float32 for p in loaded.parameters())
        for key, value in original.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[key], value, atol=1e-2, rtol=1e-2)
    assert load("mine.safetensors").metadata["note"] == "random test adapter"


def test_load_refuses_a_file_that_is_not_an_adapter_and_reloads_a_changed_file(folders):
    folder = folders / "ipadapter"
    pack("ipadapter_train.clip_vision").save_clip_vision(
        pack("ipadapter_train.clip_vision").build_clip_vision("tiny"), folder / "encoder.safetensors")
    with pytest.raises(errors().IPAdapterError, match="not an IP-Adapter.*CLIP vision"):
        load("encoder.safetensors")
    node = pack("nodes.node_load").LoadIPAdapter
    save(random_adapter("base", 768, layers(), seed=1), "changing")
    first = node.fingerprint_inputs("changing.safetensors")
    save(random_adapter("base", 768, layers(), seed=2), "changing", overwrite=True)
    assert node.fingerprint_inputs("changing.safetensors") != first


# ---------------------------------------------------------------- load training images

def _images(folder: Path, names, size=(96, 80)):
    folder.mkdir(parents=True)
    for i, name in enumerate(names):
        Image.new("RGB", size, (40 * i, 100, 200)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"caption of\n{name}")


def test_load_training_images_from_an_input_subfolder(folders):
    _images(folders / "input" / "cats", ["b", "a"])
    (folders / "input" / ".hidden").mkdir()
    node = pack("nodes.node_load_images").LoadTrainingImages
    assert node.define_schema().inputs[0].options == ["", "cats"]
    with torch.inference_mode():
        images, captions, report = node.execute("cats", "", "", 64).args
    assert images.shape == (2, 64, 64, 3) and images.dtype == torch.float32
    assert captions == "caption of a\ncaption of b"  # sorted by name, one line each
    assert "2 image(s) used" in report
    with torch.inference_mode():
        _, captions, _ = node.execute("cats", "", "one prompt", 64).args
    assert captions == "one prompt\none prompt"


def test_load_training_images_from_an_absolute_path_wins_over_the_folder(folders):
    node = pack("nodes.node_load_images").LoadTrainingImages
    with torch.inference_mode():
        images, captions, _ = node.execute("cats", str(SAMPLES), "", 72).args
    assert images.shape == (5, 72, 72, 3) and len(captions.split("\n")) == 5


@pytest.mark.parametrize("folder,path,message", [("", "", "No images chosen"),
                                                 ("../..", "", "not a sub-folder"),
                                                 ("", "relative/dir", "not absolute"),
                                                 ("empty", "", "contains no images")])
def test_load_training_images_errors(folders, folder, path, message):
    (folders / "input" / "empty").mkdir()
    node = pack("nodes.node_load_images").LoadTrainingImages
    with pytest.raises(errors().IPAdapterError, match=message):
        node.execute(folder, path, "", 64)


# ---------------------------------------------------------------- score

def test_score_with_a_full_clip_from_models_clip_scorers(folders):
    clip_model = pack("ipadapter_train.clip_model")
    clip_model.save_clip(clip_model.build_clip("tiny"), folders / "clip_scorers" / "tiny-clip.safetensors")
    (folders / "clip_scorers" / "clip-folder").mkdir()
    (folders / "clip_scorers" / "clip-folder" / "config.json").write_text("{}")
    node = pack("nodes.node_score").ScoreWithCLIP
    assert node.define_schema().inputs[1].options == ["clip-folder", "tiny-clip.safetensors"]
    images = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        text, table = node.execute(images, "tiny-clip.safetensors", "a photo of a cat", images[:1]).args
    assert "CLIP-I" in text and "CLIPScore" in text and "grade" in text and "random" in text
    assert table.ndim == 4 and table.shape[0] == 1 and table.shape[-1] == 3
    with pytest.raises(errors().IPAdapterError, match="Nothing to score against"):
        node.execute(images, "tiny-clip.safetensors", "", None)
    with pytest.raises(errors().IPAdapterError, match="No CLIP model named"):
        node.execute(images, "missing.safetensors", "x", None)
