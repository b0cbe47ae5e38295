"""What ``GET /v1/voices`` says about each voice: format, training run, epoch, step, validation scores.

A voice's metadata is read from its ``.pth`` without building the generator. The validation scores of
a training run's epochs are in the run's ``metrics.jsonl`` (one ``{"kind": "epoch", "epoch": E,
"step": S, "val/mel_l1": ..., "val/mcd": ...}`` line per epoch, written by training next to the voices:
``<run>/train/metrics.jsonl`` for ``<run>/voices``); a score recorded in the voice itself (a ``val/*``
key) is used when there is no such file.
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import Any

from rvc_ray import storage
from rvc_ray.serve.schemas import VoiceInfo
from rvc_ray.serve.voices import EXPORT_NAME_PATTERN, LocalVoiceFiles, VoiceFiles

__all__ = ["RunScores", "metrics_locations", "read_voice_info"]

_PRIVATE_KEYS = ("path", "source_path", "description", "identity")
_SKIPPED_KEYS = ("weight", "config", "sr", "f0", "version")


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


def _int_or_none(value: object) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def read_voice_info(files: VoiceFiles, local: LocalVoiceFiles) -> VoiceInfo:
    """Metadata of a voice for ``GET /v1/voices`` (run, epoch and step included; scores added later).

    Reads the ``.pth`` with ``torch.load(weights_only=True, mmap=True)`` (safe: no pickled code runs; cheap:
    weights are memory-mapped, not read). Fields: ``sr``, ``f0``, ``version``, ``info`` and, for rvc-ray
    exports, the extra training record; the speaker count is the row count of ``emb_g.weight``. The run,
    epoch and step come from the export's ``model_name``/``epoch``/``step`` keys, else from the file name
    (``<run>_e<E>_s<S>``). A file that cannot be read is listed with ``error`` set (no server path in it).
    """
    import torch

    match = EXPORT_NAME_PATTERN.fullmatch(files.voice_id)
    base: dict[str, Any] = {
        "id": files.voice_id,
        "has_index": files.index is not None,
        "size_mb": round(files.size_bytes / 2**20, 2),
        "run": match.group("name") if match else files.voice_id,
        "epoch": int(match.group("epoch")) if match else None,
        "step": int(match.group("step")) if match else None,
    }
    try:
        try:
            ckpt = torch.load(local.model_path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
            ckpt = torch.load(local.model_path, map_location="cpu", weights_only=True)
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
        if key in _SKIPPED_KEYS:
            continue
        if isinstance(value, str | int | float | bool) or value is None:
            training[key] = value
        elif isinstance(value, dict):
            training[key] = _json_safe(value)
    if isinstance(ckpt.get("model_name"), str) and ckpt["model_name"]:
        base["run"] = ckpt["model_name"]
    base["epoch"] = _int_or_none(ckpt.get("epoch")) if ckpt.get("epoch") is not None else base["epoch"]
    base["step"] = _int_or_none(ckpt.get("step")) if ckpt.get("step") is not None else base["step"]
    validation = {k: float(v) for k, v in training.items() if k.startswith("val/") and isinstance(v, int | float)}
    return VoiceInfo(
        **base,
        sample_rate=_sample_rate_of(ckpt.get("sr")),
        version=str(ckpt.get("version", "v1")),
        use_f0=bool(int(ckpt.get("f0", 1))),
        num_speakers=int(emb.shape[0]) if emb is not None else None,
        training=training,
        validation=validation,
    )


def metrics_locations(voices_location: str) -> list[str]:
    """Where a training run's ``metrics.jsonl`` may be for voices in ``voices_location``."""
    if storage.is_remote(voices_location):
        parent = posixpath.dirname(voices_location.rstrip("/"))
    else:
        parent = str(Path(voices_location).parent)
    return [storage.join(parent, "train", "metrics.jsonl"), storage.join(voices_location, "metrics.jsonl")]


class RunScores:
    """Validation scores per (epoch, step) from a run's ``metrics.jsonl``, re-read when the file changes."""

    def __init__(self, voices_location: str) -> None:
        self.candidates = metrics_locations(voices_location)
        self._stamp: tuple[str, int, int] | None = None
        self._scores: dict[int, tuple[int | None, dict[str, float]]] = {}

    def _stamp_of(self, location: str) -> tuple[str, int, int] | None:
        import pyarrow.fs

        try:
            fs, path = storage.filesystem_and_path(location)
            info = fs.get_file_info(path)
        except (OSError, storage.StorageError):
            return None
        if info.type != pyarrow.fs.FileType.File:
            return None
        return (location, int(info.size or 0), int(info.mtime_ns or 0))

    def refresh(self) -> None:
        """Re-read the first existing ``metrics.jsonl`` if it changed since the last call."""
        stamp = next((s for s in map(self._stamp_of, self.candidates) if s is not None), None)
        if stamp == self._stamp:
            return
        self._stamp, self._scores = stamp, {}
        if stamp is None:
            return
        try:
            text = storage.read_text(stamp[0])
        except (OSError, UnicodeDecodeError, storage.StorageError):
            return
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written
            if not isinstance(record, dict) or record.get("kind") != "epoch" or record.get("epoch") is None:
                continue
            scores = {
                k: float(v)
                for k, v in record.items()
                if k.startswith("val/") and isinstance(v, int | float) and v == v  # not NaN
            }
            self._scores[int(record["epoch"])] = (_int_or_none(record.get("step")), scores)  # resumed runs: last wins

    def for_voice(self, epoch: int | None, step: int | None) -> dict[str, float]:
        """The ``val/*`` scores of the epoch that exported this voice (empty when unknown or another step)."""
        if epoch is None or epoch not in self._scores:
            return {}
        recorded_step, scores = self._scores[epoch]
        if step is not None and recorded_step is not None and recorded_step != step:
            return {}
        return dict(scores)
