"""Make the ``rvc_ray`` package beside ``jobs/`` importable from a job script.

``python jobs/X.py`` puts ``jobs/`` (not the repository root) on ``sys.path``; under ``ray job submit
--working-dir .`` the working directory is the repository root. Where rvc-ray is pip-installed on the
cluster this is a no-op in effect: the installed package and the one beside ``jobs/`` are the same code.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def make_package_importable() -> None:
    """Put the repository root first on ``sys.path`` (once)."""
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)
