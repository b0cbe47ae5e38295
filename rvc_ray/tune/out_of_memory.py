"""An out-of-memory trial fails at once: no Ray Train retries, and the sweep goes on.

Ray Train restarts a failed worker group ``scaling.max_failures`` times, which is right for a lost node but
wasted on a trial whose batch or model does not fit: every retry runs out of memory again. The trial driver
therefore runs its Train run with :class:`FailFastOnOutOfMemory`, a Ray Train ``UserCallback`` that sees
the workers' errors before the failure policy does. When one of them is an out-of-memory error it raises
:class:`TrialOutOfMemoryError`; an error raised in the Train controller is not retried, so ``fit()`` raises
it at once, Tune records the trial as failed with that reason and starts the next trial.

Which errors are out-of-memory errors is decided in one place, :func:`rvc_ray.train.memory.out_of_memory_line`
(also used by the training loop and ``train.batch_size=auto``).
"""

from __future__ import annotations

from typing import Any

from ray.train.v2.api.callback import UserCallback

from rvc_ray.train.memory import is_out_of_memory, out_of_memory_line

__all__ = ["FailFastOnOutOfMemory", "TrialOutOfMemoryError", "is_out_of_memory", "out_of_memory_line"]


class TrialOutOfMemoryError(RuntimeError):
    """A trial's training ran out of memory; it is failed without retries."""


class FailFastOnOutOfMemory(UserCallback):
    """Raise :class:`TrialOutOfMemoryError` in the Train controller when a worker ran out of memory."""

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        """Called by Ray Train with each failed worker's error, before its failure policy decides."""
        for rank, error in sorted(worker_exceptions.items()):
            line = out_of_memory_line(error)
            if line is not None:
                raise TrialOutOfMemoryError(
                    f"training rank {rank} ran out of memory ({line}); the trial is failed without retries, "
                    "as a retry would run out of memory again (lower train.batch_size or the model size)"
                )
