"""Out-of-memory: recognising it (:func:`is_out_of_memory`) and avoiding it (``train.batch_size=auto``).

An out-of-memory error comes back identically on a restart (same batch, same model, same GPU), so the
loop re-raises it as :class:`~rvc_ray.train.steps.TrainingOutOfMemoryError`, a training-health error:
Ray Train's restart then stops at once (see :mod:`rvc_ray.train.health_marker`), and Tune can record the
trial as failed without retries by testing the trial's error with :func:`is_out_of_memory`.

``train.batch_size=auto``: before training, every worker runs the real training step (G forward, D step,
G step, optimizer updates) on its own device with the longest clips of the dataset, doubling the
per-worker batch until it runs out of memory, then bisecting between the last fit and the first failure
(:func:`find_largest_batch`). On CUDA the search runs with the process limited to
:data:`AUTO_BATCH_MEMORY_FRACTION` of the GPU, leaving room for DDP's gradient buckets and fragmentation.
Workers search at the same time (the wall time of one search; workers sharing a GPU search together, so
the answer fits them all), and the smallest per-worker result times the number of workers is the global
batch (:func:`resolve_auto_batch_size`).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rvc_ray.config import split_global_batch
from rvc_ray.train.steps import TrainingOutOfMemoryError

if TYPE_CHECKING:
    import torch

    from rvc_ray.config import RunConfig
    from rvc_ray.data.dataset import TrainingItems
    from rvc_ray.train.steps import StepSettings

__all__ = [
    "AUTO_BATCH_MEMORY_FRACTION",
    "TrainingOutOfMemoryError",
    "find_largest_batch",
    "is_out_of_memory",
    "make_probe_step",
    "out_of_memory_line",
    "release_cached_memory",
    "resolve_auto_batch_size",
    "resolve_run_batch_size",
    "step_fits",
]

log = logging.getLogger(__name__)

AUTO_BATCH_MEMORY_FRACTION = 0.9
"""Share of the GPU the auto batch search may use (the rest is headroom for DDP buckets, fragmentation)."""

_OOM_MESSAGES = (
    "out of memory",  # torch.OutOfMemoryError: "CUDA out of memory. Tried to allocate ..."
    "can't allocate memory",  # CPU: "DefaultCPUAllocator: can't allocate memory: you tried to allocate ..."
    "cannot allocate memory",  # the OS (ENOMEM)
    "running low on memory",  # Ray's memory monitor killed the worker
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "trainingoutofmemoryerror",  # the class name inside a Ray error's message
)


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it wraps: ``__cause__``/``__context__``, Ray Train's per-worker failures,
    a Ray task error's ``cause``."""
    seen: list[BaseException] = []
    stack: list[Any] = [exc]
    while stack:
        current = stack.pop()
        if not isinstance(current, BaseException) or any(current is s for s in seen):
            continue
        seen.append(current)
        stack.extend([current.__cause__, current.__context__, getattr(current, "cause", None)])
        stack.extend(getattr(current, "worker_failures", {}).values())
        stack.append(getattr(current, "controller_failure", None))
    return seen


def out_of_memory_line(error: BaseException | str) -> str | None:
    """The line that says ``error`` (or anything it wraps, or an error's text) is an out-of-memory error;
    ``None`` when it is not one.

    Recognised: ``torch.OutOfMemoryError`` (CUDA), torch's CPU allocator refusing an allocation,
    :class:`TrainingOutOfMemoryError`, ``MemoryError``, Ray's memory monitor killing a worker, cuBLAS/cuDNN
    workspace failures, and any exception class whose name ends in ``OutOfMemoryError``.
    """
    errors: list[BaseException | str] = [error] if isinstance(error, str) else list(_causes(error))
    for current in errors:
        if isinstance(current, BaseException) and (
            isinstance(current, MemoryError) or type(current).__name__.endswith("OutOfMemoryError")
        ):
            text = str(current).strip().splitlines()
            return f"{type(current).__name__}: {text[0] if text else ''}".strip()
        for line in str(current).splitlines():
            if any(marker in line.lower() for marker in _OOM_MESSAGES):
                return line.strip()[:300]
    return None


def is_out_of_memory(error: BaseException | str) -> bool:
    """True if ``error`` (or anything it wraps, e.g. a Ray ``TrainingFailedError``) is an out-of-memory error
    (see :func:`out_of_memory_line`)."""
    return out_of_memory_line(error) is not None


def release_cached_memory(device: torch.device | str) -> None:
    """Free what a failed attempt left behind (Python garbage, the CUDA caching allocator's blocks)."""
    import torch

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def find_largest_batch(fits: Callable[[int], bool], *, limit: int) -> int:
    """The largest batch ``b`` in ``1..limit`` with ``fits(b)``, assuming larger batches need more memory.

    Doubles from 1 until ``fits`` fails or ``limit`` is reached, then bisects between the last batch that
    fit and the first that did not. Returns 0 when not even a batch of 1 fits. Calls ``fits`` at most
    about ``2 * log2(limit)`` times.
    """
    if limit < 1:
        raise ValueError(f"the batch limit must be >= 1, got {limit}")
    good, bad = 0, limit + 1
    size = 1
    while size <= limit:
        if fits(size):
            good = size
            if size == limit:
                return good
            size = min(size * 2, limit)
        else:
            bad = size
            break
    while bad - good > 1:
        middle = (good + bad) // 2
        if fits(middle):
            good = middle
        else:
            bad = middle
    return good


def step_fits(step: Callable[[int], object], device: torch.device | str) -> Callable[[int], bool]:
    """Wrap ``step(batch)`` as a ``fits(batch)`` predicate: False on an out-of-memory error, which is
    cleaned up; any other error propagates."""

    def fits(batch: int) -> bool:
        try:
            step(batch)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is an answer; the rest is re-raised
            if not is_out_of_memory(exc):
                raise
            log.info("auto batch: %d per worker does not fit (%s)", batch, str(exc).splitlines()[0][:120])
            del exc
            release_cached_memory(device)
            return False
        release_cached_memory(device)
        return True

    return fits


def resolve_auto_batch_size(
    step: Callable[[int], object],
    *,
    device: torch.device | str,
    world_size: int,
    global_limit: int,
    min_across_workers: Callable[[float, Any], float],
) -> int:
    """The global batch for ``train.batch_size=auto``: the largest per-worker batch that runs ``step`` on
    every worker, times ``world_size``.

    Args:
        step: runs one full training step at a per-worker batch (raises an out-of-memory error if it does
            not fit).
        device: this worker's training device.
        world_size: number of workers.
        global_limit: the largest global batch to consider (``train.auto_batch_size_max``, and never more
            than the training items).
        min_across_workers: the collective that takes the minimum over workers.

    Raises:
        TrainingOutOfMemoryError: not even one clip per worker fits.
    """
    import torch

    target = torch.device(device)
    limit = max(1, global_limit // world_size)
    limited = target.type == "cuda"
    if limited:
        torch.cuda.set_per_process_memory_fraction(AUTO_BATCH_MEMORY_FRACTION, target)
    try:
        mine = find_largest_batch(step_fits(step, target), limit=limit)
    finally:
        if limited:
            torch.cuda.set_per_process_memory_fraction(1.0, target)
    per_worker = int(min_across_workers(float(mine), target))
    if per_worker < 1:
        raise TrainingOutOfMemoryError(
            "train.batch_size=auto: not even one clip per worker fits in memory with the longest clips of the "
            "dataset; lower data.max_frames or use a smaller model"
        )
    return per_worker * world_size


def make_probe_step(
    cfg: RunConfig, items: TrainingItems, settings: StepSettings, *, min_frames: int
) -> Callable[[int], None]:
    """A real training step at a given per-worker batch, for :func:`resolve_auto_batch_size`.

    Builds its own G, D, optimizers (and GradScaler for fp16) on ``settings.device`` once; each call runs
    :func:`~rvc_ray.train.steps.train_step` on the ``batch`` longest usable clips of ``items`` (repeated
    when there are fewer), the worst case of the bucket sampler. The probe models are freed with the
    returned function; the run's models are built afterwards, from the run's seed.
    """
    from rvc_ray.model.build import build_discriminator, build_generator
    from rvc_ray.train import steps

    lengths = items.lengths
    longest = sorted((i for i, n in enumerate(lengths) if n >= min_frames), key=lambda i: -lengths[i])
    if not longest:
        raise TrainingOutOfMemoryError("train.batch_size=auto: no training clip is long enough to probe with")
    gen = build_generator(cfg.model, cfg.audio).to(settings.device)
    disc = build_discriminator(cfg.model).to(settings.device)
    opt_g, opt_d = steps.build_optimizers(gen, disc, cfg.optim)
    scaler = steps.build_grad_scaler(settings)

    def step(batch: int) -> None:
        indices = [longest[i % len(longest)] for i in range(batch)]
        steps.train_step(gen, disc, opt_g, opt_d, items.batch(indices).to(settings.device), settings, scaler=scaler)

    return step


def resolve_run_batch_size(
    cfg: RunConfig, items: TrainingItems, settings: StepSettings, world: int, checkpoint: Any, *, min_frames: int
) -> tuple[RunConfig, str]:
    """``cfg`` with a numeric ``train.batch_size`` and where it came from: ``"config"``, ``"auto"`` (searched
    now, see :mod:`rvc_ray.train.memory`) or ``"checkpoint"`` (an auto run resumed with its first batch, so
    the data order and the step count stay those of the run)."""

    from rvc_ray.train.checkpoint import checkpoint_directory, read_checkpoint_meta
    from rvc_ray.train.collectives import min_across_workers

    if cfg.train.batch_size != "auto":
        return cfg, "config"
    found: int | None = None
    source = "auto"
    if checkpoint is not None:
        with checkpoint_directory(checkpoint) as directory:
            meta = read_checkpoint_meta(directory)
        if meta.get("num_workers") == world and meta.get("global_batch_size"):
            found, source = int(meta["global_batch_size"]), "checkpoint"
    if found is None:
        usable = sum(1 for n in items.lengths if n >= min_frames)
        limit = max(world, min(cfg.train.auto_batch_size_max, usable // world * world))
        probe = make_probe_step(cfg, items, settings, min_frames=min_frames)
        found = resolve_auto_batch_size(
            probe,
            device=settings.device,
            world_size=world,
            global_limit=limit,
            min_across_workers=min_across_workers,
        )
        del probe
    log.warning(
        "rvc-ray train: train.batch_size=auto -> global batch %d (%d per worker, %s)",
        found,
        split_global_batch(found, world),
        source,
    )
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"batch_size": found})}), source
