"""How extraction cuts the segment files into read blocks: enough blocks to keep every actor busy."""

from __future__ import annotations

import pytest

from rvc_ray.features.extract import SegmentFile, read_slices, rows_per_read


def test_a_small_corpus_is_cut_into_whole_batches_and_a_large_one_into_row_groups() -> None:
    # the benchmark's 2-minute corpus: one 52-row file, 2 fused actors, batches of 8 -> blocks of 8 rows
    assert rows_per_read(52, lanes=2, batch_size=8) == 8
    # the 5-minute corpus: ~110 rows, still blocks of one batch; an hour of speech: ~1200 rows, blocks of 80
    # rows, so each 32-row row group is one block (read once)
    assert rows_per_read(110, lanes=2, batch_size=8) == 8
    assert rows_per_read(1200, lanes=2, batch_size=8) == 80
    assert rows_per_read(0, lanes=1, batch_size=8) == 8


def test_slices_never_cross_a_row_group_and_skip_what_is_done() -> None:
    ids = tuple(f"s{i:02d}" for i in range(52))
    files = [SegmentFile("/d/part-0.parquet", ids, (32, 20)), SegmentFile("/d/part-1.parquet", ("t0",), (1,))]
    slices = read_slices(files, done=set(), max_rows=8)
    assert [(s["row_group"], s["start"], s["stop"]) for s in slices if s["path"] == "/d/part-0.parquet"] == [
        (0, 0, 8), (0, 8, 16), (0, 16, 24), (0, 24, 32), (1, 0, 8), (1, 8, 16), (1, 16, 20),
    ]  # fmt: skip
    assert slices[-1] == {"path": "/d/part-1.parquet", "row_group": 0, "start": 0, "stop": 1}
    assert sum(s["stop"] - s["start"] for s in slices) == 53  # every row, once

    # a resumed run: the first 10 rows are done -> the first slice goes, the second (rows 8-15) stays
    resumed = read_slices(files, done=set(ids[:10]) | {"t0"}, max_rows=8)
    assert [(s["row_group"], s["start"]) for s in resumed][:2] == [(0, 8), (0, 16)]
    assert all(s["path"] == "/d/part-0.parquet" for s in resumed)
    assert read_slices(files, done=set(ids) | {"t0"}, max_rows=8) == []


@pytest.mark.parametrize("max_rows", [1, 7, 32, 100])
def test_slices_cover_every_row_once_whatever_their_size(max_rows: int) -> None:
    ids = tuple(f"s{i:02d}" for i in range(45))
    slices = read_slices([SegmentFile("/d/p.parquet", ids, (32, 13))], done=set(), max_rows=max_rows)
    covered = [(s["row_group"], r) for s in slices for r in range(s["start"], s["stop"])]
    assert covered == [(0, r) for r in range(32)] + [(1, r) for r in range(13)]
    assert all(s["stop"] - s["start"] <= max_rows for s in slices)


def test_the_last_slices_are_cut_into_single_batches() -> None:
    ids = tuple(f"s{i:03d}" for i in range(96))
    files = [SegmentFile("/d/p.parquet", ids, (32, 32, 32))]
    slices = read_slices(files, done=set(), max_rows=32, tail_slices=2, tail_rows=8)
    assert [(s["row_group"], s["start"], s["stop"]) for s in slices] == [(0, 0, 32)] + [
        (group, start, start + 8) for group in (1, 2) for start in range(0, 32, 8)
    ]
    # done segments stay out of the cut-again tail as well
    resumed = read_slices(files, done=set(ids[32:48]), max_rows=32, tail_slices=2, tail_rows=8)
    assert [(s["row_group"], s["start"]) for s in resumed] == [(0, 0), (1, 16), (1, 24), (2, 0), (2, 8), (2, 16), (2, 24)]
    assert read_slices(files, done=set(ids), max_rows=32, tail_slices=2, tail_rows=8) == []
