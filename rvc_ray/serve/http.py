"""The HTTP side of the app: the FastAPI object, JSON errors, auth, upload and option parsing.

Every error is answered as :class:`rvc_ray.serve.schemas.ErrorBody` JSON with the status of its code
(``ERROR_STATUS``), and never holds a server path or a trace.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from rvc_ray.inference.options import ConversionOptions
from rvc_ray.serve.schemas import ERROR_STATUS, ErrorBody

__all__ = [
    "ERROR_RESPONSES",
    "OPTION_NAMES",
    "SELECTION_FIELDS",
    "ApiError",
    "api",
    "authorize",
    "error_cause",
    "error_message",
    "options_openapi",
    "parse_options",
    "read_upload",
    "report_headers",
]

_MB = 1024 * 1024
OPTION_NAMES = tuple(ConversionOptions.model_fields)
SELECTION_FIELDS = ("voices", "run")
"""Form fields / query parameters of ``POST /v1/convert`` that choose voices (not conversion options)."""
_AUDIO_FIELDS = ("file", "audio")


class ApiError(Exception):
    """An error answered as ``ErrorBody`` JSON with the status of its code (``ERROR_STATUS``)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(code, detail)
        self.code, self.detail = code, detail


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


def options_openapi(extra_fields: dict[str, Any] | None = None) -> dict[str, Any]:
    schema = ConversionOptions.model_json_schema()
    params = [
        {"name": name, "in": "query", "required": False, "schema": prop, "description": prop.get("description", "")}
        for name, prop in schema["properties"].items()
    ]
    form_props = {"file": {"type": "string", "format": "binary", "description": "The audio file."}}
    form_props.update(extra_fields or {})
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


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in sorted(set(ERROR_STATUS.values()))
}


def error_cause(exc: BaseException) -> BaseException:
    """The exception raised in the replica (Ray wraps it in a ``RayTaskError`` subclass of its type)."""
    return getattr(exc, "cause", None) or exc


def error_message(exc: BaseException) -> str:
    """The message of the replica's exception, without Ray's traceback text."""
    cause = error_cause(exc)
    return str(getattr(cause, "public_message", None) or cause)


def authorize(api_key: str | None, request: Request) -> None:
    """Raise ``unauthorized`` unless ``request`` carries ``api_key`` (X-API-Key or a Bearer token)."""
    if not api_key:
        return
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if given is None and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if given is None or not secrets.compare_digest(given.encode(), api_key.encode()):
        raise ApiError("unauthorized", "missing or wrong API key: send it in the X-API-Key header")


async def read_upload(request: Request, max_upload_mb: float) -> tuple[bytes, dict[str, str]]:
    """The audio bytes and the form's option fields (raw body -> no fields), within max_upload_mb."""
    limit = int(max_upload_mb * _MB)
    too_large = ApiError("upload_too_large", f"the upload is larger than {max_upload_mb:g} MB")
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
    return await _parse_form(request, bytes(body))


async def _parse_form(request: Request, body: bytes) -> tuple[bytes, dict[str, str]]:
    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(
            max_files=1, max_fields=len(OPTION_NAMES) + len(SELECTION_FIELDS) + 2
        )
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


def parse_options(
    query: dict[str, str], fields: dict[str, str], allowed_extra: tuple[str, ...] = ()
) -> ConversionOptions:
    """The conversion options of a request (query and form fields; the same option twice must agree).

    Names in ``allowed_extra`` are skipped (the caller reads them); any other unknown name is an error.
    """
    raw: dict[str, str] = {}
    for source in (query, fields):
        for key, value in source.items():
            if key in allowed_extra:
                continue
            if key not in OPTION_NAMES:
                raise ApiError("invalid_options", f"unknown option {key!r}; valid options: {', '.join(OPTION_NAMES)}")
            if key in raw and raw[key] != value:
                raise ApiError("invalid_options", f"option {key!r} is given twice with different values")
            if value.strip() != "":
                raw[key] = value
    try:
        return ConversionOptions.model_validate(raw)
    except ValidationError as exc:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()]
        raise ApiError("invalid_options", "; ".join(parts)) from None


def report_headers(report: dict[str, Any], sample_rate: int) -> dict[str, str]:
    """The ``X-RVC-*`` response headers that summarise a conversion report."""
    return {
        "X-RVC-Voice": str(report["voice"]),
        "X-RVC-Sample-Rate": str(sample_rate),
        "X-RVC-Duration-S": f"{report['output_duration_s']:.3f}",
        "X-RVC-Processing-S": f"{report['processing_s']:.3f}",
        "X-RVC-F0-Method": str(report["f0_method"]),
        "X-RVC-Chunks": str(report["num_chunks"]),
        "X-RVC-Used-Index": "true" if report["used_index"] else "false",
    }
