"""The voice directory: which voice ids exist, and the files behind them, safely.

Layout: ``<voices_dir>/<voice_id>.pth`` plus an optional ``<voice_id>.index``. A training run exports
``<name>_e<E>_s<S>.pth`` beside one ``<name>.index``; that index is found too.

Safety: a voice id must match :data:`VOICE_ID_PATTERN` (letters, digits, ``_ . -``, no leading dot,
no path separators); the file it names must resolve, after following symlinks, to a regular file
*inside* the voices directory. Anything else is "no such voice": the client learns nothing about
the server's file system.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rvc_ray.errors import InputError

if TYPE_CHECKING:
    from rvc_ray.serve.schemas import VoiceInfo

__all__ = [
    "VOICE_ID_PATTERN",
    "InvalidVoiceIdError",
    "VoiceFiles",
    "VoiceNotFoundError",
    "VoiceRegistry",
    "read_voice_info",
]

VOICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_EXPORT_SUFFIX = re.compile(r"^(?P<name>.+)_e\d+_s\d+$")


class InvalidVoiceIdError(InputError):
    """A voice id that can never name a voice (bad characters, too long)."""


class VoiceNotFoundError(LookupError):
    """A well-formed voice id with no voice file in the voices directory."""


@dataclass(frozen=True)
class VoiceFiles:
    """A voice's files. ``index_path`` is ``None`` when the voice has no retrieval index."""

    voice_id: str
    model_path: Path
    index_path: Path | None


class VoiceRegistry:
    """Resolves voice ids to files inside one directory (re-scanned on every call: voices can be added live)."""

    def __init__(self, voices_dir: Path) -> None:
        self.voices_dir = Path(voices_dir).resolve()

    def validate_id(self, voice_id: str) -> str:
        """Return ``voice_id`` if well-formed, else raise :class:`InvalidVoiceIdError`."""
        if not isinstance(voice_id, str) or not VOICE_ID_PATTERN.fullmatch(voice_id):
            raise InvalidVoiceIdError(
                "invalid voice id: use 1-128 characters from A-Z a-z 0-9 _ . - starting with a letter or digit"
            )
        return voice_id

    def _inside(self, path: Path) -> Path | None:
        """The resolved path if it is a regular file inside the voices dir (symlinks followed), else None."""
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not resolved.is_relative_to(self.voices_dir) or not resolved.is_file():
            return None
        return resolved

    def _index_for(self, voice_id: str) -> Path | None:
        candidates = [self.voices_dir / f"{voice_id}.index"]
        match = _EXPORT_SUFFIX.fullmatch(voice_id)
        if match:
            candidates.append(self.voices_dir / f"{match.group('name')}.index")
        for candidate in candidates:
            resolved = self._inside(candidate)
            if resolved is not None:
                return resolved
        return None

    def resolve(self, voice_id: str) -> VoiceFiles:
        """The files of ``voice_id``.

        Raises:
            InvalidVoiceIdError: malformed id.
            VoiceNotFoundError: no ``<voice_id>.pth`` inside the directory (also for symlinks pointing out).
        """
        self.validate_id(voice_id)
        model = self._inside(self.voices_dir / f"{voice_id}.pth")
        if model is None:
            raise VoiceNotFoundError(f"no voice named {voice_id!r}; GET /v1/voices lists the available voices")
        return VoiceFiles(voice_id=voice_id, model_path=model, index_path=self._index_for(voice_id))

    def list_voices(self) -> list[VoiceFiles]:
        """Every servable voice, sorted by id (files with ids that fail validation are skipped)."""
        if not self.voices_dir.is_dir():
            return []
        voices = []
        for path in sorted(self.voices_dir.glob("*.pth")):
            voice_id = path.stem
            if not VOICE_ID_PATTERN.fullmatch(voice_id):
                continue
            try:
                voices.append(self.resolve(voice_id))
            except (InvalidVoiceIdError, VoiceNotFoundError):
                continue
        return voices


def _sample_rate_of(value: object) -> int | None:
    """RVC stores ``sr`` as ``"40k"`` (RVC-WebUI) or ``40000`` (Applio, rvc-ray)."""
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text.endswith("k") and text[:-1].isdigit():
            return int(text[:-1]) * 1000
        if text.isdigit():
            return int(text)
    return None


def read_voice_info(files: VoiceFiles) -> VoiceInfo:
    """Metadata of a voice for ``GET /v1/voices`` without building its generator.

    Reads the ``.pth`` with ``torch.load(weights_only=True, mmap=True)`` (safe: no pickled code runs; cheap:
    weights are memory-mapped, not read). Fields: ``sr``, ``f0``, ``version``, ``info`` and, for rvc-ray
    exports, the extra training record; the speaker count is the row count of ``emb_g.weight``.
    A file that cannot be read is listed with ``error`` set (no server path in it).
    """
    import torch

    from rvc_ray.serve.schemas import VoiceInfo

    size_mb = files.model_path.stat().st_size + (files.index_path.stat().st_size if files.index_path else 0)
    base = {"id": files.voice_id, "has_index": files.index_path is not None, "size_mb": round(size_mb / 2**20, 2)}
    try:
        try:
            ckpt = torch.load(files.model_path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
            ckpt = torch.load(files.model_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, not raised
        return VoiceInfo(
            **base, sample_rate=None, version=None, use_f0=None, error=f"unreadable voice file ({type(exc).__name__})"
        )
    if not isinstance(ckpt, dict) or "weight" not in ckpt:
        return VoiceInfo(**base, sample_rate=None, version=None, use_f0=None, error="not an RVC voice file")
    weights = ckpt.get("weight") or {}
    emb = weights.get("emb_g.weight") if isinstance(weights, dict) else None
    training: dict[str, object] = {}
    for key, value in ckpt.items():
        if key in ("weight", "config", "sr", "f0", "version"):
            continue
        if isinstance(value, str | int | float | bool) or value is None:
            training[key] = value
        elif isinstance(value, dict):
            training[key] = _json_safe(value)
    return VoiceInfo(
        **base,
        sample_rate=_sample_rate_of(ckpt.get("sr")),
        version=str(ckpt.get("version", "v1")),
        use_f0=bool(int(ckpt.get("f0", 1))),
        num_speakers=int(emb.shape[0]) if emb is not None else None,
        training=training,
    )


_PRIVATE_KEYS = ("path", "source_path", "description", "identity")


def _json_safe(value: object, depth: int = 0) -> object:
    """Plain JSON types only (nested dicts/lists of scalars); anything else becomes its type name.

    Keys that may hold server paths (:data:`_PRIVATE_KEYS`) are dropped: the API never shows server paths.
    """
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if depth > 3:
        return type(value).__name__
    if isinstance(value, dict):
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items() if str(k) not in _PRIVATE_KEYS}
    if isinstance(value, list | tuple):
        return [_json_safe(v, depth + 1) for v in value[:64]]
    return type(value).__name__
