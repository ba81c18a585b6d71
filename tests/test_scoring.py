"""Scoring: CLIP-I, CLIP-T / CLIPScore through the real tokenizer, the combined percent and its grade, the
full-CLIP loader, fingerprints and bad input. Tiny random CLIP on CPU: no figure here is a quality claim."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from ipadapter_train.models.clip_model import build_clip, infer_clip_config, load_clip, preset_config, save_clip
from ipadapter_train.models.clip_vision import build_clip_vision, load_clip_vision, save_clip_vision
from ipadapter_train.errors import IPAdapterError
from ipadapter_train.models.random_init import empty_model
from ipadapter_train.scoring.scorer import Scorer, ScoreReport, format_report, grade, vision_fingerprint

pytestmark = pytest.mark.unit

SAMPLES = Path(__file__).resolve().parents[1] / "ipadapter_train" / "assets" / "samples"
BOS, EOS = 49406, 49407


@pytest.fixture(scope="module")
def clip():
    return build_clip("tiny", seed=0)


@pytest.fixture(scope="module")
def scorer(clip):
    return Scorer(clip, name="tiny-clip")


@pytest.fixture(scope="module")
def photos():
    return {n: Image.open(SAMPLES / f"{n}.jpg").convert("RGB") for n in ("astronaut", "horse", "coffee")}


@pytest.fixture(scope="module")
def black():
    return Image.new("RGB", (224, 224), (0, 0, 0))


@pytest.fixture(scope="module")
def clip_file(clip, tmp_path_factory):
    return save_clip(clip, tmp_path_factory.mktemp("clip") / "clip-tiny.safetensors", dtype=torch.float32)


# ------------------------------------------------------------------ CLIP-I

def test_identical_images_score_the_maximum_and_an_unrelated_one_lower(scorer, photos, black):
    ref = photos["astronaut"]
    report = scorer.score([ref.copy(), black], reference=[ref])
    same, other = report.clip_i
    assert same == pytest.approx(1.0, abs=1e-5)
    # random weights make all embeddings close, but the gap is far above float noise
    assert other < same - 1e-4
    assert report.clip_i_mean == pytest.approx((same + other) / 2)
    assert report.clip_t is None and report.clip_score is None


def test_several_references_compare_with_their_normalised_mean(scorer, photos, black):
    refs = [photos["astronaut"], photos["horse"]]
    report = scorer.score([photos["coffee"], black], reference=refs)
    e_ref = scorer.image_embeddings(refs)
    center = torch.nn.functional.normalize(e_ref.mean(0), dim=-1)
    expected = (scorer.image_embeddings([photos["coffee"], black]) @ center).tolist()
    assert report.clip_i == pytest.approx(expected, abs=1e-6)
    assert report.num_references == 2 and report.num_images == 2


# ------------------------------------------------------------------ CLIP-T through the tokenizer

def test_text_goes_through_the_real_tokenizer_and_the_eos_pooled_projection(scorer, clip):
    ids = scorer.tokenizer("a cat in a palace").input_ids
    assert ids[0] == BOS and ids[-1] == EOS and len(ids) > 3
    emb = scorer.text_embeddings(["a cat in a palace", "an oil painting of a horse"])
    assert emb.shape == (2, clip.config.projection_dim)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-6)
    assert not torch.allclose(emb[0], emb[1], atol=1e-3)
    # manual path: the text tower's hidden state at the first EOS, projected, normalised
    tok = torch.tensor([ids])
    with torch.no_grad():
        hidden = clip.text_model(input_ids=tok).last_hidden_state[0, len(ids) - 1]
        manual = torch.nn.functional.normalize(clip.text_projection(hidden), dim=-1)
    assert torch.allclose(emb[0], manual, atol=1e-5)


def test_a_prompt_over_77_tokens_is_truncated_without_error(scorer, photos):
    long = "a very detailed oil painting of a cat in a palace " * 12
    assert scorer.token_count(long) > 77
    e1, e2 = scorer.text_embeddings([long, long + " with a red hat and a blue scarf"])
    assert torch.allclose(e1, e2, atol=1e-6)  # only the first 77 tokens count
    report = scorer.score([photos["horse"]], prompt=long)
    assert any("first 77" in w for w in report.warnings)
    short = scorer.score([photos["horse"]], prompt="a horse")
    assert not short.warnings


def test_clipscore_is_2_5_times_the_clamped_cosine(clip, photos, black):
    images = [photos["astronaut"], black]
    prompt = "a horse in a field"
    # the same model with its text projection negated flips every cosine's sign, so one of the two
    # scorers sees negative cosines and must clamp them to a CLIPScore of 0
    flipped = build_clip("tiny", seed=0)
    with torch.no_grad():
        flipped.text_projection.weight.neg_()
    for model in (clip, flipped):
        s = Scorer(model)
        report = s.score(images, prompt=prompt)
        cos = (s.image_embeddings(images) @ s.text_embeddings([prompt])[0]).tolist()
        assert report.clip_t == pytest.approx(cos, abs=1e-6)
        assert report.clip_score == pytest.approx([2.5 * max(c, 0.0) for c in cos], abs=1e-6)
        assert report.clip_score_mean == pytest.approx(sum(2.5 * max(c, 0.0) for c in cos) / 2, abs=1e-6)
    a = Scorer(clip).score(images, prompt=prompt).clip_t
    b = Scorer(flipped).score(images, prompt=prompt).clip_t
    assert a == pytest.approx([-x for x in b], abs=1e-6)
    assert any(x < 0 for x in a + b)


# ------------------------------------------------------------------ combined percent and grade

@pytest.mark.parametrize("percent,letter", [
    (100.0, "A+"), (90.0, "A+"), (89.999, "A"), (80.0, "A"), (79.99, "B"), (70.0, "B"), (69.99, "C"),
    (60.0, "C"), (59.99, "F"), (0.0, "F"), (-5.0, "F")])
def test_grade_bands_at_their_edges(percent, letter):
    assert grade(percent) == letter


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_grade_refuses_a_non_finite_percent(bad):
    with pytest.raises(IPAdapterError):
        grade(bad)


def test_combined_percent_follows_the_stated_scale(scorer, photos, black):
    both = scorer.score([photos["astronaut"], black], reference=[photos["astronaut"]], prompt="an astronaut")
    parts = [max(both.clip_i_mean, 0.0), min(both.clip_score_mean, 1.0)]
    assert both.combined == pytest.approx(sum(parts) / 2, abs=1e-9)
    assert both.percent == pytest.approx(100 * both.combined, abs=1e-9)
    assert both.grade == grade(both.percent)
    assert "2.5 x max" in both.scale and "percent" in both.scale and "averages: CLIP-I, CLIPScore" in both.scale
    only_i = scorer.score([photos["astronaut"]], reference=[photos["astronaut"]])
    assert only_i.percent == pytest.approx(100.0, abs=1e-3) and only_i.grade == "A+"
    assert only_i.scale.endswith("averages: CLIP-I.")
    only_t = scorer.score([black], prompt="an astronaut")
    assert only_t.percent == pytest.approx(100 * min(only_t.clip_score_mean, 1.0), abs=1e-9)
    d = both.to_dict()
    assert d["percent"] == both.percent and d["scorer"] == "tiny-clip" and isinstance(d["warnings"], list)


def test_report_names_the_scorer_and_labels_random_weights(clip, scorer, photos):
    report = scorer.score([photos["horse"]], prompt="a horse")
    assert report.scorer == "tiny-clip" and report.random_weights
    assert report.note and "random-weight figures" in report.note and "say nothing about quality" in report.note
    text = format_report(report)
    assert "tiny-clip" in text and f"grade {report.grade}" in text and "Scale:" in text and "Note:" in text
    # a model not marked random carries no note, so the check above can fail
    assert Scorer(clip, random_weights=False).score([photos["horse"]], prompt="a horse").note is None


# ------------------------------------------------------------------ same-encoder warning

def test_same_encoder_warning_only_when_the_fingerprints_match(clip, scorer, photos, tmp_path):
    # the conditioning encoder: this CLIP's vision half, saved in the clip_vision layout at float16
    vision = build_clip_vision("tiny", seed=99)
    vision.load_state_dict({k: v for k, v in clip.state_dict().items()
                            if k.startswith(("vision_model.", "visual_projection."))}, strict=True)
    same = load_clip_vision(save_clip_vision(vision, tmp_path / "cv.safetensors"))
    fp = vision_fingerprint(same)
    assert fp == scorer.fingerprint  # hashed at float16, so precision does not hide the match
    ref = [photos["astronaut"]]
    flagged = scorer.score([photos["horse"]], reference=ref, conditioning_fingerprint=fp)
    assert any("flattered" in w and "same image encoder" in w for w in flagged.warnings)
    other_fp = vision_fingerprint(build_clip_vision("tiny", seed=1))
    assert other_fp != fp
    for cond in (other_fp, None):
        report = scorer.score([photos["horse"]], reference=ref, conditioning_fingerprint=cond)
        assert not any("flattered" in w for w in report.warnings)


# ------------------------------------------------------------------ loading

def test_file_and_folder_round_trips_give_identical_embeddings(clip, scorer, clip_file, photos, tmp_path):
    clip.save_pretrained(tmp_path / "folder")
    images = [photos["astronaut"], photos["coffee"]]
    prompts = ["an astronaut", "a cup of coffee on a table"]
    want_i, want_t = scorer.image_embeddings(images), scorer.text_embeddings(prompts)
    for path in (clip_file, tmp_path / "folder"):
        loaded = Scorer.load(path)
        assert loaded.name == Path(path).name and loaded.random_weights
        assert torch.equal(loaded.image_embeddings(images), want_i)
        assert torch.equal(loaded.text_embeddings(prompts), want_t)
        assert loaded.fingerprint == scorer.fingerprint


def test_the_config_is_read_from_the_weights():
    for preset in ("tiny", "vit-l"):
        want = preset_config(preset)
        from transformers import CLIPModel

        shapes = {k: tuple(v.shape) for k, v in empty_model(lambda: CLIPModel(want)).state_dict().items()}
        got = infer_clip_config(shapes, source=preset)
        assert got.projection_dim == want.projection_dim
        for part in ("text_config", "vision_config"):
            g, w = getattr(got, part), getattr(want, part)
            for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                        "hidden_act"):
                assert getattr(g, key) == getattr(w, key), (preset, part, key)
    assert preset_config("vit-l").text_config.hidden_act == "quick_gelu"


def test_a_vision_only_file_or_folder_is_refused_with_the_reason(tmp_path):
    vision = build_clip_vision("tiny")
    path = save_clip_vision(vision, tmp_path / "clip_vision_tiny.safetensors")
    with pytest.raises(IPAdapterError, match="only a vision tower.*full CLIP model.*clip-vit-large-patch14"):
        Scorer.load(path)
    vision.save_pretrained(tmp_path / "cv")
    with pytest.raises(IPAdapterError, match="only a vision tower"):
        load_clip(tmp_path / "cv")
    with pytest.raises(IPAdapterError, match="not a full CLIP model"):
        Scorer(vision)


def test_missing_and_corrupt_files_are_named(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(IPAdapterError, match="nope.safetensors"):
        Scorer.load(missing)
    corrupt = tmp_path / "broken.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    with pytest.raises(IPAdapterError, match="broken.safetensors"):
        load_clip(corrupt)


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_an_empty_prompt_is_refused(scorer, photos, prompt):
    with pytest.raises(IPAdapterError, match="CLIP-T needs a non-empty prompt"):
        scorer.score([photos["horse"]], reference=[photos["horse"]], prompt=prompt)


def test_nothing_to_compare_with_is_refused(scorer, photos):
    with pytest.raises(IPAdapterError, match="reference images.*prompt"):
        scorer.score([photos["horse"]])
    with pytest.raises(IPAdapterError, match="non-empty list"):
        scorer.score([], prompt="a horse")
    with pytest.raises(IPAdapterError, match="not a PIL image"):
        scorer.score(["horse.jpg"], prompt="a horse")


def test_a_report_is_json_ready(scorer, photos):
    import json

    report = scorer.score([photos["horse"]], reference=[photos["coffee"]], prompt="a horse")
    assert isinstance(report, ScoreReport)
    back = json.loads(json.dumps(report.to_dict()))
    assert math.isclose(back["percent"], report.percent) and back["grade"] == report.grade


def test_make_test_models_writes_a_random_weight_scorer_that_score_reads_and_labels(tmp_path):
    """`make-test-models DIR` then `score --clip DIR/clip-scorer-tiny.safetensors`: no download needed, and the
    figures say they are random-weight figures. One .safetensors file is the layout `score`, `--clip` and the
    Score node (models/clip_scorers) all read."""
    import json

    from conftest import run_cli

    folder = tmp_path / "m"
    r = run_cli("make-test-models", str(folder), "--vision", "tiny")
    assert r.returncode == 0, r.stderr[-3000:]
    scorer = Path(json.loads(r.stdout)["clip_scorer"])
    assert scorer == folder / "clip-scorer-tiny.safetensors" and scorer.is_file()
    ref = str(SAMPLES / "chelsea.jpg")
    r = run_cli("score", "--images", ref, "--reference", ref, "--prompt", "a cat", "--clip", str(scorer))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "these are random-weight figures" in r.stdout + r.stderr, r.stdout
    assert "CLIP-I" in r.stdout and "grade" in r.stdout.lower(), r.stdout
