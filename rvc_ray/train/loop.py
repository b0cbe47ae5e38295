"""``train_loop_per_worker``: the GAN training loop run by every Ray Train worker.

Per worker: re-validate the config, read the feature table, build G and D, restore state (Ray
checkpoint > RVC ``G_*/D_*.pth`` > pretrained), wrap each model in DDP, then per epoch: set the
sampler's epoch, run ``train_step`` on this worker's slice of every global batch, step the schedulers,
validate on the held-out split (sharded across workers), and ``ray.train.report`` once, with a
checkpoint every ``train.save_every_epochs`` epochs (and at the last / early-stopped epoch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rvc_ray.config import RunConfig, split_global_batch
from rvc_ray.train.epoch import (
    TRAIN_METRIC_KEYS,
    MetricAccumulator,
    RunState,
    Trainables,
    global_batch_of,
    train_epoch,
)

if TYPE_CHECKING:
    import torch

    from rvc_ray.data.dataset import TrainingItems
    from rvc_ray.train.checkpoint import TrainState

__all__ = [
    "TRAIN_METRIC_KEYS",
    "BestTracker",
    "global_batch_of",
    "MetricAccumulator",
    "WorkerPaths",
    "should_stop_early",
    "state_fingerprint",
    "track_best",
    "usable_min_frames",
    "train_loop_per_worker",
    "wrap_models",
]

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


def wrap_models(
    gen: torch.nn.Module, disc: torch.nn.Module, *, always: bool = False
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Each model in its own DDP wrapper (none for one worker, unless ``always`` =
    ``train.use_ddp_for_one_worker``); every parameter of G gets a gradient each step, so no
    ``find_unused_parameters`` (the 2-worker tests would hang or raise otherwise).

    D runs two forwards per iteration (D step, G step). Its only possible buffers are spectral-norm power
    iteration vectors, computed from the (identical) weights, so they need no broadcast: with buffers D is
    wrapped with ``broadcast_buffers=False``; without (the default weight-norm D) the flag is left out, as
    torch 2.13 deprecates it.
    """
    import torch.distributed as dist
    from ray.train.torch import prepare_model
    from torch.nn.parallel import DistributedDataParallel

    gen_kwargs: dict[str, Any] = {"find_unused_parameters": False}
    disc_kwargs: dict[str, Any] = {"broadcast_buffers": False} if any(True for _ in disc.buffers()) else {}
    gen_ddp = prepare_model(gen, parallel_strategy_kwargs=gen_kwargs)
    disc_ddp = prepare_model(disc, parallel_strategy_kwargs=disc_kwargs)
    if always and dist.is_available() and dist.is_initialized() and not isinstance(gen_ddp, DistributedDataParallel):
        device = next(gen.parameters()).device
        ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
        gen_ddp = DistributedDataParallel(gen, device_ids=ids, **gen_kwargs)
        disc_ddp = DistributedDataParallel(disc, device_ids=ids, **disc_kwargs)
    return gen_ddp, disc_ddp


def _process_group_backend() -> str | None:
    """The torch.distributed backend of this worker (``nccl``, ``gloo``), None without a process group."""
    import torch.distributed as dist

    return str(dist.get_backend()) if dist.is_available() and dist.is_initialized() else None


def usable_min_frames(cfg: RunConfig) -> int:
    """The fewest frames a clip may have: ``data.min_frames`` if set, and always enough for the STFT's
    reflect padding (``(n_fft - hop) / 2`` samples) — shorter rows (e.g. failed extractions with 0 frames)
    are left out and counted in the start record's ``dropped_short_items``."""
    pad = (cfg.audio.n_fft - cfg.audio.hop_length) // 2
    stft_min = pad // cfg.audio.hop_length + 1
    return max(stft_min, cfg.data.min_frames or 0)


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


def _write_checkpoint_dir(
    directory: Path,
    state: TrainState,
    cfg: RunConfig,
    gen: torch.nn.Module,
    disc: torch.nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
) -> None:
    """Full state + RVC-compatible ``G_<step>.pth`` / ``D_<step>.pth``."""
    from rvc_ray.model.weights import save_rvc_checkpoint
    from rvc_ray.train.checkpoint import save_train_state

    save_train_state(state, directory, cfg)
    save_rvc_checkpoint(
        directory / f"G_{state.global_step}.pth", gen, opt_g, epoch=state.epoch, learning_rate=cfg.optim.lr_generator
    )
    save_rvc_checkpoint(
        directory / f"D_{state.global_step}.pth",
        disc,
        opt_d,
        epoch=state.epoch,
        learning_rate=cfg.optim.lr_discriminator,
    )


def _export(
    cfg: RunConfig,
    gen: torch.nn.Module,
    paths: WorkerPaths,
    epoch: int,
    step: int,
    extra: dict[str, Any],
    scratch: Path,
) -> tuple[Path, str]:
    """``voices/<name>_e<E>_s<S>.pth`` + ``voices/<name>.pth`` (latest) + ``voices/<name>.index``.

    Returns the voice as a local file (in ``scratch`` when the voices live on a bucket) and its location."""
    from rvc_ray import storage
    from rvc_ray.model.export import export_voice, publish_voice

    name = cfg.experiment.name
    local_dir = scratch if storage.is_remote(paths.voices_dir) else Path(paths.voices_dir)
    target = local_dir / f"{name}_e{epoch}_s{step}.pth"
    export_voice(gen.state_dict(), cfg.model, cfg.audio, target, epoch=epoch, step=step, name=name, extra_info=extra)
    return target, publish_voice(target, paths.voices_dir, name=name, index_location=paths.index_path)


@dataclass(frozen=True)
class BestTracker:
    """The best (lowest) ``val/mel_l1`` so far, its epoch, and the epochs since it improved."""

    value: float | None = None
    epoch: int | None = None
    epochs_without_improvement: int = 0


def track_best(tracker: BestTracker, score: float, epoch: int) -> BestTracker:
    """Update with the score of ``epoch`` (a NaN score never counts as an improvement)."""
    if not math.isnan(score) and (tracker.value is None or score < tracker.value):
        return BestTracker(score, epoch, 0)
    return BestTracker(tracker.value, tracker.epoch, tracker.epochs_without_improvement + 1)


def should_stop_early(tracker: BestTracker, patience: int | None) -> bool:
    """True when ``train.early_stop_patience`` is set and that many epochs passed without a new best."""
    return patience is not None and tracker.epochs_without_improvement >= patience


def _save_checkpoint(
    cfg: RunConfig,
    paths: WorkerPaths,
    run: RunState,
    epoch: int,
    world: int,
    best: BestTracker,
    epoch_metrics: dict[str, Any],
    config: dict[str, Any],
) -> Path:
    """Rank 0: write the checkpoint directory (+ the epoch's exported voice); returns it for ``report``."""
    from rvc_ray.train.checkpoint import TrainState, capture_rng_state

    t = run.trainables
    state = TrainState(
        epoch=epoch,
        global_step=run.global_step,
        generator=t.gen.state_dict(),
        discriminator=t.disc.state_dict(),
        optimizer_g=t.opt_g.state_dict(),
        optimizer_d=t.opt_d.state_dict(),
        scheduler_g=t.sched_g.state_dict(),
        scheduler_d=t.sched_d.state_dict(),
        scaler=t.scaler.state_dict() if t.scaler is not None else None,
        global_batch_size=global_batch_of(cfg),
        per_worker_batch_size=split_global_batch(global_batch_of(cfg), world),
        num_workers=world,
        rng=capture_rng_state(),
        best_val_mel_l1=best.value,
        best_epoch=best.epoch,
        epochs_without_improvement=best.epochs_without_improvement,
        metrics={k: float(v) for k, v in epoch_metrics.items() if isinstance(v, int | float)},
    )
    if paths.checkpoint_root:
        staging = Path(paths.checkpoint_root) / f"epoch_{epoch:05d}"
    else:
        staging = Path(tempfile.mkdtemp(prefix=f"rvc-ckpt-e{epoch}-"))
    _write_checkpoint_dir(staging, state, cfg, t.gen, t.disc, t.opt_g, t.opt_d)
    if cfg.train.export_every_save:
        extra = dict(config.get("content_encoder") or {})
        voice, voice_location = _export(cfg, t.gen, paths, epoch, run.global_step, extra, staging)
        shutil.copyfile(voice, staging / "voice.pth")
        if voice.parent == staging:
            voice.unlink()
        epoch_metrics["voice_path"] = voice_location
    return staging


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train entry point. ``config`` = ``{"run": cfg.model_dump(mode="json"), "paths": {...},
    "content_encoder": {...} | None, "fault": {...} | None}`` (see :mod:`rvc_ray.train.launch`).

    Returns rank 0's final metrics (``Result.return_value``).
    """
    import ray.train
    import torch
    from ray.train.torch import get_device

    # DDP's performance hint for the [C, 1, K] noise-conv weights (a size-1 dim has ambiguous strides); it
    # is printed on every step of every worker and is not actionable.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")

    from rvc_ray.data.prefetch import cache_items_on_device
    from rvc_ray.data.sampler import DistributedBucketSampler
    from rvc_ray.model.build import build_discriminator, build_generator
    from rvc_ray.train import steps
    from rvc_ray.train.checkpoint import local_feature_table, restore_initial_state
    from rvc_ray.train.collectives import barrier, broadcast_from_rank_zero
    from rvc_ray.train.fault_injection import FailureInjection
    from rvc_ray.train.health_marker import record_health_failure, refuse_to_replay_health_failure
    from rvc_ray.train.memory import resolve_run_batch_size
    from rvc_ray.train.reporting import TrainingReporter, record_worker_node
    from rvc_ray.train.trackers import TrackerTarget
    from rvc_ray.train.validation import evaluate_items

    cfg = RunConfig.model_validate(config["run"])
    paths = WorkerPaths(**config["paths"])
    if paths.run_dir:
        refuse_to_replay_health_failure(paths.run_dir)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    _configure_threads(cfg)
    device = get_device()
    seed = cfg.experiment.seed

    train_items, val_items = _load_items(cfg, local_feature_table(paths.features_dir))
    settings = steps.StepSettings.from_config(cfg, device)
    try:
        cfg, batch_source = resolve_run_batch_size(
            cfg, train_items, settings, world, ray.train.get_checkpoint(), min_frames=usable_min_frames(cfg)
        )
    except steps.TrainingHealthError as exc:  # not even one clip fits: a restart would not help
        if paths.run_dir:
            record_health_failure(paths.run_dir, rank, exc)
        raise
    sampler = DistributedBucketSampler(
        train_items.lengths,
        global_batch_size=global_batch_of(cfg),
        boundaries=cfg.data.bucket_boundaries,
        num_replicas=world,
        rank=rank,
        seed=seed,
        min_length=usable_min_frames(cfg),
    )
    torch.manual_seed(seed)
    gen = build_generator(cfg.model, cfg.audio).to(device)
    disc = build_discriminator(cfg.model).to(device)
    opt_g, opt_d = steps.build_optimizers(gen, disc, cfg.optim)
    sched_g, sched_d = steps.build_schedulers(opt_g, opt_d, cfg.optim)
    scaler = steps.build_grad_scaler(settings)

    restored = restore_initial_state(cfg, gen, disc, opt_g, opt_d, sched_g, sched_d, scaler, ray.train.get_checkpoint())
    start_epoch, global_step = restored.epoch + 1, restored.global_step
    tracker = BestTracker(restored.best_val_mel_l1, restored.best_epoch, restored.epochs_without_improvement)
    fingerprint = state_fingerprint(gen.state_dict())

    gen_ddp, disc_ddp = wrap_models(gen, disc, always=cfg.train.use_ddp_for_one_worker)
    trainables = Trainables(gen, disc, opt_g, opt_d, sched_g, sched_d, scaler)
    reporter = TrainingReporter(
        paths.tensorboard_dir,
        paths.metrics_path,
        enabled=rank == 0,
        purge_step=global_step + 1,
        trackers=cfg.train.trackers,
        target=TrackerTarget(**config["trackers"]) if config.get("trackers") else None,
    )
    if paths.workers_dir:
        record_worker_node(
            paths.workers_dir,
            rank=rank,
            node_id=ray.get_runtime_context().get_node_id(),
            start_epoch=start_epoch,
            world_size=world,
        )
    per_worker = sampler.per_replica_batch_size
    start_note = {
        "kind": "start",
        "start_epoch": start_epoch,
        "resumed_from": restored.source,
        "state_sha256": fingerprint,
        "global_batch_size": global_batch_of(cfg),
        "per_worker_batch_size": per_worker,
        "batch_size_source": batch_source,
        "precision": settings.precision,
        "device": str(device),
        "ddp": type(gen_ddp).__name__ == "DistributedDataParallel",
        "backend": _process_group_backend(),
        "num_workers": world,
        "steps_per_epoch": len(sampler),
        "train_items": len(train_items),
        "dropped_short_items": len(sampler.dropped),
        "val_items": len(val_items) if val_items is not None else 0,
    }
    if rank == 0:
        log.warning("rvc-ray train: %s", json.dumps(start_note))
        reporter.log_start(step=global_step, note=start_note, params=cfg.model_dump(mode="json"))

    epoch_items: Any = train_items
    if cfg.train.cache_dataset_on_gpu:
        epoch_items = cache_items_on_device(train_items, device, announce=rank == 0)
    final: dict[str, Any] = {"epoch": restored.epoch, "step": global_step}
    run = RunState(rank=rank, device=device, global_step=global_step, trainables=trainables)
    for epoch in range(start_epoch, cfg.train.epochs + 1):
        sampler.set_epoch(epoch)
        torch.manual_seed(_epoch_seed(seed, epoch, rank))
        try:
            epoch_sums, steps_done, elapsed = train_epoch(
                cfg,
                epoch,
                run,
                gen_ddp,
                disc_ddp,
                sampler,
                epoch_items,
                settings,
                reporter,
                FailureInjection.from_json(config.get("fault")),
            )
        except steps.TrainingHealthError as exc:
            if paths.run_dir:
                record_health_failure(paths.run_dir, rank, exc)
            raise
        sched_g.step()
        sched_d.step()
        epoch_metrics: dict[str, Any] = epoch_sums.mean_across_workers(device)
        val_metrics, val_sums = _validate(cfg, gen, val_items, train_items, rank, world, device, evaluate_items)
        epoch_metrics.update(val_metrics)
        epoch_metrics.update(
            epoch=epoch,
            step=run.global_step,
            samples_per_s=steps_done * global_batch_of(cfg) / max(elapsed, 1e-9),
            skipped_steps=round(epoch_metrics.get("skipped", 0.0) * steps_done),
            epoch_time_s=elapsed,
            global_batch_size=global_batch_of(cfg),
            per_worker_batch_size=per_worker,
        )
        tracker = track_best(tracker, epoch_metrics["val/mel_l1"], epoch)
        epoch_metrics.update({"best/val_mel_l1": tracker.value, "best/epoch": tracker.epoch})
        # every rank computes the same decision from all-reduced scores; rank 0's is broadcast so that a
        # rounding difference can never leave one rank training while the others stop
        stop_early = bool(
            broadcast_from_rank_zero(float(should_stop_early(tracker, cfg.train.early_stop_patience)), device)
        )
        save = epoch % cfg.train.save_every_epochs == 0 or epoch == cfg.train.epochs or stop_early
        epoch_metrics["stopped_early"] = bool(stop_early)
        reporter.log_epoch(epoch=epoch, step=run.global_step, metrics=epoch_metrics)
        if val_sums is not None and val_sums.mel_org is not None and val_sums.mel_gen is not None:
            reporter.log_mel_images(step=run.global_step, mel_org=val_sums.mel_org, mel_gen=val_sums.mel_gen)
        checkpoint, staging = None, None
        if save and rank == 0:
            if val_sums is not None:
                for i, wav in enumerate(val_sums.previews):
                    reporter.log_audio(
                        step=run.global_step, name=f"preview/{i}", wav=wav, sample_rate=cfg.audio.sample_rate
                    )
            staging = _save_checkpoint(cfg, paths, run, epoch, world, tracker, epoch_metrics, config)
            if "voice_path" in epoch_metrics:
                voice_name = str(epoch_metrics["voice_path"]).rsplit("/", 1)[-1]
                reporter.log_artifact(staging / "voice.pth", "voices", name=voice_name)
            checkpoint = ray.train.Checkpoint.from_directory(str(staging))
        ray.train.report(
            epoch_metrics, checkpoint=checkpoint, checkpoint_dir_name=f"epoch_{epoch:05d}" if save else None
        )
        if staging is not None and not paths.checkpoint_root:
            shutil.rmtree(staging, ignore_errors=True)
        final = epoch_metrics
        if stop_early:
            log.warning(
                "early stop at epoch %d: val/mel_l1 did not improve for %d epochs",
                epoch,
                tracker.epochs_without_improvement,
            )
            break
    barrier(device)  # every rank leaves the loop together (rank 0's last export is written)
    reporter.close()
    return {k: v for k, v in final.items() if not (isinstance(v, float) and math.isnan(v))}


def _validate(
    cfg: RunConfig,
    gen: torch.nn.Module,
    val_items: TrainingItems | None,
    train_items: TrainingItems,
    rank: int,
    world: int,
    device: torch.device,
    evaluate_items: Any,
) -> tuple[dict[str, float], Any]:
    """val/mel_l1 and val/mcd over the held-out split, each worker scoring a contiguous share of it.

    Without a held-out split (``features.validation_fraction=0``) the first few training items are
    scored instead, and ``val/on_train_items`` is 1 so nobody mistakes it for a held-out score.
    """
    from rvc_ray.train.collectives import sum_across_workers

    items = val_items if val_items is not None else train_items
    shortest = usable_min_frames(cfg)
    usable = [i for i, n in enumerate(items.lengths) if n >= shortest]
    indices = usable if val_items is not None else usable[:4]
    share = -(-len(indices) // world)
    mine = indices[rank * share : (rank + 1) * share]  # contiguous: rank 0 holds the first clips (previews)
    previews = cfg.train.num_preview_clips if rank == 0 else 0
    sums = evaluate_items(gen, items, mine, cfg.audio, seed=cfg.experiment.seed, device=device, num_previews=previews)
    total_l1, total_mcd, count = sum_across_workers([sums.mel_l1_sum, sums.mcd_sum, float(sums.count)], device)
    count = max(count, 1.0)
    metrics = {"val/mel_l1": total_l1 / count, "val/mcd": total_mcd / count}
    metrics["val/on_train_items"] = 0.0 if val_items is not None else 1.0
    return metrics, sums
