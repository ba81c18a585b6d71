"""Seeds derived from a run's seed: every random choice of a run (its batches, noise, preview cells) draws
from a generator seeded by `seed_of(run seed, what, which)`, so one seed gives one run on any machine."""
from __future__ import annotations


def seed_of(*parts: int) -> int:
    """Mix integers into one 63-bit seed (stable across runs and machines)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h
