"""Experiment trackers: where a training run's params, metrics and artefacts go.

Each tracker is a *sink* with the same four calls (:class:`TrackerSink`); the training reporter fans a
record out to every sink chosen by ``train.trackers`` (:data:`TRACKER_NAMES`). Metric names are the
run's own (``loss/g/mel``, ``val/mel_l1``, ...) in every sink.

- ``jsonl``: one JSON object per line in ``metrics.jsonl`` (kinds ``start``, ``step``, ``epoch``).
- ``tensorboard``: tensorboardX scalars (images, audio and text stay with the reporter).
- ``mlflow``: the MLflow tracking server named by ``MLFLOW_TRACKING_URI`` (read at the edge and passed
  down as :attr:`TrackerTarget.mlflow_tracking_uri`); one experiment per ``experiment.name``, one MLflow
  run per training run (or Tune trial), params = the resolved config flattened to ``section.key``,
  metrics under their own names, exported voices as artefacts under ``voices/``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = [
    "JsonlSink",
    "MlflowSink",
    "TRACKER_NAMES",
    "TrackerName",
    "TrackerSink",
    "TrackerTarget",
    "flatten_params",
]

TrackerName = Literal["tensorboard", "jsonl", "mlflow"]
TRACKER_NAMES: tuple[TrackerName, ...] = ("tensorboard", "jsonl", "mlflow")

# MLflow refuses param values longer than this (its documented limit is 6000 characters).
_MLFLOW_PARAM_CHARS = 6000


class TrackerSink(Protocol):
    """What the reporter calls on every chosen tracker."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_record(self, kind: str, *, step: int, fields: Mapping[str, Any]) -> None:
        """One record: ``kind`` is ``start``, ``step`` or ``epoch``; numeric finite fields are metrics."""
        ...

    def log_artifact(self, local_path: Path, artifact_dir: str, *, name: str) -> None:
        """Keep the file ``local_path`` as ``artifact_dir/name``."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class TrackerTarget:
    """Where the non-file trackers report, resolved on the driver and passed to the workers as data.

    Attributes:
        experiment_name: the MLflow experiment (``experiment.name``).
        run_name: the MLflow run name (the Ray Train run name, i.e. the Tune trial name in a sweep).
        mlflow_tracking_uri: ``MLFLOW_TRACKING_URI`` as the driver saw it; ``None`` when unset.
    """

    experiment_name: str
    run_name: str
    mlflow_tracking_uri: str | None = None


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"epochs": 3}}`` -> ``{"train.epochs": "3"}``; sequences become JSON text."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        elif isinstance(value, str):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


def _finite_metrics(fields: Mapping[str, Any]) -> dict[str, float]:
    return {
        name: float(value)
        for name, value in fields.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(float(value))
    }


class JsonlSink:
    """Appends one JSON object per record to ``metrics.jsonl`` (a resumed run keeps its history)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params are in the checkpoint's ``config.yaml``; the JSONL file holds records only."""

    def log_record(self, kind: str, *, step: int, fields: Mapping[str, Any]) -> None:
        record = {"kind": kind, "step": step, "time": time.time(), **fields}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, allow_nan=True) + "\n")

    def log_artifact(self, local_path: Path, artifact_dir: str, *, name: str) -> None:
        """Artefacts are files in the run's own storage; nothing to add to the JSONL file."""

    def close(self) -> None:
        """Every record is written when logged."""


class MlflowSink:
    """Reports to an MLflow tracking server: one run in the experiment ``target.experiment_name``.

    A resumed training run (same ``run_name`` in the same experiment, still unfinished or finished) logs
    into the same MLflow run, so its curves continue instead of starting a second run.
    """

    def __init__(self, target: TrackerTarget) -> None:
        from mlflow.tracking import MlflowClient

        if not target.mlflow_tracking_uri:
            from rvc_ray.errors import InputError

            raise InputError("train.trackers includes 'mlflow' but MLFLOW_TRACKING_URI is not set")
        self._client: MlflowClient = MlflowClient(tracking_uri=target.mlflow_tracking_uri)
        experiment = self._client.get_experiment_by_name(target.experiment_name)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self._client.create_experiment(target.experiment_name)
        )
        existing = self._client.search_runs(
            [experiment_id], filter_string=f"tags.mlflow.runName = '{target.run_name}'", max_results=1
        )
        if existing:
            self.run_id = existing[0].info.run_id
            self._client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self._client.create_run(experiment_id, run_name=target.run_name).info.run_id
        self._params_logged = bool(existing)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """The resolved config, flattened (logged once per MLflow run; a resume does not re-log)."""
        if self._params_logged:
            return
        from mlflow.entities import Param

        flat = flatten_params(params)
        batch = [Param(key, value[:_MLFLOW_PARAM_CHARS]) for key, value in sorted(flat.items())]
        for start in range(0, len(batch), 100):  # MLflow accepts at most 100 params per batch
            self._client.log_batch(self.run_id, params=batch[start : start + 100])
        self._params_logged = True

    def log_record(self, kind: str, *, step: int, fields: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        if kind == "start":
            return
        now = int(time.time() * 1000)
        metrics = [Metric(name, value, now, step) for name, value in _finite_metrics(fields).items()]
        for start in range(0, len(metrics), 1000):
            self._client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def log_artifact(self, local_path: Path, artifact_dir: str, *, name: str) -> None:
        if Path(local_path).name == name:
            self._client.log_artifact(self.run_id, str(local_path), artifact_path=artifact_dir)
            return
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory(prefix="rvc-mlflow-") as scratch:  # MLflow names it by its file name
            renamed = Path(scratch) / name
            shutil.copyfile(local_path, renamed)
            self._client.log_artifact(self.run_id, str(renamed), artifact_path=artifact_dir)

    def close(self) -> None:
        self._client.set_terminated(self.run_id, status="FINISHED")


def build_sinks(names: Iterable[TrackerName], *, metrics_path: Path, target: TrackerTarget) -> list[TrackerSink]:
    """The sinks for ``train.trackers`` other than ``tensorboard`` (the reporter owns that writer)."""
    sinks: list[TrackerSink] = []
    for name in names:
        if name == "jsonl":
            sinks.append(JsonlSink(metrics_path))
        elif name == "mlflow":
            sinks.append(MlflowSink(target))
    return sinks
