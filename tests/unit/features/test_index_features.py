"""Loading the index input from the feature table: every other frame of every train row, in row order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rvc_ray.errors import InputError
from rvc_ray.features.index import load_train_features


def test_load_train_features_undoes_frame_doubling_per_row_for_odd_lengths(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    dim, lengths = 4, [5, 2, 7, 1, 6]  # frames per row (100 Hz), odd and even
    rows = [rng.standard_normal((n, dim)).astype(np.float32) for n in lengths]
    split = ["train", "train", "validation", "train", "train"]
    mute = [False, False, False, True, False]
    table = pa.table(
        {
            "num_frames": pa.array(lengths, pa.int32()),
            "content_dim": pa.array([dim] * len(rows), pa.int32()),
            "content": pa.array([r.reshape(-1) for r in rows], pa.list_(pa.float32())),
            "split": split,
            "is_mute": mute,
        }
    )
    (tmp_path / "table").mkdir()
    pq.write_table(table.slice(0, 3), tmp_path / "table" / "part-a-00000.parquet", row_group_size=2)
    pq.write_table(table.slice(3), tmp_path / "table" / "part-a-00001.parquet")
    expected = np.concatenate([r[0::2] for r, s, m in zip(rows, split, mute, strict=True) if s == "train" and not m])
    loaded = load_train_features(tmp_path)
    assert loaded.dtype == np.float32 and loaded.shape == (3 + 1 + 3, dim)
    np.testing.assert_array_equal(loaded, expected)


def _write_rows(folder: Path, frames: list[int], content_frames: list[int], split: list[str | None], dim: int = 2) -> None:
    content = [np.full(n * dim, i, np.float32) for i, n in enumerate(content_frames)]
    table = pa.table(
        {
            "num_frames": pa.array(frames, pa.int32()),
            "content_dim": pa.array([dim] * len(frames), pa.int32()),
            "content": pa.array(content, pa.list_(pa.float32())),
            "split": pa.array(split, pa.string()),
            "is_mute": pa.array([False] * len(frames)),
        }
    )
    (folder / "table").mkdir(parents=True)
    pq.write_table(table, folder / "table" / "part-00000.parquet")


def test_rows_without_a_split_are_left_out_and_a_bad_row_length_is_named(tmp_path: Path) -> None:
    _write_rows(tmp_path / "ok", [4, 3, 2], [4, 3, 2], ["train", None, "train"])
    loaded = load_train_features(tmp_path / "ok", batch_rows=1)
    np.testing.assert_array_equal(loaded, np.array([[0, 0], [0, 0], [2, 2]], np.float32))
    _write_rows(tmp_path / "bad", [4, 3], [4, 2], ["train", "train"])  # row 1 holds 2 frames, says 3
    with pytest.raises(InputError, match="num_frames"):
        load_train_features(tmp_path / "bad")
