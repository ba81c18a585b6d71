"""The training loop, as one run in four phases:

    set_up   build the adapter (or take the plan's checked one to fine-tune), encode the images (and the
             previews' references and prompts) once, restore the checkpoint the plan accepted
    steps    (batch -> forward -> backward -> optimizer step -> progress event -> preview round when due ->
             checkpoint) x N; with scored previews, `early_stop` may end them
    finish   the last checkpoint, save the adapter (the best-scored step's with keep="best"), validate
    report   report.json and loss.png, and the `TrainResult`

It knows nothing of any UI: it runs the `RunPlan` it is given (training/plan.py, decided before the models
loaded), and progress and cancellation go through the hooks (`RunHooks`): one progress hook gets a `RunEvent` per
image encoded, step, preview sampling step and validation call, and may raise `TrainingCancelled`. What a step
draws is `training/batches.py`'s: a function of (seed, step, rank), so a run stopped and resumed draws exactly what
an uninterrupted run draws, and `training/checkpoint.py` needs to store no RNG state beyond the step.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn

from ..adapter.fileformat import file_metadata, save_adapter
from ..adapter.module import IPAdapter
from ..diffusion.backend import DiffusionBackend, ImageFeatureEncoder
from ..errors import IPAdapterError, TrainingCancelled, TrainingDiverged
from ..models.image_encoders import encoder_metadata
from ..previews.runner import BEST_FILE, PreviewRunner
from ..seeds import seed_of
from ..storage.write_failures import write_error
from .adapter_init import build_adapter, check_init_adapter
from .batches import batch_indices, make_batch
from .buckets import bucket_counts, image_buckets
from .checkpoint import CHECKPOINT_DIR, load_checkpoint, save_checkpoint
from .encoding import EncodedDataset, encode_dataset
from .outputs import cancelled_note, last_path
from .plan import ENCODING, PREVIEWED, PREVIEWING, TRAINING, VALIDATING, RunEvent, RunHooks, RunPlan, fingerprint
from .precision import make_accelerator
from .report import RunTimes, training_report, write_report
from .heldout_loss import planned_heldout_loss
from .validation import conditioning_gain

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run produced."""

    adapter: IPAdapter  # fp32, on CPU
    steps_done: int
    total_steps: int
    cancelled: bool
    losses: list[float]
    report: dict[str, Any]
    run_dir: Path
    out_path: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)  # what the adapter file holds (or would hold)


class _StepModule(nn.Module):
    """What DDP wraps: the adapter's parameters, with the frozen model reached through the backend."""

    def __init__(self, adapter: IPAdapter, backend: DiffusionBackend) -> None:
        super().__init__()
        self.adapter = adapter
        self.backend = backend  # a plain object, so the frozen UNet is never a registered submodule

    def forward(self, noisy: torch.Tensor, t: torch.Tensor, text: torch.Tensor, feats: torch.Tensor,
                added: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.backend.predict_noise(noisy, t, text, self.adapter.project(feats), added=added)


class TrainingRun:
    """One training run: `run()` is `set_up()`, `run_steps()`, `finish()`, `report()`.

    `plan` was decided before the models were loaded (`training.plan.plan_run`); one planned without a model family
    is completed for the back end's here. `accelerator` is made for the run unless given
    (`training.precision.make_accelerator`).
    """

    def __init__(self, backend: DiffusionBackend, encoder: ImageFeatureEncoder, plan: RunPlan,
                 hooks: RunHooks | None = None, accelerator=None) -> None:
        plan = plan.for_family(backend.family)
        if plan.paths is None:
            raise IPAdapterError("The run has no folder to write to: plan it with paths=, or give them with "
                                 "RunPlan.with_paths.")
        self.times = RunTimes()
        self.plan, self.backend, self.encoder = plan, backend, encoder
        self.config, self.samples, self.paths, self.total = plan.config, plan.samples, plan.paths, plan.total
        self.hooks = hooks or RunHooks()
        self.trained_on = {"family": backend.family.name, **plan.trained_on}  # state.json's "trained_on"
        self.accelerator = accelerator or make_accelerator(self.config, backend.device, backend.dtype)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        if self.world != plan.world:
            raise IPAdapterError(f"The run was planned for {plan.world} process(es) but runs on {self.world}: plan "
                                 "it with world= the number of processes.")
        self.main = self.accelerator.is_main_process
        self.buckets = image_buckets([s.image.size for s in self.samples], self.config)  # None: square crops
        self.done, self.losses, self.cancelled = 0, [], False
        self.adapter: IPAdapter | None = None
        self.data: EncodedDataset | None = None
        self.optimizer = self.step_module = None
        self.metadata: dict[str, Any] = {}
        self.files: dict[str, Path] = {}
        self.gain: dict[str, Any] | None = None
        self.last_checkpoint: tuple[int, Path] | None = None  # (step, folder) of the newest checkpoint on disk
        self.stopped_early: str | None = None
        self.preview = None if plan.previews is None else PreviewRunner(
            plan.previews, plan.rounds, plan.scorer, self.paths.run_dir, self.total,
            bool(self.hooks.metadata.get("random_weights", False)), backend.family.figures_label,
            backend.family.figures_note, planned_heldout_loss(plan))

    def run(self) -> TrainResult:
        """All four phases."""
        self.set_up()
        self.run_steps()
        self.finish()
        return self.report()

    def _tell(self, phase: str, done: int, total: int, **extra: Any) -> None:
        """Give the progress hook a `RunEvent` (main process only); what it raises goes to the caller."""
        if self.main and self.hooks.progress is not None:
            schedule = self.preview.plan if self.preview is not None else None
            self.hooks.progress(RunEvent(phase, done, total, self.done, schedule=schedule, **extra))

    def set_up(self) -> None:
        """Build the adapter, encode the images once, restore a resumed run's weights and optimizer."""
        config, backend = self.config, self.backend
        init = self.plan.init_adapter
        if init is not None and not isinstance(init, IPAdapter):  # a file, checked now that the models are here
            init = check_init_adapter(init, backend, self.encoder, config)
        self.adapter = build_adapter(backend, self.encoder, config, init).to(backend.device)
        # Recorded in the file, so a later mismatch names this encoder (read now: the encoder is released
        # after encoding).
        self.encoder_metadata = encoder_metadata(self.encoder.feature_width("base"), self.encoder.feature_width("plus"))
        t0 = time.perf_counter()
        self.data = encode_dataset(self.samples, backend, self.encoder, config,
                                   lambda done, total: self._tell(ENCODING, done, total))
        self.times.encode = time.perf_counter() - t0
        if self.preview is not None and self.main:  # the references and prompts, once
            self.preview.set_up(backend, self.encoder)
        if self.buckets is not None:
            log.info("Buckets (images per trained size): %s.",
                     ", ".join(f"{k}: {v}" for k, v in bucket_counts(self.buckets).items()))
        if self.hooks.after_encode is not None:
            self.hooks.after_encode()
        if config.gradient_checkpointing:
            backend.enable_gradient_checkpointing()
        optimizer = torch.optim.AdamW(self.adapter.parameters(), lr=config.learning_rate,
                                      weight_decay=config.weight_decay)
        if self.paths.resume is not None:
            state = load_checkpoint(self.paths.resume)
            self.adapter.load_state_dict(state.adapter)
            optimizer.load_state_dict(state.optimizer)
            self.done, self.losses = state.step, list(state.info.get("losses", []))
            self.last_checkpoint = (state.step, self.paths.resume.folder)
            if self.preview is not None:
                self.preview.restore(state.info.get("previews"), state.extra.get(BEST_FILE))
            log.info("Resumed from %s at step %d.", self.paths.resume.folder, state.step)
        self.step_module, self.optimizer = self.accelerator.prepare(_StepModule(self.adapter, backend), optimizer)

    def step(self, step: int) -> float:
        """Optimizer step number `step` (from 0); return its loss, averaged over the processes.

        Raises TrainingDiverged on a NaN or infinite loss, before the weights are touched.
        """
        config, backend, accelerator = self.config, self.backend, self.accelerator
        gen = torch.Generator().manual_seed(seed_of(config.seed, step, self.rank))
        indices = batch_indices(step, len(self.samples), config, self.rank, self.world, self.buckets)
        batch = make_batch(self.data, indices, gen, config, backend.alphas_cumprod)
        if self.hooks.control is not None:  # a control experiment's step (RunHooks.control)
            batch = self.hooks.control.alter(batch, gen, self.data)
        batch = {k: v.to(backend.device) for k, v in batch.items()}
        with accelerator.autocast():
            pred = self.step_module(batch["noisy"], batch["t"], batch["text"], batch["feats"], added_inputs(batch))
        loss = F.mse_loss(pred.float(), batch["noise"])
        loss_value = float(accelerator.gather(loss.detach().reshape(1)).mean())
        if not math.isfinite(loss_value):
            if self.last_checkpoint is not None:
                kept = (f"the last good checkpoint (step {self.last_checkpoint[0]}) in {self.last_checkpoint[1]} "
                        "is kept")
            else:
                kept = "no checkpoint was written before it"
            raise TrainingDiverged(f"The loss became {loss_value} at step {step + 1}: training stopped and {kept}; "
                                   "lower the learning rate or train in fp32/bf16.")
        accelerator.backward(loss)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value

    def run_steps(self) -> None:
        """Steps from the start (or the resumed step) to the total; a cancel or Ctrl-C ends them early."""
        config = self.config
        self.backend.attach(self.adapter)
        start = time.perf_counter()
        previews_before = self.preview.seconds if self.preview else 0.0
        try:
            for step in range(self.done, self.total):
                tick = time.perf_counter()
                loss = self.step(step)
                self.done = step + 1
                self.losses.append(loss)
                self.times.steps.append(time.perf_counter() - tick)
                if len(self.times.steps) == 1 and self.preview is not None:
                    self.preview.measured(self.times.steps[0])  # the events' ETA counts the rounds from now on
                if self._stop_requested(loss):
                    raise TrainingCancelled()
                if self.preview is not None and self.preview.due(self.done, self.total):
                    self.stopped_early = self._preview_round()
                # after the round, so a checkpoint holds the scores and best weights up to its step
                if config.checkpoint_every and self.done % config.checkpoint_every == 0 and self.done < self.total:
                    self.checkpoint()
                if self.stopped_early:
                    log.info("Training %s.", self.stopped_early)
                    break
        except (TrainingCancelled, KeyboardInterrupt) as stop:
            self.cancelled = True
            if isinstance(stop, TrainingCancelled) and str(stop):  # the hook said why (a search's pruner)
                log.info("Training stopped after %d of %d steps: %s.", self.done, self.total, stop)
            else:
                log.warning("Training cancelled after %d of %d steps; saving the adapter trained so far.",
                            self.done, self.total)
        finally:
            self.backend.detach()
            previews = (self.preview.seconds if self.preview else 0.0) - previews_before
            self.times.training = time.perf_counter() - start - previews  # steps plus checkpoints

    def _preview_round(self) -> str | None:
        """Render (and score) the preview round after the current step on the main process; the reason to stop
        early, or None (every process gets the same answer)."""
        stop = None
        if self.main:
            entry = self.preview.run(self.done, self.backend, self.adapter, self.accelerator.autocast,
                                     lambda done, total: self._tell(PREVIEWING, done, total))
            rendered = self.preview.last_round_calls
            self._tell(PREVIEWED, rendered, rendered, round=entry, grid=self.preview.last_grid)
            stop = self.preview.stop_reason()
        if self.world > 1:
            flag = torch.tensor([float(stop is not None)], device=self.backend.device)
            if self.accelerator.reduce(flag, "sum") > 0 and stop is None:
                stop = "stopped early (on the main process)"
        return stop

    def _stop_requested(self, loss: float) -> bool:
        """Tell the progress hook of the step; True when it cancelled, on any process."""
        stop = False
        try:
            self._tell(TRAINING, self.done, self.total, loss=loss)
        except TrainingCancelled:
            stop = True
        if self.world > 1:  # every process must leave the loop together, or the others hang in all-reduce
            flag = torch.tensor([float(stop)], device=self.backend.device)
            stop = bool(self.accelerator.reduce(flag, "sum") > 0)
        return stop

    def checkpoint(self, force: bool = False) -> None:
        """Write the resumable checkpoint of the steps done (when checkpoints are on, or `force`d); all
        processes wait."""
        if self.main and (self.config.checkpoint_every or force):
            info = {"config": self.config.to_dict(), "dataset": fingerprint(self.samples), "world_size": self.world,
                    "losses": self.losses, "trained_on": self.trained_on}
            if self.paths.out_path is not None:  # the file a resume of this run may replace (training/outputs.py)
                info["adapter"] = str(self.paths.out_path.resolve())
            extra = {}
            if self.preview is not None:
                info["previews"], extra[BEST_FILE] = self.preview.checkpoint_state()
            folder = self.paths.run_dir / CHECKPOINT_DIR
            with _reporting_write_errors(folder):
                save_checkpoint(self.paths.run_dir, self.done, self.adapter.state_dict(),
                                self.optimizer.state_dict(), info, extra)
            self.last_checkpoint = (self.done, folder)
        self.accelerator.wait_for_everyone()

    def finish(self) -> None:
        """The last checkpoint, the adapter file, and the conditioning gain (skipped after a cancel)."""
        config, backend = self.config, self.backend
        # A cancel always leaves a checkpoint, so the resume it offers works with checkpoints off too; and a
        # checkpoint already in the run folder (a resumed run's) is brought up to the last step, so that it
        # never holds fewer steps than the adapter beside it.
        self.checkpoint(force=self.cancelled or (self.paths.run_dir / CHECKPOINT_DIR).is_dir())
        self.adapter = self.accelerator.unwrap_model(self.step_module).adapter
        self.metadata = {**self.hooks.metadata, "steps": self.done, "training_config": config.to_dict(),
                         "base_model": backend.name, "image_encoder": self.encoder.name, **self.encoder_metadata}
        if self.cancelled:
            # a partial adapter says so in words wherever it goes (Save, Load, inspect), not only as a number
            self.metadata["cancelled_at_step"] = self.done
            self.metadata["cancelled"] = cancelled_note(self.done, self.total)
        if self.stopped_early:
            self.metadata["stopped_early"] = self.stopped_early
        if self.hooks.control is not None:
            self.metadata["control"] = self.hooks.control.note
        if self.main and self.paths.out_path is not None:
            if self._keeps_best():
                self._save_best()
            else:
                with _reporting_write_errors(self.paths.out_path):
                    self.files["adapter"] = save_adapter(self.adapter.state_dict(), self.paths.out_path,
                                                         self.metadata)
        t0 = time.perf_counter()
        if config.validation and not self.cancelled:
            self.gain = self._validate()
        self.times.validation = time.perf_counter() - t0

    def _keeps_best(self) -> bool:
        return self.config.keep == "best" and self.preview is not None and self.preview.best_state is not None

    def _save_best(self) -> None:
        """keep="best": the last step's adapter goes to `<out>-last.safetensors`, the best-scored step's to the
        output, and the run goes on (validation, the returned adapter) with the best one."""
        out = self.paths.out_path
        last = last_path(out)
        with _reporting_write_errors(last):
            self.files["last_adapter"] = save_adapter(self.adapter.state_dict(), last, self.metadata)
        best = self.preview.book.best
        self.adapter.load_state_dict(self.preview.best_state)
        self.metadata = {**self.metadata, "steps": best["step"], "kept": "best",
                         "best_score": round(best["score"], 4), "best_why": self.preview.book.why(),
                         "last_adapter": last.name}
        with _reporting_write_errors(out):
            self.files["adapter"] = save_adapter(self.adapter.state_dict(), out, self.metadata)
        log.info("%s Saved it as %s; the last step's adapter is %s.", self.preview.book.why(), out, last)

    def _validate(self) -> dict[str, Any] | None:
        config = self.config
        log.info("Validating: conditioning gain over %d image(s) x %d timestep(s), one UNet call each "
                 "(--no-validation skips it).", min(len(self.samples), config.validation_max_images),
                 len(config.validation_timesteps))
        self.backend.attach(self.adapter)
        try:
            return conditioning_gain(self.adapter, self.backend, self.data, config, self.accelerator.autocast,
                                     lambda done, total: self._tell(VALIDATING, done, total))
        except TrainingCancelled:
            log.warning("Validation cancelled; the adapter is saved, the report has no conditioning gain.")
            return None
        finally:
            self.backend.detach()

    def report(self) -> TrainResult:
        """Write report.json and loss.png (main process) and return the run's result."""
        out_path = self.paths.out_path
        run = {"random_weights": bool(self.hooks.metadata.get("random_weights", False)),
               "config": self.config.to_dict(), "steps": self.done, "total_steps": self.total,
               "cancelled": self.cancelled,
               "cancelled_note": cancelled_note(self.done, self.total) if self.cancelled else None,
               "losses": self.losses, "precision": self.accelerator.mixed_precision,
               "frozen_dtype": str(self.backend.dtype).replace("torch.", ""), "world_size": self.world,
               "buckets": bucket_counts(self.buckets) if self.buckets is not None else None,
               "conditioning_gain": self.gain, "base_model": self.backend.name, "image_encoder": self.encoder.name,
               "adapter": str(out_path) if out_path else None, "stopped_early": self.stopped_early,
               "previews": self.preview.report() if self.preview is not None else None,
               "preview_seconds": self.preview.seconds if self.preview is not None else 0.0}
        if self.backend.family.figures_note:  # the learned world's runs say what their figures are
            run["figures_note"] = self.backend.family.figures_note
        if self.hooks.control is not None:
            run["control"] = self.hooks.control.note
        if self._keeps_best():
            run["kept"] = {"step": self.preview.book.best["step"], "why": self.preview.book.why(),
                           "last_adapter": str(last_path(out_path))}
        report = training_report(run, self.times, self.config.batch_size * self.world, self.backend.device,
                                 self.hooks.report_extra)
        if self.main:
            with _reporting_write_errors(self.paths.run_dir / "report.json"):
                self.files.update(write_report(self.paths.run_dir, report, self.losses))
                if self.preview is not None and self.preview.interval:  # none when auto planned no round
                    self.preview.write_files(run["cancelled_note"])  # again, with the final loss curve
                    if (self.paths.run_dir / "previews.html").is_file():  # not after a failed write (a warning)
                        self.files["previews_page"] = self.paths.run_dir / "previews.html"
        return TrainResult(self.adapter.cpu(), self.done, self.total, self.cancelled, self.losses, report,
                           self.paths.run_dir, out_path, self.files, file_metadata(self.adapter.spec, self.metadata))


def added_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch's extra conditioning (pooled text, size/crop time_ids); backends of families without it ignore it."""
    return {k: batch[k] for k in ("pooled", "time_ids") if k in batch}


@contextlib.contextmanager
def _reporting_write_errors(path: Path):
    """Turn a failed write of `path` (full disk, no permission, read-only) into one sentence that says the
    previous file is intact (the writers in weights_io write a temp file and rename it, so it is)."""
    existed = path.exists()
    try:
        yield
    except (OSError, SafetensorError) as err:  # safetensors' own error carries the OS error in its text
        raise write_error(path, err, existed) from err


def train(plan: RunPlan, backend: DiffusionBackend, encoder: ImageFeatureEncoder, hooks: RunHooks | None = None,
          accelerator=None) -> TrainResult:
    """Run `plan` (`training.plan.plan_run`) on these models: save the adapter to `plan.paths.out_path` and write
    report.json/loss.png in `plan.paths.run_dir`; progress and cancellation through `hooks`."""
    return TrainingRun(backend, encoder, plan, hooks, accelerator).run()
