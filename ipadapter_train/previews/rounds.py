"""When a run's preview rounds come, and what they are estimated to cost: the one rule that the trainer, the CLI
and the ComfyUI node share (`plan_preview_rounds`).

"auto" keeps previews within `PREVIEW_BUDGET` (15%) of the run's work: its training steps, its validation and the
previews themselves. It takes as many rounds as fit, up to `PREVIEW_ROUNDS_AUTO` (a round after each third of the
run); fewer when a round is dear next to the run (a short run, or previews as large as the training images: a 12-step
run at 128 px); none when even the final round would not fit, which the report and the log say. "every N steps" is
the user's choice and is kept as given, with its estimated share reported.

Costs are estimated in training steps, so the choice depends on the sizes, not on how fast the machine is; the
measured time of a step turns them into seconds for the ETA and the report:

- a training step is a forward and a backward pass over `batch_size` images at the training size, and here the
  backward costs about one forward (the frozen weights need no gradients of their own): 2 x B x R^2 units;
- a preview's UNet call is one forward over the classifier-free-guidance batch, 2 rows per cell, at the preview
  size: 2 x cells x P^2 units, so cells x P^2 / (B x R^2) steps;
- a render (one preview weight for every cell) is `preview_steps` calls and the VAE decodes of its cells, which cost
  about half a call (`DECODE_CALLS`; the kit's measured round, BENCHMARKS.md "Previews", 22.7 s = 2.85 steps of
  7.97 s, gives 2.75 steps by this rule);
- a round renders every adapter weight (0.5 and 1.0); the weight-0 images (no adapter) are the same in every round,
  so they are rendered once, in the first round, and counted once;
- a validation call is one forward over 2 samples, about a step at batch 1 (`VALIDATION_CALL_STEPS_AT_BATCH_1`).

By this rule the kit's default job (5 photos, one held out, 10 epochs = 40 steps at 512 px, previews at 256 px,
full validation: 16 calls) keeps its three rounds: 9.6 of 65.6 step-equivalents, 14.7%, as measured.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import PREVIEW_ROUNDS_AUTO, TrainConfig

PREVIEW_BUDGET = 0.15  # previews' share of the run's work that "auto" keeps to (README: "Previews while training")
DECODE_CALLS = 0.5  # a VAE decode of a preview ~ half a UNet call over the same cells
# A validation call is one forward pass over 2 samples (own and shuffled features) without a backward pass; a step is
# a forward and a backward pass over batch_size samples: about a step at batch 1, a step / batch_size above.
VALIDATION_CALL_STEPS_AT_BATCH_1 = 1.0


@dataclass(frozen=True)
class PreviewPlan:
    """A run's preview schedule and its estimated cost (see the module docstring)."""

    every: int  # a round after every `every` steps and after the last; 0: no round at all
    rounds: int  # rounds over the whole run
    auto: bool  # chosen by the budget ("auto"), or given as a number of steps
    round_steps: float  # one round (its adapter weights' renders), in training steps
    baseline_steps: float  # the weight-0 images, rendered once in the first round, in training steps
    run_steps: float  # the run's work with these previews: steps, validation and previews, in training steps
    sampling_steps: int  # sampling steps of one render
    round_renders: int  # renders in a round: one per preview weight other than 0
    baseline_renders: int  # 1 when weight 0 (no adapter) is previewed (in the first round), else 0
    why: str  # one sentence: the schedule and why
    step_seconds: float | None = None  # the measured time of a step, once there is one

    @property
    def preview_steps_total(self) -> float:
        """All rounds' estimated cost, in training steps."""
        return self.rounds * self.round_steps + (self.baseline_steps if self.rounds else 0.0)

    @property
    def share(self) -> float:
        """The previews' estimated share of the run's work."""
        return self.preview_steps_total / self.run_steps if self.run_steps else 0.0

    def due(self, step: int, total: int) -> bool:
        """Whether a round follows step `step` (counted from 1): every `every` steps, and after the last."""
        return bool(self.every) and (step == total or step % self.every == 0)

    def rounds_between(self, after: int, total: int) -> int:
        """Rounds that follow the steps after `after`, up to and including `total`."""
        if not self.every or after >= total:
            return 0
        return total // self.every - after // self.every + (1 if total % self.every else 0)

    def renders(self, first: bool) -> int:
        """Renders in a round: the first one also makes the weight-0 images."""
        return self.round_renders + (self.baseline_renders if first else 0)

    def seconds_left(self, done: int, total: int, rounds_run: int, round_pending: bool = False,
                     round_seconds: float | None = None) -> float | None:
        """Estimated seconds of the rounds still to come after step `done` (the one due at `done` included when
        `round_pending`), given `rounds_run` rounds already rendered; `round_seconds` replaces the estimate of a
        round once one was measured. None before a step was measured."""
        if self.step_seconds is None:
            return None
        left = self.rounds_between(done, total) + (1 if round_pending else 0)
        if not left:
            return 0.0
        per_round = round_seconds if round_seconds is not None else self.round_steps * self.step_seconds
        baseline = self.baseline_steps * self.step_seconds if rounds_run == 0 else 0.0
        return left * per_round + baseline

    def round_estimate(self, first: bool) -> float | None:
        """Estimated seconds of one round (the first also renders the weight-0 images); None before a step was
        measured."""
        if self.step_seconds is None:
            return None
        return (self.round_steps + (self.baseline_steps if first else 0.0)) * self.step_seconds

    def with_step_seconds(self, seconds: float) -> "PreviewPlan":
        """This plan with the measured time of a step."""
        return PreviewPlan(**{**self.__dict__, "step_seconds": float(seconds)})

    def to_dict(self) -> dict[str, Any]:
        """For report.json."""
        out = {"every": self.every, "rounds": self.rounds, "auto": self.auto, "budget": PREVIEW_BUDGET,
               "round_steps": round(self.round_steps, 3), "first_round_extra_steps": round(self.baseline_steps, 3),
               "run_steps": round(self.run_steps, 3), "share": round(self.share, 4), "why": self.why}
        if self.step_seconds is not None:
            out.update(step_seconds=round(self.step_seconds, 4),
                       round_seconds=round(self.round_steps * self.step_seconds, 2),
                       previews_seconds=round(self.preview_steps_total * self.step_seconds, 2))
        return out


def render_steps(config: TrainConfig, cells: int, preview_side: int) -> float:
    """One render (one preview weight for every cell: its sampling steps and the VAE decodes), in training steps."""
    train_side = config.resolution or preview_side
    call = cells * preview_side ** 2 / (max(1, config.batch_size) * train_side ** 2)
    return call * (config.preview_steps + DECODE_CALLS)


def rounds_for(every: int, total: int) -> int:
    """Rounds over `total` steps with a round every `every` steps and after the last."""
    return 0 if not every else -(-total // every)


def plan_preview_rounds(config: TrainConfig, total: int, cells: int, preview_side: int, validation_calls: int = 0,
                        step_seconds: float | None = None) -> PreviewPlan:
    """The schedule of a run of `total` steps with `cells` preview cells at `preview_side` px: "auto" takes the most
    rounds (up to `PREVIEW_ROUNDS_AUTO`) whose estimated cost stays within `PREVIEW_BUDGET` of the run; a number of
    steps is kept as given. `config.resolution` must be filled in (`TrainConfig.for_family`)."""
    weights = list(config.preview_weights)
    round_renders = sum(1 for w in weights if w != 0)
    baseline_renders = 1 if len(weights) > round_renders else 0
    render = render_steps(config, cells, preview_side)
    round_steps, baseline_steps = round_renders * render, baseline_renders * render
    work = total + validation_calls * VALIDATION_CALL_STEPS_AT_BATCH_1 / max(1, config.batch_size)

    def cost(rounds: int) -> float:
        return rounds * round_steps + (baseline_steps if rounds else 0.0)

    def plan(every: int, auto: bool, why: str) -> PreviewPlan:
        rounds = rounds_for(every, total)
        return PreviewPlan(every, rounds, auto, round_steps, baseline_steps, work + cost(rounds),
                           config.preview_steps, round_renders, baseline_renders, why, step_seconds)

    def share(rounds: int) -> str:
        return f"{100 * cost(rounds) / (work + cost(rounds)):.1f}%"

    if config.preview_every != "auto":
        every = int(config.preview_every)
        rounds = rounds_for(every, total)
        return plan(every, False, f"every {every} steps as set: {rounds} round(s), about {share(rounds)} of the run "
                                  f"(estimated; auto keeps to {PREVIEW_BUDGET:.0%}).")
    for rounds in range(min(PREVIEW_ROUNDS_AUTO, total), 0, -1):
        every = max(1, -(-total // rounds))
        actual = rounds_for(every, total)
        if cost(actual) <= PREVIEW_BUDGET * (work + cost(actual)):
            if actual >= min(PREVIEW_ROUNDS_AUTO, total):
                why = f"auto: {actual} round(s), a round every {every} step(s) and after the last"
            else:
                why = (f"auto: {actual} round(s), not {min(PREVIEW_ROUNDS_AUTO, total)}: a round costs about "
                       f"{round_steps:.1f} training steps, and more would pass the {PREVIEW_BUDGET:.0%} budget")
            return plan(every, True, f"{why} (about {share(actual)} of the run, estimated).")
    return plan(0, True, f"auto: no preview round: even the final one would cost about "
                         f"{cost(1):.1f} training steps, {share(1)} of this {total}-step run, over the "
                         f"{PREVIEW_BUDGET:.0%} budget; ask for rounds with a number of steps (--preview-every N; "
                         "preview_every on the Train node) to have them anyway.")
