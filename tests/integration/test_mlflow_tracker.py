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
    sink.log_artifact(voice, "voices")
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
