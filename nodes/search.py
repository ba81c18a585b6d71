"""What the Search node does, apart from its schema: turn its ranges into the core's search space, run the core's
search (`ipadapter_train.search.study.run_search`) with each trial trained in the graph (`training.train_in_graph`,
the Train node's run, into the search's own folder), show the trials live on the node, and shape the outputs.

The search folder is `output/ipadapter_train/search-<date>-<time>-node<id>/`: `trial_NNN/` run folders (each with
what a Train run writes), `trial_NNN.safetensors`, and the core's `search.html`. Every trial is drawn on the node as
a Train run is (chart, ETA, latest grid: run_reporter.py), its events carrying which trial it is; after each trial the
node's table of trials (`ipadapter_train.search`, runs.search_update) lists each trial's settings and figure.

Cancel stops the running trial within a step; the node then returns the best finished trial's adapter, or fails
in one sentence when no trial finished.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import comfy.model_management
import folder_paths

from ..ipadapter_train.api import (RANDOM_MODELS_NOTE, IPAdapter, IPAdapterError, Objective, PreviewSource, Sample,
                                   SearchSettings, SearchSpace, Setting, TrainConfig, TrainingCancelled, TrialRow,
                                   best_row, judged_previews, load_adapter_module, run_search, setting_text,
                                   table_image, trial_rows)
from . import runs
from .training import make_run_dir, train_in_graph

log = logging.getLogger(__name__)

VARIANTS = ("search", "base", "plus")  # the node's variant menu: "search" draws base or plus per trial
SHORT = {"learning_rate": "lr", "max_steps": "steps", "batch_size": "batch", "drop": "drop", "variant": ""}


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """"1, 2" -> (1, 2): the batch sizes the trials draw from (one: fixed); one sentence when it is not a list of
    whole numbers from 1 to 64."""
    parts = [p for p in re.split(r"[\s,;]+", str(text or "").strip()) if p]
    if not parts or not all(p.isdigit() and 1 <= int(p) <= 64 for p in parts):
        raise IPAdapterError(f"batch_sizes {text!r} is not usable: give whole numbers from 1 to 64 separated by "
                             "commas, like 1, 2 (one number fixes it).")
    return tuple(dict.fromkeys(int(p) for p in parts))


def check_ranges(steps_low: int | None, steps_high: int | None, lr_low: float | None, lr_high: float | None,
                 batch_sizes: str | None) -> None:
    """Refuse a range whose low end is above its high end, or unusable batch sizes, in one sentence (values fed by
    another node are None: checked when the node runs)."""
    if steps_low is not None and steps_high is not None and int(steps_low) > int(steps_high):
        raise IPAdapterError(f"steps_low ({steps_low}) is above steps_high ({steps_high}): give low <= high (equal "
                             "fixes the steps).")
    if lr_low is not None and lr_high is not None and float(lr_low) > float(lr_high):
        raise IPAdapterError(f"learning_rate_low ({lr_low:g}) is above learning_rate_high ({lr_high:g}): give low <= "
                             "high (equal fixes the learning rate).")
    if batch_sizes is not None:
        parse_batch_sizes(batch_sizes)


def search_space(steps_low: int, steps_high: int, lr_low: float, lr_high: float, variant: str,
                 batch_sizes: str) -> SearchSpace:
    """The core's default space with the node's ranges in place (a range whose ends are equal, one batch size or a
    variant other than "search" is fixed); the condition dropout keeps the default range."""
    check_ranges(steps_low, steps_high, lr_low, lr_high, batch_sizes)
    if variant not in VARIANTS:
        raise IPAdapterError(f"Unknown variant {variant!r}: use one of {', '.join(VARIANTS)}.")
    sizes = parse_batch_sizes(batch_sizes)
    steps_low, steps_high, lr_low, lr_high = int(steps_low), int(steps_high), float(lr_low), float(lr_high)
    return SearchSpace().with_settings([
        Setting("learning_rate", lr_low, lr_high, log=True) if lr_low < lr_high
        else Setting("learning_rate", value=lr_low),
        Setting("max_steps", steps_low, steps_high, step=1) if steps_low < steps_high
        else Setting("max_steps", value=steps_low),
        Setting("variant", choices=("base", "plus")) if variant == "search" else Setting("variant", value=variant),
        Setting("batch_size", choices=sizes) if len(sizes) > 1 else Setting("batch_size", value=sizes[0]),
    ])


def settings_text(settings: dict[str, Any]) -> str:
    """A trial's settings in one short line: "lr 1.2e-04, steps 40, base, batch 1, drop 0.05"."""
    return ", ".join(f"{SHORT.get(k, k)} {setting_text(v)}".strip() for k, v in settings.items())


def row_text(row: TrialRow, objective: Objective, trials: int, index: int | None = None) -> str:
    """One trial as the node's table shows it: "trial 2/6: lr ..., steps 40, base -> 53.2%" (or pruned, running)."""
    head = f"trial {index if index is not None else row.number + 1}/{trials}"
    return f"{head}: {settings_text(row.settings)} -> {row.outcome(objective)}"


def search_state(rows: list[TrialRow], trials: int, objective: Objective, folder: str, done: bool = False,
                 running: dict[str, Any] | None = None, note: str | None = None) -> dict[str, Any]:
    """The node's table of trials (what `runs.search_update` records and sends): the finished, pruned and failed
    trials, then the running one (`running`: its `index` and `settings`), the best, and where the files are."""
    best = best_row(rows, objective)
    listed = [r for r in rows if r.state != "running"]
    items = [{"number": r.number, "state": r.state, "value": r.value, "text": row_text(r, objective, trials, i),
              "best": best is not None and r.number == best.number} for i, r in enumerate(listed, 1)]
    if running is not None and not done:
        items.append({"number": None, "state": "running", "value": None, "best": False,
                      "text": f"trial {running['index']}/{trials}: {settings_text(running['settings'])} -> running"})
    return {"trials": trials, "objective": objective.name, "rows": items, "done": done, "folder": folder,
            "best": None if best is None else {"number": best.number, "value": best.value,
                                               "text": objective.format(best.value)},
            "note": note}


def trial_settings(config: TrainConfig, space: SearchSpace) -> dict[str, Any]:
    """The searched settings' values in a trial's config (the condition dropout as one value)."""
    return {name: config.drop_text if name == "drop" else getattr(config, name) for name in space.searched()}


def search_in_graph(model: Any, clip: Any, vae: Any, clip_vision: Any, samples: list[Sample], base: TrainConfig,
                    space: SearchSpace, trials: int, source: PreviewSource, node_id: str, prompt_id: str,
                    workflow_id: str | None = None, client_id: str | None = None,
                    random_weights: bool = False) -> tuple[IPAdapter, list[TrialRow], Objective, Path, str | None]:
    """Run the search on the graph's models; return the best trial's adapter (loaded from its file, `.metadata`
    set), the trials' rows, the objective, the search folder, and the stop's words when it was cancelled."""
    objective, source = judged_previews(source)
    folder = make_run_dir(node_id, prefix="search")
    output = Path(folder_paths.get_output_directory())
    subfolder = folder.relative_to(output).as_posix()
    settings = SearchSettings(trials=int(trials), study_name=f"comfyui-{folder.name}", seed=int(base.seed) % (2**32))
    seen: dict[str, Any] = {"study": None, "started": 0}

    def update(done: bool = False, running: dict[str, Any] | None = None, note: str | None = None) -> None:
        rows = trial_rows(seen["study"]) if seen["study"] is not None else []
        runs.search_update(prompt_id, node_id, dict(search_state(rows, settings.trials, objective, subfolder, done,
                                                                 running, note),
                                                    workflow_id=workflow_id, client_id=client_id))

    def train_trial(config: TrainConfig, adapter_out: Path, run_dir: Path, hook):
        seen["started"] += 1
        running = {"index": _done_count(seen["study"]) + 1, "settings": trial_settings(config, space)}
        update(running=running)
        trial = {"number": int(run_dir.name.rsplit("_", 1)[-1]), "index": running["index"], "trials": settings.trials}
        _, result = train_in_graph(model, clip, vae, clip_vision, samples, config, node_id, prompt_id, None,
                                   workflow_id, client_id, source, random_weights=random_weights, run_dir=run_dir,
                                   adapter_out=adapter_out, hook=hook, trial=trial)
        return result

    def trial_done(study, _trial) -> None:
        seen["study"] = study
        update()

    stopped = None
    try:
        study = run_search(train_trial, space, base, folder, settings, objective=objective, trial_done=trial_done)
        seen["study"] = study
    except (TrainingCancelled, comfy.model_management.InterruptProcessingException):
        stopped = f"cancelled during trial {seen['started']} of {settings.trials}"
    except BaseException:
        runs.note_stopped_run(node_id)  # the next Run of the same settings searches afresh
        update(done=True, note="failed")
        raise
    rows = trial_rows(seen["study"]) if seen["study"] is not None else []
    if stopped:
        runs.note_stopped_run(node_id)
    update(done=True, note=stopped)
    best = best_row(rows, objective)
    if best is None:
        if stopped:
            raise IPAdapterError(f"The search was {stopped}, before any trial finished: there is no adapter to "
                                 "return.")
        raise IPAdapterError(f"No trial of the search finished (all were pruned or failed): see {folder}.")
    adapter = load_adapter_module(Path(best.adapter)).eval().requires_grad_(False)
    return adapter, rows, objective, folder, stopped


def _done_count(study) -> int:
    """Trials of `study` that ended (finished, pruned or failed); 0 before the first."""
    if study is None:
        return 0
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished())


def trials_table(rows: list[TrialRow], objective: Objective, random_weights: bool):
    """The trials' table (the core's `table_image`), with the random-weight note when the figures are such."""
    return table_image(rows, objective, note="Random-weight models: these figures say nothing about quality."
                       if random_weights else None)


def report_text(rows: list[TrialRow], objective: Objective, folder: Path, trials: int, stopped: str | None,
                random_weights: bool) -> str:
    """A short summary (the objective, the best trial and its settings, each trial, the folder), then the trials as
    JSON."""
    best = best_row(rows, objective)
    counts = {state: sum(1 for r in rows if r.state == state) for state in ("finished", "pruned", "failed")}
    lines = [RANDOM_MODELS_NOTE] if random_weights else []
    if stopped:
        lines.append(f"Search {stopped}: the adapter is the best finished trial's.")
    lines.append(f"Searched {trials} trial(s) by the {objective.name}: {counts['finished']} finished, "
                 f"{counts['pruned']} pruned" + (f", {counts['failed']} failed" if counts["failed"] else "") + ".")
    if objective.note:
        lines.append(objective.note)
    if best is not None:
        lines.append(f"Best: trial {best.number}, {objective.format(best.value)}"
                     + (f" (its best step {best.best_step})" if best.best_step else "")
                     + f": {settings_text(best.settings)}.")
    lines += [f"  {row_text(r, objective, trials, i)}" for i, r in enumerate(rows, 1)]
    lines.append(f"Search folder (search.html, trial_NNN/ runs, trial_NNN.safetensors): {folder}")
    return "\n".join(lines) + "\n\n" + json.dumps([asdict(r) for r in rows], indent=2, default=str)
