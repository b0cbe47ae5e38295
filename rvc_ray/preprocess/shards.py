"""The Parquet contract of ``dataset/segments/part-*.parquet`` and a deterministic shard writer.

Workers turn each file into Arrow tables with :data:`STREAM_SCHEMA` (the segment columns plus a
``file_outcome`` column that is empty on segment rows and holds a JSON summary on the one extra row that
closes every file). :class:`ShardWriter` separates the two, and writes segment rows into
``<prefix>-00000.parquet``, ``<prefix>-00001.parquet``, ... of exactly ``rows_per_shard`` rows (the last one
fewer), in fixed-size row groups, so the same rows always give byte-identical files. The pipeline runs one
writer per group of input files, inside the worker that processes the group (prefix ``part-<group>``), so
audio never travels through the driver.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rvc_ray.audio.io import probe_audio
from rvc_ray.config import PreprocessConfig
from rvc_ray.preprocess.discovery import SourceFile
from rvc_ray.preprocess.inspection import ReadinessMeter
from rvc_ray.preprocess.segments import FileOutcome, ProcessedSegment, iter_file_segments
from rvc_ray.storage import parquet_options_for_lists

__all__ = [
    "SEGMENT_SCHEMA",
    "STREAM_SCHEMA",
    "ShardInfo",
    "ShardWriter",
    "iter_file_tables",
    "segment_id",
]

SEGMENT_SCHEMA = pa.schema(
    [
        ("segment_id", pa.string()),
        ("speaker_id", pa.int32()),
        ("speaker_name", pa.string()),
        ("source_path", pa.string()),
        ("source_index", pa.int32()),
        ("segment_index", pa.int32()),
        ("start_s", pa.float64()),
        ("duration_s", pa.float64()),
        ("sample_rate", pa.int32()),
        ("wav", pa.list_(pa.float32())),
        ("wav_16k", pa.list_(pa.float32())),
    ]
)
STREAM_SCHEMA = SEGMENT_SCHEMA.append(pa.field("file_outcome", pa.string()))
SHARD_PATTERN = "{}-{:05d}.parquet"
ROW_GROUP_ROWS = 32
ROWS_PER_TABLE = 8
PARQUET_OPTIONS = parquet_options_for_lists(
    SEGMENT_SCHEMA.names, ("wav", "wav_16k"), dictionary=["segment_id", "speaker_name", "source_path"]
)


def segment_id(speaker_id: int, source_index: int, segment_index: int) -> str:
    """``f"{speaker_id}_{source_index:05d}_{segment_index:04d}"`` (the shared contract)."""
    return f"{speaker_id}_{source_index:05d}_{segment_index:04d}"


def _list_column(arrays: list[np.ndarray]) -> pa.ListArray:
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([a.shape[0] for a in arrays], out=offsets[1:])
    values = np.concatenate(arrays).astype(np.float32, copy=False) if arrays else np.zeros(0, np.float32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.float32()))


def _segments_table(source: SourceFile, segments: list[ProcessedSegment], target_rate: int) -> pa.Table:
    n = len(segments)
    columns = {
        "segment_id": pa.array([segment_id(source.speaker_id, source.source_index, s.segment_index) for s in segments]),
        "speaker_id": pa.array([source.speaker_id] * n, pa.int32()),
        "speaker_name": pa.array([source.speaker_name] * n, pa.string()),
        "source_path": pa.array([str(source.path)] * n, pa.string()),
        "source_index": pa.array([source.source_index] * n, pa.int32()),
        "segment_index": pa.array([s.segment_index for s in segments], pa.int32()),
        "start_s": pa.array([s.start_s for s in segments], pa.float64()),
        "duration_s": pa.array([s.duration_s for s in segments], pa.float64()),
        "sample_rate": pa.array([target_rate] * n, pa.int32()),
        "wav": _list_column([s.wav for s in segments]),
        "wav_16k": _list_column([s.wav_16k for s in segments]),
        "file_outcome": pa.array([""] * n, pa.string()),
    }
    return pa.table(columns, schema=STREAM_SCHEMA)


def _outcome_table(source: SourceFile, outcome: FileOutcome, readiness: dict | None) -> pa.Table:
    summary: dict = {
        "source_index": source.source_index,
        "num_segments": outcome.num_segments,
        "num_chunks": outcome.num_chunks,
        "audio_seconds": outcome.audio_seconds,
        "segment_seconds": outcome.segment_seconds,
        "dropped": dict(sorted(outcome.dropped.items())),
        "max_buffer_samples": outcome.max_buffer_samples,
        "error": outcome.error,
        "zero_segment_reason": outcome.zero_segment_reason,
    }
    if readiness is not None:  # popped by the pipeline into the file's readiness figures
        summary["readiness"] = {k: list(v) if isinstance(v, tuple) else v for k, v in readiness.items()}
    row: dict[str, list] = {name: [None] for name in STREAM_SCHEMA.names}
    row.update({"segment_id": [""], "speaker_id": [source.speaker_id], "source_index": [source.source_index]})
    row.update({"wav": [[]], "wav_16k": [[]], "file_outcome": [json.dumps(summary, sort_keys=True)]})
    return pa.table(row, schema=STREAM_SCHEMA)


def iter_file_tables(
    source: SourceFile, pp: PreprocessConfig, target_rate: int, *, measure: bool = False
) -> Iterator[pa.Table]:
    """Process one file into Arrow tables of up to ``ROWS_PER_TABLE`` segments, then its outcome row.

    Never raises for a bad file: an error while processing is recorded in the outcome (and the report).
    With ``measure`` the outcome also holds the file's readiness figures (``"readiness"``, the
    :class:`.inspection.ReadinessMeter` fields), measured on the blocks as they are processed.
    """
    outcome = FileOutcome()
    meter = None
    pending: list[ProcessedSegment] = []
    try:
        if measure:
            meter = ReadinessMeter(probe_audio(Path(source.path)).sample_rate, pp)
        for segment in iter_file_segments(Path(source.path), pp, target_rate, outcome, meter):
            pending.append(segment)
            if len(pending) == ROWS_PER_TABLE:
                yield _segments_table(source, pending, target_rate)
                pending = []
    except Exception as exc:  # noqa: BLE001 - one broken file must not stop the run; it is reported
        outcome.error = f"processing failed: {type(exc).__name__}: {exc}"
    if pending:
        yield _segments_table(source, pending, target_rate)
    readiness = meter.figures() if meter is not None and meter.frames_read and not outcome.error else None
    yield _outcome_table(source, outcome, readiness)


@dataclass(frozen=True)
class ShardInfo:
    """One written shard: file name, row count, size and SHA-256 of its bytes."""

    name: str
    num_rows: int
    num_bytes: int
    sha256: str


class ShardWriter:
    """Writes segment rows into fixed-size Parquet shards; collects the per-file outcome rows."""

    def __init__(
        self, segments_dir: Path, rows_per_shard: int, row_group_rows: int = ROW_GROUP_ROWS, *, prefix: str = "part"
    ) -> None:
        self.segments_dir = Path(segments_dir)
        self.prefix = prefix
        self.rows_per_shard = rows_per_shard
        self.row_group_rows = min(row_group_rows, rows_per_shard)
        self.outcomes: dict[int, dict] = {}
        self.shards: list[ShardInfo] = []
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_shard = 0

    def write(self, table: pa.Table) -> None:
        """Accept a table of :data:`STREAM_SCHEMA` rows (segments and/or outcome rows), in order."""
        outcome = table.column("file_outcome").to_pylist()
        for text in outcome:
            if text:
                summary = json.loads(text)
                self.outcomes[int(summary["source_index"])] = summary
        if any(outcome):  # filtering copies the audio: only for the tables that hold outcome rows
            table = table.filter(pa.array([not text for text in outcome]))
        segments = table.select(SEGMENT_SCHEMA.names).cast(SEGMENT_SCHEMA)
        if segments.num_rows:
            self._pending.append(segments)
            self._pending_rows += segments.num_rows
            self._drain(final=False)

    def _drain(self, final: bool) -> None:
        if not self._pending_rows:
            return
        merged = pa.concat_tables(self._pending)
        offset = 0
        while merged.num_rows > offset:
            remaining = merged.num_rows - offset
            room = min(self.row_group_rows, self.rows_per_shard - self._rows_in_shard)
            if remaining < room and not final:
                break
            take = min(room, remaining)
            self._write_group(merged.slice(offset, take))
            offset += take
        rest = merged.slice(offset)
        self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def _write_group(self, group: pa.Table) -> None:
        if self._writer is None:
            path = self.segments_dir / SHARD_PATTERN.format(self.prefix, len(self.shards))
            self._writer = pq.ParquetWriter(path, SEGMENT_SCHEMA, **PARQUET_OPTIONS)
        self._writer.write_table(group, row_group_size=group.num_rows)
        self._rows_in_shard += group.num_rows
        if self._rows_in_shard == self.rows_per_shard:
            self._close_shard()

    def _close_shard(self) -> None:
        assert self._writer is not None
        self._writer.close()
        path = self.segments_dir / SHARD_PATTERN.format(self.prefix, len(self.shards))
        data = path.read_bytes()
        self.shards.append(ShardInfo(path.name, self._rows_in_shard, len(data), hashlib.sha256(data).hexdigest()))
        self._writer, self._rows_in_shard = None, 0

    def close(self, *, allow_no_shard: bool = False) -> list[ShardInfo]:
        """Flush the remaining rows and return all shards written.

        Unless ``allow_no_shard``, at least one (possibly empty) shard is left, so a dataset is never a
        directory without Parquet files.
        """
        self._drain(final=True)
        if self._writer is not None:
            self._close_shard()
        if not self.shards and not allow_no_shard:
            path = self.segments_dir / SHARD_PATTERN.format(self.prefix, 0)
            pq.write_table(SEGMENT_SCHEMA.empty_table(), path, **PARQUET_OPTIONS)
            data = path.read_bytes()
            self.shards.append(ShardInfo(path.name, 0, len(data), hashlib.sha256(data).hexdigest()))
        return list(self.shards)
