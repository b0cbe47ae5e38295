"""Best-epoch tracking and early stopping on ``val/mel_l1``."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["BestTracker", "should_stop_early", "track_best"]


@dataclass(frozen=True)
class BestTracker:
    """The best (lowest) ``val/mel_l1`` so far, its epoch, and the epochs since it improved."""

    value: float | None = None
    epoch: int | None = None
    epochs_without_improvement: int = 0


def track_best(tracker: BestTracker, score: float, epoch: int) -> BestTracker:
    """Update with the score of ``epoch`` (a NaN score never counts as an improvement)."""
    if not math.isnan(score) and (tracker.value is None or score < tracker.value):
        return BestTracker(score, epoch, 0)
    return BestTracker(tracker.value, tracker.epoch, tracker.epochs_without_improvement + 1)


def should_stop_early(tracker: BestTracker, patience: int | None) -> bool:
    """True when ``train.early_stop_patience`` is set and that many epochs passed without a new best."""
    return patience is not None and tracker.epochs_without_improvement >= patience
