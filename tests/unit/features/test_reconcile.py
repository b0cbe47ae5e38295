"""The feature table's closing pass (extract._reconcile_table): splits over the rows present, stale rows out,
and a clean table left as written (its feature columns not read back, its files not rewritten)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rvc_ray.features.extract import FEATURE_TABLE_COLUMNS, _reconcile_table, _write_shard
from rvc_ray.features.split import assign_splits

FRAMES, DIM = 4, 3


def _rows(ids: list[tuple[str, int, bool]], splits: dict[str, str]) -> pa.Table:
    """A feature-table part: one row per (segment_id, speaker_id, is_mute), content = the row's index."""
    n = len(ids)
    columns = {
        "segment_id": [sid for sid, _, _ in ids],
        "speaker_id": pa.array([spk for _, spk, _ in ids], pa.int32()),
        "split": ["train" if mute else splits.get(sid, "train") for sid, _, mute in ids],
        "is_mute": [mute for _, _, mute in ids],
        "num_frames": pa.array([FRAMES] * n, pa.int32()),
        "content_dim": pa.array([DIM] * n, pa.int32()),
        "content": [np.full(FRAMES * DIM, i, np.float32) for i in range(n)],
        "f0_hz": [np.full(FRAMES, 100.0 + i, np.float32) for i in range(n)],
        "pitch_bins": pa.array([[1] * FRAMES] * n, pa.list_(pa.int32())),
        "wav": [np.zeros(FRAMES * 4, np.float32)] * n,
        "wav_16k": [np.zeros(FRAMES * 2, np.float32)] * n,
    }
    return pa.table(columns).select(FEATURE_TABLE_COLUMNS)


def _ids(speaker: int, count: int) -> list[tuple[str, int, bool]]:
    return [(f"{speaker}_00000_{k:04d}", speaker, False) for k in range(count)]


def test_a_clean_table_is_left_as_written(tmp_path: Path) -> None:
    rows = _ids(0, 6) + _ids(1, 6) + [("mute_0_00", 0, True)]
    splits = assign_splits([(sid, spk) for sid, spk, mute in rows if not mute], 0.3)
    parts = [_write_shard(_rows(rows[:7], splits), str(tmp_path), "run", 0),
             _write_shard(_rows(rows[7:], splits), str(tmp_path), "run", 1)]  # fmt: skip
    before = {p: Path(p).stat().st_mtime_ns for p in parts}
    counts = _reconcile_table(str(tmp_path), 0.3, {sid for sid, _, _ in rows})
    assert counts == {
        "rows": 13,
        "train": list(splits.values()).count("train") + 1,
        "val": list(splits.values()).count("val"),
        "mute": 1,
    }
    assert counts["val"] >= 2
    assert {p: Path(p).stat().st_mtime_ns for p in parts} == before  # nothing rewritten
    # the written parts keep the feature lists uncompressed and the scalar columns compressed
    meta = pq.ParquetFile(parts[0]).metadata.row_group(0)
    codecs = {meta.column(i).path_in_schema.split(".")[0]: meta.column(i).compression for i in range(meta.num_columns)}
    assert codecs["content"] == codecs["wav"] == "UNCOMPRESSED" and codecs["segment_id"] == "SNAPPY"


def test_stale_rows_go_and_splits_follow_the_rows_present(tmp_path: Path) -> None:
    speaker0, speaker1 = _ids(0, 5), _ids(1, 4)
    old_splits = assign_splits([(sid, spk) for sid, spk, _ in speaker0 + speaker1], 0.3)
    kept_part = _write_shard(_rows(speaker0, old_splits), str(tmp_path), "run", 0)
    gone_part = _write_shard(_rows(speaker1[1:3], old_splits), str(tmp_path), "run", 1)
    mixed_part = _write_shard(_rows([speaker1[3], speaker1[0]], old_splits), str(tmp_path), "run", 2)
    assert old_splits[speaker1[0][0]] == "val"
    # three of speaker 1's segments left the dataset: part 1 empties, part 2 keeps its second row, which was
    # validation and now trains (the speaker's only segment)
    expected = {sid for sid, _, _ in speaker0} | {speaker1[0][0]}

    counts = _reconcile_table(str(tmp_path), 0.3, expected)

    assert not Path(gone_part).exists()
    mixed = pq.read_table(mixed_part)
    assert mixed.column("segment_id").to_pylist() == [speaker1[0][0]]
    assert mixed.column("split").to_pylist() == ["train"]  # a speaker's single segment trains
    np.testing.assert_array_equal(mixed.column("content").to_pylist()[0], np.full(FRAMES * DIM, 1, np.float32))
    kept = pq.read_table(kept_part)
    new_splits = assign_splits([(sid, spk) for sid, spk, _ in speaker0], 0.3)
    assert kept.column("split").to_pylist() == [new_splits[sid] for sid, _, _ in speaker0]
    assert counts["rows"] == 6 and counts["train"] + counts["val"] == 6 and counts["mute"] == 0
    assert counts["val"] == list(new_splits.values()).count("val") >= 1
