"""rvc-ray on a real multi-node Ray cluster (a 0-CPU head and 1-CPU worker raylets) with S3 storage (moto).

* the mission's command through the head's Jobs API, on exactly 2 CPUs: the whole demo pipeline runs,
  every output lands in the bucket, the two training workers run on two different nodes;
* a worker node stopped mid-training: the run resumes from its last checkpoint in the bucket on the
  remaining nodes (one of them a spare) and loses at most one checkpoint interval;
* a work_dir that no node can use (a missing bucket) is refused before any work, exit 2;
* every single-stage command (``rvc-ray preprocess|extract|index|train --features``) refuses a location only
  the driver's machine has (a tmpfs mounted in the driver's own mount namespace) and a missing bucket,
  naming the location, the setting and the node, exit 2, nothing written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rvc_ray.config import load_run_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _keys(bucket_uri: str, prefix: str = "") -> list[str]:
    import boto3

    bucket = bucket_uri.removeprefix("s3://")
    client = boto3.client("s3")
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return keys


def _read(bucket_uri: str, key: str) -> bytes:
    import boto3

    return bytes(boto3.client("s3").get_object(Bucket=bucket_uri.removeprefix("s3://"), Key=key)["Body"].read())


def _worker_records(bucket_uri: str, prefix: str) -> list[dict[str, Any]]:
    keys = [k for k in _keys(bucket_uri, prefix) if "/workers/start-" in k]
    return [json.loads(_read(bucket_uri, k)) for k in sorted(keys)]


def _submit(cluster: Any, *args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    ray = str(Path(sys.executable).with_name("ray"))
    return subprocess.run(
        [ray, "job", "submit", "--address", cluster.dashboard_url, "--working-dir", ".", "--", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=cluster._environment(),
    )


@pytest.mark.timeout(720)
def test_mission_command_runs_the_demo_on_a_two_cpu_multinode_cluster_into_s3(multinode_cluster, s3_bucket) -> None:
    nodes = multinode_cluster.alive_nodes()
    assert sum(float(n["resources_total"].get("CPU", 0.0)) for n in nodes) == 2.0
    worker_nodes = {n["node_id"] for n in nodes if "head" not in n["resources_total"]}
    repo_runs_before = (REPO / "runs").exists()

    done = _submit(
        multinode_cluster,
        "python", "jobs/train.py",
        "--set", f"experiment.work_dir={s3_bucket}/demo",
        "--demo-seconds", "12",
        "--set", "train.epochs=2",
        "--set", "train.save_every_epochs=1",
        timeout_s=660,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "succeeded" in (done.stdout + done.stderr).lower()

    keys = _keys(s3_bucket, "demo/demo/")
    names = {k.removeprefix("demo/demo/") for k in keys}
    assert {"dataset/report.json", "dataset/report.txt", "dataset/manifest.json", "features/manifest.json"} <= names
    assert any(k.startswith("dataset/segments/part-") and k.endswith(".parquet") for k in names)
    assert any(k.startswith("features/table/part-") for k in names)
    assert "index/demo.index" in names and "voices/demo.index" in names
    assert "voices/demo.pth" in names and "voices/demo_e2_s" in " ".join(names)
    assert any(k.startswith("train/tensorboard/events.out.tfevents.") for k in names)
    assert any(k.startswith("train/demo/epoch_00002/") and k.endswith("state.pt") for k in names)
    report = json.loads(_read(s3_bucket, "demo/demo/dataset/report.json"))
    assert report["verdict"] in ("ready", "marginal", "insufficient")
    metrics = [json.loads(line) for line in _read(s3_bucket, "demo/demo/train/metrics.jsonl").splitlines()]
    assert [m["epoch"] for m in metrics if m["kind"] == "epoch"] == [1, 2]

    workers = _worker_records(s3_bucket, "demo/demo/train/")
    assert sorted(w["rank"] for w in workers) == [0, 1]
    assert len({w["node_id"] for w in workers}) == 2 and {w["node_id"] for w in workers} <= worker_nodes

    # nothing in the repository or in Ray's copy of the working directory
    assert (REPO / "runs").exists() == repo_runs_before
    assert multinode_cluster.temp_dir is not None
    assert not list(multinode_cluster.temp_dir.glob("**/runtime_resources/working_dir_files/*/runs"))


@pytest.mark.timeout(300)
def test_a_bucket_that_does_not_exist_is_refused_before_any_work(multinode_cluster, s3_bucket) -> None:
    done = _submit(
        multinode_cluster,
        "python", "jobs/train.py", "--set", "experiment.work_dir=s3://no-such-bucket-rvc/demo",
        timeout_s=240,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "error: cannot write to s3://no-such-bucket-rvc/demo/demo" in output
    assert "check that the bucket exists" in output
    assert "[rvc-ray] preprocess" not in output  # refused before any stage started

    relative = _submit(multinode_cluster, "python", "jobs/train.py", "--set", "experiment.work_dir=runs", timeout_s=240)
    assert relative.returncode != 0
    assert "inside Ray's temporary copy of the job's working directory" in relative.stdout + relative.stderr


@pytest.mark.timeout(600)
def test_a_worker_node_stopped_mid_training_resumes_from_the_bucket_on_the_other_nodes(
    multinode_cluster, s3_bucket, tmp_path: Path
) -> None:
    from rvc_ray import storage
    from rvc_ray.data.dataset import write_synthetic_feature_table
    from rvc_ray.layout import RunLayout

    overrides = [
        f"experiment.work_dir={s3_bucket}/nodeloss",
        "experiment.name=nodeloss",
        "train.epochs=6",
        "train.save_every_epochs=1",
        "train.keep_last_checkpoints=2",
        "train.num_preview_clips=0",
        "train.export_every_save=false",
        "scaling.num_workers=2",
        "scaling.cpus_per_worker=1",
        "scaling.max_failures=2",
    ]
    cfg = load_run_config("tiny_cpu", overrides)
    layout = RunLayout.from_config(cfg)
    local_features = tmp_path / "features"
    write_synthetic_feature_table(
        local_features,
        content_dim=cfg.model.content_dim,
        sample_rate=cfg.audio.sample_rate,
        frames=[32, 36, 40, 34, 38, 32, 40, 36, 30, 30, 34, 38],
        splits=["train"] * 10 + ["val"] * 2,
    )
    (local_features / "manifest.json").write_text(json.dumps({"content_encoder": {"kind": "random"}}))
    storage.upload_dir(local_features, layout.features_location)

    spare = multinode_cluster.add_worker(1, label="spare")
    prefix = "nodeloss/nodeloss/train/"
    stopped: dict[str, Any] = {}

    def stop_a_training_node() -> None:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            keys = _keys(s3_bucket, prefix + "nodeloss/")
            epochs = sorted({int(k.split("epoch_")[1][:5]) for k in keys if "/epoch_" in k and k.endswith("meta.json")})
            if epochs:
                workers = _worker_records(s3_bucket, prefix)
                victim_id = next(w["node_id"] for w in workers if w["rank"] == 1)
                by_id = {n["node_id"]: n for n in multinode_cluster.alive_nodes()}
                label = next(k for k in by_id[victim_id]["resources_total"] if k in {"w0", "w1", "spare"})
                node = next(w for w in multinode_cluster.workers if w.label == label)
                stopped.update(epoch=max(epochs), node_id=victim_id, label=label)
                multinode_cluster.stop_node(node)
                return
            time.sleep(0.5)

    # the driver is a separate process (as under `ray job submit`): this pytest process may already run the
    # suite's local Ray (ray_cluster fixture) and must not join another cluster
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import json, sys\n"
        "from rvc_ray.config import load_run_config\n"
        "from rvc_ray.train.launch import fit\n"
        "cfg = load_run_config('tiny_cpu', json.loads(sys.argv[1]))\n"
        "result = fit(cfg, sys.argv[2])\n"
        "print('EPOCHS', result.epochs_completed)\n"
    )
    env = {**multinode_cluster._environment(), "RAY_ADDRESS": multinode_cluster.gcs_address,
           "PYTHONPATH": str(REPO)}
    killer = threading.Thread(target=stop_a_training_node, daemon=True)
    killer.start()
    done = subprocess.run(
        [sys.executable, str(driver), json.dumps(overrides), layout.features_location],
        capture_output=True, text=True, timeout=500, env=env, cwd=tmp_path,
    )
    killer.join(timeout=5)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "EPOCHS 6" in done.stdout
    assert stopped, "no checkpoint appeared in the bucket, so no node was stopped"
    metrics = [json.loads(line) for line in _read(s3_bucket, prefix + "metrics.jsonl").splitlines()]
    starts = [m for m in metrics if m["kind"] == "start"]
    assert len(starts) == 2 and starts[1]["resumed_from"] == "checkpoint"
    # at most one checkpoint interval lost: the restart continues right after the newest checkpoint seen
    assert stopped["epoch"] + 1 <= starts[1]["start_epoch"] <= stopped["epoch"] + 2
    assert [m["epoch"] for m in metrics if m["kind"] == "epoch"][-1] == 6
    after = [w for w in _worker_records(s3_bucket, prefix) if w["start_epoch"] == starts[1]["start_epoch"]]
    assert len(after) == 2 and stopped["node_id"] not in {w["node_id"] for w in after}
    # the stopped node is gone and two 1-CPU workers are left for the session's later tests (rank 1 may have
    # run on the spare, which is then the one stopped)
    alive = {w.label for w in multinode_cluster.workers if w.alive}
    assert stopped["label"] not in alive and len(alive & {"w0", "w1", spare.label}) == 2


def _driver_only(cluster: Any, node_local: Path, seed: Path | None, *rvc_ray_args: str) -> subprocess.CompletedProcess[str]:
    """``rvc-ray <args>`` as a driver of ``cluster``, in its own mount namespace where ``node_local`` is a tmpfs
    (a copy of ``seed``) that only this driver sees: a disk of the driver's machine that no other node has."""
    fill = f"cp -r {seed}/. {node_local}/ && " if seed is not None else ""
    script = f"mount -t tmpfs rvc-node-local {node_local} && {fill}exec {Path(sys.executable).with_name('rvc-ray')} \"$@\""
    user = [] if os.geteuid() == 0 else ["--map-root-user"]
    return subprocess.run(
        ["unshare", "--mount", *user, "sh", "-c", script, "sh", *rvc_ray_args],
        capture_output=True, text=True, timeout=240, cwd=node_local.parent,
        env={**cluster._environment(), "PYTHONPATH": str(REPO)},
    )


def _refused(done: subprocess.CompletedProcess[str], setting: str, location: Path, node_ids: set[str]) -> str:
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {setting} {location} cannot be used from node "), line
    assert line.split("(", 1)[1][:8] in node_ids and "a node-local path?" in line, line  # the node: "<ip> (<id>)"
    assert "use a folder every node mounts (NFS) or a URI" in line
    return line


@pytest.mark.timeout(300)
def test_every_stage_refuses_a_driver_only_folder_and_a_missing_bucket(
    multinode_cluster, demo_corpus_dir: Path, tmp_path: Path
) -> None:
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--mount", "true"]).returncode != 0:
        pytest.skip("needs unshare(1) with mount namespaces to give the driver a disk no other node sees")
    node_ids = {str(n["node_id"])[:8] for n in multinode_cluster.alive_nodes()}
    node_local = tmp_path / "node_local"  # the other nodes see this empty folder; the driver, its own tmpfs
    node_local.mkdir()
    shared = tmp_path / "shared"  # what every node sees (the same disk on this one machine)
    work = ["-c", "tiny_cpu", "-s", f"experiment.work_dir={shared / 'runs'}"]

    # inputs only the driver has: the recordings, the features (index and train read them)
    pre = _driver_only(multinode_cluster, node_local, demo_corpus_dir, "preprocess", "-i", str(node_local), *work)
    _refused(pre, "input folder", node_local, node_ids)
    features = tmp_path / "features_seed"
    (features / "table").mkdir(parents=True)
    (features / "table" / "part-00000.parquet").write_bytes(b"only the driver has this")
    index = _driver_only(multinode_cluster, node_local, features, "index", "--features", str(node_local), *work)
    _refused(index, "features", node_local, node_ids)
    train = _driver_only(multinode_cluster, node_local, features, "train", "--features", str(node_local), *work)
    _refused(train, "features", node_local, node_ids)
    # an output only the driver has: refused after the driver wrote (and removed) its probe there
    dataset = tmp_path / "dataset_seed"
    dataset.mkdir()
    (dataset / "manifest.json").write_text("{}")
    extract = _driver_only(
        multinode_cluster, node_local, None, "extract", "--dataset", str(dataset), "-o", str(node_local), *work
    )
    _refused(extract, "features", node_local, node_ids)
    assert not shared.exists() and not list(node_local.iterdir())  # nothing written where any node looks

    # a bucket that does not exist: refused by the driver, before Ray is asked for anything
    missing = ["-c", "tiny_cpu", "-s", "experiment.work_dir=s3://no-such-bucket-rvc/x"]
    for stage in ("extract", "index"):
        done = subprocess.run(
            [str(Path(sys.executable).with_name("rvc-ray")), stage, *missing],
            capture_output=True, text=True, timeout=240, cwd=tmp_path,
            env={**multinode_cluster._environment(), "PYTHONPATH": str(REPO)},
        )
        assert done.returncode == 2, done.stderr[-3000:]
        line = done.stderr.strip().splitlines()[-1]
        assert line.startswith("error: ") and "s3://no-such-bucket-rvc/x/demo/" in line, line
        assert "check that the bucket exists" in line, line
