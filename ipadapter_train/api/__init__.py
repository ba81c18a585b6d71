"""The front door of the core: the one place the ComfyUI nodes import it from, and the CLI and bench/ call it through.

    from ipadapter_train.api import train_adapter
    from ipadapter_train.config import TrainConfig
    result = train_adapter("my_photos/", "sd15.safetensors", "clip_vision/", "my_adapter.safetensors",
                           TrainConfig(max_steps=50))

A run in two calls, on models a caller already has (the Train node's ComfyUI models, tests' random ones):

    plan = plan_run(config, samples, backend.family, paths=RunPaths(run_dir, out), previews=source)
    result = train(plan, backend, encoder, RunHooks(progress=on_event))   # on_event(RunEvent)

`plan_run` decides the run once, before any model work: the settings with the family's defaults, validated; the
images it trains on and those held out for previews; its steps, preview rounds and validation calls; a resume and
an adapter to fine-tune checked. `train` runs that plan; its one progress hook gets a `RunEvent` (phase, done,
total, the step's loss, the preview schedule for an ETA, a finished round) and may cancel.

Here: `runs.py` (plan, train, train from paths or from models in memory) and `use.py` (load, inspect, convert,
generate, score); the names below re-export those and the types and seams the nodes need (the adapter's attention
term for ComfyUI's attention patch, the file helpers Save writes with), so no node reaches past this package.
"""
from __future__ import annotations

# ground: settings, errors, model families, the adapter's layer table
from ..config import LIMITS, PREVIEW_ROUNDS_AUTO, TrainConfig
from ..errors import IPAdapterError, TrainingCancelled, TrainingDiverged
from ..families import FAMILIES, ModelFamily, family_of_comfy_unet, get_family
from ..layout import AdapterLayer, adapter_layers
# the adapter: its module, its decoupled attention term (what a back end's attention patch computes), its checks
from ..adapter.check import check_adapter_state
from ..adapter.ip_attention import IPState, attend, decoupled_term, image_kv
from ..adapter.module import IPAdapter, IPLayer
# files and images on disk
from ..models.image_encoders import adapter_reads, encoder_widths_of_shapes, mismatch_sentence
from ..models.random_init import RANDOM_MARK
from ..storage.common_size import to_common_size
from ..storage.data import IMAGE_EXTENSIONS, Sample, load_image, load_image_folder
from ..storage.output_lock import output_lock
from ..storage.safe_paths import is_absolute_anywhere, resolve_inside
from ..storage.weights_io import WeightFile, replace_file, temp_sibling
from ..storage.write_failures import remove_stale_temporaries
# a run: its plan, its progress events, its result
from ..previews.rounds import PREVIEW_BUDGET, PreviewPlan
from ..previews.sources import PreviewSource
from ..training.adapter_init import FitWords
from ..training.plan import (ENCODING, PREVIEWED, PREVIEWING, TRAINING, VALIDATING, Progress, RunEvent, RunHooks,
                             RunPaths, RunPlan, plan_run)
from ..training.report import RANDOM_MODELS_NOTE, plot_losses
from ..training.outputs import cancelled_note, last_path
from ..training.trainer import TrainResult, train
# a search: its space, its study, how its trials are judged and shown (the Search node runs it on its own trials)
from ..search.objective import Objective, judged_previews
from ..search.space import SearchSpace, Setting
from ..search.study import SearchSettings, run_search
from ..search.table_image import table_image
from ..search.trials import TrialRow, best_row, setting_text, trial_rows
from .runs import check_init_encoder, default_run_dir, train_adapter, train_in_memory
from .use import (GenerationSettings, Generator, ScoreReport, Scorer, convert_checkpoint, evaluate, format_report,
                  inspect_adapter, load_adapter_module, load_cases, load_generator, make_learned_world,
                  make_test_models, save_adapter, write_eval_files)

__all__ = [
    "LIMITS", "PREVIEW_ROUNDS_AUTO", "TrainConfig", "IPAdapterError", "TrainingCancelled", "TrainingDiverged",
    "FAMILIES", "ModelFamily", "family_of_comfy_unet", "get_family", "AdapterLayer", "adapter_layers",
    "check_adapter_state", "IPState", "attend", "decoupled_term", "image_kv", "IPAdapter", "IPLayer",
    "adapter_reads", "encoder_widths_of_shapes", "mismatch_sentence", "RANDOM_MARK", "to_common_size",
    "IMAGE_EXTENSIONS", "Sample", "load_image", "load_image_folder", "output_lock", "is_absolute_anywhere",
    "resolve_inside", "WeightFile", "replace_file", "temp_sibling", "remove_stale_temporaries",
    "PREVIEW_BUDGET", "PreviewPlan", "PreviewSource", "FitWords",
    "ENCODING", "PREVIEWED", "PREVIEWING", "TRAINING", "VALIDATING", "Progress", "RunEvent", "RunHooks", "RunPaths",
    "RunPlan", "plan_run", "RANDOM_MODELS_NOTE", "plot_losses", "TrainResult", "cancelled_note", "last_path", "train",
    "check_init_encoder", "default_run_dir", "train_adapter", "train_in_memory",
    "GenerationSettings", "Generator", "ScoreReport", "Scorer", "convert_checkpoint", "evaluate", "format_report",
    "inspect_adapter", "load_adapter_module", "load_cases", "load_generator", "make_learned_world",
    "make_test_models", "save_adapter", "write_eval_files",
    "Objective", "judged_previews", "SearchSpace", "Setting", "SearchSettings", "run_search", "setting_text",
    "table_image", "TrialRow", "best_row", "trial_rows",
]
