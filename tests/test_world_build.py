"""`make-learned-world` end to end on a micro recipe (a few steps per stage): what it writes, how the loaders read
it, and that a seed gives the same files in another process. The shipped world's figures are in BENCHMARKS.md."""
from __future__ import annotations

import json
import subprocess
from dataclasses import replace
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from ipadapter_train.world.recipe import Recipe, Stage

pytestmark = pytest.mark.unit

MICRO = Recipe(clip=Stage(2, 8, 1e-3), vae=Stage(2, 4, 1e-3), unet=Stage(2, 4, 1e-3), reader=Stage(2, 8, 1e-3),
               unet_pictures=16, eval_pictures=10, eval_samples=2, sample_steps=2)


@pytest.fixture(scope="module")
def micro_world(tmp_path_factory):
    from ipadapter_train.world.build import make_learned_world

    seen = []
    files = make_learned_world(tmp_path_factory.mktemp("world"), MICRO, lambda *a: seen.append(a[:3]))
    return files, seen


def test_the_build_writes_every_file_with_its_recipe_figures_and_machine(micro_world):
    files, seen = micro_world
    assert sorted(files) == ["clip", "model", "reader", "report", "samples"]
    report = json.loads(files["report"].read_text())
    assert report["learned_world"] is True and "say nothing about quality on real SD models" in report["note"]
    assert report["recipe"]["unet"] == {"steps": 2, "batch": 4, "lr": 1e-3}
    figures = report["figures"]
    assert set(figures["text_only_samples"]["attribute_accuracy"]) == {"shape", "colour", "background"}
    assert figures["text_only_samples"]["chance"] == {"shape": 0.2, "colour": 0.2, "background": pytest.approx(1 / 3)}
    assert set(figures["reader"]) == {"shape", "colour", "background"} and figures["reader"]["colour"] == 1.0
    assert report["machine"]["torch"] == torch.__version__ and report["seconds"]["total"] > 0
    assert {name: entry["bytes"] for name, entry in report["files"].items()} == {
        name: files[name].stat().st_size for name in ("model", "clip", "reader", "samples")}
    # progress: every stage, each counted to its end
    assert [s for s in dict.fromkeys(stage for stage, _, _ in seen)] == ["clip", "vae", "unet", "reader"]
    assert all((stage, 2, 2) in seen for stage in ("clip", "vae", "unet", "reader"))


def test_the_loaders_read_the_world_as_a_learned_world_model(micro_world):
    from safetensors import safe_open

    from ipadapter_train.families import WORLD
    from ipadapter_train.models.clip_model import load_clip
    from ipadapter_train.models.clip_vision import load_clip_vision
    from ipadapter_train.models.single_file import read_single_file
    from ipadapter_train.world.build import WORLD_MARK

    files, _ = micro_world
    model = read_single_file(files["model"])
    assert model.family is WORLD and not model.random_weights
    assert model.vae.config.block_out_channels == [16, 32, 32, 64]
    vision = load_clip_vision(files["clip"])  # the CLIP file is the image encoder too: its text half is skipped
    assert (vision.config.image_size, vision.config.patch_size, vision.config.projection_dim) == (64, 8, 64)
    clip = load_clip(files["clip"])
    assert clip.config.text_config.hidden_size == 32
    # the diffusion model's text encoder is the CLIP's text tower, as SD1.5's is CLIP ViT-L's
    assert torch.equal(model.text_encoders[0].embeddings.token_embedding.weight,
                       clip.text_model.embeddings.token_embedding.weight)
    for name in ("model", "clip"):
        with safe_open(str(files[name]), "pt") as f:
            assert f.metadata()[WORLD_MARK] == "true", name


def test_the_vae_latents_are_scaled_to_unit_spread_without_changing_a_reconstruction():
    from ipadapter_train.world.data import pictures, to_unit
    from ipadapter_train.world.vae_stage import latent_spread, scale_latents, world_vae

    torch.manual_seed(0)
    vae = world_vae().eval()
    x = to_unit(pictures(np.random.default_rng(0), 8)[0])
    with torch.no_grad():
        before = vae.decode(vae.encode(x).latent_dist.mean).sample
        k = scale_latents(vae, np.random.default_rng(1), n=64)
        after = vae.decode(vae.encode(x).latent_dist.mean).sample
    assert k != pytest.approx(1.0)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    assert latent_spread(vae, to_unit(pictures(np.random.default_rng(2), 64)[0])) == pytest.approx(1.0, abs=0.15)


@pytest.mark.cli
def test_one_seed_gives_the_same_files_in_two_processes(tmp_path):
    script = ("import sys; from ipadapter_train.world.build import make_learned_world; "
              "from ipadapter_train.world.recipe import Recipe, Stage; "
              f"make_learned_world(sys.argv[1], {replace(MICRO, seed=3)!r})")  # the recipe's repr rebuilds it
    for name in ("one", "two"):
        r = subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    for name in ("world.safetensors", "clip-world.safetensors", "reader.safetensors"):
        # tensor by tensor: safetensors writes its header's metadata in an order of its own per process
        one, two = (safetensors_content(tmp_path / run / name) for run in ("one", "two"))
        assert one[0] == two[0], name
        assert one[1].keys() == two[1].keys() and all(torch.equal(one[1][k], two[1][k]) for k in one[1]), name
    assert (tmp_path / "one" / "samples.png").read_bytes() == (tmp_path / "two" / "samples.png").read_bytes()


def safetensors_content(path):
    """A safetensors file's metadata and tensors."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def test_the_clip_stage_feeds_the_pixels_the_clip_vision_encoder_feeds_at_64_px():
    from PIL import Image

    from ipadapter_train.models.clip_vision import image_processor
    from ipadapter_train.world.data import pictures, to_clip

    batch = pictures(np.random.default_rng(0), 4)[0]
    theirs = image_processor(64)(images=[Image.fromarray(b) for b in batch], return_tensors="pt").pixel_values
    torch.testing.assert_close(to_clip(batch), theirs, atol=1e-5, rtol=1e-5)


def test_the_build_shows_one_bar_per_stage(capsys):
    from ipadapter_train.cli.world import StageBars

    bars = StageBars()
    for stage, done, total in (("clip", 1, 2), ("clip", 2, 2), ("vae", 1, 3)):
        bars(stage, done, total, 0.5)
    bars.close()
    err = capsys.readouterr().err
    assert "world: clip" in err and "2/2" in err and "world: vae" in err and "1/3" in err
