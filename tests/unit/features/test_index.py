"""FAISS retrieval index: RVC's IVF sizing, exact retrieval of stored frames, file round trip, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rvc_ray.features.index import build_ivf_index, compute_ivf_list_count, load_index, load_train_features


@pytest.mark.parametrize(
    ("n", "n_ivf"), [(1, 1), (38, 1), (1_000, 25), (10_000, 256), (50_000, 1_282), (100_000, 2_564), (200_000, 5_128)]
)
def test_ivf_list_count_matches_rvc(n: int, n_ivf: int) -> None:
    assert compute_ivf_list_count(n) == n_ivf


def _features(n: int = 2000, dim: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_search_returns_the_exact_stored_vector(tmp_path: Path) -> None:
    import faiss

    feats = _features()
    index = build_ivf_index(feats, add_batch_size=300)
    ivf = faiss.extract_index_ivf(index)
    assert index.ntotal == len(feats) and ivf.nlist == compute_ivf_list_count(len(feats)) and ivf.nprobe == 1
    path = tmp_path / "voice.index"
    faiss.write_index(index, str(path))
    loaded = load_index(path)
    assert faiss.extract_index_ivf(loaded.index).nprobe == 1  # saved with the index, as RVC reads it
    assert loaded.vectors.shape == feats.shape
    queries = feats[[0, 17, 1999]]
    dist, ids = loaded.search(queries, k=8)
    assert dist.shape == ids.shape == (3, 8)
    np.testing.assert_allclose(dist[:, 0], 0.0, atol=1e-6)
    np.testing.assert_array_equal(loaded.vectors[ids[:, 0]], queries)
    with pytest.raises(ValueError, match=r"expected features \[T, 32\]"):
        loaded.search(np.zeros((2, 16), np.float32))


def test_kmeans_reduction_above_threshold() -> None:
    feats = _features(3000, 16)
    index = build_ivf_index(feats, kmeans_threshold=1000, kmeans_centroids=200)
    assert index.ntotal == 200


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        build_ivf_index(np.zeros((0, 8), np.float32))
    bad = _features(100, 8)
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        build_ivf_index(bad)
    (tmp_path / "broken.index").write_bytes(b"nope")
    with pytest.raises(ValueError, match="broken.index"):
        load_index(tmp_path / "broken.index")
    with pytest.raises(FileNotFoundError, match="missing.index"):
        load_index(tmp_path / "missing.index")


def test_train_features_exclude_mute_and_val_and_undo_frame_doubling(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = 4
    base = np.arange(3 * dim, dtype=np.float32).reshape(3, dim)  # 3 frames at 50 Hz
    doubled = np.repeat(base, 2, axis=0)[:5]  # frame-doubled, odd F trimmed
    rows = {
        "segment_id": ["0_00000_0000", "0_00001_0000", "mute_0_00"],
        "split": ["train", "val", "train"],
        "is_mute": [False, False, True],
        "num_frames": [5, 5, 5],
        "content_dim": [dim] * 3,
        "content": [doubled.reshape(-1), doubled.reshape(-1) + 100, doubled.reshape(-1) + 200],
    }
    table = pa.table({**rows, "content": pa.array(rows["content"], pa.list_(pa.float32()))})
    (tmp_path / "table").mkdir()
    pq.write_table(table, tmp_path / "table" / "part-00000.parquet")
    np.testing.assert_array_equal(load_train_features(tmp_path), base)
    with pytest.raises(FileNotFoundError, match="rvc-ray extract"):
        load_train_features(tmp_path / "nowhere")


def test_index_device_selection_and_the_cpu_fallback(caplog: pytest.LogCaptureFixture) -> None:
    """faiss-gpu builds when it is installed and sees a GPU; otherwise index.use_gpu falls back to the CPU
    build (same index as a CPU build), with a warning."""
    import types

    import faiss

    from rvc_ray.features.index import select_index_device

    gpu_faiss = types.SimpleNamespace(StandardGpuResources=object, get_num_gpus=lambda: 1, __version__="x")
    gpu_build_without_gpu = types.SimpleNamespace(StandardGpuResources=object, get_num_gpus=lambda: 0)
    assert select_index_device(gpu_faiss, True) == "gpu"
    assert select_index_device(gpu_faiss, False) == "cpu"
    assert select_index_device(gpu_build_without_gpu, True) == "cpu"
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        pytest.skip("a GPU faiss is available here: the fallback cannot happen")
    feats = _features(400, 8)
    with caplog.at_level("WARNING", logger="rvc_ray.features.index"):
        fallback = build_ivf_index(feats, use_gpu=True)
    assert "building the index on CPU instead" in caplog.text
    cpu = build_ivf_index(feats, use_gpu=False)
    assert fallback.ntotal == cpu.ntotal == 400
    np.testing.assert_array_equal(fallback.search(feats[:5], 3)[1], cpu.search(feats[:5], 3)[1])


def test_the_shuffle_is_the_seeded_permutation_in_place_only_when_allowed() -> None:
    """The index stores ``feats[default_rng(seed).permutation(N)]`` whether the shuffle copies or works in
    place; the caller's array changes only with ``overwrite_input``."""
    feats = _features(1500, 16)
    original = feats.copy()
    reference = build_ivf_index(feats[np.random.default_rng(99).permutation(len(feats))], seed=99, shuffle=False)
    copied = build_ivf_index(feats, seed=99)
    np.testing.assert_array_equal(feats, original)
    in_place = build_ivf_index(feats, seed=99, overwrite_input=True)
    np.testing.assert_array_equal(feats, original[np.random.default_rng(99).permutation(len(feats))])
    expected = reference.reconstruct_n(0, reference.ntotal)
    np.testing.assert_array_equal(copied.reconstruct_n(0, copied.ntotal), expected)
    np.testing.assert_array_equal(in_place.reconstruct_n(0, in_place.ntotal), expected)
    np.testing.assert_array_equal(copied.search(original[:20], 4)[1], reference.search(original[:20], 4)[1])
