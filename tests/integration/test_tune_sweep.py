"""The one Ray Tune sweep of the suite (issue #6 acceptance), on 2 CPUs with the tiny preset.

A 2 x 2 grid: global batch size (2, 4) x adversarial weight c_adv (1.0, 1e39). c_adv=1e39 overflows the
float32 generator loss, so the training's non-finite guard (train.nonfinite_loss_policy=raise) fails
those two trials for real: the sweep must record them as failed and go on. Trials run one after
another (tune.max_concurrent_trials=1), so ASHA's decision is reproducible: the batch-2 trial reaches
epoch 1 first, and the batch-4 trial (half the optimizer steps per epoch, a worse epoch-1 val/mel_l1)
is stopped at the grace period. The test also checks the rule itself: the later trial is stopped
exactly when its epoch-1 metric is worse than the earlier one's. Epochs must last long enough for
ASHA's stop to reach a trial before it finishes (with 0.2 s epochs a 2-epoch trial completed first). Then: the best config file reloads with the winning values and
trains one epoch, and resuming the finished sweep restores it without running anything again.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from rvc_ray.config import RunConfig, load_run_config
from rvc_ray.data.dataset import write_synthetic_feature_table

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]

SEARCH = ["train.batch_size=grid(2,4)", "loss.c_adv=grid(1.0,1e39)"]


def _sweep_config(work_dir: Path) -> RunConfig:
    return load_run_config(
        "tiny_cpu",
        [
            f"experiment.work_dir={work_dir}",
            "experiment.name=sweep_test",
            "train.epochs=6",
            "train.save_every_epochs=6",
            "train.num_preview_clips=0",
            "scaling.max_failures=0",
            "tune.num_samples=1",
            "tune.max_concurrent_trials=1",
            "tune.scheduler=asha",
            "tune.grace_period_epochs=1",
            "tune.reduction_factor=2",
        ],
    )


def _write_features(features_dir: Path, cfg: RunConfig) -> None:
    num_train = 32  # batch 2: 16 steps per epoch, batch 4: 8 steps
    frames = [36 + (i * 5) % 16 for i in range(num_train)] + [40, 48]
    write_synthetic_feature_table(
        features_dir,
        content_dim=cfg.model.content_dim,
        sample_rate=cfg.audio.sample_rate,
        frames=frames,
        splits=["train"] * num_train + ["val"] * 2,
        seed=0,
    )


def test_sweep_grid_asha_failure_best_config_and_resume(tmp_path: Path, ray_cluster: None) -> None:
    from rvc_ray.tune.launch import run_tune

    cfg = _sweep_config(tmp_path / "runs")
    features = tmp_path / "features"
    _write_features(features, cfg)

    result = run_tune(cfg, features, search=SEARCH)

    # 4 trials: 2 failed (c_adv=1e39), at least one of the 2 others stopped early by ASHA.
    assert result.num_trials == 4
    assert result.num_failed == 2
    assert result.num_early_stopped >= 1
    rows = list(csv.DictReader(Path(result.results_csv).open(encoding="utf-8")))
    by_config = {(int(r["train.batch_size"]), float(r["loss.c_adv"])): r for r in rows}
    assert set(by_config) == {(2, 1.0), (2, 1e39), (4, 1.0), (4, 1e39)}
    for batch in (2, 4):
        failed = by_config[(batch, 1e39)]
        assert failed["status"] == "failed"
        assert "NonFiniteLoss" in failed["error"] or "non-finite" in failed["error"], failed["error"]
    statuses = {by_config[(2, 1.0)]["status"], by_config[(4, 1.0)]["status"]}
    assert "early_stopped" in statuses
    payload = json.loads(Path(result.results_json).read_text(encoding="utf-8"))
    survivors = {t["config"]["train.batch_size"]: t for t in payload["trials"] if t["status"] != "failed"}
    first, later = survivors[2], survivors[4]  # grid order: batch 2 runs first
    later_is_worse = later["metric_per_epoch"][0] > first["metric_per_epoch"][0]
    assert (later["status"] == "early_stopped") == later_is_worse, (first, later)
    assert first["status"] != "early_stopped"
    finished = [t for t in payload["trials"] if t["status"] != "failed"]
    assert all(t["metric_per_epoch"] and all(math.isfinite(v) for v in t["metric_per_epoch"]) for t in finished)
    assert Path(result.plot_path).read_bytes()[:4] == b"\x89PNG"

    # The best trial: files copied, and its config file reproduces the run.
    assert result.best_trial_id is not None
    assert math.isfinite(result.best_metrics["val/mel_l1"])
    assert result.best_config_path is not None and Path(result.best_config_path).is_file()
    best_cfg = load_run_config(Path(result.best_config_path))
    assert best_cfg.loss.c_adv == 1.0
    assert best_cfg.train.batch_size == result.best_metrics["config"]["train.batch_size"]
    assert best_cfg.model == cfg.model and best_cfg.audio == cfg.audio
    # scored at its saved epoch (train.save_every_epochs=6: only the last): best/ holds that epoch's voice
    assert result.best_metrics["scored_epoch"] == cfg.train.epochs
    assert result.best_checkpoint_path is not None and Path(result.best_checkpoint_path, "state.pt").is_file()
    assert result.best_voice_path is not None and Path(result.best_voice_path).name.startswith("sweep_test_e6_")
    assert torch.load(result.best_voice_path, weights_only=True)["epoch"] == 6

    from rvc_ray.train.launch import build_torch_trainer

    retrain_cfg = load_run_config(Path(result.best_config_path), ["train.epochs=1"])
    trainer = build_torch_trainer(
        retrain_cfg, features, run_name="retrain", storage_path=tmp_path / "retrain", local_mode=True
    )
    metrics = trainer.fit().return_value or {}
    assert math.isfinite(metrics.get("val/mel_l1", math.nan))

    # Resuming the (finished) sweep restores it from its storage path without new trials.
    resumed = run_tune(cfg, features, search=SEARCH, resume=True)
    assert resumed.num_trials == 4 and resumed.num_failed == 2
    assert resumed.best_trial_id == result.best_trial_id
    resumed_rows = list(csv.DictReader(Path(resumed.results_csv).open(encoding="utf-8")))
    assert [(r["trial_id"], r["status"], r["train.batch_size"], r["loss.c_adv"]) for r in resumed_rows] == [
        (r["trial_id"], r["status"], r["train.batch_size"], r["loss.c_adv"]) for r in rows
    ]
