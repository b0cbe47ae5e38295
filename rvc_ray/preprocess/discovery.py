"""Finding the audio files of a preprocessing run and assigning speaker ids (docs/dataset.md, "Input layout").

* One input folder whose sub-folders hold audio: one speaker per sub-folder, in sorted order. A sub-folder
  whose name is an integer keeps that integer as its speaker id (Applio's ``dataset/<sid>/`` layout); the
  others get the smallest unused ids in sorted order. Audio directly in the root is speaker 0 (merged with
  a sub-folder named ``0`` if there is one).
* One input folder without audio sub-folders: one speaker, id 0.
* Several input folders: one speaker per folder, ids 0, 1, ... in the given order.

Files are collected recursively within a speaker and sorted by relative path. Files whose extension is not
in ``preprocess.extensions`` are listed as skipped, never silently ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rvc_ray.errors import InputError

__all__ = ["InputDiscovery", "SkippedFile", "SourceFile", "SpeakerSource", "discover_inputs"]


@dataclass(frozen=True)
class SpeakerSource:
    """One speaker: its id, a display name, the folder(s) its files come from and how the id was chosen."""

    speaker_id: int
    name: str
    folders: tuple[str, ...]
    assigned_by: str


@dataclass(frozen=True)
class SourceFile:
    """One audio file to preprocess. ``source_index`` is its position in the run's sorted file list."""

    path: Path
    speaker_id: int
    speaker_name: str
    source_index: int


@dataclass(frozen=True)
class SkippedFile:
    """A file that is not preprocessed and why (non-audio extension, unreadable, ...)."""

    path: Path
    reason: str


@dataclass(frozen=True)
class InputDiscovery:
    """Everything found under the inputs, in a deterministic order."""

    speakers: tuple[SpeakerSource, ...]
    files: tuple[SourceFile, ...]
    skipped: tuple[SkippedFile, ...]


def _walk_files(folder: Path, recursive: bool) -> list[Path]:
    pattern = folder.rglob("*") if recursive else folder.glob("*")
    return sorted((p for p in pattern if p.is_file()), key=lambda p: p.relative_to(folder).as_posix())


def _is_audio(path: Path, extensions: Sequence[str]) -> bool:
    return path.suffix.lower() in {ext.lower() for ext in extensions}


def _has_audio(folder: Path, extensions: Sequence[str]) -> bool:
    return any(_is_audio(p, extensions) for p in folder.rglob("*") if p.is_file())


def _speaker_folders(root: Path, extensions: Sequence[str]) -> list[tuple[int, str, list[tuple[Path, bool]], str]]:
    """(id, name, [(folder, recursive)], assigned_by) for the speakers of one root folder."""
    subdirs = sorted((d for d in root.iterdir() if d.is_dir() and _has_audio(d, extensions)), key=lambda d: d.name)
    root_has_audio = any(_is_audio(p, extensions) for p in root.iterdir() if p.is_file())
    if not subdirs:
        return [(0, root.name, [(root, True)], "single input folder")]
    groups: dict[int, tuple[str, list[tuple[Path, bool]], str]] = {}
    for sub in subdirs:
        if sub.name.isdigit():
            groups[int(sub.name)] = (sub.name, [(sub, True)], "integer folder name")
    if root_has_audio:
        if 0 in groups:
            name, folders, _ = groups[0]
            groups[0] = (name, [(root, False), *folders], "files in the input root merged with folder '0'")
        else:
            groups[0] = (root.name, [(root, False)], "files directly in the input root")
    next_id = 0
    for sub in subdirs:
        if sub.name.isdigit():
            continue
        while next_id in groups:
            next_id += 1
        groups[next_id] = (sub.name, [(sub, True)], "sorted folder order")
    return [(sid, name, folders, how) for sid, (name, folders, how) in sorted(groups.items())]


def _not_audio_reason(path: Path, extensions: Sequence[str]) -> str:
    return f"not audio: extension {path.suffix or '(none)'!r} is not one of {', '.join(extensions)}"


def discover_inputs(inputs: Sequence[Path], extensions: Sequence[str]) -> InputDiscovery:
    """Resolve the input folders into speakers, audio files and skipped files (see the module docstring).

    Raises:
        FileNotFoundError: an input does not exist.
        NotADirectoryError: an input is a file, not a folder.
        ValueError: no input was given, or the same folder was given twice.
    """
    if not inputs:
        raise InputError("preprocessing needs at least one input folder")
    roots = [Path(p).expanduser().resolve() for p in inputs]
    for given, root in zip(inputs, roots, strict=True):
        if not root.exists():
            raise FileNotFoundError(f"input folder {given} does not exist")
        if not root.is_dir():
            raise NotADirectoryError(f"input {given} is a file; pass the folder that holds the recordings")
    if len(set(roots)) != len(roots):
        raise InputError(f"the same input folder was given twice: {[str(r) for r in roots]}")
    if len(roots) == 1:
        plan = _speaker_folders(roots[0], extensions)
    else:
        plan = [(i, root.name, [(root, True)], "input folder order") for i, root in enumerate(roots)]

    speakers: list[SpeakerSource] = []
    files: list[SourceFile] = []
    skipped: list[SkippedFile] = []
    claimed: set[Path] = set()
    for speaker_id, name, folders, assigned_by in plan:
        speakers.append(SpeakerSource(speaker_id, name, tuple(str(f) for f, _ in folders), assigned_by))
        for folder, recursive in folders:
            for path in _walk_files(folder, recursive):
                if path in claimed:
                    continue
                claimed.add(path)
                if _is_audio(path, extensions):
                    files.append(SourceFile(path, speaker_id, name, len(files)))
                else:
                    skipped.append(SkippedFile(path, _not_audio_reason(path, extensions)))
    for root in roots:  # files in folders that hold no audio at all: still listed, never silently ignored
        for path in _walk_files(root, True):
            if path not in claimed:
                claimed.add(path)
                reason = _not_audio_reason(path, extensions) if not _is_audio(path, extensions) else "not assigned"
                skipped.append(SkippedFile(path, reason))
    return InputDiscovery(tuple(speakers), tuple(files), tuple(skipped))
