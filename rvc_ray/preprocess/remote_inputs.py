"""Input folders given as URIs (``--input s3://bucket/recordings``): listing on the driver, reading in the workers.

The speaker rules of :mod:`.discovery` work on a local directory tree, so the driver lists each remote
input once and builds a *skeleton* of it in a local temporary folder: the same relative paths, as sparse
files of the same size and modification time, holding no audio. :func:`~.discovery.discover_inputs` runs
on the skeleton unchanged (same speaker ids, same file order, same fingerprints); :class:`RemoteInputs`
maps every skeleton path back to its URI. Workers then read each file from its URI
(:func:`localize_source`): the audio never passes through the driver.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from rvc_ray import storage
from rvc_ray.errors import InputError
from rvc_ray.preprocess.discovery import InputDiscovery, SourceFile

__all__ = ["RemoteInputs", "localize_source", "mirror_inputs"]


@dataclass(frozen=True)
class RemoteInputs:
    """The local folders to discover plus the skeleton-path -> URI map (empty for local inputs)."""

    roots: tuple[Path, ...]
    uri_of: dict[str, str]  # str(skeleton path, file or folder) -> URI

    def display(self, path: str | Path) -> str:
        """The URI behind a skeleton path (file or folder), or the path itself for a local input."""
        return self.uri_of.get(str(path), str(path))

    def with_uris(self, discovery: InputDiscovery) -> InputDiscovery:
        """``discovery`` with its skipped files named by their URIs (they are only reported, never read)."""
        if not self.uri_of:
            return discovery
        skipped = tuple(replace(s, path=self.display(s.path)) for s in discovery.skipped)  # type: ignore[arg-type]
        return replace(discovery, skipped=skipped)


def _mirror_one(uri: str, target: Path, uri_of: dict[str, str]) -> None:
    if not storage.is_dir(uri):
        raise InputError(f"input folder {uri} does not exist or holds no files")
    _, root_path = storage.filesystem_and_path(uri)
    target.mkdir(parents=True, exist_ok=True)
    uri_of[str(target)] = uri
    for file in storage.list_files(uri, recursive=True):
        _, file_path = storage.filesystem_and_path(file)
        relative = Path(storage.relative_path(file_path, root_path))
        local = target / relative
        local.parent.mkdir(parents=True, exist_ok=True)
        size, mtime_ns = storage.file_info(file)
        with local.open("wb") as handle:
            handle.truncate(size)  # sparse: same size as the object, no data
        os.utime(local, ns=(mtime_ns, mtime_ns))
        uri_of[str(local)] = file
        for parent in relative.parents:
            if str(parent) != ".":
                uri_of.setdefault(str(target / parent), storage.join(uri, *parent.parts))


@contextmanager
def mirror_inputs(inputs: Sequence[str | Path]) -> Iterator[RemoteInputs]:
    """Local roots to discover for ``inputs``; URIs are mirrored as skeletons (removed on exit)."""
    if not any(storage.is_remote(str(i)) for i in inputs):
        yield RemoteInputs(tuple(Path(i) for i in inputs), {})
        return
    skeleton = Path(tempfile.mkdtemp(prefix="rvc-inputs-"))
    try:
        roots: list[Path] = []
        uri_of: dict[str, str] = {}
        for index, given in enumerate(inputs):
            text = str(given)
            if not storage.is_remote(text):
                roots.append(Path(text))
                continue
            uri = storage.normalize_location(text)
            target = skeleton / str(index) / (uri.rstrip("/").rsplit("/", 1)[-1] or "input")
            _mirror_one(uri, target, uri_of)
            roots.append(target)
        yield RemoteInputs(tuple(roots), uri_of)
    finally:
        shutil.rmtree(skeleton, ignore_errors=True)


@contextmanager
def localize_source(source: SourceFile, uri: str | None) -> Iterator[SourceFile]:
    """``source`` itself, or (when it came from ``uri``) a copy of it in a local temporary file."""
    if uri is None:
        yield source
        return
    folder = Path(tempfile.mkdtemp(prefix="rvc-source-"))
    try:
        local = storage.download_file(uri, folder / Path(str(source.path)).name)
        yield replace(source, path=local)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
