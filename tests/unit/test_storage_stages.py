"""Stages reading and writing a bucket (a real moto S3 server): inputs, dataset, reporting, voices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rvc_ray import storage

pytestmark = pytest.mark.slow


def test_parquet_and_local_copies_of_a_bucket_prefix(s3_bucket: str, tmp_path: Path) -> None:
    import pyarrow as pa

    table = pa.table({"x": [1, 2, 3]})
    storage.write_parquet(table, f"{s3_bucket}/t/part-0.parquet")
    storage.write_parquet(table.slice(1), f"{s3_bucket}/t/sub/part-1.parquet")
    assert storage.read_parquet(f"{s3_bucket}/t/part-0.parquet").to_pydict() == {"x": [1, 2, 3]}
    local = storage.cached_local_copy(f"{s3_bucket}/t", tmp_path / "cache", suffix=".parquet")
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*.parquet")) == ["part-0.parquet", "sub/part-1.parquet"]
    storage.remove(f"{s3_bucket}/t/sub/part-1.parquet")
    again = storage.cached_local_copy(f"{s3_bucket}/t", tmp_path / "cache", suffix=".parquet")
    assert again == local and [p.name for p in local.rglob("*.parquet")] == ["part-0.parquet"]  # stale copy removed
    assert storage.cached_local_copy(str(tmp_path), tmp_path / "unused") == tmp_path
    assert storage.relative_path("bucket/a/b/c.txt", "bucket/a") == "b/c.txt"


def test_preprocess_reads_recordings_from_a_bucket_and_writes_the_dataset_there(
    s3_bucket: str, tmp_path: Path, tiny_cfg
) -> None:
    from rvc_ray.demo_corpus import generate_demo_corpus
    from rvc_ray.preprocess import run_preprocess

    corpus = tmp_path / "corpus"
    generate_demo_corpus(corpus, num_speakers=2, seconds_per_speaker=5.0, seed=0)
    storage.upload_dir(corpus, f"{s3_bucket}/recordings")
    out = f"{s3_bucket}/runs/demo/dataset"

    result = run_preprocess(tiny_cfg, [f"{s3_bucket}/recordings"], out, use_ray=False)

    assert result.num_segments > 0 and result.report_path == f"{out}/report.json"
    report = json.loads(storage.read_text(f"{out}/report.json"))
    assert [s["name"] for s in report["speakers"]] == ["spk0", "spk1"]
    assert all(f["path"].startswith(f"{s3_bucket}/recordings/") for f in report["files"])
    assert all(s["path"].startswith(f"{s3_bucket}/recordings/") for s in report["skipped_files"])  # the .f0.npy
    shards = storage.list_files(f"{out}/segments", suffix=".parquet")
    assert len(shards) == result.num_shards
    sources = set(storage.read_parquet(shards[0], columns=["source_path"]).column("source_path").to_pylist())
    assert sources and all(s.startswith(f"{s3_bucket}/recordings/spk") for s in sources)
    # a second run with the same inputs and config reuses the dataset in the bucket
    assert run_preprocess(tiny_cfg, [f"{s3_bucket}/recordings"], out, use_ray=False).reused


def test_reporter_uploads_metrics_and_events_and_a_resumed_run_appends(s3_bucket: str, tmp_path: Path) -> None:
    from rvc_ray.train.reporting import TrainingReporter, read_event_tags

    tb, metrics = f"{s3_bucket}/run/train/tensorboard", f"{s3_bucket}/run/train/metrics.jsonl"
    with TrainingReporter(tb, metrics) as reporter:
        reporter.log_start(step=0, note={"start_epoch": 1}, params={})
        reporter.log_epoch(epoch=1, step=3, metrics={"loss/g/total": 1.5})
        assert [json.loads(x)["kind"] for x in storage.read_text(metrics).splitlines()] == ["start", "epoch"]
    with TrainingReporter(tb, metrics, purge_step=4) as reporter:
        reporter.log_epoch(epoch=2, step=6, metrics={"loss/g/total": 1.0})
    assert [json.loads(x)["kind"] for x in storage.read_text(metrics).splitlines()] == ["start", "epoch", "epoch"]
    events = storage.list_files(tb, suffix="")
    assert events and all("events.out.tfevents." in e for e in events)
    local = storage.cached_local_copy(tb, tmp_path / "tensorboard")
    assert read_event_tags(local)["scalars"]["loss/g/total"]


def test_a_voice_is_published_to_a_bucket_with_the_latest_copy_and_the_index(s3_bucket: str, tmp_path: Path) -> None:
    from rvc_ray.model.export import publish_voice

    voice = tmp_path / "demo_e2_s6.pth"
    voice.write_bytes(b"voice")
    storage.write_bytes(f"{s3_bucket}/run/index/demo.index", b"index")
    where = publish_voice(voice, f"{s3_bucket}/run/voices", name="demo", index_location=f"{s3_bucket}/run/index/demo.index")
    assert where == f"{s3_bucket}/run/voices/demo_e2_s6.pth"
    assert storage.read_bytes(f"{s3_bucket}/run/voices/demo.pth") == b"voice"
    assert storage.read_bytes(f"{s3_bucket}/run/voices/demo.index") == b"index"
