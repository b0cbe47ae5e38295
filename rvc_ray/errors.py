"""The one error family entry points turn into a one-line message and exit status 2.

:class:`InputError` marks a problem with what the user gave (a job file, an input folder, a dataset,
weights, audio, an option): its message names the thing and the reason, so a traceback adds nothing.
Every other exception is a bug or an environment failure and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["InputError", "USER_INPUT_ERRORS", "user_errors_exit_2"]


class InputError(ValueError):
    """Something the user gave cannot be used; the message says what and why."""


USER_INPUT_ERRORS: tuple[type[Exception], ...] = (InputError, FileNotFoundError, NotADirectoryError)
"""What the command line (``rvc-ray`` and the jobs/*.py scripts that call it) reports as ``error: <message>``."""


@contextmanager
def user_errors_exit_2() -> Iterator[None]:
    """Unusable user input (:data:`USER_INPUT_ERRORS`) becomes ``error: <message>`` on stderr and exit status 2."""
    try:
        yield
    except USER_INPUT_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
