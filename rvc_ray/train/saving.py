"""Rank 0's save at the end of an epoch: the checkpoint directory handed to ``ray.train.report`` (full
state, ``G_<step>.pth`` / ``D_<step>.pth`` for RVC and Applio) and, with ``train.export_every_save``, the
epoch's exported voice (see :mod:`rvc_ray.train.checkpoint` for the directory's files)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rvc_ray.config import RunConfig, split_global_batch

if TYPE_CHECKING:
    from torch import nn

    from rvc_ray.train.best import BestTracker
    from rvc_ray.train.checkpoint import TrainState
    from rvc_ray.train.epoch import RunState
    from rvc_ray.train.gan_state import GANState
    from rvc_ray.train.loop import WorkerPaths

__all__ = ["save_epoch_checkpoint", "write_checkpoint_dir"]


def write_checkpoint_dir(directory: Path, state: TrainState, cfg: RunConfig, gan: GANState) -> None:
    """Full state + RVC-compatible ``G_<step>.pth`` / ``D_<step>.pth``."""
    from rvc_ray.model.weights import save_rvc_checkpoint
    from rvc_ray.train.checkpoint import save_train_state

    save_train_state(state, directory, cfg)
    for prefix, side, lr in (
        ("G", gan.generator, cfg.optim.lr_generator),
        ("D", gan.adversary, cfg.optim.lr_discriminator),
    ):
        path = directory / f"{prefix}_{state.global_step}.pth"
        save_rvc_checkpoint(path, side.model, side.optimizer, epoch=state.epoch, learning_rate=lr)


def _export(
    cfg: RunConfig, gen: nn.Module, paths: WorkerPaths, epoch: int, step: int, extra: dict[str, Any], scratch: Path
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


def save_epoch_checkpoint(
    cfg: RunConfig,
    paths: WorkerPaths,
    run: RunState,
    *,
    epoch: int,
    world: int,
    best: BestTracker,
    epoch_metrics: dict[str, Any],
    content_encoder: dict[str, Any] | None,
) -> Path:
    """Rank 0: write the checkpoint directory (+ the epoch's exported voice, whose location is added to
    ``epoch_metrics["voice_path"]``); returns the directory for ``ray.train.report``."""
    from rvc_ray.train.checkpoint import TrainState, capture_rng_state
    from rvc_ray.train.epoch import global_batch_of

    g, d = run.gan.generator, run.gan.adversary
    global_batch = global_batch_of(cfg)
    state = TrainState(
        epoch=epoch,
        global_step=run.global_step,
        generator=g.model.state_dict(),
        discriminator=d.model.state_dict(),
        optimizer_g=g.optimizer.state_dict(),
        optimizer_d=d.optimizer.state_dict(),
        scheduler_g=g.scheduler.state_dict(),
        scheduler_d=d.scheduler.state_dict(),
        scaler=d.scaler.state_dict() if d.scaler is not None else None,
        global_batch_size=global_batch,
        per_worker_batch_size=split_global_batch(global_batch, world),
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
    write_checkpoint_dir(staging, state, cfg, run.gan)
    if cfg.train.export_every_save:
        extra = dict(content_encoder or {})
        voice, voice_location = _export(cfg, g.model, paths, epoch, run.global_step, extra, staging)
        shutil.copyfile(voice, staging / "voice.pth")
        if voice.parent == staging:
            voice.unlink()
        epoch_metrics["voice_path"] = voice_location
    return staging
