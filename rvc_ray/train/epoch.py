"""One training epoch on one worker: the steps, their metrics and the guards around each step.

Used by :func:`rvc_ray.train.loop.train_loop_per_worker`. Per step: the batch-health flag is agreed by all
workers (:mod:`rvc_ray.train.collectives`), ``train_step`` runs, an out-of-memory error becomes a
:class:`~rvc_ray.train.steps.TrainingOutOfMemoryError`, skipped steps are counted, and every
``train.log_every_steps`` the step's metrics are averaged across workers and logged.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rvc_ray.config import RunConfig
from rvc_ray.train import metric_names as names
from rvc_ray.train.fault_injection import FailureInjection, maybe_inject_failure

if TYPE_CHECKING:
    from collections.abc import Iterable

    import torch

    from rvc_ray.data.batch import RVCBatch
    from rvc_ray.data.dataset import TrainingItems
    from rvc_ray.data.prefetch import DeviceItemCache
    from rvc_ray.data.sampler import DistributedBucketSampler
    from rvc_ray.train.gan_state import GANState
    from rvc_ray.train.reporting import TrainingReporter
    from rvc_ray.train.steps import StepSettings

__all__ = [
    "MetricAccumulator",
    "RunState",
    "count_skips",
    "global_batch_of",
    "guarded_step",
    "train_epoch",
]

log = logging.getLogger("rvc_ray.train")


class MetricAccumulator:
    """Sums of :data:`~rvc_ray.train.metric_names.TRAIN_METRIC_KEYS` over steps; :meth:`mean_across_workers` all-reduces them."""

    def __init__(self) -> None:
        self.sums = dict.fromkeys(names.TRAIN_METRIC_KEYS, 0.0)
        self.counts = dict.fromkeys(names.TRAIN_METRIC_KEYS, 0.0)

    def add(self, metrics: dict[str, float]) -> None:
        for key in names.TRAIN_METRIC_KEYS:
            value = metrics.get(key)
            if value is not None and math.isfinite(float(value)):
                self.sums[key] += float(value)
                self.counts[key] += 1.0

    def mean_across_workers(self, device: torch.device | str = "cpu") -> dict[str, float]:
        """Per-key means over every worker's steps (one all-reduce on the training ``device``)."""
        from rvc_ray.train.collectives import sum_across_workers

        reduced = sum_across_workers(
            [self.sums[k] for k in names.TRAIN_METRIC_KEYS] + [self.counts[k] for k in names.TRAIN_METRIC_KEYS], device
        )
        n = len(names.TRAIN_METRIC_KEYS)
        return {k: reduced[i] / reduced[n + i] for i, k in enumerate(names.TRAIN_METRIC_KEYS) if reduced[n + i] > 0}


@dataclass
class RunState:
    """Mutable per-worker progress, and the GAN it trains."""

    rank: int
    device: torch.device
    global_step: int
    gan: GANState
    skipped_steps: int = 0
    consecutive_scaler_skips: int = 0


def train_epoch(
    cfg: RunConfig,
    epoch: int,
    run: RunState,
    sampler: DistributedBucketSampler,
    items: TrainingItems | DeviceItemCache,
    settings: StepSettings,
    reporter: TrainingReporter,
    fault: FailureInjection | None = None,
) -> tuple[MetricAccumulator, int, float]:
    """All steps of one epoch on this worker's slices; returns (metric sums, steps, seconds).

    The next batch is built (and copied to the device) while the step runs (:mod:`rvc_ray.data.prefetch`).
    ``fault`` is the test hook of :mod:`rvc_ray.train.fault_injection` (None in production).
    """
    from rvc_ray.data.prefetch import BatchPrefetcher, DeviceItemCache

    epoch_sums = MetricAccumulator()
    steps_done, started = 0, time.perf_counter()
    run.gan.generator.module.train()
    run.gan.adversary.module.train()
    batches: Iterable[RVCBatch]
    if isinstance(items, DeviceItemCache):  # batches are padded on the device already
        batches = (items.batch(indices) for indices in sampler)
    else:
        batches = BatchPrefetcher(sampler, items.batch, run.device, depth=cfg.train.prefetch_batches)
    for batch in batches:
        metrics = guarded_step(run, batch, settings)
        metrics[names.LEARNING_RATE] = run.gan.learning_rate
        run.global_step += 1
        steps_done += 1
        epoch_sums.add(metrics)
        count_skips(cfg, run, metrics)
        if run.global_step % cfg.train.log_every_steps == 0:
            step_sums = MetricAccumulator()
            step_sums.add(metrics)
            reporter.log_step(epoch=epoch, step=run.global_step, metrics=step_sums.mean_across_workers(run.device))
        if steps_done == 1:
            maybe_inject_failure(fault, run.rank, epoch)
    return epoch_sums, steps_done, time.perf_counter() - started


def global_batch_of(cfg: RunConfig) -> int:
    """``train.batch_size`` once resolved (the loop replaces ``auto`` by the batch it found, first thing)."""
    batch = cfg.train.batch_size
    if not isinstance(batch, int):
        raise RuntimeError("train.batch_size=auto must be resolved before training (_resolve_batch_size)")
    return batch


def guarded_step(run: RunState, batch: RVCBatch, settings: StepSettings) -> dict[str, float]:
    """One GAN iteration, with the batch-health flag agreed by every worker (so all ranks raise, or all
    skip, together: none is left waiting in a collective) and out-of-memory turned into a health error."""
    from rvc_ray.train import steps
    from rvc_ray.train.collectives import any_across_workers
    from rvc_ray.train.memory import is_out_of_memory

    problem = steps.find_batch_problem(batch)
    if any_across_workers(problem is not None, run.device):
        reason = problem or "another worker's slice of this global batch is unusable"
        if settings.nonfinite_policy == "raise":
            raise steps.BadBatchError(f"rank {run.rank}: {reason}")
        log.warning("skipping the step: %s", reason)
        return {names.SKIPPED: 1.0}
    try:
        return run.gan.train_step(batch, settings, check_batch=False)
    except steps.TrainingHealthError:
        raise
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise steps.TrainingOutOfMemoryError(
            f"rank {run.rank}: out of memory at step {run.global_step + 1} with {batch.size} clips per worker "
            f"({first_line}); lower train.batch_size or data.max_frames, or use train.batch_size=auto"
        ) from exc


def count_skips(cfg: RunConfig, run: RunState, metrics: dict[str, float]) -> None:
    """fp16 GradScaler skips are normal while the scale settles, so only a run of more than
    ``train.max_skipped_steps`` consecutive ones is a health error; other skips count over the whole run."""
    from rvc_ray.train import steps

    limit = cfg.train.max_skipped_steps
    if metrics.get(names.SKIPPED_SCALER, 0.0) > 0:
        run.consecutive_scaler_skips += 1
        if run.consecutive_scaler_skips > limit:
            raise steps.NonFiniteLossError(
                f"rank {run.rank}: the fp16 GradScaler skipped {run.consecutive_scaler_skips} steps in a row "
                f"(train.max_skipped_steps={limit}): the gradients overflow at every scale; use bf16 or fp32"
            )
        return
    run.consecutive_scaler_skips = 0
    run.skipped_steps += int(metrics.get(names.SKIPPED, 0.0) > 0)
    if run.skipped_steps > limit:
        raise steps.TrainingHealthError(
            f"rank {run.rank} skipped {run.skipped_steps} steps (train.max_skipped_steps={limit})"
        )
