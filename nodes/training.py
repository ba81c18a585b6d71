"""What the Train node does, apart from its schema: turn graph inputs into the core's samples and
config, plan the run and train it through the core's front door (`ipadapter_train.api`: `plan_run`, `train`) on the
ComfyUI back end, and shape the outputs.

On cancel the trainer stops at the next step (or the next sampling step of a preview round) and this returns
the adapter trained so far (the run's report says `cancelled`). Each run keeps its files (adapter, report.json,
loss.png, checkpoints, previews/, scores.json, previews.html) in `output/ipadapter_train/<run>`: ComfyUI's output
directory survives a restart, its temp directory does not.

Previews (the core's `previews/sources.py`) render on the graph's own MODEL, CLIP and VAE through `ComfyBackend`; the
scorer is the Score node's cached CLIP model, so a run loads no second copy of anything.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

import comfy.model_management
import folder_paths

from ..ipadapter_train.api import (PREVIEW_BUDGET, RANDOM_MODELS_NOTE, FitWords, IPAdapter, IPAdapterError,
                                   PreviewSource, Progress, RunEvent, RunHooks, Sample, TrainConfig, TrainingCancelled,
                                   TrainResult, cancelled_note, plan_run, train)
from .comfy_backend import ComfyBackend, ComfyImageEncoder
from .images import pils_to_tensor, tensor_to_pils
from .queue_checks import ENCODER_FIX, GIVEN_ENCODER, INIT_VARIANT
from .run_reporter import RunReporter

log = logging.getLogger(__name__)

RUNS_FOLDER = "ipadapter_train"  # under ComfyUI's output directory
MAX_NODE_CHARS = 40  # of a node id in a run folder's name
# The Train node's validation setting -> TrainConfig fields. "full" is the core's default (8 images x 4
# timesteps = 32 UNet calls); "quick" makes 8 calls, a rough figure for a fraction of the time.
VALIDATION_MODES: dict[str, dict[str, Any]] = {
    "off": {"validation": False},
    "quick": {"validation": True, "validation_max_images": 4, "validation_timesteps": (300, 700)},
    "full": {"validation": True},
}
NO_SCORER = "none"  # the scorer combo's first entry: previews are not scored
# How a refusal of init_adapter names things: the node's inputs, the words its queue check uses (queue_checks.py)
INIT_WORDS = FitWords(source="init_adapter", encoder=GIVEN_ENCODER, model="this MODEL", encoder_fix=ENCODER_FIX,
                      variant=INIT_VARIANT)
# the node's preview_every: 0 = auto (up to config.PREVIEW_ROUNDS_AUTO rounds, within the budget of previews/rounds.py),
# -1 = off
PREVIEWS_AUTO, PREVIEWS_OFF = 0, -1


def split_captions(captions: str, count: int) -> list[str]:
    """One caption per line for `count` images; a single line (or nothing) is used for all of them."""
    lines = (captions or "").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    while len(lines) > count and lines[-1].strip() == "":
        lines.pop()  # a trailing newline is not an extra caption
    lines = [line.strip() for line in lines]
    if len(lines) == 1:
        return lines * count
    if len(lines) != count:
        raise IPAdapterError(f"Got {len(lines)} caption lines for {count} images: give one caption per line, in "
                             "image order, or a single line for all images.")
    return lines


def image_names(names: str | None, count: int) -> list[str]:
    """The images' names for the run's records: Load Training Images' `names` (one per line), else (nothing
    connected, or a list that does not fit: a log line says why) image_0000.png, image_0001.png, ..."""
    fallback = [f"image_{i:04d}.png" for i in range(count)]
    if not names:
        return fallback
    lines = [line.strip() for line in names.replace("\r\n", "\n").split("\n")]
    while len(lines) > count and not lines[-1]:
        lines.pop()
    if len(lines) != count or not all(lines) or len(set(lines)) != count:
        log.warning("image_names has %d line(s) (or blank or repeated ones) for %d images: the images are named "
                    "image_0000.png ... in the run's records instead.", len(lines), count)
        return fallback
    return lines


def samples_from_images(images: torch.Tensor, captions: str, names: str | None = None) -> list[Sample]:
    """IMAGE [N,H,W,C] + captions (+ the images' file names, one per line) -> the core's samples, named by
    `image_names` in the run's records (held-out previews, report)."""
    if images is None or images.ndim != 4 or images.shape[0] == 0:
        raise IPAdapterError("No training images: connect Load Training Images (or any IMAGE batch) to images.")
    pictures = tensor_to_pils(images)
    texts = split_captions(captions, len(pictures))
    return [Sample(path=Path(n), image=p, caption=c)
            for n, p, c in zip(image_names(names, len(pictures)), pictures, texts)]


def validation_settings(mode: str) -> dict[str, Any]:
    """TrainConfig fields for the node's validation setting (off, quick, full)."""
    if mode not in VALIDATION_MODES:
        raise IPAdapterError(f"Unknown validation setting {mode!r}: use one of {', '.join(VALIDATION_MODES)}.")
    return dict(VALIDATION_MODES[mode])


def preview_every_setting(preview_every: int) -> int | str:
    """The node's preview_every (-1 off, 0 auto, N steps) -> the core's (0 off, "auto", N)."""
    every = int(preview_every)
    if every < PREVIEWS_OFF:
        raise IPAdapterError(f"preview_every {every} is not usable: give -1 (off), 0 (auto) or a number of steps.")
    return 0 if every == PREVIEWS_OFF else "auto" if every == PREVIEWS_AUTO else every


def split_prompts(text: str | None) -> list[str] | None:
    """Preview prompts, one per non-empty line; None when there is none (the references' captions are used)."""
    lines = [line.strip() for line in (text or "").replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return [line for line in lines if line] or None


def preview_source(images: torch.Tensor | None, prompts: str | None, scorer: Any = None) -> PreviewSource:
    """The node's preview inputs -> the core's PreviewSource (None fields: the run chooses, see `plan_previews`).

    Preview images are named preview_0000.png ... in the run's records; they have no captions, so without
    preview prompts they are previewed image only.
    """
    samples = None
    if images is not None:
        if images.ndim != 4 or images.shape[0] == 0:
            raise IPAdapterError("preview_images is empty: connect an IMAGE batch of one or more pictures, or "
                                 "leave it unconnected to preview held-out training images.")
        samples = [Sample(path=Path(f"preview_{i:04d}.png"), image=p, caption="")
                   for i, p in enumerate(tensor_to_pils(images))]
    return PreviewSource(images=samples, prompts=split_prompts(prompts), scorer=scorer)


def check_preview_settings(preview_every: int, scorer_name: str, keep_best: bool) -> None:
    """Refuse keep_best without scored previews, in one sentence naming the node's inputs, before any work."""
    if keep_best and int(preview_every) == PREVIEWS_OFF:
        raise IPAdapterError("keep_best picks the best-scored preview round, but preview_every is -1 (off): set "
                             "it to 0 (auto) or a number of steps.")
    if keep_best and scorer_name == NO_SCORER:
        raise IPAdapterError("keep_best needs scored previews: pick a CLIP model in scorer (models/clip_scorers "
                             "or models/clip).")


def make_run_dir(node_id: str, prefix: str = "run") -> Path:
    """Create a fresh run folder `output/ipadapter_train/run-<date>-<time>-node<id>` and return it (the search
    node's: `search-...`, with `prefix` "search").

    The name holds only letters, digits and '-' (a subgraph node's id "12:5" becomes "12-5"), so it is a
    valid folder name on Windows too; a second run in the same second gets a "-2" suffix. A node id is the
    client's text: a long one (a 300-digit id) is cut to its start and a hash of the whole, so the name stays
    far below the 255 bytes a file system allows.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    node = re.sub(r"[^A-Za-z0-9]+", "-", node_id).strip("-") or "x"
    if len(node) > MAX_NODE_CHARS:
        node = f"{node[:MAX_NODE_CHARS - 13]}-{hashlib.sha256(node_id.encode()).hexdigest()[:12]}"
    base = Path(folder_paths.get_output_directory()) / RUNS_FOLDER
    base.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        path = base / (f"{prefix}-{stamp}-node{node}" + (f"-{n}" if n > 1 else ""))
        try:
            path.mkdir()  # exist_ok=False: two runs never share a folder
            return path
        except FileExistsError:
            n += 1


def train_in_graph(model: Any, clip: Any, vae: Any, clip_vision: Any, samples: list[Sample], config: TrainConfig,
                   node_id: str, prompt_id: str, init_adapter: IPAdapter | None = None,
                   workflow_id: str | None = None, client_id: str | None = None,
                   previews: PreviewSource | None = None,
                   random_weights: bool = False, run_dir: Path | None = None, adapter_out: Path | None = None,
                   hook: Progress | None = None, trial: dict[str, Any] | None = None) -> tuple[IPAdapter, TrainResult]:
    """Train on the graph's models; return the adapter (fp32, CPU, `.metadata` set) and the core's result.

    `random_weights`: the models are stand-ins (random-weight files, see model_origin.py); the adapter's
    metadata, report.json, the summary, the previews and their scores say so, as a CLI run on them does.

    `workflow_id` (the id of the editor workflow that queued the prompt) and `client_id` (the page that
    queued it) go into the run's events: every page with that workflow open draws the run on its Train node.

    The search node's trials (nodes/search.py) also give: `run_dir` (a folder under ComfyUI's output directory,
    made here; default a fresh `make_run_dir`), `adapter_out` (default `<run_dir>/adapter.safetensors`), `hook` (the
    search's progress hook, called after the node's own for every event; a `TrainingCancelled` it raises stops the
    run as a cancel does, and the run's note says "pruned after step N") and `trial` (which trial this is, sent in the
    run's events: see run_reporter.RunReporter).
    """
    # ordinary tensors, not inference ones: the back end's schedule and state, the copy of init_adapter that trains
    with torch.inference_mode(False):
        backend = ComfyBackend(model, clip, vae)
        encoder = ComfyImageEncoder(clip_vision)
        # The core decides the run once, before any work or folder: the model family's resolution (0 on the node =
        # 512 SD1.5, 1024 SDXL), the settings checked, the images held out for previews (1 or 2 of 5+ when none are
        # given), the steps, the preview rounds, the validation calls, and init_adapter checked against the MODEL and
        # CLIP_VISION.
        plan = plan_run(config, samples, previews=previews, init_adapter=init_adapter, models=(backend, encoder),
                        fit_words=INIT_WORDS)
    if run_dir is None:
        run_dir = make_run_dir(node_id)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
    plan = plan.with_paths(run_dir, adapter_out or run_dir / "adapter.safetensors")
    subfolder = run_dir.relative_to(Path(folder_paths.get_output_directory())).as_posix()
    reporter = RunReporter(node_id, prompt_id, plan.total, len(plan.samples), plan.validation_calls,
                           plan.validation_steps, workflow_id, client_id, plan.rounds, subfolder,
                           random_weights or bool(getattr(previews and previews.scorer, "random_weights", False)),
                           trial=trial)
    pruned: list[int] = []  # the step after which `hook` stopped the run

    def progress(event: RunEvent) -> None:
        reporter.progress(event)  # first: a cancel is the user's, and the chart shows the event
        if hook is not None:
            try:
                hook(event)
            except TrainingCancelled:
                pruned.append(event.step)
                raise

    hooks = RunHooks(progress=progress if hook is not None else reporter.progress,
                     metadata={"dataset_images": len(plan.samples), "trained_with": "ComfyUI node pack",
                               "random_weights": bool(random_weights)})
    cancelled, failed, result = False, True, None
    try:
        with torch.inference_mode(False):
            result = train(plan, backend, encoder, hooks)
        cancelled, failed = result.cancelled, False
    except comfy.model_management.InterruptProcessingException:
        cancelled, failed = True, False  # cancelled before the first step: the prompt stops, nothing was trained
        raise
    finally:
        note = result.report.get("cancelled_note") if result is not None and cancelled else None
        if pruned and not reporter.cancel_requested:
            note = f"pruned after step {pruned[0]}"
        reporter.finish(cancelled, failed, note)
        _remove_if_empty(run_dir)
    adapter = result.adapter.eval().requires_grad_(False)
    adapter.metadata = result.metadata
    return adapter, result


def _remove_if_empty(run_dir: Path) -> None:
    """A run that stopped before writing anything leaves no empty folder behind in output/."""
    try:
        run_dir.rmdir()
    except OSError:  # not empty (the run's files, or a checkpoint of a failed run): keep what is there
        pass


def preview_grids(result: TrainResult) -> torch.Tensor:
    """The run's preview grids, oldest first, as an IMAGE batch; one small picture that says why when there are
    none (previews off, or the run stopped before its first round)."""
    previews = result.report.get("previews")
    if not previews:
        return pils_to_tensor([notice_image("Previews were off (preview_every -1): no grids.")])
    pictures = []
    for grid in previews.get("grids") or []:
        with Image.open(result.run_dir / grid) as image:
            pictures.append(image.convert("RGB"))
    if not pictures:
        if not (previews.get("schedule") or {}).get("rounds", 1):
            return pils_to_tensor([notice_image(f"auto planned no preview round: over the {PREVIEW_BUDGET:.0%} "
                                                "budget (see the report).", width=448)])
        return pils_to_tensor([notice_image(f"No preview round ran: the run stopped after {result.steps_done} "
                                            "step(s).")])
    width, height = max(p.width for p in pictures), max(p.height for p in pictures)
    if any(p.size != (width, height) for p in pictures):  # one batch needs one size: pad on white
        padded = []
        for p in pictures:
            canvas = Image.new("RGB", (width, height), "white")
            canvas.paste(p, (0, 0))
            padded.append(canvas)
        pictures = padded
    return pils_to_tensor(pictures)


def notice_image(text: str, width: int = 384, height: int = 64) -> Image.Image:
    """A small white picture with one line of text (what an IMAGE output shows when it has nothing else)."""
    image = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(image).text((10, height // 2 - 6), text, fill=(40, 40, 40))
    return image


def preview_lines(rep: dict[str, Any]) -> list[str]:
    """The summary's lines about previews: the grids, held-out images, the best round and what was kept."""
    previews = rep.get("previews")
    if not previews:
        return ["Previews off."]
    grids = previews.get("grids") or []
    lines = [f"Previews: {len(grids)} grid(s) in previews/ (previews.html shows them over the steps)."]
    schedule = previews.get("schedule") or {}
    if schedule.get("why"):
        lines.append(f"Preview schedule: {schedule['why']}")
    if previews.get("held_out"):
        lines.append(f"Held out of training for the previews: {', '.join(previews['held_out'])}.")
    elif previews.get("references"):
        lines.append(f"Preview references: {', '.join(previews['references'])}.")
    if previews.get("best_step") is not None:
        label = " (random-weight figures)" if previews.get("random_weights") else ""
        lines.append(f"Best preview: step {previews['best_step']}, {previews['best_score']:.1f}%{label}.")
    if rep.get("kept"):
        lines.append(f"Kept the best step's adapter: {rep['kept']['why']} The last step's is "
                     f"{Path(rep['kept']['last_adapter']).name}.")
    if rep.get("stopped_early"):
        lines.append(f"Training {rep['stopped_early']}.")
    return lines


def report_text(result: TrainResult) -> str:
    """A short summary for the canvas, then the full report.json."""
    rep = result.report
    if result.cancelled:  # the core's words, as in the adapter's metadata and report.json
        lines = [f"Partial adapter: {cancelled_note(result.steps_done, result.total_steps)}."]
    else:
        lines = [f"Trained: {result.steps_done} of {result.total_steps} steps."]
    if rep.get("random_weights"):
        lines.insert(0, RANDOM_MODELS_NOTE)
    if result.losses:
        tail = result.losses[-min(10, len(result.losses)):]
        lines.append(f"Loss: first {result.losses[0]:.4f}, mean of the last {len(tail)} {sum(tail) / len(tail):.4f}.")
    if rep.get("seconds_per_step"):
        lines.append(f"{rep['seconds_per_step']:.3f} s per step on {rep.get('device')}.")
    gain = rep.get("conditioning_gain") or {}
    if gain.get("gain") is not None:
        lines.append(f"Conditioning gain {gain['gain']:+.5f} over {gain.get('images')} images x "
                     f"{len(gain.get('timesteps') or [])} timesteps (positive = the adapter uses the image).")
    elif gain.get("note"):
        lines.append(f"Conditioning gain: {gain['note']}.")
    elif not rep.get("config", {}).get("validation", True):
        lines.append("Validation off: no conditioning gain.")
    elif not result.cancelled:
        lines.append("Validation cancelled: no conditioning gain (the adapter is complete).")
    lines.extend(preview_lines(rep))
    lines.append(f"Run folder (adapter, report.json, loss.png): {result.run_dir}")
    return "\n".join(lines) + "\n\n" + json.dumps(rep, indent=2, default=str)
