"""The CLI's progress bar: tqdm with the loss and ETA, logging printed above it."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def progress_bar(desc: str, unit: str = "step") -> Iterator[Callable[..., None]]:
    """Yield `update(step, total, loss=None)` driving a tqdm bar with ETA; logging goes above the bar.
    `update.note(done, total)` shows a preview round's sampling progress after the step count."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar = tqdm(desc=desc, unit=unit, dynamic_ncols=True)

    def update(step: int, total: int, loss: float | None = None) -> None:
        bar.total = total
        bar.n = step
        if loss is not None:
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.refresh()

    def note(done: int, total: int) -> None:
        bar.set_postfix(preview=f"{done}/{total}")

    update.note = note
    with logging_redirect_tqdm():
        try:
            yield update
        finally:
            bar.close()
