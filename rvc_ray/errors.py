"""The one error family entry points turn into a one-line message and exit status 2.

:class:`InputError` marks a problem with what the user gave (a job file, an input folder, a dataset,
weights, audio, an option): its message names the thing and the reason, so a traceback adds nothing.
Every other exception is a bug or an environment failure and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["InputError", "USER_INPUT_ERRORS", "exit_status_of"]


class InputError(ValueError):
    """Something the user gave cannot be used; the message says what and why."""


USER_INPUT_ERRORS: tuple[type[Exception], ...] = (InputError, FileNotFoundError, NotADirectoryError)
"""What the CLI and the job scripts report as ``error: <message>`` with exit status 2."""


def exit_status_of(job: Callable[[], int | None]) -> int:
    """Run a job script's body: its status (``None`` = 0), or 2 after ``error: <message>`` on stderr."""
    try:
        status = job()
    except USER_INPUT_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if status is None else status
