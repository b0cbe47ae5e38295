"""Loading the index input from the feature table: every other frame of every train row, in row order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

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
