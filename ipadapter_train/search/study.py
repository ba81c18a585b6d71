"""Running a search: an Optuna study whose trials are ordinary training runs, judged by held-out preview scores.

    study = run_search(train_trial, SearchSpace(), base_config, Path("search"), SearchSettings(trials=12))

`train_trial(config, out, run_dir, progress)` is the caller's training run (api/search.py passes
`api.train_adapter` on the user's files and previews), so a trial writes what any run writes: `trial_NNN.safetensors`
and its run folder `trial_NNN/`. The objective is the best preview round's score (the mean combined percent of its
full-weight previews, held-out references and prompts). Each scored round is reported to the study, and a trial
the pruner judges clearly worse than the others at the same step is stopped there (pruned).

The study lives in `SearchSettings.storage` (an Optuna storage URL: `sqlite:///search.db` on one machine, a
database server across machines), so a search stopped by Ctrl-C continues from it, and several processes pointed at
one URL share one study: `trials` counts the finished and pruned trials of the whole study.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import TrainConfig
from ..errors import IPAdapterError, TrainingCancelled
from ..training.plan import PREVIEWED, Progress, RunEvent
from .space import SearchSpace

log = logging.getLogger(__name__)

TrainTrial = Callable[[TrainConfig, Path, Path, Progress], Any]  # config, adapter out, run folder, hook -> TrainResult


@dataclass(frozen=True)
class SearchSettings:
    """How many trials, where the study lives, and how it samples and prunes."""

    trials: int
    storage: str | None = None  # an Optuna storage URL; None: in memory, this process only
    study_name: str = "ipadapter-search"
    timeout: float | None = None  # seconds for this process's trials; None: no limit
    seed: int = 0  # the sampler's
    prune: bool = True
    startup_trials: int = 2  # trials that are never pruned, to give the pruner something to compare against
    # settings to try first, as the first trials (e.g. the defaults, or a planted bad one); a value per searched
    # setting; one the study already has queued or ran is not queued again
    enqueue: tuple[dict[str, Any], ...] = ()


def open_study(settings: SearchSettings):
    """The study named in `settings`, created or (in a storage that has it) continued."""
    import optuna

    storage = None
    if settings.storage is not None:
        try:
            storage = optuna.storages.RDBStorage(settings.storage)
        except Exception as exc:  # SQLAlchemy raises its own errors for URLs, drivers and servers alike
            reason = str(exc).splitlines()[0][:200] or type(exc).__name__
            raise IPAdapterError(f"The search storage {settings.storage} cannot be opened ({reason}); give a database "
                                 "URL that can be reached, such as sqlite:///search.db.") from None
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials) if settings.prune
              else optuna.pruners.NopPruner())
    return optuna.create_study(study_name=settings.study_name, storage=storage, direction="maximize",
                               load_if_exists=True, sampler=optuna.samplers.TPESampler(seed=settings.seed),
                               pruner=pruner)


def finished(study) -> int:
    """Trials of the study that count towards its budget: complete or pruned."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def run_search(train_trial: TrainTrial, space: SearchSpace, base: TrainConfig, folder: Path,
               settings: SearchSettings, progress: Progress | None = None):
    """Run trials until the study has `settings.trials` finished ones (or the timeout); returns the study.

    A Ctrl-C (or a `TrainingCancelled` from `progress`) ends the running trial's training, marks that trial failed
    (it does not count; the storage keeps the finished ones) and ends the search by raising TrainingCancelled."""
    import optuna

    if settings.trials < 1:
        raise IPAdapterError(f"A search needs at least 1 trial, got {settings.trials}: give --trials 1 or more.")
    if base.preview_every == 0:
        raise IPAdapterError("A search judges trials by their scored previews: turn previews on (preview_every) and "
                             "give a scorer (--clip).")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study = open_study(settings)
    for values in settings.enqueue:
        study.enqueue_trial(dict(values), skip_if_exists=True)

    def objective(trial) -> float:
        values = space.suggest(trial)
        config = space.config(base, values)
        name = f"trial_{trial.number:03d}"
        pruned: list[int] = []

        def hook(event: RunEvent) -> None:
            if progress is not None:
                progress(event)
            if event.phase == PREVIEWED and event.round and event.round.get("score") is not None:
                trial.report(float(event.round["score"]), event.step)
                if trial.should_prune():
                    pruned.append(event.step)
                    raise TrainingCancelled()

        start = time.perf_counter()
        result = train_trial(config, folder / f"{name}.safetensors", folder / name, hook)
        previews = result.report.get("previews") or {}
        trial.set_user_attr("run_dir", str(result.run_dir))
        trial.set_user_attr("adapter", str(folder / f"{name}.safetensors"))
        trial.set_user_attr("steps", result.steps_done)
        trial.set_user_attr("seconds", time.perf_counter() - start)
        trial.set_user_attr("best_step", previews.get("best_step"))
        if pruned:
            log.info("Trial %d pruned after step %d: its score was below the other trials' there.",
                     trial.number, pruned[0])
            raise optuna.TrialPruned()
        if result.cancelled:  # Ctrl-C or a cancel from the caller: not a result; the search stops
            raise TrainingCancelled()
        score = previews.get("best_score")
        if score is None:
            raise IPAdapterError(f"Trial {trial.number} ran no scored preview round: give a scorer (--clip) and "
                                 "enough steps for a round.")
        log.info("Trial %d: %s -> %.2f (best step %s).", trial.number, values, score, previews.get("best_step"))
        return float(score)

    def enough(study, _trial) -> None:
        if finished(study) >= settings.trials:
            study.stop()

    if finished(study) >= settings.trials:
        log.info("The study %s already has %d finished trials: nothing to run.", settings.study_name, finished(study))
        return study
    remaining = settings.trials - finished(study)
    try:
        # n_trials bounds this process; `enough` stops it sooner when other processes finish trials of the study
        study.optimize(objective, n_trials=remaining, timeout=settings.timeout, callbacks=[enough],
                       catch=(), gc_after_trial=True)
    except KeyboardInterrupt:
        raise TrainingCancelled() from None
    return study
