"""The cheap readiness pass over one file: is it usable audio, and how good is it (docs/dataset.md)?

One streaming read in blocks (bounded memory), no filtering or resampling. Per file it measures the
duration, sample rate, clipping ratio, silence ratio, an SNR estimate and the usable duration, and decides
whether the file is bad (unreadable, empty, zero-length, truncated, non-finite samples, too short).

Definitions (frames are non-overlapping, ``preprocess.slicer_hop_ms`` long, on the mono downmix):

* ``clipping_ratio``: fraction of sample frames where any channel reaches ``preprocess.clipping_level``.
* ``silence_ratio``: fraction of frames whose RMS is below ``preprocess.slicer_threshold_db``.
* ``snr_db``: 10 log10 of (mean power of the non-silent frames) / (mean power of the quietest 10 % of
  frames), capped at 99 dB (digital silence between phrases); ``None`` without any non-silent frame.
* ``usable_s``: duration minus the silent stretches of at least ``preprocess.slicer_min_interval_ms``,
  i.e. roughly what the slicer keeps.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from rvc_ray.audio.io import (
    AudioDecodeError,
    AudioInfo,
    detect_truncated_wav,
    downmix_to_mono,
    iter_audio_blocks,
    probe_audio,
)
from rvc_ray.config import PreprocessConfig
from rvc_ray.preprocess.discovery import SourceFile

__all__ = [
    "FileInspection",
    "ReadinessMeter",
    "files_measured_later",
    "inspect_file",
    "inspect_header",
    "measurable_while_processing",
    "merge_measured",
    "readiness_view",
]

SNR_CAP_DB = 99.0


@dataclass(frozen=True)
class FileInspection:
    """The readiness figures of one file. ``bad_reason`` set means the file is skipped."""

    path: str
    speaker_id: int
    source_index: int
    bad_reason: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    format: str | None = None
    subtype: str | None = None
    size_bytes: int = 0
    duration_s: float = 0.0
    usable_s: float = 0.0
    clipping_ratio: float | None = None
    silence_ratio: float | None = None
    snr_db: float | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_bad(self) -> bool:
        return self.bad_reason is not None

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["warnings"] = list(self.warnings)
        return data


def _frame_power(mono: np.ndarray, hop: int) -> np.ndarray:
    usable = (mono.shape[0] // hop) * hop
    if usable == 0:
        return np.zeros(0)
    return np.mean(mono[:usable].reshape(-1, hop) ** 2, axis=1)


def _usable_frames(silent: np.ndarray, min_interval_frames: int) -> int:
    """Frames left after removing silent runs of at least ``min_interval_frames``."""
    if silent.size == 0:
        return 0
    edges = np.diff(np.concatenate(([0], silent.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    runs = ends - starts
    return int(silent.size - runs[runs >= min_interval_frames].sum())


def _estimate_snr_db(power: np.ndarray, silent: np.ndarray) -> float | None:
    if power.size == 0 or silent.all():
        return None
    signal = float(power[~silent].mean())
    floor_count = max(1, power.size // 10)
    noise = float(np.sort(power)[:floor_count].mean())
    if noise <= 0.0:
        return SNR_CAP_DB
    return float(min(SNR_CAP_DB, 10.0 * np.log10(max(signal - noise, 1e-20) / noise)))


def inspect_header(source: SourceFile, pp: PreprocessConfig) -> FileInspection:
    """The header checks of the readiness pass (unreadable, truncated, zero-length, too short), no decoding.

    A good file comes back with its header figures only (``clipping_ratio`` ``None``): measure it with
    :func:`inspect_file` or, during processing, with a :class:`ReadinessMeter`.
    """
    return _check_header(source, pp)[0]


def _check_header(source: SourceFile, pp: PreprocessConfig) -> tuple[FileInspection, AudioInfo | None]:
    base = {"path": str(source.path), "speaker_id": source.speaker_id, "source_index": source.source_index}
    path = Path(source.path)
    try:
        size = path.stat().st_size
        info = probe_audio(path)
    except (AudioDecodeError, OSError) as exc:
        reason = str(exc).replace(f"{path}: ", "", 1)
        return FileInspection(**base, bad_reason=f"unreadable: {reason}"), None
    meta = {
        "sample_rate": info.sample_rate,
        "channels": info.channels,
        "format": info.format,
        "subtype": info.subtype,
        "size_bytes": size,
        "duration_s": info.duration_s,
    }
    truncated = detect_truncated_wav(path)
    if truncated:
        return FileInspection(**base, **meta, bad_reason=truncated), info
    if info.num_frames == 0:
        return FileInspection(**base, **meta, bad_reason="zero-length: the header is valid but holds no samples"), info
    if info.duration_s < pp.min_file_duration_s:
        reason = f"too short: {info.duration_s:.3f} s < preprocess.min_file_duration_s={pp.min_file_duration_s} s"
        return FileInspection(**base, **meta, bad_reason=reason), info
    return FileInspection(**base, **meta), info


# Integer PCM in a RIFF WAV: no NaN/inf can come out, and libsndfile reads the data chunk whose size
# detect_truncated_wav has checked (it cannot for RF64), so no decode can fail half-way: the readiness
# figures can be measured while the file is processed, after its first segments are written.
_MEASURE_WHILE_PROCESSING = {"WAV", "WAVEX"}, {"PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32"}


def measurable_while_processing(inspection: FileInspection) -> bool:
    """Can this header-checked good file skip its own decode, its figures measured by the main pass?"""
    formats, subtypes = _MEASURE_WHILE_PROCESSING
    return not inspection.is_bad and inspection.format in formats and inspection.subtype in subtypes


def inspect_file(source: SourceFile, pp: PreprocessConfig, *, header_only_if_measurable: bool = False) -> FileInspection:
    """Run the readiness pass on one file; never raises for bad audio (the reason is in ``bad_reason``).

    With ``header_only_if_measurable`` a file that :func:`measurable_while_processing` accepts is not
    decoded: it comes back as :func:`inspect_header` returns it.
    """
    header, info = _check_header(source, pp)
    if header.is_bad or info is None or (header_only_if_measurable and measurable_while_processing(header)):
        return header
    path = Path(source.path)
    meter = ReadinessMeter(info.sample_rate, pp)
    try:
        for block in iter_audio_blocks(path, meter.block_frames, info):
            if meter.update(block):
                break
    except (RuntimeError, ValueError, OSError) as exc:  # libsndfile errors are RuntimeError subclasses
        at_s = meter.frames_read / info.sample_rate
        return replace(header, bad_reason=f"decoding failed at {at_s:.2f} s: {exc}")
    if meter.bad_reason is None and meter.frames_read == 0:
        return replace(header, bad_reason="zero-length: no samples could be decoded")
    return replace(header, **meter.figures())


class ReadinessMeter:
    """The readiness figures of one file, accumulated over its decoded blocks ``[T, C]`` in order.

    Blocks must be multiples of the slicer hop long (all but the last): :attr:`block_frames` is the size
    both the readiness pass and the per-file processing (:mod:`.segments`) read.
    """

    def __init__(self, sample_rate: int, pp: PreprocessConfig) -> None:
        self.sample_rate, self.pp = sample_rate, pp
        self.hop = max(1, round(sample_rate * pp.slicer_hop_ms / 1000))
        self.block_frames = max(self.hop, int(pp.block_duration_s * sample_rate) // self.hop * self.hop)
        self.powers: list[np.ndarray] = []
        self.clipped = self.frames_read = 0
        self.bad_reason: str | None = None

    def update(self, block: np.ndarray) -> str | None:
        """Add the next block; returns (and keeps) the bad reason when it holds NaN/inf samples."""
        if self.bad_reason is not None:
            return self.bad_reason
        finite = np.isfinite(block)
        if not finite.all():
            bad_rows = np.flatnonzero(~finite.all(axis=1))
            first_s = (self.frames_read + int(bad_rows[0])) / self.sample_rate
            self.bad_reason = f"non-finite samples: {int((~finite).sum())} NaN/inf values, the first at {first_s:.3f} s"
            return self.bad_reason
        self.clipped += int((np.abs(block) >= self.pp.clipping_level).any(axis=1).sum())
        self.powers.append(_frame_power(downmix_to_mono(block), self.hop))
        self.frames_read += block.shape[0]
        return None

    def figures(self) -> dict[str, Any]:
        """The measured :class:`FileInspection` fields (``bad_reason`` set for non-finite samples)."""
        if self.bad_reason is not None:
            return {"bad_reason": self.bad_reason}
        pp = self.pp
        power = np.concatenate(self.powers) if self.powers else np.zeros(0)
        threshold_power = (10 ** (pp.slicer_threshold_db / 20.0)) ** 2
        silent = power < threshold_power
        min_interval_frames = max(1, round(pp.slicer_min_interval_ms / pp.slicer_hop_ms))
        usable_s = _usable_frames(silent, min_interval_frames) * self.hop / self.sample_rate
        clipping_ratio = self.clipped / self.frames_read if self.frames_read else 0.0
        silence_ratio = float(silent.mean()) if silent.size else 1.0
        warnings = []
        if silent.size and silent.all():
            warnings.append(f"silent: no frame is above the slicer threshold ({pp.slicer_threshold_db} dB)")
        if clipping_ratio > 0.001:
            warnings.append(f"clipping: {100 * clipping_ratio:.2f}% of samples at or above {pp.clipping_level}")
        snr_db = _estimate_snr_db(power, silent)
        if snr_db is not None and snr_db < 15.0:
            warnings.append(f"noisy: estimated SNR {snr_db:.1f} dB")
        return {
            "duration_s": self.frames_read / self.sample_rate,
            "usable_s": usable_s,
            "clipping_ratio": clipping_ratio,
            "silence_ratio": silence_ratio,
            "snr_db": snr_db,
            "warnings": tuple(warnings),
        }


def files_measured_later(inspections: Sequence[FileInspection]) -> set[int]:
    """The good files the readiness pass only header-checked: the main pass measures them."""
    return {i.source_index for i in inspections if not i.is_bad and i.clipping_ratio is None}


def readiness_view(inspections: Sequence[FileInspection], later: Collection[int]) -> list[FileInspection]:
    """The inspections for the report written before processing: a file still to be measured counts its
    whole duration as usable (an upper bound; its figures come with the final report)."""
    return [replace(i, usable_s=i.duration_s) if i.source_index in later else i for i in inspections]


def merge_measured(inspections: Sequence[FileInspection], outcomes: dict[int, dict]) -> list[FileInspection]:
    """Move the figures measured by the main pass (``outcome["readiness"]``) into their inspections."""
    merged = []
    for inspection in inspections:
        figures = outcomes.get(inspection.source_index, {}).pop("readiness", None)
        if figures is not None:
            figures["warnings"] = tuple(figures.get("warnings", ()))
            inspection = replace(inspection, **figures)
        merged.append(inspection)
    return merged
