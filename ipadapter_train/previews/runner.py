"""A run's previews as the trainer sees them: when a round is due, render it, score it, write its files, and
keep the best step's weights.

Files in the run folder: `previews/step_NNNN.png` (one grid per round), `scores.json` (with a scorer) and
`previews.html` (previews over steps, their scores, the loss curve), each written atomically after every round.
A preview file that cannot be written (a full disk, no permission) is a warning, never the end of the run: the
previews are a view of training, and the steps, checkpoints and adapter matter more. A grid that was not written
is left out of the page and the report; the scores and the best weights are kept in memory all the same.
A checkpoint keeps the book of scores and the best weights (`checkpoint_state`), so a resumed run keeps its
best-so-far.

When rounds come is `previews/rounds.py`'s rule ("auto" keeps them within the previews' budget), decided with the
run's plan (`training.plan.plan_run`), before the models load.
Set-up encodes the references and prompts only; the weight-0 images (no adapter) are rendered in the first round,
with the adapter detached for them, so a run whose plan has no round spends nothing on previews, and the first
round's cost (its extra render included) is in the budget and the ETA from the first step on.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch

from ..adapter.module import IPAdapter
from ..diffusion.backend import DiffusionBackend, ImageFeatureEncoder
from ..errors import IPAdapterError
from ..scoring.scorer import grade
from ..storage.weights_io import atomic_write, atomic_write_text
from ..storage.write_failures import write_cause
from .grid import compose_grid
from .page import PAGE, write_page
from .rounds import PreviewPlan
from .scores import PreviewScorer, ScoreBook
from .sources import Previews

log = logging.getLogger(__name__)

PREVIEWS_DIR = "previews"
SCORES = "scores.json"
BEST_FILE = "best"  # the checkpoint's copy of the best weights: checkpoint/best.safetensors

Progress = Callable[[int, int], None]


class PreviewRunner:
    """Preview rounds of one run (see the module docstring): `plan` is when they come (`rounds.plan_preview_rounds`),
    `scorer` a `scoring.scorer.Scorer` or None."""

    def __init__(self, previews: Previews, plan: PreviewPlan, scorer: Any, run_dir: Path, total: int,
                 random_weights: bool = False, figures_label: str | None = None,
                 figures_note: str | None = None, heldout: Any = None) -> None:
        self.previews, self.config, self.run_dir, self.total = previews, previews.config, Path(run_dir), total
        self.plan = plan  # with the measured time of a step once there is one (`measured`)
        self.random_weights = random_weights or bool(scorer is not None and scorer.random_weights)
        self._scorer = scorer
        self.scorer: PreviewScorer | None = None
        # what every score says about itself: random-weight figures first, else the family's label (learned world)
        self.figures_label = "random-weight figures" if self.random_weights else figures_label
        self.figures_note = None if self.random_weights else figures_note  # the page says it at its top
        self.book = ScoreBook(scorer.name, self.random_weights, label=self.figures_label) \
            if scorer is not None else None
        self.best_state: dict[str, torch.Tensor] | None = None  # the best step's weights (CPU, fp32)
        # without a scorer a round may measure the held-out validation loss instead (a figure a search can judge
        # by): `heldout` is a training.heldout_loss.HeldOutLoss of the references, given by the trainer
        self.heldout = heldout if scorer is None else None
        self.heldout_losses: list[dict[str, Any]] = []  # {"step", "loss"}, in the order measured
        self.rounds: list[dict[str, Any]] = []  # {"step", "grid"}, in the order rendered
        self.seconds = 0.0  # all preview work: set-up (encoding, the weight-0 images) and every round
        self.set_up_seconds = 0.0
        self.round_seconds: list[float] = []  # the first round's includes the weight-0 images
        self.baseline_seconds = 0.0
        self.last_grid = None  # the newest grid image (the node shows it)
        self.last_round_calls = 0  # sampling steps of the newest round, all its renders together
        self.unwritten: list[str] = []  # preview files that could not be written (run-folder relative)

    @property
    def interval(self) -> int:
        """Steps between rounds (0: no round), as planned."""
        return self.plan.every if self.plan is not None else 0

    def due(self, step: int, total: int) -> bool:
        """Whether a round follows step `step` (counted from 1), as planned."""
        return self.plan is not None and self.plan.due(step, total)

    def measured(self, step_seconds: float) -> PreviewPlan | None:
        """The plan with the measured time of a step (for the ETA and the report)."""
        if self.plan is not None:
            self.plan = self.plan.with_step_seconds(step_seconds)
        return self.plan

    def set_up(self, backend: DiffusionBackend, encoder: ImageFeatureEncoder) -> None:
        """Encode the references and prompts once (nothing when the plan has no round); the weight-0 images are
        rendered in the first round."""
        if not self.plan.rounds:
            return
        t0 = time.perf_counter()
        self.previews.encode(backend, encoder)
        if self.heldout is not None:  # the same references: their CLIP features are not computed twice
            self.heldout.set_up(backend, encoder, self.previews.features)
        if self._scorer is not None:
            self.scorer = PreviewScorer(self._scorer, self.previews)
        self.set_up_seconds = time.perf_counter() - t0
        self.seconds += self.set_up_seconds
        log.info("Previews set up in %.1f s (the references and prompts encoded once); the weight-0 images come with "
                 "the first round, which the plan counts.", self.set_up_seconds)

    def restore(self, info: dict[str, Any] | None, best: dict[str, torch.Tensor] | None) -> None:
        """A resumed run's book and best weights, as its checkpoint kept them."""
        if info and self.book is not None and info.get("book"):
            self.book = ScoreBook.from_dict(info["book"])
            self.book.random_weights = self.book.random_weights or self.random_weights
        self.rounds = list((info or {}).get("rounds", []))
        self.heldout_losses = list((info or {}).get("heldout_losses", []))
        self.best_state = best

    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
        """(what state.json keeps of the previews, the best weights to store beside the checkpoint)."""
        return ({"book": self.book.to_dict() if self.book else None, "rounds": self.rounds,
                 "heldout_losses": self.heldout_losses}, self.best_state)

    def run(self, step: int, backend: DiffusionBackend, adapter: IPAdapter,
            autocast: Callable[[], ContextManager] | None = None, progress: Progress | None = None) -> dict[str, Any]:
        """Render (and score) the round after step `step`, write its files; return {"step", "grid", "score"?}.

        `progress(done, total)` counts the round's sampling steps, all its renders together (the first round's
        weight-0 images included), and may raise to stop the round at once."""
        t0 = time.perf_counter()
        baseline = 0 in self.config.preview_weights and self.previews.baseline is None
        total = (len(self.previews.adapter_weights) + baseline) * self.config.preview_steps
        done = 0

        def tick(_step: int, _steps: int) -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        if baseline:
            # the no-adapter images, once: with the adapter detached they are the plain model's exactly
            backend.detach()
            try:
                self.previews.render_baseline(backend, autocast, tick)
            finally:
                backend.attach(adapter)
            self.baseline_seconds = time.perf_counter() - t0
        images = self.previews.render(backend, adapter, autocast, tick)
        self.last_round_calls = done
        entry: dict[str, Any] = {"step": step, "grid": f"{PREVIEWS_DIR}/step_{step:04d}.png",
                                 "random_weights": self.random_weights}
        title = f"step {step}"
        if self.scorer is not None:
            score, cells = self.scorer.score(images)
            improved = self.book.add(step, entry["grid"], score, cells)
            if improved:
                self.best_state = {k: v.detach().float().cpu().clone() for k, v in adapter.state_dict().items()}
            entry.update(score=score, grade=grade(score), best_step=self.book.best["step"])
            title += f": {score:.1f}% ({entry['grade']})" + (" best so far" if improved else "")
            if self.figures_label:
                title += f", {self.figures_label}"
        elif self.heldout is not None and self.heldout.data is not None:
            loss = self.heldout.measure(adapter, backend, autocast)
            entry["heldout_loss"] = loss
            self.heldout_losses = [r for r in self.heldout_losses if r["step"] != step] + [{"step": step,
                                                                                           "loss": loss}]
            title += f": held-out loss {loss:.4f}"
        p = self.previews
        weights = list(images)
        grid = compose_grid(title, [p.references[c.reference].image for c in p.cells],
                            [f"{p.references[c.reference].path.name}: {p.prompts[c.prompt] or '(image only)'}"
                             for c in p.cells], weights, [images[w] for w in weights])
        written = self._write(entry["grid"], lambda: atomic_write(self.run_dir / entry["grid"],
                                                                   lambda path: grid.save(path, format="PNG")))
        self.last_grid = grid
        if written:  # the page and the report list only grids that are on disk
            self.rounds = [r for r in self.rounds if r["step"] != step] + [{"step": step, "grid": entry["grid"]}]
        else:
            entry["written"] = False
        self.write_files()
        self.round_seconds.append(time.perf_counter() - t0)
        self.seconds += self.round_seconds[-1]
        log.info("Preview after step %d: %s%s.", step, self.run_dir / entry["grid"],
                 f", score {entry['score']:.1f}%" if "score" in entry else
                 f", held-out loss {entry['heldout_loss']:.4f}" if "heldout_loss" in entry else "")
        return entry

    def write_files(self, cancelled: str | None = None) -> None:
        """scores.json (with a scorer) and previews.html, from what the rounds so far gave; `cancelled`: the
        run's "cancelled after N of M steps", which the page shows at its top."""
        scores = self.book.to_dict() if self.book is not None else None
        if scores is not None:
            self._write(SCORES, lambda: atomic_write_text(self.run_dir / SCORES, json.dumps(scores, indent=1)))
        self._write(PAGE, lambda: write_page(self.run_dir, sorted(self.rounds, key=lambda r: r["step"]),
                                             {**self.previews.describe(), "random_weights": self.random_weights,
                                              "figures_note": self.figures_note, "cancelled": cancelled},
                                             scores))

    def _write(self, name: str, write: Callable[[], Any]) -> bool:
        """Run one preview file's atomic write; a failure is a warning (see the module docstring). True if written."""
        try:
            write()
            return True
        except (OSError, IPAdapterError) as err:  # the atomic writers leave no partial file either way
            os_error = err if isinstance(err, OSError) else err.__cause__  # atomic_write wraps a PermissionError
            cause = write_cause(os_error) if isinstance(os_error, OSError) else str(err).rstrip(".")
            log.warning("Could not write the preview file %s (%s): training goes on, and its checkpoints and "
                        "adapter are still written.", self.run_dir / name, cause)
            if name not in self.unwritten:
                self.unwritten.append(name)
            return False

    def stop_reason(self) -> str | None:
        """Why the run stops early (`early_stop` rounds without a better score), or None to go on."""
        patience = self.config.early_stop
        if not patience or self.book is None:
            return None
        waited = self.book.rounds_without_improvement()
        if waited < patience:
            return None
        return (f"stopped early: {waited} scored preview round(s) since the best one (step "
                f"{self.book.best['step']}) without a better score (early_stop {patience})")

    def report(self) -> dict[str, Any]:
        """What report.json says of the previews."""
        out = {**self.previews.describe(), "every": self.interval, "seconds": self.seconds,
               "schedule": self.plan.to_dict() if self.plan is not None else None,
               "set_up_seconds": self.set_up_seconds, "round_seconds": self.round_seconds,
               "baseline_seconds": self.baseline_seconds,
               "grids": [r["grid"] for r in sorted(self.rounds, key=lambda r: r["step"])],
               "page": "previews.html", "random_weights": self.random_weights}
        if self.unwritten:
            out["unwritten"] = list(self.unwritten)
        if self.heldout_losses:
            out.update(heldout_losses=list(self.heldout_losses), heldout_loss=self.heldout_losses[-1]["loss"])
        if self.book is not None:
            best = self.book.best
            out.update(scores=SCORES, scorer=self.book.scorer, best_step=best["step"] if best else None,
                       best_score=best["score"] if best else None, why=self.book.why())
        return out
