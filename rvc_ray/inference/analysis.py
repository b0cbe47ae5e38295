"""The analysis networks a conversion needs besides the voice: a content encoder and F0 extractors.

They are the heavy, voice-independent part (HuBERT-base is ~95 M parameters), so one
:class:`AnalysisModels` is shared by every voice of a process (a Serve replica, or the CLI) and
builds each network once.

Which content encoder a voice needs is recorded in the export's info (``content_encoder``:
``{"kind": "random" | "hf" | "fairseq", "path": ..., "identity": "random:<size>:..."}``, the same record
as ``features/manifest.json``, :class:`rvc_ray.features.content.ContentEncoderInfo`). Voices exported by RVC-WebUI / Applio carry no record: they were trained on
HuBERT-base / ContentVec, which must then be configured locally (``features.content_encoder_path``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rvc_ray.config import FeatureConfig

log = logging.getLogger(__name__)

__all__ = ["AnalysisModels", "AnalysisUnavailableError", "ContentEncoderSpec", "content_encoder_spec"]


class AnalysisUnavailableError(RuntimeError):
    """A content encoder or F0 method a conversion needs cannot be built on this machine.

    ``public_message`` says what is missing without naming server paths (safe to show to clients);
    ``str(exc)`` has the full detail for logs.
    """

    def __init__(self, message: str, public_message: str | None = None) -> None:
        super().__init__(message)
        self.public_message = public_message or message

    def __reduce__(self) -> tuple[Any, ...]:  # keep both messages across Ray process boundaries
        return (type(self), (str(self), self.public_message))


@dataclass(frozen=True)
class ContentEncoderSpec:
    """Which content encoder a voice was trained with.

    Attributes:
        kind: ``"random"`` (a seeded random HuBERT-shaped encoder: demo/test voices), ``"hf"`` or
            ``"fairseq"`` (real HuBERT-base / ContentVec weights), or ``"unknown"`` (an RVC/Applio export).
        random_encoder_size: ``"base"`` | ``"tiny"`` for ``kind="random"``.
        content_dim: the feature size the voice consumes.
        version: ``"v1"`` | ``"v2"``.
    """

    kind: str
    random_encoder_size: str | None
    content_dim: int
    version: str
    identity: str | None = None


def content_encoder_spec(info: dict[str, Any] | None, content_dim: int, version: str) -> ContentEncoderSpec:
    """Read the content-encoder record of a voice's export info (missing record -> ``kind="unknown"``)."""
    record = (info or {}).get("content_encoder") if isinstance(info, dict) else None
    if not isinstance(record, dict):
        return ContentEncoderSpec("unknown", None, content_dim, version)
    kind = str(record.get("kind", "unknown"))
    size = record.get("random_encoder_size", record.get("size"))
    identity = str(record.get("identity", ""))
    if size is None and kind == "random" and identity.startswith("random:"):
        size = identity.split(":")[1]  # "random:<size>:<dim>:<version>:seed=...": rvc_ray.features.content
    return ContentEncoderSpec(kind, str(size) if size is not None else None, content_dim, version, identity or None)


class AnalysisModels:
    """Builds and caches content encoders (by spec) and F0 extractors (by method); thread-safe."""

    def __init__(self, features: FeatureConfig, device: str = "cpu") -> None:
        self.features = features
        self.device = device
        self._lock = threading.Lock()
        self._encoders: dict[tuple[str, str | None, int, str], Any] = {}
        self._pitch: dict[str, Any] = {}

    def _encoder_features(self, spec: ContentEncoderSpec, voice_name: str) -> FeatureConfig:
        if spec.kind == "random":
            size = spec.random_encoder_size or self.features.random_encoder_size
            return self.features.model_copy(update={"content_encoder_path": None, "random_encoder_size": size})
        if self.features.content_encoder_path is None:
            what = "a HuBERT/ContentVec checkpoint" if spec.kind == "unknown" else f"a {spec.kind!r} HuBERT checkpoint"
            message = (
                f"voice {voice_name!r} was trained on content features from {what}, but no content encoder is "
                "configured here: set features.content_encoder_path to a local HuBERT-base/ContentVec model"
            )
            raise AnalysisUnavailableError(message, message)
        if spec.kind in ("hf", "fairseq"):
            return self.features.model_copy(update={"content_encoder_format": spec.kind})
        return self.features

    def content_encoder(self, spec: ContentEncoderSpec, voice_name: str = "voice") -> Any:
        """The encoder for ``spec`` (``.encode(wav_16k [N]) -> [T50, C]``), built on first use."""
        from rvc_ray.config import ModelConfig

        key = (spec.kind, spec.random_encoder_size, spec.content_dim, spec.version)
        with self._lock:
            if key in self._encoders:
                return self._encoders[key]
            features = self._encoder_features(spec, voice_name)
            from rvc_ray.features.content import build_content_encoder

            model_cfg = ModelConfig(version=spec.version, content_dim=spec.content_dim)
            try:
                encoder = build_content_encoder(features, model_cfg, self.device)
            except (OSError, ValueError, RuntimeError) as exc:
                raise AnalysisUnavailableError(
                    f"content encoder for voice {voice_name!r} could not be built: {exc}",
                    f"the content encoder of voice {voice_name!r} could not be loaded on this server",
                ) from exc
            built_identity = getattr(getattr(encoder, "info", None), "identity", None)
            if spec.identity and built_identity and spec.identity != built_identity:
                log.warning(
                    "voice %r was trained with content encoder %r but this server built %r: outputs may differ "
                    "(another HuBERT checkpoint, or other torch/transformers versions for the random encoder)",
                    voice_name,
                    spec.identity,
                    built_identity,
                )
            self._encoders[key] = encoder
            return encoder

    def pitch_extractor(self, method: str) -> Any:
        """The F0 extractor for ``method`` (``.compute_f0(wav_16k [N]) -> [N//160+1]``), built on first use."""
        with self._lock:
            if method in self._pitch:
                return self._pitch[method]
            from rvc_ray.features.pitch import build_pitch_extractor

            try:
                extractor = build_pitch_extractor(method, self.features, self.device)
            except (OSError, ValueError, RuntimeError, ImportError) as exc:
                raise AnalysisUnavailableError(
                    f"f0 method {method!r} is unavailable: {exc}",
                    f"f0 method {method!r} is not available on this server (its weights are not installed or "
                    "configured); try f0_method=fcpe or crepe-tiny",
                ) from exc
            self._pitch[method] = extractor
            return extractor
