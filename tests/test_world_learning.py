"""Learning you can see without a GPU: an adapter trained on the shipped learned world, through the normal training
path, makes generated pictures carry the colour its five pictures share (which their captions never name), and
the quality machinery (scores, --keep best, --early-stop) works on that real learning curve.

Learned-world figures: they show the machinery learns and selects, nothing about quality on real SD models."""
from __future__ import annotations

import json

import pytest

from ipadapter_train.api.world import WORLD_DEMO, MatchSettings, run_world_demo
from ipadapter_train.config import TrainConfig

pytestmark = pytest.mark.unit

# fewer samples than the demo's 30: thresholds leave room for it (chance is 20%)
MATCH = MatchSettings(samples=15, steps=12)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("world-demo")
    # shorter than the demo's 300 steps (the colour is learned within 100), previews every 10 to see the curve
    config = TrainConfig(**{**WORLD_DEMO, "max_steps": 100, "preview_every": 10, "preview_steps": 12,
                            "checkpoint_every": 50})
    result, figures = run_world_demo(out, config=config, settings=MATCH)
    return out, result, figures


def test_training_makes_pictures_carry_the_shared_colour_and_weight_0_stays_at_chance(demo):
    out, result, figures = demo
    match = figures["attribute_match"]
    assert match["1"] >= 0.7, figures
    assert match["0"] <= 0.45, figures  # chance is 0.2: the base model alone does not make them red
    assert match["0.5"] >= match["0"], figures
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["learned_world"]["attribute_match"] == match and report["learned_world"]["chance"] == 0.2
    assert "learned-world" in report["figures_note"]
    assert report["conditioning_gain"]["gain"] > 0


def test_scores_rise_and_keep_best_keeps_a_step_not_worse_than_the_last(demo):
    out, result, figures = demo
    scores = json.loads((result.run_dir / "scores.json").read_text())
    rounds = sorted(scores["rounds"], key=lambda r: r["step"])
    assert [r["step"] for r in rounds] == list(range(10, 101, 10))
    best = max(r["score"] for r in rounds)
    assert best > rounds[0]["score"] + 2, rounds  # the world's CLIP sees the adapter learn
    report = json.loads((result.run_dir / "report.json").read_text())
    kept = report["kept"]["step"]
    assert kept == scores["best_step"] and scores["best_score"] >= rounds[-1]["score"]
