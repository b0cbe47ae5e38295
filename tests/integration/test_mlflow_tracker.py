"""The MLflow tracker sink against a real ``mlflow server`` (SQLite store) on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from rvc_ray.errors import InputError
from rvc_ray.train.trackers import MlflowSink, TrackerTarget, flatten_params

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_flatten_params_names_every_leaf() -> None:
    flat = flatten_params({"train": {"epochs": 3, "precision": "fp32"}, "data": {"bucket_boundaries": [1, 2]}})
    assert flat == {"train.epochs": "3", "train.precision": "fp32", "data.bucket_boundaries": "[1, 2]"}


def test_mlflow_sink_needs_a_tracking_uri() -> None:
    with pytest.raises(InputError, match="MLFLOW_TRACKING_URI is not set"):
        MlflowSink(TrackerTarget(experiment_name="x", run_name="y", mlflow_tracking_uri=None))


def test_mlflow_sink_records_params_metrics_and_artifacts(mlflow_server: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    target = TrackerTarget(experiment_name="sink-test", run_name="run-a", mlflow_tracking_uri=mlflow_server)
    sink = MlflowSink(target)
    sink.log_params({"train": {"epochs": 2}, "experiment": {"name": "sink-test"}})
    sink.log_record("start", step=0, fields={"num_workers": 2})
    sink.log_record("step", step=1, fields={"loss/g/mel": 3.5, "loss/d/total": float("nan"), "epoch": 1})
    sink.log_record("epoch", step=2, fields={"loss/g/mel": 2.5, "val/mel_l1": 1.25})
    voice = tmp_path / "v_e1_s2.pth"
    voice.write_bytes(b"voice")
    sink.log_artifact(voice, "voices", name="v_e1_s2.pth")
    sink.close()

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("sink-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run-a" and run.info.status == "FINISHED"
    assert run.data.params == {"train.epochs": "2", "experiment.name": "sink-test"}
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss/g/mel")]
    assert sorted(history) == [(1, 3.5), (2, 2.5)]
    assert "loss/d/total" not in run.data.metrics  # NaN is not a metric value MLflow can plot
    assert [a.path for a in client.list_artifacts(run.info.run_id, "voices")] == ["voices/v_e1_s2.pth"]

    resumed = MlflowSink(target)  # a resumed training run continues the same MLflow run
    assert resumed.run_id == run.info.run_id
    resumed.log_params({"train": {"epochs": 99}})  # not re-logged: MLflow params are immutable
    resumed.log_record("epoch", step=3, fields={"loss/g/mel": 2.0})
    resumed.close()
    assert len(client.get_metric_history(run.info.run_id, "loss/g/mel")) == 3
    assert client.get_run(run.info.run_id).data.params["train.epochs"] == "2"


def test_a_training_run_reports_params_metrics_and_voices_to_mlflow(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole loop (Ray Train local mode) with train.trackers=[tensorboard, jsonl, mlflow]: the MLflow run
    named after the Train run holds the resolved config, every epoch's metrics and each exported voice."""
    from mlflow.tracking import MlflowClient

    from rvc_ray.config import load_run_config
    from rvc_ray.data.dataset import write_synthetic_feature_table
    from rvc_ray.train.launch import build_torch_trainer

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    cfg = load_run_config(
        "tiny_cpu",
        [
            "experiment.name=mlflow-demo",
            "train.epochs=2",
            "train.save_every_epochs=1",
            "train.batch_size=2",
            "scaling.num_workers=1",
            "train.trackers=[tensorboard, jsonl, mlflow]",
        ],
    )
    features = tmp_path / "features"
    write_synthetic_feature_table(
        features, content_dim=cfg.model.content_dim, sample_rate=cfg.audio.sample_rate, frames=[32, 32, 34, 30]
    )
    build_torch_trainer(cfg, features, run_name="trial-1", storage_path=tmp_path / "train", local_mode=True).fit()

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("mlflow-demo")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "trial-1" and run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2" and run.data.params["experiment.name"] == "mlflow-demo"
    assert run.data.params["train.trackers"] == '["tensorboard", "jsonl", "mlflow"]'
    epochs = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss/g/mel"))
    assert len(epochs) >= 2 and epochs == sorted(set(epochs))
    assert {"loss/g/total", "loss/d/total", "epoch"} <= set(run.data.metrics)
    voices = [a.path for a in client.list_artifacts(run.info.run_id, "voices")]
    assert voices == ["voices/mlflow-demo_e1_s2.pth", "voices/mlflow-demo_e2_s4.pth"]
    # the same records went to metrics.jsonl
    jsonl = (tmp_path / "train" / "trial-1" / "metrics.jsonl").read_text().splitlines()
    assert [__import__("json").loads(x)["kind"] for x in jsonl][0] == "start"
