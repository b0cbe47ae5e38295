"""The one error family entry points turn into a one-line message and exit status 2.

:class:`InputError` marks a problem with what the user gave (a job file, an input folder, a dataset,
weights, audio, an option): its message names the thing and the reason, so a traceback adds nothing.
Every other exception is a bug or an environment failure and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["InputError", "USER_INPUT_ERRORS"]


class InputError(ValueError):
    """Something the user gave cannot be used; the message says what and why."""


USER_INPUT_ERRORS: tuple[type[Exception], ...] = (InputError, FileNotFoundError, NotADirectoryError)
"""What the CLI and the job scripts report as ``error: <message>`` with exit status 2."""
