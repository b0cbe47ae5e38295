"""Ray Train must not replay a training-health failure: it would fail the same way from the same checkpoint.

Ray Train's ``FailureConfig(max_failures=N)`` restarts the worker group after *any* worker error. That is
right for a killed worker or a lost node, but a :class:`~rvc_ray.train.steps.TrainingHealthError`
(non-finite loss, zero gradient, a bad batch, a useless learning rate, too many skipped steps) comes back
identically: same seed, same data order, same checkpoint. Train V2 has no public per-exception policy,
so the worker that hits one records it in ``<run_dir>/health_failure.json`` (``run_dir`` is the run's
directory in Ray Train storage, shared by every node), and a restarted worker group raises the recorded
error at once instead of replaying epochs. :func:`clear_health_failure` runs in the driver before every
``fit``, so running the job again (after fixing the cause) trains, and resumes from the last checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from rvc_ray import storage
from rvc_ray.train import steps

__all__ = ["HEALTH_FAILURE_FILE", "clear_health_failure", "record_health_failure", "refuse_to_replay_health_failure"]

HEALTH_FAILURE_FILE = "health_failure.json"


def _marker(run_dir: Path | str) -> str:
    return storage.join(storage.normalize_location(str(run_dir)), HEALTH_FAILURE_FILE)


def clear_health_failure(run_dir: Path | str) -> None:
    """Forget a recorded failure (driver side, before a new ``fit``). ``run_dir`` is a path or a URI."""
    storage.remove(_marker(run_dir))


def record_health_failure(run_dir: Path | str, rank: int, error: steps.TrainingHealthError) -> None:
    """Write ``{"error": class name, "message", "rank"}`` atomically (the first writer's record is kept)."""
    path = _marker(run_dir)
    if storage.exists(path):
        return
    storage.write_text(path, json.dumps({"error": type(error).__name__, "message": str(error), "rank": rank}))


def refuse_to_replay_health_failure(run_dir: Path | str) -> None:
    """Raise the recorded health error (same class) if an earlier attempt of this ``fit`` stopped on one."""
    path = _marker(run_dir)
    try:
        record = json.loads(storage.read_text(path))
    except FileNotFoundError:
        return
    except (OSError, json.JSONDecodeError):
        record = {"error": "TrainingHealthError", "message": f"unreadable record {path}", "rank": -1}
    error = getattr(steps, str(record.get("error")), steps.TrainingHealthError)
    if not (isinstance(error, type) and issubclass(error, steps.TrainingHealthError)):
        error = steps.TrainingHealthError
    raise error(
        f"{record.get('message')} [rank {record.get('rank')}, in an earlier attempt of this run: this restart stops "
        "at once, since it would replay the same steps from the same checkpoint. Fix the cause and run the job "
        "again to resume]"
    )
