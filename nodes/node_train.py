"""Train IP-Adapter: trains an adapter on the MODEL, CLIP, VAE and CLIP_VISION the graph already loaded."""
from __future__ import annotations

from comfy_api.latest import io
from comfy_execution.utils import get_executing_context

from ..ipadapter_train.api import LIMITS, PREVIEW_BUDGET, PREVIEW_ROUNDS_AUTO, IPAdapterError, TrainConfig, plot_losses
from .folders import scorer_choices, scorer_path, shown
from .images import pils_to_tensor
from .io_types import CATEGORY, IPAdapterTrain
from .model_origin import stand_in_models
from .node_score import _load as load_scorer  # the Score node's cache: one CLIP model loaded for both nodes
from . import runs
from .queue_checks import queued_refusal
from .training import (NO_SCORER, PREVIEWS_AUTO, PREVIEWS_OFF, VALIDATION_MODES, check_preview_settings,
                       preview_every_setting, preview_grids, preview_source, report_text, samples_from_images,
                       train_in_graph, validation_settings)

# What previews cost, for the tooltip: the lead's measurement (BENCHMARKS.md, "Previews").
PREVIEW_COST = "about 15% of a default SD1.5 run on 2 CPU cores (14.7% measured, BENCHMARKS.md)"
PREVIEW_STEPS = TrainConfig.preview_steps  # the core's default sampling steps per preview image


def _ids(hidden) -> tuple[str, str]:
    """(node id, prompt id) of the running node; empty strings when called outside a prompt."""
    context = get_executing_context()
    node = getattr(hidden, "unique_id", None) or (context.node_id if context else None)
    prompt = context.prompt_id if context else None
    if prompt is None:
        prompt = getattr(getattr(runs.PromptServer, "instance", None), "last_prompt_id", None)
    return str(node or ""), str(prompt or "")


def _client_id() -> str | None:
    """Client id of the page that queued the running prompt (ComfyUI sets it on the server per prompt)."""
    return getattr(getattr(runs.PromptServer, "instance", None), "client_id", None)


def _workflow_id(hidden) -> str | None:
    """Id of the editor workflow that queued the prompt (the frontend sends it in extra_pnginfo), if any."""
    info = getattr(hidden, "extra_pnginfo", None)
    workflow = info.get("workflow") if isinstance(info, dict) else None
    wid = workflow.get("id") if isinstance(workflow, dict) else None
    return str(wid) if wid else None


class TrainIPAdapter(io.ComfyNode):
    """Trains image_proj + to_k_ip/to_v_ip with the core's loop on the graph's own (frozen) models.

    Cancel (the Cancel button or POST /interrupt) stops within one step (or one sampling step of a preview
    round); the node then returns the adapter trained so far instead of failing, so the rest of the graph
    (Save, Apply) still runs with it. A cancel while the images are still being encoded ends the prompt as
    interrupted: nothing is trained.

    Previews (on by default: up to `PREVIEW_ROUNDS_AUTO` rounds spread over the run, as many as the core's budget
    allows, `previews/rounds.py`) render a fixed grid with the adapter as it is, on the graph's own MODEL, CLIP and VAE;
    the node shows the latest grid under its loss chart and returns all of them as its `previews` output.
    """

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IPAdapterTrain_Train",
            display_name="Train IP-Adapter",
            category=CATEGORY,
            description="Train an IP-Adapter on the loaded checkpoint (no second copy; LoRAs on MODEL stay "
                        "applied). Cancel returns the adapter trained so far and the graph continues with it "
                        "(while the images are still being encoded, it stops the prompt: nothing is trained yet).",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL to train against (SD1.5 or SDXL), from Load "
                                                "Checkpoint (LoRAs already applied to it stay applied). It stays "
                                                "frozen; the adapter is for its family."),
                io.Clip.Input("clip", tooltip="The CLIP text encoder of the same checkpoint: it encodes the captions."),
                io.Vae.Input("vae", tooltip="The VAE of the same checkpoint: it encodes the training images."),
                io.ClipVision.Input("clip_vision", tooltip="The image encoder the adapter reads, from Load CLIP "
                                                          "Vision; use the same one with Apply IP-Adapter later."),
                io.Image.Input("images", tooltip="The training images (a batch), e.g. from Load Training Images."),
                io.String.Input("captions", force_input=True,
                                tooltip="One caption per line in image order, or a single line for all images."),
                io.Combo.Input("variant", options=["base", "plus"], default="base",
                               tooltip="base: 4 tokens from the CLIP image embedding. plus: 16 tokens from a "
                                       "Resampler over CLIP's penultimate hidden states (more detail, slower)."),
                io.Int.Input("steps", default=50, min=1, max=100000,
                             tooltip="Optimizer steps to train."),
                io.Float.Input("learning_rate", default=1e-4, min=1e-7, max=1.0, step=1e-6, round=False,
                               tooltip="AdamW learning rate; the reference recipe uses 0.0001."),
                io.Int.Input("batch_size", default=1, min=LIMITS["batch_size"][0], max=LIMITS["batch_size"][1],
                             tooltip="Images per step; each step draws them from the shuffled set."),
                io.Int.Input("resolution", default=0, min=0, max=LIMITS["resolution"][1], step=8,
                             tooltip="Training resolution in pixels: 0 = the model's default (512 SD1.5, 1024 "
                                     "SDXL); else a multiple of 8, at least 64. Images are resized so their "
                                     "short side is this and centre-cropped (with buckets: about this many "
                                     "pixels at each image's own shape)."),
                io.Int.Input("seed", default=42, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Seed of every random draw (batches, noise, timesteps, dropout)."),
                io.Int.Input("checkpoint_every", default=0, min=0, max=100000,
                             tooltip="Write a resumable checkpoint to the run folder every N steps; 0 = off."),
                io.Combo.Input("validation", options=list(VALIDATION_MODES), default="quick",
                               tooltip="After training, measure the conditioning gain (does the adapter use the "
                                       "image?). quick: 4 images x 2 timesteps (8 UNet calls); full: 8 images x "
                                       "4 timesteps (32 calls, about as long as 32 steps); off: skip it."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute the UNet's activations in the backward pass instead of keeping "
                                         "them: less GPU memory for large resolutions or batches, about 30% slower "
                                         "steps. Same weights either way. Needed for SDXL on a CPU with a bf16/fp16 "
                                         "MODEL (ComfyUI casts each layer to fp32 as it runs, and without "
                                         "checkpointing those copies are kept: 20 GB instead of 14 GB)."),
                io.Boolean.Input("buckets", default=False,
                                 tooltip="Aspect-ratio buckets: each image trains at the bucket nearest its own "
                                         "shape (about resolution x resolution pixels, e.g. 1216x832 at 1024) "
                                         "instead of a centre-cropped square, so wide and tall images keep their "
                                         "whole picture. A batch holds images of one bucket."),
                IPAdapterTrain.Input("init_adapter", optional=True,
                                     tooltip="Optional adapter to fine-tune (from Load IP-Adapter or another "
                                             "Train node); small data sets should fine-tune a pretrained one."),
                io.Int.Input("preview_every", default=PREVIEWS_AUTO, min=PREVIEWS_OFF, max=100000, optional=True,
                             tooltip="Preview grids while training (each reference x each prompt at adapter "
                                     f"weights 0, 0.5 and 1, fixed seeds, {PREVIEW_STEPS} sampling steps at half the "
                                     "model's default size, at most the training size): 0 = auto (up to a round after "
                                     f"each 1/{PREVIEW_ROUNDS_AUTO} of the run, as many as keep within "
                                     f"{PREVIEW_BUDGET:.0%} of the run, none in a run too short for one; the report "
                                     "says which and why), N = every N steps and at the "
                                     f"end, -1 = off. Cost: {PREVIEW_COST}."),
                io.Image.Input("preview_images", optional=True,
                               tooltip="Reference images for the previews. Unconnected: with 5 or more training "
                                       "images, 1 (2 from 10 images) is held out of training and previewed; with "
                                       "fewer, the first training image is previewed."),
                io.String.Input("preview_prompts", default="", multiline=True, optional=True,
                                tooltip="Prompts for the previews, one per line; empty = the references' captions "
                                        "(preview_images have none: they are previewed image only)."),
                io.Combo.Input("scorer", options=[NO_SCORER, *scorer_choices()], default=NO_SCORER, optional=True,
                               tooltip="A full CLIP model (models/clip_scorers or models/clip, as Score with CLIP "
                                       "uses) to score every preview round: CLIP-I against the reference, CLIP-T "
                                       "against the prompt, a percent and a grade. none: previews are not scored."),
                io.Boolean.Input("keep_best", default=False, optional=True,
                                 tooltip="Return (and save in the run folder) the adapter of the best-scored preview "
                                         "round instead of the last step's (kept beside it as "
                                         "adapter-last.safetensors). Needs a scorer and previews on."),
                # last, so graphs saved before it existed keep their links
                io.String.Input("image_names", force_input=True, optional=True,
                                tooltip="The images' file names, one per line (Load Training Images' names): the "
                                        "previews and the report name held-out images by them. Unconnected: "
                                        "image_0000.png, image_0001.png, ..."),
            ],
            outputs=[
                IPAdapterTrain.Output(display_name="adapter",
                                      tooltip="The trained adapter (usable by Apply IP-Adapter without saving)."),
                io.Image.Output(display_name="loss_plot",
                                tooltip="The loss curve as an image, for saving or for API users (the node "
                                        "itself shows it live in its chart)."),
                io.String.Output(display_name="report", tooltip="A summary and the run's report.json."),
                io.Image.Output(display_name="previews",
                                tooltip="Every preview grid of the run, oldest first (the node shows the latest "
                                        "live); with previews off, one small picture that says so."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.extra_pnginfo, io.Hidden.prompt],
        )

    @classmethod
    def validate_inputs(cls, resolution, scorer=None) -> bool | str:
        """When the graph is queued, refuse a resolution the trainer cannot use (0 means the model's default), a
        scorer that is not one of the menu's, and what `queue_checks.gate` found in the whole graph (an
        init_adapter that does not fit the variant or the encoder of Load CLIP Vision)."""
        if scorer is not None and scorer != NO_SCORER and scorer not in scorer_choices():
            # ComfyUI 0.3.75 does not check a V3 menu's value, and the name becomes a path when previews run
            return (f"No CLIP scorer named {shown(scorer)} in models/clip_scorers or models/clip: pick one of the "
                    f"scorer menu's entries (press R to refresh it), or {NO_SCORER}.")
        if resolution is not None:  # None: fed by another node, checked when Train runs
            try:
                _config(resolution=resolution).validate()
            except IPAdapterError as exc:
                return str(exc)
        return queued_refusal() or True

    @classmethod
    def fingerprint_inputs(cls, **_inputs) -> int:
        """How many runs of this node were cancelled or failed: ComfyUI keys its output cache on this, so
        after a cancel the next Run with the same settings trains afresh instead of reusing the partial
        adapter (see runs.note_stopped_run). ComfyUI calls this with the node's id as the executing context."""
        context = get_executing_context()
        return runs.stopped_runs(str(context.node_id)) if context is not None else 0

    @classmethod
    def execute(cls, model, clip, vae, clip_vision, images, captions, variant, steps, learning_rate, batch_size,
                resolution, seed, checkpoint_every, validation="quick", gradient_checkpointing=False,
                buckets=False, init_adapter=None, preview_every=PREVIEWS_AUTO, preview_images=None,
                preview_prompts="", scorer=NO_SCORER, keep_best=False, image_names=None) -> io.NodeOutput:
        preview_every = PREVIEWS_AUTO if preview_every is None else int(preview_every)
        scorer = scorer or NO_SCORER
        check_preview_settings(preview_every, scorer, bool(keep_best))
        samples = samples_from_images(images, captions, image_names)
        # the settings and init_adapter are checked once, when the core plans the run (train_in_graph)
        config = _config(variant=variant, max_steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                         resolution=resolution, seed=seed % (1 << 63), checkpoint_every=checkpoint_every,
                         gradient_checkpointing=bool(gradient_checkpointing), buckets=bool(buckets),
                         preview_every=preview_every_setting(preview_every), keep="best" if keep_best else "last",
                         **validation_settings(validation))
        source = None
        if config.previews_on:
            source = preview_source(preview_images, preview_prompts,
                                    load_scorer(scorer_path(scorer)) if scorer != NO_SCORER else None)
        node_id, prompt_id = _ids(cls.hidden)
        stand_ins = stand_in_models(getattr(cls.hidden, "prompt", None), node_id)
        adapter, result = train_in_graph(model, clip, vae, clip_vision, samples, config, node_id, prompt_id,
                                         init_adapter, _workflow_id(cls.hidden), _client_id(), source,
                                         random_weights=bool(stand_ins))
        plot = pils_to_tensor([plot_losses(result.losses)])
        return io.NodeOutput(adapter, plot, report_text(result), preview_grids(result))


def _config(resolution: int, **fields) -> TrainConfig:
    """The core's config for the node's widgets: resolution 0 is None (the model family's default)."""
    return TrainConfig(resolution=int(resolution) or None, **fields)
