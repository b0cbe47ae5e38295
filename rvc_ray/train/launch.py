"""Launching a training run on Ray Train V2: :func:`fit` (the pipeline and CLI) and
:func:`build_torch_trainer` (Ray Tune builds one trainer per trial with it).

Everything that can be checked in the driver is checked here, before any worker starts: the feature
table exists and matches ``model.content_dim``, pretrained G/D files load into the configured
architecture, an RVC resume directory holds a G/D pair. The global batch was already checked to
divide across the workers when the config was loaded.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rvc_ray import storage
from rvc_ray.config import RunConfig
from rvc_ray.errors import InputError
from rvc_ray.train.fault_injection import FailureInjection
from rvc_ray.train.metric_names import VAL_MEL_L1
from rvc_ray.train.trackers import TrackerTarget

if TYPE_CHECKING:
    import ray.train
    from ray.train.torch import TorchTrainer

__all__ = ["TrainResult", "TrainingSetupError", "build_torch_trainer", "fit"]

log = logging.getLogger("rvc_ray.train")


class TrainingSetupError(InputError):
    """A training input that cannot work, found in the driver before any worker starts."""


@dataclass(frozen=True)
class TrainResult:
    """What a finished training run produced.

    Every location is a :class:`Path` for a local run and a URI string for a run on a bucket.

    Attributes:
        run_dir: the Ray Train run directory (``storage_path / name``) holding the checkpoints.
        best_checkpoint: the kept checkpoint with the lowest ``val/mel_l1`` (None if none was saved).
        last_checkpoint: the latest checkpoint (what a restarted job resumes from).
        exported_voices: every ``voices/<name>_e<E>_s<S>.pth`` of the run, oldest first.
        metrics: the final epoch's metrics (rank 0).
        tensorboard_dir: ``tensorboard --logdir`` this.
        epochs_completed: the last completed epoch.
        global_batch_size: items per optimizer step over all workers (``train.batch_size``).
        per_worker_batch_size: items per step on each worker.
    """

    run_dir: Path | str
    best_checkpoint: Path | str | None
    last_checkpoint: Path | str | None
    exported_voices: tuple[Path | str, ...]
    metrics: dict[str, Any]
    tensorboard_dir: Path | str
    epochs_completed: int
    global_batch_size: int
    per_worker_batch_size: int
    metrics_path: Path | str | None = None
    voices_dir: Path | str | None = None


def _read_content_encoder_info(features_dir: str) -> dict[str, Any]:
    manifest = storage.join(features_dir, "manifest.json")
    if not storage.exists(manifest):
        return {"content_encoder": {"kind": "unknown", "note": f"{manifest} not found"}}
    try:
        data = json.loads(storage.read_text(manifest))
    except json.JSONDecodeError as exc:
        raise TrainingSetupError(f"{manifest} is not valid JSON: {exc}") from exc
    if data.get("status") not in (None, "complete"):
        raise TrainingSetupError(
            f"{manifest} says the feature extraction is {data.get('status')!r}, not 'complete'; "
            "re-run the extract stage (it resumes) before training"
        )
    encoder = data.get("content_encoder", {"kind": "unknown"})
    info: dict[str, Any] = {"content_encoder": encoder}
    if isinstance(encoder, dict):  # Applio's field name for the content encoder of a voice
        info["embedder_model"] = Path(encoder["path"]).name if encoder.get("path") else encoder.get("kind", "unknown")
    for key in ("f0_method", "pitch_extractor", "config_hash"):
        if key in data:
            info[key] = data[key]
    return info


def _check_feature_table(cfg: RunConfig, features_dir: str) -> None:
    import pyarrow.compute as pc

    table_dir = storage.join(features_dir, "table")
    files = [f for f in storage.list_files(table_dir, suffix=".parquet") if f.rsplit("/", 1)[-1].startswith("part-")]
    if not files:
        raise TrainingSetupError(f"no feature table in {table_dir} (part-*.parquet); run the extract stage first")
    dims: set[int] = set()
    train_rows = 0
    for path in files:
        table = storage.read_parquet(path, columns=["content_dim", "split", "speaker_id"])
        dims.update(int(d) for d in table.column("content_dim").to_pylist())
        top = pc.max(table.column("speaker_id")).as_py()
        if top is not None and int(top) >= cfg.model.spk_embed_dim:
            raise TrainingSetupError(
                f"{path} has speaker_id {top}, but model.spk_embed_dim={cfg.model.spk_embed_dim} speakers "
                f"(ids 0..{cfg.model.spk_embed_dim - 1}); raise model.spk_embed_dim"
            )
        train_rows += int(pc.sum(pc.equal(table.column("split"), "train")).as_py() or 0)
    if dims and dims != {cfg.model.content_dim}:
        raise TrainingSetupError(
            f"the feature table in {features_dir} has content dim(s) {sorted(dims)} but "
            f"model.content_dim={cfg.model.content_dim}; extract with the matching encoder or change the model"
        )
    if train_rows == 0:
        raise TrainingSetupError(f"the feature table in {features_dir} has no 'train' rows")


def _check_initial_weights(cfg: RunConfig) -> None:
    """Load pretrained G/D into the configured architecture in the driver (clear error, no worker needed)."""
    from rvc_ray.train.checkpoint import find_latest_rvc_checkpoints

    if cfg.train.resume_from_rvc_dir is not None:
        try:
            find_latest_rvc_checkpoints(cfg.train.resume_from_rvc_dir)
        except FileNotFoundError as exc:
            raise TrainingSetupError(str(exc)) from exc
    if cfg.train.pretrained_generator is None or cfg.train.pretrained_discriminator is None:
        return
    for key, path in (
        ("train.pretrained_generator", cfg.train.pretrained_generator),
        ("train.pretrained_discriminator", cfg.train.pretrained_discriminator),
    ):
        if not Path(path).is_file():
            raise TrainingSetupError(f"{key}={path} does not exist")
    from rvc_ray.model.build import build_discriminator, build_generator
    from rvc_ray.train.checkpoint import load_pretrained_pair

    try:
        load_pretrained_pair(cfg, build_generator(cfg.model, cfg.audio), build_discriminator(cfg.model))
    except (ValueError, RuntimeError, KeyError) as exc:
        raise TrainingSetupError(
            f"the pretrained weights {cfg.train.pretrained_generator} / {cfg.train.pretrained_discriminator} do not "
            f"fit the configured model: {exc}"
        ) from exc


def _tracker_target(cfg: RunConfig, run_name: str) -> TrackerTarget:
    """Where the workers' non-file trackers report, read here in the driver (the workers get it as data).

    MLflow's own convention names the server: ``MLFLOW_TRACKING_URI`` in the submitting environment.
    """
    target = TrackerTarget(
        experiment_name=cfg.experiment.name,
        run_name=run_name,
        mlflow_tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or None,
    )
    if "mlflow" in cfg.train.trackers and target.mlflow_tracking_uri is None:
        raise TrainingSetupError(
            "train.trackers includes 'mlflow' but MLFLOW_TRACKING_URI is not set; export it (e.g. "
            "MLFLOW_TRACKING_URI=http://mlflow.internal:5000) or drop 'mlflow' from train.trackers"
        )
    return target


def build_torch_trainer(
    cfg: RunConfig,
    features_dir: Path | str,
    index_path: Path | str | None = None,
    *,
    run_name: str,
    storage_path: Path | str,
    callbacks: Sequence[ray.train.UserCallback] = (),
    tensorboard_dir: Path | str | None = None,
    metrics_path: Path | str | None = None,
    voices_dir: Path | str | None = None,
    local_mode: bool = False,
    failure_injection: FailureInjection | None = None,
) -> TorchTrainer:
    """A ready-to-``fit()`` :class:`TorchTrainer` for ``cfg`` (inputs validated here, in the driver).

    Args:
        cfg: the run configuration (crosses to the workers as ``model_dump(mode="json")``).
        features_dir: the extract stage's output (``table/*.parquet``, ``manifest.json``).
        index_path: the FAISS index copied next to every exported voice (optional).
        run_name: the Ray Train run name; the same ``storage_path`` + ``run_name`` resumes.
        storage_path: where Ray Train keeps checkpoints (shared storage on multi-node clusters): a local path or
            a URI (``s3://...``, passed to Ray Train as ``storage_filesystem`` + path). Every location
            argument may be a URI.
        callbacks: Ray Train ``UserCallback`` s (Tune passes ``TuneReportCallback``).
        tensorboard_dir, metrics_path, voices_dir: outputs written by rank 0; default under
            ``storage_path / run_name``.
        local_mode: run the loop in this process (``ScalingConfig(num_workers=0)``), for debugging
            and tests; checkpoints are then written by the loop under ``storage_path / run_name``.
        failure_injection: test hook, see :mod:`rvc_ray.train.fault_injection`.
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from rvc_ray.train.health_marker import clear_health_failure
    from rvc_ray.train.loop import WorkerPaths, train_loop_per_worker

    features = storage.normalize_location(str(features_dir))
    storage_location = storage.normalize_location(str(storage_path))
    _check_feature_table(cfg, features)
    _check_initial_weights(cfg)
    run_dir = storage.join(storage_location, run_name)

    def location(given: Path | str | None, default: str) -> str:
        return storage.normalize_location(str(given)) if given is not None else storage.join(run_dir, default)

    metrics_location = location(metrics_path, "metrics.jsonl")
    metrics_parent = (
        metrics_location.rsplit("/", 1)[0]
        if storage.is_remote(metrics_location)
        else str(Path(metrics_location).parent)
    )
    paths = WorkerPaths(
        features_dir=features,
        tensorboard_dir=location(tensorboard_dir, "tensorboard"),
        metrics_path=metrics_location,
        voices_dir=location(voices_dir, "voices"),
        index_path=storage.normalize_location(str(index_path)) if index_path is not None else None,
        checkpoint_root=run_dir if local_mode else None,
        run_dir=run_dir,
        workers_dir=storage.join(metrics_parent, "workers"),
    )
    if local_mode and storage.is_remote(run_dir):
        raise TrainingSetupError("local_mode training writes checkpoints itself and needs a local storage_path")
    filesystem, storage_fs_path = storage.filesystem_and_path(storage_location)
    clear_health_failure(run_dir)  # a new fit trains again (and resumes) after the cause was fixed
    scaling = cfg.scaling
    resources: dict[str, float] = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    log.warning(
        "rvc-ray train %s: global batch %s = %d worker(s) x %s per worker",
        run_name,
        cfg.train.batch_size,
        scaling.num_workers,
        cfg.per_worker_batch_size,
    )
    return TorchTrainer(
        train_loop_per_worker,  # type: ignore[arg-type]  # returns rank 0's final metrics (Result.return_value)
        train_loop_config={
            "run": cfg.model_dump(mode="json"),
            "paths": paths.__dict__,
            "content_encoder": _read_content_encoder_info(features),
            "fault": failure_injection.to_json() if failure_injection is not None else None,
            "trackers": _tracker_target(cfg, run_name).__dict__,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=0 if local_mode else scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=None if local_mode else resources,
            placement_strategy=scaling.resolved_placement_strategy,
        ),
        torch_config=TorchConfig(backend=scaling.resolved_backend, timeout_s=1800),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_fs_path if storage.is_remote(storage_location) else storage_location,
            storage_filesystem=filesystem if storage.is_remote(storage_location) else None,
            failure_config=ray.train.FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.train.keep_last_checkpoints,
                checkpoint_score_attribute=VAL_MEL_L1,
                checkpoint_score_order="min",
            ),
            callbacks=list(callbacks),  # type: ignore[arg-type]  # UserCallback is a Train V2 Callback
        ),
    )


def fit(
    cfg: RunConfig,
    features_dir: Path | str,
    index_path: Path | str | None = None,
    *,
    failure_injection: FailureInjection | None = None,
    locations_checked: bool = False,
) -> TrainResult:
    """Train (or resume) the voice of ``cfg`` on the cluster; outputs go to the run's :class:`RunLayout`.

    Resuming: run it again with the same ``experiment`` (name and work dir): it continues at the epoch
    after the last saved one. ``failure_injection`` is a test hook (:mod:`rvc_ray.train.fault_injection`). Unless
    ``locations_checked``, every node must first prove it can read the features (and the index, if there is
    one) and write ``experiment.work_dir`` and ``scaling.storage_path`` (:mod:`rvc_ray.cluster`).
    """
    from rvc_ray.cluster import check_locations_on_cluster, ensure_ray
    from rvc_ray.layout import RunLayout

    layout = RunLayout.from_config(cfg)
    checkpoints = storage.normalize_location(cfg.scaling.storage_path or layout.train_location)
    index = storage.normalize_location(str(index_path)) if index_path is not None else None
    index = index if index is not None and storage.exists(index) else None
    if not locations_checked:
        reads = [("features", storage.normalize_location(str(features_dir)))] + ([("index", index)] if index else [])
        writes = [("experiment.work_dir", layout.root_location)]
        if cfg.scaling.storage_path is not None:
            writes.append(("scaling.storage_path", checkpoints))
        check_locations_on_cluster(reads=reads, writes=writes)
    trainer = build_torch_trainer(
        cfg,
        features_dir,
        index,
        run_name=cfg.experiment.name,
        storage_path=checkpoints,
        tensorboard_dir=layout.tensorboard_location,
        metrics_path=layout.metrics_location,
        voices_dir=layout.voices_location,
        failure_injection=failure_injection,
    )
    ensure_ray()
    run_dir = storage.join(checkpoints, cfg.experiment.name)
    return train_result_from(trainer.fit(), cfg, run_dir=storage.as_local_or_uri(run_dir), layout=layout)


def _checkpoint_location(run_dir: Path | str, checkpoint_path: str) -> Path | str:
    """A Ray ``Checkpoint.path`` (a path inside its filesystem: ``bucket/key`` for S3) as a location."""
    run = str(run_dir)
    if storage.is_remote(run):
        scheme = run.split("://", 1)[0]
        return f"{scheme}://{checkpoint_path.lstrip('/')}"
    return Path(checkpoint_path)


def _best_checkpoint_on_disk(run_dir: Path | str) -> Path | None:
    """The ``epoch_*`` checkpoint under ``run_dir`` with the lowest ``val/mel_l1`` in its meta.json."""
    from rvc_ray.train.checkpoint import read_checkpoint_meta

    if storage.is_remote(str(run_dir)):
        return None
    scored: list[tuple[float, Path]] = []
    for directory in sorted(Path(run_dir).glob("epoch_*")):
        try:
            value = read_checkpoint_meta(directory)["metrics"].get(VAL_MEL_L1)
        except (OSError, KeyError, ValueError):
            continue
        if value is not None:
            scored.append((float(value), directory))
    return min(scored)[1] if scored else None


def train_result_from(result: Any, cfg: RunConfig, *, run_dir: Path | str, layout: Any = None) -> TrainResult:
    """Turn a Ray Train ``Result`` into a :class:`TrainResult` (also used by Tune for a trial)."""
    import re

    metrics = dict(result.return_value or result.metrics or {})
    last = _checkpoint_location(run_dir, result.checkpoint.path) if result.checkpoint is not None else None
    best: Path | str | None = None
    scored = [(m.get(VAL_MEL_L1), c) for c, m in (result.best_checkpoints or []) if m.get(VAL_MEL_L1) is not None]
    if scored:
        best = _checkpoint_location(run_dir, min(scored, key=lambda pair: pair[0])[1].path)
    else:
        best = _best_checkpoint_on_disk(run_dir)
    run = storage.normalize_location(str(run_dir))
    voices_dir = layout.voices_location if layout is not None else storage.join(run, "voices")
    tensorboard_dir = layout.tensorboard_location if layout is not None else storage.join(run, "tensorboard")
    metrics_path = layout.metrics_location if layout is not None else storage.join(run, "metrics.jsonl")
    name = re.escape(cfg.experiment.name)
    found = [
        (int(m.group(1)), f)
        for f in storage.list_files(voices_dir, suffix=".pth")
        if (m := re.fullmatch(rf"{name}_e\d+_s(\d+)\.pth", f.rsplit("/", 1)[-1].rsplit(os.sep, 1)[-1]))
    ]
    voices = [storage.as_local_or_uri(f) for _, f in sorted(found)]
    return TrainResult(
        run_dir=run_dir,
        best_checkpoint=best,
        last_checkpoint=last,
        exported_voices=tuple(voices),
        metrics=metrics,
        tensorboard_dir=storage.as_local_or_uri(tensorboard_dir),
        epochs_completed=int(metrics.get("epoch", 0)),
        # train.batch_size=auto: the batch the workers found (every epoch's metrics carry it)
        global_batch_size=int(metrics.get("global_batch_size", cfg.train.batch_size)),
        per_worker_batch_size=int(metrics.get("per_worker_batch_size", cfg.per_worker_batch_size or 0)),
        metrics_path=storage.as_local_or_uri(metrics_path),
        voices_dir=storage.as_local_or_uri(voices_dir),
    )
