"""Storage locations: local paths and S3 URIs (against a real moto server on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rvc_ray import storage
from rvc_ray.storage import StorageError


def test_normalize_keeps_uris_and_makes_paths_absolute(tmp_path: Path) -> None:
    assert storage.normalize_location("s3://bucket/runs/") == "s3://bucket/runs"
    assert storage.normalize_location("file:///tmp/x/../y") == "/tmp/y"
    assert storage.normalize_location("runs", base=tmp_path) == str(tmp_path / "runs")
    assert storage.is_remote("s3://b/x") and storage.is_remote("gs://b")
    assert not storage.is_remote("/tmp/x") and not storage.is_remote("file:///tmp/x")
    with pytest.raises(StorageError, match="names no bucket"):
        storage.normalize_location("s3://")


def test_local_round_trip(tmp_path: Path) -> None:
    root = str(tmp_path / "run")
    storage.write_text(storage.join(root, "a", "b.txt"), "hello")
    storage.write_bytes(storage.join(root, "c.bin"), b"\x00\x01")
    assert storage.read_text(storage.join(root, "a", "b.txt")) == "hello"
    assert storage.list_files(root, recursive=True) == [storage.join(root, "a", "b.txt"), storage.join(root, "c.bin")]
    assert storage.list_files(root, suffix=".bin") == [storage.join(root, "c.bin")]
    assert storage.is_dir(root) and not storage.is_dir(storage.join(root, "c.bin"))
    storage.remove(storage.join(root, "a"))
    assert not storage.exists(storage.join(root, "a", "b.txt"))
    storage.check_writable(root)
    assert sorted(p.name for p in Path(root).iterdir()) == ["c.bin"]


@pytest.mark.slow
def test_s3_round_trip_and_dirs(s3_bucket: str, tmp_path: Path) -> None:
    local = tmp_path / "tree"
    (local / "sub").mkdir(parents=True)
    (local / "sub" / "x.txt").write_text("x")
    (local / "y.txt").write_text("y")
    written = storage.upload_dir(local, storage.join(s3_bucket, "run"))
    assert written == [f"{s3_bucket}/run/sub/x.txt", f"{s3_bucket}/run/y.txt"]
    assert storage.is_dir(f"{s3_bucket}/run") and storage.exists(f"{s3_bucket}/run/y.txt")
    assert storage.list_files(f"{s3_bucket}/run", suffix=".txt") == [f"{s3_bucket}/run/y.txt"]
    back = storage.download_dir(f"{s3_bucket}/run", tmp_path / "back")
    assert (back / "sub" / "x.txt").read_text() == "x"
    storage.check_writable(f"{s3_bucket}/run")
    storage.remove(f"{s3_bucket}/run")
    assert storage.list_files(f"{s3_bucket}/run", recursive=True) == []


@pytest.mark.parametrize("where", ["local", "s3"])
def test_parquet_row_groups_are_read_one_at_a_time(where: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    import pyarrow as pa

    root = request.getfixturevalue("s3_bucket") if where == "s3" else str(tmp_path)
    table = pa.table({"segment_id": [f"s{i}" for i in range(10)], "wav": [[float(i)] * 3 for i in range(10)]})
    location = storage.join(root, "part-00000.parquet")
    fs, path = storage.filesystem_and_path(location)
    import pyarrow.parquet as pq

    pq.write_table(table, path, filesystem=fs, row_group_size=4)
    assert storage.parquet_row_group_rows(location) == [4, 4, 2]
    last = storage.read_parquet_row_group(location, 2, columns=["segment_id"])
    assert last.column_names == ["segment_id"] and last.column("segment_id").to_pylist() == ["s8", "s9"]
    assert storage.read_parquet_row_group(location, 1).equals(table.slice(4, 4))


@pytest.mark.slow
def test_s3_missing_bucket_is_one_clear_error(s3_server: str) -> None:
    with pytest.raises(StorageError, match=r"cannot write to s3://no-such-bucket-rvc/x: .*AWS_ENDPOINT_URL"):
        storage.check_writable("s3://no-such-bucket-rvc/x")


@pytest.mark.slow
def test_s3_unreachable_endpoint_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageError, match="cannot write to s3://bucket/x"):
        storage.check_writable("s3://bucket/x")


@pytest.mark.slow
def test_s3_refused_credentials_are_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.object_store import running_moto_server

    with running_moto_server(INITIAL_NO_AUTH_ACTION_COUNT="0") as endpoint:  # moto checks keys, as S3 does
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAKNOWNKEY0000")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        with pytest.raises(StorageError, match=r"^cannot write to s3://some-bucket/runs: .*INVALID_ACCESS_KEY_ID.*AWS_SECRET_ACCESS_KEY"):
            storage.check_writable("s3://some-bucket/runs")
