"""HTTP schemas of the voice-conversion API (response bodies, error body, settings of the app).

Request options are :class:`rvc_ray.infer.ConversionOptions`, the same object the CLI uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ERROR_STATUS",
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


class VoiceList(BaseModel):
    voices: list[VoiceInfo]


class HealthBody(BaseModel):
    status: str = "ok"
    voices: int = Field(description="Number of voice files in the voices directory.")
    voices_dir_readable: bool


class ServeSettings(BaseModel):
    """Everything the Serve application needs, derived from ``RunConfig`` (``cfg.serve`` + ``cfg.features``).

    Sent to the replicas as JSON (:meth:`model_dump`) and re-validated there.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    voices_dir: Path
    features: dict[str, Any] = Field(description="FeatureConfig as JSON (content encoder / F0 weights).")
    f0_method: str = "rmvpe"
    host: str = "127.0.0.1"
    port: int = 8000
    num_replicas: int = 1
    autoscale_max_replicas: int | None = None
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    max_voices_per_replica: int = 4
    max_voice_memory_mb: float = 2048.0
    max_upload_mb: float = 20.0
    max_duration_s: float = 120.0
    api_key: str | None = None
    max_ongoing_requests: int = Field(4, ge=1, description="Concurrent conversions per converter replica.")
    ingress_cpus: float = Field(0.25, gt=0, description="CPUs reserved by the HTTP ingress replica.")
    app_name: str = "rvc"
    route_prefix: str = "/"
