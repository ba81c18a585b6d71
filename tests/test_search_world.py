"""A search on the learned world (api/search.py, search/study.py): its trials are ordinary training runs judged by
the world's CLIP on held-out references, and it picks a better learning rate than a planted bad one. Learned-world
figures: they show the search selects, nothing about quality on real SD models."""
from __future__ import annotations

import pytest

from ipadapter_train.adapter.fileformat import inspect_adapter
from ipadapter_train.api.search import search_adapter
from ipadapter_train.api.world import WORLD_DEMO, held_out_references
from ipadapter_train.config import TrainConfig
from ipadapter_train.errors import IPAdapterError
from ipadapter_train.previews.sources import PreviewSource
from ipadapter_train.scoring.scorer import Scorer
from ipadapter_train.search.space import load_space
from ipadapter_train.search.study import SearchSettings
from ipadapter_train.world.attribute_set import AttributeSet, write_attribute_set
from ipadapter_train.world.shipped import world_files

pytestmark = pytest.mark.unit

BAD_LR = 1e-7  # planted: an adapter that barely moves from where it started


@pytest.fixture(scope="module")
def world_search(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("search")
    files = world_files()
    images = write_attribute_set(tmp / "images", AttributeSet())
    previews = PreviewSource(held_out_references(AttributeSet(), tmp / "references"), AttributeSet().prompts(2),
                             Scorer.load(files["clip"]), tmp / "references")
    space_file = tmp / "space.toml"
    space_file.write_text("[max_steps]\nvalue = 15\n\n[batch_size]\nvalue = 4\n\n[variant]\nvalue = \"base\"\n\n"
                          "[drop]\nvalue = 0.05\n\n[learning_rate]\nlow = 3e-4\nhigh = 3e-3\nlog = true\n",
                          encoding="utf-8")
    # one scored round per trial, at its end (the objective); no validation: the search does not read it
    base = TrainConfig(**{**WORLD_DEMO, "preview_every": 15, "preview_steps": 6, "checkpoint_every": 0,
                          "validation": False})
    out = tmp / "best.safetensors"
    study = search_adapter(images, files["model"], files["clip"], out, base,
                           SearchSettings(trials=2, prune=False, enqueue=({"learning_rate": BAD_LR},)),
                           load_space(space_file), previews)
    return tmp, out, study


def test_the_search_picks_a_better_learning_rate_than_a_planted_bad_one(world_search):
    tmp, out, study = world_search
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.params["learning_rate"] for t in trials][0] == BAD_LR and len(trials) == 2
    assert 3e-4 <= trials[1].params["learning_rate"] <= 3e-3
    assert study.best_trial.number == 1 and trials[1].value > trials[0].value, [t.value for t in trials]
    assert out.read_bytes() == (tmp / "best-search" / "trial_001.safetensors").read_bytes()


def test_trials_are_ordinary_runs_whose_adapters_load_like_any_other(world_search):
    tmp, out, study = world_search
    for trial in study.trials:
        run_dir = tmp / "best-search" / f"trial_{trial.number:03d}"
        assert (run_dir / "report.json").is_file() and (run_dir / "scores.json").is_file()
        assert inspect_adapter(trial.user_attrs["adapter"])["metadata"]["steps"] == str(trial.user_attrs["best_step"])
        assert trial.user_attrs["steps"] == 15


def test_a_budget_of_0_trials_and_an_unreachable_storage_are_one_sentence(tmp_path):
    files = world_files()
    base = TrainConfig(**{**WORLD_DEMO, "preview_every": 20})
    previews = PreviewSource([], ["a star"], Scorer.load(files["clip"]))
    for settings, words in ((SearchSettings(trials=0), "at least 1 trial, got 0"),
                            (SearchSettings(trials=1, storage="postgresql://nobody@127.0.0.1:1/none"),
                             "cannot be opened")):
        with pytest.raises(IPAdapterError, match=words) as err:
            search_adapter(tmp_path, files["model"], files["clip"], tmp_path / "a.safetensors", base, settings,
                           previews=previews, folder=tmp_path / "s")
        assert "\n" not in str(err.value)
