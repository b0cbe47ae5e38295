"""The F0 (pitch) methods rvc-ray knows: one ``Literal`` type and the tuple of its names.

Config, conversion options, Serve and the CLI all take their list from here. The module imports neither torch
nor ray, so :mod:`rvc_ray.config` can use it.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["F0_METHODS", "F0Method"]

F0Method = Literal["rmvpe", "crepe", "crepe-tiny", "fcpe"]
"""``rmvpe`` (weights from ``features.rmvpe_path``), ``crepe`` / ``crepe-tiny`` (torchcrepe), ``fcpe`` (torchfcpe)."""

F0_METHODS: tuple[F0Method, ...] = get_args(F0Method)
