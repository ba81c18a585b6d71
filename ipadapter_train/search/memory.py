"""Batch sizes within memory: a trial whose batch runs out of memory is not a failure of the search.

The first such trial records its batch size in the study (`TOO_BIG`, shared by every process on the storage); it and
every later trial that draws that batch size or a larger one are pruned without training and do not count towards the
budget, so the search goes on with the batches that fit. When the smallest batch the space allows does not fit, the
search stops with one sentence saying what to lower. (On a GPU, PyTorch raises an out-of-memory error it can recover
from; a CPU that runs out of memory is usually ended by the operating system instead, which no program can catch.)
"""
from __future__ import annotations

import gc

import torch

TOO_BIG = "too_big_batch"  # the study's user attribute: the smallest batch size that ran out of memory
NOTE = "memory"  # a trial's user attribute: why it was not trained


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is the device running out of memory (CUDA, MPS or the CPU allocator)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def release_memory() -> None:
    """Give the failed trial's memory back before the next one."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if getattr(torch, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.empty_cache()


def too_big(study, batch_size: int) -> int | None:
    """The smallest batch size known not to fit, when `batch_size` is at least that; else None."""
    limit = study.user_attrs.get(TOO_BIG)
    return limit if limit is not None and batch_size >= limit else None


def note_too_big(study, batch_size: int) -> None:
    """Record that `batch_size` did not fit (keeping the smallest such size)."""
    limit = study.user_attrs.get(TOO_BIG)
    study.set_user_attr(TOO_BIG, batch_size if limit is None else min(limit, batch_size))
