"""Which F0 method a conversion uses when the request names none, and why.

The rule, shared by the server and ``rvc-ray convert`` (docs/serving.md, "Defaults"):

1. the request's ``f0_method``;
2. else the configured one (``serve.f0_method`` / ``features.f0_method``) when it can run here
   (``rmvpe`` needs ``features.rmvpe_path`` to exist; ``crepe``, ``crepe-tiny`` and ``fcpe`` ship their
   weights inside their packages);
3. else the method the voice was trained with (rvc-ray exports record ``f0_method``), when it can run here;
4. else :data:`BUNDLED_F0_METHOD`.

So a conversion without options works for every voice the server lists, on a server that has no RMVPE
weights, which is the state a fresh install is in.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rvc_ray.features.f0_methods import F0_METHODS

__all__ = ["BUNDLED_F0_METHOD", "F0Choice", "choose_f0_method", "f0_method_problem", "trained_f0_method"]

BUNDLED_F0_METHOD = "fcpe"
"""Always runnable: torchfcpe ships its weights in the package (a dependency of rvc-ray)."""

_PACKAGE_OF = {"crepe": "torchcrepe", "crepe-tiny": "torchcrepe", "fcpe": "torchfcpe"}


@dataclass(frozen=True)
class F0Choice:
    """The F0 method a conversion will use and the reason, e.g. ``("fcpe", "the voice was trained with it")``."""

    method: str
    reason: str


def f0_method_problem(method: str, rmvpe_path: Path | str | None) -> str | None:
    """Why ``method`` cannot run on this machine (``None`` when it can). Never names a server path."""
    if method == "rmvpe":
        if rmvpe_path is None:
            return "rmvpe needs features.rmvpe_path (the RMVPE weights), which is not set"
        if not Path(rmvpe_path).is_file():
            return "rmvpe needs features.rmvpe_path, which does not exist on this server"
        return None
    package = _PACKAGE_OF.get(method)
    if package is None:
        return f"unknown f0 method {method!r}"
    if importlib.util.find_spec(package) is None:
        return f"{method} needs the {package} package, which is not installed"
    return None


def trained_f0_method(info: dict[str, Any] | None) -> str | None:
    """The F0 method recorded in a voice's export (rvc-ray writes ``f0_method``; RVC/Applio exports have none)."""
    value = (info or {}).get("f0_method")
    return value if isinstance(value, str) and value in F0_METHODS else None


def choose_f0_method(
    requested: str | None, configured: str | None, trained: str | None, rmvpe_path: Path | str | None
) -> F0Choice:
    """The F0 method of one conversion (see the module docstring for the rule).

    A ``requested`` method is returned as it is, even when it cannot run: the caller reports that to the
    client rather than silently using another one.
    """
    if requested:
        return F0Choice(requested, "asked for in the request")
    notes = []
    if configured:
        problem = f0_method_problem(configured, rmvpe_path)
        if problem is None:
            return F0Choice(configured, "the server's configured method")
        notes.append(f"configured {configured} unavailable: {problem}")
    if trained:
        problem = f0_method_problem(trained, rmvpe_path)
        if problem is None:
            return F0Choice(trained, "the method the voice was trained with" + (f" ({notes[0]})" if notes else ""))
        notes.append(f"trained with {trained}, unavailable here")
    reason = "bundled with rvc-ray" + (f" ({'; '.join(notes)})" if notes else "")
    return F0Choice(BUNDLED_F0_METHOD, reason)
