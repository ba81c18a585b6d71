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

pytestmark = pytest.mark.unit

comfy_or_skip()

import folder_paths  # noqa: E402

SAMPLES = ROOT / "ipadapter_train" / "assets" / "samples"


def layers():
    layout = pack("ipadapter_train.layout")
    return layout.adapter_layers(pack("ipadapter_train.models.sd15").tiny_unet_config())


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
    fileformat = pack("ipadapter_train.adapter.fileformat")
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


def test_save_is_refused_while_another_writer_holds_the_file_and_removes_what_a_killed_save_left(folders):
    """The core's guard (issue 17, item 12): a second server or CLI run saving the same file is refused, not raced;
    and a save killed mid-write (its temp folder and safetensors' own temporary inside it) is cleaned up."""
    lock = pack("ipadapter_train.storage.output_lock")
    path = folders / "ipadapter" / "same.safetensors"
    with lock.output_lock(path, "another run's adapter"):  # another open file: flock refuses it like a process
        with pytest.raises(errors().IPAdapterError, match="Another run is writing .*same.safetensors"):
            save(random_adapter("base", 768, layers()), "same", overwrite=True)
    assert not path.exists()
    killed = folders / "ipadapter" / ".same.safetensors.0123456789ab.tmp"
    killed.mkdir()
    (killed / ".tmpAb12Cd").write_bytes(b"half of the weights")
    old = os.path.getmtime(killed) - 60
    os.utime(killed, (old, old))
    save(random_adapter("base", 768, layers()), "same")
    assert tree(folders / "ipadapter") == {"same.safetensors"}


@pytest.mark.parametrize("name", ["../../x", "../x", "a/b", "a\\b", "..", "", "   ", ".hidden", "con", "x?",
                                  "/abs/path", "name.", "x" * 200])
def test_bad_names_are_refused_and_nothing_is_written(folders, name):
    before = tree(folders.parent)
    with pytest.raises(errors().IPAdapterError, match="Cannot save an adapter as"):
        save(random_adapter("base", 768, layers()), name)
    assert tree(folders.parent) == before


@pytest.mark.parametrize("name,reason", [
    ("a/b", "it contains '/' (U+002F), a folder separator"),
    ("a\\b", "it contains '\\' (U+005C), a folder separator"),
    ("v1:final", "it contains ':' (U+003A), which Windows does not allow in file names"),
    ('say "hi"', "it contains '\"' (U+0022), which Windows does not allow"),
    ("a|b", "it contains '|' (U+007C), which Windows"),
    ("a*", "it contains '*' (U+002A), which Windows"),
    ("a<b>", "it contains '<' (U+003C), which Windows"),
    ("tab\there", "it contains U+0009"),
    ("evil\u202egnp", "it contains U+202E (RIGHT-TO-LEFT OVERRIDE), an invisible or control character"),
    ("zero\u200bwidth", "it contains U+200B (ZERO WIDTH SPACE)"),
    ("a..b", "it contains '..'"),
    (".hidden", "it starts with '.', which hides the file"),
    ("NUL.backup", "'NUL' is a device name on Windows"),
    ("com1", "'COM1' is a device name on Windows"),
    ("lpt\u00b9", "'LPT\u00b9' is a device name on Windows"),
    ("con .x", "'CON' is a device name on Windows"),
    ("\u732b" * 81, "it takes 243 bytes, more than the 240 a file name may have"),
])
def test_a_refused_name_says_which_character_or_rule_is_at_fault(folders, name, reason):
    message = pack("nodes.node_save").SaveIPAdapter.validate_inputs(name, False)
    shown = pack("nodes.folders").shown(name)  # a long name is cut short in the message
    assert isinstance(message, str) and f"Cannot save an adapter as {shown}: {reason}" in message
    assert tree(folders / "ipadapter") == set()


@pytest.mark.parametrize("name", ["cats \u2215 dogs", "1\u20442 scale", "a\uff0fb", "_draft", "-x", "(v2) final",
                                  "caf\u00e9 \u732b", "v1+v2, 50%", "console", "com10", "auxiliary.v1"])
def test_names_that_are_plain_files_everywhere_are_saved_as_given(folders, name):
    # lookalike slashes (division slash, fraction slash, fullwidth solidus) are ordinary characters on
    # every OS; so are names that merely start like a Windows device name
    save(random_adapter("base", 768, layers()), name)
    assert tree(folders / "ipadapter") == {f"{name}.safetensors"}
    assert load(f"{name}.safetensors").spec.variant == "base"  # and Load IP-Adapter reads it back by that name


def test_save_checks_name_and_overwrite_when_queued(folders):
    node = pack("nodes.node_save").SaveIPAdapter
    assert node.validate_inputs("fresh", False) is True
    save(random_adapter("base", 768, layers()), "taken")
    refused = node.validate_inputs("taken.safetensors", False)
    assert isinstance(refused, str) and "taken.safetensors already exists" in refused and "overwrite" in refused
    assert node.validate_inputs("taken", True) is True
    assert "Cannot save an adapter as '../x'" in node.validate_inputs("../x", True)
    assert node.validate_inputs(None, False) is True  # a name fed by another node is checked when Save runs
    assert tree(folders / "ipadapter") == {"taken.safetensors"}  # validating writes nothing


def test_names_keep_dots_and_spaces_inside_the_folder(folders):
    save(random_adapter("base", 768, layers()), "v1.2 final")
    assert tree(folders / "ipadapter") == {"v1.2 final.safetensors"}


# ---------------------------------------------------------------- load

def test_load_lists_adapter_files_and_reads_this_packs_and_the_public_layouts(folders):
    fileformat = pack("ipadapter_train.adapter.fileformat")
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
    pack("ipadapter_train.models.clip_vision").save_clip_vision(
        pack("ipadapter_train.models.clip_vision").build_clip_vision("tiny"), folder / "encoder.safetensors")
    with pytest.raises(errors().IPAdapterError, match="not an IP-Adapter.*CLIP vision"):
        load("encoder.safetensors")
    node = pack("nodes.node_load").LoadIPAdapter
    save(random_adapter("base", 768, layers(), seed=1), "changing")
    first = node.fingerprint_inputs("changing.safetensors")
    save(random_adapter("base", 768, layers(), seed=2), "changing", overwrite=True)
    assert node.fingerprint_inputs("changing.safetensors") != first


# ---------------------------------------------------------------- load training images

OPT_IN = "IPADAPTER_TRAIN_ALLOW_ANY_FOLDER"


@pytest.fixture
def no_opt_in(monkeypatch):
    monkeypatch.delenv(OPT_IN, raising=False)


def _images(folder: Path, names, size=(96, 80)):
    folder.mkdir(parents=True)
    for i, name in enumerate(names):
        Image.new("RGB", size, (40 * i, 100, 200)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"caption of\n{name}")


def loader():
    return pack("nodes.node_load_images").LoadTrainingImages


def load_images(folder="", path="", prompt=""):
    """images, captions, report (the fourth output, the file names, is tested in test_nodes_previews.py)."""
    with torch.inference_mode():
        return loader().execute(folder, path, prompt).args[:3]


def test_load_training_images_from_an_input_subfolder_at_their_own_size(folders, no_opt_in):
    _images(folders / "input" / "cats", ["b", "a"])
    (folders / "input" / ".hidden").mkdir()
    assert loader().define_schema().inputs[0].options == ["cats"]  # no empty entry (test_server_fault_matrix.py)
    assert [i.id for i in loader().define_schema().inputs] == ["folder", "path", "prompt"]  # no second size knob
    images, captions, report = load_images("cats")
    assert images.shape == (2, 80, 96, 3) and images.dtype == torch.float32  # passed through, not resized
    assert captions == "caption of a\ncaption of b"  # sorted by name, one line each
    assert "2 image(s) used" in report and "All images are 96x80: passed on unchanged" in report
    _, captions, _ = load_images("cats", prompt="one prompt")
    assert captions == "one prompt\none prompt"


def test_load_training_images_of_different_sizes_keep_each_central_square(folders, no_opt_in):
    folder = folders / "input" / "mixed"
    folder.mkdir()
    # a is already at the smallest short side (100); b's short side is 120, so it is scaled by 100/120
    a = Image.new("RGB", (200, 100), (255, 0, 0))
    b = Image.new("RGB", (300, 120), (0, 0, 255))
    b.paste((0, 255, 0), (90, 0, 210, 120))  # b's central 120x120 square is green
    a.save(folder / "a.png")
    b.save(folder / "b.png")
    images, _, report = load_images("mixed")
    assert images.shape == (2, 100, 200, 3)  # width: the smallest scaled width (a: 200, b: 250)
    assert "b.png: 300x120 scaled to 250x100, centre-cropped to 200x100" in report
    assert "a.png:" not in report  # unchanged images are not listed
    assert "short side is 100 px" in report and "1 of 2 changed" in report
    centre = images[1, :, 50:150]  # b's central square, 100x100 after scaling: still all green
    assert centre[..., 1].min() > 0.9 and centre[..., 0].max() < 0.1


def test_load_training_images_nested_folder_by_relative_path(folders, no_opt_in):
    _images(folders / "input" / "cats" / "set1", ["x"])
    images, _, _ = load_images("", "cats/set1")
    assert images.shape == (1, 80, 96, 3)
    assert loader().validate_inputs("", "cats/set1") is True


@pytest.mark.parametrize("folder,path", [("../..", ""), ("..", ""), ("", "../outside"), ("", "../.."),
                                         ("", "cats/../../outside"), ("", "cats/../.."), ("", "."), ("", "cats/..")])
def test_load_training_images_refuses_traversal(folders, no_opt_in, folder, path):
    _images(folders / "input" / "cats", ["a"])
    _images(folders / "outside", ["secret"])
    with pytest.raises(errors().IPAdapterError, match="input folder"):
        load_images(folder, path)
    message = loader().validate_inputs(folder, path)  # refused when queued, before anything runs
    assert isinstance(message, str) and "input folder" in message


def test_a_symlink_inside_input_that_leads_out_is_refused_and_not_listed(folders, no_opt_in, monkeypatch):
    _images(folders / "outside", ["secret"])
    _images(folders / "input" / "cats", ["a"])
    try:
        (folders / "input" / "link").symlink_to(folders / "outside", target_is_directory=True)
    except OSError:
        pytest.skip("this file system does not allow symlinks")
    assert loader().define_schema().inputs[0].options == ["cats"]
    for folder, path in (("link", ""), ("", "link"), ("", "cats/../link")):
        with pytest.raises(errors().IPAdapterError, match=f"not inside ComfyUI's input folder.*{OPT_IN}=1"):
            load_images(folder, path)
    monkeypatch.setenv(OPT_IN, "1")  # the owner opted in: a linked folder is theirs to use
    assert loader().define_schema().inputs[0].options == ["cats", "link"]
    assert load_images("link")[0].shape == (1, 80, 96, 3)


def test_files_inside_an_input_folder_that_link_out_are_skipped_and_named_in_the_report(folders, no_opt_in):
    _images(folders / "outside", ["secret"])
    _images(folders / "input" / "cats", ["a"])
    try:
        (folders / "input" / "cats" / "secret.png").symlink_to(folders / "outside" / "secret.png")
        (folders / "input" / "cats" / "gone.png").symlink_to(folders / "input" / "cats" / "deleted.png")
    except OSError:
        pytest.skip("this file system does not allow symlinks")
    images, captions, report = load_images("cats")
    assert images.shape[0] == 1 and captions == "caption of a"
    assert "  - secret.png: leads out of the data set's folder" in report
    assert "  - gone.png: a broken link: the file it points to does not exist" in report


@pytest.mark.parametrize("path", [str(SAMPLES), "/etc", "~", "~/x", "C:\\Users\\x", "C:x", "\\\\server\\share\\x"])
def test_absolute_paths_are_refused_by_default_naming_the_opt_in(folders, no_opt_in, path):
    with pytest.raises(errors().IPAdapterError) as caught:
        load_images("", path)
    message = str(caught.value)
    assert f"{OPT_IN}=1" in message and "input folder" in message
    assert message.count(". ") == 0 and message.endswith(".")  # one sentence
    assert loader().validate_inputs("", path) == message


def test_absolute_path_with_the_opt_in_wins_over_the_folder(folders, monkeypatch):
    monkeypatch.setenv(OPT_IN, "1")
    images, captions, _ = load_images("cats", str(SAMPLES))
    assert images.shape[0] == 5 and len(captions.split("\n")) == 5
    assert images.shape[1:] == (300, 300, 3)  # the samples differ (landscape and square): the smallest square
    assert loader().validate_inputs("", str(SAMPLES)) is True
    monkeypatch.setenv(OPT_IN, "0")
    assert OPT_IN in loader().validate_inputs("", str(SAMPLES))


def test_fingerprint_never_looks_outside_the_input_folder(folders, no_opt_in, monkeypatch):
    outside = folders / "outside"
    _images(outside, ["a"])
    first = loader().fingerprint_inputs("", str(outside), "")
    (outside / "b.png").write_bytes(b"new file")
    assert loader().fingerprint_inputs("", str(outside), "") == first  # refused folders are not listed
    monkeypatch.setenv(OPT_IN, "1")
    allowed = loader().fingerprint_inputs("", str(outside), "")
    (outside / "c.png").write_bytes(b"another")
    assert loader().fingerprint_inputs("", str(outside), "") != allowed


def test_a_dangling_link_does_not_stop_the_fingerprint_from_seeing_new_images(folders, no_opt_in):
    _images(folders / "input" / "cats", ["b"])
    try:
        (folders / "input" / "cats" / "a_gone.png").symlink_to(folders / "input" / "cats" / "deleted.png")
    except OSError:
        pytest.skip("this file system does not allow symlinks")
    first = loader().fingerprint_inputs("cats", "", "")
    Image.new("RGB", (96, 80)).save(folders / "input" / "cats" / "c.png")
    assert loader().fingerprint_inputs("cats", "", "") != first  # the new image makes the node run again


@pytest.mark.parametrize("folder,at_run,at_queue", [("", "No images chosen", "No images chosen"),
                                                    ("missing", "No folder 'missing'", "No folder 'missing'"),
                                                    ("empty", "holds no images", "holds no images")])
def test_load_training_images_errors(folders, no_opt_in, folder, at_run, at_queue):
    (folders / "input" / "empty").mkdir()
    with pytest.raises(errors().IPAdapterError, match=at_run):
        load_images(folder)
    verdict = loader().validate_inputs(folder, "")
    assert at_queue in verdict  # an empty folder is refused when queued, before any model of the graph loads


# ---------------------------------------------------------------- score

def test_score_with_a_full_clip_from_models_clip_scorers(folders):
    clip_model = pack("ipadapter_train.models.clip_model")
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


# ---------------------------------------------------------------- damaged adapter files (issue 12)

def _write_damaged(folder: Path, name: str, damage) -> None:
    from safetensors.torch import save_file

    state = {k: v.clone().contiguous() for k, v in random_adapter("base", 768, layers()).state_dict().items()}
    save_file(damage(state), str(folder / name))


def _drop_v3(state):
    state.pop("ip_adapter.3.to_v_ip.weight")
    return state


def _short_k3(state):
    state["ip_adapter.3.to_k_ip.weight"] = torch.zeros(300, 768)
    return state


def _nan_k5(state):
    state["ip_adapter.5.to_k_ip.weight"][0, 0] = float("nan")
    return state


@pytest.mark.parametrize("name,damage,sentence", [
    ("missing.safetensors", _drop_v3, "ip_adapter.3.to_v_ip.weight is missing; the file has 31 of the 32 layer "
                                      "weights of an SD1.5 base adapter"),
    ("shape.safetensors", _short_k3, "ip_adapter.3.to_k_ip.weight is [300, 768] but ip_adapter.3.to_v_ip.weight "
                                     "is [320, 768]"),
    ("nan.safetensors", _nan_k5, "non-finite weights (NaN or infinity) in ip_adapter.5.to_k_ip.weight"),
])
def test_load_refuses_a_damaged_adapter_in_one_sentence(folders, name, damage, sentence):
    _write_damaged(folders / "ipadapter", name, damage)
    with pytest.raises(errors().IPAdapterError) as err:
        load(name)
    assert sentence in str(err.value) and name in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name,content", [
    ("garbage.safetensors", b"\x89PNG not weights at all" * 40),
    ("short-header.safetensors", (10**6).to_bytes(8, "little") + b'{"image_proj.proj.weight":'),
    ("empty.safetensors", b""),
])
def test_load_refuses_a_malformed_safetensors_in_one_sentence(folders, name, content):
    (folders / "ipadapter" / name).write_bytes(content)
    with pytest.raises(errors().IPAdapterError, match="is not a readable .safetensors file") as err:
        load(name)
    assert name in str(err.value) and "download or save it again" in str(err.value)


def test_apply_refuses_an_adapter_module_with_nan_weights_before_sampling():
    from test_nodes_support import comfy_models

    graph = comfy_models()
    adapter = random_adapter("base", 768, pack("nodes.comfy_layers").comfy_adapter_layers(graph["model"]))
    with torch.no_grad():
        adapter.layer(9).to_v_ip.weight[2, 2] = float("inf")
    node = pack("nodes.node_apply").ApplyIPAdapter
    with pytest.raises(errors().IPAdapterError, match=r"non-finite weights \(NaN or infinity\) in "
                                                      r"ip_adapter\.9\.to_v_ip\.weight"):
        with torch.inference_mode():
            node.execute(graph["model"], adapter, graph["clip_vision"], torch.rand(1, 64, 64, 3), 1.0, 0.0, 1.0)
