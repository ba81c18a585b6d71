"""`ipadapter-train search`: trials of ordinary training runs with settings drawn from a search space, judged by
held-out preview scores (api/search.py, search/); the best trial's adapter to --out, a page and a rerun command."""
from __future__ import annotations

import argparse
import contextlib
import logging
import re
from pathlib import Path
from typing import Any

from .progress import _tqdm, training_progress
from .training import _add_train_args, _config_from_args, _cpu_allocator, _preview_source

log = logging.getLogger("ipadapter_train")

SEARCH_EXAMPLES = """examples:
  ipadapter-train search --images my_photos/ --base-model sd15.safetensors --image-encoder clip_vision/ \\
      --clip clip-vit-large-patch14/ --out my_adapter.safetensors --trials 12
  # your own ranges, a time limit, the study in a file (Ctrl-C, then the same command continues it):
  ipadapter-train search ... --space space.toml --timeout 2h --storage sqlite:///search.db
  # more machines on one study: the same command on each, with a database server's URL
  ipadapter-train search ... --storage postgresql://user:password@dbhost/searches

A space file is TOML, a table per setting; each replaces that setting's default range, and any other number or
word setting of training may be added (see search/space.py):
  [learning_rate]
  low = 1e-5
  high = 3e-4
  log = true
  [max_steps]
  low = 100
  high = 600
  step = 50
  [variant]
  choices = ["base", "plus"]
  [batch_size]
  value = 2          # fixed: not searched

A training setting given on the command line (--lr, --max-steps, --variant, --batch-size, --drop, ...) is fixed
for every trial instead of searched.
"""

# a TrainConfig field (or the space's `drop`) -> (the train command's flag, the argparse attribute)
FLAGS = {"learning_rate": ("--lr", "lr"), "max_steps": ("--max-steps", "max_steps"),
         "variant": ("--variant", "variant"), "batch_size": ("--batch-size", "batch_size"),
         "drop": ("--drop", "drop"), "weight_decay": ("--weight-decay", "weight_decay"),
         "epochs": ("--epochs", "epochs"), "seed": ("--seed", "seed"), "resolution": ("--resolution", "resolution"),
         "random_crop": ("--random-crop", "random_crop"), "flip": ("--flip", "flip"),
         "buckets": ("--buckets", "buckets"), "gradient_checkpointing": ("--gradient-checkpointing",
                                                                         "gradient_checkpointing"),
         "checkpoint_every": ("--checkpoint-every", "checkpoint_every"), "mixed_precision": ("--precision",
                                                                                            "precision"),
         "preview_every": ("--preview-every", "preview_every"), "preview_size": ("--preview-size", "preview_size"),
         "preview_steps": ("--preview-steps", "preview_steps"), "keep": ("--keep", "keep"),
         "early_stop": ("--early-stop", "early_stop"), "validation": ("--no-validation", "validation")}
PATHS = (("--images", "images"), ("--base-model", "base_model"), ("--image-encoder", "image_encoder"),
         ("--clip", "clip"), ("--preview-images", "preview_images"), ("--preview-prompts", "preview_prompts"),
         ("--prompt", "prompt"), ("--device", "device"))
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def timeout_seconds(text: str) -> float:
    """--timeout: seconds, or a number with s, m, h or d ("90m", "2h", "1.5h")."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time: give seconds or a number with s, m, h or d, "
                                         "like 90m or 2h")
    return float(match.group(1)) * UNITS[match.group(2) or "s"]


def quote(arg: str) -> str:
    """An argument as a shell on Windows, macOS or Linux reads it: bare when plain, else in double quotes."""
    return arg if re.fullmatch(r"[\w@%+=:,./\\-]+", arg) else '"' + arg.replace('"', '\\"') + '"'


def rerun_command(args: argparse.Namespace, settings: dict[str, Any], out: str) -> str:
    """The `train` command that reruns the best trial: the search's files and fixed settings, the trial's values
    (exactly: a float as Python writes it back)."""
    words = ["ipadapter-train", "train"]
    for flag, attr in PATHS:
        value = getattr(args, attr, None)
        if value is not None:
            words += [flag, str(value)]
    words += ["--out", out]
    given = {name: getattr(args, attr) for name, (_, attr) in FLAGS.items() if getattr(args, attr, None) is not None}
    for name, value in {**given, **settings}.items():
        if name not in FLAGS:
            log.info("The best trial's %s = %s has no train flag: set it in the Python API's TrainConfig.",
                     name, value)
            continue
        flag = FLAGS[name][0]
        if name == "validation":  # the train command's flag turns it off
            words += [] if value else [flag]
        elif isinstance(value, bool):
            words += [flag] if value else []
        else:
            words += [flag, repr(value) if isinstance(value, float) else str(value)]
    return " ".join(quote(w) for w in words)


class SearchBars:
    """The search's progress: a bar over the trials (the best figure so far after it) and each trial's training bar
    (`progress.training_progress`) while it runs."""

    def __init__(self, trials: int, objective) -> None:
        self.stack = contextlib.ExitStack()
        self.outer = self.stack.enter_context(_tqdm("search", "trial"))
        self.outer.total = trials
        self.objective = objective
        self.inner_stack: contextlib.ExitStack | None = None
        self.inner = None
        self.trials = 0

    def event(self, event: Any) -> None:
        """The running trial's progress hook."""
        if self.inner is None:
            self.inner_stack = contextlib.ExitStack()
            self.trials += 1
            self.inner = self.inner_stack.enter_context(training_progress(f"trial {self.trials}"))
        self.inner(event)

    def trial_done(self, study: Any, trial: Any) -> None:
        """After each trial: close its bar, count it, show the best so far."""
        self._close_inner()
        from ..search.study import finished

        self.outer.n = finished(study)
        try:
            best = self.objective.format(study.best_value)
        except ValueError:  # no finished trial yet
            best = "-"
        self.outer.set_postfix_str(f"best {best}", refresh=False)
        self.outer.refresh()

    def _close_inner(self) -> None:
        if self.inner_stack is not None:
            self.inner_stack.close()
        self.inner_stack = self.inner = None

    def close(self) -> None:
        """Close every bar."""
        self._close_inner()
        self.stack.close()


def _space(args: argparse.Namespace):
    """The space file's (or the default) space, with each setting given on the command line fixed."""
    from ..search.space import Setting, load_space

    space = load_space(Path(args.space) if args.space else None)
    fixed = []
    for setting in space.settings:
        attr = FLAGS.get(setting.name, (None, None))[1]
        value = getattr(args, attr, None) if attr else None
        if value is not None and not setting.fixed:
            fixed.append(Setting(setting.name, value=value))
            log.info("%s is fixed at %s (given on the command line), not searched.", setting.name, value)
    return space.with_settings(fixed)


def _tried(text: str, space: Any, config: Any):
    """--try: "defaults" (the base settings' values of the searched settings) or name=value pairs."""
    from ..search.study import Tried

    if text.strip() == "defaults":
        return Tried(space.values_of(config), "defaults")
    return Tried(space.parse_values(text), text.strip())


def summary_lines(study: Any, space: Any, objective: Any, folder: Path, out: Path, rerun: str | None) -> list[str]:
    """The search's summary: a line per trial, the best one, where its files are, and its rerun command."""
    from ..search.trials import best_row, setting_text, trial_rows

    rows = trial_rows(study)
    names = space.searched()
    lines = [f"search: {len(rows)} trial(s) in {folder}, judged by the {objective.name}"]
    for r in rows:
        values = ", ".join(f"{n}={setting_text(r.settings.get(n))}" for n in names)
        figure = r.outcome(objective)
        took = f", {r.steps} steps, {r.seconds:.0f} s" if r.seconds is not None else ""
        lines.append(f"  trial {r.number:3d}{f' ({r.label})' if r.label else ''}: {values} -> {figure}{took}")
    best = best_row(rows, objective)
    if best is not None:
        lines.append(f"best: trial {best.number}, {objective.format(best.value)}; its adapter is {out} (run folder "
                     f"{folder / best.name})")
        for r in rows:
            if r.label and r.number != best.number:  # the settings tried first, such as the defaults, to compare
                lines.append(f"  against the {r.label} (trial {r.number}): {r.outcome(objective)}")
    lines.append(f"search page: {folder / 'search.html'}")
    if rerun:
        lines.append(f"rerun the best settings:\n  {rerun}")
    return lines


def cmd_search(args: argparse.Namespace) -> int:
    from ..api.search import search_adapter, search_folder
    from ..errors import TrainingCancelled
    from ..search.objective import objective_for
    from ..search.study import SearchSettings
    from .training import PREVIEW_DEFAULT

    _cpu_allocator(args.device)
    out = Path(args.out)
    folder = Path(args.folder) if args.folder else search_folder(out)
    space = _space(args)  # a bad space file is refused before any model loads
    config = _config_from_args(args)
    if config.preview_every in (0, None):
        config.preview_every = PREVIEW_DEFAULT
    if args.clip and args.keep is None:
        config.keep = "best"  # the trial's adapter is the one its figure was measured on
    tried = tuple(_tried(text, space, config) for text in args.try_first or ())  # refused before models load
    storage = args.storage or f"sqlite:///{(folder / 'search.db').resolve().as_posix()}"
    folder.mkdir(parents=True, exist_ok=True)
    previews = _preview_source(args)
    objective = objective_for(previews.scorer is not None)
    settings = SearchSettings(trials=args.trials, storage=storage, study_name=args.study_name,
                              timeout=args.timeout, seed=args.search_seed, prune=not args.no_prune,
                              enqueue=tried)
    bars = SearchBars(args.trials, objective)
    try:
        study = search_adapter(args.images, args.base_model, args.image_encoder, out, config, settings, space,
                               previews, folder, bars.event, args.device, args.overwrite, bars.trial_done)
    except TrainingCancelled:
        bars.close()
        log.warning("Search stopped; its finished trials are kept in %s: run the same command to continue it.",
                    storage)
        return 130
    finally:
        bars.close()
    from ..search.trials import best_row, trial_rows

    best = best_row(trial_rows(study), objective)
    rerun = None
    if best is not None:  # the trial's own keep: "best" when it was judged by its best scored round
        fixed = {st.name: st.value for st in space.settings if st.fixed}  # the space file's fixed values too
        rerun = rerun_command(args, {**fixed, **best.settings, "keep": config.keep},
                              str(out.with_name(out.stem + "-rerun" + out.suffix)))
    print("\n".join(summary_lines(study, space, objective, folder, out, rerun)))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `search` subcommand to the parser."""
    p = sub.add_parser("search", help="search training settings (learning rate, steps, variant, batch, dropout) by "
                       "held-out preview scores, on Optuna", epilog=SEARCH_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Each trial is an ordinary training run (its own run folder, report and previews) "
                       "with settings drawn from the search space; trials are judged by the held-out preview score "
                       "(--clip; without it, the held-out validation loss), and one clearly worse than the others "
                       "at a preview round is stopped there (pruned). The best trial's adapter is written to --out, "
                       "the others stay in <out>-search/, beside search.html.")
    p.add_argument("--images", required=True, help="folder of images (.txt captions or data.json)")
    p.add_argument("--base-model", required=True, help="SD1.5 or SDXL checkpoint, file or diffusers folder")
    p.add_argument("--image-encoder", required=True, help="CLIP vision .safetensors file or transformers folder")
    p.add_argument("--out", required=True, help="the best trial's adapter (.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--prompt", help="one caption for every image")
    g = p.add_argument_group("search")
    g.add_argument("--trials", type=int, default=12, help="finished (or pruned) trials the study should have, "
                   "counting those of earlier runs and other processes on the same storage (default 12)")
    g.add_argument("--space", metavar="FILE", help="a TOML space file that fixes or widens settings (see below)")
    g.add_argument("--storage", metavar="URL", help="an Optuna storage URL: sqlite:///search.db on one machine, a "
                   "database server's URL across machines (default: search.db in the search folder)")
    g.add_argument("--study-name", default="ipadapter-search", help="the study's name in the storage")
    g.add_argument("--timeout", type=timeout_seconds, help="stop starting trials after this long: seconds, or 90m, "
                   "2h (the running trial finishes)")
    g.add_argument("--search-seed", type=int, default=0, help="the sampler's seed (default 0)")
    g.add_argument("--no-prune", action="store_true", help="never stop a trial early")
    g.add_argument("--try", dest="try_first", action="append", metavar="SETTINGS",
                   help="settings to try first, as their own trial: \"defaults\" (the training defaults, or the "
                        "flags given), or name=value pairs such as \"learning_rate=1e-4,variant=plus\" (the others "
                        "are drawn); may be given more than once; the summary compares the best with them")
    g.add_argument("--folder", help="where the trials' runs and search.html go (default <out>-search/)")
    _add_train_args(p)
    p.set_defaults(func=cmd_search)
