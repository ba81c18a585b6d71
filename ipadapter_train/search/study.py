"""Running a search: an Optuna study whose trials are ordinary training runs, judged by held-out preview scores.

    study = run_search(train_trial, SearchSpace(), base_config, Path("search"), SearchSettings(trials=12))

`train_trial(config, out, run_dir, progress)` is the caller's training run (api/search.py passes
`api.train_adapter` on the user's files and previews; the ComfyUI node its in-graph run), so a trial writes what any
run writes: `trial_NNN.safetensors` and its run folder `trial_NNN/`. The objective (search/objective.py) is the best
preview round's score (the mean combined percent of its full-weight previews, held-out references and prompts), or
without a scorer the held-out validation loss. Each round's figure is reported to the study, and a trial the pruner
judges clearly worse than the others at the same step is stopped there (pruned). After every trial the search page
(`search.html`, search/page.py) is rewritten in `folder`, and `trial_done(study, trial)` is called (a node's live
table).

The study lives in `SearchSettings.storage` (an Optuna storage URL: `sqlite:///search.db` on one machine, a
database server across machines), so a search stopped by Ctrl-C continues from it, and several processes pointed at
one URL share one study: `trials` counts the finished and pruned trials of the whole study.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import TrainConfig
from ..errors import IPAdapterError, TrainingCancelled, TrainingDiverged
from ..training.plan import PREVIEWED, Progress, RunEvent
from . import memory
from .objective import SCORE, Objective
from .page import write_search_page
from .space import SearchSpace

log = logging.getLogger(__name__)

TrainTrial = Callable[[TrainConfig, Path, Path, Progress], Any]  # config, adapter out, run folder, hook -> TrainResult
DIVERGED = "diverged"  # a trial's user attribute: its loss became NaN or infinite (the sentence's first part)
TRIED = "tried"  # a trial's user attribute: the label of the settings it was queued with
RACE_RETRIES = 5  # opening a storage that another process is creating at the same moment
TrialDone = Callable[[Any, Any], None]  # (the study, the optuna.trial.FrozenTrial just finished, pruned or failed)


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
    # settings to try first, as the first trials (e.g. the defaults, or a planted bad one): a value per searched
    # setting (the rest are drawn), or a `Tried` with a label the summary and the page show; one the study already
    # has queued or ran is not queued again
    enqueue: tuple[dict[str, Any] | Tried, ...] = ()


@dataclass(frozen=True)
class Tried:
    """Settings to try first, with a label ("defaults") that the trial keeps."""

    values: dict[str, Any]
    label: str | None = None


def open_study(settings: SearchSettings, objective: Objective = SCORE):
    """The study named in `settings`, created or (in a storage that has it) continued; a stored study judged by
    another objective is refused in one sentence."""
    import optuna

    storage = None
    if settings.storage is not None:
        for attempt in range(RACE_RETRIES + 1):
            try:
                storage = optuna.storages.RDBStorage(settings.storage)
                break
            except Exception as exc:  # SQLAlchemy raises its own errors for URLs, drivers and servers alike
                reason = str(exc).splitlines()[0][:200] or type(exc).__name__
                if attempt < RACE_RETRIES and any(w in reason for w in ("already exists", "locked")):
                    # two processes started on a new database at once: one made the tables while the other tried
                    time.sleep(0.5 + random.random())
                    continue
                raise IPAdapterError(f"The search storage {settings.storage} cannot be opened ({reason}); give a "
                                     "database URL that can be reached, such as sqlite:///search.db.") from None
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials) if settings.prune
              else optuna.pruners.NopPruner())
    try:
        study = optuna.create_study(study_name=settings.study_name, storage=storage, direction=objective.direction,
                                    load_if_exists=True, sampler=optuna.samplers.TPESampler(seed=settings.seed),
                                    pruner=pruner)
    except ValueError as exc:  # a stored study of the same name with the other direction
        raise IPAdapterError(f"The study {settings.study_name} in {settings.storage} was not judged by the "
                             f"{objective.name} ({exc}); give it the same scorer as before, or a new --study-name."
                             ) from None
    stored = study.user_attrs.get("objective")
    if stored is None:
        study.set_user_attr("objective", objective.name)
    elif stored != objective.name:
        raise IPAdapterError(f"The study {settings.study_name} was judged by the {stored}, not the {objective.name}: "
                             "give it the same scorer as before, or a new --study-name.")
    return study


def finished(study) -> int:
    """Trials of the study that count towards its budget: complete or pruned (not those whose batch did not fit in
    memory, search/memory.py)."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return sum(memory.NOTE not in t.user_attrs for t in study.get_trials(deepcopy=False, states=states))


def run_search(train_trial: TrainTrial, space: SearchSpace, base: TrainConfig, folder: Path,
               settings: SearchSettings, progress: Progress | None = None, objective: Objective = SCORE,
               trial_done: TrialDone | None = None):
    """Run trials until the study has `settings.trials` finished ones (or the timeout); returns the study.

    A Ctrl-C (or a `TrainingCancelled` from `progress`) ends the running trial's training, marks that trial failed
    (it does not count; the storage keeps the finished ones) and ends the search by raising TrainingCancelled."""
    import optuna

    if settings.trials < 1:
        raise IPAdapterError(f"A search needs at least 1 trial, got {settings.trials}: give --trials 1 or more.")
    if base.preview_every == 0:
        raise IPAdapterError("A search judges trials at their preview rounds: turn previews on (preview_every).")
    base.validate()  # the settings every trial shares, refused before the first trial
    if objective.note:
        log.warning("%s", objective.note)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study = open_study(settings, objective)
    for item in settings.enqueue:
        tried = item if isinstance(item, Tried) else Tried(dict(item))
        study.enqueue_trial(dict(tried.values), user_attrs={TRIED: tried.label} if tried.label else None,
                            skip_if_exists=True)

    def run_trial(trial) -> float:
        values = space.suggest(trial)
        config = space.config(base, values)
        name = f"trial_{trial.number:03d}"
        pruned: list[int] = []

        def hook(event: RunEvent) -> None:
            if progress is not None:
                progress(event)
            value = objective.round_value(event.round) if event.phase == PREVIEWED else None
            if value is not None:
                trial.report(value, event.step)
                if trial.should_prune():
                    pruned.append(event.step)
                    raise TrainingCancelled(f"trial {trial.number} pruned by the search (its {objective.name} "
                                            "was behind the other trials' at this step)")

        limit = memory.too_big(study, config.batch_size)
        if limit is not None:  # not trained: a batch this size or smaller ran out of memory in an earlier trial
            trial.set_user_attr(memory.NOTE, f"batch size {config.batch_size} is not below {limit}, which did not "
                                             "fit in memory")
            raise optuna.TrialPruned()
        start = time.perf_counter()
        try:
            result = train_trial(config, folder / f"{name}.safetensors", folder / name, hook)
        except TrainingDiverged as exc:  # a learning rate too high for the data: the worst of results, not an error
            trial.set_user_attr(DIVERGED, str(exc).split(":", 1)[0])
            trial.set_user_attr("seconds", time.perf_counter() - start)
            log.warning("Trial %d diverged (%s): it is pruned and the search goes on.", trial.number,
                        trial.user_attrs[DIVERGED])
            raise optuna.TrialPruned() from None
        except Exception as exc:
            if not memory.is_out_of_memory(exc):
                raise
            memory.release_memory()
            if config.batch_size <= space.smallest("batch_size", config.batch_size):
                raise IPAdapterError(f"Trial {trial.number} ran out of memory at batch size {config.batch_size}, the "
                                     "smallest the search may draw: lower --resolution, turn on "
                                     "--gradient-checkpointing, or allow a smaller batch size.") from None
            memory.note_too_big(study, config.batch_size)
            trial.set_user_attr(memory.NOTE, f"batch size {config.batch_size} ran out of memory")
            log.warning("Trial %d ran out of memory at batch size %d: the search goes on with smaller batches.",
                        trial.number, config.batch_size)
            raise optuna.TrialPruned() from None
        previews = result.report.get("previews") or {}
        trial.set_user_attr("run_dir", str(result.run_dir))
        trial.set_user_attr("adapter", str(folder / f"{name}.safetensors"))
        trial.set_user_attr("steps", result.steps_done)
        trial.set_user_attr("seconds", time.perf_counter() - start)
        trial.set_user_attr("best_step", previews.get("best_step"))
        if pruned:
            log.info("Trial %d pruned after step %d.", trial.number, pruned[0])
            raise optuna.TrialPruned()
        if result.cancelled:  # Ctrl-C or a cancel from the caller: not a result; the search stops
            raise TrainingCancelled()
        value = objective.value(result.report)
        if value is None:
            raise IPAdapterError(f"Trial {trial.number} ran no preview round with a {objective.name}: give "
                                 "enough steps for a round (or a smaller --preview-every).")
        log.info("Trial %d: %s -> %s %s%s.", trial.number, values, objective.name, objective.format(value),
                 f" (best step {previews['best_step']})" if previews.get("best_step") else "")
        return value

    def write_page() -> None:
        try:
            write_search_page(folder, study, space, objective)
        except (OSError, IPAdapterError) as exc:  # the page is a view: a full disk must not end the search
            log.warning("Could not write the search page in %s (%s); the search goes on.", folder, exc)

    def enough(study, trial) -> None:
        write_page()
        if trial_done is not None:
            trial_done(study, trial)
        if finished(study) >= settings.trials:
            study.stop()

    if finished(study) >= settings.trials:
        log.info("The study %s already has %d finished trials: nothing to run.", settings.study_name, finished(study))
        return study
    try:
        # `enough` stops this process once the study (all its processes together) has its trials; no n_trials bound,
        # since a trial whose batch did not fit in memory does not count
        study.optimize(run_trial, n_trials=None, timeout=settings.timeout, callbacks=[enough],
                       catch=(), gc_after_trial=True)
    except KeyboardInterrupt:
        write_page()
        raise TrainingCancelled() from None
    except TrainingCancelled:
        write_page()
        raise
    return study
