"""The search's study (search/study.py) with a stand-in trial: batch sizes within memory (search/memory.py), the
search page's rows, another objective's study refused, the timeout; and the CLI's --timeout and rerun command. The
stand-in raises the out-of-memory error a GPU would (no GPU here); the rest is real Optuna."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ipadapter_train.config import TrainConfig
from ipadapter_train.errors import IPAdapterError
from ipadapter_train.search.memory import TOO_BIG
from ipadapter_train.search.objective import SCORE
from ipadapter_train.search.space import SearchSpace, Setting
from ipadapter_train.search.study import SearchSettings, finished, run_search

pytestmark = pytest.mark.unit

BASE = TrainConfig(resolution=64, checkpoint_every=0, preview_every=10)
SPACE = SearchSpace((Setting("learning_rate", 1e-5, 1e-3, log=True), Setting("batch_size", choices=(1, 2, 4))))


class StandIn:
    """A trial that 'trains' at once: its score peaks at a learning rate of 1e-4; batches of `fits_below` or more
    raise the out-of-memory error PyTorch raises on a GPU."""

    def __init__(self, fits_below: int) -> None:
        self.fits_below, self.trained = fits_below, []

    def __call__(self, config: TrainConfig, out: Path, run_dir: Path, hook):
        if config.batch_size >= self.fits_below:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.trained.append(config.batch_size)
        score = 100 - 10 * abs(math.log10(config.learning_rate) + 4)
        return SimpleNamespace(report={"previews": {"best_score": score, "best_step": 10}}, run_dir=run_dir,
                               steps_done=10, cancelled=False)


def test_a_batch_that_runs_out_of_memory_is_not_drawn_again_and_does_not_count(tmp_path):
    trial = StandIn(fits_below=4)
    study = run_search(trial, SPACE, BASE, tmp_path, SearchSettings(trials=8, prune=False,
                                                                    enqueue=({"learning_rate": 1e-4,
                                                                              "batch_size": 4},)))
    assert study.user_attrs[TOO_BIG] == 4 and 4 not in trial.trained
    skipped = [t for t in study.trials if "memory" in t.user_attrs]
    assert skipped[0].number == 0 and skipped[0].user_attrs["memory"] == "batch size 4 ran out of memory"
    assert all(t.params["batch_size"] == 4 for t in skipped)  # every skipped trial drew the batch that did not fit
    assert finished(study) == 8 == len(trial.trained) and len(study.trials) == 8 + len(skipped)
    page = (tmp_path / "search.html").read_text(encoding="utf-8")
    assert "pruned: batch size 4 ran out of memory" in page


def test_when_the_smallest_batch_runs_out_of_memory_the_search_stops_in_one_sentence(tmp_path):
    space = SPACE.with_settings([Setting("batch_size", choices=(2, 4))])
    with pytest.raises(IPAdapterError, match="out of memory at batch size 2, the smallest") as err:
        run_search(StandIn(fits_below=1), space, BASE, tmp_path, SearchSettings(trials=3, prune=False,
                                                                                 enqueue=({"batch_size": 2},)))
    assert "\n" not in str(err.value)


def test_a_stored_study_judged_by_another_objective_is_refused(tmp_path):
    settings = SearchSettings(trials=1, storage=f"sqlite:///{tmp_path / 's.db'}", prune=False)
    run_search(StandIn(fits_below=99), SPACE, BASE, tmp_path, settings, objective=SCORE)
    from ipadapter_train.search.objective import HELDOUT_LOSS

    with pytest.raises(IPAdapterError, match="not judged by the held-out validation loss|judged by the held-out "
                                             "preview score, not"):
        run_search(StandIn(fits_below=99), SPACE, BASE, tmp_path, settings, objective=HELDOUT_LOSS)


class Slow(StandIn):
    """The stand-in, taking `seconds` a trial."""

    def __init__(self, seconds: float) -> None:
        super().__init__(fits_below=99)
        self.seconds = seconds

    def __call__(self, config, out, run_dir, hook):
        import time

        time.sleep(self.seconds)
        return super().__call__(config, out, run_dir, hook)


def test_a_timeout_stops_starting_trials_and_the_running_one_finishes(tmp_path):
    trial = Slow(0.4)
    study = run_search(trial, SPACE, BASE, tmp_path, SearchSettings(trials=50, timeout=1.0, prune=False))
    # trials start at 0, 0.4, 0.8 s (before the 1 s limit); the third ends at 1.2 s, and none starts after it
    assert 2 <= len(trial.trained) <= 4 and all(t.state.name == "COMPLETE" for t in study.trials)


@pytest.mark.parametrize("text, seconds", [("90", 90.0), ("90s", 90.0), ("90m", 5400.0), ("2h", 7200.0),
                                           ("1.5h", 5400.0), ("1d", 86400.0), (" 2H ", 7200.0)])
def test_timeouts_read_seconds_and_units(text, seconds):
    from ipadapter_train.cli.search import timeout_seconds

    assert timeout_seconds(text) == seconds


def test_a_bad_timeout_is_one_sentence_from_the_command():
    from conftest import run_cli

    result = run_cli("search", "--images", "x", "--base-model", "m", "--image-encoder", "e", "--out", "o.safetensors",
                     "--timeout", "soon")
    assert result.returncode == 2 and "'soon' is not a time: give seconds or a number with s, m, h or d" in \
        result.stderr


def test_the_rerun_command_quotes_paths_with_spaces_and_fixes_what_the_search_fixed(tmp_path):
    import shlex

    from ipadapter_train.cli.main import build_parser
    from ipadapter_train.cli.search import rerun_command

    args = build_parser().parse_args(["search", "--images", str(tmp_path / "my photos"), "--base-model", "sd 15.ckpt",
                                      "--image-encoder", "clip_vision", "--out", "o.safetensors", "--resolution",
                                      "256", "--no-validation", "--flip"])
    command = rerun_command(args, {"learning_rate": 0.00012345678901, "variant": "plus", "drop": 0.0},
                            "o-rerun.safetensors")
    words = shlex.split(command)
    assert words[:2] == ["ipadapter-train", "train"] and words[words.index("--images") + 1] == str(tmp_path /
                                                                                                    "my photos")
    assert words[words.index("--base-model") + 1] == "sd 15.ckpt" and words[words.index("--out") + 1] == \
        "o-rerun.safetensors"
    assert float(words[words.index("--lr") + 1]) == 0.00012345678901  # exactly the trial's value
    assert words[words.index("--variant") + 1] == "plus" and words[words.index("--drop") + 1] == "0.0"
    assert words[words.index("--resolution") + 1] == "256" and "--no-validation" in words and "--flip" in words
    # the command parses as a train command
    train = build_parser().parse_args(words[1:])
    assert train.lr == 0.00012345678901 and train.drop == 0.0 and train.validation is False and train.flip


class Diverging(StandIn):
    """The stand-in, whose loss becomes NaN above a learning rate of 3e-4, as the trainer reports it."""

    def __call__(self, config, out, run_dir, hook):
        from ipadapter_train.errors import TrainingDiverged

        if config.learning_rate > 3e-4:
            raise TrainingDiverged("The loss became nan at step 3: training stopped and no checkpoint was written "
                                   "before it; lower the learning rate.")
        return super().__call__(config, out, run_dir, hook)


def test_a_trial_that_diverges_is_pruned_and_the_search_goes_on(tmp_path):
    trial = Diverging(fits_below=99)
    study = run_search(trial, SPACE, BASE, tmp_path, SearchSettings(trials=6, prune=False,
                                                                    enqueue=({"learning_rate": 1e-3},)))
    first = min(study.trials, key=lambda t: t.number)
    assert first.state.name == "PRUNED" and first.user_attrs["diverged"] == "The loss became nan at step 3"
    assert finished(study) == 6 and len(study.trials) == 6  # a diverged trial counts: it is a result, the worst
    assert study.best_trial.params["learning_rate"] <= 3e-4
    assert "pruned: The loss became nan at step 3" in (tmp_path / "search.html").read_text(encoding="utf-8")


def test_settings_tried_first_keep_their_label_and_a_bad_one_is_one_sentence(tmp_path):
    from ipadapter_train.search.study import Tried
    from ipadapter_train.search.trials import trial_rows

    space = SPACE.with_settings([Setting("variant", choices=("base", "plus"))])
    defaults = space.values_of(BASE)
    assert defaults == {"learning_rate": 1e-4, "batch_size": 1, "variant": "base"}
    assert space.parse_values("learning_rate=3e-4, variant=plus,batch_size=2") == {
        "learning_rate": 3e-4, "variant": "plus", "batch_size": 2}
    for text, words in (("lr=1e-4", "'lr=1e-4' is not a searched setting's value"),
                        ("batch_size=two", "'batch_size=two' has 'two', which is not a whole number"),
                        (" , ", "gives no value")):
        with pytest.raises(IPAdapterError, match=words) as err:
            space.parse_values(text)
        assert "\n" not in str(err.value)
    study = run_search(StandIn(fits_below=99), space, BASE, tmp_path, SearchSettings(
        trials=3, prune=False, enqueue=(Tried(defaults, "defaults"), Tried({"learning_rate": 1e-3}, "high lr"))))
    rows = trial_rows(study)
    assert [r.label for r in rows] == ["defaults", "high lr", None]
    assert rows[0].settings == defaults and rows[1].settings["learning_rate"] == 1e-3
    page = (tmp_path / "search.html").read_text(encoding="utf-8")
    assert "<td>0 (defaults)</td>" in page and "<td>1 (high lr)</td>" in page
