"""A Ray Tune sweep on a real multi-node cluster with S3 storage (issue #11 point 3, Tune; issue #12 point 4).

The session's multi-node cluster (tests/multinode.py: a 0-CPU head with ``tune_driver`` slots, two 1-CPU
worker raylets) and S3 server (moto) run 4 trials of the tiny preset, 2 at once, with the features, the
sweep state, every trial's run, the results table, the plot and ``best/`` in the bucket
(``experiment.work_dir=s3://<bucket>/runs``): each trial's 2 Train workers (0.5 CPU each)
fill one worker node, so concurrent trials run on different nodes. One trial's model cannot be allocated
(``model.spk_embed_dim=10**13``: torch's allocator refuses 640 TB in the trial's workers, a real
out-of-memory error); with ``scaling.max_failures=2`` Ray Train would retry it twice, but the sweep fails
it at once and goes on. Trials train 3 epochs and are saved at epoch 2 and 3 (``save_every_epochs=2``,
the last epoch is always saved), ASHA may stop them at epoch 1 or 2: the best trial is scored at a saved
epoch and ``best/`` holds that epoch's voice.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
from pathlib import Path

import pytest
import torch

from rvc_ray import storage
from rvc_ray.config import RunConfig, load_run_config
from rvc_ray.data.dataset import write_synthetic_feature_table

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]

TOO_BIG = 10**13  # speaker-embedding rows: 640 TB of float32, refused by the allocator without touching memory
SEARCH = [f"model.spk_embed_dim=grid(2, 3, 4, {TOO_BIG})", "train.batch_size=choice(2, 4)"]


def _sweep_config(work_dir: str) -> RunConfig:
    return load_run_config(
        "tiny_cpu",
        [
            f"experiment.work_dir={work_dir}",
            "experiment.name=multinode_sweep",
            "train.epochs=3",
            "train.save_every_epochs=2",
            "train.num_preview_clips=0",
            "scaling.max_failures=2",  # Ray Train would retry a failed worker group twice
            "tune.num_samples=1",
            "tune.max_concurrent_trials=2",
            "tune.scheduler=asha",
            "tune.grace_period_epochs=1",
            "tune.reduction_factor=2",
        ],
    )


def _upload_features(location: str, cfg: RunConfig) -> None:
    frames = [36 + (i * 5) % 16 for i in range(16)] + [40, 48]  # speakers 0 and 1
    with tempfile.TemporaryDirectory() as local:
        write_synthetic_feature_table(
            Path(local),
            content_dim=cfg.model.content_dim,
            sample_rate=cfg.audio.sample_rate,
            frames=frames,
            splits=["train"] * 16 + ["val"] * 2,
            seed=0,
        )
        storage.upload_dir(local, location)


def _train_worker_nodes(address: str) -> set[str]:
    """The nodes on which this driver's (the sweep's) Ray Train workers ran (Ray's state API; dead actors are
    listed too, so the filter on this job leaves out workers of earlier tests on the session's cluster)."""
    import ray
    from ray.util.state import list_actors

    job_id = ray.get_runtime_context().get_job_id()
    actors = list_actors(
        address=address,
        filters=[("class_name", "=", "RayTrainWorker"), ("job_id", "=", job_id)],
        limit=1000,
        raise_on_missing_output=False,
    )
    return {a.node_id for a in actors}


def test_sweep_spreads_over_nodes_fails_oom_trial_at_once_and_keeps_the_scored_voice(
    multinode_cluster, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rvc_ray.tune.launch import run_tune
    from tests.multinode import driver_connected_to

    monkeypatch.chdir(tmp_path)  # nothing may land in the current directory
    cfg = _sweep_config(f"{s3_bucket}/runs")
    features = f"{s3_bucket}/features"
    _upload_features(features, cfg)
    with driver_connected_to(multinode_cluster):
        result = run_tune(cfg, features, search=SEARCH)
        worker_nodes = _train_worker_nodes(multinode_cluster.gcs_address)

    # the sweep ran on both worker nodes, 2 trials at once
    nodes = multinode_cluster.alive_nodes()
    worker_node_ids = {n["node_id"] for n in nodes if float(n["resources_total"].get("CPU", 0.0)) > 0}
    assert worker_nodes == worker_node_ids and len(worker_node_ids) == 2
    assert result.max_concurrent_trials == 2

    # 4 trials; the one whose model does not fit failed at once, with the reason, and the sweep went on
    assert result.num_trials == 4 and result.num_failed == 1
    tune_dir = f"{s3_bucket}/runs/multinode_sweep/tune"
    assert result.results_json == f"{tune_dir}/results.json" and result.plot_path == f"{tune_dir}/results.png"
    payload = json.loads(storage.read_text(result.results_json))
    by_size = {t["config"]["model.spk_embed_dim"]: t for t in payload["trials"]}
    oom = by_size[TOO_BIG]
    assert oom["status"] == "failed" and oom["metric_per_epoch"] == []
    assert "ran out of memory" in oom["error"] and "can't allocate memory" in oom["error"], oom["error"]
    assert "failed without retries" in oom["error"]
    assert all(by_size[size]["status"] in ("completed", "early_stopped") for size in (2, 3, 4))

    # every scored trial is scored at a saved epoch; best/ holds exactly that epoch's voice
    for trial in payload["trials"]:
        saved = {s["epoch"]: s for s in trial["saved_epochs"]}
        if trial["scored_epoch"] is not None:
            assert trial["scored_epoch"] in saved and saved[trial["scored_epoch"]]["voice_path"]
            assert trial["score"] == trial["metric_per_epoch"][trial["scored_epoch"] - 1]
    best = next(t for t in payload["trials"] if t["trial_id"] == result.best_trial_id)
    scored_epoch = best["scored_epoch"]
    assert scored_epoch in (2, 3) and result.best_metrics["scored_epoch"] == scored_epoch
    assert math.isclose(result.best_metrics["val/mel_l1"], best["metric_per_epoch"][scored_epoch - 1])
    assert result.best_voice_path is not None and result.best_voice_path.startswith(f"{tune_dir}/best/")
    voice = torch.load(io.BytesIO(storage.read_bytes(result.best_voice_path)), weights_only=True)
    assert voice["epoch"] == scored_epoch
    scored_voice = next(s["voice_path"] for s in best["saved_epochs"] if s["epoch"] == scored_epoch)
    assert scored_voice.startswith(f"{tune_dir}/trials/trial_{best['trial_id']}/voices/")
    assert storage.read_bytes(result.best_voice_path) == storage.read_bytes(scored_voice)
    assert result.best_checkpoint_path == f"{tune_dir}/best/checkpoint"
    meta = json.loads(storage.read_text(storage.join(result.best_checkpoint_path, "meta.json")))
    assert meta["epoch"] == scored_epoch
    table = list(csv.DictReader(io.StringIO(storage.read_text(result.results_csv))))
    assert {r["trial_id"]: r for r in table}[result.best_trial_id]["scored_epoch"] == str(scored_epoch)
    assert storage.read_bytes(result.plot_path)[:4] == b"\x89PNG"
    assert storage.exists(f"{tune_dir}/best/best_config.yaml")
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing written locally"
