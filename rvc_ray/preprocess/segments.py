"""Per-file preprocessing: decode -> mono -> high-pass -> slicer -> segments -> alpha mix -> resample (docs/rvc-reference.md §1).

:func:`iter_file_segments` is THE per-file function: the Ray Data pipeline and the plain single-process loop
(benchmarks) both call it. It reads the file in blocks of ``preprocess.block_duration_s`` so memory does not
grow with file length. Block rule (docs/dataset.md, "Long files"):

* The buffer is the audio carried over from the previous block plus the new block. It is high-passed with
  ``HIGHPASS_CONTEXT_S`` of already-seen audio in front (so the zero-phase filter has no edge there) and sliced.
* A slicer chunk is final, and its segments are emitted, only when the next chunk starts at least
  ``GUARD_S`` before the end of the buffer: every decision that closed it (the silence and the first loud frame
  after it, the filter's edge) lies inside the buffer. Everything from the first non-final chunk on is
  carried into the next buffer, starting exactly at that chunk's start, which is where the slicer of a
  whole-file pass would resume. The result equals slicing the whole file at once.
* Only a non-silent stretch longer than a block (no cut possible) is split early: its full segments are
  emitted and the carry restarts at the next segment start (same grid, to within a sample); a stretch that
  still exceeds two blocks is flushed as it is. No audio is lost in either case.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rvc_ray.audio.filters import apply_highpass, normalize_segment, segment_peak
from rvc_ray.audio.io import downmix_to_mono, iter_audio_blocks, probe_audio, resample
from rvc_ray.audio.slicing import SlicerParams, compute_segment_bounds, compute_slice_bounds
from rvc_ray.config import PreprocessConfig

if TYPE_CHECKING:
    from rvc_ray.preprocess.inspection import ReadinessMeter

__all__ = ["FileOutcome", "GUARD_S", "HIGHPASS_CONTEXT_S", "ProcessedSegment", "iter_file_segments"]

GUARD_S = 1.5  # > max_sil_kept (0.5 s) + RMS window + filter edge decay
HIGHPASS_CONTEXT_S = 1.0
WAV_16K_RATE = 16000

DROP_SHORT = "shorter_than_min_segment"
DROP_PEAK = "peak_above_max"
DROP_ZERO = "zero_peak"
DROP_NONFINITE = "non_finite"


@dataclass(frozen=True)
class ProcessedSegment:
    """One training segment. ``start_sample``/``num_source_samples`` are at the file's own rate.

    ``wav`` is float32 [round(n * sample_rate / source_rate)], ``wav_16k`` float32 at 16 kHz.
    """

    segment_index: int
    start_sample: int
    num_source_samples: int
    source_rate: int
    wav: np.ndarray
    wav_16k: np.ndarray

    @property
    def start_s(self) -> float:
        return self.start_sample / self.source_rate

    @property
    def duration_s(self) -> float:
        return self.num_source_samples / self.source_rate


@dataclass
class FileOutcome:
    """What processing one file produced; filled while :func:`iter_file_segments` runs."""

    num_segments: int = 0
    num_chunks: int = 0
    audio_seconds: float = 0.0
    segment_seconds: float = 0.0
    dropped: Counter = field(default_factory=Counter)
    max_buffer_samples: int = 0
    error: str | None = None

    @property
    def zero_segment_reason(self) -> str | None:
        if self.num_segments or self.error:
            return None
        if self.num_chunks == 0:
            return "no audio above the slicer threshold: the file is silent"
        details = ", ".join(f"{count} {reason}" for reason, count in sorted(self.dropped.items()))
        return f"every candidate segment was dropped ({details})"


class _SegmentEmitter:
    """Cuts chunks into segments, normalises, resamples and numbers them."""

    def __init__(self, pp: PreprocessConfig, source_rate: int, target_rate: int, outcome: FileOutcome) -> None:
        self.pp, self.source_rate, self.target_rate, self.outcome = pp, source_rate, target_rate, outcome
        self.next_index = 0
        self.min_samples = pp.min_segment_s * source_rate

    def segment_bounds(self, num_samples: int) -> list[tuple[int, int]]:
        return compute_segment_bounds(num_samples, self.source_rate, self.pp.segment_s, self.pp.overlap_s)

    def emit(self, audio: np.ndarray, file_offset: int, bounds: list[tuple[int, int]]) -> Iterator[ProcessedSegment]:
        for start, end in bounds:
            piece = audio[start:end]
            reason = self._drop_reason(piece)
            if reason:
                self.outcome.dropped[reason] += 1
                continue
            normalised = normalize_segment(piece, self.pp.normalize_max, self.pp.normalize_alpha).astype(np.float32)
            segment = ProcessedSegment(
                segment_index=self.next_index,
                start_sample=file_offset + start,
                num_source_samples=end - start,
                source_rate=self.source_rate,
                wav=resample(normalised, self.source_rate, self.target_rate),
                wav_16k=resample(normalised, self.source_rate, WAV_16K_RATE),
            )
            self.next_index += 1
            self.outcome.num_segments += 1
            self.outcome.segment_seconds += segment.duration_s
            yield segment

    def _drop_reason(self, piece: np.ndarray) -> str | None:
        if piece.shape[0] < self.min_samples:
            return DROP_SHORT
        peak = segment_peak(piece)
        if not np.isfinite(peak):
            return DROP_NONFINITE
        if peak <= 0.0:
            return DROP_ZERO
        if peak > self.pp.max_segment_peak:
            return DROP_PEAK
        return None


def _mono_float32(block: np.ndarray) -> np.ndarray:
    """The float32 mono signal [T] of a decoded block [T, C]: a view of a single channel, else the downmix."""
    if block.ndim == 2 and block.shape[1] == 1 and block.dtype == np.float32:
        return block[:, 0]  # the same values as the float64 downmix cast back to float32, without two copies
    return downmix_to_mono(block).astype(np.float32)


def _final_chunk_count(chunks: list[tuple[int, int]], limit: int) -> int:
    """How many leading chunks are final: chunk k is final when chunk k+1 starts at or before ``limit``."""
    count = 0
    while count + 1 < len(chunks) and chunks[count + 1][0] <= limit:
        count += 1
    return count


def iter_file_segments(
    path: Path,
    pp: PreprocessConfig,
    target_rate: int,
    outcome: FileOutcome | None = None,
    meter: ReadinessMeter | None = None,
) -> Iterator[ProcessedSegment]:
    """Yield the training segments of one audio file in order, reading it block by block.

    Args:
        path: a file that passed the readiness pass.
        pp: the preprocessing settings.
        target_rate: ``audio.sample_rate`` of the model; segments are also resampled to 16 kHz.
        outcome: filled with counts (segments, dropped by reason, chunks, seconds) as the generator runs.
        meter: given every decoded block ``[T, C]`` as read (the readiness figures without a second decode).
    """
    outcome = outcome if outcome is not None else FileOutcome()
    info = probe_audio(Path(path))
    rate = info.sample_rate
    params = SlicerParams.from_ms(
        rate,
        pp.slicer_threshold_db,
        pp.slicer_min_length_ms,
        pp.slicer_min_interval_ms,
        pp.slicer_hop_ms,
        pp.slicer_max_silence_kept_ms,
    )
    emitter = _SegmentEmitter(pp, rate, target_rate, outcome)
    block_frames = max(params.hop, int(pp.block_duration_s * rate) // params.hop * params.hop)
    guard, context_len = int(GUARD_S * rate), int(HIGHPASS_CONTEXT_S * rate)
    carry = np.zeros(0, dtype=np.float32)
    context = np.zeros(0, dtype=np.float32)
    carry_offset = frames_read = 0
    blocks = iter_audio_blocks(Path(path), block_frames, info)
    finished = False
    while not finished:
        block = next(blocks, None)
        if meter is not None and block is not None:
            meter.update(block)
        new = _mono_float32(block) if block is not None else np.zeros(0, dtype=np.float32)
        frames_read += new.shape[0]
        finished = block is None or block.shape[0] < block_frames or frames_read >= info.num_frames
        buffer = np.concatenate((carry, new)) if carry.size else new
        outcome.max_buffer_samples = max(outcome.max_buffer_samples, buffer.shape[0] + context.shape[0])
        if buffer.size == 0:
            break
        if pp.use_highpass:
            filtered = apply_highpass(
                np.concatenate((context, buffer)), rate, pp.highpass_cutoff_hz, pp.highpass_order
            )[context.shape[0] :]
        else:
            filtered = buffer.astype(np.float64)
        chunks = compute_slice_bounds(filtered, params)
        if finished:
            outcome.num_chunks += len(chunks)
            for start, end in chunks:
                yield from emitter.emit(filtered[start:end], carry_offset + start, emitter.segment_bounds(end - start))
            break
        limit = buffer.shape[0] - guard
        final = _final_chunk_count(chunks, limit)
        for start, end in chunks[:final]:
            outcome.num_chunks += 1
            yield from emitter.emit(filtered[start:end], carry_offset + start, emitter.segment_bounds(end - start))
        aligned_limit = max(0, limit) // params.hop * params.hop
        next_start = min(chunks[final][0], aligned_limit) if final < len(chunks) else aligned_limit
        if buffer.shape[0] - next_start > block_frames and final < len(chunks):
            next_start = yield from _split_long_chunk(emitter, filtered, chunks[final], next_start, limit, carry_offset)
            if buffer.shape[0] - next_start > 2 * block_frames:  # pathological: flush what is there
                outcome.num_chunks += 1
                yield from emitter.emit(
                    filtered[next_start:],
                    carry_offset + next_start,
                    emitter.segment_bounds(buffer.shape[0] - next_start),
                )
                next_start = buffer.shape[0]
        context = buffer[max(0, next_start - context_len) : next_start].copy()
        carry = buffer[next_start:].copy()
        carry_offset += next_start
        del buffer, filtered
    outcome.audio_seconds = frames_read / rate


def _split_long_chunk(
    emitter: _SegmentEmitter,
    filtered: np.ndarray,
    chunk: tuple[int, int],
    next_start: int,
    limit: int,
    carry_offset: int,
) -> Iterator[ProcessedSegment]:
    """Emit the full segments of a chunk longer than a block that end safely inside the buffer.

    Returns (via ``yield from``) the new carry start: the first segment start not emitted.
    """
    start, end = chunk
    if start != next_start:
        return next_start
    length, available = end - start, min(end, limit) - start
    tail = (emitter.pp.segment_s + emitter.pp.overlap_s) * emitter.source_rate
    full = [(a, b) for a, b in emitter.segment_bounds(length) if length - a > tail and a + tail <= available]
    if not full:
        return next_start
    yield from emitter.emit(filtered[start:end], carry_offset + start, full)
    stride = int(round(emitter.source_rate * (emitter.pp.segment_s - emitter.pp.overlap_s) * len(full)))
    return start + stride
