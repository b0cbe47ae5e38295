"""What a conversion takes and gives back: per-request options, the report, the result, and its input errors.

Shared by ``rvc-ray convert`` and the server (the server's request body is :class:`ConversionOptions`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rvc_ray.errors import InputError
from rvc_ray.features.f0_methods import F0Method

__all__ = ["ConversionOptions", "ConversionReport", "ConversionResult", "InvalidOptionError", "VoiceLoadError"]


class InvalidOptionError(InputError):
    """An option that is valid in range but not for this voice (e.g. ``speaker_id`` beyond its speakers)."""


class VoiceLoadError(InputError):
    """A voice file (or its index) exists but cannot be loaded or is inconsistent."""


class ConversionOptions(BaseModel):
    """Per-request conversion settings; defaults are RVC-WebUI's UI defaults. Shared by CLI and server."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    f0_up_key: float = Field(0.0, ge=-24.0, le=24.0, description="Transpose in semitones (+12 = one octave up).")
    index_rate: float = Field(0.75, ge=0.0, le=1.0, description="Share of retrieved index features (0 = off).")
    rms_mix_rate: float = Field(
        0.25, ge=0.0, le=1.0, description="1 keeps the output's loudness envelope, 0 imposes the input's."
    )
    protect: float = Field(
        0.33, ge=0.0, le=0.5, description="Keep this much retrieval on unvoiced frames (0.5 = protection off)."
    )
    filter_radius: int = Field(3, ge=0, le=7, description=">= 3 median-filters F0 over 3 frames (RVC); < 3 = off.")
    speaker_id: int = Field(0, ge=0, le=10_000, description="Speaker of a multi-speaker voice.")
    output_sample_rate: int | None = Field(
        None, ge=8000, le=192_000, description="Resample the output to this rate (default: the voice's rate)."
    )
    f0_method: F0Method | None = Field(None, description="F0 extractor (default: the server's/config's method).")
    seed: int | None = Field(None, ge=0, description="Seed of the synthesis noise, for reproducible output.")


@dataclass(frozen=True)
class ConversionReport:
    """What one conversion did (printed by the CLI, summarised in response headers by the server)."""

    voice: str
    input_duration_s: float
    output_duration_s: float
    output_sample_rate: int
    num_chunks: int
    f0_method: str
    used_index: bool
    voiced_fraction: float
    median_f0_hz: float
    processing_s: float
    real_time_factor: float
    timings_s: dict[str, float] = field(default_factory=dict)
    output_path: str | None = None
    synthesis_dtype: str = "float32"


@dataclass(frozen=True)
class ConversionResult:
    """``wav [M]`` float32 in [-0.99, 0.99] at ``sample_rate``, plus its report."""

    wav: np.ndarray
    sample_rate: int
    report: ConversionReport
