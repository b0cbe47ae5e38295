"""The one place a training run reports to (rank 0 only): TensorBoard (tensorboardX), ``metrics.jsonl`` and
MLflow, as chosen by ``train.trackers`` (the record sinks are in :mod:`rvc_ray.train.trackers`).

Scalar names are those of :mod:`rvc_ray.train.metric_names` (``SCALAR_NAMES``, the ones RVC users read in
TensorBoard, docs/rvc-reference.md §6.7); validation adds ``val/mel_l1`` and ``val/mcd``. Images
``slice/mel_org`` and ``slice/mel_gen`` are raw log-mel arrays (no matplotlib); audio previews are
``preview/<i>``.

``metrics.jsonl`` gets one JSON object per line: ``{"kind": "step", ...}`` every
``train.log_every_steps`` steps and ``{"kind": "epoch", ...}`` after every epoch.

Both locations may be URIs (``s3://...``, :mod:`rvc_ray.storage`): TensorBoard can only write to a local
disk, so rank 0 then writes both into a local temporary folder and uploads them after every epoch and at
:meth:`TrainingReporter.close` (an existing ``metrics.jsonl`` is downloaded first, so a resumed run appends).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from rvc_ray.train.trackers import JsonlSink, MlflowSink, TrackerName, TrackerSink, TrackerTarget

if TYPE_CHECKING:
    from tensorboardX import SummaryWriter

__all__ = ["TrainingReporter", "mel_to_image", "read_event_tags", "record_worker_node"]


def mel_to_image(mel: np.ndarray) -> np.ndarray:
    """[n_mels, F] log-mel -> [n_mels, F] float image in [0, 1], low frequencies at the bottom."""
    mel = np.asarray(mel, dtype=np.float32)
    low, high = float(mel.min()), float(mel.max())
    scaled = (mel - low) / (high - low) if high > low else np.zeros_like(mel)
    return np.ascontiguousarray(scaled[::-1])


class TrainingReporter:
    """Writes TensorBoard events and ``metrics.jsonl``; a no-op when ``enabled`` is False (ranks > 0).

    Args:
        tensorboard_dir: where the event files go.
        metrics_path: the JSON-lines file (appended, so a resumed run keeps its history).
        enabled: True on rank 0 only.
        purge_step: on resume, the first global step of the resumed run; TensorBoard drops newer
            events of the interrupted run so the curves do not double back.
    """

    def __init__(
        self,
        tensorboard_dir: Path | str,
        metrics_path: Path | str,
        *,
        enabled: bool = True,
        purge_step: int | None = None,
        trackers: Sequence[TrackerName] = ("tensorboard", "jsonl"),
        target: TrackerTarget | None = None,
    ) -> None:
        from rvc_ray import storage

        self.enabled = enabled
        self._tensorboard_location = storage.normalize_location(str(tensorboard_dir))
        self._metrics_location = storage.normalize_location(str(metrics_path))
        self._staging: Path | None = None
        self.metrics_path = Path(self._metrics_location) if not storage.is_remote(self._metrics_location) else Path()
        local_tensorboard = (
            Path(self._tensorboard_location) if not storage.is_remote(self._tensorboard_location) else None
        )
        self._writer: SummaryWriter | None = None
        self._sinks: list[TrackerSink] = []
        if not enabled:
            return
        if storage.is_remote(self._metrics_location) or local_tensorboard is None:
            import tempfile

            self._staging = Path(tempfile.mkdtemp(prefix="rvc-reporting-"))
        if storage.is_remote(self._metrics_location):
            assert self._staging is not None
            self.metrics_path = self._staging / "metrics.jsonl"
            if storage.exists(self._metrics_location):  # a resumed run appends to the history
                storage.download_file(self._metrics_location, self.metrics_path)
        if local_tensorboard is None:
            assert self._staging is not None
            local_tensorboard = self._staging / "tensorboard"
        local_tensorboard.mkdir(parents=True, exist_ok=True)
        self._local_tensorboard = local_tensorboard
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        if "tensorboard" in trackers:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(logdir=str(local_tensorboard), purge_step=purge_step, flush_secs=10)
        if "jsonl" in trackers:
            self._sinks.append(JsonlSink(self.metrics_path))
        if "mlflow" in trackers:
            if target is None:
                raise ValueError("the mlflow tracker needs a TrackerTarget")
            self._sinks.append(MlflowSink(target))

    def _record(self, kind: str, step: int, fields: dict[str, Any]) -> None:
        for sink in self._sinks:
            sink.log_record(kind, step=step, fields=fields)

    def log_start(self, *, step: int, note: dict[str, Any], params: dict[str, Any]) -> None:
        """The ``kind=start`` record (batch sizes, workers, resume source) and the run's resolved config as
        params (``params`` = ``RunConfig.model_dump(mode="json")``); uploaded at once if remote."""
        if not self.enabled:
            return
        if self._writer is not None:
            self._writer.add_text("run/start", json.dumps(note), step)
        for sink in self._sinks:
            sink.log_params(params)
        self._record("start", step, note)
        self._upload()

    def log_artifact(self, local_path: Path, artifact_dir: str, *, name: str | None = None) -> None:
        """A file of the run (an exported voice) for the trackers that keep artefacts (MLflow), stored as
        ``artifact_dir/name`` (default: the file's own name)."""
        if not self.enabled:
            return
        for sink in self._sinks:
            sink.log_artifact(Path(local_path), artifact_dir, name=name or Path(local_path).name)

    def _upload(self) -> None:
        """Copy the staged files to their remote locations (a no-op for local ones)."""
        from rvc_ray import storage

        if self._staging is None:
            return
        if storage.is_remote(self._metrics_location) and self.metrics_path.is_file():
            storage.upload_file(self.metrics_path, self._metrics_location)
        if storage.is_remote(self._tensorboard_location):
            storage.upload_dir(self._local_tensorboard, self._tensorboard_location)

    def _scalars(self, metrics: dict[str, float], step: int) -> None:
        assert self._writer is not None
        for name, value in metrics.items():
            if isinstance(value, int | float) and math.isfinite(float(value)):
                self._writer.add_scalar(name, float(value), step)

    def log_step(self, *, epoch: int, step: int, metrics: dict[str, float]) -> None:
        """One training-step record (TensorBoard scalars at ``step`` + a ``kind=step`` line)."""
        if not self.enabled:
            return
        if self._writer is not None:
            self._scalars(metrics, step)
        self._record("step", step, {"epoch": epoch, **metrics})

    def log_epoch(self, *, epoch: int, step: int, metrics: dict[str, float]) -> None:
        """The epoch summary (scalars under their own names + ``epoch/…`` means, and a ``kind=epoch`` line)."""
        if not self.enabled:
            return
        if self._writer is not None:
            self._scalars(metrics, step)
            self._writer.flush()
        self._record("epoch", step, {"epoch": epoch, **metrics})
        self._upload()

    def log_mel_images(self, *, step: int, mel_org: np.ndarray, mel_gen: np.ndarray) -> None:
        """``slice/mel_org`` and ``slice/mel_gen`` images ([n_mels, F] log-mels)."""
        if self._writer is None:
            return
        self._writer.add_image("slice/mel_org", mel_to_image(mel_org), step, dataformats="HW")
        self._writer.add_image("slice/mel_gen", mel_to_image(mel_gen), step, dataformats="HW")

    def log_audio(self, *, step: int, name: str, wav: np.ndarray, sample_rate: int) -> None:
        """An audio preview ([T] float in [-1, 1])."""
        if self._writer is None:
            return
        clip = np.clip(np.asarray(wav, dtype=np.float32).reshape(-1), -1.0, 1.0)
        self._writer.add_audio(name, clip, step, sample_rate=sample_rate)

    def log_text(self, *, step: int, name: str, text: str) -> None:
        """A text note (e.g. the effective batch sizes at the start of a run)."""
        if self._writer is None:
            return
        self._writer.add_text(name, text, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
        if self.enabled:
            self._upload()
        for sink in self._sinks:
            sink.close()
        self._sinks = []
        if self._staging is not None:
            import shutil

            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    def __enter__(self) -> TrainingReporter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_event_tags(tensorboard_dir: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Tags in the event files under ``tensorboard_dir``, by kind (``scalars`` with (step, value), ``images``,
    ``audio``, ``text``); read with tensorboardX's protobufs, so the ``tensorboard`` package is not needed."""
    import struct

    from tensorboardX.proto import event_pb2

    found: dict[str, dict[str, list[tuple[int, float]]]] = {"scalars": {}, "images": {}, "audio": {}, "text": {}}
    for path in sorted(Path(tensorboard_dir).rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            record = data[offset + 12 : offset + 12 + length]
            offset += 12 + length + 4
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                kind = value.WhichOneof("value")
                if kind == "simple_value":
                    found["scalars"].setdefault(value.tag, []).append((event.step, value.simple_value))
                elif kind == "image":
                    found["images"].setdefault(value.tag, []).append((event.step, 0.0))
                elif kind == "audio":
                    found["audio"].setdefault(value.tag, []).append((event.step, 0.0))
                elif kind == "tensor":
                    found["text"].setdefault(value.tag, []).append((event.step, 0.0))
    return found


def record_worker_node(workers_location: str, *, rank: int, node_id: str, start_epoch: int, world_size: int) -> str:
    """Record which Ray node a training worker runs on: ``<workers_location>/start-<time>-rank<r>.json``.

    Every worker of every (re)start writes one, so a run shows where each attempt placed its ranks.
    Returns the location written.
    """
    from rvc_ray import storage

    record = {
        "rank": rank,
        "node_id": node_id,
        "start_epoch": start_epoch,
        "world_size": world_size,
        "time": time.time(),
    }
    location = storage.join(storage.normalize_location(workers_location), f"start-{time.time_ns()}-rank{rank}.json")
    storage.write_text(location, json.dumps(record) + "\n")
    return location
