"""Training schedules as pure functions of the step, so a resumed run needs no scheduler state.

Both recipes state their warm-ups in epochs, which the methods turn into absolute iteration
counts (DINOv2: epochs of 1250 iterations; MAE: passes over the data), so a run cut short
keeps the official warm-up; ``steps`` gives the older alternative, a share of the run.
"""
from __future__ import annotations

import math


def cosine(step: int, total: int, start: float, end: float, warmup_steps: int = 0,
           warmup_start: float = 0.0) -> float:
    """Linear warm-up from ``warmup_start`` to ``start``, then a half cosine to ``end``.

    The warm-up reaches ``start`` at ``step == warmup_steps`` (MAE's ``lr * epoch / warmup``);
    the cosine spans the remaining ``total - warmup_steps`` steps and holds ``end`` after them.
    ``start == end`` gives warm-up-then-constant, as DINOv2's teacher temperature uses.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_start + (start - warmup_start) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def steps(fraction: float, total: int) -> int:
    """A share of training in whole steps (an epoch-based recipe setting, made run-length free)."""
    return round(fraction * total)
