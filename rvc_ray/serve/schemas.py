"""HTTP schemas of the voice-conversion API (response bodies, error body, settings of the app).

Request options are :class:`rvc_ray.inference.options.ConversionOptions`, the same object the CLI uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rvc_ray.config import FeatureConfig, ServeConfig

__all__ = [
    "ERROR_STATUS",
    "ConvertManyBody",
    "ConvertedVoice",
    "ErrorBody",
    "HealthBody",
    "ServeSettings",
    "VoiceInfo",
    "VoiceList",
]


class ErrorBody(BaseModel):
    """Every error response: a stable machine-readable ``error`` code and a human ``detail``.

    ``detail`` names the problem (the field, the limit, the voice id) but never a server path or a trace.
    """

    error: str = Field(description="Stable code, e.g. 'voice_not_found', 'upload_too_large', 'invalid_audio'.")
    detail: str = Field(description="What was wrong and what is expected.")


# error code -> HTTP status (documented in docs/serving.md)
ERROR_STATUS: dict[str, int] = {
    "invalid_voice_id": 400,
    "empty_upload": 400,
    "invalid_audio": 400,
    "missing_audio": 400,
    "unauthorized": 401,
    "voice_not_found": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "upload_too_large": 413,
    "audio_too_long": 413,
    "unsupported_media_type": 415,
    "invalid_options": 422,
    "voice_unavailable": 503,
    "voice_too_large": 507,
    "result_not_found": 404,
    "too_many_voices": 422,
    "internal_error": 500,
}


class VoiceInfo(BaseModel):
    """One servable voice, as listed by ``GET /v1/voices``."""

    id: str
    sample_rate: int | None = Field(description="Output rate of the voice in Hz.")
    version: str | None = Field(description="'v1' (256-d content) or 'v2' (768-d).")
    use_f0: bool | None = Field(description="Pitch-conditioned (NSF) voice: transpose applies.")
    num_speakers: int | None = None
    has_index: bool = Field(description="A retrieval index was found beside the voice.")
    size_mb: float = Field(description="Size of the .pth (+ .index) on disk.")
    training: dict[str, Any] = Field(
        default_factory=dict, description="Training info stored in the export (name, epoch, step, content encoder...)."
    )
    error: str | None = Field(None, description="Set when the file's metadata could not be read.")
    run: str | None = Field(None, description="The training run (experiment name) that exported the voice.")
    epoch: int | None = Field(None, description="Epoch of the export (from the file or `<run>_e<E>_s<S>`).")
    step: int | None = Field(None, description="Global step of the export.")
    validation: dict[str, float] = Field(
        default_factory=dict,
        description="Validation scores of that epoch (`val/mel_l1`, `val/mcd`; lower is better), from the run's "
        "metrics.jsonl or the voice.",
    )
    f0_method: str | None = Field(None, description="F0 method a conversion without `f0_method` uses.")
    f0_method_reason: str | None = Field(None, description="Why that method (configured, trained with, bundled).")


class VoiceList(BaseModel):
    voices: list[VoiceInfo]
    f0_methods: dict[str, str | None] = Field(
        default_factory=dict, description="Every F0 method -> null when it can run here, else why it cannot."
    )


class ConvertedVoice(BaseModel):
    """One voice's result in ``POST /v1/convert``: URLs of the WAV and its spectrogram, or an error."""

    voice: str
    run: str | None = None
    epoch: int | None = None
    step: int | None = None
    validation: dict[str, float] = Field(default_factory=dict)
    audio_url: str | None = Field(None, description="GET it (with the API key) for the 16-bit WAV.")
    spectrogram_url: str | None = Field(None, description="GET it for a PNG spectrogram of the result.")
    cached: bool = Field(False, description="True when the result was served from the result cache.")
    report: dict[str, Any] | None = Field(None, description="What the conversion did (F0 method, timings...).")
    error: str | None = Field(None, description="Error code when this voice failed (the others still convert).")
    detail: str | None = None


class ConvertManyBody(BaseModel):
    """The answer of ``POST /v1/convert``: the input, then one entry per voice in the order asked."""

    input_id: str = Field(description="Hash of the uploaded audio (the result cache's input key).")
    input_duration_s: float
    input_spectrogram_url: str
    options: dict[str, Any] = Field(description="The conversion options used (defaults filled in).")
    results: list[ConvertedVoice]


class HealthBody(BaseModel):
    status: str = "ok"
    voices: int = Field(description="Number of voice files in the voices directory.")
    voices_dir_readable: bool


class ServeSettings(BaseModel):
    """Everything the Serve application needs: the run's ``serve`` and ``features`` config plus deployment knobs.

    ``serve.voices_dir`` holds the resolved voices location (a local directory or a URI). Sent to the
    replicas as JSON (:meth:`model_dump`) and re-validated there.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    serve: ServeConfig
    features: FeatureConfig = Field(description="Content encoder / F0 weights of the analysis models.")
    max_ongoing_requests: int = Field(4, ge=1, description="Concurrent conversions per converter replica.")
    ingress_cpus: float = Field(0.25, gt=0, description="CPUs reserved by the HTTP ingress replica.")
    voice_cache_dir: Path | None = Field(None, description="Local copies of remote voices (default: temp dir).")
    app_name: str = "rvc"
    route_prefix: str = "/"
