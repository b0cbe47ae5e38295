"""Start-up choices of the data stages (issue 13): no Ray cluster for a stand-alone index build, task slots
capped at the cores of a local cluster, the readiness pass in the driver for small datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

import rvc_ray.features.index as index_module
import rvc_ray.preprocess.pipeline as pipeline
from rvc_ray.config import RunConfig
from rvc_ray.preprocess.discovery import SourceFile


def _write_feature_table(features_dir: Path, frames: np.ndarray, rows: int) -> None:
    """A minimal feature table: ``rows`` train rows holding ``frames`` (frame-doubled, as extraction stores it)."""
    (features_dir / "table").mkdir(parents=True)
    blocks = np.array_split(frames, rows)
    content = [np.repeat(b, 2, axis=0).reshape(-1) for b in blocks]
    pq.write_table(
        pa.table(
            {
                "num_frames": pa.array([2 * len(b) for b in blocks], pa.int32()),
                "content_dim": pa.array([frames.shape[1]] * rows, pa.int32()),
                "content": pa.array(content, pa.list_(pa.float32())),
                "split": ["train"] * rows,
                "is_mute": [False] * rows,
            }
        ),
        features_dir / "table" / "part-00000.parquet",
    )


def test_cluster_in_use_follows_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    assert index_module._cluster_in_use()
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.delitem(__import__("sys").modules, "ray", raising=False)
    assert not index_module._cluster_in_use()


def test_run_index_without_a_cluster_builds_in_this_process(
    tiny_cfg: RunConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import faiss

    frames = np.random.default_rng(5).standard_normal((1200, 16)).astype(np.float32)
    _write_feature_table(tmp_path / "features", frames, rows=12)
    monkeypatch.setattr(index_module, "_cluster_in_use", lambda: False)
    monkeypatch.setattr(index_module, "_build_and_write", _only_here(index_module._build_and_write))
    result = index_module.run_index(tiny_cfg, tmp_path / "features", tmp_path / "out" / "v.index")
    assert result.num_input_frames == 1200 and result.num_vectors == 1200 and not result.used_kmeans
    index = faiss.read_index(str(result.index_path))
    assert index.ntotal == 1200 and faiss.extract_index_ivf(index).nlist == result.n_ivf == 30


def _only_here(function):
    """Wrap ``function`` so that it records the process it ran in (a Ray task would run elsewhere)."""
    import os

    def wrapper(*args, **kwargs):
        assert os.getpid() == here
        return function(*args, **kwargs)

    here = os.getpid()
    return wrapper


@pytest.mark.parametrize(
    ("address", "cluster_cpus", "cpus_per_task", "slots"),
    [(None, 4.0, 1.0, 2), (None, 4.0, 2.0, 1), (None, 1.0, 1.0, 1), ("10.0.0.1:6379", 16.0, 1.0, 16)],
)
def test_task_slots_count_cores_on_a_local_cluster(
    tiny_cfg: RunConfig,
    monkeypatch: pytest.MonkeyPatch,
    address: str | None,
    cluster_cpus: float,
    cpus_per_task: float,
    slots: int,
) -> None:
    monkeypatch.setattr(pipeline.os, "cpu_count", lambda: 2)
    if address:
        monkeypatch.setenv("RAY_ADDRESS", address)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = tiny_cfg.model_copy(
        update={"preprocess": tiny_cfg.preprocess.model_copy(update={"cpus_per_task": cpus_per_task})}
    )
    assert pipeline._task_slots(cfg, cluster_cpus) == slots


def test_header_seconds_sums_readable_headers_only(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", np.zeros(16000 * 3, np.float32), 16000)
    sf.write(tmp_path / "b.flac", np.zeros(44100, np.float32), 44100)
    (tmp_path / "c.wav").write_text("not audio")
    files = [SourceFile(tmp_path / n, 0, "s", i) for i, n in enumerate(("a.wav", "b.flac", "c.wav"))]
    assert pipeline._header_seconds(files) == pytest.approx(4.0)
