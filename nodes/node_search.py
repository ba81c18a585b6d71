"""Search IP-Adapter Settings: a small hyperparameter search on the graph's own models (the core's Optuna search,
each trial a Train run), returning the best trial's adapter."""
from __future__ import annotations


from comfy_api.latest import io
from comfy_execution.utils import get_executing_context

from ..ipadapter_train.api import LIMITS, IPAdapterError, TrainConfig
from . import runs
from .folders import scorer_choices, scorer_path, shown
from .images import pils_to_tensor
from .io_types import CATEGORY, IPAdapterTrain
from .model_origin import stand_in_models
from .node_score import _load as load_scorer  # the Score node's cache: one CLIP model loaded for all nodes
from .node_train import _client_id, _ids, _workflow_id
from .queue_checks import queued_refusal
from .search import (VARIANTS, check_ranges, report_text, search_in_graph, search_space, trials_table)
from .training import NO_SCORER, preview_source, samples_from_images


class SearchIPAdapterSettings(io.ComfyNode):
    """Trains `trials` adapters with settings drawn from the given ranges (Optuna's TPE sampler), judges each by
    its held-out preview rounds (the scorer's CLIP score, or without one the held-out validation loss), stops
    trials that fall clearly behind at a round (pruned), and returns the best trial's adapter.

    Every trial shows on the node as a Train run does (loss chart, ETA, latest preview grid), under a line per
    trial with its settings and figure. Cancel stops the running trial within a step and returns the best finished
    trial's adapter (or fails in one sentence when none finished).
    """

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IPAdapterTrain_Search",
            display_name="Search IP-Adapter Settings",
            category=CATEGORY,
            description="Try several training settings on the loaded checkpoint (each trial is a Train run), judge "
                        "them by held-out preview rounds, and return the best trial's adapter with a table of "
                        "the trials. Cancel returns the best finished trial's adapter.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL to train against (SD1.5 or SDXL), from Load Checkpoint. "
                                                "It stays frozen."),
                io.Clip.Input("clip", tooltip="The CLIP text encoder of the same checkpoint: it encodes the captions."),
                io.Vae.Input("vae", tooltip="The VAE of the same checkpoint: it encodes the training images."),
                io.ClipVision.Input("clip_vision", tooltip="The image encoder the adapters read, from Load CLIP "
                                                          "Vision; use the same one with Apply IP-Adapter later."),
                io.Image.Input("images", tooltip="The training images (a batch), e.g. from Load Training Images. "
                                                 "With 5 or more, 1 (2 from 10) is held out to judge the trials."),
                io.String.Input("captions", force_input=True,
                                tooltip="One caption per line in image order, or a single line for all images."),
                io.Int.Input("trials", default=6, min=1, max=1000,
                             tooltip="How many trials (training runs) to finish, pruned ones included; each costs "
                                     "up to steps_high steps."),
                io.Int.Input("steps_low", default=100, min=1, max=100000,
                             tooltip="The fewest optimizer steps a trial draws (equal to steps_high: fixed)."),
                io.Int.Input("steps_high", default=400, min=1, max=100000,
                             tooltip="The most optimizer steps a trial draws."),
                io.Float.Input("learning_rate_low", default=1e-5, min=1e-7, max=1.0, step=1e-6, round=False,
                               tooltip="The lowest AdamW learning rate a trial draws (on a log scale; equal to "
                                       "learning_rate_high: fixed). The reference recipe uses 0.0001."),
                io.Float.Input("learning_rate_high", default=1e-3, min=1e-7, max=1.0, step=1e-6, round=False,
                               tooltip="The highest AdamW learning rate a trial draws."),
                io.Combo.Input("variant", options=list(VARIANTS), default="search",
                               tooltip="search: each trial draws base or plus. base or plus: every trial trains "
                                       "that variant."),
                io.String.Input("batch_sizes", default="1, 2",
                                tooltip=f"The batch sizes a trial draws from, separated by commas "
                                        f"({LIMITS['batch_size'][0]} to {LIMITS['batch_size'][1]}); one number "
                                        "fixes it."),
                io.Int.Input("resolution", default=0, min=0, max=LIMITS["resolution"][1], step=8,
                             tooltip="Training resolution in pixels for every trial: 0 = the model's default (512 "
                                     "SD1.5, 1024 SDXL); else a multiple of 8, at least 64."),
                io.Int.Input("seed", default=42, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Seed of every trial's random draws and of the search's sampler."),
                io.Int.Input("preview_every", default=100, min=1, max=100000,
                             tooltip="A preview round every N steps of a trial and at its end: the rounds judge "
                                     "the trials and let the search stop weak ones early."),
                io.Combo.Input("scorer", options=[NO_SCORER, *scorer_choices()], default=NO_SCORER,
                               tooltip="A full CLIP model (models/clip_scorers or models/clip) that scores each "
                                       "round's previews: trials are judged by that score and keep their best "
                                       "round's adapter. none: judged by the held-out validation loss instead."),
                io.Image.Input("preview_images", optional=True,
                               tooltip="Reference images that judge the trials. Unconnected: held-out training "
                                       "images (or the first training image with fewer than 5)."),
                io.String.Input("preview_prompts", default="", multiline=True, optional=True,
                                tooltip="Prompts for the previews, one per line; empty = the references' captions."),
                io.String.Input("image_names", force_input=True, optional=True,
                                tooltip="The images' file names, one per line (Load Training Images' names): the "
                                        "trials' records name held-out images by them."),
            ],
            outputs=[
                IPAdapterTrain.Output(display_name="adapter",
                                      tooltip="The best trial's adapter (usable by Apply IP-Adapter or Save)."),
                io.Image.Output(display_name="table",
                                tooltip="The trials as a table: settings, figure, steps and time, the best shaded."),
                io.String.Output(display_name="report",
                                 tooltip="A summary (objective, best settings, each trial, the search folder), "
                                         "then the trials as JSON."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.extra_pnginfo, io.Hidden.prompt],
        )

    @classmethod
    def validate_inputs(cls, steps_low=None, steps_high=None, learning_rate_low=None, learning_rate_high=None,
                        batch_sizes=None, resolution=None, scorer=None) -> bool | str:
        """When the graph is queued, refuse ranges whose low end is above the high end, unusable batch sizes or
        resolution, and a scorer that is not one of the menu's."""
        if scorer is not None and scorer != NO_SCORER and scorer not in scorer_choices():
            return (f"No CLIP scorer named {shown(scorer)} in models/clip_scorers or models/clip: pick one of the "
                    f"scorer menu's entries (press R to refresh it), or {NO_SCORER}.")
        try:
            check_ranges(steps_low, steps_high, learning_rate_low, learning_rate_high, batch_sizes)
            if resolution is not None:
                TrainConfig(resolution=int(resolution) or None).validate()
        except IPAdapterError as exc:
            return str(exc)
        return queued_refusal() or True

    @classmethod
    def fingerprint_inputs(cls, **_inputs) -> int:
        """How many searches of this node were cancelled or failed: after a cancel, the next Run searches afresh
        instead of ComfyUI reusing the cancelled search's result (as Train does)."""
        context = get_executing_context()
        return runs.stopped_runs(str(context.node_id)) if context is not None else 0

    @classmethod
    def execute(cls, model, clip, vae, clip_vision, images, captions, trials, steps_low, steps_high,
                learning_rate_low, learning_rate_high, variant, batch_sizes, resolution, seed, preview_every,
                scorer=NO_SCORER, preview_images=None, preview_prompts="", image_names=None) -> io.NodeOutput:
        scorer = scorer or NO_SCORER
        space = search_space(steps_low, steps_high, learning_rate_low, learning_rate_high, variant, batch_sizes)
        samples = samples_from_images(images, captions, image_names)
        has_scorer = scorer != NO_SCORER
        # validation off: the trials are judged by their preview rounds; the searched fields are set per trial
        base = TrainConfig(resolution=int(resolution) or None, seed=seed % (1 << 63), preview_every=int(preview_every),
                           keep="best" if has_scorer else "last", validation=False, max_steps=int(steps_low))
        base.validate()
        source = preview_source(preview_images, preview_prompts,
                                load_scorer(scorer_path(scorer)) if has_scorer else None)
        node_id, prompt_id = _ids(cls.hidden)
        stand_ins = stand_in_models(getattr(cls.hidden, "prompt", None), node_id)
        adapter, rows, objective, folder, stopped = search_in_graph(
            model, clip, vae, clip_vision, samples, base, space, int(trials), source, node_id, prompt_id,
            _workflow_id(cls.hidden), _client_id(), random_weights=bool(stand_ins))
        random_figures = bool(stand_ins) or bool(getattr(source.scorer, "random_weights", False))
        table = pils_to_tensor([trials_table(rows, objective, random_figures)])
        return io.NodeOutput(adapter, table, report_text(rows, objective, folder, int(trials), stopped,
                                                         random_figures))
