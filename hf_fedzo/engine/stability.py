"""Step control: clip each projected gradient against the recent ones (off unless asked for).

A ZO step moves the weights by lr·g·z with ‖z‖ ≈ √d, so one scalar g far above the usual ones (a batch that
happens to align with a steep direction, a label-word bias being corrected all at once) moves the model much
further than the steps before it: that is how a step size that trained well for a hundred steps collapses a
model into answering one class. Clipping |g| at `factor` times the root mean square of the last `window`
applied scalars leaves the usual steps exactly as they were and cuts only such outliers.

The clipped scalars are what is recorded (the optimizer's history, the federation log), so every replay
applies what training applied and needs no state of its own; the threshold is a function of that record.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

DEFAULT_WINDOW = 64
MIN_HISTORY = 16  # fewer recent scalars than this say too little about their scale: no clipping yet


def recent_scalars(records: Iterable[Sequence], window: int = DEFAULT_WINDOW) -> list[float]:
    """The last `window` scalars of nested records (oldest first), e.g. `[u.scalars for u in history]`."""
    flat: list[float] = []
    for record in reversed(list(records)):
        flat[:0] = torch.as_tensor(record, dtype=torch.float64).flatten().tolist()
        if len(flat) >= window:
            break
    return flat[-window:]


def clip_threshold(recent: Sequence[float], factor: float) -> float | None:
    """`factor` × RMS of `recent`, or `None` (no clipping) when `factor` is 0 or the history is too short."""
    if factor <= 0 or len(recent) < MIN_HISTORY:
        return None
    rms = math.sqrt(sum(g * g for g in recent) / len(recent))
    return factor * rms if rms > 0 else None


def history_threshold(records: Sequence[Sequence], factor: float) -> float | None:
    """`clip_threshold` of the last `DEFAULT_WINDOW` scalars in `records` (an optimizer history, a server log)."""
    return clip_threshold(recent_scalars(records[-DEFAULT_WINDOW:]), factor)


def clip_scalars(scalars: torch.Tensor, threshold: float | None) -> tuple[torch.Tensor, int]:
    """`scalars` clamped to ±`threshold` (unchanged, the same tensor, when it is `None`), and how many were cut."""
    if threshold is None:
        return scalars, 0
    clipped = scalars.clamp(-threshold, threshold)
    return clipped, int((clipped != scalars).sum())
