"""The Ray Serve deployments: ``VoiceApi`` (FastAPI ingress) -> ``VoiceConverter`` (multiplexed voices).

``VoiceApi`` is light: authentication, voice-id validation against the directory, upload limits,
decoding to 16 kHz, option validation and WAV encoding. It calls ``VoiceConverter`` through a handle
with ``multiplexed_model_id=<voice_id>``, so Serve routes a voice to a replica that already holds it.
``VoiceConverter`` loads a voice once per replica (``serve.multiplexed``), capped by count
(``max_voices_per_replica``) and by estimated memory (``max_voice_memory_mb``, least recently used
voices are evicted first), and shares one content encoder and F0 extractor across its voices.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from dataclasses import asdict
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from rvc_ray.infer import ConversionOptions
from rvc_ray.serve.schemas import ERROR_STATUS, ErrorBody, HealthBody, ServeSettings, VoiceInfo, VoiceList
from rvc_ray.serve.voices import InvalidVoiceIdError, VoiceNotFoundError, VoiceRegistry

__all__ = ["ApiError", "VoiceApi", "VoiceConverter", "VoiceTooLargeError", "api"]

logger = logging.getLogger("ray.serve")
_MB = 1024 * 1024
_OPTION_NAMES = tuple(ConversionOptions.model_fields)
_AUDIO_FIELDS = ("file", "audio")


class ApiError(Exception):
    """An error answered as ``ErrorBody`` JSON with the status of its code (``ERROR_STATUS``)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(code, detail)
        self.code, self.detail = code, detail


class VoiceTooLargeError(RuntimeError):
    """A voice alone is larger than ``max_voice_memory_mb``."""


# --------------------------------------------------------------------------- converter


@serve.deployment(name="VoiceConverter", health_check_period_s=10, health_check_timeout_s=30)
class VoiceConverter:
    """Holds loaded voices (multiplexed) and converts 16 kHz audio with them."""

    def __init__(self, settings: dict[str, Any]) -> None:
        import torch

        from rvc_ray.config import FeatureConfig
        from rvc_ray.inference.analysis import AnalysisModels

        self.settings = ServeSettings.model_validate(settings)
        self.registry = VoiceRegistry(self.settings.voices_dir)
        self.device = "cuda" if self.settings.gpus_per_replica > 0 and torch.cuda.is_available() else "cpu"
        torch.set_num_threads(max(1, int(self.settings.cpus_per_replica)))
        self.analysis = AnalysisModels(FeatureConfig.model_validate(self.settings.features), self.device)
        self._voice_bytes: dict[str, int] = {}
        self._load_counts: dict[str, int] = {}

        async def load_voice(voice_id: str) -> Any:
            return await self._load_voice(voice_id)

        # Created per instance so that the count cap comes from the config (Serve supports this form).
        self._load_fn = load_voice
        self._get_voice = serve.multiplexed(max_num_models_per_replica=self.settings.max_voices_per_replica)(load_voice)

    def _loaded_ids(self) -> list[str]:
        wrapper = getattr(self._load_fn, "__serve_multiplex_wrapper", None)
        return list(wrapper.models) if wrapper is not None else []

    async def _make_room(self, needed: int) -> None:
        """Evict least recently used voices until ``needed`` more bytes fit under the memory cap.

        Uses the multiplex wrapper's own LRU eviction (it runs under the wrapper's load lock, where
        this is called from), so Serve's routing table stays right.
        """
        cap = int(self.settings.max_voice_memory_mb * _MB)
        wrapper = getattr(self._load_fn, "__serve_multiplex_wrapper", None)
        if wrapper is None:
            return
        while wrapper.models and sum(self._voice_bytes.get(v, 0) for v in wrapper.models) + needed > cap:
            evicted = next(iter(wrapper.models))
            await wrapper.unload_model_lru()
            self._voice_bytes.pop(evicted, None)
            logger.info("evicted voice %r to stay under max_voice_memory_mb", evicted)

    async def _load_voice(self, voice_id: str) -> Any:
        from rvc_ray.infer import VoiceConverterPipeline

        files = self.registry.resolve(voice_id)
        on_disk = files.model_path.stat().st_size + (files.index_path.stat().st_size if files.index_path else 0)
        estimate = 2 * on_disk  # fp16 exports become fp32 in memory; FAISS + a vector copy for the index
        cap = int(self.settings.max_voice_memory_mb * _MB)
        if estimate > cap:
            raise VoiceTooLargeError(
                f"voice {voice_id!r} needs about {estimate / _MB:.0f} MB, more than max_voice_memory_mb="
                f"{self.settings.max_voice_memory_mb:g}"
            )
        await self._make_room(estimate)
        loop = asyncio.get_running_loop()
        pipeline = await loop.run_in_executor(
            None,
            lambda: VoiceConverterPipeline.from_files(
                files.model_path,
                files.index_path,
                self.analysis,
                default_f0_method=self.settings.f0_method,
                name=voice_id,
                device=self.device,
            ),
        )
        self._voice_bytes[voice_id] = pipeline.memory_bytes()
        self._load_counts[voice_id] = self._load_counts.get(voice_id, 0) + 1
        logger.info("loaded voice %r (%.1f MB)", voice_id, self._voice_bytes[voice_id] / _MB)
        return pipeline

    async def convert(self, voice_id: str, wav_16k: np.ndarray, options: dict[str, Any]) -> dict[str, Any]:
        """Convert ``wav_16k [N]`` with ``voice_id``; returns ``{"wav", "sample_rate", "report"}``."""
        pipeline = await self._get_voice(voice_id)
        parsed = ConversionOptions.model_validate(options)
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, pipeline.convert, wav_16k, parsed)
        return {"wav": result.wav, "sample_rate": result.sample_rate, "report": asdict(result.report)}

    async def replica_stats(self) -> dict[str, Any]:
        """This replica's voices: ``loaded`` (id -> measured bytes, LRU order) and ``loads`` (id -> load count)."""
        return {
            "loaded": {v: self._voice_bytes.get(v, 0) for v in self._loaded_ids()},
            "loads": dict(self._load_counts),
        }

    def check_health(self) -> None:
        if not self.registry.voices_dir.is_dir():
            raise RuntimeError("the voices directory is gone")


# --------------------------------------------------------------------------- HTTP ingress

api = FastAPI(
    title="rvc-ray voice conversion",
    version="1",
    description="Convert speech or singing with trained RVC voices. Errors are JSON `{error, detail}`.",
)


@api.exception_handler(ApiError)
async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(ErrorBody(error=exc.code, detail=exc.detail).model_dump(), status_code=ERROR_STATUS[exc.code])


@api.exception_handler(StarletteHTTPException)
async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    detail = "no such endpoint; see /docs for the API" if exc.status_code == 404 else str(exc.detail)
    return JSONResponse(ErrorBody(error=code, detail=detail).model_dump(), status_code=exc.status_code)


@api.exception_handler(RequestValidationError)
async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    parts = [f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in exc.errors()]
    body = ErrorBody(error="invalid_options", detail="; ".join(parts))
    return JSONResponse(body.model_dump(), status_code=422)


def _options_openapi() -> dict[str, Any]:
    schema = ConversionOptions.model_json_schema()
    params = [
        {"name": name, "in": "query", "required": False, "schema": prop, "description": prop.get("description", "")}
        for name, prop in schema["properties"].items()
    ]
    form_props = {"file": {"type": "string", "format": "binary", "description": "The audio file."}}
    form_props.update(schema["properties"])
    return {
        "parameters": params,
        "requestBody": {
            "required": True,
            "description": "The audio: a raw body (any Content-Type except forms) or a multipart form with "
            "`file` plus option fields. WAV, FLAC, OGG, MP3 or AIFF, any rate, mono or multi-channel.",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "audio/wav": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {"schema": {"type": "object", "properties": form_props, "required": ["file"]}},
            },
        },
    }


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in sorted(set(ERROR_STATUS.values()))
}


def _cause(exc: BaseException) -> BaseException:
    """The exception raised in the replica (Ray wraps it in a ``RayTaskError`` subclass of its type)."""
    return getattr(exc, "cause", None) or exc


def _message(exc: BaseException) -> str:
    """The message of the replica's exception, without Ray's traceback text."""
    cause = _cause(exc)
    return str(getattr(cause, "public_message", None) or cause)


@serve.deployment(name="VoiceApi")
@serve.ingress(api)
class VoiceApi:
    """HTTP front door: validation, limits, auth; conversion is delegated to ``VoiceConverter``."""

    def __init__(self, settings: dict[str, Any], converter: DeploymentHandle) -> None:
        self.settings = ServeSettings.model_validate(settings)
        self.registry = VoiceRegistry(self.settings.voices_dir)
        self.converter = converter
        self._metadata: dict[tuple[str, int, int], VoiceInfo] = {}

    def _authorize(self, request: Request) -> None:
        expected = self.settings.api_key
        if not expected:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is None or not secrets.compare_digest(given.encode(), expected.encode()):
            raise ApiError("unauthorized", "missing or wrong API key: send it in the X-API-Key header")

    def _resolve(self, voice_id: str) -> Any:
        try:
            return self.registry.resolve(voice_id)
        except InvalidVoiceIdError as exc:
            raise ApiError("invalid_voice_id", str(exc)) from None
        except VoiceNotFoundError as exc:
            raise ApiError("voice_not_found", str(exc)) from None

    @api.get("/healthz", response_model=HealthBody, tags=["health"])
    async def healthz(self) -> HealthBody:
        """Liveness: the app is up and can read its voices directory (no API key needed)."""
        readable = self.registry.voices_dir.is_dir()
        return HealthBody(voices=len(self.registry.list_voices()) if readable else 0, voices_dir_readable=readable)

    @api.get("/v1/voices", response_model=VoiceList, responses=_ERROR_RESPONSES, tags=["voices"])
    async def list_voices(self, request: Request) -> VoiceList:
        """Every voice of the voices directory with its rate, version, F0 flag and training info."""
        self._authorize(request)
        from rvc_ray.serve.voices import read_voice_info

        loop = asyncio.get_running_loop()
        infos = []
        for files in self.registry.list_voices():
            stat = files.model_path.stat()
            key = (files.voice_id, stat.st_mtime_ns, stat.st_size)
            if key not in self._metadata:
                self._metadata[key] = await loop.run_in_executor(None, read_voice_info, files)
            infos.append(self._metadata[key])
        return VoiceList(voices=infos)

    @api.get("/v1/voices/{voice_id}", response_model=VoiceInfo, responses=_ERROR_RESPONSES, tags=["voices"])
    async def get_voice(self, voice_id: str, request: Request) -> VoiceInfo:
        """One voice's metadata."""
        self._authorize(request)
        from rvc_ray.serve.voices import read_voice_info

        files = self._resolve(voice_id)
        return await asyncio.get_running_loop().run_in_executor(None, read_voice_info, files)

    async def _read_upload(self, request: Request) -> tuple[bytes, dict[str, str]]:
        """The audio bytes and the form's option fields (raw body -> no fields), within max_upload_mb."""
        limit = int(self.settings.max_upload_mb * _MB)
        too_large = ApiError("upload_too_large", f"the upload is larger than {self.settings.max_upload_mb:g} MB")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise too_large
        content_type = request.headers.get("content-type", "").lower()
        if content_type.startswith("application/x-www-form-urlencoded"):
            raise ApiError(
                "unsupported_media_type",
                "send the audio as a raw body or as multipart/form-data with a 'file' field, not url-encoded",
            )
        if not content_type.startswith("multipart/form-data"):
            return bytes(body), {}
        return await self._parse_form(request, bytes(body))

    async def _parse_form(self, request: Request, body: bytes) -> tuple[bytes, dict[str, str]]:
        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=len(_OPTION_NAMES) + 2)
        except Exception as exc:  # noqa: BLE001 - malformed multipart bodies raise various errors
            raise ApiError("invalid_audio", f"the multipart form could not be parsed ({type(exc).__name__})") from None
        audio, fields = None, {}
        for key, value in form.multi_items():
            if key in _AUDIO_FIELDS and hasattr(value, "read"):
                audio = await value.read()
            elif isinstance(value, str):
                fields[key] = value
            else:
                raise ApiError("invalid_options", f"form field {key!r} is a file; only 'file' may carry audio")
        await form.close()
        if audio is None:
            raise ApiError("missing_audio", "the multipart form has no 'file' field with the audio")
        return audio, fields

    @staticmethod
    def _parse_options(query: dict[str, str], fields: dict[str, str]) -> ConversionOptions:
        raw: dict[str, str] = {}
        for source in (query, fields):
            for key, value in source.items():
                if key not in _OPTION_NAMES:
                    raise ApiError(
                        "invalid_options", f"unknown option {key!r}; valid options: {', '.join(_OPTION_NAMES)}"
                    )
                if key in raw and raw[key] != value:
                    raise ApiError("invalid_options", f"option {key!r} is given twice with different values")
                if value.strip() != "":
                    raw[key] = value
        try:
            return ConversionOptions.model_validate(raw)
        except ValidationError as exc:
            parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()]
            raise ApiError("invalid_options", "; ".join(parts)) from None

    @api.post(
        "/v1/voices/{voice_id}/convert",
        response_class=Response,
        responses={
            200: {"content": {"audio/wav": {}}, "description": "The converted audio (16-bit WAV)."},
            **_ERROR_RESPONSES,
        },
        openapi_extra=_options_openapi(),
        tags=["conversion"],
    )
    async def convert(self, voice_id: str, request: Request) -> Response:
        """Convert the uploaded audio with ``voice_id``; options as query parameters or form fields."""
        self._authorize(request)
        files = self._resolve(voice_id)
        query = dict(request.query_params)
        if len(query) != len(request.query_params.multi_items()):
            raise ApiError("invalid_options", "an option is repeated in the query string")
        options = self._parse_options(query, {})
        audio, fields = await self._read_upload(request)
        if fields:
            options = self._parse_options(query, fields)
        decoded = await asyncio.get_running_loop().run_in_executor(None, self._decode, audio)
        result = await self._call_converter(files.voice_id, decoded.wav_16k, options)
        return self._wav_response(result)

    def _decode(self, audio: bytes) -> Any:
        from rvc_ray.inference.audio import AudioDecodeError, AudioTooLongError, decode_audio

        if not audio:
            raise ApiError("empty_upload", "the upload is empty: send an audio file")
        try:
            return decode_audio(audio, max_duration_s=self.settings.max_duration_s, name="the upload")
        except AudioTooLongError as exc:
            raise ApiError("audio_too_long", str(exc)) from None
        except AudioDecodeError as exc:
            code = "unsupported_media_type" if "could not be decoded" in str(exc) else "invalid_audio"
            raise ApiError(code, str(exc)) from None

    async def _call_converter(self, voice_id: str, wav_16k: np.ndarray, options: ConversionOptions) -> dict[str, Any]:
        from rvc_ray.infer import InvalidOptionError, VoiceLoadError
        from rvc_ray.inference.analysis import AnalysisUnavailableError
        from rvc_ray.inference.audio import AudioDecodeError

        handle = self.converter.options(multiplexed_model_id=voice_id)
        try:
            return await handle.convert.remote(voice_id, wav_16k, options.model_dump())
        except InvalidOptionError as exc:
            raise ApiError("invalid_options", _message(exc)) from None
        except AudioDecodeError as exc:
            raise ApiError("invalid_audio", _message(exc)) from None
        except AnalysisUnavailableError as exc:
            logger.error("voice %r unavailable: %s", voice_id, str(_cause(exc)))
            raise ApiError("voice_unavailable", _message(exc)) from None
        except VoiceTooLargeError as exc:
            raise ApiError("voice_too_large", _message(exc)) from None
        except (VoiceLoadError, VoiceNotFoundError) as exc:
            logger.error("voice %r could not be loaded: %s", voice_id, str(_cause(exc)))
            raise ApiError("voice_unavailable", f"voice {voice_id!r} could not be loaded on this server") from None
        except Exception:  # noqa: BLE001 - never leak a trace; log it with an id the client can quote
            incident = uuid.uuid4().hex[:12]
            logger.exception("conversion with voice %r failed (incident %s)", voice_id, incident)
            raise ApiError(
                "internal_error", f"the conversion failed (incident {incident}); see the server logs"
            ) from None

    @staticmethod
    def _wav_response(result: dict[str, Any]) -> Response:
        from rvc_ray.inference.audio import to_pcm16_wav_bytes

        report = result["report"]
        headers = {
            "X-RVC-Voice": str(report["voice"]),
            "X-RVC-Sample-Rate": str(result["sample_rate"]),
            "X-RVC-Duration-S": f"{report['output_duration_s']:.3f}",
            "X-RVC-Processing-S": f"{report['processing_s']:.3f}",
            "X-RVC-F0-Method": str(report["f0_method"]),
            "X-RVC-Chunks": str(report["num_chunks"]),
            "X-RVC-Used-Index": "true" if report["used_index"] else "false",
        }
        return Response(
            to_pcm16_wav_bytes(result["wav"], result["sample_rate"]), media_type="audio/wav", headers=headers
        )
