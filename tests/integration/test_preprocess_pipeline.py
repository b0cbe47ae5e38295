"""The Ray preprocessing pipeline end to end: demo corpus + hand-made bad files -> Parquet dataset."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rvc_ray.config import RunConfig
from rvc_ray.preprocess import SEGMENT_SCHEMA, run_preprocess
from tests.unit.preprocess.test_preprocess_report import make_bad_and_odd_files

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _shard_digests(segments_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(segments_dir.glob("part-*.parquet"))}


def test_ray_pipeline_on_demo_corpus_and_bad_files(
    ray_cluster: None, demo_corpus_dir: Path, tiny_cfg: RunConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rvc_ray.preprocess.pipeline

    # 3 groups of files at 2 per task: one task of two groups and one of one (the real rule gives 1 here)
    monkeypatch.setattr(rvc_ray.preprocess.pipeline, "groups_per_task", lambda num_groups, slots: 2)
    odd = tmp_path / "odd"
    make_bad_and_odd_files(odd)
    inputs = [demo_corpus_dir / "spk0", demo_corpus_dir / "spk1", odd]
    cfg = tiny_cfg.model_copy(update={"preprocess": tiny_cfg.preprocess.model_copy(update={"rows_per_shard": 8})})
    result = run_preprocess(cfg, inputs, tmp_path / "ray_ds")

    assert result.num_input_files == 4 + 11  # demo: 2 speakers x 2 files, plus 11 hand-made .wav files
    assert {Path(b.path).name for b in result.bad_files} == {
        "truncated.wav",
        "notes.wav",
        "nan.wav",
        "short.wav",
        "empty.wav",
        "zero.wav",
    }
    assert result.throughput > 0
    shards = json.loads((tmp_path / "ray_ds" / "manifest.json").read_text())["shards"]
    assert result.num_shards == len(shards) and sum(s["num_rows"] for s in shards) == result.num_segments
    assert all(0 < s["num_rows"] <= 8 for s in shards)  # written by the workers, per group of files

    table = pq.read_table(tmp_path / "ray_ds" / "segments")
    assert table.schema.equals(SEGMENT_SCHEMA)
    rows = table.drop_columns(["wav", "wav_16k"]).to_pylist()
    keys = [(r["source_index"], r["segment_index"]) for r in rows]
    assert keys == sorted(keys), "rows are in file order, segments in order"
    assert {r["speaker_id"] for r in rows} == {0, 1, 2}
    for r in rows:
        assert r["segment_id"] == f"{r['speaker_id']}_{r['source_index']:05d}_{r['segment_index']:04d}"
        assert 0.5 <= r["duration_s"] <= 4.0 + 1e-9
        assert r["sample_rate"] == 16000
    per_file = {}
    for r in rows:
        per_file.setdefault(r["source_index"], []).append(r["segment_index"])
    assert all(indices == list(range(len(indices))) for indices in per_file.values())  # no skipped idx1

    manifest = json.loads((tmp_path / "ray_ds" / "manifest.json").read_text())
    assert manifest["counts"]["num_segments"] == result.num_segments == table.num_rows
    assert [s["assigned_by"] for s in manifest["speakers"]] == ["input folder order"] * 3
    skipped = [Path(s["path"]) for s in manifest["skipped_files"]]
    assert skipped and all(p.parent == odd for p in skipped), "the demo corpus has only audio: nothing skipped"
    report = json.loads(result.report_path.read_text())
    demo_speakers = [s for s in report["speakers"] if s["speaker_id"] in (0, 1)]
    assert all(s["num_segments"] > 0 and s["sample_rates"] for s in demo_speakers)
    assert [s["sample_rates"] for s in demo_speakers] == [[44100], [48000]]

    # the same per-file function in a plain loop writes byte-identical shards; a rerun is a no-op
    local = run_preprocess(cfg, inputs, tmp_path / "local_ds", use_ray=False)
    assert local.num_segments == result.num_segments
    assert _shard_digests(tmp_path / "local_ds" / "segments") == _shard_digests(tmp_path / "ray_ds" / "segments")
    assert run_preprocess(cfg, inputs, tmp_path / "ray_ds").reused
