"""The search's front door: trials that are `train_adapter` runs on the user's files, the best one's adapter
written to `out` (search/study.py runs the study).

    study = search_adapter("photos/", "sd15.safetensors", "clip_vision.safetensors", "best.safetensors",
                           TrainConfig(preview_every=50, keep="best"), SearchSettings(trials=12),
                           previews=PreviewSource(held_out, prompts, Scorer.load(clip)))
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ..config import TrainConfig
from ..errors import IPAdapterError
from ..previews.sources import PreviewSource
from ..search.objective import judged_previews
from ..search.space import SearchSpace
from ..search.study import SearchSettings, TrialDone, run_search
from ..storage.weights_io import atomic_write
from ..training.plan import Progress
from .runs import train_adapter


def search_folder(out: Path) -> Path:
    """Where a search's trials go by default: `<out stem>-search/` beside the output."""
    return out.with_name(out.stem + "-search")


def search_adapter(images: str | Path, base_model: str | Path, image_encoder: str | Path, out: str | Path,
                   base: TrainConfig, settings: SearchSettings, space: SearchSpace = SearchSpace(),
                   previews: PreviewSource | None = None, folder: str | Path | None = None,
                   progress: Progress | None = None, device: str | None = None, overwrite: bool = False,
                   trial_done: TrialDone | None = None):
    """Search settings (`space`, around `base`) by held-out preview scores (without a scorer in `previews`: the
    held-out validation loss); each trial trains with `train_adapter` into `folder` (default `search_folder(out)`).
    The best trial's adapter is copied to `out`; returns the study."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise IPAdapterError(f"{out} already exists: give another --out, or --overwrite to replace it.")
    objective, previews = judged_previews(previews)
    folder = Path(folder) if folder is not None else search_folder(out)

    def train_trial(config: TrainConfig, adapter_out: Path, run_dir: Path, hook: Progress):
        return train_adapter(images, base_model, image_encoder, adapter_out, config, run_dir=run_dir, progress=hook,
                             device=device, overwrite=True, previews=previews)

    study = run_search(train_trial, space, base, folder, settings, progress, objective, trial_done)
    if not any(t.value is not None for t in study.get_trials(deepcopy=False)):
        raise IPAdapterError(f"No trial of the search finished (all were pruned or failed): see {folder}.")
    best = Path(study.best_trial.user_attrs["adapter"])
    atomic_write(out, lambda path: shutil.copyfile(best, path))
    return study
