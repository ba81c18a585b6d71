"""The learned world's attribute sets and the attribute match, on drawn pictures (no generation here)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import run_cli
from ipadapter_train.world.attribute_match import attribute_match
from ipadapter_train.world.attribute_set import AttributeSet, write_attribute_set
from ipadapter_train.world.domain import SHAPES, Attributes, draw, sample_attributes
from ipadapter_train.world.reader import ShapeReader

pytestmark = pytest.mark.unit


def test_a_set_shares_its_attribute_its_captions_name_only_the_shape_and_held_out_pictures_differ(tmp_path):
    red = AttributeSet("colour", "red", images=5, seed=0)
    trained = red.pictures()
    assert [a.colour for _, a in trained] == ["red"] * 5 and [a.shape for _, a in trained] == list(SHAPES)
    held = red.pictures(stream=1, n=5)
    assert all(a.colour == "red" for _, a in held)
    assert all(not np.array_equal(np.asarray(p), np.asarray(q)) for (p, _), (q, _) in zip(trained, held))
    folder = write_attribute_set(tmp_path / "images", red)
    captions = sorted(p.read_text().strip() for p in folder.glob("*.txt"))
    assert captions == sorted(f"a {s}" for s in SHAPES) and len(list(folder.glob("*.png"))) == 5
    prompts = red.prompts(6)
    assert all(p.startswith("a ") and p.split()[1] in SHAPES and len(p.split()) == 2 for p in prompts), prompts
    assert red.prompts(6) == prompts  # the same held-out prompts every time


def test_the_match_counts_the_pictures_that_carry_the_attribute_per_weight():
    red = AttributeSet("colour", "red")

    def render(prompt: str, weight: float, seed: int) -> np.ndarray:
        # weight 1 always red; weight 0 a colour from the seed (chance-like); nothing at all at weight 0.5
        rng = np.random.default_rng(seed)
        attrs = sample_attributes(rng, colour="red") if weight == 1 else sample_attributes(rng)
        picture = np.asarray(draw(attrs, rng)).copy()
        if weight == 0.5:
            picture[:] = picture[0, 0]
        return picture

    figures = attribute_match(render, ShapeReader().eval(), red, (0.0, 0.5, 1.0), samples=40)
    assert figures["attribute_match"]["1"] == 1.0 and figures["attribute_match"]["0.5"] == 0.0
    assert 0.05 < figures["attribute_match"]["0"] < 0.45 and figures["chance"] == 0.2
    assert figures["read"]["0.5"] == {"nothing": 40} and sum(figures["read"]["0"].values()) == 40
    assert (figures["attribute"], figures["value"], figures["samples"]) == ("colour", "red", 40)


def test_the_demo_without_a_world_says_where_to_get_one(tmp_path):
    r = run_cli("demo", "--world", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path / "demo"))
    assert r.returncode == 2
    assert "has no learned world (world.safetensors, clip-world.safetensors, reader.safetensors missing): build one " \
           "with `ipadapter-train make-learned-world DIR` and give --world DIR." in r.stderr
    assert not (tmp_path / "demo").exists()


def test_make_learned_world_refuses_a_scale_out_of_range(tmp_path):
    r = run_cli("make-learned-world", str(tmp_path / "w"), "--scale", "0")
    assert r.returncode == 2 and "--scale 0.0 is out of range" in r.stderr and not (tmp_path / "w").exists()


def test_attributes_name_their_values():
    a = Attributes("star", "red", "grey")
    assert (a.value("shape"), a.value("colour"), a.value("background")) == ("star", "red", "grey")
