"""The voices location: which voice ids exist, and the files behind them, safely.

The location is a local directory or a URI that :mod:`rvc_ray.storage` knows (``s3://bucket/runs/demo/voices``).
Layout: ``<location>/<voice_id>.pth`` plus an optional ``<voice_id>.index``. A training run exports
``<name>_e<E>_s<S>.pth`` beside one ``<name>.index``; that index is found too.

Every voice has a *fingerprint* (size and modification time of its ``.pth`` and ``.index``): a file
replaced under the same name gets a new fingerprint, so caches keyed by it (a replica's loaded voices,
converted results, metadata) never serve the old content. Remote voices are downloaded once per
fingerprint into a local cache directory (:meth:`VoiceRegistry.fetch`).

Safety: a voice id must match :data:`VOICE_ID_PATTERN` (letters, digits, ``_ . -``, no leading dot,
no path separators); a local file it names must resolve, after following symlinks, to a regular file
*inside* the voices directory. Anything else is "no such voice": the client learns nothing about
the server's file system.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rvc_ray import storage
from rvc_ray.errors import InputError

__all__ = [
    "EXPORT_NAME_PATTERN",
    "VOICE_ID_PATTERN",
    "InvalidVoiceIdError",
    "LocalVoiceFiles",
    "VoiceFiles",
    "VoiceNotFoundError",
    "VoiceRegistry",
]

VOICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
EXPORT_NAME_PATTERN = re.compile(r"^(?P<name>.+)_e(?P<epoch>\d+)_s(?P<step>\d+)$")
"""``<run name>_e<epoch>_s<step>``: the voices a training run exports at each saved epoch."""


class InvalidVoiceIdError(InputError):
    """A voice id that can never name a voice (bad characters, too long)."""


class VoiceNotFoundError(LookupError):
    """A well-formed voice id with no voice file in the voices location."""


@dataclass(frozen=True)
class VoiceFiles:
    """A voice's files as locations (local paths or URIs) plus their fingerprint.

    Attributes:
        voice_id: the id (file name without ``.pth``).
        model: location of the ``.pth``.
        index: location of the ``.index``, or ``None`` when the voice has none.
        fingerprint: changes whenever either file is replaced (sizes and modification times).
        size_bytes: size of the ``.pth`` plus the ``.index``.
    """

    voice_id: str
    model: str
    index: str | None
    fingerprint: str
    size_bytes: int

    @property
    def cache_key(self) -> str:
        """``<voice_id>@<fingerprint>``: names this content of this voice (a multiplexed model id)."""
        return f"{self.voice_id}@{self.fingerprint}"


@dataclass(frozen=True)
class LocalVoiceFiles:
    """Local copies of a voice's files (the files themselves for a local voices directory)."""

    model_path: Path
    index_path: Path | None


@dataclass(frozen=True)
class _Entry:
    location: str
    size: int
    mtime_ns: int


class VoiceRegistry:
    """Resolves voice ids to files in one location (re-listed on every call: voices can be added live).

    Args:
        location: a local directory or a URI (normalised with :func:`rvc_ray.storage.normalize_location`).
        cache_dir: where remote voices are downloaded (default: a per-location folder under the temp dir).
    """

    def __init__(self, location: str | Path, cache_dir: Path | None = None) -> None:
        self.location = storage.normalize_location(location)
        self.remote = storage.is_remote(self.location)
        self.voices_dir = Path(self.location).resolve() if not self.remote else None
        digest = hashlib.sha256(self.location.encode()).hexdigest()[:16]
        self.cache_dir = cache_dir or Path(tempfile.gettempdir()) / "rvc-ray-voice-cache" / digest

    def validate_id(self, voice_id: str) -> str:
        """Return ``voice_id`` if well-formed, else raise :class:`InvalidVoiceIdError`."""
        if not isinstance(voice_id, str) or not VOICE_ID_PATTERN.fullmatch(voice_id):
            raise InvalidVoiceIdError(
                "invalid voice id: use 1-128 characters from A-Z a-z 0-9 _ . - starting with a letter or digit"
            )
        return voice_id

    def is_readable(self) -> bool:
        """True when the location is a directory (or, remote, a prefix holding objects) this process can list."""
        if self.voices_dir is not None:
            return self.voices_dir.is_dir()
        try:
            return storage.is_dir(self.location)
        except (OSError, storage.StorageError):
            return False

    # ------------------------------------------------------------------ listing

    def _inside(self, path: Path) -> Path | None:
        """The resolved path if it is a regular file inside the voices dir (symlinks followed), else None."""
        assert self.voices_dir is not None
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not resolved.is_relative_to(self.voices_dir) or not resolved.is_file():
            return None
        return resolved

    def _local_entry(self, name: str) -> _Entry | None:
        assert self.voices_dir is not None
        resolved = self._inside(self.voices_dir / name)
        if resolved is None:
            return None
        stat = resolved.stat()
        return _Entry(str(resolved), stat.st_size, stat.st_mtime_ns)

    def _remote_entries(self) -> dict[str, _Entry]:
        """``file name -> entry`` of the remote location's direct children (one listing call)."""
        import pyarrow.fs

        fs, root = storage.filesystem_and_path(self.location)
        try:
            infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=False, allow_not_found=True))
        except OSError as exc:
            raise storage.StorageError(f"cannot list voices at {self.location}: {exc}") from exc
        entries = {}
        for info in infos:
            if info.type == pyarrow.fs.FileType.File:
                name = info.path.rsplit("/", 1)[-1]
                mtime = int(info.mtime_ns) if info.mtime_ns is not None else 0
                entries[name] = _Entry(storage.join(self.location, name), int(info.size or 0), mtime)
        return entries

    def _entries(self, names: list[str], listing: dict[str, _Entry] | None) -> list[_Entry | None]:
        if listing is not None:
            return [listing.get(name) for name in names]
        return [self._local_entry(name) for name in names]

    def _build(self, voice_id: str, listing: dict[str, _Entry] | None) -> VoiceFiles:
        (model,) = self._entries([f"{voice_id}.pth"], listing)
        if model is None:
            raise VoiceNotFoundError(f"no voice named {voice_id!r}; GET /v1/voices lists the available voices")
        index_names = [f"{voice_id}.index"]
        match = EXPORT_NAME_PATTERN.fullmatch(voice_id)
        if match:
            index_names.append(f"{match.group('name')}.index")
        index = next((entry for entry in self._entries(index_names, listing) if entry is not None), None)
        parts = [f"{model.size}-{model.mtime_ns}"] + ([f"{index.size}-{index.mtime_ns}"] if index else [])
        fingerprint = hashlib.sha256(":".join(parts).encode()).hexdigest()[:16]
        return VoiceFiles(
            voice_id=voice_id,
            model=model.location,
            index=index.location if index else None,
            fingerprint=fingerprint,
            size_bytes=model.size + (index.size if index else 0),
        )

    def resolve(self, voice_id: str) -> VoiceFiles:
        """The files of ``voice_id``.

        Raises:
            InvalidVoiceIdError: malformed id.
            VoiceNotFoundError: no ``<voice_id>.pth`` in the location (also for local symlinks pointing out).
        """
        self.validate_id(voice_id)
        return self._build(voice_id, self._remote_entries() if self.remote else None)

    def list_voices(self) -> list[VoiceFiles]:
        """Every servable voice, sorted by id (files with ids that fail validation are skipped)."""
        if self.remote:
            listing = self._remote_entries()
            names = sorted(listing)
        else:
            if self.voices_dir is None or not self.voices_dir.is_dir():
                return []
            listing = None
            names = sorted(p.name for p in self.voices_dir.glob("*.pth"))
        voices = []
        for name in names:
            if not name.endswith(".pth") or not VOICE_ID_PATTERN.fullmatch(name[: -len(".pth")]):
                continue
            try:
                voices.append(self._build(name[: -len(".pth")], listing))
            except VoiceNotFoundError:
                continue
        return voices

    # ------------------------------------------------------------------ local copies

    def fetch(self, files: VoiceFiles) -> LocalVoiceFiles:
        """Local paths of ``files``: the files themselves, or (remote) copies cached per fingerprint.

        A remote voice is downloaded once per fingerprint (atomically: concurrent replicas on one node
        never read a half-written copy); older copies of the same voice are deleted.
        """
        if not self.remote:
            return LocalVoiceFiles(Path(files.model), Path(files.index) if files.index else None)
        folder = self.cache_dir / files.voice_id
        model = self._download(files.model, folder / f"{files.fingerprint}.pth")
        index = self._download(files.index, folder / f"{files.fingerprint}.index") if files.index else None
        for stale in folder.iterdir():
            if not stale.name.startswith((files.fingerprint, ".")):
                stale.unlink(missing_ok=True)
        return LocalVoiceFiles(model, index)

    @staticmethod
    def _download(location: str, target: Path) -> Path:
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        storage.download_file(location, tmp)
        os.replace(tmp, target)
        return target
