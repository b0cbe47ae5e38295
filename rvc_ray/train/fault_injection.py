"""A test hook, kept out of the production config: one worker exits hard once, to exercise fault tolerance.

The integration tests pass a :class:`FailureInjection` to ``fit(..., failure_injection=...)``; it crosses to
the workers beside the run config (``train_loop_config["fault"]``), never inside :class:`~rvc_ray.config.RunConfig`,
and :func:`maybe_inject_failure` runs after the first step of every epoch.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FailureInjection", "maybe_inject_failure"]


@dataclass(frozen=True)
class FailureInjection:
    """World rank ``rank`` exits hard (``os._exit``) after its first step of ``epoch``, once (``marker`` is
    created the first time, so the restarted worker group carries on)."""

    rank: int
    epoch: int
    marker: Path

    def to_json(self) -> dict[str, Any]:
        """The form sent to the workers (``train_loop_config["fault"]``)."""
        return {"rank": self.rank, "epoch": self.epoch, "marker": str(self.marker)}

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> FailureInjection | None:
        """Inverse of :meth:`to_json` (None stays None)."""
        return None if raw is None else cls(rank=int(raw["rank"]), epoch=int(raw["epoch"]), marker=Path(raw["marker"]))


def maybe_inject_failure(fault: FailureInjection | None, rank: int, epoch: int) -> None:
    """Exit this process if ``fault`` names this rank and epoch and its marker does not exist yet."""
    if fault is None or fault.rank != rank or fault.epoch != epoch or fault.marker.exists():
        return
    fault.marker.parent.mkdir(parents=True, exist_ok=True)
    fault.marker.write_text(f"rank {rank} killed itself in epoch {epoch}\n")
    # Train V2's controller picks up reports (and registers their checkpoints) when it polls the workers,
    # every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s). Dying right after a fast epoch's report could beat that
    # poll and restart from the checkpoint before; a real crash is not that well timed, so wait a few polls.
    time.sleep(3 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0")))
    os._exit(1)
