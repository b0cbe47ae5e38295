"""Checking that a checkpoint's tensors fit a network before loading it: the one fit check of rvc-ray.

Used by the extractor loaders (HuBERT/ContentVec, RMVPE) and by :mod:`rvc_ray.model.weights` (RVC G/D files).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["StateDictMismatch", "find_state_dict_mismatch"]


@dataclass(frozen=True)
class StateDictMismatch:
    """How a checkpoint's state dict differs from a network's: keys missing, unexpected, or of another shape."""

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    wrong_shapes: tuple[str, ...]  # "<key>: file (a, b) vs model (c, d)"

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shapes)

    def summary(self, limit: int = 4) -> str:
        """One line with the counts and the first ``limit`` of each kind."""
        return (
            f"{len(self.wrong_shapes)} shape mismatches {list(self.wrong_shapes[:limit])}, "
            f"{len(self.missing)} missing keys {list(self.missing[:limit])}, "
            f"{len(self.unexpected)} unexpected keys {list(self.unexpected[:limit])}"
        )


def find_state_dict_mismatch(expected: Mapping[str, Any], state: Mapping[str, Any]) -> StateDictMismatch:
    """Compare ``state`` (from a file) with ``expected`` (a network's ``state_dict()``)."""
    wrong = tuple(
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and hasattr(state[key], "shape") and tuple(state[key].shape) != tuple(value.shape)
    )
    return StateDictMismatch(
        missing=tuple(sorted(set(expected) - set(state))),
        unexpected=tuple(sorted(set(state) - set(expected))),
        wrong_shapes=wrong,
    )
