"""``train_loop_per_worker``: the GAN training loop run by every Ray Train worker.

Per worker: re-validate the config, read the feature table, build the GAN state
(:mod:`rvc_ray.train.gan_state`), restore it (Ray checkpoint > RVC ``G_*/D_*.pth`` > pretrained), wrap each
model in DDP, then per epoch: set the sampler's epoch, train this worker's slice of every global batch
(:mod:`rvc_ray.train.epoch`), step the schedulers, validate on the held-out split, sharded across workers
(:mod:`rvc_ray.train.validation`), track the best epoch (:mod:`rvc_ray.train.best`), and
``ray.train.report`` once, with a checkpoint every ``train.save_every_epochs`` epochs and at the last /
early-stopped epoch (:mod:`rvc_ray.train.saving`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rvc_ray.config import RunConfig
from rvc_ray.train.epoch import RunState, global_batch_of, train_epoch

if TYPE_CHECKING:
    from rvc_ray.data.dataset import TrainingItems
    from rvc_ray.data.prefetch import DeviceItemCache
    from rvc_ray.data.sampler import DistributedBucketSampler
    from rvc_ray.train.best import BestTracker
    from rvc_ray.train.checkpoint import RestoredState
    from rvc_ray.train.reporting import TrainingReporter
    from rvc_ray.train.steps import StepSettings
    from rvc_ray.train.validation import ValidationSums

__all__ = ["WorkerPaths", "state_fingerprint", "train_loop_per_worker"]

log = logging.getLogger("rvc_ray.train")


@dataclass(frozen=True)
class WorkerPaths:
    """Paths a worker needs, sent as strings inside ``train_loop_config["paths"]``.

    ``checkpoint_root`` is only set in local mode (``num_workers=0``), where Ray does not persist
    reported checkpoints: the loop then writes them there itself.
    """

    features_dir: str
    tensorboard_dir: str
    metrics_path: str
    voices_dir: str
    index_path: str | None = None
    checkpoint_root: str | None = None
    run_dir: str | None = None  # the run's directory in Ray Train storage (health_failure.json lives there)
    workers_dir: str | None = None  # where each worker records its Ray node id (reporting.record_worker_node)


def state_fingerprint(state_dict: dict[str, Any]) -> str:
    """sha256 over the names and bytes of every tensor of a state dict (order-independent)."""
    import torch

    digest = hashlib.sha256()
    for key in sorted(state_dict):
        value = state_dict[key]
        digest.update(key.encode())
        if isinstance(value, torch.Tensor):
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch seed of (epoch, rank): reseeding per epoch makes a resumed run replay the same noise."""
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729) % (2**63 - 1)


def _configure_threads(cfg: RunConfig) -> None:
    """torch threads = reserved CPUs (at least 1; Ray sets OMP_NUM_THREADS from the reservation)."""
    import torch

    threads = max(1, int(round(cfg.scaling.cpus_per_worker)))
    torch.set_num_threads(threads)


def _process_group_backend() -> str | None:
    """The torch.distributed backend of this worker (``nccl``, ``gloo``), None without a process group."""
    import torch.distributed as dist

    return str(dist.get_backend()) if dist.is_available() and dist.is_initialized() else None


def _load_items(cfg: RunConfig, features_dir: Path) -> tuple[TrainingItems, TrainingItems | None]:
    from rvc_ray.data.dataset import FeatureTableError, TrainingItems, load_feature_table

    hop = cfg.audio.hop_length
    train_table = load_feature_table(features_dir, "train", hop_length=hop)
    if len(train_table) == 0:
        raise FeatureTableError(f"the feature table in {features_dir} has no 'train' rows")
    if train_table.content_dim != cfg.model.content_dim:
        raise FeatureTableError(
            f"the feature table in {features_dir} has {train_table.content_dim}-d content but "
            f"model.content_dim={cfg.model.content_dim}"
        )
    val_table = load_feature_table(features_dir, "val", hop_length=hop)
    max_frames, use_f0 = cfg.data.max_frames, cfg.model.use_f0
    train = TrainingItems(train_table, cfg.audio, max_frames=max_frames, use_f0=use_f0)
    val = TrainingItems(val_table, cfg.audio, max_frames=max_frames, use_f0=use_f0) if len(val_table) else None
    return train, val


@dataclass
class _Worker:
    """What a worker has set up before its first epoch."""

    cfg: RunConfig
    paths: WorkerPaths
    world: int
    settings: StepSettings
    train_items: TrainingItems
    val_items: TrainingItems | None
    epoch_items: TrainingItems | DeviceItemCache
    sampler: DistributedBucketSampler
    run: RunState
    reporter: TrainingReporter
    restored: RestoredState


@contextlib.contextmanager
def _recording_health_failures(paths: WorkerPaths, rank: int) -> Iterator[None]:
    """A :class:`TrainingHealthError` is recorded in the run directory (a restart would replay it) and re-raised."""
    from rvc_ray.train.health_marker import record_health_failure
    from rvc_ray.train.steps import TrainingHealthError

    try:
        yield
    except TrainingHealthError as exc:
        if paths.run_dir:
            record_health_failure(paths.run_dir, rank, exc)
        raise


def _resume_checkpoint(paths: WorkerPaths, rank: int) -> Any | None:
    """Ray Train's checkpoint of this run, else (a restarted group Ray gave none) the newest one in storage:
    rank 0 uploaded it, but a worker was lost before Ray registered it (:func:`newest_stored_checkpoint`)."""
    import ray.train

    from rvc_ray.train.checkpoint import newest_stored_checkpoint

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and paths.run_dir and paths.checkpoint_root is None:
        checkpoint = newest_stored_checkpoint(paths.run_dir)
        if checkpoint is not None:
            log.warning("rank %d: Ray Train holds no checkpoint; resuming from the newest in storage, %s", rank, checkpoint.path)
    return checkpoint


def _start_worker(config: dict[str, Any]) -> _Worker:
    """Re-validate the config, read the feature table, resolve the batch, build and restore the GAN, wrap it in
    DDP, and write the start record (rank 0)."""
    import ray.train
    import torch
    from ray.train.torch import get_device

    from rvc_ray.data.prefetch import cache_items_on_device
    from rvc_ray.data.sampler import DistributedBucketSampler
    from rvc_ray.train.checkpoint import local_feature_table, restore_initial_state
    from rvc_ray.train.gan_state import build_gan_state, wrap_models
    from rvc_ray.train.health_marker import refuse_to_replay_health_failure
    from rvc_ray.train.memory import resolve_run_batch_size
    from rvc_ray.train.reporting import TrainingReporter
    from rvc_ray.train.steps import StepSettings
    from rvc_ray.train.trackers import TrackerTarget
    from rvc_ray.train.validation import usable_min_frames

    cfg = RunConfig.model_validate(config["run"])
    paths = WorkerPaths(**config["paths"])
    if paths.run_dir:
        refuse_to_replay_health_failure(paths.run_dir)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    _configure_threads(cfg)
    device = get_device()
    train_items, val_items = _load_items(cfg, local_feature_table(paths.features_dir))
    settings = StepSettings.from_config(cfg, device)
    checkpoint = _resume_checkpoint(paths, rank)
    with _recording_health_failures(paths, rank):  # not even one clip fits: a restart would not help
        cfg, batch_source = resolve_run_batch_size(
            cfg, train_items, settings, world, checkpoint, min_frames=usable_min_frames(cfg)
        )
    sampler = DistributedBucketSampler(
        train_items.lengths,
        global_batch_size=global_batch_of(cfg),
        boundaries=cfg.data.bucket_boundaries,
        num_replicas=world,
        rank=rank,
        seed=cfg.experiment.seed,
        min_length=usable_min_frames(cfg),
    )
    torch.manual_seed(cfg.experiment.seed)
    gan = build_gan_state(cfg, settings, device)
    restored = restore_initial_state(cfg, gan, checkpoint)
    fingerprint = state_fingerprint(gan.generator.model.state_dict())
    gan.generator.wrapped, gan.adversary.wrapped = wrap_models(
        gan.generator.model, gan.adversary.model, always=cfg.train.use_ddp_for_one_worker
    )
    reporter = TrainingReporter(
        paths.tensorboard_dir,
        paths.metrics_path,
        enabled=rank == 0,
        purge_step=restored.global_step + 1,
        trackers=cfg.train.trackers,
        target=TrackerTarget(**config["trackers"]) if config.get("trackers") else None,
    )
    run = RunState(rank=rank, device=device, global_step=restored.global_step, gan=gan)
    worker = _Worker(cfg, paths, world, settings, train_items, val_items, train_items, sampler, run, reporter, restored)
    _record_start(worker, fingerprint, batch_source)
    if cfg.train.cache_dataset_on_gpu:
        worker.epoch_items = cache_items_on_device(train_items, device, announce=rank == 0)
    return worker


def _record_start(worker: _Worker, fingerprint: str, batch_source: str) -> None:
    """The worker's node (every rank) and the run's start record (rank 0: log, reporter)."""
    import ray

    from rvc_ray.train.reporting import record_worker_node

    cfg, run, restored = worker.cfg, worker.run, worker.restored
    if worker.paths.workers_dir:
        record_worker_node(
            worker.paths.workers_dir,
            rank=run.rank,
            node_id=ray.get_runtime_context().get_node_id(),
            start_epoch=restored.epoch + 1,
            world_size=worker.world,
        )
    if run.rank != 0:
        return
    start_note = {
        "kind": "start",
        "start_epoch": restored.epoch + 1,
        "resumed_from": restored.source,
        "state_sha256": fingerprint,
        "global_batch_size": global_batch_of(cfg),
        "per_worker_batch_size": worker.sampler.per_replica_batch_size,
        "batch_size_source": batch_source,
        "precision": worker.settings.precision,
        "device": str(run.device),
        "ddp": type(run.gan.generator.module).__name__ == "DistributedDataParallel",
        "backend": _process_group_backend(),
        "num_workers": worker.world,
        "steps_per_epoch": len(worker.sampler),
        "train_items": len(worker.train_items),
        "dropped_short_items": len(worker.sampler.dropped),
        "val_items": len(worker.val_items) if worker.val_items is not None else 0,
    }
    log.warning("rvc-ray train: %s", json.dumps(start_note))
    worker.reporter.log_start(step=run.global_step, note=start_note, params=cfg.model_dump(mode="json"))


def _report_epoch(
    worker: _Worker,
    epoch: int,
    epoch_metrics: dict[str, Any],
    val_sums: ValidationSums,
    *,
    save: bool,
    best: BestTracker,
    content_encoder: dict[str, Any] | None,
) -> None:
    """Log the epoch, save on rank 0 when ``save`` (previews, checkpoint, voice), and ``ray.train.report``."""
    import ray.train

    from rvc_ray.train.saving import save_epoch_checkpoint

    cfg, run, reporter = worker.cfg, worker.run, worker.reporter
    reporter.log_epoch(epoch=epoch, step=run.global_step, metrics=epoch_metrics)
    if val_sums.mel_org is not None and val_sums.mel_gen is not None:
        reporter.log_mel_images(step=run.global_step, mel_org=val_sums.mel_org, mel_gen=val_sums.mel_gen)
    checkpoint, staging = None, None
    if save and run.rank == 0:
        for i, wav in enumerate(val_sums.previews):
            reporter.log_audio(step=run.global_step, name=f"preview/{i}", wav=wav, sample_rate=cfg.audio.sample_rate)
        staging = save_epoch_checkpoint(
            cfg,
            worker.paths,
            run,
            epoch=epoch,
            world=worker.world,
            best=best,
            epoch_metrics=epoch_metrics,
            content_encoder=content_encoder,
        )
        if "voice_path" in epoch_metrics:
            voice_name = str(epoch_metrics["voice_path"]).rsplit("/", 1)[-1]
            reporter.log_artifact(staging / "voice.pth", "voices", name=voice_name)
        checkpoint = ray.train.Checkpoint.from_directory(str(staging))
    ray.train.report(epoch_metrics, checkpoint=checkpoint, checkpoint_dir_name=f"epoch_{epoch:05d}" if save else None)
    if staging is not None and not worker.paths.checkpoint_root:
        shutil.rmtree(staging, ignore_errors=True)


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train entry point. ``config`` = ``{"run": cfg.model_dump(mode="json"), "paths": {...},
    "content_encoder": {...} | None, "fault": {...} | None, "trackers": {...} | None}`` (see
    :mod:`rvc_ray.train.launch`; ``fault`` is the test hook of :mod:`rvc_ray.train.fault_injection`).

    Returns rank 0's final metrics (``Result.return_value``).
    """
    import torch

    from rvc_ray.train import metric_names as names
    from rvc_ray.train.best import BestTracker, should_stop_early, track_best
    from rvc_ray.train.collectives import barrier, broadcast_from_rank_zero
    from rvc_ray.train.fault_injection import FailureInjection
    from rvc_ray.train.validation import validate_epoch

    # DDP's performance hint for the [C, 1, K] noise-conv weights (a size-1 dim has ambiguous strides); it
    # is printed on every step of every worker and is not actionable.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    worker = _start_worker(config)
    cfg, run, restored = worker.cfg, worker.run, worker.restored
    fault = FailureInjection.from_json(config.get("fault"))
    tracker = BestTracker(restored.best_val_mel_l1, restored.best_epoch, restored.epochs_without_improvement)
    final: dict[str, Any] = {"epoch": restored.epoch, "step": run.global_step}
    for epoch in range(restored.epoch + 1, cfg.train.epochs + 1):
        worker.sampler.set_epoch(epoch)
        torch.manual_seed(_epoch_seed(cfg.experiment.seed, epoch, run.rank))
        with _recording_health_failures(worker.paths, run.rank):
            epoch_sums, steps_done, elapsed = train_epoch(
                cfg, epoch, run, worker.sampler, worker.epoch_items, worker.settings, worker.reporter, fault
            )
        run.gan.step_schedulers()
        epoch_metrics: dict[str, Any] = epoch_sums.mean_across_workers(run.device)
        val_metrics, val_sums = validate_epoch(
            cfg,
            run.gan.generator.model,
            worker.val_items,
            worker.train_items,
            rank=run.rank,
            world=worker.world,
            device=run.device,
        )
        epoch_metrics.update(val_metrics)
        epoch_metrics.update(
            epoch=epoch,
            step=run.global_step,
            samples_per_s=steps_done * global_batch_of(cfg) / max(elapsed, 1e-9),
            skipped_steps=round(epoch_metrics.get(names.SKIPPED, 0.0) * steps_done),
            epoch_time_s=elapsed,
            global_batch_size=global_batch_of(cfg),
            per_worker_batch_size=worker.sampler.per_replica_batch_size,
        )
        tracker = track_best(tracker, epoch_metrics[names.VAL_MEL_L1], epoch)
        epoch_metrics.update({names.BEST_VAL_MEL_L1: tracker.value, names.BEST_EPOCH: tracker.epoch})
        # every rank computes the same decision from all-reduced scores; rank 0's is broadcast so that a
        # rounding difference can never leave one rank training while the others stop
        stop_early = bool(
            broadcast_from_rank_zero(float(should_stop_early(tracker, cfg.train.early_stop_patience)), run.device)
        )
        save = epoch % cfg.train.save_every_epochs == 0 or epoch == cfg.train.epochs or stop_early
        epoch_metrics["stopped_early"] = stop_early
        _report_epoch(
            worker,
            epoch,
            epoch_metrics,
            val_sums,
            save=save,
            best=tracker,
            content_encoder=config.get("content_encoder"),
        )
        final = epoch_metrics
        if stop_early:
            log.warning(
                "early stop at epoch %d: val/mel_l1 did not improve for %d epochs",
                epoch,
                tracker.epochs_without_improvement,
            )
            break
    barrier(run.device)  # every rank leaves the loop together (rank 0's last export is written)
    worker.reporter.close()
    return {k: v for k, v in final.items() if not (isinstance(v, float) and math.isnan(v))}
