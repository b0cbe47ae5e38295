"""``rvc_ray.cluster``: the Ray Data start-up workaround (no Ray cluster needed)."""

from __future__ import annotations

import pytest

from rvc_ray.cluster import RAY_DATA_LIMITS_REFRESH_S, shorten_ray_data_limits_refresh


def test_limits_refresh_is_shortened_never_lengthened(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.data._internal.execution.resource_manager import ResourceManager

    monkeypatch.setattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S", 1)
    assert shorten_ray_data_limits_refresh() is True
    assert ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S == RAY_DATA_LIMITS_REFRESH_S

    monkeypatch.setattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S", 0.01)
    assert shorten_ray_data_limits_refresh() is True
    assert ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S == 0.01


def test_limits_refresh_leaves_a_changed_ray_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.data._internal.execution.resource_manager import ResourceManager

    monkeypatch.delattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S")
    assert shorten_ray_data_limits_refresh() is False
    assert not hasattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S")

    monkeypatch.setattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S", "1s", raising=False)
    assert shorten_ray_data_limits_refresh() is False
    assert ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S == "1s"


def test_a_stage_location_is_checked_from_this_process_and_nothing_is_left(tmp_path, monkeypatch) -> None:
    from rvc_ray.cluster import check_locations_on_cluster
    from rvc_ray.storage import StorageError

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "manifest.json").write_text("{}")
    features = tmp_path / "out" / "features"
    check_locations_on_cluster(reads=[("dataset", str(dataset))], writes=[("features", str(features))])
    # nothing left behind: no probe file, and not the folders the check created (the stage creates its own)
    assert sorted(p.name for p in dataset.iterdir()) == ["manifest.json"] and not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    check_locations_on_cluster(writes=[("features", str(features))])
    assert (tmp_path / "out").is_dir() and not features.exists()  # a folder that was there stays
    with pytest.raises(StorageError, match=rf"^dataset {tmp_path / 'nowhere'} does not exist$"):
        check_locations_on_cluster(reads=[("dataset", str(tmp_path / "nowhere"))])
    job_copy = str(tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_x" / "runs")
    with pytest.raises(StorageError, match=r"^index resolves to .*inside Ray's temporary copy"):
        check_locations_on_cluster(writes=[("features", str(features)), ("index", job_copy)])
    assert list((tmp_path / "out").iterdir()) == []  # the first output's probe is removed when the second is refused


def test_a_node_reports_a_folder_that_differs_from_the_drivers_view(tmp_path) -> None:
    from rvc_ray._node_probes import _local_view, _probe_on_node

    folder = tmp_path / "features"
    folder.mkdir()
    (folder / "part-0.parquet").write_bytes(b"x")
    seen = _local_view(str(folder))
    assert seen == ["part-0.parquet"] and _local_view(str(folder / "part-0.parquet")) == 1
    (folder / ".rvc-ray-visible-abc").write_text("abc")
    checks = [(str(folder), False, seen), (str(folder), True, "abc"), (str(folder), True, "other")]
    assert _probe_on_node(checks) == [None, None, "the folder is not there (a node-local path?)"]
    # another node's disk: an empty folder at the same path, or none at all
    assert _probe_on_node([(str(tmp_path), False, seen), (str(tmp_path / "none"), False, seen)]) == [
        "not there, or holds other files (a node-local path?)"
    ] * 2
