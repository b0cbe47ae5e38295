"""The ``VoiceApi`` ingress (FastAPI) -> ``VoiceConverter`` (multiplexed voices, :mod:`rvc_ray.serve.converter`).

``VoiceApi`` is light: the listening page (``/``), authentication, voice-id validation against the voices
location, upload limits, decoding to 16 kHz, option validation, the result cache and WAV/PNG encoding.
It calls ``VoiceConverter`` through a handle with ``multiplexed_model_id=<voice_id>@<fingerprint>``, so
Serve routes a voice to a replica that already holds it, and a replaced voice file is loaded afresh.
"""

# No ``from __future__ import annotations`` here: Serve pickles the route methods by value, and FastAPI
# must still resolve their parameter annotations (``request: Request``) in the replica.
import asyncio
import html
import logging
import uuid
from importlib import resources
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from rvc_ray.audio.io import AudioDecodeError, AudioTooLongError, decode_audio, to_pcm16_wav_bytes
from rvc_ray.inference.analysis import AnalysisUnavailableError
from rvc_ray.inference.options import ConversionOptions, InvalidOptionError, VoiceLoadError
from rvc_ray.serve.converter import VoiceConverter, VoiceTooLargeError
from rvc_ray.serve.http import (
    ERROR_RESPONSES,
    SELECTION_FIELDS,
    ApiError,
    api,
    authorize,
    error_cause,
    error_message,
    options_openapi,
    parse_options,
    read_upload,
    report_headers,
)
from rvc_ray.serve.results import ResultCache, input_key, render_spectrogram_png, result_key
from rvc_ray.serve.schemas import (
    ConvertedVoice,
    ConvertManyBody,
    HealthBody,
    ServeSettings,
    VoiceInfo,
    VoiceList,
)
from rvc_ray.serve.voices import InvalidVoiceIdError, VoiceFiles, VoiceNotFoundError, VoiceRegistry

__all__ = ["ApiError", "VoiceApi", "VoiceConverter", "VoiceTooLargeError", "api"]

logger = logging.getLogger("ray.serve")
_MB = 1024 * 1024
_STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
_KEY_CHARS = frozenset("0123456789abcdef")
_SELECTION_OPENAPI = {
    "voices": {"type": "string", "description": "Comma-separated voice ids to convert with (or use `run`)."},
    "run": {"type": "string", "description": "A training run: every `<run>_e<E>_s<S>` voice, by epoch."},
}


def _static(name: str) -> bytes:
    return (resources.files("rvc_ray.serve") / "static" / name).read_bytes()


@serve.deployment(name="VoiceApi")
@serve.ingress(api)
class VoiceApi:
    """HTTP front door: the page, validation, limits, auth, result cache; conversion is ``VoiceConverter``'s."""

    def __init__(self, settings: dict[str, Any], converter: DeploymentHandle) -> None:
        from rvc_ray.serve.catalog import RunScores

        self.settings = ServeSettings.model_validate(settings)
        self.registry = VoiceRegistry(self.settings.serve.voices_dir, self.settings.voice_cache_dir)
        self.converter = converter
        self.results = ResultCache(int(self.settings.serve.result_cache_mb * _MB))
        self.scores = RunScores(self.registry.location)
        self._metadata: dict[str, VoiceInfo] = {}

    def _authorize(self, request: Request) -> None:
        authorize(self.settings.serve.api_key, request)

    def _resolve(self, voice_id: str) -> VoiceFiles:
        try:
            return self.registry.resolve(voice_id)
        except InvalidVoiceIdError as exc:
            raise ApiError("invalid_voice_id", str(exc)) from None
        except VoiceNotFoundError as exc:
            raise ApiError("voice_not_found", str(exc)) from None

    # ------------------------------------------------------------------ page and health

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self, request: Request) -> HTMLResponse:
        """The listening page (plain HTML; it calls the API below, relative to the app's route prefix)."""
        root = html.escape(request.scope.get("root_path", "").rstrip("/"), quote=True)
        text = _static("index.html").decode().replace("<head>", f'<head>\n  <base href="{root}/">', 1)
        return HTMLResponse(text)

    @api.get("/static/{name}", include_in_schema=False)
    async def static(self, name: str) -> Response:
        if name not in _STATIC_FILES:
            raise ApiError("not_found", "no such file")
        return Response(_static(name), media_type=_STATIC_FILES[name], headers={"Cache-Control": "no-cache"})

    @api.get("/healthz", response_model=HealthBody, tags=["health"])
    async def healthz(self) -> HealthBody:
        """Liveness: the app is up and can read its voices location (no API key needed)."""
        loop = asyncio.get_running_loop()
        readable = await loop.run_in_executor(None, self.registry.is_readable)
        count = len(await loop.run_in_executor(None, self.registry.list_voices)) if readable else 0
        return HealthBody(voices=count, voices_dir_readable=readable)

    @api.get("/v1/options", tags=["conversion"])
    async def options_schema(self, request: Request) -> dict[str, Any]:
        """The JSON schema of the conversion options (names, ranges, defaults, descriptions)."""
        self._authorize(request)
        return ConversionOptions.model_json_schema()

    # ------------------------------------------------------------------ voices

    async def _info(self, files: VoiceFiles) -> VoiceInfo:
        """A voice's metadata (cached per content), with its validation scores and default F0 method."""
        from rvc_ray.inference.defaults import choose_f0_method, trained_f0_method
        from rvc_ray.serve.catalog import read_voice_info

        loop = asyncio.get_running_loop()
        info = self._metadata.get(files.cache_key)
        if info is None:
            try:
                local = await loop.run_in_executor(None, self.registry.fetch, files)
            except OSError as exc:
                logger.error("voice %r could not be fetched: %s", files.voice_id, exc)
                info = VoiceInfo(
                    id=files.voice_id, sample_rate=None, version=None, use_f0=None, has_index=files.index is not None,
                    size_mb=round(files.size_bytes / _MB, 2), error="the voice file could not be fetched",
                )  # fmt: skip
                return info
            info = await loop.run_in_executor(None, read_voice_info, files, local)
            self._metadata[files.cache_key] = info
        update: dict[str, Any] = {}
        scores = self.scores.for_voice(info.epoch, info.step)
        if scores:
            update["validation"] = scores
        if info.use_f0:
            rmvpe = self.settings.features.rmvpe_path
            choice = choose_f0_method(None, self.settings.serve.f0_method, trained_f0_method(info.training), rmvpe)
            update.update(f0_method=choice.method, f0_method_reason=choice.reason)
        return info.model_copy(update=update)

    @api.get("/v1/voices", response_model=VoiceList, responses=ERROR_RESPONSES, tags=["voices"])
    async def list_voices(self, request: Request) -> VoiceList:
        """Every voice with its rate, version, run, epoch, step, validation scores and default F0 method."""
        from rvc_ray.features.f0_methods import F0_METHODS
        from rvc_ray.inference.defaults import f0_method_problem

        self._authorize(request)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.scores.refresh)
        voices = await loop.run_in_executor(None, self.registry.list_voices)
        listed = set()
        infos = []
        for files in voices:
            infos.append(await self._info(files))
            listed.add(files.cache_key)
        for stale in set(self._metadata) - listed:  # replaced or deleted files
            del self._metadata[stale]
        rmvpe = self.settings.features.rmvpe_path
        methods = {m: f0_method_problem(m, rmvpe) for m in F0_METHODS}
        return VoiceList(voices=infos, f0_methods=methods)

    @api.get("/v1/voices/{voice_id}", response_model=VoiceInfo, responses=ERROR_RESPONSES, tags=["voices"])
    async def get_voice(self, voice_id: str, request: Request) -> VoiceInfo:
        """One voice's metadata."""
        self._authorize(request)
        files = self._resolve(voice_id)
        await asyncio.get_running_loop().run_in_executor(None, self.scores.refresh)
        return await self._info(files)

    # ------------------------------------------------------------------ conversion

    @api.post(
        "/v1/voices/{voice_id}/convert",
        response_class=Response,
        responses={
            200: {"content": {"audio/wav": {}}, "description": "The converted audio (16-bit WAV)."},
            **ERROR_RESPONSES,
        },
        openapi_extra=options_openapi(),
        tags=["conversion"],
    )
    async def convert(self, voice_id: str, request: Request) -> Response:
        """Convert the uploaded audio with ``voice_id``; options as query parameters or form fields."""
        self._authorize(request)
        files = self._resolve(voice_id)
        query = self._query(request)
        options = parse_options(query, {})
        audio, fields = await read_upload(request, self.settings.serve.max_upload_mb)
        if fields:
            options = parse_options(query, fields)
        input_id, wav_16k = await self._decode(audio)
        key, cached = await self._convert_cached(files, input_id, wav_16k, options)
        blob, meta = cached
        return Response(blob, media_type="audio/wav", headers=report_headers(meta["report"], meta["sample_rate"]))

    @api.post(
        "/v1/convert",
        response_model=ConvertManyBody,
        responses=ERROR_RESPONSES,
        openapi_extra=options_openapi(_SELECTION_OPENAPI),
        tags=["conversion"],
    )
    async def convert_many(self, request: Request) -> ConvertManyBody:
        """Convert one upload with several voices (``voices=a,b`` or ``run=<name>``: all its epochs).

        Every voice's result is a URL of the cached WAV (and of its spectrogram); a voice that fails is
        reported in its entry while the others convert. Same input + voice content + options: cached.
        """
        self._authorize(request)
        query = self._query(request)
        audio, fields = await read_upload(request, self.settings.serve.max_upload_mb)
        options = parse_options(query, fields, allowed_extra=SELECTION_FIELDS)
        chosen = await self._select_voices({**query, **fields})
        input_id, wav_16k = await self._decode(audio)
        outcomes = await asyncio.gather(
            *(self._convert_entry(files, input_id, wav_16k, options, request) for files in chosen)
        )
        root = request.scope.get("root_path", "")
        return ConvertManyBody(
            input_id=input_id,
            input_duration_s=round(wav_16k.shape[0] / 16000, 4),
            input_spectrogram_url=f"{root}/v1/inputs/{input_id}.png",
            options=options.model_dump(mode="json"),
            results=list(outcomes),
        )

    async def _select_voices(self, selection: dict[str, str]) -> list[VoiceFiles]:
        names = [v.strip() for v in selection.get("voices", "").split(",") if v.strip()]
        run = selection.get("run", "").strip()
        if bool(names) == bool(run):
            raise ApiError("invalid_options", "name the voices: either 'voices' (comma-separated ids) or 'run'")
        if run:
            infos = [await self._info(f) for f in await asyncio.get_running_loop().run_in_executor(
                None, self.registry.list_voices)]  # fmt: skip
            epochs = sorted(
                (i for i in infos if i.run == run and i.epoch is not None and i.id != run),
                key=lambda i: (i.epoch or 0, i.step or 0),
            )
            names = [i.id for i in epochs] or [i.id for i in infos if i.run == run]
            if not names:
                raise ApiError("voice_not_found", f"no voices of training run {run!r}; GET /v1/voices lists them")
        if len(names) > self.settings.serve.max_voices_per_request:
            raise ApiError(
                "too_many_voices",
                f"{len(names)} voices asked; at most {self.settings.serve.max_voices_per_request} per request "
                "(serve.max_voices_per_request)",
            )
        return [self._resolve(name) for name in dict.fromkeys(names)]

    async def _convert_entry(
        self, files: VoiceFiles, input_id: str, wav_16k: np.ndarray, options: ConversionOptions, request: Request
    ) -> ConvertedVoice:
        info = await self._info(files)
        entry = ConvertedVoice(
            voice=files.voice_id, run=info.run, epoch=info.epoch, step=info.step, validation=info.validation
        )
        try:
            key, (_, meta) = await self._convert_cached(files, input_id, wav_16k, options)
        except ApiError as exc:
            return entry.model_copy(update={"error": exc.code, "detail": exc.detail})
        root = request.scope.get("root_path", "")
        return entry.model_copy(
            update={
                "audio_url": f"{root}/v1/results/{key}.wav",
                "spectrogram_url": f"{root}/v1/results/{key}.png",
                "cached": bool(meta.get("hit")),
                "report": meta["report"],
            }
        )

    @staticmethod
    def _query(request: Request) -> dict[str, str]:
        query = dict(request.query_params)
        if len(query) != len(request.query_params.multi_items()):
            raise ApiError("invalid_options", "an option is repeated in the query string")
        return query

    async def _decode(self, audio: bytes) -> tuple[str, np.ndarray]:
        """``(input id, wav_16k [N])``; the decoded input is cached for its spectrogram."""
        decoded = await asyncio.get_running_loop().run_in_executor(None, self._decode_sync, audio)
        input_id = input_key(audio)
        if self.results.get(f"in:{input_id}") is None:
            self.results.put(f"in:{input_id}", to_pcm16_wav_bytes(decoded.wav_16k, 16000), {"sample_rate": 16000})
        return input_id, decoded.wav_16k

    def _decode_sync(self, audio: bytes) -> Any:
        if not audio:
            raise ApiError("empty_upload", "the upload is empty: send an audio file")
        try:
            return decode_audio(audio, max_duration_s=self.settings.serve.max_duration_s, name="the upload")
        except AudioTooLongError as exc:
            raise ApiError("audio_too_long", str(exc)) from None
        except AudioDecodeError as exc:
            code = "unsupported_media_type" if "could not be decoded" in str(exc) else "invalid_audio"
            raise ApiError(code, str(exc)) from None

    async def _convert_cached(
        self, files: VoiceFiles, input_id: str, wav_16k: np.ndarray, options: ConversionOptions
    ) -> tuple[str, tuple[bytes, dict[str, Any]]]:
        """The result of ``files`` x input x options: from the cache, else converted (and cached)."""
        key = result_key(files.cache_key, input_id, options.model_dump(mode="json"))
        hit = self.results.get(f"out:{key}")
        if hit is not None:
            return key, (hit[0], {**hit[1], "hit": True})
        result = await self._call_converter(files, wav_16k, options)
        blob = await asyncio.get_running_loop().run_in_executor(
            None, to_pcm16_wav_bytes, result["wav"], result["sample_rate"]
        )
        meta = {"report": result["report"], "sample_rate": result["sample_rate"], "voice": files.voice_id}
        self.results.put(f"out:{key}", blob, meta)
        return key, (blob, {**meta, "hit": False})

    async def _call_converter(
        self, files: VoiceFiles, wav_16k: np.ndarray, options: ConversionOptions
    ) -> dict[str, Any]:
        voice_id = files.voice_id
        handle = self.converter.options(multiplexed_model_id=files.cache_key)
        try:
            return await handle.convert.remote(files.cache_key, wav_16k, options.model_dump())
        except InvalidOptionError as exc:
            raise ApiError("invalid_options", error_message(exc)) from None
        except AudioDecodeError as exc:
            raise ApiError("invalid_audio", error_message(exc)) from None
        except AnalysisUnavailableError as exc:
            logger.error("voice %r unavailable: %s", voice_id, str(error_cause(exc)))
            raise ApiError("voice_unavailable", error_message(exc)) from None
        except VoiceTooLargeError as exc:
            raise ApiError("voice_too_large", error_message(exc)) from None
        except (VoiceLoadError, VoiceNotFoundError, OSError) as exc:
            logger.error("voice %r could not be loaded: %s", voice_id, str(error_cause(exc)))
            raise ApiError("voice_unavailable", f"voice {voice_id!r} could not be loaded on this server") from None
        except Exception:  # noqa: BLE001 - never leak a trace; log it with an id the client can quote
            incident = uuid.uuid4().hex[:12]
            logger.exception("conversion with voice %r failed (incident %s)", voice_id, incident)
            raise ApiError(
                "internal_error", f"the conversion failed (incident {incident}); see the server logs"
            ) from None

    # ------------------------------------------------------------------ cached results

    def _cached(self, kind: str, key: str) -> tuple[bytes, dict[str, Any]]:
        if len(key) != 32 or not set(key) <= _KEY_CHARS:
            raise ApiError("result_not_found", "malformed result key")
        item = self.results.get(f"{kind}:{key}")
        if item is None:
            raise ApiError("result_not_found", "this result is no longer cached (or never was): convert again")
        return item

    async def _spectrogram(self, kind: str, key: str, title: str) -> Response:
        png = self.results.get(f"png-{kind}:{key}")
        if png is None:
            import io

            import soundfile as sf

            blob, meta = self._cached(kind, key)
            wav, rate = sf.read(io.BytesIO(blob), dtype="float32")
            image = await asyncio.get_running_loop().run_in_executor(
                None, lambda: render_spectrogram_png(wav, rate, title=meta.get("voice", title))
            )
            self.results.put(f"png-{kind}:{key}", image)
            png = (image, {})
        return Response(png[0], media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})

    @api.get("/v1/results/{key}.wav", response_class=Response, responses=ERROR_RESPONSES, tags=["conversion"])
    async def result_audio(self, key: str, request: Request) -> Response:
        """A converted result (16-bit WAV) from ``POST /v1/convert``."""
        self._authorize(request)
        blob, meta = self._cached("out", key)
        headers = {**report_headers(meta["report"], meta["sample_rate"]), "Cache-Control": "private, max-age=86400"}
        return Response(blob, media_type="audio/wav", headers=headers)

    @api.get("/v1/results/{key}.png", response_class=Response, responses=ERROR_RESPONSES, tags=["conversion"])
    async def result_spectrogram(self, key: str, request: Request) -> Response:
        """A spectrogram (PNG) of a converted result."""
        self._authorize(request)
        return await self._spectrogram("out", key, "result")

    @api.get("/v1/inputs/{key}.png", response_class=Response, responses=ERROR_RESPONSES, tags=["conversion"])
    async def input_spectrogram(self, key: str, request: Request) -> Response:
        """A spectrogram (PNG) of an uploaded input (as decoded to 16 kHz)."""
        self._authorize(request)
        return await self._spectrogram("in", key, "input")
