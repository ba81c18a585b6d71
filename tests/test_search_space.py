"""The search space (search/space.py): what a trial draws, through a real Optuna study, and a user's TOML space file
that fixes or widens settings; a bad file is refused in one sentence."""
from __future__ import annotations

import optuna
import pytest

from ipadapter_train.config import TrainConfig
from ipadapter_train.errors import IPAdapterError
from ipadapter_train.search.space import DROP_FIELDS, SearchSpace, load_space

pytestmark = pytest.mark.unit

BASE = TrainConfig(resolution=64, checkpoint_every=0)


def trials(space: SearchSpace, n: int = 20):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(n):
        trial = study.ask()
        yield trial, space.suggest(trial)


def test_the_default_space_draws_every_setting_within_its_range_and_makes_valid_configs():
    space = SearchSpace()
    seen_variants, seen_batches = set(), set()
    for trial, values in trials(space, 40):
        assert set(values) == set(trial.params) == {"learning_rate", "max_steps", "variant", "batch_size", "drop"}
        assert 1e-5 <= values["learning_rate"] <= 1e-3 and 100 <= values["max_steps"] <= 1000
        assert values["max_steps"] % 50 == 0 and 0.0 <= values["drop"] <= 0.1
        config = space.config(BASE, values)
        assert config.learning_rate == values["learning_rate"] and config.max_steps == values["max_steps"]
        assert all(getattr(config, f) == values["drop"] for f in DROP_FIELDS)
        assert config.resolution == 64  # what the space does not draw stays the base's
        seen_variants.add(values["variant"])
        seen_batches.add(values["batch_size"])
    assert seen_variants == {"base", "plus"} and seen_batches == {1, 2, 4}
    # the learning rate is drawn on a log scale: as many below 1e-4 as above it, roughly
    lrs = [v["learning_rate"] for _, v in trials(space, 200)]
    assert 0.35 < sum(lr < 1e-4 for lr in lrs) / len(lrs) < 0.65


def test_a_space_file_fixes_and_widens_settings_and_adds_others(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text('[batch_size]\nvalue = 2\n\n[learning_rate]\nlow = 1e-6\nhigh = 1e-2\nlog = true\n\n'
                    '[variant]\nchoices = ["plus"]\n\n[weight_decay]\nlow = 0\nhigh = 0.1\n', encoding="utf-8")
    space = load_space(path)
    assert space.searched() == ["learning_rate", "max_steps", "variant", "drop", "weight_decay"]
    for trial, values in trials(space, 30):
        assert "batch_size" not in trial.params and values["batch_size"] == 2  # fixed: not drawn, still set
        assert 1e-6 <= values["learning_rate"] <= 1e-2 and values["variant"] == "plus"
        assert 0 <= values["weight_decay"] <= 0.1
        config = space.config(BASE, values)
        assert config.batch_size == 2 and config.weight_decay == values["weight_decay"]
    assert load_space(None) == SearchSpace()


@pytest.mark.parametrize("text, words", [
    ("[resolution]\nvalue = 512\n", "[resolution] is not a setting a search can draw"),
    ("[learning_rate]\nlow = 1e-3\nhigh = 1e-5\n", "low (0.001) must be below high (1e-05)"),
    ("[learning_rate]\nlow = 0\nhigh = 1e-3\nlog = true\n", "a log range needs low above 0"),
    ("[max_steps]\nlow = 100\nhigh = 500\nstep = 2.5\n", "step must be a whole number"),
    ("[max_steps]\nlow = 100.5\nhigh = 500\n", "100.5, which is not a whole number"),
    ("[variant]\nlow = 1\nhigh = 2\n", "not a range: it is not a number"),
    ("[variant]\nchoices = []\n", "choices must be a non-empty list"),
    ("[batch_size]\nvalue = 2\nchoices = [1, 2]\n", "exactly one of low/high, choices or value"),
    ("[batch_size]\nvalues = 2\n", "unknown keys (values)"),
    ("[learning_rate]\nlow = 1e-5\n", "needs both low and high"),
    ("learning_rate = 1e-4\n", "must be a table"),
    ("[learning_rate\n", "is not valid TOML"),
    ("", "sets nothing"),
])
def test_a_bad_space_file_is_refused_in_one_sentence_naming_the_setting(tmp_path, text, words):
    path = tmp_path / "space.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(IPAdapterError) as err:
        load_space(path)
    message = str(err.value)
    assert words in message and "\n" not in message and message.endswith(".")


def test_a_missing_space_file_and_a_value_training_refuses_are_one_sentence(tmp_path):
    with pytest.raises(IPAdapterError, match="does not exist"):
        load_space(tmp_path / "nothing.toml")
    path = tmp_path / "space.toml"
    path.write_text("[learning_rate]\nvalue = -1.0\n", encoding="utf-8")
    space = load_space(path)
    with pytest.raises(IPAdapterError, match="learning rate must be positive"):
        space.config(BASE, {"learning_rate": -1.0})
