"""Hostile and odd data sets (issue 12): files that lead out of the data set's folder, links that loop or
dangle, a data.json given in place of its folder, and a panorama that must not cost more memory to encode
than a square. Real files and links in tmp_path; the encoder tests use the micro models."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from conftest import ROOT, SAMPLES, micro_clip, micro_sd15, run_cli, train_args
from ipadapter_train.storage.data import load_image_folder
from ipadapter_train.errors import IPAdapterError

pytestmark = pytest.mark.unit

OUT_OF_FOLDER = "leads out of the data set's folder"


def _png(path: Path, size=(96, 80), color=(10, 120, 200)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _link(link: Path, target: Path | str) -> None:
    try:
        link.symlink_to(target)
    except OSError:
        pytest.skip("this file system (or Windows without developer mode) does not allow symlinks")


@pytest.fixture
def dataset(tmp_path):
    """data/ (the data set: good.png with a caption) beside outside/ (secret.png, secret.txt).

    The secret is too small to train on, so had it been opened its reason would be "too small", not
    the refusal: the reason tells whether the loader looked at it."""
    _png(tmp_path / "data" / "good.png")
    (tmp_path / "data" / "good.txt").write_text("a good picture")
    _png(tmp_path / "outside" / "secret.png", size=(32, 32), color=(255, 0, 0))
    _png(tmp_path / "outside" / "big_secret.png", size=(96, 96), color=(255, 0, 0))
    (tmp_path / "outside" / "secret.txt").write_text("the secret caption")
    return tmp_path / "data"


def _entries(folder: Path, *names: str) -> None:
    (folder / "data.json").write_text(json.dumps([{"image_file": n, "text": f"caption {i}"}
                                                  for i, n in enumerate(names)]))


@pytest.mark.parametrize("entry, reason", [
    ("../outside/secret.png", OUT_OF_FOLDER),
    ("../outside/big_secret.png", OUT_OF_FOLDER),
    ("sub/../../outside/secret.png", OUT_OF_FOLDER),
    ("ABSOLUTE", "an absolute path"),
    ("~/secret.png", "an absolute path"),
    ("C:\\Users\\secret.png", "an absolute path"),
])
def test_a_data_json_entry_outside_the_folder_is_skipped_by_name_and_never_read(dataset, entry, reason, caplog):
    if entry == "ABSOLUTE":
        entry = str(dataset.parent / "outside" / "big_secret.png")
    _entries(dataset, "good.png", entry)
    with caplog.at_level(logging.WARNING):
        samples, report = load_image_folder(dataset)
    assert [s.path.name for s in samples] == ["good.png"] and report.used == ["good.png"]
    assert report.skipped == [(entry, report.skipped[0][1])] and reason in report.skipped[0][1]
    assert "too small" not in report.summary()  # the secret was never opened
    assert entry in report.summary() and reason in report.summary()
    assert any(entry in r.getMessage() and reason in r.getMessage() for r in caplog.records)


def test_a_data_json_of_only_outside_entries_is_refused_naming_them(dataset):
    _entries(dataset, "../outside/big_secret.png", str(dataset.parent / "outside" / "big_secret.png"))
    with pytest.raises(IPAdapterError) as caught:
        load_image_folder(dataset)
    message = str(caught.value)
    assert "has no usable image" in message and "../outside/big_secret.png" in message
    assert OUT_OF_FOLDER in message and "an absolute path" in message


def test_links_out_of_the_folder_are_skipped_and_named_images_and_captions(dataset):
    _link(dataset / "linked.png", dataset.parent / "outside" / "big_secret.png")
    _png(dataset / "cat.png")
    _link(dataset / "cat.txt", dataset.parent / "outside" / "secret.txt")
    _png(dataset / "real.png", color=(0, 255, 0))
    _link(dataset / "alias.png", "real.png")  # a link that stays inside is an ordinary file
    samples, report = load_image_folder(dataset)
    assert [s.path.name for s in samples] == ["alias.png", "cat.png", "good.png", "real.png"]
    assert all(s.image.getpixel((0, 0)) != (255, 0, 0) for s in samples)
    assert "the secret caption" not in [s.caption for s in samples]
    skipped = dict(report.skipped)
    assert set(skipped) == {"linked.png", "cat.txt"}
    assert OUT_OF_FOLDER in skipped["linked.png"] and skipped["cat.txt"].startswith("a caption file that leads out")
    assert report.missing_captions == ["alias.png", "cat.png", "real.png"]
    # the same with one prompt for every image, and through a data.json naming the link
    samples, report = load_image_folder(dataset, prompt="a photo")
    assert "linked.png" in dict(report.skipped) and len(samples) == 4
    _entries(dataset, "good.png", "linked.png", "alias.png")
    samples, report = load_image_folder(dataset)
    assert [s.path.name for s in samples] == ["good.png", "alias.png"] and OUT_OF_FOLDER in dict(report.skipped)["linked.png"]


def test_a_data_json_that_is_itself_a_link_out_is_refused(dataset):
    outside_list = dataset.parent / "outside" / "data.json"
    outside_list.write_text(json.dumps([{"image_file": "good.png", "text": "x"}]))
    _link(dataset / "data.json", outside_list)
    with pytest.raises(IPAdapterError, match="is a link to a file outside .*copy the file into that folder"):
        load_image_folder(dataset)


def test_link_loops_and_dangling_links_are_listed_as_skipped_with_the_reason(dataset, caplog):
    _link(dataset / "self.png", "self.png")
    _link(dataset / "ping.jpg", "pong.jpg")
    _link(dataset / "pong.jpg", "ping.jpg")
    _link(dataset / "gone.png", "deleted.png")
    with caplog.at_level(logging.WARNING):
        samples, report = load_image_folder(dataset)
    assert [s.path.name for s in samples] == ["good.png"]
    skipped = dict(report.skipped)
    assert set(skipped) == {"self.png", "ping.jpg", "pong.jpg", "gone.png"}
    for name in ("self.png", "ping.jpg", "pong.jpg"):
        assert skipped[name].startswith("a link that loops back on itself"), skipped[name]
    assert skipped["gone.png"] == "a broken link: the file it points to does not exist"
    summary = report.summary()
    assert "4 skipped:" in summary and "  - gone.png: a broken link" in summary
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "Skipped" in r.getMessage()]
    assert len(warning) == 1 and all(name in warning[0] for name in skipped)
    # listed in a data.json they are named the same way
    _entries(dataset, "good.png", "self.png", "gone.png", "never.png")
    skipped = dict(load_image_folder(dataset)[1].skipped)
    assert skipped["self.png"].startswith("a link that loops") and skipped["gone.png"].startswith("a broken link")
    assert skipped["never.png"] == "listed in data.json but the file does not exist"


@pytest.mark.parametrize("list_name", ["data.json", "train.JSON"])
def test_a_data_json_path_is_its_folder_plus_that_list(dataset, list_name):
    _png(dataset / "b.png")
    _png(dataset / "unlisted.png")
    (dataset / list_name).write_text(json.dumps([{"image_file": "b.png", "text": "bee"},
                                                 {"image_file": "good.png", "text": "listed caption"}]))
    samples, report = load_image_folder(dataset / list_name)
    assert [(s.path.name, s.caption) for s in samples] == [("b.png", "bee"), ("good.png", "listed caption")]
    assert report.folder == str(dataset) and report.captions_from == "data.json"
    samples, report = load_image_folder(dataset / list_name, prompt="one prompt")  # the list still picks the images
    assert [(s.path.name, s.caption) for s in samples] == [("b.png", "one prompt"), ("good.png", "one prompt")]
    with pytest.raises(IPAdapterError, match=r"is a file, not a folder; .*\(or its data.json\)"):
        load_image_folder(dataset / "good.txt")


@pytest.fixture
def listed_samples(tmp_path):
    """The shipped samples copied with a data.json naming two of them."""
    folder = tmp_path / "kit"
    folder.mkdir()
    for name in ("chelsea.jpg", "coffee.jpg"):
        (folder / name).write_bytes((SAMPLES / name).read_bytes())
    (folder / "data.json").write_text(json.dumps([{"image_file": "chelsea.jpg", "text": "a cat"},
                                                  {"image_file": "coffee.jpg", "text": "a cup"}]))
    return folder / "data.json"


def test_train_accepts_images_as_a_data_json(models, listed_samples, tmp_path):
    out = tmp_path / "kit.safetensors"
    r = run_cli(*train_args(models, out, "--max-steps", "1", "--images", str(listed_samples)))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "kit-run" / "report.json").read_text())
    assert report["dataset"]["used"] == ["chelsea.jpg", "coffee.jpg"]
    assert report["dataset"]["captions_from"] == "data.json"


# --- a panorama costs no more to encode than a 2:1 photo -------------------------------------------


def _encoders():
    """The micro models' VAE/text back end and CLIP image encoder."""
    from ipadapter_train.models.clip_features import CLIPFeatureEncoder
    from ipadapter_train.diffusion.diffusers_backend import DiffusersBackend

    return DiffusersBackend(micro_sd15()), CLIPFeatureEncoder(micro_clip())


def _encode(images, resolution=64, flip=False, encoders=None):
    from ipadapter_train.config import TrainConfig
    from ipadapter_train.storage.data import Sample
    from ipadapter_train.training.encoding import encode_dataset

    samples = [Sample(path=Path(f"{i}.png"), image=im, caption="x") for i, im in enumerate(images)]
    config = TrainConfig(resolution=resolution, mixed_precision="no", flip=flip)
    return encode_dataset(samples, *(encoders or _encoders()), config)


def test_wide_and_tall_images_are_encoded_as_their_central_two_to_one_part():
    wide = Image.new("RGB", (1280, 64), (0, 0, 255))
    wide.paste((255, 0, 0), (576, 0, 704, 64))  # a red band in the middle survives the crop
    tall = Image.new("RGB", (64, 1280), (0, 255, 0))
    usual = Image.new("RGB", (128, 96))  # 4:3 keeps its whole width: random crops keep their full range
    data = _encode([wide, tall, usual], flip=True)
    assert [tuple(m.shape) for m in data.latent_mean] == [(4, 8, 16), (4, 16, 8), (4, 8, 11)]
    assert [tuple(m.shape) for m in data.flip_mean] == [(4, 8, 16), (4, 16, 8), (4, 8, 11)]


MEMORY_CHECK = textwrap.dedent("""
    import re, resource, sys
    import torch
    sys.path.insert(0, {tests!r})
    from PIL import Image
    from test_faults_data import _encode, _encoders
    torch.set_num_threads(1)
    models = _encoders()
    _encode([Image.new("RGB", (1024, 512))], resolution=512, flip=True, encoders=models)  # warm-up
    vm = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + {budget}, resource.getrlimit(resource.RLIMIT_AS)[1]))
    data = _encode([Image.new("RGB", (10240, 512), (200, 30, 30))], resolution=512, flip=True, encoders=models)
    print("latent", tuple(data.latent_mean[0].shape))
""")


@pytest.mark.cli
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="address-space limits are enforced this way on Linux")
def test_a_twenty_to_one_panorama_encodes_within_the_memory_of_a_two_to_one_photo(tmp_path):
    # 10240x512 at 512 px: encoded whole, one activation of the micro VAE (both views) takes 671 MB;
    # its central 1024x512 needs between 100 and 200 MB above the warmed-up process, measured here
    budget = 450 * 2**20
    script = MEMORY_CHECK.format(tests=str(ROOT / "tests"), budget=budget)
    env = {"PATH": "/usr/bin:/bin", "MALLOC_ARENA_MAX": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "latent (4, 64, 128)" in r.stdout
