"""The search's study (search/study.py) with a stand-in trial: batch sizes within memory (search/memory.py) and the
search page's rows. The stand-in raises the out-of-memory error a GPU would (no GPU here); the rest is real Optuna."""
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
