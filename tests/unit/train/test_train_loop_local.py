"""Training pieces that run in-process: checkpoint state, reporting, and the loop in Ray Train local mode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rvc_ray.config import RunConfig
from rvc_ray.train.checkpoint import (
    TrainState,
    capture_rng_state,
    find_latest_rvc_checkpoints,
    load_train_state,
    read_checkpoint_meta,
    restore_rng_state,
    save_train_state,
)
from rvc_ray.train.metric_names import SCALAR_NAMES
from rvc_ray.train.reporting import TrainingReporter, mel_to_image, read_event_tags


def _toy_state() -> TrainState:
    gen, disc = torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)
    opt_g = torch.optim.AdamW(gen.parameters(), lr=1e-3)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=1e-3)
    sched_g = torch.optim.lr_scheduler.ExponentialLR(opt_g, 0.9)
    sched_d = torch.optim.lr_scheduler.ExponentialLR(opt_d, 0.9)
    gen(torch.randn(4, 3)).sum().backward()
    opt_g.step()
    sched_g.step()
    return TrainState(
        epoch=3,
        global_step=42,
        generator=gen.state_dict(),
        discriminator=disc.state_dict(),
        optimizer_g=opt_g.state_dict(),
        optimizer_d=opt_d.state_dict(),
        scheduler_g=sched_g.state_dict(),
        scheduler_d=sched_d.state_dict(),
        scaler=None,
        global_batch_size=4,
        per_worker_batch_size=2,
        num_workers=2,
        rng=capture_rng_state(),
        best_val_mel_l1=1.5,
        best_epoch=2,
        metrics={"val/mel_l1": 1.7},
    )


def test_train_state_round_trip_is_identical(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    state = _toy_state()
    save_train_state(state, tmp_path, tiny_cfg)
    loaded = load_train_state(tmp_path)
    assert (loaded.epoch, loaded.global_step, loaded.best_epoch) == (3, 42, 2)
    for key, value in state.generator.items():
        torch.testing.assert_close(loaded.generator[key], value, rtol=0, atol=0)
    assert loaded.optimizer_g["state"][0]["step"] == state.optimizer_g["state"][0]["step"]
    torch.testing.assert_close(loaded.optimizer_g["state"][0]["exp_avg"], state.optimizer_g["state"][0]["exp_avg"])
    assert loaded.scheduler_g == state.scheduler_g
    meta = read_checkpoint_meta(tmp_path)
    assert (meta["global_batch_size"], meta["per_worker_batch_size"], meta["num_workers"]) == (4, 2, 2)
    reloaded_cfg = RunConfig.model_validate(__import__("yaml").safe_load((tmp_path / "config.yaml").read_text()))
    assert reloaded_cfg == tiny_cfg


def test_rng_state_round_trip() -> None:
    state = capture_rng_state()
    first = (torch.rand(3), np.random.rand(3))
    restore_rng_state(state)
    second = (torch.rand(3), np.random.rand(3))
    torch.testing.assert_close(first[0], second[0], rtol=0, atol=0)
    np.testing.assert_array_equal(first[1], second[1])


def test_load_train_state_names_a_non_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="state.pt is missing"):
        load_train_state(tmp_path)


def test_latest_rvc_pair_is_found_by_step(tmp_path: Path) -> None:
    for name in ("G_100.pth", "D_100.pth", "G_2000.pth", "D_2000.pth", "G_3000.pth"):
        (tmp_path / name).write_bytes(b"")
    assert find_latest_rvc_checkpoints(tmp_path) == (tmp_path / "G_2000.pth", tmp_path / "D_2000.pth")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no matching G_<n>.pth / D_<n>.pth pair"):
        find_latest_rvc_checkpoints(empty)


def test_reporter_writes_named_scalars_images_and_jsonl(tmp_path: Path) -> None:
    metrics = {name: 1.0 for name in SCALAR_NAMES}
    with TrainingReporter(tmp_path / "tb", tmp_path / "metrics.jsonl") as reporter:
        reporter.log_step(epoch=1, step=1, metrics=metrics)
        reporter.log_epoch(epoch=1, step=2, metrics={**metrics, "val/mel_l1": 0.5})
        reporter.log_mel_images(step=2, mel_org=np.random.randn(8, 10), mel_gen=np.random.randn(8, 10))
        reporter.log_audio(step=2, name="preview/0", wav=np.zeros(1600), sample_rate=16000)
    tags = read_event_tags(tmp_path / "tb")
    assert set(SCALAR_NAMES) | {"val/mel_l1"} <= set(tags["scalars"])
    assert tags["scalars"]["val/mel_l1"] == [(2, 0.5)]
    assert {"slice/mel_org", "slice/mel_gen"} <= set(tags["images"])
    assert "preview/0" in tags["audio"]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["step", "epoch"]


def test_disabled_reporter_writes_nothing(tmp_path: Path) -> None:
    reporter = TrainingReporter(tmp_path / "tb", tmp_path / "metrics.jsonl", enabled=False)
    reporter.log_step(epoch=1, step=1, metrics={"loss/g/total": 1.0})
    reporter.close()
    assert not (tmp_path / "tb").exists() and not (tmp_path / "metrics.jsonl").exists()


def test_mel_image_is_normalised_and_flipped() -> None:
    image = mel_to_image(np.array([[0.0, 1.0], [2.0, 4.0]]))
    assert image.min() == 0.0 and image.max() == 1.0
    assert image[0, 1] == 1.0


def test_cluster_yaml_is_a_valid_launcher_config() -> None:
    import copy

    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    root = Path(__file__).resolve().parents[3]
    raw = yaml.safe_load((root / "cluster.yaml").read_text())
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    gpu = raw["available_node_types"]["gpu_worker"]["resources"]
    assert all(isinstance(v, int) for node in raw["available_node_types"].values() for v in node["resources"].values())
    assert gpu["GPU"] >= 1


def test_best_tracking_and_early_stop() -> None:
    from rvc_ray.train.best import BestTracker, should_stop_early, track_best

    tracker = BestTracker()
    for epoch, score in enumerate([3.0, 2.0, 2.5, 2.0, float("nan")], start=1):
        tracker = track_best(tracker, score, epoch)
    assert (tracker.value, tracker.epoch, tracker.epochs_without_improvement) == (2.0, 2, 3)
    assert should_stop_early(tracker, 3) and not should_stop_early(tracker, 4)
    assert not should_stop_early(tracker, None)


def test_metric_accumulator_averages_present_finite_values() -> None:
    from rvc_ray.train.epoch import MetricAccumulator

    acc = MetricAccumulator()
    acc.add({"loss/g/total": 2.0, "grad_norm_g": float("inf"), "unknown": 5.0})
    acc.add({"loss/g/total": 4.0, "grad_norm_g": 1.0})
    means = acc.mean_across_workers("cpu")
    assert means["loss/g/total"] == 3.0 and means["grad_norm_g"] == 1.0
    assert "unknown" not in means and "loss/d/total" not in means


@pytest.mark.slow
def test_local_mode_fit_saves_exports_and_resumes_from_rvc_files(tmp_path: Path) -> None:
    """The whole loop in-process (Ray Train local mode): checkpoints, RVC G/D files, an export per save,
    then a second run that continues from the RVC G_/D_ files at the next epoch with the same weights."""
    from rvc_ray.config import load_run_config
    from rvc_ray.data.dataset import write_synthetic_feature_table
    from rvc_ray.train.launch import build_torch_trainer, train_result_from
    from rvc_ray.train.loop import state_fingerprint

    base = ["train.save_every_epochs=1", "train.batch_size=2", "scaling.num_workers=1", "train.log_every_steps=1"]
    cfg = load_run_config("tiny_cpu", [*base, "train.epochs=2"])
    features = tmp_path / "features"
    write_synthetic_feature_table(
        features,
        content_dim=cfg.model.content_dim,
        sample_rate=cfg.audio.sample_rate,
        frames=[32, 32, 34, 34, 30],
        splits=["train"] * 4 + ["val"],
    )
    storage = tmp_path / "train"
    trainer = build_torch_trainer(cfg, features, run_name="local", storage_path=storage, local_mode=True)
    result = train_result_from(trainer.fit(), cfg, run_dir=storage / "local")
    assert result.epochs_completed == 2
    assert [p.name for p in result.exported_voices] == ["demo_e1_s2.pth", "demo_e2_s4.pth"]
    assert result.best_checkpoint is not None and result.last_checkpoint == storage / "local" / "epoch_00002"
    assert {"G_4.pth", "D_4.pth", "state.pt", "config.yaml", "meta.json"} <= {
        p.name for p in result.last_checkpoint.iterdir()
    }
    assert np.isfinite(result.metrics["val/mel_l1"]) and np.isfinite(result.metrics["val/mcd"])

    cfg3 = load_run_config("tiny_cpu", [*base, "train.epochs=3", f"train.resume_from_rvc_dir={result.last_checkpoint}"])
    trainer = build_torch_trainer(cfg3, features, run_name="from_rvc", storage_path=storage, local_mode=True)
    resumed = train_result_from(trainer.fit(), cfg3, run_dir=storage / "from_rvc")
    assert resumed.epochs_completed == 3
    start = next(
        json.loads(line)
        for line in (storage / "from_rvc" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "start"
    )
    assert start["start_epoch"] == 3 and start["resumed_from"] == "rvc:G_4.pth"
    assert start["state_sha256"] == state_fingerprint(load_train_state(result.last_checkpoint).generator)


@pytest.fixture
def small_features(tmp_path: Path, tiny_cfg: RunConfig) -> Path:
    from rvc_ray.data.dataset import write_synthetic_feature_table

    features = tmp_path / "features"
    write_synthetic_feature_table(
        features, content_dim=tiny_cfg.model.content_dim, sample_rate=tiny_cfg.audio.sample_rate, frames=[32, 32]
    )
    return features


def test_driver_rejects_missing_table_and_wrong_content_dim(tmp_path: Path, small_features: Path) -> None:
    from rvc_ray.config import load_run_config
    from rvc_ray.train.launch import TrainingSetupError, build_torch_trainer

    cfg = load_run_config("tiny_cpu")
    with pytest.raises(TrainingSetupError, match="no feature table in .*run the extract stage"):
        build_torch_trainer(cfg, tmp_path / "nowhere", run_name="x", storage_path=tmp_path)
    wrong = load_run_config("tiny_cpu", ["model.content_dim=32"])
    with pytest.raises(TrainingSetupError, match=r"content dim\(s\) \[64\] but model.content_dim=32"):
        build_torch_trainer(wrong, small_features, run_name="x", storage_path=tmp_path)


def test_driver_rejects_unfinished_extraction(tmp_path: Path, small_features: Path, tiny_cfg: RunConfig) -> None:
    from rvc_ray.train.launch import TrainingSetupError, build_torch_trainer

    (small_features / "manifest.json").write_text(json.dumps({"status": "running", "content_encoder": {}}))
    with pytest.raises(TrainingSetupError, match="extraction is 'running', not 'complete'"):
        build_torch_trainer(tiny_cfg, small_features, run_name="x", storage_path=tmp_path)


def test_driver_rejects_pretrained_weights_that_do_not_fit(tmp_path: Path, small_features: Path) -> None:
    from rvc_ray.config import load_run_config
    from rvc_ray.model.build import build_discriminator, build_generator
    from rvc_ray.train.launch import TrainingSetupError, build_torch_trainer

    other = load_run_config("tiny_cpu", ["model.hidden_channels=32"])
    torch.save({"model": build_generator(other.model, other.audio).state_dict()}, tmp_path / "G.pth")
    torch.save({"model": build_discriminator(other.model).state_dict()}, tmp_path / "D.pth")
    cfg = load_run_config(
        "tiny_cpu",
        [f"train.pretrained_generator={tmp_path / 'G.pth'}", f"train.pretrained_discriminator={tmp_path / 'D.pth'}"],
    )
    with pytest.raises(TrainingSetupError, match="do not fit the configured model"):
        build_torch_trainer(cfg, small_features, run_name="x", storage_path=tmp_path)
    missing = load_run_config(
        "tiny_cpu",
        [f"train.pretrained_generator={tmp_path / 'no.pth'}", f"train.pretrained_discriminator={tmp_path / 'D.pth'}"],
    )
    with pytest.raises(TrainingSetupError, match=r"train.pretrained_generator=.*no.pth does not exist"):
        build_torch_trainer(missing, small_features, run_name="x", storage_path=tmp_path)


def test_rows_too_short_for_the_stft_are_left_out(tiny_cfg: RunConfig) -> None:
    from rvc_ray.config import load_run_config
    from rvc_ray.data.sampler import DistributedBucketSampler
    from rvc_ray.train.validation import usable_min_frames

    assert usable_min_frames(tiny_cfg) == 2  # (512 - 160) // 2 = 176 samples of reflect padding -> 2 frames
    assert usable_min_frames(load_run_config("tiny_cpu", ["data.min_frames=40"])) == 40
    sampler = DistributedBucketSampler(
        [0, 1, 30, 40], global_batch_size=2, boundaries=(100,), min_length=usable_min_frames(tiny_cfg)
    )
    assert sampler.dropped == [0, 1] and sorted(i for batch in sampler for i in batch) == [2, 3]


def test_reporter_writes_only_the_chosen_trackers(tmp_path: Path) -> None:
    with TrainingReporter(tmp_path / "tb1", tmp_path / "m1.jsonl", trackers=("jsonl",)) as reporter:
        reporter.log_start(step=0, note={"start_epoch": 1}, params={"train": {"epochs": 1}})
        reporter.log_epoch(epoch=1, step=2, metrics={"loss/g/mel": 2.0})
        reporter.log_mel_images(step=2, mel_org=np.zeros((4, 4)), mel_gen=np.zeros((4, 4)))
    assert not list((tmp_path / "tb1").rglob("events.out.tfevents.*"))
    lines = [json.loads(line) for line in (tmp_path / "m1.jsonl").read_text().splitlines()]
    assert [(x["kind"], x["step"]) for x in lines] == [("start", 0), ("epoch", 2)]
    assert lines[1]["loss/g/mel"] == 2.0 and lines[1]["epoch"] == 1

    with TrainingReporter(tmp_path / "tb2", tmp_path / "m2.jsonl", trackers=("tensorboard",)) as reporter:
        reporter.log_start(step=0, note={"start_epoch": 1}, params={})
        reporter.log_epoch(epoch=1, step=2, metrics={"loss/g/mel": 2.0})
    assert not (tmp_path / "m2.jsonl").exists()
    tags = read_event_tags(tmp_path / "tb2")
    assert tags["scalars"]["loss/g/mel"] == [(2, 2.0)] and "run/start/text_summary" in tags["text"]


def test_mlflow_tracker_without_a_server_is_refused_in_the_driver(
    tmp_path: Path, small_features: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rvc_ray.config import load_run_config
    from rvc_ray.train.launch import TrainingSetupError, build_torch_trainer

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_run_config("tiny_cpu", ["train.trackers=[jsonl, mlflow]", "scaling.num_workers=1"])
    with pytest.raises(TrainingSetupError, match="MLFLOW_TRACKING_URI is not set"):
        build_torch_trainer(cfg, small_features, run_name="x", storage_path=tmp_path / "train")
