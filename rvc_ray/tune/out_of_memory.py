"""An out-of-memory trial fails at once: no Ray Train retries, and the sweep goes on.

Ray Train restarts a failed worker group ``scaling.max_failures`` times, which is right for a lost node but
wasted on a trial whose batch or model does not fit: every retry runs out of memory again. The trial driver
therefore runs its Train run with :class:`FailFastOnOutOfMemory`, a Ray Train ``UserCallback`` that sees
the workers' errors before the failure policy does. When one of them is an out-of-memory error it raises
:class:`TrialOutOfMemoryError`; an error raised in the Train controller is not retried, so ``fit()`` raises
it at once, Tune records the trial as failed with that reason and starts the next trial.

Out-of-memory errors recognised (by class name or message, through Ray's wrappers and exception chains):
``torch.OutOfMemoryError`` (CUDA "out of memory"), torch's CPU allocator refusing an allocation ("can't
allocate memory"), Ray's memory monitor killing a worker ("running low on memory", ``ray.exceptions.
OutOfMemoryError``), and any exception class whose name ends in ``OutOfMemoryError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ray.train.v2.api.callback import UserCallback

__all__ = ["FailFastOnOutOfMemory", "TrialOutOfMemoryError", "is_out_of_memory", "out_of_memory_line"]

_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory", "running low on memory")


class TrialOutOfMemoryError(RuntimeError):
    """A trial's training ran out of memory; it is failed without retries."""


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending: list[Any] = [error]
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend((getattr(current, "cause", None), current.__cause__, current.__context__))


def out_of_memory_line(error: BaseException | str) -> str | None:
    """The line that says ``error`` is an out-of-memory error (None when it is not one)."""
    errors = [error] if isinstance(error, str) else list(_chain(error))
    for current in errors:
        if not isinstance(current, str) and type(current).__name__.endswith("OutOfMemoryError"):
            text = str(current).strip().splitlines()
            return f"{type(current).__name__}: {text[0] if text else ''}".strip()
        for line in str(current).splitlines():
            if any(marker in line.lower() for marker in _MESSAGES):
                return line.strip()[:300]
    return None


def is_out_of_memory(error: BaseException | str) -> bool:
    """True for an out-of-memory error of torch (CUDA or CPU), of Ray's memory monitor, or one named so."""
    return out_of_memory_line(error) is not None


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
