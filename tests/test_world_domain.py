"""The learned world's pictures, captions and pixel reader, and its model family (random weights here)."""
from __future__ import annotations

import numpy as np
import pytest

from ipadapter_train.world.domain import (BACKGROUNDS, COLOURS, SHAPES, Attributes, caption, draw, draw_batch,
                                          sample_attributes)
from ipadapter_train.world.pixels import read_background, read_colour

pytestmark = pytest.mark.unit


def test_the_same_seed_draws_the_same_pixels_and_another_seed_other_ones():
    attrs = [sample_attributes(np.random.default_rng(0)) for _ in range(3)]
    first = draw_batch(attrs, np.random.default_rng(5))
    assert first.shape == (3, 64, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, draw_batch(attrs, np.random.default_rng(5)))
    assert not np.array_equal(first, draw_batch(attrs, np.random.default_rng(6)))


def test_captions_name_what_they_are_asked_to():
    a = Attributes("star", "red", "grey")
    assert caption(a) == "a red star on a grey background"
    assert caption(a, ["shape"]) == "a star"
    assert caption(a, ["colour"]) == "a red shape"
    assert caption(a, ["shape", "background"]) == "a star on a grey background"


def test_sampling_is_uniform_and_keeps_what_is_fixed():
    rng = np.random.default_rng(1)
    drawn = [sample_attributes(rng, colour="red") for _ in range(600)]
    assert {a.colour for a in drawn} == {"red"}
    counts = {s: sum(a.shape == s for a in drawn) for s in SHAPES}
    assert min(counts.values()) > 80, counts  # 120 expected each
    assert {a.background for a in drawn} == set(BACKGROUNDS)


def test_the_pixel_reader_reads_every_drawn_colour_and_background():
    rng = np.random.default_rng(2)
    attrs = [sample_attributes(rng) for _ in range(300)]
    pictures = draw_batch(attrs, rng)
    assert all(read_colour(p) == a.colour for p, a in zip(pictures, attrs))
    assert all(read_background(p) == a.background for p, a in zip(pictures, attrs))
    assert {a.colour for a in attrs} == set(COLOURS)


def test_a_blank_picture_has_no_colour():
    blank = np.asarray(draw(Attributes("circle", "red", "grey"), np.random.default_rng(0))).copy()
    blank[:] = BACKGROUNDS["grey"]
    assert read_colour(blank) is None and read_background(blank) == "grey"


def test_the_world_family_round_trips_through_a_single_file(tmp_path):
    from ipadapter_train.adapter.spec import AdapterSpec
    from ipadapter_train.families import WORLD, family_of_width
    from ipadapter_train.models.random_models import build_model
    from ipadapter_train.models.single_file import read_single_file, save_single_file

    path = save_single_file(build_model("world", "full"), tmp_path / "world.safetensors")
    model = read_single_file(path)
    assert model.family is WORLD and model.random_weights
    assert model.unet.config.cross_attention_dim == 32 and len(WORLD.adapter_layers()) == 16
    assert family_of_width(32, 16) is WORLD
    assert path.stat().st_size < 16 * 2**20  # small enough to ship
    words = AdapterSpec("base", 64, 32, 4, tuple((layer.index, 32) for layer in WORLD.adapter_layers()))
    assert words.family is WORLD
