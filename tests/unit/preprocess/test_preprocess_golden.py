"""Speed work must not change the output: segments and readiness figures against golden digests.

The digests were computed with the code as it was before the preprocessing speed work (issue 13) and are
asserted on the single-process loop and on the per-file function. The corpus is the deterministic demo
corpus (44.1, 48, 32 and 22.05 kHz; 16- and 24-bit) plus a stereo file and a file longer than two blocks
(``block_duration_s`` is lowered so the block carry and the high-pass context are exercised).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from rvc_ray.config import RunConfig
from rvc_ray.preprocess import run_preprocess

# sha256 over every segment row (ids, positions and the float32 bytes of wav and wav_16k), in order
GOLDEN_SEGMENTS = "bb090dddcd97f1c388440f16a3d1cb59b3224fffaae3aad4fe5052bc8c8e5951"
# sha256 over the readiness figures of every file (rounded to 9 significant digits) and the outcomes
GOLDEN_REPORT = "3076b6ba3b98840e0f1faa383eac8f51d3adc1bb6da740bfed0145becdfb5d7a"


@pytest.fixture(scope="module")
def golden_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rvc_ray.demo_corpus import generate_demo_corpus

    root = tmp_path_factory.mktemp("golden_corpus")
    generate_demo_corpus(root, num_speakers=4, seconds_per_speaker=18.0, seed=3)
    first, _ = sf.read(root / "spk0" / "spk0_00.wav", dtype="float32")
    second, rate = sf.read(root / "spk0" / "spk0_01.wav", dtype="float32")
    stereo = np.stack([first, 0.7 * first[::-1]], axis=1)
    sf.write(root / "spk0" / "spk0_stereo.wav", stereo, rate, subtype="PCM_16")
    long = np.concatenate([first, second, first, second])  # ~36 s: more than 3 blocks of 11 s
    sf.write(root / "spk1" / "spk1_long.flac", long, rate, subtype="PCM_24")
    return root


def _golden_cfg(tiny_cfg: RunConfig) -> RunConfig:
    pp = tiny_cfg.preprocess.model_copy(update={"block_duration_s": 11.0, "segment_s": 3.0, "rows_per_shard": 16})
    return tiny_cfg.model_copy(update={"preprocess": pp})


def segments_digest(segments_dir: Path) -> tuple[str, int]:
    """sha256 over the rows of ``segments_dir/part-*.parquet`` in segment-id order, and the row count."""
    table = pq.read_table(sorted(segments_dir.glob("part-*.parquet")))
    rows = sorted(table.to_pylist(), key=lambda r: r["segment_id"])
    digest = hashlib.sha256()
    for r in rows:
        head = [r[k] for k in ("segment_id", "speaker_id", "source_index", "segment_index", "sample_rate")]
        digest.update(json.dumps(head + [repr(r["start_s"]), repr(r["duration_s"])]).encode())
        digest.update(np.asarray(r["wav"], dtype=np.float32).tobytes())
        digest.update(np.asarray(r["wav_16k"], dtype=np.float32).tobytes())
    return digest.hexdigest(), len(rows)


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in sorted(value.items()) if k not in ("path", "folders", "max_buffer_samples")}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def report_digest(report_path: Path) -> str:
    report = json.loads(report_path.read_text())
    files = sorted(report["files"], key=lambda f: f["source_index"])
    payload = {"files": _rounded(files), "speakers": _rounded(report["speakers"]), "verdict": report["verdict"]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def test_local_loop_output_matches_the_golden_digests(golden_corpus: Path, tiny_cfg: RunConfig, tmp_path: Path) -> None:
    result = run_preprocess(_golden_cfg(tiny_cfg), [golden_corpus], tmp_path / "ds", use_ray=False)
    digest, rows = segments_digest(tmp_path / "ds" / "segments")
    assert rows == result.num_segments > 20
    assert (digest, report_digest(result.report_path)) == (GOLDEN_SEGMENTS, GOLDEN_REPORT)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("readiness_in", ["driver", "tasks"])
def test_ray_pipeline_output_matches_the_golden_digests(
    readiness_in: str,
    ray_cluster: None,
    golden_corpus: Path,
    tiny_cfg: RunConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rvc_ray.preprocess import pipeline

    if readiness_in == "tasks":  # as for more than LOCAL_READINESS_MAX_S of audio
        monkeypatch.setattr(pipeline, "LOCAL_READINESS_MAX_S", 0.0)
    result = run_preprocess(_golden_cfg(tiny_cfg), [golden_corpus], tmp_path / "ds", use_ray=True)
    digest, rows = segments_digest(tmp_path / "ds" / "segments")
    assert rows == result.num_segments
    assert (digest, report_digest(result.report_path)) == (GOLDEN_SEGMENTS, GOLDEN_REPORT)
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["engine"] == "ray"


@pytest.mark.slow
@pytest.mark.parametrize("readiness_in", ["driver", "workers"])
def test_worker_processes_output_matches_the_golden_digests(
    readiness_in: str, golden_corpus: Path, tiny_cfg: RunConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No Ray cluster in use: the same task functions in worker processes on this machine, the same bytes
    (the readiness pass in the driver while the workers start, or, for much audio, in the workers)."""
    import os

    from rvc_ray import cluster
    from rvc_ray.preprocess import pipeline
    from rvc_ray.preprocess.local_processes import THREAD_LIMIT_VARIABLES

    monkeypatch.setattr(cluster, "cluster_in_use", lambda: False)
    if readiness_in == "workers":
        monkeypatch.setattr(pipeline, "LOCAL_READINESS_MAX_S", 0.0)
    for name in THREAD_LIMIT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    result = run_preprocess(_golden_cfg(tiny_cfg), [golden_corpus], tmp_path / "ds", use_ray=True)
    digest, rows = segments_digest(tmp_path / "ds" / "segments")
    assert rows == result.num_segments
    assert (digest, report_digest(result.report_path)) == (GOLDEN_SEGMENTS, GOLDEN_REPORT)
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["engine"] == "processes"
    assert not any(name in os.environ for name in THREAD_LIMIT_VARIABLES)  # set for the workers only


def test_a_failing_driver_cancels_the_queued_worker_tasks() -> None:
    import time

    from rvc_ray.preprocess.local_processes import local_worker_pool

    with pytest.raises(RuntimeError, match="driver failed"), local_worker_pool(1, 1) as pool:
        queued = [pool.submit(time.sleep, 0.5) for _ in range(6)]
        started = time.perf_counter()
        raise RuntimeError("driver failed")
    assert sum(f.cancelled() for f in queued) >= 4  # not run: the pool did not work through its queue
    assert time.perf_counter() - started < 2.5


def _worker_view() -> tuple[int, bool]:
    import os
    import sys

    return os.getppid(), "scipy.signal" in sys.modules


def test_workers_come_from_a_fork_server_that_imported_their_modules() -> None:
    """On Linux the workers are forked from a server process that imported the per-file work's modules once
    (scipy.signal alone takes ~0.6 s), not spawned to import them each, nor forked from the driver."""
    import os

    from rvc_ray.preprocess.local_processes import local_worker_pool

    with local_worker_pool(2, 1) as pool:
        views = {pool.submit(_worker_view).result() for _ in range(4)}
    parents = {parent for parent, _ in views}
    assert len(parents) == 1 and os.getpid() not in parents  # one fork server, not this process
    assert all(imported for _, imported in views)
