"""Learning you can see without a GPU: an adapter trained on the shipped learned world, through the normal training
path, makes generated pictures carry the colour its five pictures share (which their captions never name), and
the quality machinery (scores, --keep best, --early-stop) works on that real learning curve.

Learned-world figures: they show the machinery learns and selects, nothing about quality on real SD models."""
from __future__ import annotations

import json

import pytest

from ipadapter_train.api.use import load_generator
from ipadapter_train.api.world import WORLD_DEMO, MatchSettings, held_out_references, measure, run_world_demo
from ipadapter_train.config import TrainConfig
from ipadapter_train.world.attribute_set import AttributeSet
from ipadapter_train.world.reader import load_reader
from ipadapter_train.world.shipped import world_files

pytestmark = pytest.mark.unit

# fewer samples than the demo's 30: thresholds leave room for it (chance is 20%)
MATCH = MatchSettings(samples=15, steps=12)
EVERY, PATIENCE, MAX_STEPS = 10, 3, 200


def learns(figures: dict) -> bool:
    """The learning test: at weight 1 the shared colour is in at least 70% of the pictures, 25 points more than
    with the untrained adapter the run started from, and at weight 0 it stays near chance (20%)."""
    match = figures["attribute_match"]
    return match["1"] >= 0.7 and match["1"] >= figures["untrained"]["1"] + 0.25 and match["0"] <= 0.45


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("world-demo")
    # the demo's settings, previews every 10 steps to see the curve, stopping 3 rounds after the best (the colour
    # is learned within 100 steps, so the run stops well before 200)
    config = TrainConfig(**{**WORLD_DEMO, "max_steps": MAX_STEPS, "preview_every": EVERY, "preview_steps": 12,
                            "checkpoint_every": 50, "early_stop": PATIENCE})
    result, figures = run_world_demo(out, config=config, settings=MATCH)
    return out, result, figures


def test_training_makes_pictures_carry_the_shared_colour_and_weight_0_stays_at_chance(demo):
    out, result, figures = demo
    assert learns(figures), figures
    assert figures["attribute_match"]["0.5"] >= figures["attribute_match"]["0"], figures
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["learned_world"]["attribute_match"] == figures["attribute_match"]
    assert report["learned_world"]["chance"] == 0.2 and report["learned_world"]["untrained"] == figures["untrained"]
    assert "learned-world" in report["figures_note"]
    assert report["conditioning_gain"]["gain"] > 0
    page = (result.run_dir / "previews.html").read_text()
    assert "learned-world models" in page and "Random-weight" not in page


def test_scores_rise_then_early_stop_ends_the_run_and_the_report_says_which_step_was_kept(demo):
    out, result, figures = demo
    scores = json.loads((result.run_dir / "scores.json").read_text())
    rounds = sorted(scores["rounds"], key=lambda r: r["step"])
    steps = [r["step"] for r in rounds]
    best = max(rounds, key=lambda r: r["score"])
    assert best["score"] > rounds[0]["score"] + 2, rounds  # the world's CLIP sees the adapter learn
    report = json.loads((result.run_dir / "report.json").read_text())
    # stopped PATIENCE rounds after the best one, none of them better, well before the last step
    assert steps == list(range(EVERY, steps[-1] + 1, EVERY)) and steps[-1] < MAX_STEPS, steps
    assert report["steps"] == steps[-1] == best["step"] + PATIENCE * EVERY, (report["steps"], rounds)
    assert all(r["score"] < best["score"] for r in rounds if r["step"] > best["step"])
    assert f"best one (step {best['step']})" in report["stopped_early"]
    assert report["kept"]["step"] == scores["best_step"] == best["step"]
    assert f"Step {best['step']} scored best" in report["kept"]["why"]


def test_the_kept_adapter_matches_the_colour_at_least_as_often_as_the_last_steps(demo):
    out, result, figures = demo
    files = world_files()
    last = json.loads((result.run_dir / "report.json").read_text())["kept"]["last_adapter"]
    generator = load_generator(files["model"], files["clip"], last)
    references = held_out_references(AttributeSet(), out / "references-last")
    last_match = measure(generator, load_reader(files["reader"]), references, AttributeSet(), MATCH,
                         (1.0,))["attribute_match"]["1"]
    # on held-out prompts, seeds and references; one picture of 15 is the reading's grain
    assert figures["attribute_match"]["1"] >= last_match - 1 / MATCH.samples, (figures, last_match)
