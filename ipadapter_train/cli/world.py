"""`ipadapter-train make-learned-world DIR`: build the learned world (ipadapter_train/world) from nothing."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
from pathlib import Path

from .progress import progress_bar

log = logging.getLogger(__name__)


class StageBars:
    """One progress bar per stage of the build (`progress.progress_bar`: logging printed above it)."""

    def __init__(self) -> None:
        self.stack, self.update, self.stage = contextlib.ExitStack(), None, None

    def __call__(self, stage: str, done: int, total: int, loss: float) -> None:
        if stage != self.stage:
            self.close()
            self.update, self.stage = self.stack.enter_context(progress_bar(f"world: {stage}")), stage
        self.update(done, total)

    def close(self) -> None:
        """Close the current stage's bar."""
        self.stack.close()


def cmd_make_learned_world(args: argparse.Namespace) -> int:
    from ..api import IPAdapterError, make_learned_world
    from ..world.recipe import Recipe

    if not 0 < args.scale <= 1:
        raise IPAdapterError(f"--scale {args.scale} is out of range: give a number above 0 and at most 1 "
                             "(1 builds the world as shipped).")
    bars = StageBars()
    try:
        files = make_learned_world(Path(args.dir), Recipe(seed=args.seed).scaled(args.scale), bars)
    finally:
        bars.close()
    report = json.loads(files["report"].read_text(encoding="utf-8"))
    text_only = report["figures"]["text_only_samples"]["attribute_accuracy"]
    log.info("Learned world written to %s in %.0f s. Text-only samples show what their caption names: %s "
             "(learned-world figures, not SD quality).", args.dir, report["seconds"]["total"],
             ", ".join(f"{k} {v:.0%}" for k, v in text_only.items()))
    return 0


def register(sub) -> None:
    """Add the make-learned-world subcommand."""
    p = sub.add_parser("make-learned-world", help="train the learned world's small models (about 50 minutes on 2 "
                       "CPU cores); the project ships the result",
                       description="Train the learned world (a VAE, a text encoder, a UNet in SD1.5's layout at "
                       "small widths, a CLIP and a shape reader) on pictures the project draws itself, "
                       "deterministically from --seed, and write them with their figures into DIR.")
    p.add_argument("dir", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="the seed everything is drawn and trained from (default 0)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="shorten every stage by this factor, for a quick look (default 1: as shipped)")
    p.set_defaults(func=cmd_make_learned_world)
